//! The relay: one state machine per request that moves a program's output to the client.
//!
//! It is made of three parts, each in its own file:
//!
//! - the **source**, [`program::Program`]: the spawned program, its stdout (the bytes), its stdin
//!   (fed with the request body), its stderr (into the error log) and its exit;
//! - the **phase**, [`Phase`]: what the response has become so far, an enum whose variants are
//!   the only states there are;
//! - the **sink**, [`sink::Sink`]: how bytes leave, by splice(2) to the socket or through nginx's
//!   output chain, chosen once at the commit by [`Http::zero_copy_refusal`].
//!
//! Nothing is sent while the phase is [`Phase::Holding`]: the output stays in the pipe (a CGI
//! header block is read into memory) until `transform_commit_size` bytes are held,
//! `transform_commit_timeout` passed since the first one, or the program ended; none of these
//! depends on a write into a non-empty pipe waking the machine. A program that fails meanwhile becomes a clean 502. The commit sends the
//! header and what was held, and the phase becomes [`Phase::Streaming`]: the sink moves the rest
//! as it comes, and stops reading when the client does not keep up, so the program blocks in
//! write() and memory stays bounded. When the output ends the exit status decides: the last
//! chunk, or (after a failure) a reset connection, so a broken response never looks complete.
//! A response whose Content-Length is reached is complete whatever the program does next.

mod commit;
pub mod filter;
mod program;
mod sink;

use core::ffi::c_void;
use std::io;

use nginx_sys::{
    ngx_event_t, ngx_http_request_t, ngx_int_t, NGX_ERROR, NGX_HTTP_BAD_GATEWAY,
    NGX_HTTP_GATEWAY_TIME_OUT, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_REQUEST_TIME_OUT,
    NGX_LOG_ERR, NGX_LOG_INFO, NGX_OK,
};
use ngx::http::HttpModule;

use crate::background;
use crate::conf::TransformConf;
use crate::nginx::filter::Downstream;
use crate::nginx::{pool_allocate, run_posted_requests, BodyCursor, CtxKind, EventFd, Http, Moved};
use crate::os;
use crate::pool::{Lease, Loss};
use crate::store::Store;

pub use program::{Launch, Program, DEFAULT_PATH};

use commit::Held;
use program::StdinFailure;
use sink::{Pumped, Sink};

/// Starts the program and the relay; the content handler returns what this returns.
pub fn start(
    http: Http,
    conf: &'static TransformConf,
    launch: Launch,
    content_type: Option<&'static [u8]>,
    store: Option<Store>,
) -> ngx_int_t {
    let program = Program::new(http, conf, &launch, false);
    let ctx = match install(
        http,
        Transform::new(http, conf, program, content_type, store, Role::Handler),
    ) {
        Ok(ctx) => ctx,
        Err(rc) => return rc,
    };
    let data: *mut c_void = ctx.cast();
    // SAFETY: ctx was just allocated in the request pool and is not aliased.
    let launched = unsafe { (*ctx).program.launch(http, &launch, data) };
    if let Err(rc) = launched {
        // The program could not start: the waiters answer as for a failed program (502),
        // rather than each trying in turn.
        // SAFETY: as above.
        if let Some(store) = unsafe { (*ctx).store.as_mut() } {
            store.abandon();
        }
        // Nothing may stay armed for a request that ends with an error page.
        // SAFETY: as above.
        unsafe { (*ctx).release() };
        return rc;
    }
    http.set_event_handlers(Some(client_write_event), Some(client_body_event));
    http.take_reference();
    ngx::core::Status::NGX_DONE.into()
}

