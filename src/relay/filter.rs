//! The relay as a body filter (`transform_filter`): the same machine, but the response belongs
//! to another handler (the static module, proxy_pass, fastcgi, `transform_exec`, a
//! subrequest's), which gives the body to the filter and ends the request itself.
//!
//! - **Input.** The handler's buffers are taken as they come ([`Transform::filter_body`]) and
//!   written to the program's stdin, each handed back (consumed) as it is written: the handler
//!   reuses its buffers and reads on only as fast as the program takes them. When all it gave
//!   was taken, the handler is called again (its write event handler, posted as nginx posts a
//!   subrequest), so it sends more, or sees the buffers free.
//! - **Output.** What the program writes goes to the filters after ours ([`Downstream::Next`]),
//!   or by splice(2) to the socket where the relay may; the header goes out at the commit.
//! - **Holding the request.** While the program runs, the request's `buffered` bit keeps nginx
//!   from ending it; the bit clears when the response is complete, and the handler is called
//!   so that nginx's writer ends it.
//! - **The client's write events** are the handler's (`r->write_event_handler`). While the
//!   relay waits for the client, it takes them first ([`client_writable`]), then hands each on.
//! - **send_timeout** is nginx's writer's while the client holds output back; while the
//!   program is waited for, the program's timers judge, and the writer's send timer is removed
//!   after its turn ([`fix_send_timer`]).
//! - **Failure** before the commit is an error page in place of the response (nginx's
//!   ngx_http_filter_finalize_request, as image_filter does); after it, a broken response.

use core::cell::RefCell;
use core::ffi::c_void;
use core::ptr;

use nginx_sys::{
    ngx_chain_t, ngx_event_t, ngx_http_event_handler_pt, ngx_http_request_t, ngx_int_t, ngx_uint_t,
    NGX_AGAIN, NGX_ERROR, NGX_HTTP_BAD_GATEWAY, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_LOG_ERR,
    NGX_OK,
};

use super::sink::Sink;
use super::{Event, Next, Phase, Program, Role, Transform};
use crate::conf::TransformConf;
use crate::nginx::filter::{consume, Downstream};
use crate::nginx::{pool_allocate, Http, Timer};
use crate::pool::Lease;

pub use super::program::Launch;

/// The filter's side of a request.
pub struct Side {
    /// The response's status as its handler set it (kept unless the program sets one).
    pub status: ngx_uint_t,
    /// The handler is calling the filter now (its body filter runs): what it returns goes
    /// to the handler rather than ending the request from here.
    in_call: bool,
    /// Input buffers handed back when the handler last saw them.
    seen: u64,
    /// Whether the client's write events come here first (and whose they are).
    wrapped: Option<ngx_http_event_handler_pt>,
    /// Removes the writer's send timer after its turn, while the program is waited for.
    send_fix: Option<Timer>,
    /// What becomes of the handler's later buffers once the machine is done.
    after: After,
}

/// Once the machine is done.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// It runs.
    Running,
    /// The response is complete: more input is consumed and dropped (the program did not
    /// want it).
    Drop,
    /// It failed: an error page (or nothing) follows, which passes untouched.
    Pass,
}

impl Side {
    pub fn new(status: ngx_uint_t) -> Side {
        Side {
            status,
            in_call: false,
            seen: 0,
            wrapped: None,
            send_fix: None,
            after: After::Running,
        }
    }
}

/// Starts the filter's program for the response of `http`, whose header is held back.
pub fn start(
    http: Http,
    conf: &'static TransformConf,
    launch: Launch,
    content_type: Option<&'static [u8]>,
) -> Result<*mut Transform, ngx_int_t> {
    let program = Program::new(http, conf, &launch, true);
    start_with(http, conf, program, content_type, |p, data| {
        p.launch(http, &launch, data)
    })
}

/// Starts the relay for `transform_filter_pass` with a process of its pool, fed with `head`
/// (the response's status line and headers) then its body, chunked.
pub fn start_pooled(
    http: Http,
    conf: &'static TransformConf,
    lease: Lease,
    content_type: Option<&'static [u8]>,
    head: Vec<u8>,
) -> Result<*mut Transform, ngx_int_t> {
    let program = Program::pooled_filter(http, conf, lease, head);
    start_with(http, conf, program, content_type, |p, data| {
        p.launch_pooled(http, data)
    })
}

