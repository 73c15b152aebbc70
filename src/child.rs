//! Children of the worker: spawned with a pidfd in nginx's event loop, and always reaped.
//!
//! The module owns reaping (SIGCHLD is at its default disposition in the worker, see `lib.rs`).
//! A program that exited stays a zombie until its request lets it go: its pid, which is also its
//! process group's id, cannot be reused meanwhile, so signalling the group never reaches a
//! stranger. When the request lets go of a [`Child`]:
//! - if it exited, what is left of its group (descendants) gets SIGKILL and it is reaped (the
//!   relay may do this earlier with [`Child::kill_descendants`], which says whether anyone was
//!   left to kill);
//! - if it runs, it and its group get SIGTERM and it goes to an orphan reaper, which sends SIGKILL
//!   after the kill timeout or as soon as the program itself exited, then reaps it.
//!
//! So no zombie and no descendant outlives a request. At worker exit every child still there is
//! killed and reaped.
//!
//! A program with a cgroup (`transform_cgroup`) keeps its [`Group`]: every SIGKILL also goes to
//! the whole cgroup (descendants that left the process group included), an exit by SIGKILL is
//! told as the memory limit's when the cgroup's OOM killer acted, and the cgroup is removed
//! once the program is reaped.

use core::cell::RefCell;
use core::ffi::c_void;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use nginx_sys::{ngx_event_t, ngx_log_t, ngx_msec_t, NGX_LOG_ALERT};
use rustix::process::Signal;

use crate::cgroup::Group;
use crate::nginx::{EventFd, EventHandler};
use crate::os::{self, ExitStatus};

std::thread_local! {
    /// pid and pidfd of every child of this worker not yet reaped.
    static LIVE: RefCell<Vec<(libc::pid_t, RawFd)>> = const { RefCell::new(Vec::new()) };
    /// Killed children waiting for the orphan reaper.
    static ORPHANS: RefCell<Vec<*mut Orphan>> = const { RefCell::new(Vec::new()) };
}

/// A running (or exited, not yet reaped) program.
pub struct Child {
    pid: libc::pid_t,
    pidfd: Option<EventFd>,
    status: Option<ExitStatus>,
    /// Reaped by [`Child::kill_descendants`]: the pid and group id may be reused, nothing more
    /// is sent to them.
    reaped: bool,
    log: *mut ngx_log_t,
    /// Grace between SIGTERM and SIGKILL when it is stopped.
    kill_timeout: ngx_msec_t,
    /// Let go after a complete response: not signalled, given the grace to end on its own,
    /// and its exit logged (with this name) if it is a failure.
    detached: Option<String>,
    /// Its cgroup (`transform_cgroup`): removed when the child is dropped after the reaping.
    group: Option<Group>,
}

impl Child {
    /// Starts a program, in `group` if it has one (made for it: the child joins it before
    /// exec); `handler(data)` is called when it exits (after [`Child::watch`]).
    pub fn spawn(
        cmd: &os::Command<'_>,
        mut group: Option<Group>,
        kill_timeout: ngx_msec_t,
        log: *mut ngx_log_t,
        handler: EventHandler,
        data: *mut c_void,
    ) -> Result<Child, os::SpawnError> {
        let cmd = os::Command {
            confine: os::Confine {
                cgroup_procs: group.as_ref().map_or(&[], Group::procs),
                ..cmd.confine
            },
            ..*cmd
        };
        let spawned = os::spawn(&cmd);
        if let Some(g) = &mut group {
            g.joined();
        }
        // (A failed start drops the group: its cgroup is removed.)
        let spawned = spawned?;
        let pid = spawned.pid;
        let raw = spawned.pidfd.as_raw_fd();
        LIVE.with_borrow_mut(|l| l.push((pid, raw)));
        let mut child = Child {
            pid,
            pidfd: None,
            status: None,
            reaped: false,
            detached: None,
            log,
            kill_timeout,
            group,
        };
        match EventFd::new(spawned.pidfd, log, handler, data) {
            Ok(fd) => child.pidfd = Some(fd),
            Err(err) => {
                // The pidfd is closed already: kill and reap by pid, blocking briefly.
                os::kill_and_reap_pid(pid);
                forget(pid);
                return Err(os::SpawnError {
                    step: os::SpawnStep::Connection,
                    err,
                });
            }
        }
        Ok(child)
    }

    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Hands the exit events to someone else (the request that started it ended).
    pub fn rebind(&mut self, handler: EventHandler, data: *mut c_void) {
        if let Some(fd) = &mut self.pidfd {
            fd.rebind(handler, data);
        }
        self.log = ngx::log::ngx_cycle_log().as_ptr();
    }

