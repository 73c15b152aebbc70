//! OS layer: every system call the module makes for processes, pipes and splice lives here.
//!
//! Functions take and return owned or borrowed descriptors and `io::Result`s; nothing here knows
//! about nginx. The calls go through `rustix` (typed, tested wrappers), except where it has no
//! wrapper (`clone` with a child function, `sigaction`, `pthread_sigmask`) and in the child
//! between clone and exec, which shares the worker's memory and must stay raw: no allocation, no
//! locks, only async-signal-safe libc calls and raw system calls.

use core::ffi::{c_char, c_int, c_void, CStr};
use core::mem::MaybeUninit;
use core::ptr;
use core::time::Duration;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use rustix::fs::{Access, FileType, OFlags};
use rustix::io::Errno;
use rustix::net::SendFlags;
use rustix::pipe::{PipeFlags, SpliceFlags};
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, WaitIdStatus, WaitOptions};

/// A pipe: our end non-blocking and close-on-exec, the child's end blocking (programs expect it).
pub struct Pipe {
    /// The end the worker reads from.
    pub read: OwnedFd,
    /// The end the child writes to (dup2'ed onto its stdout; close-on-exec in the worker).
    pub write: OwnedFd,
}

/// Whether the peer of a connected socket closed it (or it failed): a byte peeked is none, or an
/// error other than "nothing yet". Nothing is consumed.
pub fn peer_closed(sock: RawFd) -> bool {
    let mut byte = [0u8; 1];
    // SAFETY: recv into a one-byte buffer of ours; MSG_PEEK leaves the byte in the socket.
    let n = unsafe { libc::recv(sock, byte.as_mut_ptr().cast(), 1, libc::MSG_PEEK) };
    n == 0
        || n < 0
            && !matches!(
                io::Error::last_os_error().raw_os_error(),
                Some(libc::EAGAIN | libc::EINTR)
            )
}

/// Creates the stdout pipe of a child.
pub fn stdout_pipe() -> io::Result<Pipe> {
    let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
    set_nonblocking(read.as_fd())?;
    Ok(Pipe {
        read,
        write: above_stdio(write)?,
    })
}

/// A pipe for a child's stdin: the child's (read) end blocking, ours (write) non-blocking, both
/// close-on-exec, the child's end above 0-2.
pub fn stdin_pipe() -> io::Result<Pipe> {
    let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
    set_nonblocking(write.as_fd())?;
    Ok(Pipe {
        read: above_stdio(read)?,
        write,
    })
}

/// Makes a descriptor non-blocking (our pipe ends; the child's stay blocking).
fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    Ok(rustix::fs::fcntl_setfl(fd, flags | OFlags::NONBLOCK)?)
}

/// The child's end of a pipe goes onto 0, 1 or 2 in the child: keep it clear of 0-2 (a worker
/// started with closed stdio could get them here) so no dup2 in the child overwrites another.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    Ok(rustix::io::fcntl_dupfd_cloexec(&fd, 3)?)
}

/// Borrows a descriptor the caller names by number.
///
/// # Safety
/// `fd` is open for as long as the borrow is used (a connection's socket, a request's file).
unsafe fn borrow<'a>(fd: RawFd) -> BorrowedFd<'a> {
    // SAFETY: the caller's contract.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// write(2) from a buffer.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    Ok(rustix::io::write(fd, buf)?)
}

/// Moves up to `len` bytes of a file, from `*offset`, into a non-blocking pipe.
pub fn splice_file_to_pipe(
    file: RawFd,
    offset: &mut i64,
    pipe: BorrowedFd<'_>,
    len: usize,
) -> io::Result<usize> {
    let mut off = u64::try_from(*offset).map_err(|_| io::Error::from(Errno::INVAL))?;
    // SAFETY: the caller's file stays open during the call (it belongs to the request).
    let file = unsafe { borrow(file) };
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    let n = rustix::pipe::splice(file, Some(&mut off), pipe, None, len, flags)?;
    *offset = i64::try_from(off).unwrap_or(i64::MAX);
    Ok(n)
}

/// Asks the kernel to resize a pipe. Returns the size it has afterwards.
pub fn set_pipe_size(fd: BorrowedFd<'_>, size: usize) -> io::Result<usize> {
    let size = size.min(c_int::MAX as usize);
    Ok(rustix::pipe::fcntl_setpipe_size(fd, size)?)
}

/// Bytes waiting in a pipe.
pub fn bytes_in_pipe(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let n = rustix::io::ioctl_fionread(fd)?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// Whether every writer of a pipe is gone (poll without waiting; POLLHUP).
fn hung_up(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut pfd = [rustix::event::PollFd::from_borrowed_fd(
        fd,
        rustix::event::PollFlags::IN,
    )];
    let now = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut pfd, Some(&now))?;
    Ok(pfd[0].revents().contains(rustix::event::PollFlags::HUP))
}

