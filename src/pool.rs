//! `transform_pool`: long-lived programs that answer one HTTP/1.1 request after another over
//! their stdin and stdout (`transform_pass`).
//!
//! Each worker has its own processes, started lazily and spawned as every program of the module
//! (`child`). A process is [`SlotState::Idle`] in the pool, its pipes and pidfd watched by the
//! pool (anything it writes then, or its exit, ends it), or [`SlotState::Busy`]: its pipes and
//! child are lent to one request's relay ([`Lease`]), which gives them back only when the
//! response was complete, all of the request was read and nothing more was written; any other
//! end kills the process (never reused in an unknown state). Requests that find no process wait
//! in a bounded FIFO queue. A process that dies before its first response delays the next start
//! (backoff); `max_requests` (with jitter) and `idle_timeout` retire processes; at a graceful
//! shutdown idle processes are retired at once (their connections are marked idle, which nginx
//! closes) and busy ones after their request.

use core::cell::RefCell;
use core::ffi::{c_void, CStr};
use std::collections::VecDeque;
use std::ffi::CString;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd};

use nginx_sys::{
    ngx_chain_t, ngx_event_t, ngx_http_event_handler_pt, ngx_http_request_t, ngx_int_t, ngx_log_t,
    ngx_msec_t, NGX_DONE, NGX_HTTP_BAD_GATEWAY, NGX_HTTP_INTERNAL_SERVER_ERROR,
    NGX_HTTP_SERVICE_UNAVAILABLE, NGX_LOG_ERR, NGX_LOG_INFO, NGX_LOG_WARN,
};
use ngx::http::HttpModuleMainConf;

use crate::child::Child;
use crate::conf::{PoolConf, TransformConf};
use crate::log::escape;
use crate::nginx::{now_msec, pool_allocate, EventFd, Http, Timer};
use crate::os;
use crate::stderr::StderrLog;

/// The first backoff delay, and the longest.
const BACKOFF_FIRST: ngx_msec_t = 100;
const BACKOFF_MAX: ngx_msec_t = 10_000;

std::thread_local! {
    /// This worker's pools, by their index in the configuration (null until first used).
    static POOLS: RefCell<Vec<*mut Pool>> = const { RefCell::new(Vec::new()) };
    /// Processes of this worker's pools not yet reaped (idle, busy, dying).
    static PROCESSES: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
}

/// Processes of this worker's pools (not counted by `transform_max_programs`).
pub fn processes() -> usize {
    PROCESSES.get()
}

/// A process's pipes and child, lent to a request or held by the pool while idle.
pub struct Proc {
    pub child: Child,
    pub stdin: EventFd,
    pub stdout: EventFd,
}

/// What a request holds while its process serves it.
pub struct Lease {
    slot: *mut Slot,
    /// The pipes and child, taken by the relay.
    pub proc: Option<Proc>,
    /// The process's pid, and this request's number among those it served.
    pub pid: libc::pid_t,
    pub requests: u64,
    /// How long the request waited for the process.
    pub waited: ngx_msec_t,
    pub program: &'static CStr,
}

/// Why a process leaves the pool.
pub enum Loss {
    /// It exited (or was killed by a signal) on its own.
    Exited(os::ExitStatus),
    /// It exited before it read anything of its first request: it cannot start (the next
    /// start is delayed). One that dies of what a request made it do is `Exited`: a client
    /// must not be able to hold the pool back.
    StartFailed(os::ExitStatus),
    /// It broke the protocol.
    Broke(String),
    TimedOut,
    /// Its request ended before the response was complete.
    Ended,
    /// The response was complete but the process is in an unknown state.
    NotReusable(&'static str),
    /// It asked to close (`Connection: close`).
    Close,
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loss::Exited(s) | Loss::StartFailed(s) => write!(f, "{s}"),
            Loss::Broke(why) => write!(f, "broke the framing: {why}"),
            Loss::TimedOut => write!(f, "timed out"),
            Loss::Ended => write!(f, "its request ended mid-response"),
            Loss::NotReusable(why) => write!(f, "{why}"),
            Loss::Close => write!(f, "it asked to close (Connection: close)"),
        }
    }
}

struct Pool {
    index: usize,
    conf: &'static PoolConf,
    spawn: &'static TransformConf,
    slots: Vec<*mut Slot>,
    queue: VecDeque<*mut Waiter>,
    /// Consecutive processes that died before their first response, and the earliest next
    /// start.
    fails: u32,
    not_before: ngx_msec_t,
    timer: Option<Timer>,
}

struct Slot {
    pool: *mut Pool,
    pid: libc::pid_t,
    state: SlotState,
    /// Requests given to it so far, and after how many it retires (0: never).
    served: u64,
    limit: u64,
    /// Whether it completed a response.
    answered: bool,
    stderr: Option<EventFd>,
    stderr_log: StderrLog,
    idle_since: ngx_msec_t,
    /// Its pipes' pages, counted in the worker's share of the pipe budget while it lives (held
    /// for their `Drop`).
    #[allow(dead_code)]
    pipe_pages: Vec<crate::pipes::Held>,
}