    /// Sends `sig` to the program (not to its group), while it is not reaped; SIGKILL also goes
    /// to everything in its cgroup.
    pub fn signal(&self, sig: Signal) {
        if let (Some(fd), false) = (&self.pidfd, self.reaped) {
            os::signal_child(self.pid, fd.fd(), sig);
            if sig == Signal::KILL {
                if let Some(g) = &self.group {
                    g.kill(None);
                }
            }
        }
    }

    /// Asks for a call to the handler when the program exits.
    pub fn watch(&self) -> bool {
        self.pidfd.as_ref().is_none_or(|fd| fd.arm_read())
    }

    /// Starts (or restarts) the wait limit: the exit handler is called with a timed-out event
    /// when it expires. No-op once the child is reaped.
    pub fn set_timer(&self, ms: nginx_sys::ngx_msec_t) {
        if let (Some(fd), None) = (&self.pidfd, self.status) {
            fd.set_timer(ms);
        }
    }

    /// Stops the wait limit (while the client, not the program, is what the relay waits for).
    pub fn clear_timer(&self) {
        if let Some(fd) = &self.pidfd {
            fd.clear_timer();
        }
    }

    /// The exit status, once the program has exited (it stays a zombie until dropped).
    pub fn status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            let fd = self.pidfd.as_ref()?;
            match os::peek_exit(fd.fd()) {
                Ok(Some(s)) => {
                    self.status = Some(judge(s, self.group.as_ref()));
                    fd.clear_timer();
                }
                Ok(None) => {}
                Err(e) => {
                    log_error!(NGX_LOG_ALERT, self.log, os::errno(&e), "waitid() failed");
                }
            }
        }
        self.status
    }

    /// Lets go of a program whose response is complete: it is not signalled but given
    /// `transform_kill_timeout` to end on its own (its stdout is closed, so more output ends it
    /// with SIGPIPE), then killed; a failing exit is logged under `name`.
    pub fn detach(mut self, name: &str) {
        self.detached = Some(name.to_owned());
    }

    /// Once the program has exited: SIGKILL to what is left of its process group (the
    /// descendants that did not leave it), then the program is reaped. Returns whether anyone
    /// was left in the group to be killed.
    ///
    /// False means the group held only the program: descendants that still hold its stdout
    /// have left the group (setsid, setpgid) and were not killed. True does not say they were
    /// among those killed, only that someone was (the pipe tells whether its writers are gone).
    ///
    /// Does nothing and returns false while the program runs (before [`Child::status`] is
    /// `Some`) and when called again. The exit status stays available through `status`;
    /// dropping the child afterwards only closes its pidfd.
    pub fn kill_descendants(&mut self) -> bool {
        if self.reaped || self.status().is_none() {
            return false;
        }
        let Some(fd) = &self.pidfd else {
            return false;
        };
        // The cgroup holds also the descendants that left the process group.
        let in_cgroup = self.group.as_ref().is_some_and(|g| g.kill(Some(self.pid)));
        let someone = os::kill_group_and_reap(self.pid, fd.fd()) || in_cgroup;
        self.reaped = true;
        forget(self.pid);
        someone
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let Some(fd) = self.pidfd.take() else {
            return;
        };
        if self.reaped {
            // kill_descendants did what is done below.
            return;
        }
        if self.status.is_none() && self.detached.is_none() {
            os::signal_child(self.pid, fd.fd(), Signal::TERM);
        }
        if let Ok(Some(status)) = os::peek_exit(fd.fd()) {
            // Exited: nothing of its group may stay behind; then reap it (its cgroup goes
            // after, with the group field).
            if let Some(name) = &self.detached {
                log_detached_exit(name, judge(status, self.group.as_ref()));
            }
            os::signal_group(self.pid, Signal::KILL);
            let _ = os::try_reap(fd.fd());
            forget(self.pid);
            return;
        }
        // Not dead yet: the orphan reaper sends SIGKILL after the grace and collects it.
        let orphan = Box::into_raw(Box::new(Orphan {
            pid: self.pid,
            pidfd: fd,
            detached: self.detached.take(),
            group: self.group.take(),
        }));
        // SAFETY: orphan is a fresh, leaked box; the handler (or kill_all) frees it.
        unsafe {
            (*orphan).pidfd.rebind(orphan_event, orphan.cast());
            (*orphan).pidfd.set_timer(self.kill_timeout.max(1));
            if (*orphan).pidfd.arm_read() {
                ORPHANS.with_borrow_mut(|o| o.push(orphan));
            } else {
                // Cannot watch it: reap it now (it was SIGKILLed, this is short).
                reap_orphan(orphan);
            }
        }
    }
}

/// A child whose request is gone, killed (or detached), waiting to be reaped.
struct Orphan {
    pid: libc::pid_t,
    pidfd: EventFd,
    /// The program's name when it was detached after a complete response.
    detached: Option<String>,
    /// Its cgroup, removed when the orphan is freed (after the reaping).
    group: Option<Group>,
}