/// Bytes waiting in a pipe, or `None` at end of file (empty, and every writer gone).
///
/// FIONREAD first (the common case, data waiting, takes one call); when it says 0, whether the
/// writers are gone, then FIONREAD again: data written just before the last writer closed is
/// never mistaken for end of file.
pub fn pipe_pending(fd: BorrowedFd<'_>) -> io::Result<Option<usize>> {
    let n = bytes_in_pipe(fd)?;
    if n > 0 {
        return Ok(Some(n));
    }
    if !hung_up(fd)? {
        return Ok(Some(0));
    }
    match bytes_in_pipe(fd)? {
        0 => Ok(None),
        n => Ok(Some(n)),
    }
}

/// Bytes waiting in a pipe and whether every writer is gone, in that order of truth: the
/// hang-up is observed first, so the count that follows is final when it is set.
pub fn pipe_state(fd: BorrowedFd<'_>) -> io::Result<(usize, bool)> {
    let hup = hung_up(fd)?;
    Ok((bytes_in_pipe(fd)?, hup))
}

/// Whether the per-user pipe budget does not bind this process: the kernel exempts one with
/// CAP_SYS_RESOURCE or CAP_SYS_ADMIN in the initial user namespace (fs/pipe.c,
/// `pipe_is_unprivileged_user`, `capable()`), not root as such. Capabilities are those of the
/// process's own user namespace: one that is not the initial one (whose uid map is not the
/// identity) counts as bound.
pub fn pipe_budget_exempt() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_SYS_RESOURCE: u32 = 24;
    let uid_map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let initial_ns = uid_map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"];
    if !initial_ns {
        return false;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    eff & (1 << CAP_SYS_ADMIN | 1 << CAP_SYS_RESOURCE) != 0
}

/// The capacity of a pipe.
pub fn pipe_size(fd: BorrowedFd<'_>) -> io::Result<usize> {
    Ok(rustix::pipe::fcntl_getpipe_size(fd)?)
}

/// read(2) into a buffer.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    Ok(rustix::io::read(fd, buf)?)
}

/// send(2) on a non-blocking socket; `more` says more data follows at once (MSG_MORE).
pub fn send(fd: RawFd, buf: &[u8], more: bool) -> io::Result<usize> {
    let mut flags = SendFlags::NOSIGNAL;
    if more {
        flags |= SendFlags::MORE;
    }
    // SAFETY: the caller's socket stays open during the call (it belongs to the connection).
    Ok(rustix::net::send(unsafe { borrow(fd) }, buf, flags)?)
}

/// Moves up to `len` bytes from a pipe into a non-blocking socket without copying them through
/// userspace; `more` says more data follows at once. `Ok(0)` is end of file on the pipe.
pub fn splice_to_socket(
    pipe: BorrowedFd<'_>,
    sock: RawFd,
    len: usize,
    more: bool,
) -> io::Result<usize> {
    let mut flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    if more {
        flags |= SpliceFlags::MORE;
    }
    // SAFETY: the caller's socket stays open during the call (it belongs to the connection).
    let sock = unsafe { borrow(sock) };
    Ok(rustix::pipe::splice(pipe, None, sock, None, len, flags)?)
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// exit() with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Killed by this signal for its cgroup's memory limit (`memory.max`, in bytes): the kernel's
    /// OOM killer chose it (`transform_cgroup`).
    MemoryLimit { signal: i32, max: u64 },
}

impl ExitStatus {
    /// Exit code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

/// A signal's name ("SIGSEGV"), or "SIG<n>" for the ones without a usual name.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("SIG{sig}"),
    };
    name.to_string()
}

impl core::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            ExitStatus::Code(c) => write!(f, "exited with code {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by signal {s} ({})", signal_name(s)),
            ExitStatus::MemoryLimit { signal, max } => write!(
                f,
                "killed by signal {signal} ({}) by the cgroup memory limit (memory.max {})",
                signal_name(signal),
                size_text(max)
            ),
        }
    }
}

/// A size as nginx's configuration writes it: `64m`, `1g`, `512k`, or bytes.
pub fn size_text(bytes: u64) -> String {
    for (unit, shift) in [("g", 30), ("m", 20), ("k", 10)] {
        if bytes > 0 && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// A started child: its pid and a pidfd that becomes readable when it exits.
pub struct Spawned {
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
}

/// What a child starts with.
pub struct Command<'a> {
    /// Program (argv[0] is also the path executed) and arguments.
    pub argv: &'a [&'a CStr],
    /// The whole environment, as NAME=value strings.
    pub env: &'a [&'a CStr],
    /// Working directory, if it is to be changed.
    pub dir: Option<&'a CStr>,
    /// Descriptor that becomes the child's stdin (None: /dev/null).
    pub stdin: Option<RawFd>,
    /// Descriptors that become the child's stdout and stderr.
    pub stdout: RawFd,
    pub stderr: RawFd,
    /// Resource limits set in the child before exec.
    pub rlimits: &'a [(c_int, libc::rlimit)],
    /// The sandbox applied in the child before exec.
    pub confine: Confine<'a>,
}

