//! Pipe sizes within the per-user pipe budget.
//!
//! Linux gives an unprivileged user `fs.pipe-user-pages-soft` pages of pipe buffers (16384: 64
//! MiB), shared by all the user's processes: every worker of nginx, every pipe. Past it, a new
//! pipe gets 2 pages (8 KiB) and growing one fails with EPERM: a program writing into 8 KiB
//! wakes the worker every 8 KiB. So a worker sizes each program's stdout pipe from its share of
//! the budget (the budget over `worker_processes`) and the programs it runs: a pipe starts at the
//! kernel's default 64 KiB, or at an equal part of the share when many programs run (a power of
//! two pages, as the kernel rounds it, at least 2, never more than half of what is left), and
//! doubles up to `transform_pipe_size` when its program fills it faster than the worker empties
//! it, as far as the share of that moment allows. A grown pipe does not shrink: in a burst of
//! thousands, those that grew while few ran keep their size. A stderr pipe gets one page: its
//! lines are read as they come. When the budget is spent all the same (other processes of the
//! user, other workers), the worker says so once.

use std::cell::Cell;
use std::os::fd::BorrowedFd;

use nginx_sys::{ngx_log_t, NGX_LOG_WARN};

use crate::os;

mod fair;

use fair::{fair_size, start_size, PAGE, PAST_LIMIT};

std::thread_local! {
    /// This worker's share of the budget in pages (None: not read yet; Some(0): no limit).
    static SHARE: Cell<Option<usize>> = const { Cell::new(None) };
    /// The budget ran out (said once per worker).
    static SAID: Cell<bool> = const { Cell::new(false) };
    /// Pages of the live pipes this worker sized (stdout and stderr).
    static USED: Cell<usize> = const { Cell::new(0) };
}

/// The pages of a program's pipes, counted in this worker's use of its share until dropped.
pub struct Held(usize);

impl Drop for Held {
    fn drop(&mut self) {
        USED.with(|u| u.set(u.get().saturating_sub(self.0)));
    }
}

/// This worker's share of the user's pipe pages; 0 when unlimited (an exempt worker, or no soft
/// limit).
fn share() -> usize {
    SHARE.with(|s| {
        if let Some(v) = s.get() {
            return v;
        }
        let soft = std::fs::read_to_string("/proc/sys/fs/pipe-user-pages-soft")
            .ok()
            .and_then(|t| t.trim().parse::<usize>().ok())
            .unwrap_or(0);
        // (The kernel exempts a process with CAP_SYS_RESOURCE or CAP_SYS_ADMIN, not root as
        // such: root in a container may have neither.)
        let v = if soft == 0 || os::pipe_budget_exempt() {
            0
        } else {
            (soft / crate::nginx::worker_processes()).max(1)
        };
        s.set(Some(v));
        v
    })
}

/// The size to ask for a program's stdout pipe, `wanted` being `transform_pipe_size`, with
/// `running` programs (pooled processes too) already running in this worker.
pub fn stdout_size(wanted: usize, running: usize) -> usize {
    start_size(wanted, share(), running, USED.with(Cell::get))
}

/// Sizes a program's stdout pipe (`fd`, either end) and counts it, with its stderr page, until
/// the returned [`Held`] is dropped; returns its capacity too. A filter's stdin pipe is sized
/// with it (`with_stderr` false: it comes with no stderr pipe of its own; it does not grow, so it
/// gets its fair share at once rather than the start size).
pub fn size_stdout(
    fd: BorrowedFd<'_>,
    wanted: usize,
    with_stderr: bool,
    log: *mut ngx_log_t,
) -> (usize, Held) {
    let running = crate::child::running();
    let ask = if with_stderr {
        stdout_size(wanted, running)
    } else {
        fair_size(wanted, share(), running, USED.with(Cell::get))
    };
    if let Err(e) = os::set_pipe_size(fd, ask) {
        // EPERM past fs/pipe-user-pages-soft: a size hint refused, not an error.
        debug!(log, "transform pipe size {ask} refused: {e}");
    }
    let got = os::pipe_size(fd).unwrap_or(PAGE);
    debug!(
        log,
        "transform pipe size {got} (asked {ask} of {wanted}, {running} programs running, {} of a \
         share of {} pages used)",
        USED.with(Cell::get),
        share()
    );
    if got <= PAST_LIMIT && ask > PAST_LIMIT {
        spent(log, got);
    }
    let pages = got.div_ceil(PAGE) + usize::from(with_stderr);
    USED.with(|u| u.set(u.get() + pages));
    (got, Held(pages))
}

/// Doubles a stdout pipe of `capacity` bytes (`held` its pages) that a program filled while the
/// worker was busy elsewhere, as far as `wanted` and the fair share allow now; returns its
/// capacity. A burst of programs starts with small pipes (the share divided among them); those
/// whose output the worker cannot keep up with grow as the share frees.
pub fn grow_stdout(fd: BorrowedFd<'_>, capacity: usize, wanted: usize, held: &mut Held) -> usize {
    if capacity >= wanted || share() == 0 {
        return capacity;
    }
    let running = crate::child::running().saturating_sub(1);
    // What a new pipe would get now, with this one's pages counted as free.
    let used = USED.with(Cell::get).saturating_sub(held.0);
    let target = (capacity * 2).min(fair_size(wanted, share(), running, used));
    if target <= capacity {
        return capacity;
    }
    if os::set_pipe_size(fd, target).is_err() {
        return capacity;
    }
    let got = os::pipe_size(fd).unwrap_or(capacity);
    let pages = got.div_ceil(PAGE) + 1;
    USED.with(|u| u.set(u.get().saturating_sub(held.0) + pages));
    held.0 = pages;
    got
}

/// Counts a pipe sized elsewhere (a pool's), with a stderr page if `with_stderr`, until the
/// returned [`Held`] is dropped.
pub fn count(fd: BorrowedFd<'_>, with_stderr: bool) -> Held {
    let pages = os::pipe_size(fd).unwrap_or(PAGE).div_ceil(PAGE) + usize::from(with_stderr);
    USED.with(|u| u.set(u.get() + pages));
    Held(pages)
}

/// Shrinks a stderr pipe to one page.
pub fn size_stderr(fd: BorrowedFd<'_>) {
    // (Shrinking is never refused; if it were, the pipe would just stay bigger.)
    let _ = os::set_pipe_size(fd, PAGE);
}

/// Says once per worker that the pipe budget is spent.
fn spent(log: *mut ngx_log_t, got: usize) {
    if SAID.with(|s| s.replace(true)) {
        return;
    }
    let soft = std::fs::read_to_string("/proc/sys/fs/pipe-user-pages-soft").unwrap_or_default();
    log_error!(
        NGX_LOG_WARN,
        log,
        0,
        "transform: the pipe budget of the workers' user is spent (fs.pipe-user-pages-soft {} \
         pages, shared by all its processes): new pipes get {got} bytes, so programs' output \
         moves in small pieces with more wake-ups per byte; raise fs.pipe-user-pages-soft, or \
         lower transform_pipe_size or transform_max_programs (said once per worker)",
        soft.trim()
    );
}