/// Starts the relay for `transform_pass` with a process of its pool.
pub fn start_pooled(
    http: Http,
    conf: &'static TransformConf,
    lease: Lease,
    content_type: Option<&'static [u8]>,
) -> ngx_int_t {
    let body = http.has_body().then(|| BodyCursor::of(http).body_len());
    let Some(head) = http.pool_request_head(body) else {
        log_error!(
            NGX_LOG_ERR,
            http.log(),
            0,
            "transform_pass: the request has a CR, LF or NUL in its method, URI or headers; it \
             is not passed to the pool"
        );
        lease.unused();
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    };
    let program = Program::pooled(http, conf, lease, head);
    let ctx = match install(
        http,
        Transform::new(http, conf, program, content_type, None, Role::Handler),
    ) {
        Ok(ctx) => ctx,
        Err(rc) => return rc,
    };
    let data: *mut c_void = ctx.cast();
    // SAFETY: ctx was just allocated in the request pool and is not aliased.
    if let Err(rc) = unsafe { (*ctx).program.launch_pooled(http, data) } {
        // SAFETY: as above.
        unsafe { (*ctx).release() };
        return rc;
    }
    http.set_event_handlers(Some(client_write_event), Some(client_body_event));
    http.take_reference();
    ngx::core::Status::NGX_DONE.into()
}

/// Puts the machine in the request pool, with its cleanup, as the module's context.
fn install(http: Http, t: Transform) -> Result<*mut Transform, ngx_int_t> {
    let ctx = pool_allocate(http.pool(), t);
    if ctx.is_null()
        || !http.add_cleanup(cleanup, ctx.cast())
        || !http.set_ctx(crate::Module::module(), CtxKind::Transform, ctx.cast())
    {
        return Err(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
    }
    Ok(ctx)
}

/// The module's log variables.
#[derive(Clone, Copy)]
pub enum Variable {
    Pid,
    ExitStatus,
    Time,
    Bytes,
    /// A pooled process: the requests it served, this one included.
    Requests,
    /// A pooled process: how long the request waited for it.
    QueueTime,
}

impl From<usize> for Variable {
    fn from(n: usize) -> Variable {
        match n {
            0 => Variable::Pid,
            1 => Variable::ExitStatus,
            2 => Variable::Time,
            3 => Variable::Bytes,
            4 => Variable::Requests,
            _ => Variable::QueueTime,
        }
    }
}

/// Per-request state, owned by the request pool.
pub struct Transform {
    http: Http,
    conf: &'static TransformConf,
    /// `transform_type`, evaluated (None: nginx's default_type).
    content_type: Option<&'static [u8]>,
    /// The temporary file of `transform_store` / `transform_lock`, and what becomes of it.
    store: Option<Store>,
    program: Program,
    phase: Phase,
    /// What was passed on to the client so far (and the most that may be).
    moved: Moved,
    /// nginx closes the worker's connections: nothing goes on in the background.
    shutting_down: bool,
    role: Role,
}

/// Whose response the machine makes.
enum Role {
    /// `transform_exec`: the request's own (the machine holds a reference and ends it).
    Handler,
    /// `transform_filter`: another handler's, whose body the program replaces.
    Filter(filter::Side),
}

/// What the response has become. Each variant is a state of the machine; the program's side
/// (running or exited, stdout open or closed) is the source's own business.
enum Phase {
    /// Nothing sent yet: the output is held in memory until the commit.
    Holding(Held),
    /// The header is out; the output moves through the sink as it comes.
    Streaming(Sink),
    /// All the output was passed on; the exit status decides how the response ends.
    Drained,
    /// The response is complete (its Content-Length reached, the last buffer sent) and the
    /// program's output ended: its exit status is only logged.
    Complete,
    /// Finalized or aborted by the module: every later event is ignored.
    Done,
    /// nginx ended the request itself (its cleanup ran, possibly from inside a call the machine
    /// made, a filter or a redirect target terminating it): nothing more may be done with the
    /// request, not even a finalize.
    Terminated,
}

/// What woke the machine.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Event {
    /// The program wrote to (or closed) its stdout.
    Output,
    /// `transform_commit_timeout` passed with output held.
    Hold,
    /// The program exited.
    Exit,
    /// `transform_read_timeout` or `transform_timeout` expired.
    ProgramTimer,
    /// The program's stdin accepts more (it read some of the body).
    Stdin,
    /// More of a streamed request body arrived (or client_body_timeout fired).
    ClientBody,
    /// The client accepts more output (or transform_send_timeout fired).
    Client,
    /// nginx closes the worker's connections (worker_shutdown_timeout).
    Shutdown,
    /// A filter: the response's handler passed more of it (or asks for progress).
    Input,
}

/// What the machine waits for next.
enum Next {
    Program,
    Client,
    Finish(ngx_int_t),
}