/// What confines a child, prepared before the spawn (the child only applies it).
#[derive(Clone, Copy, Default)]
pub struct Confine<'a> {
    /// A Landlock ruleset descriptor to enforce (`landlock_restrict_self`).
    pub landlock: Option<RawFd>,
    /// A seccomp program to install (after everything else, just before exec).
    pub filter: Option<&'a [seccompiler::sock_filter]>,
    /// CLONE_NEW* flags: namespaces of its own.
    pub namespaces: c_int,
    /// `cgroup.procs` files the child writes "0" to (joining those cgroups) before exec.
    pub cgroup_procs: &'a [RawFd],
}

/// Shared with the child (CLONE_VM): what it needs, and the errno it reports if it fails.
struct ChildArgs {
    argv: *const *const c_char,
    envp: *const *const c_char,
    dir: *const c_char,
    stdin: c_int,
    stdout: c_int,
    stderr: c_int,
    rlimits: *const (c_int, libc::rlimit),
    rlimits_len: usize,
    landlock: c_int,
    filter: *const seccompiler::sock_filter,
    filter_len: u16,
    cgroup_procs: *const RawFd,
    cgroup_len: usize,
    /// The child has a pid namespace of its own (getppid() is 0 there).
    new_pid_ns: bool,
    parent: libc::pid_t,
    err: c_int,
    step: SpawnStep,
}

/// The step of starting a child that failed (for the error-log line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpawnStep {
    /// clone() in the worker.
    Clone,
    /// Joining the pidfd to nginx's event loop (no free connection).
    Connection,
    /// prctl(PR_SET_PDEATHSIG), or the worker died before it took effect.
    Pdeathsig,
    NoNewPrivs,
    Setpgid,
    /// open("/dev/null") for a child without stdin.
    DevNull,
    Dup2,
    CloseRange,
    Chdir,
    Getrlimit,
    Setrlimit,
    /// Writing to a cgroup's `cgroup.procs` (joining the program's cgroup).
    Cgroup,
    Landlock,
    Seccomp,
    Execve,
}

impl SpawnStep {
    /// The call, as nginx names calls in its log lines.
    pub fn call(self) -> &'static str {
        match self {
            SpawnStep::Clone => "clone()",
            SpawnStep::Connection => "ngx_get_connection()",
            SpawnStep::Pdeathsig => "prctl(PR_SET_PDEATHSIG)",
            SpawnStep::NoNewPrivs => "prctl(PR_SET_NO_NEW_PRIVS)",
            SpawnStep::Setpgid => "setpgid()",
            SpawnStep::DevNull => "open(\"/dev/null\")",
            SpawnStep::Dup2 => "dup2()",
            SpawnStep::CloseRange => "close_range()",
            SpawnStep::Chdir => "chdir()",
            SpawnStep::Getrlimit => "getrlimit()",
            SpawnStep::Setrlimit => "setrlimit()",
            SpawnStep::Cgroup => "write(\"cgroup.procs\")",
            SpawnStep::Landlock => "landlock_restrict_self()",
            SpawnStep::Seccomp => "seccomp(SECCOMP_SET_MODE_FILTER)",
            SpawnStep::Execve => "execve()",
        }
    }
}

/// A failed start: which step, and why.
#[derive(Debug)]
pub struct SpawnError {
    pub step: SpawnStep,
    pub err: io::Error,
}

/// The kernel's `struct sigaction` (rt_sigaction(2) takes this layout, not glibc's).
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

const CHILD_STACK: usize = 64 * 1024;

