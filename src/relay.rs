//! The relay: one state machine per request that moves a program's stdout to the client.
//!
//! The program's stdout pipe, its pidfd and the client connection all wake the same machine
//! ([`Transform::run`]). Nothing is sent until the program writes its first byte (or exits), so a
//! program that fails before any output becomes a clean 502. At that point the response is
//! committed: the header goes out and one of two transports is chosen, once, by
//! [`Http::zero_copy_refusal`]:
//!
//! - **splice**: plain HTTP/1.x with no body filter that needs the data. Bytes go pipe -> socket
//!   with splice(2); the module writes the chunk framing itself, sized by FIONREAD.
//! - **buffered**: everything else (TLS, HTTP/2, gzip, SSI, subrequests, `transform_splice off`).
//!   A bounded ring of reused buffers goes through `ngx_http_output_filter`.
//!
//! Either way the module stops reading when the client does not keep up, so the program blocks
//! in write() and memory stays bounded. After the commit, a failure closes (resets) the
//! connection without the terminating chunk: a broken response never looks complete.

use core::ffi::{c_void, CStr};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nginx_sys::{
    ngx_event_t, ngx_http_request_t, ngx_int_t, ngx_msec_t, NGX_AGAIN, NGX_DONE, NGX_ERROR,
    NGX_HTTP_BAD_GATEWAY, NGX_HTTP_BAD_REQUEST, NGX_HTTP_GATEWAY_TIME_OUT,
    NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, NGX_HTTP_REQUEST_TIME_OUT,
    NGX_HTTP_SERVICE_UNAVAILABLE, NGX_HTTP_SPECIAL_RESPONSE, NGX_LOG_ERR, NGX_LOG_INFO, NGX_OK,
};
use ngx::http::HttpModule;

use crate::cgi;
use crate::child::Child;
use crate::conf::TransformConf;
use crate::nginx::{
    now_msec, pool_allocate, run_posted_requests, BodyCursor, BufRing, EventFd, Http, Moved, Pumped,
};
use crate::os;
use crate::stderr::StderrLog;

/// Buffers of the buffered transport, and their size: at most 512 KiB in flight per request.
const BUFFERS: usize = 8;
const BUFFER_SIZE: usize = 64 * 1024;

/// stderr read per event before yielding to other connections.
const STDERR_PER_EVENT: usize = 256 * 1024;

/// The environment of every program unless configured otherwise: a search path, nothing else.
pub const DEFAULT_PATH: &CStr = c"PATH=/usr/local/bin:/usr/bin:/bin";

/// What a program starts with, evaluated for the request.
pub struct Launch {
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    pub dir: Option<CString>,
}

/// Starts the program and the relay; the content handler returns what this returns.
pub fn start(
    http: Http,
    conf: &'static TransformConf,
    launch: Launch,
    content_type: Option<&'static [u8]>,
) -> ngx_int_t {
    let program = launch.argv[0].to_string_lossy().into_owned();
    let ctx = pool_allocate(
        http.pool(),
        Transform {
            http,
            conf,
            content_type,
            program,
            stdout: None,
            stderr: None,
            stdin: None,
            stdin_failed: false,
            body_error: None,
            head: Vec::new(),
            body: BodyCursor::of(http),
            stderr_log: StderrLog::new(conf.stderr_level, now_msec()),
            child: None,
            transport: None,
            pipe_capacity: 0,
            pid: 0,
            started: now_msec(),
            exit: None,
            exited: false,
            program_timer: false,
            waiting_on_program: true,
            shutdown: false,
            output_done: false,
            descendants_hold_output: false,
            done: false,
            moved: Moved::default(),
        },
    );
    if ctx.is_null() {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    }
    if !http.add_cleanup(cleanup, ctx.cast()) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    }
    http.set_ctx(crate::Module::module(), ctx.cast());

    // SAFETY: ctx was just allocated in the request pool and is not aliased.
    if let Err(rc) = unsafe { (*ctx).launch(&launch) } {
        // Nothing may stay armed for a request that ends with an error page.
        // SAFETY: as above.
        unsafe { (*ctx).release() };
        return rc;
    }
    http.set_event_handlers(Some(client_write_event), Some(client_body_event));
    http.take_reference();
    NGX_DONE as ngx_int_t
}

/// The module's log variables.
#[derive(Clone, Copy)]
pub enum Variable {
    Pid,
    ExitStatus,
    Time,
    Bytes,
}

impl From<usize> for Variable {
    fn from(n: usize) -> Variable {
        match n {
            0 => Variable::Pid,
            1 => Variable::ExitStatus,
            2 => Variable::Time,
            _ => Variable::Bytes,
        }
    }
}