/// The result of one phase's work: the phase changed (go on), or wait.
enum Flow {
    Continue,
    Wait(Next),
}

impl Transform {
    /// The machine for a program about to start, holding its output until the commit.
    fn new(
        http: Http,
        conf: &'static TransformConf,
        program: Program,
        content_type: Option<&'static [u8]>,
        store: Option<Store>,
        role: Role,
    ) -> Transform {
        Transform {
            http,
            conf,
            content_type,
            store,
            phase: Phase::Holding(Held::new(conf, program.is_pooled())),
            program,
            moved: Moved::default(),
            shutting_down: false,
            role,
        }
    }

    /// Handles `ev` and advances as far as possible; returns the status to finalize the request
    /// with when it is done.
    fn run(&mut self, ev: Event) -> Option<ngx_int_t> {
        if matches!(self.phase, Phase::Done | Phase::Terminated) {
            return None;
        }
        let next = match self.handle(ev) {
            Some(next) => next,
            None => self.advance(),
        };
        if matches!(self.phase, Phase::Terminated) {
            return None;
        }
        let on_program = match next {
            Next::Finish(rc) => {
                self.release();
                return Some(rc);
            }
            Next::Program => true,
            Next::Client => false,
        };
        // Client-side events are no progress of the program: a client trickling its body must
        // not keep a stuck program alive (nor a handler trickling the response it filters).
        let restart = !matches!(ev, Event::ClientBody | Event::Input);
        self.program
            .arm_timer(self.http, on_program, restart, self.holding_since());
        if !self.program.watch_output(on_program) {
            self.release();
            return Some(NGX_ERROR as ngx_int_t);
        }
        if matches!(self.role, Role::Filter(_)) {
            self.filter_wait(on_program);
            return None;
        }
        if self.http.arm_write(!on_program, self.conf.send_timeout) {
            return None;
        }
        self.release();
        Some(NGX_ERROR as ngx_int_t)
    }

    /// The parts of an event that are not moving output.
    fn handle(&mut self, ev: Event) -> Option<Next> {
        match ev {
            Event::Shutdown => {
                self.shutting_down = true;
                log_error!(
                    NGX_LOG_INFO,
                    self.http.log(),
                    0,
                    "transform: worker shutdown closes the response of \"{}\"",
                    self.program.name()
                );
                self.http.set_client_error();
                Some(Next::Finish(NGX_ERROR as ngx_int_t))
            }
            Event::ProgramTimer => Some(self.program_timed_out()),
            Event::Client if self.http.take_write_timeout() => {
                log_error!(
                    NGX_LOG_INFO,
                    self.http.log(),
                    libc::ETIMEDOUT,
                    "client timed out (transform_send_timeout {}ms)",
                    self.conf.send_timeout
                );
                Some(Next::Finish(NGX_HTTP_REQUEST_TIME_OUT as ngx_int_t))
            }
            Event::Hold => {
                if let Phase::Holding(held) = &mut self.phase {
                    held.expire();
                }
                None
            }
            Event::Stdin | Event::ClientBody | Event::Input => match self
                .program
                .feed_stdin(self.http)
            {
                Ok(()) => None,
                // A body nobody reads does not concern a response already under way: it
                // finishes, and the connection closes after it.
                Err(StdinFailure::Body(rc)) if self.program.drops_body() && self.committed() => {
                    let then = "the response goes on, then the connection closes";
                    self.program.body_failed_then(self.http, rc, then);
                    self.http.no_keepalive();
                    None
                }
                Err(f) => Some(self.stdin_failed(f)),
            },
            Event::Output | Event::Exit | Event::Client => None,
        }
    }

    /// Runs the phases until one has to wait.
    fn advance(&mut self) -> Next {
        self.program.collect_status(self.http);
        loop {
            let flow = match self.phase {
                Phase::Holding(_) => self.hold(),
                Phase::Streaming(_) => self.stream(),
                Phase::Drained => self.drained(),
                Phase::Complete => self.complete(),
                Phase::Done => Flow::Wait(Next::Finish(NGX_ERROR as ngx_int_t)),
                Phase::Terminated => Flow::Wait(Next::Program),
            };
            match flow {
                Flow::Continue => {}
                Flow::Wait(next) => return next,
            }
        }
    }

