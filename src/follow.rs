//! Waiting requests of `transform_lock`: they answer with the output another request's program
//! writes to its temporary file, read as it grows, instead of running a program of their own.
//!
//! A waiter opens the leader's temporary file at once (it keeps its inode through the rename
//! that publishes it) and watches it with the worker's one inotify instance: every write, the
//! rename, the unlink and the close wake it. On each wake-up it reads the leader's state in the
//! shared zone ([`lock::Watch::seen`]) and sends what the file holds beyond what it sent, as
//! in-file buffers (sendfile on plain HTTP/1.x). `transform_lock_timeout` bounds the wait for
//! each piece of output.

use core::ffi::c_void;
use core::ptr;
use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::OwnedFd;

use nginx_sys::{
    ngx_event_t, ngx_http_request_t, ngx_int_t, NGX_ERROR, NGX_HTTP_BAD_GATEWAY,
    NGX_HTTP_GATEWAY_TIME_OUT, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_LOG_ERR, NGX_LOG_INFO, NGX_OK,
};

use crate::conf::TransformConf;
use crate::lock::{Seen, State, Watch};
use crate::nginx::file::PoolFile;
use crate::nginx::{
    pool_allocate, run_posted_requests, ContentType, CtxKind, EventFd, Http, Timer,
};
use crate::os;
use ngx::http::HttpModule;

/// Where a waiter is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing sent: the leader's program has not decided its response yet.
    Waiting,
    /// The header is out; the body follows the file.
    Sending,
    /// Finalized (or handed back to the content handler): later events are ignored.
    Done,
}

/// Per-request state of a waiter, owned by the request pool.
pub struct Follower {
    http: Http,
    conf: &'static TransformConf,
    content_type: Option<&'static [u8]>,
    /// The leader's slot, until its final state is known (then its waiter count drops).
    watch: Option<Watch>,
    /// The leader's final state, once seen.
    ended: Option<Seen>,
    file: PoolFile,
    wd: Option<i32>,
    timer: Option<Timer>,
    sent: u64,
    phase: Phase,
    /// The content handler's program run, unshared (`false`: the leader's response is not one
    /// to share) or claiming the key again (`true`: the leader's request ended early).
    rerun: fn(Http, bool) -> ngx_int_t,
}

/// Starts waiting for the leader of `watch`; the content handler returns what this returns.
pub fn start(
    http: Http,
    conf: &'static TransformConf,
    watch: Watch,
    content_type: Option<&'static [u8]>,
    rerun: fn(Http, bool) -> ngx_int_t,
) -> ngx_int_t {
    let file = match PoolFile::open(http, &watch.name) {
        Ok(file) => file,
        Err(e) => {
            // The leader ended between the claim and now: this request claims the key again.
            log_error!(
                NGX_LOG_INFO,
                http.log(),
                os::errno(&e),
                "transform_lock: the running program's file \"{}\" is gone; claiming again",
                watch.name.to_string_lossy()
            );
            drop(watch);
            return rerun(http, true);
        }
    };
    let ctx = pool_allocate(
        http.pool(),
        Follower {
            http,
            conf,
            content_type,
            watch: Some(watch),
            ended: None,
            file,
            wd: None,
            timer: None,
            sent: 0,
            phase: Phase::Waiting,
            rerun,
        },
    );
    if ctx.is_null() {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    }
    // SAFETY: ctx was just allocated in the request pool and is not aliased.
    let f = unsafe { &mut *ctx };
    f.timer = Timer::new(http.pool(), http.log(), timer_event, ctx.cast());
    let wd = match f.timer.is_some().then(|| watch_file(f)).flatten() {
        Some(wd) => wd,
        None => return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
    };
    f.wd = Some(wd);
    if !http.add_cleanup(cleanup, ctx.cast()) {
        f.release();
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    }
    if !http.set_ctx(crate::Module::module(), CtxKind::Follower, ctx.cast()) {
        f.release();
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    }
    http.set_event_handlers(Some(client_write_event), None);
    http.take_reference();
    debug!(
        http.log(),
        "transform_lock: waiting for the running program"
    );
    // The state may have changed before the watch was set: look now.
    if let Some(rc) = f.step(false) {
        f.release();
        http.finalize(rc);
    } else {
        f.arm();
    }
    ngx::core::Status::NGX_DONE.into()
}