/// Per-request state, owned by the request pool.
pub struct Transform {
    http: Http,
    conf: &'static TransformConf,
    content_type: Option<&'static [u8]>,
    program: String,
    /// Our end of the program's stdout; closed when the output is complete.
    stdout: Option<EventFd>,
    /// Our end of its stdin, and what is left of the request body to write there.
    stdin: Option<EventFd>,
    /// Writing the body failed: the program must not take a cut body for a whole one.
    stdin_failed: bool,
    /// Reading a streamed body from the client failed (nginx's status: 400, 408, 413...).
    body_error: Option<ngx_int_t>,
    /// `transform_output cgi`: the header block read so far.
    head: Vec<u8>,
    body: BodyCursor,
    /// Our end of its stderr, and what became of the lines.
    stderr: Option<EventFd>,
    stderr_log: StderrLog,
    child: Option<Child>,
    /// Chosen when the response is committed.
    transport: Option<Transport>,
    /// What the stdout pipe can hold (the most output held before the commit).
    pipe_capacity: usize,
    pid: libc::pid_t,
    /// When the program started, and how and when it ended.
    started: ngx_msec_t,
    exit: Option<(os::ExitStatus, ngx_msec_t)>,
    /// Noted by the event handlers for the next run: the pidfd fired, its timer fired, nginx
    /// closes our connections (worker shutdown).
    exited: bool,
    program_timer: bool,
    /// What the last run waited for: the program (true) or the client.
    waiting_on_program: bool,
    shutdown: bool,
    /// The output is complete: end of file, or the program exited and only its descendants
    /// still hold the pipe.
    output_done: bool,
    descendants_hold_output: bool,
    /// Finished or aborted: every later event is ignored.
    done: bool,
    /// What the transport moved so far (and the most it may move).
    moved: Moved,
}

enum Transport {
    Splice(Splice),
    Buffered(BufRing),
}

/// What the machine waits for next.
enum Next {
    Program,
    Client,
    Finish(ngx_int_t),
}