enum SlotState {
    Idle(Proc),
    Busy,
    /// Lost mid-response with no reason known yet (its output ended: it is exiting, or it
    /// closed its stdout): stopped, and its exit, when it comes, says why; `at_start`: it had
    /// read nothing of its request (a start failure).
    Dying {
        child: Child,
        at_start: bool,
    },
}

/// A request waiting for a process (in the request pool).
pub struct Waiter {
    http: Http,
    pool: *mut Pool,
    loc: &'static TransformConf,
    content_type: Option<&'static [u8]>,
    since: ngx_msec_t,
    queued: bool,
    kind: WaitKind,
}

enum WaitKind {
    /// `transform_pass`: the request starts when it gets a process.
    Handler,
    /// `transform_filter_pass`: the response's head, and the body buffers its handler passed
    /// meanwhile (not consumed: the handler waits for them, as for a slow program).
    Filter {
        head: Vec<u8>,
        chain: *mut ngx_chain_t,
        /// nginx's writer arms send_timeout while the response is held, which would end a
        /// response whose client waits for nothing (408): posted after each call of the
        /// handler, it removes that timer and takes the client's write events first
        /// (`wrapped`: whose they are), as the relay does while it waits for its program.
        fix: Option<Timer>,
        wrapped: Option<ngx_http_event_handler_pt>,
    },
}

std::thread_local! {
    /// Waiting responses whose client write events come to [`waiting_write`] first.
    static WRAPPED: RefCell<Vec<(usize, *mut Waiter)>> = const { RefCell::new(Vec::new()) };
}

/// Posted after the handler of a waiting response ran: removes the send timer nginx's writer
/// armed, and routes the client's write events to [`waiting_write`] first.
unsafe extern "C" fn fix_send_timer(ev: *mut ngx_event_t) {
    // SAFETY: the Timer's data is its live waiter (the Timer goes with it).
    let w = unsafe { &mut *Timer::data_of(ev).cast::<Waiter>() };
    if !w.queued {
        return;
    }
    let http = w.http;
    let me: *mut Waiter = w;
    if let WaitKind::Filter { wrapped, .. } = &mut w.kind {
        http.drop_idle_send_timer();
        let ours = waiting_write as *const () as usize;
        if wrapped.is_none() && http.write_handler().map(|f| f as usize) != Some(ours) {
            *wrapped = Some(http.write_handler());
            http.set_write_handler(Some(waiting_write));
            WRAPPED.with_borrow_mut(|l| l.push((http.as_ptr() as usize, me)));
        }
    }
}

/// A waiting response's client write event: goes to its handler (nginx's writer, which arms
/// send_timeout again: removed after its turn).
unsafe extern "C" fn waiting_write(r: *mut ngx_http_request_t) {
    let key = r as usize;
    let Some(w) = WRAPPED.with_borrow(|l| l.iter().find(|&&(q, _)| q == key).map(|&(_, w)| w))
    else {
        return;
    };
    // SAFETY: listed waiters are alive (they unlist themselves when they go).
    let handler = unsafe { unwrap_writes(w) };
    // SAFETY: as above; the Timer lives in the request pool: a request freed by the handler
    // takes the posted event with it.
    if let WaitKind::Filter { fix: Some(fix), .. } = unsafe { &(*w).kind } {
        fix.post();
    }
    if let Some(h) = handler {
        // SAFETY: the handler nginx would have called, with its live request.
        unsafe { h(r) };
    }
}

/// Gives the client's write events back to the response's handler; returns it.
///
/// # Safety
/// `w` is a live waiter.
unsafe fn unwrap_writes(w: *mut Waiter) -> ngx_http_event_handler_pt {
    // SAFETY: caller's contract.
    let w = unsafe { &mut *w };
    let key = w.http.as_ptr() as usize;
    WRAPPED.with_borrow_mut(|l| l.retain(|&(q, _)| q != key));
    let WaitKind::Filter { wrapped, .. } = &mut w.kind else {
        return None;
    };
    let h = wrapped.take()?;
    if w.http.write_handler().map(|f| f as usize) == Some(waiting_write as *const () as usize) {
        w.http.set_write_handler(h);
    }
    h
}

fn cycle_log() -> *mut ngx_log_t {
    ngx::log::ngx_cycle_log().as_ptr()
}

/// `transform_pass`: serves the request with a process of pool `index`, now or when one is free.
pub fn request(
    http: Http,
    loc: &'static TransformConf,
    index: usize,
    content_type: Option<&'static [u8]>,
) -> ngx_int_t {
    let Some(pool) = pool_of(http, index) else {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    };
    // SAFETY: this worker's pool, alive until exit_process.
    let p = unsafe { &mut *pool };
    if p.queue.is_empty() {
        match take_process(pool, 0) {
            Ok(Some(lease)) => return crate::relay::start_pooled(http, loc, lease, content_type),
            Ok(None) => {}
            Err(rc) => return rc,
        }
    }
    if queue_full(http, p, "request") {
        if !http.add_header("Retry-After", "1") {
            return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
        }
        return NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t;
    }
    if enqueue(http, pool, loc, content_type, WaitKind::Handler).is_none() {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    }
    debug!(
        http.log(),
        "transform pool \"{}\": request queued", p.conf.name
    );
    http.set_event_handlers(Some(waiting), None);
    http.take_reference();
    kick(pool);
    NGX_DONE as ngx_int_t
}