impl Follower {
    /// Sends what there is; returns the status to finalize with when done.
    fn step(&mut self, timed_out: bool) -> Option<ngx_int_t> {
        if self.phase == Phase::Done {
            return None;
        }
        let http = self.http;
        let seen = match &self.ended {
            Some(end) => Some(end.clone()),
            None => self.watch.as_ref().and_then(Watch::seen),
        };
        if let Some(end) = seen.as_ref().filter(|s| s.is_final()) {
            self.ended = Some(end.clone());
            self.watch = None;
        }
        let (state, gone) = match &seen {
            Some(s) => (s.state, s.leader_gone),
            // The slot went to another key: the leader ended long ago without this request
            // hearing it; what it sent is all there is.
            None => (State::Failed, true),
        };
        let again = match state {
            _ if self.phase != Phase::Waiting => None,
            // Not a response to share (or its file could not be written): this request runs
            // its own program.
            State::Refused => Some(false),
            // The leader's request ended early: this one claims the key again (the first of
            // the waiters to do so runs the program for the others).
            State::Interrupted => Some(true),
            _ => None,
        };
        if let Some(share) = again {
            self.release();
            self.phase = Phase::Done;
            return Some((self.rerun)(http, share));
        }
        // (Refused or Interrupted after bytes were sent: the file stopped short, the rest went
        // to the leader's client only.)
        let failed = matches!(state, State::Failed | State::Refused | State::Interrupted) || gone;
        if self.phase == Phase::Waiting {
            if failed {
                log_error!(
                    NGX_LOG_ERR,
                    http.log(),
                    0,
                    "transform_lock: the program this request waited for failed{}",
                    if gone { " (its worker is gone)" } else { "" }
                );
                return Some(NGX_HTTP_BAD_GATEWAY as ngx_int_t);
            }
            if state == State::Starting {
                return timed_out.then(|| self.timed_out());
            }
            let length = (state == State::Complete).then(|| seen.as_ref().map_or(0, |s| s.size));
            let ct = seen
                .as_ref()
                .and_then(|s| s.content_type.as_deref())
                .and_then(|t| http.pool_copy(t))
                .or(self.content_type);
            // The output is the program's, not a file's: no conditional answers on it.
            http.disable_not_modified();
            let rc = http.send_header(ContentType::Configured(ct), length);
            if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || http.header_only() {
                return Some(rc);
            }
            self.phase = Phase::Sending;
        }
        let size = match (state, &seen) {
            (State::Complete, Some(s)) => s.size,
            _ => os::file_size(self.file.fd()).unwrap_or(self.sent),
        };
        let progressed = size > self.sent;
        // (The first piece goes with the header, which nginx holds while it is short.)
        if progressed && (self.sent == 0 || !http.pending_output()) || state == State::Complete {
            if http.write_delayed() {
                return None;
            }
            if self.file.send(http, self.sent, size) == NGX_ERROR as ngx_int_t {
                return Some(NGX_ERROR as ngx_int_t);
            }
            self.sent = size;
        }
        if failed {
            log_error!(
                NGX_LOG_ERR,
                http.log(),
                0,
                "transform_lock: the output this request waited for stopped after {} bytes ({}); \
                 response cut",
                self.sent,
                match state {
                    _ if gone => "the worker running its program is gone",
                    State::Refused => "its file could not be written",
                    State::Interrupted => "the request running its program ended early",
                    _ => "its program failed",
                }
            );
            http.set_client_error();
            return Some(NGX_ERROR as ngx_int_t);
        }
        if state == State::Complete && self.sent == size {
            self.release();
            self.phase = Phase::Done;
            return Some(http.send_last());
        }
        if progressed {
            if let Some(t) = &self.timer {
                t.set(self.conf.lock_timeout);
            }
            return None;
        }
        timed_out.then(|| self.timed_out())
    }

    fn timed_out(&mut self) -> ngx_int_t {
        log_error!(
            NGX_LOG_ERR,
            self.http.log(),
            libc::ETIMEDOUT,
            "transform_lock: the running program sent nothing for {}ms (transform_lock_timeout) \
             after {} bytes",
            self.conf.lock_timeout,
            self.sent
        );
        if self.phase == Phase::Waiting {
            NGX_HTTP_GATEWAY_TIME_OUT as ngx_int_t
        } else {
            self.http.set_client_error();
            NGX_ERROR as ngx_int_t
        }
    }

    /// Waits: for the client when it holds output back, for the file otherwise.
    fn arm(&mut self) {
        // (Once running, the timer is restarted only by progress.)
        if let Some(t) = self.timer.as_ref().filter(|t| !t.is_set()) {
            t.set(self.conf.lock_timeout);
        }
        self.http
            .arm_write(self.http.pending_output(), self.conf.send_timeout);
    }

    /// Stops watching and timing; the file stays open until the request's pool goes.
    fn release(&mut self) {
        if let Some(wd) = self.wd.take() {
            unwatch(wd, self);
        }
        self.timer = None;
    }

    fn run(&mut self, timed_out: bool) {
        let http = self.http;
        let c = http.connection();
        if let Some(rc) = self.step(timed_out) {
            self.release();
            self.phase = Phase::Done;
            http.finalize(rc);
        } else if self.phase != Phase::Done {
            self.arm();
        }
        // SAFETY: the connection outlives the call (a request freed above leaves it alive or
        // closed by nginx, which then runs nothing posted for it).
        unsafe { run_posted_requests(c) };
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.release();
    }
}

/// The request ends (however): nothing may wake this waiter any more.
unsafe extern "C" fn cleanup(data: *mut c_void) {
    // SAFETY: registered with the Follower in the request pool.
    let f = unsafe { &mut *data.cast::<Follower>() };
    f.release();
    f.phase = Phase::Done;
}