impl Orphan {
    /// SIGKILL to the program and its process group, and to its whole cgroup.
    fn kill(&self) {
        os::signal_child(self.pid, self.pidfd.fd(), Signal::KILL);
        if let Some(g) = &self.group {
            g.kill(None);
        }
    }
}

/// A program's exit status, with the cause its cgroup knows (the memory limit).
fn judge(status: ExitStatus, group: Option<&Group>) -> ExitStatus {
    group.map_or(status, |g| g.judge(status))
}

/// A detached program's failing exit, in the worker's log (its request is gone).
fn log_detached_exit(name: &str, status: ExitStatus) {
    // SIGPIPE is the module's doing: the program's pipes closed with its response.
    if !status.success() && status != ExitStatus::Signal(libc::SIGPIPE) {
        log_error!(
            nginx_sys::NGX_LOG_ERR,
            ngx::log::ngx_cycle_log().as_ptr(),
            0,
            "transform program \"{name}\" {status} after its complete response"
        );
    }
}

unsafe extern "C" fn orphan_event(ev: *mut ngx_event_t) {
    // SAFETY: this handler is installed only on an orphan's pidfd, whose data is the box.
    let orphan = unsafe { EventFd::data_of(ev) }.cast::<Orphan>();
    // SAFETY: the box is alive until freed below.
    let o = unsafe { &mut *orphan };
    // SAFETY: ev is the orphan's pidfd read event.
    let (grace_over, closing) = unsafe { (EventFd::take_timedout(ev), EventFd::closing(ev)) };
    if closing {
        // The worker is shutting down and closes every connection: finish now.
        ORPHANS.with_borrow_mut(|l| l.retain(|&p| p != orphan));
        // SAFETY: leaked in Child::drop; removed from the list just above.
        unsafe { reap_orphan(orphan) };
        return;
    }
    if grace_over {
        o.kill();
    }
    match os::peek_exit(o.pidfd.fd()) {
        Ok(None) => {
            o.pidfd.arm_read();
        }
        status => {
            // The program is gone: so is what is left of its group. Then reap it.
            if let (Some(name), Ok(Some(status))) = (&o.detached, status) {
                log_detached_exit(name, judge(status, o.group.as_ref()));
            }
            os::signal_group(o.pid, Signal::KILL);
            let _ = os::try_reap(o.pidfd.fd());
            forget(o.pid);
            ORPHANS.with_borrow_mut(|l| l.retain(|&p| p != orphan));
            // SAFETY: leaked in Child::drop; nothing else refers to it any more.
            drop(unsafe { Box::from_raw(orphan) });
        }
    }
}

/// Kills an orphan, reaps it now (blocking briefly) and frees it, closing its pidfd connection.
///
/// # Safety
/// `orphan` was leaked by `Child::drop` and is not used afterwards.
unsafe fn reap_orphan(orphan: *mut Orphan) {
    // SAFETY: caller's contract.
    let o = unsafe { Box::from_raw(orphan) };
    o.kill();
    os::reap_blocking(o.pidfd.fd());
    forget(o.pid);
}

/// Programs of this worker not yet reaped (running, or killed and not yet collected).
pub fn running() -> usize {
    LIVE.with_borrow(Vec::len)
}

fn forget(pid: libc::pid_t) {
    LIVE.with_borrow_mut(|l| l.retain(|&(p, _)| p != pid));
}

/// Kills and reaps every child of this worker that is still alive (worker exit), and closes the
/// orphan reaper's connections so none is left open.
pub fn kill_all() {
    for orphan in ORPHANS.with_borrow_mut(core::mem::take) {
        // SAFETY: orphans in the list are leaked boxes owned by the list.
        unsafe { reap_orphan(orphan) };
    }
    let live = LIVE.with_borrow_mut(core::mem::take);
    for (pid, fd) in live {
        // SAFETY: fd is the pidfd of an unreaped child, still open (its owner was not dropped).
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        os::signal_child(pid, fd, Signal::KILL);
        os::reap_blocking(fd);
    }
}

/// Whether this worker runs `transform_max_programs` programs already: the request is refused
/// (logged here).
pub fn over_limit(http: crate::nginx::Http, conf: &crate::conf::TransformConf) -> bool {
    // (A pool's processes are bounded by its own processes=, not counted here.)
    let running = running().saturating_sub(crate::pool::processes());
    if conf.max_programs <= 0 || running < conf.max_programs as usize {
        return false;
    }
    log_error!(
        nginx_sys::NGX_LOG_WARN,
        http.log(),
        0,
        "transform: {running} programs running in this worker (transform_max_programs {}), \
         request refused",
        conf.max_programs
    );
    true
}