/// Starts a program the way posix_spawn does (clone with CLONE_VM | CLONE_VFORK: the cost does
/// not grow with the worker's memory, and the worker waits only until the exec), plus what
/// posix_spawn cannot do: the child dies with the worker (PR_SET_PDEATHSIG), can gain no
/// privileges through exec (PR_SET_NO_NEW_PRIVS: a setuid program runs as the worker's user),
/// gets its resource limits, and the pidfd comes from the same call (CLONE_PIDFD, no race).
///
/// The child gets stdin from /dev/null, the given stdout and stderr, no other descriptor; an empty
/// signal mask and default dispositions for every signal; its own process group. An exec failure
/// is returned as the error.
pub fn spawn(cmd: &Command<'_>) -> Result<Spawned, SpawnError> {
    let mut argv: Vec<*const c_char> = cmd.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(ptr::null());
    let mut envp: Vec<*const c_char> = cmd.env.iter().map(|e| e.as_ptr()).collect();
    envp.push(ptr::null());
    let mut args = ChildArgs {
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        dir: cmd.dir.map_or(ptr::null(), CStr::as_ptr),
        stdin: cmd.stdin.unwrap_or(-1),
        stdout: cmd.stdout,
        stderr: cmd.stderr,
        rlimits: cmd.rlimits.as_ptr(),
        rlimits_len: cmd.rlimits.len(),
        landlock: cmd.confine.landlock.unwrap_or(-1),
        filter: cmd.confine.filter.map_or(ptr::null(), <[_]>::as_ptr),
        filter_len: cmd
            .confine
            .filter
            .map_or(0, |f| u16::try_from(f.len()).unwrap_or(0)),
        cgroup_procs: cmd.confine.cgroup_procs.as_ptr(),
        cgroup_len: cmd.confine.cgroup_procs.len(),
        new_pid_ns: cmd.confine.namespaces & libc::CLONE_NEWPID != 0,
        parent: rustix::process::getpid().as_raw_pid(),
        err: 0,
        step: SpawnStep::Clone,
    };
    let mut stack = vec![0u8; CHILD_STACK];
    // The stack grows down from its (16-byte aligned) top.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;

    // No signal handler of the worker may run in the child while it shares the worker's memory:
    // block everything across clone; the child resets dispositions, then unblocks before exec.
    // (libc: rustix has no clone that runs a function on a new stack, and no pthread_sigmask.)
    let mut all = MaybeUninit::<libc::sigset_t>::uninit();
    let mut old = MaybeUninit::<libc::sigset_t>::uninit();
    let mut pidfd: c_int = -1;
    // SAFETY: the sets are initialised by sigfillset/pthread_sigmask; child_main only touches
    // `args` and makes async-signal-safe calls on its own stack; with CLONE_VFORK this thread is
    // suspended until the child has exec'd or exited, so args, argv, envp and stack outlive it.
    let (pid, clone_err) = unsafe {
        libc::sigfillset(all.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), old.as_mut_ptr());
        let pid = libc::clone(
            child_main,
            top as *mut c_void,
            libc::CLONE_VM
                | libc::CLONE_VFORK
                | libc::CLONE_PIDFD
                | cmd.confine.namespaces
                | libc::SIGCHLD,
            ptr::from_mut(&mut args).cast(),
            &mut pidfd as *mut c_int,
        );
        let err = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, old.as_ptr(), ptr::null_mut());
        (pid, err)
    };
    drop(stack);
    if pid == -1 {
        return Err(SpawnError {
            step: SpawnStep::Clone,
            err: clone_err,
        });
    }
    // SAFETY: CLONE_PIDFD stored a new descriptor that nobody else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // SAFETY: the child wrote err (if at all) before it exited; it no longer runs.
    let (err, step) = unsafe {
        (
            ptr::read_volatile(&args.err),
            ptr::read_volatile(&args.step),
        )
    };
    if err != 0 {
        // The child reported a failure and exited: collect it.
        reap_blocking(pidfd.as_fd());
        return Err(SpawnError {
            step,
            err: io::Error::from_raw_os_error(err),
        });
    }
    Ok(Spawned { pid, pidfd })
}