    /// Since when output is held (the commit timer's start), while holding.
    fn holding_since(&self) -> Option<nginx_sys::ngx_msec_t> {
        match &self.phase {
            Phase::Holding(held) => held.since(),
            _ => None,
        }
    }

    /// Streaming: the sink moves what the program writes.
    fn stream(&mut self) -> Flow {
        if self.program.stdout().is_none() {
            return self.at_end();
        }
        if self.program.exit().is_some() && self.moved.end == u64::MAX {
            // The program exited: its output is what its pipe holds now. Descendants that keep
            // the pipe open and writing are not waited for (they are killed with the request),
            // and the sink ends its framing there.
            match self.program.stdout().map_or(Ok((0, true)), os::pipe_state) {
                Ok((held, hung_up)) => {
                    self.moved.end = self.moved.bytes + held as u64;
                    if !hung_up {
                        self.program.note_left_writers();
                    }
                }
                Err(e) => return Flow::Wait(self.io_failed("poll() on the program's stdout", e)),
            }
        }
        let Some(stdout) = self.program.stdout() else {
            return self.at_end();
        };
        let out = self.out();
        let Phase::Streaming(sink) = &mut self.phase else {
            unreachable!("stream() runs in the streaming phase");
        };
        let max_chunk = sink::fair_chunk(self.http.sendfile_max_chunk(), crate::child::running());
        let before = self.moved.bytes;
        let pumped = match (sink, self.store.as_mut()) {
            (Sink::File(f), Some(store)) => match f.pump(self.http, stdout, &mut self.moved, store)
            {
                Err(sink::FileError::Store(e)) => {
                    // The client still gets all of it, through the output chain.
                    store.write_failed(self.http, &e);
                    let chain = Sink::buffered(self.http, "writing the stored file failed");
                    self.set_phase(Phase::Streaming(chain));
                    return Flow::Continue;
                }
                Err(sink::FileError::Client(e)) => Err(e),
                Ok(p) => Ok(p),
            },
            (sink, _) => sink.pump(self.http, out, stdout, &mut self.moved, max_chunk),
        };
        match pumped {
            Ok(Pumped::ProgramIdle) if self.program.exit().is_some() => {
                self.program.end_output(true);
                self.output_ended()
            }
            Ok(Pumped::ProgramIdle) => {
                // The pipe was full: the program waited for the worker.
                if self.moved.bytes - before >= self.program.pipe_capacity() as u64 {
                    self.program.grow_pipe(self.http.log());
                }
                Flow::Wait(Next::Program)
            }
            Ok(Pumped::ClientBusy) => Flow::Wait(Next::Client),
            Ok(Pumped::Yield) => {
                self.program.post_output();
                Flow::Wait(Next::Program)
            }
            Ok(Pumped::Eof) => {
                if self.moved.bytes != self.moved.limit {
                    self.program.end_output(false);
                }
                self.at_end()
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                // (Only a pooled program's chunked body is decoded.)
                let why = e.to_string();
                log_error!(
                    NGX_LOG_ERR,
                    self.http.log(),
                    0,
                    "transform pool process {} of \"{}\" sent {why}; response truncated",
                    self.program.pid().unwrap_or(0),
                    self.program.name()
                );
                self.program.set_loss(Loss::Broke(why));
                Flow::Wait(self.fail(NGX_HTTP_BAD_GATEWAY))
            }
            Err(e) => Flow::Wait(self.io_failed("sending the program's output", e)),
        }
    }

    /// The sink moved all it will: the response is complete at its Content-Length, or the
    /// output ended.
    fn at_end(&mut self) -> Flow {
        if self.moved.bytes == self.moved.limit {
            self.complete_response()
        } else {
            self.output_ended()
        }
    }