unsafe extern "C" fn client_write_event(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls request event handlers with a live request.
    let http = unsafe { Http::from_ptr(r) };
    let ctx = http
        .ctx(crate::Module::module(), CtxKind::Follower)
        .cast::<Follower>();
    if ctx.is_null() {
        return;
    }
    if http.take_write_timeout() {
        // SAFETY: the request's Follower.
        let f = unsafe { &mut *ctx };
        f.release();
        f.phase = Phase::Done;
        http.finalize(nginx_sys::NGX_HTTP_REQUEST_TIME_OUT as ngx_int_t);
        return;
    }
    // SAFETY: the request's Follower, alive with the request.
    unsafe { (*ctx).run(false) };
}

unsafe extern "C" fn timer_event(ev: *mut ngx_event_t) {
    // SAFETY: the Timer's data is its Follower, whose drop stops the timer.
    let f = unsafe { &mut *Timer::data_of(ev).cast::<Follower>() };
    f.run(true);
}

// The worker's inotify instance and who waits on each watch.
struct Watcher {
    inotify: EventFd,
    waiting: HashMap<i32, Vec<*mut Follower>>,
}

thread_local! {
    static WATCHER: RefCell<Option<Watcher>> = const { RefCell::new(None) };
}

/// Worker exit: the inotify instance goes (nginx counts the connections left open).
pub fn shutdown() {
    WATCHER.with(|w| {
        if let Ok(mut w) = w.try_borrow_mut() {
            *w = None;
        }
    });
}

/// Watches a waiter's file; None (logged) if inotify is not available.
fn watch_file(f: &mut Follower) -> Option<i32> {
    let log = f.http.log();
    WATCHER.with(|w| {
        let mut w = w.borrow_mut();
        if w.is_none() {
            let cycle_log = ngx::log::ngx_cycle_log().as_ptr();
            let made = os::inotify().and_then(|fd: OwnedFd| {
                EventFd::new(fd, cycle_log, inotify_event, ptr::null_mut())
            });
            match made {
                Ok(inotify) if inotify.arm_read() => {
                    *w = Some(Watcher {
                        inotify,
                        waiting: HashMap::new(),
                    });
                }
                Ok(_) => return None,
                Err(e) => {
                    log_error!(NGX_LOG_ERR, log, os::errno(&e), "inotify_init1() failed");
                    return None;
                }
            }
        }
        let watcher = w.as_mut()?;
        match os::inotify_watch(watcher.inotify.fd(), f.file.fd()) {
            Ok(wd) => {
                watcher
                    .waiting
                    .entry(wd)
                    .or_default()
                    .push(ptr::from_mut(f));
                Some(wd)
            }
            Err(e) => {
                log_error!(
                    NGX_LOG_ERR,
                    log,
                    os::errno(&e),
                    "inotify_add_watch() failed"
                );
                None
            }
        }
    })
}

fn unwatch(wd: i32, f: &Follower) {
    WATCHER.with(|w| {
        let mut w = w.borrow_mut();
        let Some(watcher) = w.as_mut() else {
            return;
        };
        if let Some(list) = watcher.waiting.get_mut(&wd) {
            list.retain(|&p| !ptr::eq(p, f));
            if list.is_empty() {
                watcher.waiting.remove(&wd);
                os::inotify_unwatch(watcher.inotify.fd(), wd);
            }
        }
    });
}

/// The file of some waiters changed: each of them looks.
unsafe extern "C" fn inotify_event(ev: *mut ngx_event_t) {
    // SAFETY: the read event of the Watcher's EventFd.
    if unsafe { EventFd::closing(ev) } {
        // The worker shuts down (worker_shutdown_timeout): the waiters' own connections are
        // closed by nginx as well; this one goes now.
        shutdown();
        return;
    }
    let mut woken: Vec<(i32, *mut Follower)> = Vec::new();
    WATCHER.with(|w| {
        let w = w.borrow();
        let Some(watcher) = w.as_ref() else {
            return;
        };
        let mut wds = Vec::new();
        os::inotify_drain(watcher.inotify.fd(), |wd| wds.push(wd));
        let all = wds.contains(&-1);
        for (&wd, list) in &watcher.waiting {
            if all || wds.contains(&wd) {
                woken.extend(list.iter().map(|&p| (wd, p)));
            }
        }
        watcher.inotify.arm_read();
    });
    for (wd, f) in woken {
        // A waiter finalized by an earlier one's step (same connection? never: one waiter per
        // request) is no longer listed: only listed ones run.
        let listed = WATCHER.with(|w| {
            w.borrow()
                .as_ref()
                .and_then(|w| w.waiting.get(&wd))
                .is_some_and(|l| l.contains(&f))
        });
        if listed {
            // SAFETY: listed waiters are alive (they unlist themselves when they end).
            unsafe { (*f).run(false) };
        }
    }
}