/// `transform_filter_pass`: filters the response with a process of pool `index`, now or when
/// one is free (the response's header and body are held meanwhile). `Err` is the status of the
/// error page in its place (503 when the queue is full: logged here).
pub fn filter_request(
    http: Http,
    loc: &'static TransformConf,
    index: usize,
    content_type: Option<&'static [u8]>,
    head: Vec<u8>,
) -> Result<(), ngx_int_t> {
    let internal = NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    let pool = pool_of(http, index).ok_or(internal)?;
    // SAFETY: this worker's pool, alive until exit_process.
    let p = unsafe { &mut *pool };
    if p.queue.is_empty() {
        if let Some(lease) = take_process(pool, 0)? {
            return crate::relay::filter::start_pooled(http, loc, lease, content_type, head)
                .map(|_| ());
        }
    }
    if queue_full(http, p, "response to filter") {
        return Err(NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t);
    }
    let kind = WaitKind::Filter {
        head,
        chain: core::ptr::null_mut(),
        fix: None,
        wrapped: None,
    };
    let Some(waiter) = enqueue(http, pool, loc, content_type, kind) else {
        return Err(internal);
    };
    let fix = Timer::new(http.pool(), http.log(), fix_send_timer, waiter.cast());
    let Some(fix) = fix.filter(|_| crate::filter::set_waiting(http, waiter.cast())) else {
        // (Out of memory: it leaves the queue, and its error page goes out.)
        // SAFETY: just queued, in the request pool.
        unsafe { waiter_cleanup(waiter.cast()) };
        return Err(internal);
    };
    fix.post();
    // SAFETY: just allocated in the request pool.
    if let WaitKind::Filter { fix: slot, .. } = unsafe { &mut (*waiter).kind } {
        *slot = Some(fix);
    }
    // nginx must not end the request while it waits; a client that leaves meanwhile is seen.
    http.set_buffered(true);
    http.watch_close_if_blocked();
    kick(pool);
    Ok(())
}

/// Whether the pool's queue is full: then `what` is refused (one warning).
fn queue_full(http: Http, p: &Pool, what: &str) -> bool {
    if p.queue.len() < p.conf.queue {
        return false;
    }
    log_error!(
        NGX_LOG_WARN,
        http.log(),
        0,
        "transform pool \"{}\": {} processes busy and {} requests queued (queue={}), {what} \
         refused",
        p.conf.name,
        p.slots.len(),
        p.queue.len(),
        p.conf.queue
    );
    true
}

/// A waiter for the request, in its pool with its cleanup, at the end of the queue.
fn enqueue(
    http: Http,
    pool: *mut Pool,
    loc: &'static TransformConf,
    content_type: Option<&'static [u8]>,
    kind: WaitKind,
) -> Option<*mut Waiter> {
    let waiter = pool_allocate(
        http.pool(),
        Waiter {
            http,
            pool,
            loc,
            content_type,
            since: now_msec(),
            queued: true,
            kind,
        },
    );
    if waiter.is_null() || !http.add_cleanup(waiter_cleanup, waiter.cast()) {
        return None;
    }
    // SAFETY: this worker's pool.
    unsafe { (*pool).queue.push_back(waiter) };
    Some(waiter)
}

/// The body filter of a response waiting for a process: its buffers are kept (not consumed)
/// until the process takes them.
///
/// # Safety
/// `waiter` is the request's waiter (its filter ctx).
pub unsafe fn hold(waiter: *mut Waiter, chain: *mut ngx_chain_t) -> ngx_int_t {
    // SAFETY: caller's contract.
    let w = unsafe { &mut *waiter };
    if let WaitKind::Filter { fix: Some(fix), .. } = &w.kind {
        // (After the handler's turn: it may have armed send_timeout.)
        fix.post();
    }
    if let WaitKind::Filter { chain: held, .. } = &mut w.kind {
        // SAFETY: links of our own in the request pool, pointing at the handler's buffers.
        if !chain.is_null()
            && unsafe { nginx_sys::ngx_chain_add_copy(w.http.pool(), held, chain) } != 0
        {
            return nginx_sys::NGX_ERROR as ngx_int_t;
        }
    }
    nginx_sys::NGX_AGAIN as ngx_int_t
}

/// The write handler of a waiting request: nothing to do.
unsafe extern "C" fn waiting(_r: *mut ngx_http_request_t) {}

/// A waiting request ends (its client closed): it leaves the queue.
unsafe extern "C" fn waiter_cleanup(data: *mut c_void) {
    let w = data.cast::<Waiter>();
    // SAFETY: registered with the waiter, alive in the request pool; its pool lives on.
    unsafe {
        unwrap_writes(w);
        if (*w).queued {
            (*w).queued = false;
            (*(*w).pool).queue.retain(|&q| q != w);
        }
    }
}