    /// The program's output ended: all of it was passed on, unless it is shorter than the
    /// Content-Length it announced.
    fn output_ended(&mut self) -> Flow {
        if self.program.is_pooled() && self.program.exit().is_none() {
            // Its exit, which surely comes (within the program's timeouts), tells why: the
            // response ends as the exit status decides (a pooled process never exits cleanly
            // mid-response).
            self.set_phase(Phase::Drained);
            return Flow::Continue;
        }
        if self.program.is_pooled() {
            // A pooled program's response ends with its framing, not with its output.
            log_error!(
                NGX_LOG_ERR,
                self.http.log(),
                0,
                "transform pool process {} of \"{}\" ended its output after {} bytes, before \
                 the end of its response",
                self.program.pid().unwrap_or(0),
                self.program.name(),
                self.moved.bytes
            );
            return Flow::Wait(self.fail(NGX_HTTP_BAD_GATEWAY));
        }
        if self.moved.limit != u64::MAX && self.moved.bytes < self.moved.limit {
            log_error!(
                NGX_LOG_ERR,
                self.http.log(),
                0,
                "transform program \"{}\" ended its output after {} of its Content-Length {}",
                self.program.name(),
                self.moved.bytes,
                self.moved.limit
            );
            return Flow::Wait(self.fail(NGX_HTTP_BAD_GATEWAY));
        }
        self.set_phase(Phase::Drained);
        Flow::Continue
    }

    /// The response's Content-Length is reached: it is complete, whatever the program does next
    /// (as nginx's fastcgi module ends a response at its length). More output is dropped and
    /// logged once; a program still writing is let go (it gets `transform_kill_timeout` to end
    /// on its own, its failure logged), so the connection serves its next request at once.
    fn complete_response(&mut self) -> Flow {
        // (Counted and logged before the end goes out: whoever reads the response then finds
        // the line in the log.)
        let (in_pipe, hung_up) = match self.program.stdout() {
            None => (0, true),
            Some(fd) => os::pipe_state(fd).unwrap_or((0, true)),
        };
        let extra = self.moved.excess + in_pipe as u64;
        // What is beyond the length is counted for the log and to keep the output from the store.
        self.moved.excess = extra;
        if self.moved.declared && extra > 0 {
            self.log_excess(extra);
        }
        if self.program.is_pooled() {
            // Back to its pool (or replaced) before the end goes out: the next request may
            // take it at once.
            let close = self.moved.close;
            self.program.end_lease(self.http, extra, close);
            // (A request that gets the header only sends no body, nor its end.)
            if !self.http.header_only()
                && self.out().special(self.http, true) == NGX_ERROR as ngx_int_t
            {
                return Flow::Wait(self.io_failed("sending the end of the response", io_other()));
            }
            self.set_phase(Phase::Complete);
            return Flow::Wait(Next::Finish(NGX_OK as ngx_int_t));
        }
        if self.out().special(self.http, true) == NGX_ERROR as ngx_int_t {
            return Flow::Wait(self.io_failed("sending the end of the response", io_other()));
        }
        self.set_phase(Phase::Complete);
        if let Some(store) = &mut self.store {
            // The waiters have the whole response now.
            store.output_complete();
            if store.publishes() && extra == 0 {
                // Whether it is stored depends on the program's exit: it is waited for (within
                // its timeouts), as when its output ended with the response.
                return Flow::Continue;
            }
        }
        if self.program.exit().is_none() && !hung_up {
            self.program.detach();
            return Flow::Wait(Next::Finish(NGX_OK as ngx_int_t));
        }
        Flow::Continue
    }

    /// Output past a declared Content-Length: logged once.
    fn log_excess(&mut self, extra: u64) {
        if self.moved.excess_logged {
            return;
        }
        self.moved.excess_logged = true;
        log_error!(
            NGX_LOG_ERR,
            self.http.log(),
            0,
            "transform program \"{}\" sent more than its Content-Length {} ({extra} bytes \
             more so far); dropped",
            self.program.name(),
            self.moved.limit
        );
    }