fn start_with(
    http: Http,
    conf: &'static TransformConf,
    program: Program,
    content_type: Option<&'static [u8]>,
    launch: impl FnOnce(&mut Program, *mut c_void) -> Result<(), ngx_int_t>,
) -> Result<*mut Transform, ngx_int_t> {
    let internal = NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    let role = Role::Filter(Side::new(http.status()));
    let ctx = pool_allocate(
        http.pool(),
        Transform::new(http, conf, program, content_type, None, role),
    );
    if ctx.is_null() {
        return Err(internal);
    }
    if !http.add_cleanup(super::cleanup, ctx.cast()) {
        return Err(internal);
    }
    // SAFETY: ctx was just allocated in the request pool and is not aliased.
    let t = unsafe { &mut *ctx };
    let data: *mut c_void = ctx.cast();
    let Some(fix) = Timer::new(http.pool(), http.log(), fix_send_timer, data) else {
        return Err(internal);
    };
    if let Role::Filter(side) = &mut t.role {
        side.send_fix = Some(fix);
    }
    if !crate::filter::set_ctx(http, data) {
        return Err(internal);
    }
    if let Err(rc) = launch(&mut t.program, data) {
        t.release();
        // The error page that takes the response's place passes through.
        if let Role::Filter(side) = &mut t.role {
            side.after = After::Pass;
        }
        return Err(rc);
    }
    // nginx must not end the request while the program runs.
    http.set_buffered(true);
    http.watch_close_if_blocked();
    Ok(ctx)
}

impl Transform {
    /// The body filter: takes the handler's buffers `chain` (null: the handler only asks for
    /// progress) and runs the machine. Returns what the handler gets from its output filter.
    pub fn filter_body(&mut self, chain: *mut ngx_chain_t) -> ngx_int_t {
        self.filter_input(chain, true)
    }

    /// As the body filter, called by the handler (`in_call`) or not (a response that waited
    /// for a pooled process: its held buffers).
    pub fn filter_input(&mut self, chain: *mut ngx_chain_t, in_call: bool) -> ngx_int_t {
        let http = self.http;
        let Role::Filter(side) = &mut self.role else {
            return NGX_ERROR as ngx_int_t;
        };
        match side.after {
            After::Pass => return Downstream::Next.body(http, chain),
            After::Drop => {
                // What the filters after ours still hold goes on.
                consume(chain);
                return Downstream::Next.body(http, ptr::null_mut());
            }
            After::Running => {}
        }
        if matches!(self.phase, Phase::Done | Phase::Terminated) {
            consume(chain);
            return Downstream::Next.body(http, ptr::null_mut());
        }
        if !chain.is_null() && !self.program.push_response(chain) {
            return NGX_ERROR as ngx_int_t;
        }
        side.in_call = in_call;
        let rc = if !self.program.response_ended() && http.upstream_finished() {
            // The upstream failed after its header (it closed early, timed out, sent a broken
            // chunk): nginx ends the response with a flush, never its last buffer. What the
            // program made of part of it must not pass for the whole.
            log_error!(
                NGX_LOG_ERR,
                http.log(),
                0,
                "transform filter program \"{}\": the response it filters ended before its end",
                self.program.name()
            );
            let Next::Finish(rc) = self.fail(NGX_HTTP_BAD_GATEWAY) else {
                unreachable!("fail() finishes");
            };
            self.release();
            self.filter_end(rc)
        } else {
            match self.run(Event::Input) {
                Some(rc) => self.filter_end(rc),
                None => NGX_AGAIN as ngx_int_t,
            }
        };
        if let Role::Filter(side) = &mut self.role {
            side.in_call = false;
            // The handler sees what was consumed when the call returns.
            side.seen = self.program.response_handed_back();
        }
        rc
    }

    /// After each run of the machine that waits: who is waited for, and what must wake it.
    pub(super) fn filter_wait(&mut self, on_program: bool) {
        let http = self.http;
        let wants = self.program.wants_response();
        let handed_back = self.program.response_handed_back();
        let ring_busy = matches!(&self.phase, Phase::Streaming(Sink::Chain(r)) if r.has_busy());
        let me: *mut Transform = self;
        let Role::Filter(side) = &mut self.role else {
            return;
        };
        if on_program {
            if let Some(fix) = &side.send_fix {
                fix.post();
            }
        } else if !http.arm_write(true, http.send_timeout()) {
            // (As nginx's writer would: the connection is closed.)
            http.set_client_error();
        }
        // The client's next write event comes here first while the relay waits for it; and
        // while filters after ours hold its output (SSI waiting for an include, postponed
        // output), a run of the request (posted when a subrequest ends) pushes it on: the
        // handler, whose buffers were all taken, would not.
        let held_after = http.postponed() || ring_busy;
        if side.wrapped.is_some() && !wrapping(http) {
            // The handler took its write events back (nginx's writer after it finalized).
            side.wrapped = None;
            unlist(http.as_ptr());
        }
        if (!on_program && http.active() || held_after) && side.wrapped.is_none() {
            // The client's next write event comes here first.
            side.wrapped = Some(http.write_handler());
            http.set_write_handler(Some(client_writable));
            WRAPPED.with(|w| w.borrow_mut().push((http.as_ptr() as usize, me)));
        }
        if wants && !side.in_call && handed_back != side.seen {
            // All it gave was taken: the handler sends more (or sees its buffers free).
            side.seen = handed_back;
            http.post();
        }
    }