/// This worker's pool `index`, created on first use.
fn pool_of(http: Http, index: usize) -> Option<*mut Pool> {
    if let Some(p) = POOLS.with_borrow(|v| v.get(index).copied().filter(|p| !p.is_null())) {
        return Some(p);
    }
    let main = <crate::Module as HttpModuleMainConf>::main_conf(http_request(http))?;
    let conf: &'static PoolConf = main.pools.get(index)?;
    let spawn: &'static TransformConf = conf.spawn.as_deref()?;
    let pool = Box::into_raw(Box::new(Pool {
        index,
        conf,
        spawn,
        slots: Vec::new(),
        queue: VecDeque::new(),
        fails: 0,
        not_before: 0,
        timer: None,
    }));
    POOLS.with_borrow_mut(|v| {
        if v.len() <= index {
            v.resize(index + 1, core::ptr::null_mut());
        }
        v[index] = pool;
    });
    Some(pool)
}

/// The request as ngx's type, for its configuration lookups.
fn http_request(http: Http) -> &'static ngx::http::Request {
    // SAFETY: a live request; only its configuration pointers are read.
    unsafe { ngx::http::Request::from_ngx_http_request(http.as_ptr()) }
}

/// An idle process, or a new one if the pool has room and no backoff runs; None if the request
/// must wait; Err for a start that failed (logged).
fn take_process(pool: *mut Pool, waited: ngx_msec_t) -> Result<Option<Lease>, ngx_int_t> {
    // SAFETY: this worker's pool.
    let p = unsafe { &mut *pool };
    let idle = loop {
        let idle = p
            .slots
            .iter()
            .copied()
            // SAFETY: the pool's slots are live.
            .filter(|&s| matches!(unsafe { &(*s).state }, SlotState::Idle(_)))
            // The one idle the longest (its pipes are warm either way; this spreads the work,
            // so that idle_timeout retires what is really not needed).
            // SAFETY: as above.
            .min_by_key(|&s| unsafe { (*s).idle_since });
        let Some(s) = idle else {
            break None;
        };
        // SAFETY: a live idle slot.
        let SlotState::Idle(proc) = (unsafe { &(*s).state }) else {
            unreachable!("filtered above");
        };
        // Output before its request (whose event is not handled yet) would pass for the answer
        // to the next one: such a process is not lent.
        match os::pipe_state(proc.stdout.fd()) {
            Ok((0, false)) => break Some(s),
            Ok((0, true)) => lose(s, &Loss::NotReusable("closed its stdout while idle")),
            _ => lose(s, &Loss::NotReusable("wrote while idle")),
        }
    };
    let slot = match idle {
        Some(s) => s,
        None if p.slots.len() < p.conf.processes && now_msec() >= p.not_before => spawn(pool)?,
        None => return Ok(None),
    };
    // SAFETY: a live slot of the pool.
    let s = unsafe { &mut *slot };
    let SlotState::Idle(proc) = core::mem::replace(&mut s.state, SlotState::Busy) else {
        unreachable!("only idle slots are taken");
    };
    proc.stdout.set_idle(false);
    s.served += 1;
    Ok(Some(Lease {
        slot,
        proc: Some(proc),
        pid: s.pid,
        requests: s.served,
        waited,
        program: p.conf.argv[0].as_c_str(),
    }))
}