    /// Complete: the output ended with the response; the program's exit is only logged.
    fn complete(&mut self) -> Flow {
        if self.http.pending_output()
            && self.out().body(self.http, core::ptr::null_mut()) == NGX_ERROR as ngx_int_t
        {
            return Flow::Wait(self.io_failed("sending the program's output", io_other()));
        }
        let Some(status) = self.program.exit() else {
            return Flow::Wait(Next::Program);
        };
        self.program.note_descendants(self.http);
        if !status.success() {
            log_error!(
                NGX_LOG_ERR,
                self.http.log(),
                0,
                "transform program \"{}\" {status} after its complete response",
                self.program.name()
            );
            self.program.log_stderr_tail(self.http);
        } else if let Some(store) = &mut self.store {
            // Not stored when the program wrote past its Content-Length (also after the
            // response was complete: what its pipe holds now).
            let late = self
                .program
                .stdout()
                .map_or(0, |fd| os::pipe_state(fd).map_or(0, |(n, _)| n));
            let clean = !(self.moved.declared && self.moved.excess + late as u64 > 0);
            if !clean && late > 0 {
                log_error!(
                    NGX_LOG_ERR,
                    self.http.log(),
                    0,
                    "transform program \"{}\" sent more than its Content-Length {} after its \
                     response ({late} bytes more); dropped, not stored",
                    self.program.name(),
                    self.moved.limit
                );
            }
            store.complete(self.http, clean);
        }
        Flow::Wait(Next::Finish(NGX_OK as ngx_int_t))
    }

    /// Drained: the exit status decides how the response ends.
    fn drained(&mut self) -> Flow {
        match self.program.exit() {
            None => Flow::Wait(Next::Program),
            Some(status) => Flow::Wait(self.finish(status)),
        }
    }

    fn finish(&mut self, status: os::ExitStatus) -> Next {
        let log = self.http.log();
        self.program.note_descendants(self.http);
        debug!(
            log,
            "transform done: \"{}\" {status}, {} bytes, transport {}, {} calls",
            self.program.name(),
            self.moved.bytes,
            self.transport(),
            self.moved.calls
        );
        if !status.success() || self.program.is_pooled() {
            if self.committed() {
                log_error!(
                    NGX_LOG_ERR,
                    log,
                    0,
                    "transform program \"{}\" {status} after {} bytes of output; response truncated",
                    self.program.name(),
                    self.moved.bytes
                );
            } else {
                log_error!(
                    NGX_LOG_ERR,
                    log,
                    0,
                    "transform program \"{}\" {status}",
                    self.program.name()
                );
            }
            return self.fail(NGX_HTTP_BAD_GATEWAY);
        }
        if let Some(store) = &mut self.store {
            store.complete(self.http, true);
        }
        Next::Finish(self.out().special(self.http, true))
    }

    /// Where the output goes.
    fn out(&self) -> Downstream {
        match self.role {
            Role::Handler => Downstream::Top,
            Role::Filter(_) => Downstream::Next,
        }
    }

    /// Whether the machine filters another handler's response.
    fn is_filter(&self) -> bool {
        matches!(self.role, Role::Filter(_))
    }

    /// Whether the response header went out.
    fn committed(&self) -> bool {
        !matches!(self.phase, Phase::Holding(_))
    }