impl Transform {
    fn launch(&mut self, launch: &Launch) -> Result<(), ngx_int_t> {
        let log = self.http.log();
        let pipe_failed = |e: io::Error| {
            log_error!(NGX_LOG_ERR, log, os::errno(&e), "pipe2() failed");
            status_for_resource_error(&e)
        };
        let pipe = os::stdout_pipe().map_err(pipe_failed)?;
        let err_pipe = os::stdout_pipe().map_err(pipe_failed)?;
        let in_pipe = match self.conf.stdin_body {
            0 => None,
            _ => Some(os::stdin_pipe().map_err(pipe_failed)?),
        };
        if let Err(e) = os::set_pipe_size(pipe.read.as_fd(), self.conf.pipe_size) {
            // EPERM past fs/pipe-user-pages-soft: a size hint refused, not an error.
            debug!(
                log,
                "transform pipe size {} refused: {e}", self.conf.pipe_size
            );
        }
        self.pipe_capacity = os::pipe_size(pipe.read.as_fd()).unwrap_or(4096);
        debug!(log, "transform pipe size {}", self.pipe_capacity);

        let data: *mut c_void = (self as *mut Transform).cast();
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
        };
        let child =
            Child::spawn(&cmd, self.conf.kill_timeout, log, child_event, data).map_err(|e| {
                let subject = match (e.step, &launch.dir) {
                    (os::SpawnStep::Chdir, Some(dir)) => dir.to_string_lossy().into_owned(),
                    _ => self.program.clone(),
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
        self.pid = child.pid();
        self.started = now_msec();
        debug!(
            log,
            "transform started \"{}\" pid {}", self.program, self.pid
        );
        // Only the child holds the write ends now: its exit (and its children's) ends the output.
        drop(pipe.write);
        drop(err_pipe.write);
        if let Some(p) = in_pipe {
            drop(p.read);
            let stdin = joined(
                EventFd::new_writer(p.write, log, stdin_event, data),
                log,
                "stdin",
            )?;
            self.stdin = Some(stdin);
            self.feed_stdin();
            if self.stdin_failed {
                return Err(NGX_HTTP_BAD_GATEWAY as ngx_int_t);
            }
            if let Some(rc) = self.body_error.take() {
                return Err(self.body_failed(rc));
            }
        }
        let watching = child.watch();
        self.child = Some(child);
        self.arm_program_timer(true);

        let stdout = joined(
            EventFd::new(pipe.read, log, stdout_event, data),
            log,
            "stdout",
        )?;
        let stderr = joined(
            EventFd::new(err_pipe.read, log, stderr_event, data),
            log,
            "stderr",
        )?;
        if !watching || !stdout.arm_read() || !stderr.arm_read() {
            return Err(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
        }
        self.stdout = Some(stdout);
        self.stderr = Some(stderr);
        Ok(())
    }

    /// Advances as far as possible; returns the status to finalize the request with when done.
    fn run(&mut self) -> Option<ngx_int_t> {
        if self.done {
            return None;
        }
        let waiting_on_program = match self.advance() {
            Next::Program => true,
            Next::Client => false,
            Next::Finish(rc) => {
                self.release();
                return Some(rc);
            }
        };
        self.waiting_on_program = waiting_on_program;
        self.arm_program_timer(waiting_on_program);
        let armed = !waiting_on_program || self.stdout.as_ref().is_none_or(EventFd::arm_read);
        if armed
            && self
                .http
                .arm_write(!waiting_on_program, self.conf.send_timeout)
        {
            return None;
        }
        self.release();
        Some(NGX_ERROR as ngx_int_t)
    }

    /// The program-side timer: `transform_read_timeout` while waiting for the program, and
    /// `transform_timeout` until it ends. Like proxy_read_timeout, it also keeps a gracefully
    /// exiting worker alive until the response is done.
    fn arm_program_timer(&self, waiting_on_program: bool) {
        let Some(child) = &self.child else {
            return;
        };
        // While the program waits for more of a streamed body, the client is the one to wait
        // for, and client_body_timeout the limit (nginx's proxy also starts proxy_read_timeout
        // only once the request is sent).
        let waiting_on_client_body = self.stdin.is_some()
            && self.body.streaming()
            && self.body.is_empty()
            && self.http.streaming_body();
        let mut ms =
            (waiting_on_program && !waiting_on_client_body).then_some(self.conf.read_timeout);
        if self.conf.timeout > 0 {
            let left = (self.started + self.conf.timeout)
                .saturating_sub(now_msec())
                .max(1);
            ms = Some(ms.map_or(left, |r| r.min(left)));
        }
        match ms {
            Some(ms) => child.set_timer(ms),
            None => child.clear_timer(),
        }
    }

    fn advance(&mut self) -> Next {
        let log = self.http.log();
        if self.shutdown {
            log_error!(
                NGX_LOG_INFO,
                log,
                0,
                "transform: worker shutdown closes the response of \"{}\"",
                self.program
            );
            self.http.set_client_error();
            return Next::Finish(NGX_ERROR as ngx_int_t);
        }
        if self.http.take_write_timeout() {
            log_error!(
                NGX_LOG_INFO,
                log,
                libc::ETIMEDOUT,
                "client timed out (transform_send_timeout {}ms)",
                self.conf.send_timeout
            );
            return Next::Finish(NGX_HTTP_REQUEST_TIME_OUT as ngx_int_t);
        }
        if self.program_timer {
            self.program_timer = false;
            return self.program_timed_out();
        }
        if self.stdin_failed {
            // Logged where it failed; the program is stopped with the request.
            return self.fail(NGX_HTTP_BAD_GATEWAY);
        }
        if let Some(rc) = self.body_error.take() {
            let status = self.body_failed(rc);
            return self.fail(status as u32);
        }
        if self.exited {
            self.collect_status();
        }
        if !self.output_done {
            let Some(stdout) = self.stdout.take() else {
                return Next::Finish(NGX_ERROR as ngx_int_t);
            };
            let next = self.relay(stdout.fd());
            if !self.output_done {
                self.stdout = Some(stdout);
            }
            if let Some(next) = next {
                return next;
            }
        }
        // The output is complete; the exit status decides how the response ends.
        self.collect_status();
        match self.exit {
            Some((status, _)) => self.finish(status),
            None => Next::Program,
        }
    }

    /// Reaps the program if it has exited.
    fn collect_status(&mut self) {
        if self.exit.is_none() {
            if let Some(status) = self.child.as_mut().and_then(Child::status) {
                self.exit = Some((status, now_msec()));
            }
        }
    }

    /// Moves output; `None` once the output is complete.
    fn relay(&mut self, pipe: BorrowedFd<'_>) -> Option<Next> {
        if self.transport.is_none() && self.conf.cgi_output != 0 {
            if let Err(next) = self.read_cgi_head(pipe) {
                return Some(next);
            }
        }
        if self.transport.is_none() {
            let (held, hung_up) = match os::pipe_state(pipe) {
                Ok(state) => state,
                Err(e) => return Some(self.io_failed("poll() on the program's stdout", e)),
            };
            if hung_up || self.exit.is_some() {
                // All the output there will be is held in the pipe: the status decides.
                self.collect_status();
                let Some((status, _)) = self.exit else {
                    return Some(Next::Program);
                };
                self.descendants_hold_output = !hung_up;
                if !status.success() {
                    self.output_done = true;
                    return None;
                }
                if let Err(rc) = self.commit(Some(held as u64)) {
                    return Some(Next::Finish(rc));
                }
            } else if held >= self.conf.commit_size.min(self.pipe_capacity).max(1) {
                if let Err(rc) = self.commit(None) {
                    return Some(Next::Finish(rc));
                }
            } else {
                return Some(Next::Program);
            }
        }
        let http = self.http;
        let pumped = match self.transport.as_mut().expect("committed") {
            Transport::Splice(t) => t.pump(http, pipe, &mut self.moved),
            Transport::Buffered(t) => t.pump(http, pipe, &mut self.moved),
        };
        match pumped {
            Ok(Pumped::ProgramIdle) if self.exit.is_some() => {
                // The program is gone and its descendants keep the pipe open.
                self.descendants_hold_output = true;
                self.output_done = true;
                None
            }
            Ok(Pumped::ProgramIdle) => Some(Next::Program),
            Ok(Pumped::ClientBusy) => Some(Next::Client),
            Ok(Pumped::Eof)
                if self.moved.limit != u64::MAX && self.moved.bytes < self.moved.limit =>
            {
                log_error!(
                    NGX_LOG_ERR,
                    self.http.log(),
                    0,
                    "transform program \"{}\" ended its output after {} of its Content-Length {}",
                    self.program,
                    self.moved.bytes,
                    self.moved.limit
                );
                Some(self.fail(NGX_HTTP_BAD_GATEWAY))
            }
            Ok(Pumped::Eof) => {
                self.output_done = true;
                None
            }
            Err(e) => Some(self.io_failed("sending the program's output", e)),
        }
    }

    /// Sends the response header and picks the transport: when the held output reaches
    /// `transform_commit_size` (length unknown), or when the output is complete (`length`).
    fn commit(&mut self, length: Option<u64>) -> Result<(), ngx_int_t> {
        self.commit_response(200, self.content_type, length, &[])
    }

    /// Sends the header (`status`, Content-Type, Content-Length) and `prefix`, the start of the
    /// body already read, then picks the transport for the rest.
    fn commit_response(
        &mut self,
        status: u16,
        content_type: Option<&'static [u8]>,
        length: Option<u64>,
        prefix: &[u8],
    ) -> Result<(), ngx_int_t> {
        let rc = self.http.send_status_header(status, content_type, length);
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || self.http.header_only() {
            return Err(rc);
        }
        if let Some(n) = length {
            self.moved.limit = n;
        }
        let prefix = &prefix[..prefix.len().min(self.moved.room() as usize)];
        if !prefix.is_empty() {
            if self.http.output_bytes(prefix) == NGX_ERROR as ngx_int_t {
                return Err(NGX_ERROR as ngx_int_t);
            }
            self.moved.bytes += prefix.len() as u64;
        }
        // Push the header through the filters now: they make their decisions on the way (gzip,
        // the addition filter's subrequests), and the splice transport must not overtake it.
        if self.http.send_flush() == NGX_ERROR as ngx_int_t {
            return Err(NGX_ERROR as ngx_int_t);
        }
        let log = self.http.log();
        let transport = match self.http.zero_copy_refusal(self.conf.splice != 0) {
            None => {
                debug!(log, "transform transport: splice");
                self.http.tcp_nodelay();
                Transport::Splice(Splice::new(self.http.chunked()))
            }
            Some(why) => {
                debug!(log, "transform transport: buffered ({why})");
                Transport::Buffered(BufRing::new(BUFFERS, BUFFER_SIZE, crate::Module::module()))
            }
        };
        self.transport = Some(transport);
        Ok(())
    }

    /// `transform_output cgi`: reads the header block (into memory, at most
    /// `transform_header_buffer_size`), then commits the response it describes. `Err` says what to
    /// wait for or how the request ends; `Ok` once committed (the body follows as usual).
    fn read_cgi_head(&mut self, pipe: BorrowedFd<'_>) -> Result<(), Next> {
        let max = self.conf.header_buffer_size;
        let log = self.http.log();
        loop {
            match cgi::parse(&self.head) {
                cgi::Parsed::Done(head, used) => return self.commit_cgi(head, used),
                cgi::Parsed::Invalid(why) => {
                    log_error!(
                        NGX_LOG_ERR,
                        log,
                        0,
                        "transform program \"{}\" sent an invalid header block: {why}",
                        self.program
                    );
                    return Err(self.fail(NGX_HTTP_BAD_GATEWAY));
                }
                cgi::Parsed::Incomplete if self.head.len() >= max => {
                    log_error!(
                        NGX_LOG_ERR,
                        log,
                        0,
                        "transform program \"{}\" sent a header block larger than \
                         transform_header_buffer_size {max}",
                        self.program
                    );
                    return Err(self.fail(NGX_HTTP_BAD_GATEWAY));
                }
                cgi::Parsed::Incomplete => {}
            }
            let start = self.head.len();
            self.head.resize(max, 0);
            let read = os::read(pipe, &mut self.head[start..]);
            self.head.truncate(start + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => {
                    log_error!(
                        NGX_LOG_ERR,
                        log,
                        0,
                        "transform program \"{}\" ended its output before the end of its \
                         header block",
                        self.program
                    );
                    return Err(self.fail(NGX_HTTP_BAD_GATEWAY));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(Next::Program),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_failed("read() from the program's stdout", e)),
            }
        }
    }

    /// Applies a CGI header block: an internal redirect for a local Location without Status (as
    /// fastcgi does), otherwise the status and headers it names, then the commit.
    fn commit_cgi(&mut self, head: cgi::Head, used: usize) -> Result<(), Next> {
        if let (Some(location), None) = (&head.location, head.status) {
            if location.starts_with(b"/") {
                let location = location.clone();
                debug!(self.http.log(), "transform internal redirect");
                // What is left of a streamed body is not read for the next location.
                self.close_stdin();
                self.release();
                return Err(Next::Finish(self.http.internal_redirect(&location)));
            }
        }
        let status = head
            .status
            .unwrap_or(if head.location.is_some() { 302 } else { 200 });
        for (name, value) in &head.headers {
            self.http.add_header(name, value);
        }
        if let Some(location) = &head.location {
            self.http
                .add_header("Location", &String::from_utf8_lossy(location));
        }
        let content_type = match &head.content_type {
            Some(t) => self.http.pool_copy(t),
            None => self.content_type,
        };
        let prefix = self.head[used..].to_vec();
        self.commit_response(status, content_type, head.content_length, &prefix)
            .map_err(Next::Finish)
    }

    fn program_timed_out(&mut self) -> Next {
        let total = self.conf.timeout > 0 && now_msec() >= self.started + self.conf.timeout;
        let (limit, ms) = if total {
            ("transform_timeout", self.conf.timeout)
        } else {
            ("transform_read_timeout", self.conf.read_timeout)
        };
        log_error!(
            NGX_LOG_ERR,
            self.http.log(),
            libc::ETIMEDOUT,
            "transform program \"{}\" timed out ({limit} {ms}ms)",
            self.program
        );
        self.fail(NGX_HTTP_GATEWAY_TIME_OUT)
    }

    /// Writes the request body to the program's stdin as far as the pipe takes it and, while a
    /// streamed body arrives, reads more of it from the client (nginx stops reading when its
    /// buffers are all waiting for the program: backpressure up to the client). Closes stdin at
    /// the end of the body (the program sees end of file). A program that does not read its
    /// stdin is not an error: the rest of the body is dropped.
    fn feed_stdin(&mut self) {
        loop {
            let Some(fd) = &self.stdin else {
                return;
            };
            let blocked = match self.body.write_to(fd.fd()) {
                Ok(()) => false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !fd.arm_write() {
                        self.stdin_failed = true;
                        self.close_stdin();
                        return;
                    }
                    true
                }
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    debug!(self.http.log(), "transform: the program closed its stdin");
                    self.close_stdin();
                    return;
                }
                Err(e) => {
                    log_error!(
                        NGX_LOG_ERR,
                        self.http.log(),
                        os::errno(&e),
                        "transform: writing the request body to \"{}\" failed",
                        self.program
                    );
                    self.stdin_failed = true;
                    self.close_stdin();
                    return;
                }
            };
            let reading = self.body.streaming() && self.http.streaming_body();
            let mut more = false;
            if reading {
                // Also while blocked, as nginx's upstream does: nginx reads on into free
                // buffer space (restarting client_body_timeout), or stops the timer when
                // every buffer waits for the program.
                let rc = self.http.read_unbuffered_body();
                if rc != NGX_OK as ngx_int_t && rc != NGX_AGAIN as ngx_int_t {
                    self.body_error = Some(rc);
                    self.close_stdin();
                    return;
                }
                more = self.body.pull(self.http);
            }
            if blocked {
                return;
            }
            if !more {
                if !reading {
                    // All of the body is written.
                    self.close_stdin();
                }
                return;
            }
        }
    }

    /// Closes the program's stdin; a streamed body is no longer read from the client.
    fn close_stdin(&mut self) {
        self.stdin = None;
        if self.body.streaming() {
            self.http.stop_reading_body();
        }
    }

    /// Feeds stdin after an event of its pipe or of the client's body. Only a failure needs a
    /// run of the machine; otherwise the program made progress (or the client did), so only
    /// the program's timer is restarted, and the output side is left alone.
    fn stdin_progress(&mut self) -> bool {
        self.feed_stdin();
        if self.stdin_failed || self.body_error.is_some() {
            return true;
        }
        self.arm_program_timer(self.waiting_on_program);
        false
    }

    /// Logs why a streamed body could not be read; returns the response status.
    fn body_failed(&self, rc: ngx_int_t) -> ngx_int_t {
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
            self.http.log(),
            0,
            "transform: request body for \"{}\" cut short: {why}; the program is stopped",
            self.program
        );
        status
    }