/// Starts a process (idle, in the pool).
fn spawn(pool: *mut Pool) -> Result<*mut Slot, ngx_int_t> {
    // SAFETY: this worker's pool.
    let p = unsafe { &mut *pool };
    let log = cycle_log();
    let conf = p.spawn;
    let failed = |what: &str, e: &std::io::Error| {
        log_error!(
            NGX_LOG_ERR,
            log,
            os::errno(e),
            "transform pool \"{}\": {what} failed",
            p.conf.name
        );
        match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EAGAIN) => {
                NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t
            }
            _ => NGX_HTTP_BAD_GATEWAY as ngx_int_t,
        }
    };
    let out = os::stdout_pipe().map_err(|e| failed("pipe2()", &e))?;
    let err = os::stdout_pipe().map_err(|e| failed("pipe2()", &e))?;
    let inp = os::stdin_pipe().map_err(|e| failed("pipe2()", &e))?;
    // (A pool's few processes live long: their pipes get transform_pipe_size, counted in the
    // worker's share of the pipe budget.)
    let mut pipe_pages = Vec::with_capacity(2);
    for (fd, stderr) in [(out.read.as_fd(), true), (inp.write.as_fd(), false)] {
        if let Err(e) = os::set_pipe_size(fd, conf.pipe_size) {
            debug!(log, "transform pool pipe size refused: {e}");
        }
        pipe_pages.push(crate::pipes::count(fd, stderr));
    }
    crate::pipes::size_stderr(err.read.as_fd());
    let argv: Vec<&CStr> = p.conf.argv.iter().map(CString::as_c_str).collect();
    let env: Vec<&CStr> = p.conf.env.iter().map(CString::as_c_str).collect();
    let cmd = os::Command {
        stdin: Some(inp.read.as_raw_fd()),
        argv: &argv,
        env: &env,
        dir: p.conf.dir.as_deref(),
        stdout: out.write.as_raw_fd(),
        stderr: err.write.as_raw_fd(),
        rlimits: conf.rlimits.as_deref().unwrap_or(&[]),
        confine: conf.confine(),
    };
    let group = match conf.cgroup().map(crate::cgroup::Group::create) {
        Some(Ok(g)) => Some(g),
        Some(Err(f)) => {
            log_error!(
                NGX_LOG_ERR,
                log,
                os::errno(&f.err),
                "transform pool \"{}\": transform_cgroup: {f}",
                p.conf.name
            );
            return Err(crate::cgroup::failure_status(&f));
        }
        None => None,
    };
    let slot = Box::into_raw(Box::new(Slot {
        pool,
        pid: 0,
        state: SlotState::Busy,
        served: 0,
        limit: 0,
        answered: false,
        stderr: None,
        stderr_log: StderrLog::new(conf.stderr_level, now_msec()),
        idle_since: now_msec(),
        pipe_pages,
    }));
    let data = slot.cast::<c_void>();
    let child = match Child::spawn(&cmd, group, conf.kill_timeout, log, idle_exit, data) {
        Ok(c) => c,
        Err(e) => {
            // SAFETY: just leaked, not shared.
            drop(unsafe { Box::from_raw(slot) });
            let subject = match (e.step, &p.conf.dir) {
                (os::SpawnStep::Chdir, Some(dir)) => escape(dir.as_bytes()),
                _ => escape(p.conf.argv[0].as_bytes()),
            };
            log_error!(
                NGX_LOG_ERR,
                log,
                os::errno(&e.err),
                "transform pool \"{}\": {} \"{subject}\" failed",
                p.conf.name,
                e.step.call()
            );
            return Err(match e.err.raw_os_error() {
                Some(libc::EAGAIN | libc::EMFILE | libc::ENFILE | libc::ENOMEM) => {
                    NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t
                }
                _ => NGX_HTTP_BAD_GATEWAY as ngx_int_t,
            });
        }
    };
    drop((out.write, err.write, inp.read));
    // SAFETY: just leaked, owned by the pool from here on.
    let s = unsafe { &mut *slot };
    s.pid = child.pid();
    s.stderr_log = StderrLog::new(conf.stderr_level, now_msec())
        .with_source(format!("pool \"{}\" process {}", p.conf.name, s.pid));
    // (Counted from here: every slot that had a child goes through remove().)
    PROCESSES.set(PROCESSES.get() + 1);
    let joined = (|| {
        let stdout = EventFd::new(out.read, log, idle_stdout, data).ok()?;
        let stdin = EventFd::new_writer(inp.write, log, idle_stdin, data).ok()?;
        let stderr = EventFd::new(err.read, log, stderr_event, data).ok()?;
        Some((stdout, stdin, stderr))
    })();
    let Some((stdout, stdin, stderr)) = joined else {
        log_error!(
            NGX_LOG_ERR,
            log,
            0,
            "transform pool \"{}\": no connection for a process's pipes",
            p.conf.name
        );
        // SAFETY: as above; dropping the child stops it.
        drop(unsafe { Box::from_raw(slot) });
        drop(child);
        PROCESSES.set(PROCESSES.get().saturating_sub(1));
        return Err(NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t);
    };
    if !child.watch() || !stdout.arm_read() || !stderr.arm_read() {
        // SAFETY: as above.
        drop(unsafe { Box::from_raw(slot) });
        PROCESSES.set(PROCESSES.get().saturating_sub(1));
        return Err(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
    }
    s.stderr = Some(stderr);
    let max = p.conf.max_requests;
    // SAFETY: rand() has no preconditions (nginx seeds glibc's generator per worker).
    let jitter = if max >= 10 {
        (unsafe { libc::rand() } as u64) % (max / 10 + 1)
    } else {
        0
    };
    s.limit = if max == 0 { 0 } else { max + jitter };
    s.state = SlotState::Idle(Proc {
        child,
        stdin,
        stdout,
    });
    p.slots.push(slot);
    log_error!(
        NGX_LOG_INFO,
        log,
        0,
        "transform pool \"{}\" started process {}",
        p.conf.name,
        s.pid
    );
    Ok(slot)
}

impl Lease {
    /// Not used after all (nothing was written to the process): back to the pool as it was.
    pub fn unused(mut self) {
        if let Some(proc) = self.proc.take() {
            // SAFETY: the lease's slot.
            unsafe { (*self.slot).served -= 1 };
            self.give_back(proc);
        }
    }

    /// Its response is complete: the process answered (a later loss starts no backoff).
    pub fn answered(&self) {
        if !self.slot.is_null() {
            // SAFETY: the lease's slot, and its pool.
            unsafe {
                (*self.slot).answered = true;
                (*(*self.slot).pool).fails = 0;
            }
        }
    }

