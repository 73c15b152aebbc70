//! Children of the worker: spawned with a pidfd in nginx's event loop, and always reaped.
//!
//! The module owns reaping (SIGCHLD is at its default disposition in the worker, see `lib.rs`).
//! A [`Child`] that is dropped before its exit status was collected is killed and handed to an
//! orphan reaper that collects it when its pidfd fires, so no zombie outlives a request. At worker
//! exit every child still alive is killed and reaped.

use core::cell::RefCell;
use core::ffi::{c_void, CStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use nginx_sys::{ngx_event_t, ngx_log_t, NGX_LOG_ALERT};

use crate::nginx::{EventFd, EventHandler};
use crate::os::{self, ExitStatus};

std::thread_local! {
    /// pid and pidfd of every child of this worker not yet reaped.
    static LIVE: RefCell<Vec<(libc::pid_t, RawFd)>> = const { RefCell::new(Vec::new()) };
}

/// A running (or exited, not yet reaped) program.
pub struct Child {
    pid: libc::pid_t,
    pidfd: Option<EventFd>,
    status: Option<ExitStatus>,
    log: *mut ngx_log_t,
}

impl Child {
    /// Starts a program with `stdout` as its standard output; `handler(data)` is called when it
    /// exits (after [`Child::watch`]).
    pub fn spawn(
        argv: &[&CStr],
        stdout: BorrowedFd<'_>,
        log: *mut ngx_log_t,
        handler: EventHandler,
        data: *mut c_void,
    ) -> io::Result<Child> {
        let spawned = os::spawn(argv, stdout)?;
        let pid = spawned.pid;
        let raw = spawned.pidfd.as_raw_fd();
        LIVE.with_borrow_mut(|l| l.push((pid, raw)));
        let mut child = Child {
            pid,
            pidfd: None,
            status: None,
            log,
        };
        match EventFd::new(spawned.pidfd, log, handler, data) {
            Ok(fd) => child.pidfd = Some(fd),
            Err(e) => {
                // The pidfd is closed already: kill and reap by pid, blocking briefly.
                // SAFETY: pid is our unreaped child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, core::ptr::null_mut(), 0);
                }
                forget(pid);
                return Err(e);
            }
        }
        Ok(child)
    }

    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Asks for a call to the handler when the program exits.
    pub fn watch(&self) -> bool {
        self.pidfd.as_ref().is_none_or(|fd| fd.arm_read())
    }

    /// Starts (or restarts) the wait limit: the exit handler is called with a timed-out event
    /// when it expires. No-op once the child is reaped.
    pub fn set_timer(&self, ms: nginx_sys::ngx_msec_t) {
        if let Some(fd) = &self.pidfd {
            fd.set_timer(ms);
        }
    }

    /// The exit status, once the program has exited (reaping it).
    pub fn status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            let fd = self.pidfd.as_ref()?;
            match os::try_reap(fd.fd()) {
                Ok(Some(s)) => {
                    self.status = Some(s);
                    forget(self.pid);
                    self.pidfd = None;
                }
                Ok(None) => {}
                Err(e) => {
                    log_error!(NGX_LOG_ALERT, self.log, os::errno(&e), "waitid() failed");
                }
            }
        }
        self.status
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let Some(fd) = self.pidfd.take() else {
            return;
        };
        os::kill_child(self.pid, fd.fd());
        if let Ok(Some(_)) = os::try_reap(fd.fd()) {
            forget(self.pid);
            return;
        }
        // Not dead yet: the orphan reaper collects it when its pidfd fires.
        let orphan = Box::into_raw(Box::new(Orphan {
            pid: self.pid,
            pidfd: fd,
        }));
        // SAFETY: orphan is a fresh, leaked box; the handler frees it.
        unsafe {
            (*orphan).pidfd.rebind(orphan_event, orphan.cast());
            if !(*orphan).pidfd.arm_read() {
                // Cannot watch it: reap it now (it was SIGKILLed, this is short).
                os::reap_blocking((*orphan).pidfd.fd());
                forget((*orphan).pid);
                drop(Box::from_raw(orphan));
            }
        }
    }
}

/// A killed child whose request is gone, waiting to be reaped.
struct Orphan {
    pid: libc::pid_t,
    pidfd: EventFd,
}

unsafe extern "C" fn orphan_event(ev: *mut ngx_event_t) {
    // SAFETY: this handler is installed only on an orphan's pidfd, whose data is the box.
    let orphan = unsafe { EventFd::data_of(ev) }.cast::<Orphan>();
    // SAFETY: the box is alive until freed below.
    let o = unsafe { &mut *orphan };
    match os::try_reap(o.pidfd.fd()) {
        Ok(None) => {
            o.pidfd.arm_read();
        }
        _ => {
            forget(o.pid);
            // SAFETY: leaked in Child::drop; nothing else refers to it.
            drop(unsafe { Box::from_raw(orphan) });
        }
    }
}

fn forget(pid: libc::pid_t) {
    LIVE.with_borrow_mut(|l| l.retain(|&(p, _)| p != pid));
}

/// Kills and reaps every child of this worker that is still alive (worker exit).
pub fn kill_all() {
    let live = LIVE.with_borrow_mut(core::mem::take);
    for (pid, fd) in live {
        // SAFETY: fd is the pidfd of an unreaped child, still open (its owner was not dropped).
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        os::kill_child(pid, fd);
        os::reap_blocking(fd);
    }
}
