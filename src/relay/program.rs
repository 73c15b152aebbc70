//! The relay's source: a spawned program, its stdout (the response bytes), its stdin (fed with
//! the request body as it arrives), its stderr (into the error log) and its exit.

use core::ffi::{c_void, CStr};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nginx_sys::{
    ngx_int_t, ngx_msec_t, NGX_AGAIN, NGX_HTTP_BAD_GATEWAY, NGX_HTTP_BAD_REQUEST,
    NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, NGX_HTTP_REQUEST_TIME_OUT,
    NGX_HTTP_SERVICE_UNAVAILABLE, NGX_HTTP_SPECIAL_RESPONSE, NGX_LOG_ERR, NGX_LOG_INFO, NGX_OK,
};

use super::{Handlers, Variable};
use crate::child::Child;
use crate::conf::TransformConf;
use crate::log::escape;
use crate::nginx::{now_msec, BodyCursor, EventFd, Http};
use crate::os;
use crate::pool::{Lease, Loss, Proc};
use crate::stderr::StderrLog;

/// The environment of every program unless configured otherwise: a search path, nothing else.
pub const DEFAULT_PATH: &CStr = c"PATH=/usr/local/bin:/usr/bin:/bin";

/// What a program starts with, evaluated for the request.
pub struct Launch {
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    pub dir: Option<CString>,
}

/// Why feeding the program's stdin ended the request.
pub enum StdinFailure {
    /// Writing to the pipe failed (logged).
    Write,
    /// Reading a streamed body from the client failed: nginx's status (400, 408, 413...).
    Body(ngx_int_t),
}

/// A running (or finished) program and its pipes.
pub struct Program {
    conf: &'static TransformConf,
    /// argv[0], escaped for log lines.
    name: String,
    /// Our end of the program's stdout; None once the output ended.
    stdout: Option<EventFd>,
    /// Our end of its stdin, and what is left of the request body to write there.
    stdin: Option<EventFd>,
    body: BodyCursor,
    /// Our end of its stderr, and what became of the lines.
    stderr: Option<EventFd>,
    stderr_log: StderrLog,
    child: Option<Child>,
    /// What the stdout pipe holds at most.
    pipe_capacity: usize,
    /// Its pages (and the stdin pipe's of a filter), counted in the worker's share of the pipe
    /// budget while they live.
    pipe_pages: Vec<crate::pipes::Held>,
    pid: Option<libc::pid_t>,
    /// When the program started, and how and when it ended.
    started: ngx_msec_t,
    exit: Option<(os::ExitStatus, ngx_msec_t)>,
    /// Whether the read timer runs (rather than the total timeout alone, or nothing).
    read_timer: bool,
    /// The program exited while other processes still held its stdout open.
    left_writers: bool,
    /// A pooled process (`transform_pass`): its lease, until given back or lost.
    lease: Option<Lease>,
    /// Why a pooled process is not given back (a timeout, broken framing), if known.
    loss: Option<Loss>,
    /// A pooled process: all of the request (head and body) was written.
    input_done: bool,
    /// A pooled process had closed its stdin before a byte of the request was written.
    closed_at_start: bool,
    /// A pooled process: when its response was complete.
    finished: Option<ngx_msec_t>,
    /// A pooled process: the requests it served with this one, and the wait for it.
    requests: u64,
    waited: ngx_msec_t,
}

impl Program {
    /// A program fed with the request body, or (`filter`) with the response it filters.
    pub fn new(http: Http, conf: &'static TransformConf, launch: &Launch, filter: bool) -> Program {
        Program {
            conf,
            name: escape(launch.argv[0].as_bytes()),
            stdout: None,
            stdin: None,
            body: if filter {
                BodyCursor::response(http)
            } else {
                BodyCursor::of(http)
            },
            stderr: None,
            stderr_log: StderrLog::new(conf.stderr_level, now_msec()),
            child: None,
            pipe_capacity: 0,
            pipe_pages: Vec::new(),
            pid: None,
            started: now_msec(),
            exit: None,
            read_timer: false,
            left_writers: false,
            lease: None,
            loss: None,
            input_done: false,
            closed_at_start: false,
            finished: None,
            requests: 0,
            waited: 0,
        }
    }