    fn transport(&self) -> &'static str {
        match &self.phase {
            Phase::Streaming(sink) => sink.name(),
            Phase::Holding(_) => "none",
            _ => "done",
        }
    }

    /// Ends a response whose program failed: `status` (502, 504) before the commit, a broken
    /// response after it, and a complete one (logged only) once its Content-Length was reached.
    fn fail(&mut self, status: u32) -> Next {
        if let Some(store) = &mut self.store {
            store.abandon();
        }
        self.program.log_stderr_tail(self.http);
        match self.phase {
            Phase::Holding(_) => Next::Finish(status as ngx_int_t),
            Phase::Complete => Next::Finish(NGX_OK as ngx_int_t),
            _ => {
                self.http.set_client_error();
                self.http.reset_on_close();
                Next::Finish(NGX_ERROR as ngx_int_t)
            }
        }
    }

    fn program_timed_out(&mut self) -> Next {
        self.program.set_loss(Loss::TimedOut);
        let (limit, ms) = self.program.which_timeout();
        log_error!(
            NGX_LOG_ERR,
            self.http.log(),
            libc::ETIMEDOUT,
            "transform program \"{}\" timed out ({limit} {ms}ms)",
            self.program.name()
        );
        self.fail(NGX_HTTP_GATEWAY_TIME_OUT)
    }

    fn stdin_failed(&mut self, f: StdinFailure) -> Next {
        match f {
            // Logged where it failed; the program is stopped with the request.
            StdinFailure::Write => self.fail(NGX_HTTP_BAD_GATEWAY),
            StdinFailure::Body(rc) => {
                let status = self.program.body_failed(self.http, rc);
                self.fail(status as u32)
            }
        }
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

    /// Stops everything the request started: closes the pipes; a program still running gets
    /// SIGTERM, then SIGKILL after `transform_kill_timeout` (the orphan reaper sees to it).
    /// Idempotent; runs at the end and at the request's cleanup.
    fn release(&mut self) {
        if !matches!(self.phase, Phase::Done | Phase::Terminated) {
            self.go_on_in_background();
        }
        self.unwrap_writes();
        if let Some(store) = &mut self.store {
            // (Nothing if it was published, dropped for a failure, or handed over.)
            store.interrupt();
        }
        if !matches!(self.phase, Phase::Done | Phase::Terminated) {
            self.program.release(self.http);
            self.phase = Phase::Done;
        }
    }

    /// The request ends while its output still goes to a file that is to be published or that
    /// waiters read: the program goes on without it (as nginx's upstream keeps reading a
    /// response it stores after its client closed), unless the worker is shutting down.
    fn go_on_in_background(&mut self) {
        let Some(store) = &mut self.store else {
            return;
        };
        // After the commit: streaming into the file, its output ended (waiting for the exit),
        // or the response complete at its length.
        let committed = matches!(
            self.phase,
            Phase::Streaming(Sink::File(_)) | Phase::Drained | Phase::Complete
        );
        if self.shutting_down || !committed || !store.can_hand_over() {
            return;
        }
        let Some((name, stdout, stderr, child, deadline, pipe_pages)) =
            self.program.take_running(self.http)
        else {
            return;
        };
        let Some((file, temp, target, access, ticket, written, touch)) = store.hand_over() else {
            // (Dropping the child stops it.)
            return;
        };
        background::start(background::Handover {
            name,
            stdout,
            stderr,
            child,
            file,
            temp,
            target,
            access,
            ticket,
            written,
            limit: self.moved.limit,
            declared: self.moved.declared,
            touch,
            read_timeout: self.conf.read_timeout,
            deadline,
            pipe_pages,
        });
    }

    /// nginx ends the request (its cleanup): as `release`, and the machine stops for good.
    fn terminate(&mut self) {
        self.release();
        self.phase = Phase::Terminated;
    }

    /// Moves to `phase`, unless nginx ended the request meanwhile.
    fn set_phase(&mut self, phase: Phase) {
        if !matches!(self.phase, Phase::Terminated) {
            self.phase = phase;
        }
    }

    /// The value of a log variable for this request.
    pub fn variable(&self, which: Variable) -> Option<String> {
        match which {
            Variable::Bytes if self.program.pid().is_some() => Some(self.moved.bytes.to_string()),
            Variable::Bytes => None,
            other => self.program.variable(other),
        }
    }
}

impl Drop for Transform {
    fn drop(&mut self) {
        self.release();
    }
}

fn io_other() -> io::Error {
    io::Error::other("output filter failed")
}

/// Runs the machine and finalizes the request when it is done; whether it was finalized.
///
/// # Safety
/// `ctx` is a live `Transform` (its request is alive).
unsafe fn step(ctx: *mut Transform, ev: Event) -> bool {
    // SAFETY: caller's contract; the request is finalized by this function only after run()
    // returned. (nginx may run the request's cleanup from inside run(), when a filter or a
    // redirect target terminates the request: nginx then posts the termination, so the
    // request, its pool and the Transform stay allocated until run() returns. Strictly that
    // cleanup is a second `&mut` while run's is live; see the note on `cleanup`.)
    let http = unsafe { (*ctx).http };
    // SAFETY: as above.
    match unsafe { (*ctx).run(ev) } {
        // SAFETY: as above.
        Some(rc) if unsafe { (*ctx).is_filter() } => {
            // SAFETY: as above.
            unsafe { (*ctx).filter_end(rc) };
            true
        }
        Some(rc) => {
            http.finalize(rc);
            true
        }
        None => false,
    }
}