    /// The response was complete (see [`Lease::answered`]) and the process is in a known state,
    /// or it was not used: back to the pool (or
    /// retired: max_requests, shutdown), and the next waiting request gets it.
    pub fn give_back(mut self, mut proc: Proc) {
        let slot = core::mem::replace(&mut self.slot, core::ptr::null_mut());
        // SAFETY: the lease's slot lives until it is given back or lost.
        let s = unsafe { &mut *slot };
        // SAFETY: its pool lives for the worker.
        let p = unsafe { &mut *s.pool };
        let data = slot.cast::<c_void>();
        proc.child.rebind(idle_exit, data);
        proc.stdout.rebind(idle_stdout, data);
        proc.stdin.rebind(idle_stdin, data);
        if s.limit > 0 && s.served >= s.limit {
            let why = format!(
                "served {} requests (max_requests {})",
                s.served, p.conf.max_requests
            );
            s.state = SlotState::Idle(proc);
            retire(slot, &why);
        } else if exiting() && p.queue.is_empty() {
            s.state = SlotState::Idle(proc);
            retire(slot, "the worker is shutting down");
        } else if !proc.child.watch() || !proc.stdout.arm_read() {
            drop(proc);
            lose(slot, &Loss::NotReusable("its pipes could not be watched"));
        } else {
            if p.conf.idle_timeout > 0 {
                proc.stdout.set_timer(p.conf.idle_timeout);
            }
            proc.stdout.set_idle(true);
            s.idle_since = now_msec();
            s.state = SlotState::Idle(proc);
        }
        kick(s_pool(slot));
    }

    /// The process is not given back (it is being killed by its request): the slot goes, the
    /// reason is logged, and a waiting request gets a new process.
    pub fn lose(mut self, loss: &Loss) {
        let slot = core::mem::replace(&mut self.slot, core::ptr::null_mut());
        let pool = s_pool(slot);
        if matches!(loss, Loss::Close) {
            // SAFETY: the lease's slot.
            unsafe { (*slot).answered = true };
            // (Its pipes were closed by the request: the program sees the end of its stdin.)
            retire(slot, &loss.to_string());
        } else {
            lose(slot, loss);
        }
        kick(pool);
    }
}

impl Lease {
    /// The process ended its output before its response did: it gets SIGTERM (then SIGKILL after
    /// transform_kill_timeout), and the pool logs the loss with its exit status, which tells
    /// whether it had exited by itself (and starts the backoff if it never answered).
    pub fn lose_dying(mut self, mut child: Child, at_start: bool) {
        let slot = core::mem::replace(&mut self.slot, core::ptr::null_mut());
        // SAFETY: the lease's slot, and its pool.
        let (s, kill_timeout) = unsafe { (&mut *slot, (*(*slot).pool).spawn.kill_timeout) };
        child.rebind(dying_exit, slot.cast());
        if child.status().is_none() {
            child.signal(rustix::process::Signal::TERM);
            child.set_timer(kill_timeout.max(1));
        }
        let watching = child.watch();
        s.state = SlotState::Dying { child, at_start };
        if !watching {
            let pool = s.pool;
            lose(slot, &Loss::Ended);
            kick(pool);
        } else if let SlotState::Dying { child, .. } = &mut s.state {
            if child.status().is_some() {
                // (Exited already: no event may come for it.)
                dying(slot);
            }
        }
    }
}

/// A lost process's exit (or its kill timer).
unsafe extern "C" fn dying_exit(ev: *mut ngx_event_t) {
    // SAFETY: installed on a dying slot's pidfd, whose data is the slot.
    let (slot, timed_out) = unsafe {
        (
            EventFd::data_of(ev).cast::<Slot>(),
            EventFd::take_timedout(ev),
        )
    };
    // SAFETY: a live slot.
    let s = unsafe { &mut *slot };
    let SlotState::Dying { child, .. } = &mut s.state else {
        return;
    };
    if timed_out {
        child.signal(rustix::process::Signal::KILL);
    }
    if child.status().is_none() {
        child.watch();
        return;
    }
    dying(slot);
}

/// A lost process exited: the loss is logged with its status.
fn dying(slot: *mut Slot) {
    // SAFETY: a live slot.
    let s = unsafe { &mut *slot };
    let SlotState::Dying { child, at_start } = &mut s.state else {
        return;
    };
    let Some(status) = child.status() else {
        return;
    };
    let at_start = *at_start;
    drain_stderr(s, true);
    let pool = s.pool;
    let loss = if at_start {
        Loss::StartFailed(status)
    } else {
        Loss::Exited(status)
    };
    lose(slot, &loss);
    kick(pool);
}

impl Drop for Lease {
    /// A lease dropped unused (its request could not start): the process is killed.
    fn drop(&mut self) {
        let slot = core::mem::replace(&mut self.slot, core::ptr::null_mut());
        if !slot.is_null() {
            drop(self.proc.take());
            let pool = s_pool(slot);
            lose(slot, &Loss::Ended);
            kick(pool);
        }
    }
}

fn s_pool(slot: *mut Slot) -> *mut Pool {
    // SAFETY: a live slot.
    unsafe { (*slot).pool }
}

/// Whether nginx is shutting this worker down gracefully.
fn exiting() -> bool {
    // SAFETY: nginx's globals, written by the worker's own thread.
    unsafe {
        nginx_sys::ngx_exiting != 0 || nginx_sys::ngx_quit != 0 || nginx_sys::ngx_terminate != 0
    }
}