    /// A pooled process, lent by `lease`, fed with `head` then the request body (whole).
    pub fn pooled(
        http: Http,
        conf: &'static TransformConf,
        lease: Lease,
        head: Vec<u8>,
    ) -> Program {
        let mut program = Program::new(
            http,
            conf,
            &Launch {
                argv: vec![lease.program.to_owned()],
                env: Vec::new(),
                dir: None,
            },
            false,
        );
        program.body = BodyCursor::of(http).with_head(head);
        program.requests = lease.requests;
        program.waited = lease.waited;
        program.lease = Some(lease);
        program
    }

    /// A pooled filter process (`transform_filter_pass`), lent by `lease`, fed with `head` (the
    /// response's status line and headers) then the response's body, chunked.
    pub fn pooled_filter(
        http: Http,
        conf: &'static TransformConf,
        lease: Lease,
        head: Vec<u8>,
    ) -> Program {
        let mut program = Program::pooled(http, conf, lease, Vec::new());
        program.body = BodyCursor::response(http).chunked().with_head(head);
        program
    }

    /// Whether this is a pooled process.
    pub fn is_pooled(&self) -> bool {
        self.lease.is_some() || self.requests > 0
    }

    /// A pooled process that has not read anything of its request yet (all that was written
    /// is still in its stdin pipe): output from it now is not an answer to this request.
    pub fn read_nothing(&self) -> bool {
        let written = self.body.written();
        if self.closed_at_start {
            return true;
        }
        self.is_pooled()
            && written > 0
            && self
                .stdin
                .as_ref()
                .is_some_and(|fd| os::bytes_in_pipe(fd.fd()).is_ok_and(|n| n as u64 == written))
    }

    /// Why the pooled process is not given back, when its request ends.
    pub fn set_loss(&mut self, loss: Loss) {
        if self.lease.is_some() && self.loss.is_none() {
            self.loss = Some(loss);
        }
    }