    /// The machine is done with `rc`: the request goes back to its handler. Returns what the
    /// body filter returns (when the handler called it).
    pub(super) fn filter_end(&mut self, rc: ngx_int_t) -> ngx_int_t {
        let http = self.http;
        self.unwrap_writes();
        let Role::Filter(side) = &mut self.role else {
            return rc;
        };
        let in_call = side.in_call;
        http.set_buffered(false);
        if rc == NGX_OK as ngx_int_t || rc == NGX_AGAIN as ngx_int_t {
            side.after = After::Drop;
            if !in_call {
                // nginx's writer (or the handler) sees the request unbuffered and ends it.
                http.post();
            }
            return rc;
        }
        side.after = After::Pass;
        if rc > NGX_OK as ngx_int_t && !http.header_sent() && http.is_subrequest() {
            // An include whose program failed before its commit is left out of the page (its
            // header never reaches the client; the failure is in the log): ending the main
            // request for it would lose the whole page.
            side.after = After::Drop;
            let _ = Downstream::Next.send_header(http);
            let rc = Downstream::Next.special(http, true);
            if !in_call {
                http.post();
            }
            return rc;
        }
        if rc > NGX_OK as ngx_int_t && !http.header_sent() {
            // An error page in place of the response (ours passes it through).
            let _ = http.filter_finalize(crate::filter::module(), rc);
        }
        if !in_call {
            http.finalize(NGX_ERROR as ngx_int_t);
        }
        NGX_ERROR as ngx_int_t
    }

    /// Gives the client's write events back to the handler.
    pub(super) fn unwrap_writes(&mut self) {
        let http = self.http;
        let Role::Filter(side) = &mut self.role else {
            return;
        };
        if let Some(h) = side.wrapped.take() {
            if wrapping(http) {
                http.set_write_handler(h);
            }
            unlist(http.as_ptr());
        }
        if let Some(fix) = &side.send_fix {
            fix.clear();
        }
    }

    /// How a filtered response is sent: its own status unless the program gave one.
    pub(super) fn filter_status(&self) -> Option<ngx_uint_t> {
        match &self.role {
            Role::Filter(side) => Some(side.status),
            Role::Handler => None,
        }
    }
}

/// Removes `r` from the requests whose write events come to [`client_writable`].
fn unlist(r: *mut ngx_http_request_t) {
    let key = r as usize;
    WRAPPED.with(|w| w.borrow_mut().retain(|&(q, _)| q != key));
}

/// Whether the request's write events come to [`client_writable`] now.
fn wrapping(http: Http) -> bool {
    http.write_handler().map(|f| f as usize) == Some(client_writable as *const () as usize)
}

thread_local! {
    /// Requests whose client write events come to [`client_writable`] first, and their
    /// machines (found here rather than in the ctx array, which another filter's
    /// ngx_http_filter_finalize_request may clear).
    static WRAPPED: RefCell<Vec<(usize, *mut Transform)>> = const { RefCell::new(Vec::new()) };
}

/// The client's write event while the filter waits for the client: the relay moves what it
/// holds, then the handler gets the event as it would have.
unsafe extern "C" fn client_writable(r: *mut ngx_http_request_t) {
    let key = r as usize;
    let ctx = WRAPPED.with(|w| w.borrow().iter().find(|&&(q, _)| q == key).map(|&(_, t)| t));
    let Some(ctx) = ctx else {
        return;
    };
    // SAFETY: nginx calls request event handlers with a live request; the machine is
    // unwrapped (removed from WRAPPED) before it goes.
    let http = unsafe { Http::from_ptr(r) };
    // SAFETY: as above.
    let t = unsafe { &mut *ctx };
    let handler = match &mut t.role {
        Role::Filter(side) => side.wrapped.take(),
        Role::Handler => None,
    };
    unlist(r);
    let handler = handler.flatten();
    http.set_write_handler(handler);
    // A timed-out event is the handler's to judge (408).
    if !http.write_timed_out() {
        // SAFETY: ctx is live (above).
        unsafe { super::step(ctx, Event::Client) };
    }
    // Unless the machine ended the request (it failed) or nginx did meanwhile.
    let ended = matches!(t.phase, Phase::Terminated)
        || matches!(&t.role, Role::Filter(s) if s.after == After::Pass);
    if !ended {
        if let Some(h) = handler {
            // SAFETY: the handler nginx would have called, with its live request.
            unsafe { h(r) };
        }
    }
}

/// Posted after a run that waits for the program: nginx's writer (or set_write_handler)
/// started send_timeout meanwhile, which must not end a response whose client waits for
/// nothing.
unsafe extern "C" fn fix_send_timer(ev: *mut ngx_event_t) {
    // SAFETY: the Timer's data is its live Transform (the Timer goes with it).
    let t = unsafe { &mut *Timer::data_of(ev).cast::<Transform>() };
    if matches!(t.phase, Phase::Done | Phase::Terminated) {
        return;
    }
    let waiting_for_client =
        matches!(&t.role, Role::Filter(s) if s.wrapped.is_some()) && wrapping(t.http);
    if !waiting_for_client {
        t.http.drop_idle_send_timer();
    }
}