/// Runs the machine from an event of one of the program's descriptors, then the requests nginx
/// posted meanwhile (as nginx does after a request's own events).
///
/// # Safety
/// `ev` is the read or write event of an [`EventFd`] owned by a live `Transform`.
unsafe fn wake(ev: *mut ngx_event_t, what: Event) {
    // SAFETY: caller's contract: the EventFd's data is the Transform that owns it.
    let ctx = unsafe { EventFd::data_of(ev) }.cast::<Transform>();
    // SAFETY: as above.
    let what = if unsafe { EventFd::closing(ev) } {
        Event::Shutdown
    } else {
        what
    };
    // SAFETY: as above.
    let c = unsafe { (*ctx).http.connection() };
    // SAFETY: as above. ev is not used after step, which may close its EventFd.
    unsafe { step(ctx, what) };
    // SAFETY: connections are never freed, only marked destroyed (checked by nginx).
    unsafe { run_posted_requests(c) };
}

/// The program wrote (or closed) its stdout, or the commit timer expired.
unsafe extern "C" fn stdout_event(ev: *mut ngx_event_t) {
    // SAFETY: installed on the stdout EventFd of a live Transform.
    unsafe {
        let what = if EventFd::take_timedout(ev) {
            Event::Hold
        } else {
            Event::Output
        };
        wake(ev, what)
    }
}

/// The program's stdin takes more.
unsafe extern "C" fn stdin_event(ev: *mut ngx_event_t) {
    // SAFETY: installed on the stdin EventFd of a live Transform.
    unsafe { wake(ev, Event::Stdin) }
}

/// The program wrote to stderr: only logged, the response is not concerned.
unsafe extern "C" fn stderr_event(ev: *mut ngx_event_t) {
    // SAFETY: installed on the stderr EventFd, whose data is the Transform that owns it.
    unsafe {
        if EventFd::closing(ev) {
            wake(ev, Event::Shutdown);
            return;
        }
        let ctx = EventFd::data_of(ev).cast::<Transform>();
        let http = (*ctx).http;
        (*ctx).program.drain_stderr(http);
    }
}

/// The program exited, or its timer (read or total timeout) expired.
unsafe extern "C" fn child_event(ev: *mut ngx_event_t) {
    // SAFETY: installed on the pidfd EventFd of a live Transform.
    unsafe {
        let what = if EventFd::take_timedout(ev) {
            Event::ProgramTimer
        } else {
            Event::Exit
        };
        wake(ev, what)
    }
}

/// More of a streamed request body arrived (or client_body_timeout fired).
unsafe extern "C" fn client_body_event(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls request event handlers with a live request.
    let http = unsafe { Http::from_ptr(r) };
    let ctx = http
        .ctx(crate::Module::module(), CtxKind::Transform)
        .cast::<Transform>();
    if ctx.is_null() {
        // An internal redirect left the body to the next location.
        return;
    }
    // SAFETY: the ctx lives in the request pool.
    if unsafe { step(ctx, Event::ClientBody) } {
        return;
    }
    if !http.streaming_body() {
        // The whole body is read: from now on the client is only watched for a close, and the
        // edge that woke us may have been that close.
        http.watch_client_close();
    }
}

/// The client can take more output (or its send timer fired).
unsafe extern "C" fn client_write_event(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls request event handlers with a live request.
    let http = unsafe { Http::from_ptr(r) };
    let ctx = http
        .ctx(crate::Module::module(), CtxKind::Transform)
        .cast::<Transform>();
    if !ctx.is_null() {
        // SAFETY: the ctx lives in the request pool.
        unsafe { step(ctx, Event::Client) };
    }
}

/// The request ends (normally, on client abort, or on worker shutdown). It may run inside
/// `Transform::run` (a filter or a redirect target terminating the request): the phase becomes
/// `Terminated`, which no later step overwrites (`set_phase`) and after which `run` neither
/// arms nor finalizes anything.
unsafe extern "C" fn cleanup(data: *mut c_void) {
    // SAFETY: registered with the Transform as data; the pool (and it) still lives.
    unsafe { (*data.cast::<Transform>()).terminate() };
}

/// Handlers the source installs on the program's descriptors.
pub(crate) struct Handlers;

impl Handlers {
    pub const STDOUT: crate::nginx::EventHandler = stdout_event;
    pub const STDIN: crate::nginx::EventHandler = stdin_event;
    pub const STDERR: crate::nginx::EventHandler = stderr_event;
    pub const CHILD: crate::nginx::EventHandler = child_event;
}