/// The child, between clone and exec. It shares the worker's memory and runs on its own stack:
/// only async-signal-safe calls, no allocation, no locks.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: arg is the parent's ChildArgs, alive while the parent is suspended (CLONE_VFORK).
    let a = unsafe { &mut *arg.cast::<ChildArgs>() };
    // SAFETY: raw syscalls and async-signal-safe libc calls on valid arguments.
    unsafe {
        // Default disposition for every signal (raw: glibc's wrapper refuses its internal ones).
        let dfl = KernelSigaction {
            handler: 0,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    &dfl,
                    ptr::null_mut::<c_void>(),
                    8,
                );
            }
        }
        // Die with the worker; if it is already gone, do not start.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
            return child_fail(a, SpawnStep::Pdeathsig);
        }
        // (In a pid namespace of its own the parent is outside: getppid() is 0.)
        if !a.new_pid_ns && libc::getppid() != a.parent {
            *libc::__errno_location() = libc::ESRCH;
            return child_fail(a, SpawnStep::Pdeathsig);
        }
        // No privileges gained through exec: setuid and file capabilities are ignored.
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1 {
            return child_fail(a, SpawnStep::NoNewPrivs);
        }
        if libc::setpgid(0, 0) == -1 {
            return child_fail(a, SpawnStep::Setpgid);
        }
        // Descriptors first: a low `nofile` limit must not stop opening /dev/null.
        let input = if a.stdin >= 0 {
            a.stdin
        } else {
            libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY)
        };
        if input == -1 {
            return child_fail(a, SpawnStep::DevNull);
        }
        if (input != 0 && libc::dup2(input, 0) == -1)
            || libc::dup2(a.stdout, 1) == -1
            || libc::dup2(a.stderr, 2) == -1
        {
            return child_fail(a, SpawnStep::Dup2);
        }
        // Join the program's cgroups, then enforce the Landlock ruleset: both use descriptors
        // that close_from_3 closes.
        for i in 0..a.cgroup_len {
            let fd = *a.cgroup_procs.add(i);
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return child_fail(a, SpawnStep::Cgroup);
            }
        }
        if a.landlock >= 0
            && libc::syscall(libc::SYS_landlock_restrict_self, a.landlock, 0u32) == -1
        {
            return child_fail(a, SpawnStep::Landlock);
        }
        if close_from_3() == -1 {
            return child_fail(a, SpawnStep::CloseRange);
        }
        if !a.dir.is_null() && libc::chdir(a.dir) == -1 {
            return child_fail(a, SpawnStep::Chdir);
        }
        for i in 0..a.rlimits_len {
            let (resource, wanted) = &*a.rlimits.add(i);
            // Never above the worker's own hard limit (only a privileged process may raise it).
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(*resource as _, &mut limit) == -1 {
                return child_fail(a, SpawnStep::Getrlimit);
            }
            limit.rlim_max = limit.rlim_max.min(wanted.rlim_max);
            limit.rlim_cur = wanted.rlim_cur.min(limit.rlim_max);
            if libc::setrlimit(*resource as _, &limit) == -1 {
                return child_fail(a, SpawnStep::Setrlimit);
            }
        }
        // Last, so nothing above needs to be allowed by it (NO_NEW_PRIVS is set above).
        if !a.filter.is_null() {
            let prog = libc::sock_fprog {
                len: a.filter_len,
                filter: a.filter.cast_mut().cast(),
            };
            if libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0u32,
                &prog as *const libc::sock_fprog,
            ) == -1
            {
                return child_fail(a, SpawnStep::Seccomp);
            }
        }
        let empty: u64 = 0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty,
            ptr::null_mut::<c_void>(),
            8,
        );
        libc::execve(*a.argv, a.argv, a.envp);
        child_fail(a, SpawnStep::Execve)
    }
}

/// In the child: closes every descriptor from 3 up; -1 and errno if close_range fails otherwise
/// than by not existing.
///
/// close_range(2) is Linux 5.9. Without it (ENOSYS; EPERM from a seccomp profile older than the
/// call) the descriptors are listed from /proc/self/fd and closed, as glibc's closefrom does; if
/// /proc cannot be read, every number from 3 to the `nofile` limit is closed. Raw system calls and
/// a buffer on the stack only.
///
/// # Safety
/// Called in the child after its dup2s, when no descriptor above 2 is needed any more.
unsafe fn close_from_3() -> c_int {
    // SAFETY: the caller's contract; errno is this thread's.
    unsafe {
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) == 0 {
            return 0;
        }
        let err = *libc::__errno_location();
        if err != libc::ENOSYS && err != libc::EPERM {
            return -1;
        }
        if !close_listed() {
            close_to_limit();
        }
    }
    0
}

/// In the child: closes the descriptors from 3 up that /proc/self/fd lists. False if it cannot be
/// read (no /proc); then some descriptors may be left.
///
/// # Safety
/// As [`close_from_3`].
unsafe fn close_listed() -> bool {
    // SAFETY: the caller's contract; the buffer is ours and getdents64 writes within its length.
    unsafe {
        // 3 is to be closed anyway: free it first, so the directory opens even in a worker that
        // is at its nofile limit.
        libc::close(3);
        let dir = libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if dir == -1 {
            return false;
        }
        let mut buf = [0u8; 1024];
        loop {
            let n = libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len());
            if n <= 0 {
                libc::close(dir);
                return n == 0;
            }
            // struct linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name.
            // `get` only: nothing in the child may panic.
            let (mut at, end, mut closed) = (0usize, n as usize, false);
            while let Some(&[lo, hi]) = buf.get(at + 16..at + 18) {
                let reclen = usize::from(u16::from_ne_bytes([lo, hi]));
                let Some(name) = buf.get(at + 19..(at + reclen).min(end)) else {
                    break;
                };
                let mut fd: c_int = 0;
                let mut digits = 0;
                for &b in name.iter().take_while(|b| b.is_ascii_digit()) {
                    fd = fd.saturating_mul(10).saturating_add(c_int::from(b - b'0'));
                    digits += 1;
                }
                if digits > 0 && fd > 2 && fd != dir {
                    libc::close(fd);
                    closed = true;
                }
                at += reclen.max(1);
                if at >= end {
                    break;
                }
            }
            // Closing changes the directory: read it again from the start until nothing is left.
            if closed && libc::lseek(dir, 0, libc::SEEK_SET) == -1 {
                libc::close(dir);
                return false;
            }
        }
    }
}