/// Removes a slot whose process is killed (its pipes and child are dropped by whoever holds
/// them), logging why; a process that died before its first response starts the backoff.
fn lose(slot: *mut Slot, loss: &Loss) {
    // SAFETY: a live slot, removed and freed here.
    let s = unsafe { &mut *slot };
    // SAFETY: its pool.
    let p = unsafe { &mut *s.pool };
    let log = cycle_log();
    if let (Loss::StartFailed(status), false) = (loss, s.answered) {
        p.fails += 1;
        let delay = (BACKOFF_FIRST << (p.fails - 1).min(16)).min(BACKOFF_MAX);
        p.not_before = now_msec() + delay;
        log_error!(
            NGX_LOG_INFO,
            log,
            0,
            "transform pool \"{}\" process {} {status} before its first response; next start \
             in {delay}ms",
            p.conf.name,
            s.pid
        );
    } else {
        log_error!(
            NGX_LOG_INFO,
            log,
            0,
            "transform pool \"{}\" process {} replaced: {loss}",
            p.conf.name,
            s.pid
        );
    }
    remove(slot);
}

/// Retires a process: its stdin closes (the program sees the end of its input), it gets
/// SIGTERM, then SIGKILL after transform_kill_timeout (the orphan reaper).
fn retire(slot: *mut Slot, why: &str) {
    // SAFETY: a live slot.
    let s = unsafe { &mut *slot };
    // SAFETY: its pool.
    let p = unsafe { &*s.pool };
    log_error!(
        NGX_LOG_INFO,
        cycle_log(),
        0,
        "transform pool \"{}\" process {} retired: {why}",
        p.conf.name,
        s.pid
    );
    remove(slot);
}

/// Takes a slot out of its pool and frees it: an idle process's pipes and child are dropped
/// (closing stdin first), its stderr drained.
fn remove(slot: *mut Slot) {
    // SAFETY: a live slot; freed here, after it left the pool's list.
    let mut s = unsafe { Box::from_raw(slot) };
    // SAFETY: its pool.
    let p = unsafe { &mut *s.pool };
    p.slots.retain(|&x| x != slot);
    PROCESSES.set(PROCESSES.get().saturating_sub(1));
    match core::mem::replace(&mut s.state, SlotState::Busy) {
        SlotState::Idle(proc) => {
            let Proc {
                child,
                stdin,
                stdout,
            } = proc;
            drop(stdin);
            drop(stdout);
            drop(child);
        }
        SlotState::Dying { child, .. } => drop(child),
        SlotState::Busy => {}
    }
    drain_stderr(&mut s, true);
}

/// Reads what a process wrote to stderr and logs it; at the end (or `last`), what is left.
fn drain_stderr(s: &mut Slot, last: bool) {
    if let Some(fd) = &s.stderr {
        if s.stderr_log.drain(fd, cycle_log(), last) {
            s.stderr = None;
        }
    }
}

/// Gives free processes to waiting requests, starting new ones where the pool has room; arms
/// the backoff timer when the queue has to wait for it.
fn dispatch(pool: *mut Pool) {
    loop {
        // SAFETY: this worker's pool.
        let p = unsafe { &mut *pool };
        let Some(&w) = p.queue.front() else {
            return;
        };
        // SAFETY: queued waiters are alive (their cleanup removes them).
        let (since, http, handler) = unsafe {
            (
                (*w).since,
                (*w).http,
                matches!((*w).kind, WaitKind::Handler),
            )
        };
        let c = http.connection();
        if handler && !http.client_alive() {
            // Its client left (its close not handled yet): the request ended, and its cleanup
            // took the waiter out of the queue, before a process was given to nobody. (nginx
            // closes it from the connection's posted requests.)
            // SAFETY: connections are never freed, only marked destroyed (checked by nginx).
            unsafe { crate::nginx::run_posted_requests(c) };
            if p.queue.front() == Some(&w) {
                // (Not ended after all: a later dispatch sees to it.)
                return;
            }
            continue;
        }
        let lease = match take_process(pool, now_msec().saturating_sub(since)) {
            Ok(Some(lease)) => Ok(lease),
            Ok(None) => {
                schedule(pool);
                return;
            }
            Err(rc) => Err(rc),
        };
        p.queue.pop_front();
        // SAFETY: as above.
        // SAFETY: as above: the response's handler gets its write events back.
        unsafe { unwrap_writes(w) };
        let (http, loc, content_type, kind) = unsafe {
            (*w).queued = false;
            (
                (*w).http,
                (*w).loc,
                (*w).content_type,
                core::mem::replace(&mut (*w).kind, WaitKind::Handler),
            )
        };
        match kind {
            WaitKind::Handler => {
                let rc = match lease {
                    Ok(lease) => crate::relay::start_pooled(http, loc, lease, content_type),
                    Err(rc) => rc,
                };
                // Drops the waiter's reference (or sends the error page).
                http.finalize(rc);
            }
            WaitKind::Filter {
                head, chain, fix, ..
            } => {
                // (Its event is in the request pool, which what follows may free.)
                drop(fix);
                let started = lease.and_then(|lease| {
                    crate::relay::filter::start_pooled(http, loc, lease, content_type, head)
                });
                match started {
                    // SAFETY: the relay just started, in the request pool. Not from the
                    // handler's call: the relay posts the handler when it took its buffers,
                    // and ends the request itself if it fails.
                    Ok(t) => unsafe {
                        (*t).filter_input(chain, false);
                    },
                    Err(rc) => crate::filter::refuse_late(http, rc, chain),
                }
            }
        }
        // SAFETY: connections are never freed, only marked destroyed (checked by nginx).
        unsafe { crate::nginx::run_posted_requests(c) };
    }
}

