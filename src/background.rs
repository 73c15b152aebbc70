//! A stored or shared output finished after its request ended.
//!
//! When the client of the request that runs a program goes away while the output goes to a
//! temporary file that is to be published (`transform_store`) or that waiting requests read
//! (`transform_lock`), the program is not stopped: as nginx's upstream keeps reading a response
//! it caches or stores after its client closed (`ngx_http_upstream_check_broken_connection`),
//! the program's stdout, stderr and pidfd move to a [`Background`] owned by the worker, which
//! splices the rest of the output into the file, and publishes it (or tells the waiters it is
//! whole) when the program exits 0; a failure, `transform_read_timeout` without output, or the
//! worker's exit remove the file.

use core::ffi::c_void;
use std::cell::RefCell;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nginx_sys::{ngx_event_t, ngx_msec_t, NGX_LOG_ERR, NGX_LOG_INFO};

use crate::child::Child;
use crate::lock::{State, Ticket};
use crate::log::escape;
use crate::nginx::{file, now_msec, EventFd};
use crate::os;

/// Most moved into the file per event before the other connections get their turn.
const CHUNK: usize = 8 * 1024 * 1024;

/// What the request hands over.
pub struct Handover {
    /// The program's name, escaped, for the log.
    pub name: String,
    pub stdout: Option<EventFd>,
    pub stderr: Option<EventFd>,
    pub child: Child,
    pub file: OwnedFd,
    pub temp: CString,
    pub target: Option<CString>,
    pub access: u32,
    pub ticket: Option<Ticket>,
    pub written: u64,
    /// The most the output may be (its Content-Length), or u64::MAX.
    pub limit: u64,
    /// The limit is the program's own Content-Length (more output is its mistake).
    pub declared: bool,
    pub touch: bool,
    pub read_timeout: ngx_msec_t,
    /// When `transform_timeout` ends it, if set.
    pub deadline: Option<ngx_msec_t>,
    /// Its pipes' pages, counted in the worker's share of the pipe budget while they live
    /// (held for their `Drop`).
    #[allow(dead_code)]
    pub pipe_pages: Vec<crate::pipes::Held>,
}

struct Background {
    h: Handover,
    done: bool,
    /// The waiters were told the output is whole (its length reached).
    whole: bool,
    /// The program wrote past its Content-Length: not stored.
    excess: bool,
    /// Once the program exited: where its output ends (what its pipe held then).
    end: Option<u64>,
}

std::thread_local! {
    static RUNNING: RefCell<Vec<*mut Background>> = const { RefCell::new(Vec::new()) };
}

fn log() -> *mut nginx_sys::ngx_log_t {
    ngx::log::ngx_cycle_log().as_ptr()
}

/// Takes over a program whose request ended.
pub fn start(h: Handover) {
    log_error!(
        NGX_LOG_INFO,
        log(),
        0,
        "transform program \"{}\": its request ended after {} bytes; it goes on in the \
         background for the stored or shared file",
        h.name,
        h.written
    );
    let bg = Box::into_raw(Box::new(Background {
        h,
        done: false,
        whole: false,
        excess: false,
        end: None,
    }));
    // SAFETY: bg is a fresh leaked box, freed by `end` (its only owner is the RUNNING list).
    let b = unsafe { &mut *bg };
    let data: *mut c_void = bg.cast();
    let mut ok = true;
    if let Some(fd) = &mut b.h.stdout {
        fd.rebind(stdout_event, data);
        ok &= fd.arm_read();
    }
    if let Some(fd) = &mut b.h.stderr {
        fd.rebind(stderr_event, data);
        ok &= fd.arm_read();
    }
    b.h.child.rebind(exit_event, data);
    ok &= b.h.child.watch();
    b.arm_timer();
    RUNNING.with_borrow_mut(|r| r.push(bg));
    if !ok {
        b.fail("its events could not be watched");
    } else if b.h.child.status().is_some() {
        // Exited already (its pidfd's event was the request's): the rest is in its pipe.
        b.exited();
    } else {
        b.pump();
    }
    // SAFETY: as above.
    unsafe { end_if_done(bg) };
}

impl Background {
    /// The program's timer: `transform_read_timeout` from its last output, within
    /// `transform_timeout`.
    fn arm_timer(&self) {
        let mut ms = self.h.read_timeout;
        if let Some(deadline) = self.h.deadline {
            ms = ms.min(deadline.saturating_sub(now_msec()));
        }
        self.h.child.set_timer(ms.max(1));
    }