/// In the child, without /proc: closes every descriptor number from 3 below the `nofile` soft
/// limit (no descriptor can be opened above it).
///
/// # Safety
/// As [`close_from_3`].
unsafe fn close_to_limit() {
    // SAFETY: the caller's contract; prlimit64 writes into our struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        let rc = libc::syscall(
            libc::SYS_prlimit64,
            0,
            libc::RLIMIT_NOFILE,
            ptr::null::<libc::rlimit>(),
            &mut limit as *mut libc::rlimit,
        );
        // Linux's default ceiling (fs.nr_open) if the limit cannot be read.
        let max = if rc == -1 {
            1 << 20
        } else {
            c_int::try_from(limit.rlim_cur).unwrap_or(c_int::MAX)
        };
        for fd in 3..max {
            libc::close(fd);
        }
    }
}

/// Reports the failed step and errno to the parent and exits the child.
fn child_fail(a: &mut ChildArgs, step: SpawnStep) -> c_int {
    // SAFETY: errno is readable; _exit ends the child without running the worker's atexit code.
    unsafe {
        ptr::write_volatile(&mut a.step, step);
        ptr::write_volatile(&mut a.err, (*libc::__errno_location()).max(1));
        libc::_exit(127)
    }
}

/// Reaps the child behind `pidfd` if it has exited; `Ok(None)` while it runs.
pub fn try_reap(pidfd: BorrowedFd<'_>) -> io::Result<Option<ExitStatus>> {
    wait(pidfd, WaitIdOptions::EXITED | WaitIdOptions::NOHANG)
}

/// The exit status of the child behind `pidfd` if it has exited, leaving it a zombie (so its
/// pid, and its process group id, cannot be reused until it is reaped).
pub fn peek_exit(pidfd: BorrowedFd<'_>) -> io::Result<Option<ExitStatus>> {
    wait(
        pidfd,
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
    )
}

fn wait(pidfd: BorrowedFd<'_>, options: WaitIdOptions) -> io::Result<Option<ExitStatus>> {
    Ok(rustix::process::waitid(WaitId::PidFd(pidfd), options)?.map(exit_status))
}

fn exit_status(s: WaitIdStatus) -> ExitStatus {
    match s.exit_status() {
        Some(code) => ExitStatus::Code(code),
        // Only WEXITED is waited for: anything else ended by a signal (killed or dumped).
        None => ExitStatus::Signal(s.terminating_signal().unwrap_or(0)),
    }
}

/// Sends `sig` to the child (through its pidfd, race-free) and to its process group.
pub fn signal_child(pid: libc::pid_t, pidfd: BorrowedFd<'_>, sig: Signal) {
    let _ = rustix::process::pidfd_send_signal(pidfd, sig);
    signal_group(pid, sig);
}

/// Sends `sig` to a process group (the child's: it leads its own). While the leader is not
/// reaped, or any member lives, the group id cannot be reused.
///
/// Returns whether the signal reached any process (false: ESRCH, nobody is in the group). A
/// leader that exited and is not reaped is still a member: while it is, the answer is true.
pub fn signal_group(pgid: libc::pid_t, sig: Signal) -> bool {
    let Some(pgid) = Pid::from_raw(pgid) else {
        return false;
    };
    rustix::process::kill_process_group(pgid, sig).is_ok()
}

/// For a child that has exited and is not reaped: SIGKILL to what is left of its process group,
/// then reaps the child. Returns whether anyone besides the child was still in the group.
///
/// The signal goes while the child is a zombie, so the group id cannot have been reused. The
/// zombie counts as a member (kill(2) succeeds on it), so the answer is asked afterwards, with
/// signal 0 (nothing sent) once the child is reaped: members just killed are still there then
/// (they are gone only once their new parent reaped them), an empty group answers ESRCH.
pub fn kill_group_and_reap(pid: libc::pid_t, pidfd: BorrowedFd<'_>) -> bool {
    signal_group(pid, Signal::KILL);
    let _ = try_reap(pidfd);
    Pid::from_raw(pid).is_some_and(|p| rustix::process::test_kill_process_group(p).is_ok())
}