    /// Takes the lent process: its pipes and pidfd now wake `data`, and the request is written.
    pub fn launch_pooled(&mut self, http: Http, data: *mut c_void) -> Result<(), ngx_int_t> {
        let Some(lease) = self.lease.as_mut() else {
            return Err(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
        };
        let Some(Proc {
            mut child,
            mut stdin,
            mut stdout,
        }) = lease.proc.take()
        else {
            return Err(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
        };
        child.rebind(Handlers::CHILD, data);
        stdin.rebind(Handlers::STDIN, data);
        stdout.rebind(Handlers::STDOUT, data);
        self.pid = Some(lease.pid);
        self.started = now_msec();
        self.pipe_capacity = os::pipe_size(stdout.fd()).unwrap_or(4096);
        let watching = child.watch() && stdout.arm_read();
        self.child = Some(child);
        self.stdin = Some(stdin);
        self.stdout = Some(stdout);
        debug!(
            http.log(),
            "transform pool process {} takes request {}", lease.pid, lease.requests
        );
        if !watching {
            return Err(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
        }
        if let Err(f) = self.feed_stdin(http) {
            return Err(match f {
                StdinFailure::Write => NGX_HTTP_BAD_GATEWAY as ngx_int_t,
                StdinFailure::Body(rc) => self.body_failed(http, rc),
            });
        }
        self.arm_timer(http, true, true, None);
        Ok(())
    }

    /// Bytes waiting in the stdout pipe (an error counts as some: nothing is known).
    pub fn output_waiting(&self) -> u64 {
        self.stdout()
            .map_or(0, |fd| os::pipe_state(fd).map_or(1, |(n, _)| n as u64))
    }

    /// A pooled process whose response is complete: back to its pool if it is in a known state
    /// (`extra`: bytes it wrote past the response, its stdout pipe's included; `close`: it asked
    /// to), else killed.
    pub fn end_lease(&mut self, http: Http, extra: u64, close: bool) {
        if self.lease.is_none() {
            return;
        }
        self.finished = Some(now_msec());
        self.collect_status(http);
        let unread = self
            .stdin
            .as_ref()
            .map_or(1, |fd| os::bytes_in_pipe(fd.fd()).unwrap_or(1));
        if let Some(lease) = &self.lease {
            lease.answered();
        }
        let loss = if close {
            Some(Loss::Close)
        } else if let Some(status) = self.exit() {
            // (It answered: not a start-up failure.)
            Some(Loss::Exited(status))
        } else if extra > 0 {
            Some(Loss::NotReusable("it wrote past its response"))
        } else if !self.input_done || unread > 0 {
            Some(Loss::NotReusable("it did not read all of its request"))
        } else {
            None
        };
        if loss.is_none() {
            if let (Some(child), Some(stdin), Some(stdout), Some(lease)) = (
                self.child.take(),
                self.stdin.take(),
                self.stdout.take(),
                self.lease.take(),
            ) {
                lease.give_back(Proc {
                    child,
                    stdin,
                    stdout,
                });
                return;
            }
        }
        self.loss = loss;
        self.drop_lease();
    }

    /// A pooled process not given back: its pipes close, it is stopped, and its pool told why.
    fn drop_lease(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        // Its output ended (or it closed it) before its response did: it is exiting, most likely,
        // and its exit status (not yet collected) is the reason.
        let output_ended = self
            .stdout()
            .is_none_or(|fd| os::pipe_state(fd).map_or(true, |(_, hung_up)| hung_up));
        // Died before it read anything of its request: a start-up failure (the backoff's), not
        // one a request caused.
        let at_start = self.read_nothing();
        let loss = match (self.loss.take(), self.exit()) {
            (Some(l), _) => l,
            (None, Some(status)) if at_start => Loss::StartFailed(status),
            (None, Some(status)) => Loss::Exited(status),
            (None, None) if output_ended => {
                self.stdin = None;
                self.stdout = None;
                if let Some(child) = self.child.take() {
                    lease.lose_dying(child, at_start);
                    return;
                }
                Loss::Ended
            }
            (None, None) => Loss::Ended,
        };
        self.stdin = None;
        self.stdout = None;
        self.child = None;
        lease.lose(&loss);
    }

    /// The program's path, escaped for log lines.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<libc::pid_t> {
        self.pid
    }

    /// Starts the program with its pipes joined to the event loop; `data` is the `Transform`
    /// the handlers get back.
    pub fn launch(
        &mut self,
        http: Http,
        launch: &Launch,
        data: *mut c_void,
    ) -> Result<(), ngx_int_t> {
        let log = http.log();
        let pipe_failed = |e: io::Error| {
            log_error!(NGX_LOG_ERR, log, os::errno(&e), "pipe2() failed");
            status_for_resource_error(&e)
        };
        let pipe = os::stdout_pipe().map_err(pipe_failed)?;
        let err_pipe = os::stdout_pipe().map_err(pipe_failed)?;
        let filter = self.body.is_response();
        let in_pipe = match self.conf.stdin_body {
            0 if !filter => None,
            _ => Some(os::stdin_pipe().map_err(pipe_failed)?),
        };
        if let (true, Some(p)) = (filter, &in_pipe) {
            // A filtered response is as big as any output: the same room on the way in.
            let (_, held) =
                crate::pipes::size_stdout(p.write.as_fd(), self.conf.pipe_size, false, log);
            self.pipe_pages.push(held);
        }
        let (capacity, held) =
            crate::pipes::size_stdout(pipe.read.as_fd(), self.conf.pipe_size, true, log);
        self.pipe_capacity = capacity;
        self.pipe_pages.push(held);
        crate::pipes::size_stderr(err_pipe.read.as_fd());

        let args: Vec<&CStr> = launch.argv.iter().map(CString::as_c_str).collect();
        let env: Vec<&CStr> = launch.env.iter().map(CString::as_c_str).collect();
        let cmd = os::Command {
            stdin: in_pipe.as_ref().map(|p| p.read.as_raw_fd()),
            argv: &args,
            env: &env,
            dir: launch.dir.as_deref(),
            stdout: pipe.write.as_raw_fd(),
            stderr: err_pipe.write.as_raw_fd(),
            rlimits: self.conf.rlimits.as_deref().unwrap_or(&[]),
            confine: self.conf.confine(),
        };
        let group = match self.conf.cgroup() {
            Some(limits) => Some(
                crate::cgroup::Group::create(limits)
                    .map_err(|f| crate::cgroup::create_failed(log, &f))?,
            ),
            None => None,
        };
        let kill_timeout = self.conf.kill_timeout;
        let child =
            Child::spawn(&cmd, group, kill_timeout, log, Handlers::CHILD, data).map_err(|e| {
                let subject = match (e.step, &launch.dir) {
                    (os::SpawnStep::Chdir, Some(dir)) => escape(dir.as_bytes()),
                    _ => self.name.clone(),
                };
                log_error!(
                    NGX_LOG_ERR,
                    log,
                    os::errno(&e.err),
                    "{} \"{subject}\" failed",
                    e.step.call()
                );
                match e.err.raw_os_error() {
                    Some(libc::EAGAIN | libc::EMFILE | libc::ENFILE | libc::ENOMEM) => {
                        NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t
                    }
                    _ => NGX_HTTP_BAD_GATEWAY as ngx_int_t,
                }
            })?;
        self.pid = Some(child.pid());
        self.started = now_msec();
        debug!(
            log,
            "transform started \"{}\" pid {}",
            self.name,
            child.pid()
        );
        // Only the child holds the write ends now: its exit (and its children's) ends the output.
        drop(pipe.write);
        drop(err_pipe.write);
        let watching = child.watch();
        self.child = Some(child);
        if let Some(p) = in_pipe {
            drop(p.read);
            let stdin = joined(
                EventFd::new_writer(p.write, log, Handlers::STDIN, data),
                log,
                "stdin",
            )?;
            self.stdin = Some(stdin);
            if let Err(f) = self.feed_stdin(http) {
                return Err(match f {
                    StdinFailure::Write => NGX_HTTP_BAD_GATEWAY as ngx_int_t,
                    StdinFailure::Body(rc) => self.body_failed(http, rc),
                });
            }
        }
        let stdout = joined(
            EventFd::new(pipe.read, log, Handlers::STDOUT, data),
            log,
            "stdout",
        )?;
        let stderr = joined(
            EventFd::new(err_pipe.read, log, Handlers::STDERR, data),
            log,
            "stderr",
        )?;
        if !watching || !stdout.arm_read() || !stderr.arm_read() {
            return Err(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
        }
        self.stdout = Some(stdout);
        self.stderr = Some(stderr);
        if self.conf.stdin_body == 0 && !filter {
            // A body the program does not take is dropped as it arrives.
            if let Err(StdinFailure::Body(rc)) = self.feed_stdin(http) {
                return Err(self.body_failed(http, rc));
            }
        }
        self.arm_timer(http, true, true, None);
        Ok(())
    }

    /// Our end of stdout, while the output lasts.
    pub fn stdout(&self) -> Option<BorrowedFd<'_>> {
        self.stdout.as_ref().map(EventFd::fd)
    }

    /// Reads the output again in the next event-loop iteration, after the other connections.
    pub fn post_output(&self) {
        if let Some(fd) = &self.stdout {
            fd.post_read();
        }
    }

    /// The output ended (end of file, or the program exited and only other processes hold the
    /// pipe, `left_writers`): stdout is closed.
    pub fn end_output(&mut self, left_writers: bool) {
        self.stdout = None;
        self.left_writers |= left_writers;
    }

    /// The program exited while other processes still held its stdout.
    pub fn note_left_writers(&mut self) {
        self.left_writers = true;
    }

    /// Lets go of a program whose response is complete: its stdout is closed, and it gets
    /// `transform_kill_timeout` to end on its own before it is killed (see `Child::detach`).
    pub fn detach(&mut self) {
        self.stdout = None;
        if let Some(child) = self.child.take() {
            child.detach(&self.name);
        }
    }

    /// The program filled its stdout pipe while the worker was away: a bigger one, if the pipe
    /// budget allows (see `pipes::grow_stdout`).
    pub fn grow_pipe(&mut self, log: *mut nginx_sys::ngx_log_t) {
        let (Some(stdout), Some(held)) = (&self.stdout, self.pipe_pages.last_mut()) else {
            return;
        };
        let before = self.pipe_capacity;
        self.pipe_capacity =
            crate::pipes::grow_stdout(stdout.fd(), before, self.conf.pipe_size, held);
        if self.pipe_capacity != before {
            debug!(
                log,
                "transform pipe size {before} grown to {}", self.pipe_capacity
            );
        }
    }

    /// The capacity of the stdout pipe.
    pub fn pipe_capacity(&self) -> usize {
        self.pipe_capacity
    }

    /// The exit status, once collected.
    pub fn exit(&self) -> Option<os::ExitStatus> {
        self.exit.map(|(s, _)| s)
    }

    /// Collects the exit status if the program has exited (it stays a zombie until released).
    pub fn collect_status(&mut self, http: Http) {
        if self.exit.is_none() {
            if let Some(status) = self.child.as_mut().and_then(Child::status) {
                self.exit = Some((status, now_msec()));
                self.read_timer = false;
                // What it wrote to stderr is in the pipe now (its events may come after the
                // exit's when it ended before nginx watched it): logged before anything the
                // exit decides, so its lines precede the end of the response.
                self.drain_stderr(http);
            }
        }
    }

    /// Reads output into `buf` while it holds less than `max` bytes (the CGI header block,
    /// with what comes along). `Ok(true)` at end of file.
    pub fn read_held(&mut self, buf: &mut Vec<u8>, max: usize) -> io::Result<bool> {
        let Some(fd) = &self.stdout else {
            return Ok(true);
        };
        let mut chunk = [0u8; 4096];
        while buf.len() < max {
            let want = (max - buf.len()).min(chunk.len());
            match os::read(fd.fd(), &mut chunk[..want]) {
                Ok(0) => {
                    self.stdout = None;
                    return Ok(true);
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Asks for the next output when the machine waits on the program.
    pub fn watch_output(&self, on_program: bool) -> bool {
        !on_program || self.stdout.as_ref().is_none_or(EventFd::arm_read)
    }

    /// Starts (or stops) the commit timer on stdout.
    pub fn set_hold_timer(&self, ms: Option<ngx_msec_t>) {
        if let Some(fd) = &self.stdout {
            match ms {
                Some(ms) => fd.set_timer(ms.max(1)),
                None => fd.clear_timer(),
            }
        }
    }

    /// The program-side timers, after each run of the machine.
    ///
    /// - `transform_read_timeout` while the program is waited for (its output or its exit),
    ///   restarted only by its progress (`restart`), not by the client's; off while it only
    ///   waits for more of a streamed request body (client_body_timeout judges the client, as
    ///   proxy_read_timeout starts only once the request is sent);
    /// - `transform_timeout` until it ends, whatever it does;
    /// - the commit timer while output is held (`holding_since`).
    pub fn arm_timer(
        &mut self,
        http: Http,
        on_program: bool,
        restart: bool,
        holding_since: Option<ngx_msec_t>,
    ) {
        if let Some(since) = holding_since {
            let left = (since + self.conf.commit_timeout).saturating_sub(now_msec());
            self.set_hold_timer(Some(left));
        }
        let Some(child) = &self.child else {
            return;
        };
        if self.exit.is_some() {
            return;
        }
        let total = (self.conf.timeout > 0).then(|| {
            (self.started + self.conf.timeout)
                .saturating_sub(now_msec())
                .max(1)
        });
        if on_program && !self.waits_for_client_body(http) {
            if restart || !self.read_timer {
                let read = self.conf.read_timeout;
                child.set_timer(total.map_or(read, |t| t.min(read)));
                self.read_timer = true;
            }
            // Otherwise the running read timer stays: the client's progress is not the
            // program's. (It was set no later than the total timeout.)
            return;
        }
        self.read_timer = false;
        match total {
            Some(ms) => child.set_timer(ms),
            None => child.clear_timer(),
        }
    }

    /// Whether the program only waits for more request body: it took all that was written
    /// (its stdin pipe is empty) and the client has more to send.
    /// (For a filter: the response's handler has more to send.)
    fn waits_for_client_body(&self, http: Http) -> bool {
        let Some(stdin) = &self.stdin else {
            return false;
        };
        let more_to_come = if self.body.is_response() {
            !self.body.ended()
        } else {
            self.body.streaming() && http.streaming_body()
        };
        more_to_come && self.body.is_empty() && os::bytes_in_pipe(stdin.fd()).is_ok_and(|n| n == 0)
    }

    /// Which timeout fired: the total one, or the read one.
    pub fn which_timeout(&self) -> (&'static str, ngx_msec_t) {
        let conf = self.conf;
        if conf.timeout > 0 && now_msec() >= self.started + conf.timeout {
            ("transform_timeout", conf.timeout)
        } else {
            ("transform_read_timeout", conf.read_timeout)
        }
    }

    /// Writes the request body to the program's stdin as far as the pipe takes it and, while a
    /// streamed body arrives, reads more of it from the client (nginx stops reading when its
    /// buffers are all waiting for the program: backpressure up to the client). Closes stdin at
    /// the end of the body (the program sees end of file). A program that does not read its
    /// stdin is not an error: the rest of the body is dropped.
    pub fn feed_stdin(&mut self, http: Http) -> Result<(), StdinFailure> {
        if self.body.is_response() {
            return self.feed_response(http);
        }
        if self.conf.stdin_body == 0 && !self.is_pooled() {
            return self.drop_body(http);
        }
        if self.input_done {
            return Ok(());
        }
        loop {
            let Some(fd) = &self.stdin else {
                return Ok(());
            };
            let blocked = match self.body.write_to(fd.fd()) {
                Ok(()) => false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !fd.arm_write() {
                        self.close_stdin(http);
                        return Err(StdinFailure::Write);
                    }
                    true
                }
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    debug!(http.log(), "transform: the program closed its stdin");
                    self.closed_at_start |= self.body.written() == 0;
                    self.close_stdin(http);
                    return Ok(());
                }
                Err(e) => {
                    log_error!(
                        NGX_LOG_ERR,
                        http.log(),
                        os::errno(&e),
                        "transform: writing the request body to \"{}\" failed",
                        self.name
                    );
                    self.close_stdin(http);
                    return Err(StdinFailure::Write);
                }
            };
            let reading = self.body.streaming() && http.streaming_body();
            let mut more = false;
            if reading {
                // Also while blocked, as nginx's upstream does: nginx reads on into free
                // buffer space (restarting client_body_timeout), or stops the timer when
                // every buffer waits for the program.
                let rc = http.read_unbuffered_body();
                if rc != NGX_OK as ngx_int_t && rc != NGX_AGAIN as ngx_int_t {
                    self.close_stdin(http);
                    return Err(StdinFailure::Body(rc));
                }
                more = self.body.pull(http);
                if !http.streaming_body() {
                    // All of the body is read: watch the client for a close from now on.
                    http.stop_reading_body();
                }
            }
            if blocked {
                return Ok(());
            }
            if !more {
                if !reading {
                    // All of the body is written (a pooled process keeps its stdin: the next
                    // request goes there).
                    if self.is_pooled() {
                        self.input_done = true;
                    } else {
                        self.close_stdin(http);
                    }
                }
                return Ok(());
            }
        }
    }

    /// A filter's program: writes the response taken so far, as far as the pipe takes it, and
    /// closes stdin after its last buffer. A program that closed its stdin (it has all it
    /// wants, as `head`) is not an error: the rest of the response is dropped as it comes.
    fn feed_response(&mut self, http: Http) -> Result<(), StdinFailure> {
        let Some(fd) = &self.stdin else {
            self.body.skip();
            return Ok(());
        };
        match self.body.write_to(fd.fd()) {
            Ok(()) => {
                if self.body.ended() {
                    if self.is_pooled() {
                        // (Its last chunk is written; stdin stays for the next request.)
                        self.input_done = true;
                    } else {
                        self.stdin = None;
                    }
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if fd.arm_write() {
                    return Ok(());
                }
                self.stdin = None;
                Err(StdinFailure::Write)
            }
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                debug!(http.log(), "transform: the filter program closed its stdin");
                self.closed_at_start |= self.body.written() == 0;
                self.stdin = None;
                self.body.skip();
                Ok(())
            }
            Err(e) => {
                log_error!(
                    NGX_LOG_ERR,
                    http.log(),
                    os::errno(&e),
                    "transform: writing the response to \"{}\" failed",
                    self.name
                );
                self.stdin = None;
                Err(StdinFailure::Write)
            }
        }
    }

    /// A filter's program: takes more of the response (dropped at once if its stdin is
    /// closed). False if out of memory.
    pub fn push_response(&mut self, chain: *mut nginx_sys::ngx_chain_t) -> bool {
        if !self.body.push(chain) {
            return false;
        }
        if self.stdin.is_none() {
            self.body.skip();
        }
        true
    }

    /// A filter's program has taken all of the response it was given, and more is to come
    /// from the response's handler.
    pub fn wants_response(&self) -> bool {
        self.body.is_response() && self.body.is_empty() && !self.body.ended()
    }

    /// A filter's program: the response's last buffer was taken.
    pub fn response_ended(&self) -> bool {
        self.body.ended()
    }

    /// Buffers of the response handed back to its handler so far.
    pub fn response_handed_back(&self) -> u64 {
        self.body.handed_back()
    }

    /// `transform_stdin off`: reads what the client sends of its body and drops it (nginx stops
    /// reading while its buffers are taken, so this keeps the client going), until its end.
    fn drop_body(&mut self, http: Http) -> Result<(), StdinFailure> {
        while self.body.streaming() {
            self.body.skip();
            if !http.streaming_body() {
                http.stop_reading_body();
                return Ok(());
            }
            let rc = http.read_unbuffered_body();
            if rc != NGX_OK as ngx_int_t && rc != NGX_AGAIN as ngx_int_t {
                http.stop_reading_body();
                return Err(StdinFailure::Body(rc));
            }
            if !self.body.pull(http) && http.streaming_body() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Closes the program's stdin; a streamed body is no longer read from the client.
    fn close_stdin(&mut self, http: Http) {
        self.stdin = None;
        if self.body.streaming() {
            http.stop_reading_body();
        }
    }

    /// Whether the request body was handed to the program as it arrived (so it is consumed,
    /// and cannot be handed to another location).
    pub fn took_streamed_body(&self, http: Http) -> bool {
        self.conf.stdin_body != 0 && self.body.streaming() && http.has_body()
    }

    /// Whether the request body is only read and dropped (`transform_stdin off`).
    pub fn drops_body(&self) -> bool {
        self.conf.stdin_body == 0
    }

    /// Logs why a streamed body could not be read; returns the response status.
    pub fn body_failed(&self, http: Http, rc: ngx_int_t) -> ngx_int_t {
        self.body_failed_then(http, rc, "the program is stopped")
    }

    /// As [`Program::body_failed`], saying what follows.
    pub fn body_failed_then(&self, http: Http, rc: ngx_int_t, then: &str) -> ngx_int_t {
        let status = if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
            rc
        } else {
            NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t
        };
        let why = match status as u32 {
            NGX_HTTP_REQUEST_TIME_OUT => "the client timed out sending it (client_body_timeout)",
            NGX_HTTP_BAD_REQUEST => "the client closed the connection, or sent a bad body",
            NGX_HTTP_REQUEST_ENTITY_TOO_LARGE => "it is larger than client_max_body_size",
            _ => "nginx failed to read it",
        };
        log_error!(
            NGX_LOG_INFO,
            http.log(),
            0,
            "transform: request body for \"{}\" cut short: {why}; {then}",
            self.name
        );
        status
    }

    /// Reads what the program wrote to stderr (fairly: a bounded amount per call, then again
    /// from nginx's posted events) and logs it.
    pub fn drain_stderr(&mut self, http: Http) {
        if let Some(fd) = &self.stderr {
            if self.stderr_log.drain(fd, http.log(), false) {
                self.stderr = None;
            }
        }
    }

    /// For a program that failed: what is left of its stderr, then its last lines in one
    /// error-level message (unless `transform_stderr off`).
    pub fn log_stderr_tail(&mut self, http: Http) {
        self.drain_stderr(http);
        self.stderr_log.log_tail(http.log(), &self.name);
    }

    /// When the program exited while other processes kept its stdout open: kills what is left
    /// in its process group, and says so only when something was there.
    pub fn note_descendants(&mut self, http: Http) {
        if self.exit.is_none() || !self.left_writers {
            return;
        }
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if child.kill_descendants() {
            log_error!(
                NGX_LOG_INFO,
                http.log(),
                0,
                "transform program \"{}\" exited and left processes in its group; \
                 they are killed",
                self.name
            );
        } else {
            log_error!(
                NGX_LOG_INFO,
                http.log(),
                0,
                "transform program \"{}\" exited while processes outside its group kept its \
                 stdout open; they are not killed",
                self.name
            );
        }
    }

    /// For a program that goes on after its request (see `background`): its name, stdout (None
    /// once its output ended), stderr, child and the deadline of `transform_timeout` (if any),
    /// if it was not reaped yet and took all of its input (a program whose input was cut short
    /// must not publish what it made of it).
    #[allow(clippy::type_complexity)]
    pub fn take_running(
        &mut self,
        http: Http,
    ) -> Option<(
        String,
        Option<EventFd>,
        Option<EventFd>,
        Child,
        Option<ngx_msec_t>,
        Vec<crate::pipes::Held>,
    )> {
        self.collect_status(http);
        if self.child.is_none() || self.stdin.is_some() || self.is_pooled() {
            return None;
        }
        self.drain_stderr(http);
        self.stderr_log.finish(http.log(), now_msec());
        let child = self.child.take()?;
        let deadline = (self.conf.timeout > 0).then(|| self.started + self.conf.timeout);
        Some((
            self.name.clone(),
            self.stdout.take(),
            self.stderr.take(),
            child,
            deadline,
            core::mem::take(&mut self.pipe_pages),
        ))
    }

    /// Stops everything: closes the pipes; a program still running gets SIGTERM, then SIGKILL
    /// after `transform_kill_timeout` (the orphan reaper sees to it).
    pub fn release(&mut self, http: Http) {
        self.drain_stderr(http);
        self.stderr_log.finish(http.log(), now_msec());
        if self.body.streaming() && http.streaming_body() {
            // Nobody reads the rest of the body now (an error page, a redirect, or nginx's
            // lingering close drops it).
            http.stop_reading_body();
        }
        self.collect_status(http);
        self.drop_lease();
        self.stdout = None;
        self.stdin = None;
        self.stderr = None;
        self.child = None;
    }

    /// The value of a log variable for this request.
    pub fn variable(&self, which: Variable) -> Option<String> {
        let pid = self.pid?;
        Some(match which {
            Variable::Pid => pid.to_string(),
            Variable::ExitStatus => match self.exit?.0 {
                os::ExitStatus::Code(c) => c.to_string(),
                os::ExitStatus::Signal(s) => os::signal_name(s),
                os::ExitStatus::MemoryLimit { signal, .. } => {
                    format!("{}(oom)", os::signal_name(signal))
                }
            },
            Variable::Requests if self.requests > 0 => self.requests.to_string(),
            Variable::QueueTime if self.requests > 0 => {
                format!("{}.{:03}", self.waited / 1000, self.waited % 1000)
            }
            Variable::Requests | Variable::QueueTime => return None,
            Variable::Time => {
                let end = self
                    .finished
                    .or(self.exit.map(|(_, at)| at))
                    .unwrap_or_else(now_msec);
                let ms = end.saturating_sub(self.started);
                format!("{}.{:03}", ms / 1000, ms % 1000)
            }
            Variable::Bytes => return None,
        })
    }
}

/// A pipe joined to the event loop, or the 503 of a worker out of connections.
fn joined(
    fd: io::Result<EventFd>,
    log: *mut nginx_sys::ngx_log_t,
    what: &str,
) -> Result<EventFd, ngx_int_t> {
    fd.map_err(|e| {
        log_error!(
            NGX_LOG_ERR,
            log,
            os::errno(&e),
            "no connection for the program's {what}"
        );
        NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t
    })
}

fn status_for_resource_error(e: &io::Error) -> ngx_int_t {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM) => {
            NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t
        }
        _ => NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
    }
}