    /// Moves what the pipe holds into the file; at its end, waits for the exit.
    fn pump(&mut self) {
        if self.h.target.is_none()
            && !self.whole
            && !self.h.ticket.as_ref().is_some_and(Ticket::has_waiters)
        {
            // Shared only, and nobody reads it any more.
            return self.fail("");
        }
        let Some(stdout) = &self.h.stdout else {
            return self.check();
        };
        let mut moved = 0;
        loop {
            let end = self.end.unwrap_or(u64::MAX).min(self.h.limit);
            let room = end.saturating_sub(self.h.written);
            if room == 0 {
                if self.h.written == self.h.limit {
                    self.limit_reached();
                }
                self.h.stdout = None;
                break;
            }
            if moved >= CHUNK {
                // Back in a millisecond, after the other connections (a timer, which also
                // keeps a gracefully exiting worker until it is done).
                stdout.set_timer(1);
                break;
            }
            let want = usize::try_from(room).unwrap_or(usize::MAX).min(CHUNK);
            match os::splice_pipe_to_file(stdout.fd(), self.h.file.as_fd(), self.h.written, want) {
                Ok(0) => {
                    self.h.stdout = None;
                    break;
                }
                Ok(n) => {
                    self.h.written += n as u64;
                    moved += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.end.is_some() {
                        // Exited, and its pipe holds no more: that is its output.
                        self.h.stdout = None;
                    } else if !stdout.arm_read() {
                        return self.fail("its stdout could not be watched");
                    }
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail_io("writing the file", &e),
            }
        }
        if moved > 0 {
            if self.h.touch && self.h.ticket.as_ref().is_some_and(Ticket::has_waiters) {
                os::touch(self.h.file.as_fd());
            }
            self.arm_timer();
        }
        self.check();
    }

    /// The whole response is in the file: the waiters finish; whether it is stored waits for
    /// the exit, and for nothing more coming.
    fn limit_reached(&mut self) {
        if let Some(fd) = &self.h.stdout {
            if self.h.declared && os::pipe_state(fd.fd()).is_ok_and(|(held, _)| held > 0) {
                self.excess = true;
            }
        }
        if !self.whole {
            self.whole = true;
            if let Some(t) = &self.h.ticket {
                t.finish(State::Complete, self.h.written);
            }
        }
    }

    /// The program exited: its output is what the file has and its pipe holds now.
    fn exited(&mut self) {
        if self.end.is_none() {
            let held = self
                .h
                .stdout
                .as_ref()
                .map_or(0, |fd| os::pipe_state(fd.fd()).map_or(0, |(n, _)| n));
            self.end = Some(self.h.written + held as u64);
        }
        self.pump();
    }

    /// Once the output ended and the program exited: publish, or not.
    fn check(&mut self) {
        if self.h.stdout.is_some() || self.done {
            return;
        }
        let Some(status) = self.h.child.status() else {
            return;
        };
        self.done = true;
        let whole = self.h.limit == u64::MAX || self.h.written == self.h.limit;
        if self.excess {
            log_error!(
                NGX_LOG_ERR,
                log(),
                0,
                "transform program \"{}\" sent more than its Content-Length {}; not stored",
                self.h.name,
                self.h.limit
            );
            return self.fail("");
        }
        if !status.success() || !whole {
            let why = if status.success() {
                format!(
                    "ended its output after {} of {} bytes",
                    self.h.written, self.h.limit
                )
            } else {
                format!("{status}")
            };
            return self.fail(&why);
        }
        if let Some(t) = self.h.ticket.as_ref().filter(|_| !self.whole) {
            t.finish(State::Complete, self.h.written);
        }
        match &self.h.target {
            Some(to) => {
                let src = self.h.temp.as_c_str();
                if file::publish_fd(log(), self.h.file.as_fd(), src, to, self.h.access) {
                    log_error!(
                        NGX_LOG_INFO,
                        log(),
                        0,
                        "transform program \"{}\": stored {} bytes at \"{}\" after its request \
                         ended",
                        self.h.name,
                        self.h.written,
                        escape(to.as_bytes())
                    );
                }
            }
            None => {
                os::unlink_quietly(self.h.temp.as_bytes());
            }
        }
    }

    fn fail_io(&mut self, what: &str, e: &io::Error) {
        log_error!(
            NGX_LOG_ERR,
            log(),
            os::errno(e),
            "transform program \"{}\": {what} in the background failed",
            self.h.name
        );
        self.fail("");
    }

    /// The output will not be whole: the waiters are told, the file removed, the program
    /// stopped (dropping its Child sends SIGTERM, then the orphan reaper SIGKILL).
    fn fail(&mut self, why: &str) {
        if !why.is_empty() {
            log_error!(
                NGX_LOG_ERR,
                log(),
                0,
                "transform program \"{}\" {why} in the background after its request ended; \
                 nothing stored",
                self.h.name
            );
        }
        self.done = true;
        self.h.stdout = None;
        // (Waiters told the output is whole keep reading it to its end.)
        if let Some(t) = self.h.ticket.as_ref().filter(|_| !self.whole) {
            t.finish(State::Failed, self.h.written);
        }
        os::unlink_quietly(self.h.temp.as_bytes());
    }
}

/// Frees a finished background (its Child's drop reaps or hands the program to the reaper).
///
/// # Safety
/// `bg` is a live Background of the RUNNING list.
unsafe fn end_if_done(bg: *mut Background) {
    // SAFETY: caller's contract.
    if unsafe { (*bg).done } {
        RUNNING.with_borrow_mut(|r| r.retain(|&p| p != bg));
        // SAFETY: leaked in start; unlisted just above.
        drop(unsafe { Box::from_raw(bg) });
    }
}

/// Runs `f` on the background of an event, then frees it if it is done.
///
/// # Safety
/// `ev` is the read event of an EventFd rebound to a live Background.
unsafe fn on_event(ev: *mut ngx_event_t, f: impl FnOnce(&mut Background, bool)) {
    // SAFETY: caller's contract.
    let bg = unsafe { EventFd::data_of(ev) }.cast::<Background>();
    // SAFETY: as above.
    let (timed_out, closing) = unsafe { (EventFd::take_timedout(ev), EventFd::closing(ev)) };
    // SAFETY: the box is alive until end_if_done frees it.
    let b = unsafe { &mut *bg };
    if closing {
        b.fail("was stopped by the worker's shutdown");
    } else {
        f(b, timed_out);
    }
    // SAFETY: as above.
    unsafe { end_if_done(bg) };
}

unsafe extern "C" fn stdout_event(ev: *mut ngx_event_t) {
    // SAFETY: installed by start on the background's stdout (its timer is the chunk's pause).
    unsafe { on_event(ev, |b, _| b.pump()) };
}

unsafe extern "C" fn stderr_event(ev: *mut ngx_event_t) {
    // SAFETY: installed by start on the background's stderr.
    unsafe {
        on_event(ev, |b, _| {
            // Read and dropped: its request, and so its log context, is gone.
            let Some(fd) = &b.h.stderr else { return };
            let mut buf = [0u8; 16 * 1024];
            loop {
                match os::read(fd.fd(), &mut buf) {
                    Ok(0) => {
                        b.h.stderr = None;
                        return;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        fd.arm_read();
                        return;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        b.h.stderr = None;
                        return;
                    }
                }
            }
        })
    };
}

unsafe extern "C" fn exit_event(ev: *mut ngx_event_t) {
    // SAFETY: installed by start on the background's pidfd.
    unsafe {
        on_event(ev, |b, timed_out| {
            if timed_out && b.h.child.status().is_none() {
                let why = match b.h.deadline {
                    Some(d) if now_msec() >= d => "ran out of its transform_timeout".to_string(),
                    _ => format!(
                        "sent nothing for {}ms (transform_read_timeout)",
                        b.h.read_timeout
                    ),
                };
                return b.fail(&why);
            }
            if b.h.child.status().is_none() {
                b.h.child.watch();
                return;
            }
            b.exited();
        })
    };
}

/// Worker exit: what still runs in the background is stopped and its files removed.
pub fn stop_all() {
    for bg in RUNNING.with_borrow_mut(core::mem::take) {
        // SAFETY: listed backgrounds are leaked boxes owned by the list.
        let mut b = unsafe { Box::from_raw(bg) };
        if !b.done {
            b.fail("was stopped by the worker's exit");
        }
    }
}