/// Blocks until the child behind `pidfd` is reaped (used only after SIGKILL, at worker exit).
pub fn reap_blocking(pidfd: BorrowedFd<'_>) {
    while let Err(Errno::INTR) =
        rustix::process::waitid(WaitId::PidFd(pidfd), WaitIdOptions::EXITED)
    {}
}

/// Kills a child and blocks until it is reaped, by pid: for a child whose pidfd is gone. The
/// pid is not reused meanwhile (it is our unreaped child).
pub fn kill_and_reap_pid(pid: libc::pid_t) {
    let Some(pid) = Pid::from_raw(pid) else {
        return;
    };
    let _ = rustix::process::kill_process(pid, Signal::KILL);
    while let Err(Errno::INTR) = rustix::process::waitpid(Some(pid), WaitOptions::empty()) {}
}

/// Sets SIGCHLD to its default disposition, so nginx's handler no longer reaps (and steals the
/// status of) the module's children. Children are reaped through their pidfds instead.
///
/// libc: rustix has sigaction only for runtimes that replace libc (`runtime::kernel_sigaction`).
pub fn default_sigchld() -> io::Result<()> {
    // SAFETY: a zeroed sigaction with SIG_DFL is a valid disposition.
    let mut sa: libc::sigaction = unsafe { core::mem::zeroed() };
    sa.sa_sigaction = libc::SIG_DFL;
    // SAFETY: `sa` is a valid disposition; the old one is not asked for.
    match unsafe { libc::sigaction(libc::SIGCHLD, &sa, ptr::null_mut()) } {
        -1 => Err(io::Error::last_os_error()),
        _ => Ok(()),
    }
}

/// Whether `path` names an executable regular file.
pub fn check_executable(path: &CStr) -> io::Result<()> {
    let st = rustix::fs::stat(path)?;
    if !FileType::from_raw_mode(st.st_mode).is_file() {
        return Err(Errno::ACCESS.into());
    }
    Ok(rustix::fs::access(path, Access::EXEC_OK)?)
}

/// The errno of an `io::Error`, for nginx's log functions.
pub fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Makes the next close(2) of a socket send a reset instead of a clean end of stream (SO_LINGER 0).
pub fn linger_reset(sock: RawFd) {
    // SAFETY: the caller's socket stays open during the call (it belongs to the connection).
    let sock = unsafe { borrow(sock) };
    let _ = rustix::net::sockopt::set_socket_linger(sock, Some(Duration::ZERO));
}

/// The oldest Linux the module runs on: waitid(P_PIDFD) came in 5.4, after CLONE_PIDFD (5.2),
/// pidfd_send_signal (5.1) and pollable pidfds (5.3). close_range (5.9) is used when there.
pub const MIN_KERNEL: &str = "5.4";

/// Why the kernel cannot run the module's programs.
pub enum KernelError {
    /// The probe itself could not run: pipe2() failed.
    Probe(io::Error),
    /// waitid(P_PIDFD) is not there: a kernel older than [`MIN_KERNEL`] (EINVAL), or a seccomp
    /// profile that forbids it.
    TooOld(io::Error),
}

/// Checks that the kernel has what the module needs, by asking for it rather than by reading
/// the version (a vendor kernel may have it backported; a seccomp profile may take it away).
///
/// waitid(P_PIDFD) on a descriptor that is not a pidfd: a kernel that knows P_PIDFD answers
/// EBADF; an older one EINVAL, whatever the descriptor.
pub fn probe_kernel() -> Result<(), KernelError> {
    let (probe, _w) =
        rustix::pipe::pipe_with(PipeFlags::CLOEXEC).map_err(|e| KernelError::Probe(e.into()))?;
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
    match rustix::process::waitid(WaitId::PidFd(probe.as_fd()), options) {
        Ok(_) | Err(Errno::BADF) => Ok(()),
        Err(e) => Err(KernelError::TooOld(e.into())),
    }
}

/// The kernel's release, as uname(2) gives it ("5.4.0-42-generic").
pub fn kernel_release() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}

/// Moves up to `len` bytes from a non-blocking pipe into a file at `offset`, without copying
/// them through userspace. `Ok(0)` is end of file on the pipe.
pub fn splice_pipe_to_file(
    pipe: BorrowedFd<'_>,
    file: BorrowedFd<'_>,
    offset: u64,
    len: usize,
) -> io::Result<usize> {
    let mut off = offset;
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    Ok(rustix::pipe::splice(
        pipe,
        None,
        file,
        Some(&mut off),
        len,
        flags,
    )?)
}