    /// Reads what the program wrote to stderr (fairly: a bounded amount per call, then again
    /// from nginx's posted events) and logs it.
    fn drain_stderr(&mut self) {
        let log = self.http.log();
        let Some(fd) = &self.stderr else {
            return;
        };
        let mut buf = [0u8; 16 * 1024];
        let mut taken = 0;
        loop {
            if taken >= STDERR_PER_EVENT {
                fd.post_read();
                return;
            }
            match os::read(fd.fd(), &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    taken += n;
                    self.stderr_log.feed(log, &buf[..n], now_msec());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if fd.arm_read() {
                        return;
                    }
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        // End of file (or an error): the lines are complete.
        self.stderr = None;
        self.stderr_log.finish(log, now_msec());
    }

    /// Ends a response whose program failed: 502/504 before the commit, broken after it. The
    /// last stderr lines go to the log at error level.
    fn fail(&mut self, status: u32) -> Next {
        self.drain_stderr();
        self.stderr_log.log_tail(self.http.log(), &self.program);
        if self.transport.is_some() {
            self.http.set_client_error();
            self.http.reset_on_close();
            return Next::Finish(NGX_ERROR as ngx_int_t);
        }
        Next::Finish(status as ngx_int_t)
    }

    fn finish(&mut self, status: os::ExitStatus) -> Next {
        let log = self.http.log();
        if self.descendants_hold_output {
            // Output ends with the program; what it left running goes with it (at release).
            log_error!(
                NGX_LOG_INFO,
                log,
                0,
                "transform program \"{}\" exited while its descendants kept stdout open; \
                 they are killed",
                self.program
            );
        }
        debug!(
            log,
            "transform done: \"{}\" {status}, {} bytes, transport {}, {} calls",
            self.program,
            self.moved.bytes,
            match self.transport {
                Some(Transport::Splice(_)) => "splice",
                Some(Transport::Buffered(_)) => "buffered",
                None => "none",
            },
            self.moved.calls
        );
        if !status.success() {
            if self.transport.is_some() {
                log_error!(
                    NGX_LOG_ERR,
                    log,
                    0,
                    "transform program \"{}\" {status} after {} bytes of output; response truncated",
                    self.program,
                    self.moved.bytes
                );
            } else {
                log_error!(
                    NGX_LOG_ERR,
                    log,
                    0,
                    "transform program \"{}\" {status}",
                    self.program
                );
            }
            return self.fail(NGX_HTTP_BAD_GATEWAY);
        }
        Next::Finish(self.http.send_last())
    }

    fn io_failed(&mut self, what: &str, e: io::Error) -> Next {
        log_error!(
            NGX_LOG_INFO,
            self.http.log(),
            os::errno(&e),
            "transform: {what} failed"
        );
        self.http.set_client_error();
        Next::Finish(NGX_ERROR as ngx_int_t)
    }

    /// Stops everything the request started: closes the pipe; a program still running gets
    /// SIGTERM, then SIGKILL after `transform_kill_timeout` (the orphan reaper sees to it).
    /// Idempotent; runs at the end and at the request's cleanup.
    fn release(&mut self) {
        if !self.done {
            self.drain_stderr();
            self.stderr_log.finish(self.http.log(), now_msec());
            if self.body.streaming() && self.http.streaming_body() {
                // Nobody reads the rest of the body now (an error page, a redirect, or
                // nginx's lingering close drops it).
                self.http.stop_reading_body();
            }
        }
        self.done = true;
        self.stdout = None;
        self.stdin = None;
        self.stderr = None;
        self.child = None;
    }
}

impl Transform {
    /// The value of a log variable for this request.
    pub fn variable(&self, which: Variable) -> Option<String> {
        if self.pid == 0 {
            return None;
        }
        Some(match which {
            Variable::Pid => self.pid.to_string(),
            Variable::ExitStatus => match self.exit?.0 {
                os::ExitStatus::Code(c) => c.to_string(),
                os::ExitStatus::Signal(s) => os::signal_name(s),
            },
            Variable::Time => {
                let end = self.exit.map_or_else(now_msec, |(_, at)| at);
                let ms = end.saturating_sub(self.started);
                format!("{}.{:03}", ms / 1000, ms % 1000)
            }
            Variable::Bytes => self.moved.bytes.to_string(),
        })
    }
}

impl Drop for Transform {
    fn drop(&mut self) {
        self.release();
    }
}

/// The splice transport: pipe -> socket, with the module's own chunk framing.
struct Splice {
    chunked: bool,
    /// Bytes of the current chunk (or piece) still to move.
    left: usize,
    /// The CRLF that ends the last chunk is owed.
    crlf_due: bool,
    /// Framing bytes (CRLF, chunk size line) not yet written.
    frame: [u8; 24],
    frame_pos: usize,
    frame_len: usize,
}

impl Splice {
    fn new(chunked: bool) -> Splice {
        Splice {
            chunked,
            left: 0,
            crlf_due: false,
            frame: [0; 24],
            frame_pos: 0,
            frame_len: 0,
        }
    }

    fn pump(&mut self, http: Http, pipe: BorrowedFd<'_>, moved: &mut Moved) -> io::Result<Pumped> {
        // Whatever nginx still holds (the header) goes first.
        if http.pending_output() {
            if http.output_filter(core::ptr::null_mut()) == NGX_ERROR as ngx_int_t {
                return Err(io::Error::other("output filter failed"));
            }
            if http.pending_output() {
                return Ok(Pumped::ClientBusy);
            }
        }
        let sock = http.client_fd();
        loop {
            if self.frame_pos < self.frame_len {
                let frame = &self.frame[self.frame_pos..self.frame_len];
                match os::send(sock, frame, self.left > 0) {
                    Ok(n) => {
                        self.frame_pos += n;
                        http.add_sent(n);
                    }
                    Err(e) => {
                        if client_would_block(http, e)? {
                            return Ok(Pumped::ClientBusy);
                        }
                    }
                }
                continue;
            }
            if self.left > 0 {
                match os::splice_to_socket(pipe, sock, self.left, false) {
                    Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                    Ok(n) => {
                        moved.calls += 1;
                        moved.bytes += n as u64;
                        http.add_sent(n);
                        self.left -= n;
                        if self.left == 0 && self.chunked {
                            self.crlf_due = true;
                        }
                    }
                    // The pipe holds the bytes (FIONREAD said so): the socket is full.
                    Err(e) => {
                        if client_would_block(http, e)? {
                            return Ok(Pumped::ClientBusy);
                        }
                    }
                }
                continue;
            }
            let room = moved.room();
            match if room == 0 {
                None
            } else {
                os::pipe_pending(pipe)?
            } {
                Some(0) => return Ok(Pumped::ProgramIdle),
                Some(n) => {
                    let n = n.min(usize::try_from(room).unwrap_or(usize::MAX));
                    self.left = n;
                    if self.chunked {
                        self.set_frame(Some(n));
                    }
                    continue;
                }
                None => {}
            }
            if self.crlf_due {
                self.set_frame(None);
                continue;
            }
            return Ok(Pumped::Eof);
        }
    }

    /// Queues the owed CRLF and, for `Some(n)`, the size line of a chunk of n bytes.
    fn set_frame(&mut self, size: Option<usize>) {
        let mut len = 0;
        if self.crlf_due {
            self.frame[..2].copy_from_slice(b"\r\n");
            len = 2;
            self.crlf_due = false;
        }
        if let Some(n) = size {
            len += write_chunk_size(&mut self.frame[len..], n);
        }
        self.frame_pos = 0;
        self.frame_len = len;
    }
}

/// Writes `n` in hex followed by CRLF; returns the length written.
fn write_chunk_size(out: &mut [u8], n: usize) -> usize {
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, digit) in out.iter_mut().take(digits).enumerate() {
        *digit = b"0123456789abcdef"[(n >> (4 * (digits - 1 - i))) & 0xf];
    }
    out[digits..digits + 2].copy_from_slice(b"\r\n");
    digits + 2
}

/// Sorts a failed write to the client: `Ok(true)` the socket is full (now marked so), `Ok(false)`
/// interrupted (try again), `Err` a real error.
fn client_would_block(http: Http, e: io::Error) -> io::Result<bool> {
    match e.kind() {
        io::ErrorKind::WouldBlock => {
            http.client_full();
            Ok(true)
        }
        io::ErrorKind::Interrupted => Ok(false),
        _ => Err(e),
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

/// Runs the machine and finalizes the request when it is done.
///
/// # Safety
/// `ctx` is a live `Transform` (its request is alive).
unsafe fn step(ctx: *mut Transform) {
    // SAFETY: caller's contract; the request is only finalized after run() returned.
    let http = unsafe { (*ctx).http };
    // SAFETY: as above.
    if let Some(rc) = unsafe { (*ctx).run() } {
        http.finalize(rc);
    }
}

/// The program wrote (or closed) its stdout.
unsafe extern "C" fn stdout_event(ev: *mut ngx_event_t) {
    // SAFETY: installed on the stdout EventFd, whose data is the Transform that owns it.
    let ctx = unsafe { EventFd::data_of(ev) }.cast::<Transform>();
    // SAFETY: the EventFd lives inside the Transform, so the Transform is alive.
    if unsafe { EventFd::closing(ev) } {
        // SAFETY: as above.
        unsafe { (*ctx).shutdown = true };
    }
    // SAFETY: as above.
    unsafe { wake(ctx) };
}

/// Runs the machine from an event of one of the program's pipes, then the requests nginx
/// posted meanwhile (as nginx does after a request's own events).
///
/// # Safety
/// `ctx` is a live `Transform`.
unsafe fn wake(ctx: *mut Transform) {
    // SAFETY: caller's contract.
    let c = unsafe { (*ctx).http.connection() };
    // SAFETY: as above.
    unsafe { step(ctx) };
    // SAFETY: connections are never freed, only marked destroyed (checked by nginx).
    unsafe { run_posted_requests(c) };
}

/// The program's stdin takes more.
unsafe extern "C" fn stdin_event(ev: *mut ngx_event_t) {
    // SAFETY: installed on the stdin EventFd, whose data is the Transform that owns it.
    let ctx = unsafe { EventFd::data_of(ev) }.cast::<Transform>();
    // SAFETY: ev is the EventFd's event.
    if unsafe { EventFd::closing(ev) } {
        // SAFETY: the Transform owns the EventFd, so it is alive.
        unsafe { stdout_event(ev) };
        return;
    }
    // SAFETY: as above. ev is not used after feed_stdin, which may close the stdin EventFd.
    unsafe {
        if (*ctx).stdin_progress() {
            wake(ctx);
        }
    }
}

/// The program wrote to stderr.
unsafe extern "C" fn stderr_event(ev: *mut ngx_event_t) {
    // SAFETY: installed on the stderr EventFd, whose data is the Transform that owns it.
    let ctx = unsafe { EventFd::data_of(ev) }.cast::<Transform>();
    // SAFETY: ev is the EventFd's read event.
    if unsafe { EventFd::closing(ev) } {
        // SAFETY: the Transform owns the EventFd, so it is alive.
        unsafe { stdout_event(ev) };
        return;
    }
    // SAFETY: as above.
    unsafe { (*ctx).drain_stderr() };
}

/// The program exited, or its timer (read or total timeout) expired.
unsafe extern "C" fn child_event(ev: *mut ngx_event_t) {
    // SAFETY: installed on the pidfd EventFd, whose data is the Transform that owns it.
    unsafe {
        let ctx = EventFd::data_of(ev).cast::<Transform>();
        if EventFd::take_timedout(ev) {
            (*ctx).program_timer = true;
        } else {
            (*ctx).exited = true;
        }
        stdout_event(ev)
    }
}

/// More of a streamed request body arrived (or client_body_timeout fired).
unsafe extern "C" fn client_body_event(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls request event handlers with a live request.
    let http = unsafe { Http::from_ptr(r) };
    let ctx = http.ctx(crate::Module::module()).cast::<Transform>();
    if ctx.is_null() {
        // An internal redirect left the body to the next location.
        return;
    }
    // SAFETY: the ctx lives in the request pool.
    unsafe {
        if (*ctx).stdin_progress() {
            step(ctx);
        }
    }
}

/// The client can take more output (or its send timer fired).
unsafe extern "C" fn client_write_event(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls request event handlers with a live request.
    let http = unsafe { Http::from_ptr(r) };
    let ctx = http.ctx(crate::Module::module()).cast::<Transform>();
    if !ctx.is_null() {
        // SAFETY: the ctx lives in the request pool.
        unsafe { step(ctx) };
    }
}

/// The request ends (normally, on client abort, or on worker shutdown).
unsafe extern "C" fn cleanup(data: *mut c_void) {
    // SAFETY: registered with the Transform as data; the pool (and it) still lives.
    unsafe { (*data.cast::<Transform>()).release() };
}