/// Runs `dispatch` from nginx's posted events (never from inside another request's handling)
/// if requests wait.
fn kick(pool: *mut Pool) {
    // SAFETY: this worker's pool.
    let p = unsafe { &mut *pool };
    if !p.queue.is_empty() {
        if let Some(t) = p.timer() {
            t.post();
        }
    }
}

/// Arms the backoff timer if waiting requests wait for it (rather than for a busy process).
fn schedule(pool: *mut Pool) {
    // SAFETY: this worker's pool.
    let p = unsafe { &mut *pool };
    if p.queue.is_empty() || p.slots.len() >= p.conf.processes {
        return;
    }
    let now = now_msec();
    if now >= p.not_before {
        return;
    }
    let wait = p.not_before - now;
    if let Some(t) = p.timer() {
        if !t.is_set() {
            t.set(wait);
        }
    }
}

impl Pool {
    fn timer(&mut self) -> Option<&Timer> {
        if self.timer.is_none() {
            // SAFETY: the cycle (and its pool) outlives the worker's pools.
            let cycle_pool = unsafe { (*nginx_sys::ngx_cycle).pool };
            let me = (self as *mut Pool).cast::<c_void>();
            self.timer = Timer::new(cycle_pool, cycle_log(), backoff_event, me);
        }
        self.timer.as_ref()
    }
}

unsafe extern "C" fn backoff_event(ev: *mut ngx_event_t) {
    // SAFETY: the timer's data is its pool.
    let pool = unsafe { Timer::data_of(ev) }.cast::<Pool>();
    dispatch(pool);
}

/// An idle process wrote, closed its stdout, or its idle time ended; or nginx closes idle
/// connections (graceful shutdown).
unsafe extern "C" fn idle_stdout(ev: *mut ngx_event_t) {
    // SAFETY: installed on an idle slot's stdout, whose data is the slot.
    let (slot, closing, timed_out) = unsafe {
        (
            EventFd::data_of(ev).cast::<Slot>(),
            EventFd::closing(ev),
            EventFd::take_timedout(ev),
        )
    };
    // SAFETY: a live slot.
    let s = unsafe { &mut *slot };
    let SlotState::Idle(proc) = &s.state else {
        return;
    };
    let pool = s.pool;
    if closing || exiting() {
        retire(slot, "the worker is shutting down");
    } else if timed_out {
        // SAFETY: its pool.
        let ms = unsafe { (*pool).conf.idle_timeout };
        retire(slot, &format!("idle for {ms}ms (idle_timeout)"));
    } else {
        match os::pipe_state(proc.stdout.fd()) {
            Ok((0, false)) => {
                proc.stdout.arm_read();
                return;
            }
            Ok((0, true)) => lose(slot, &Loss::NotReusable("closed its stdout while idle")),
            _ => lose(slot, &Loss::NotReusable("wrote while idle")),
        }
    }
    kick(pool);
}

/// An idle process exited.
unsafe extern "C" fn idle_exit(ev: *mut ngx_event_t) {
    // SAFETY: installed on an idle slot's pidfd, whose data is the slot.
    let (slot, closing) = unsafe { (EventFd::data_of(ev).cast::<Slot>(), EventFd::closing(ev)) };
    // SAFETY: a live slot.
    let s = unsafe { &mut *slot };
    let SlotState::Idle(proc) = &mut s.state else {
        return;
    };
    let pool = s.pool;
    if closing {
        retire(slot, "the worker is shutting down");
    } else {
        match proc.child.status() {
            Some(status) => {
                drain_stderr(s, true);
                // (Idle: it had no request to fail.)
                let loss = if s.answered {
                    Loss::Exited(status)
                } else {
                    Loss::StartFailed(status)
                };
                lose(slot, &loss);
            }
            None => {
                proc.child.watch();
                return;
            }
        }
    }
    kick(pool);
}

/// An idle process's stdin: not watched.
unsafe extern "C" fn idle_stdin(_ev: *mut ngx_event_t) {}

/// A process wrote to stderr (idle or busy: its stderr stays with the pool).
unsafe extern "C" fn stderr_event(ev: *mut ngx_event_t) {
    // SAFETY: installed on a slot's stderr, whose data is the slot.
    let (slot, closing) = unsafe { (EventFd::data_of(ev).cast::<Slot>(), EventFd::closing(ev)) };
    // SAFETY: a live slot.
    drain_stderr(unsafe { &mut *slot }, closing);
}

/// Worker exit: every process of every pool is killed (busy ones went with their requests).
pub fn stop_all() {
    for pool in POOLS.with_borrow_mut(core::mem::take) {
        if pool.is_null() {
            continue;
        }
        // SAFETY: leaked in pool_of, freed here.
        let p = unsafe { Box::from_raw(pool) };
        for &slot in &p.slots {
            // SAFETY: the pool's slots.
            let mut s = unsafe { Box::from_raw(slot) };
            drain_stderr(&mut s, true);
        }
        let _ = p.index;
    }
}