/// pwrite(2), the whole buffer.
pub fn write_all_at(file: BorrowedFd<'_>, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::pwrite(file, buf, offset) {
            Ok(0) => return Err(io::Error::from(Errno::NOSPC)),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Creates a new file exclusively (read-write, close-on-exec) with `mode`.
pub fn create_exclusive(name: &CStr, mode: u32) -> io::Result<OwnedFd> {
    let flags = OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC;
    Ok(rustix::fs::open(
        name,
        flags,
        rustix::fs::Mode::from_raw_mode(mode),
    )?)
}

/// Opens a file to read it (close-on-exec).
pub fn open_read(name: &CStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        name,
        OFlags::RDONLY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?)
}

/// The size of an open file.
pub fn file_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(rustix::fs::fstat(fd)?.st_size as u64)
}

/// Marks an open file changed (its times), for the inotify watchers of kernels whose splice(2)
/// into a file reports nothing.
pub fn touch(fd: BorrowedFd<'_>) {
    let now = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
    };
    let _ = rustix::fs::futimens(fd, &now);
}

/// Removes a file; a missing one is not an error.
pub fn unlink_quietly(name: &[u8]) -> bool {
    match CString::new(name) {
        Ok(c) => rustix::fs::unlink(c.as_c_str()).is_ok(),
        Err(_) => false,
    }
}

/// Whether a process with this pid exists (EPERM: it does, under another user).
pub fn process_exists(pid: i32) -> bool {
    let Some(pid) = Pid::from_raw(pid) else {
        return false;
    };
    !matches!(rustix::process::test_kill_process(pid), Err(Errno::SRCH))
}

/// This process's pid.
pub fn getpid() -> i32 {
    rustix::process::getpid().as_raw_nonzero().get()
}

/// Whether splice(2) into a file makes inotify report IN_MODIFY (Linux 6.6 and later).
///
/// `TRANSFORM_TEST_KERNEL` (given to workers with nginx's `env`) stands for the release here, so
/// that the tests can take the older kernels' path.
pub fn splice_notifies() -> bool {
    static NOTIFIES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *NOTIFIES.get_or_init(|| {
        let release = std::env::var("TRANSFORM_TEST_KERNEL").unwrap_or_else(|_| kernel_release());
        release_at_least(&release, (6, 6))
    })
}

/// Whether a release string ("6.1.0-18-amd64") is `at_least` (major, minor).
fn release_at_least(release: &str, at_least: (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= at_least
}

/// A non-blocking inotify instance.
pub fn inotify() -> io::Result<OwnedFd> {
    use rustix::fs::inotify::{init, CreateFlags};
    Ok(init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC)?)
}

/// Watches the file open at `fd` (through /proc/self/fd, so a rename or unlink meanwhile does
/// not matter) for writes, attribute changes (an unlink), renames and closes.
pub fn inotify_watch(inotify: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<i32> {
    use rustix::fs::inotify::{add_watch, WatchFlags};
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let flags = WatchFlags::MODIFY
        | WatchFlags::ATTRIB
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::MOVE_SELF
        | WatchFlags::DELETE_SELF;
    Ok(add_watch(inotify, path.as_str(), flags)?)
}

pub fn inotify_unwatch(inotify: BorrowedFd<'_>, wd: i32) {
    let _ = rustix::fs::inotify::remove_watch(inotify, wd);
}

/// Reads the pending inotify events; calls `f` with each watch descriptor (-1 for a queue
/// overflow: every watch may have missed events). Returns when none is left.
pub fn inotify_drain(inotify: BorrowedFd<'_>, mut f: impl FnMut(i32)) {
    use rustix::fs::inotify::{ReadFlags, Reader};
    let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
    let mut reader = Reader::new(inotify, &mut buf);
    // next() reads again when its buffer is empty; EAGAIN ends the loop.
    while let Ok(ev) = reader.next() {
        if ev.events().contains(ReadFlags::QUEUE_OVERFLOW) {
            f(-1);
        } else {
            f(ev.wd());
        }
    }
}

/// Removes the temporary files `transform-<pid>-*` under `dir` (and its level directories) whose
/// worker is gone. Returns how many.
pub fn sweep_temp_files(dir: &std::path::Path, depth: usize) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() && depth > 0 {
            removed += sweep_temp_files(&entry.path(), depth - 1);
            continue;
        }
        let pid = name
            .strip_prefix("transform-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(pid) = pid {
            if kind.is_file() && !process_exists(pid) && std::fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
    }
    removed
}

/// The Landlock ABI version of the running kernel (`landlock_create_ruleset` with
/// LANDLOCK_CREATE_RULESET_VERSION); an error (ENOSYS, EOPNOTSUPP) when it has none.
pub fn landlock_abi() -> io::Result<i32> {
    const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
    // SAFETY: with a null attribute and size 0 this call only returns the version.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            ptr::null::<c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if v < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i32::try_from(v).unwrap_or(i32::MAX))
}
