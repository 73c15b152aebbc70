//! OS layer: every libc call the module makes for processes, pipes and splice lives here.
//!
//! Functions take and return owned or borrowed descriptors and `io::Result`s; nothing here knows
//! about nginx.

use core::ffi::{c_char, c_int, CStr};
use core::mem::MaybeUninit;
use core::ptr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Calls a libc function that reports failure as `-1` and errno, and returns `io::Result`.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: every caller passes descriptors it holds and pointers to live, sized buffers.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// A pipe: our end non-blocking and close-on-exec, the child's end blocking (programs expect it).
pub struct Pipe {
    /// The end the worker reads from.
    pub read: OwnedFd,
    /// The end the child writes to (dup2'ed onto its stdout; close-on-exec in the worker).
    pub write: OwnedFd,
}

/// Creates the stdout pipe of a child.
pub fn stdout_pipe() -> io::Result<Pipe> {
    let mut fds = [-1 as c_int; 2];
    syscall!(pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK))?;
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let flags = syscall!(fcntl(write.as_raw_fd(), libc::F_GETFL))?;
    syscall!(fcntl(
        write.as_raw_fd(),
        libc::F_SETFL,
        flags & !libc::O_NONBLOCK
    ))?;
    Ok(Pipe { read, write })
}

/// Asks the kernel to resize a pipe. Returns the size it has afterwards.
pub fn set_pipe_size(fd: BorrowedFd<'_>, size: usize) -> io::Result<usize> {
    let size = c_int::try_from(size).unwrap_or(c_int::MAX);
    syscall!(fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size)).map(|n| n as usize)
}

/// Bytes waiting in a pipe.
pub fn bytes_in_pipe(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: c_int = 0;
    syscall!(ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n as *mut c_int))?;
    Ok(n.max(0) as usize)
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
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    syscall!(poll(&mut pfd, 1, 0))?;
    if pfd.revents & libc::POLLHUP == 0 {
        return Ok(Some(0));
    }
    match bytes_in_pipe(fd)? {
        0 => Ok(None),
        n => Ok(Some(n)),
    }
}

/// read(2) into a buffer.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    syscall!(read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())).map(|n| n as usize)
}

/// send(2) on a non-blocking socket; `more` says more data follows at once (MSG_MORE).
pub fn send(fd: RawFd, buf: &[u8], more: bool) -> io::Result<usize> {
    let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    syscall!(send(fd, buf.as_ptr().cast(), buf.len(), flags)).map(|n| n as usize)
}

/// Moves up to `len` bytes from a pipe into a non-blocking socket without copying them through
/// userspace; `more` says more data follows at once. `Ok(0)` is end of file on the pipe.
pub fn splice_to_socket(
    pipe: BorrowedFd<'_>,
    sock: RawFd,
    len: usize,
    more: bool,
) -> io::Result<usize> {
    let flags =
        libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE | if more { libc::SPLICE_F_MORE } else { 0 };
    syscall!(splice(
        pipe.as_raw_fd(),
        ptr::null_mut(),
        sock,
        ptr::null_mut(),
        len,
        flags
    ))
    .map(|n| n as usize)
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// exit() with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl ExitStatus {
    /// Exit code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl core::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            ExitStatus::Code(c) => write!(f, "exited with code {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// A started child: its pid and a pidfd that becomes readable when it exits.
pub struct Spawned {
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
}

/// Starts `argv[0]` with posix_spawn (vfork-style: the cost does not grow with the worker's memory).
///
/// The child gets stdin from /dev/null, stdout on `stdout`, keeps fd 2 (nginx's error log), and no
/// other descriptor; an empty signal mask, default dispositions for every signal, its own process
/// group. An exec failure is returned as the error (glibc reports it from the child).
pub fn spawn(argv: &[&CStr], stdout: BorrowedFd<'_>) -> io::Result<Spawned> {
    let mut args: Vec<*mut c_char> = argv.iter().map(|a| a.as_ptr().cast_mut()).collect();
    args.push(ptr::null_mut());

    let mut actions = FileActions::new()?;
    actions.open(0, c"/dev/null", libc::O_RDONLY)?;
    actions.dup2(stdout.as_raw_fd(), 1)?;
    actions.close_from(3)?;
    let attr = SpawnAttr::new()?;

    extern "C" {
        static environ: *const *mut c_char;
    }
    let mut pid: libc::pid_t = 0;
    // SAFETY: argv and args are NUL-terminated strings in a NULL-terminated array that outlive
    // the call; actions and attr are initialised; environ is the process environment.
    let rc = unsafe {
        libc::posix_spawn(
            &mut pid,
            args[0],
            &actions.0,
            &attr.0,
            args.as_ptr(),
            environ,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }

    match pidfd_open(pid) {
        Ok(pidfd) => Ok(Spawned { pid, pidfd }),
        Err(e) => {
            // No pidfd (very old kernel): the child cannot be watched; do not leave it behind.
            let _ = syscall!(kill(pid, libc::SIGKILL));
            let _ = syscall!(waitpid(pid, ptr::null_mut(), 0));
            Err(e)
        }
    }
}

fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new descriptor that nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // pidfd_open sets O_CLOEXEC itself.
    Ok(fd)
}

/// Reaps the child behind `pidfd` if it has exited; `Ok(None)` while it runs.
pub fn try_reap(pidfd: BorrowedFd<'_>) -> io::Result<Option<ExitStatus>> {
    let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
    syscall!(waitid(
        libc::P_PIDFD,
        pidfd.as_raw_fd() as libc::id_t,
        info.as_mut_ptr(),
        libc::WEXITED | libc::WNOHANG
    ))?;
    // SAFETY: waitid filled (or left zeroed) the siginfo.
    let info = unsafe { info.assume_init() };
    // SAFETY: for a waitid result the pid and status fields are the ones set.
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match info.si_code {
        libc::CLD_EXITED => ExitStatus::Code(status),
        _ => ExitStatus::Signal(status),
    }))
}

/// Sends SIGKILL to the child (through its pidfd, race-free) and to its process group.
pub fn kill_child(pid: libc::pid_t, pidfd: BorrowedFd<'_>) {
    // SAFETY: pidfd_send_signal takes a pidfd, a signal, a NULL siginfo and flags.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
    // The group is ours as long as the child has not been reaped (its pid is not reused).
    let _ = syscall!(kill(-pid, libc::SIGKILL));
}

/// Blocks until the child behind `pidfd` is reaped (used only after SIGKILL, at worker exit).
pub fn reap_blocking(pidfd: BorrowedFd<'_>) {
    let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
    loop {
        match syscall!(waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            info.as_mut_ptr(),
            libc::WEXITED
        )) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            _ => return,
        }
    }
}

/// Sets SIGCHLD to its default disposition, so nginx's handler no longer reaps (and steals the
/// status of) the module's children. Children are reaped through their pidfds instead.
pub fn default_sigchld() -> io::Result<()> {
    // SAFETY: a zeroed sigaction with SIG_DFL is a valid disposition.
    let mut sa: libc::sigaction = unsafe { core::mem::zeroed() };
    sa.sa_sigaction = libc::SIG_DFL;
    syscall!(sigaction(libc::SIGCHLD, &sa, ptr::null_mut())).map(|_| ())
}

/// Whether `path` names an executable regular file.
pub fn check_executable(path: &CStr) -> io::Result<()> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    syscall!(stat(path.as_ptr(), st.as_mut_ptr()))?;
    // SAFETY: stat succeeded and filled the struct.
    let st = unsafe { st.assume_init() };
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::from_raw_os_error(libc::EACCES));
    }
    syscall!(access(path.as_ptr(), libc::X_OK)).map(|_| ())
}

struct FileActions(libc::posix_spawn_file_actions_t);

impl FileActions {
    fn new() -> io::Result<Self> {
        let mut fa = MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
        // SAFETY: init writes the whole struct.
        check(unsafe { libc::posix_spawn_file_actions_init(fa.as_mut_ptr()) })?;
        // SAFETY: initialised just above.
        Ok(FileActions(unsafe { fa.assume_init() }))
    }

    fn open(&mut self, fd: c_int, path: &'static CStr, flags: c_int) -> io::Result<()> {
        // SAFETY: self.0 is initialised; path is a static NUL-terminated string.
        check(unsafe {
            libc::posix_spawn_file_actions_addopen(&mut self.0, fd, path.as_ptr(), flags, 0)
        })
    }

    fn dup2(&mut self, from: c_int, to: c_int) -> io::Result<()> {
        // SAFETY: self.0 is initialised.
        check(unsafe { libc::posix_spawn_file_actions_adddup2(&mut self.0, from, to) })
    }

    fn close_from(&mut self, from: c_int) -> io::Result<()> {
        // SAFETY: self.0 is initialised.
        check(unsafe { libc::posix_spawn_file_actions_addclosefrom_np(&mut self.0, from) })
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: self.0 was initialised in new().
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

struct SpawnAttr(libc::posix_spawnattr_t);

impl SpawnAttr {
    fn new() -> io::Result<Self> {
        let mut at = MaybeUninit::<libc::posix_spawnattr_t>::uninit();
        // SAFETY: init writes the whole struct.
        check(unsafe { libc::posix_spawnattr_init(at.as_mut_ptr()) })?;
        // SAFETY: initialised just above.
        let mut attr = SpawnAttr(unsafe { at.assume_init() });
        let mut empty = MaybeUninit::<libc::sigset_t>::uninit();
        let mut all = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: the set functions initialise the sets; attr.0 is initialised.
        unsafe {
            libc::sigemptyset(empty.as_mut_ptr());
            libc::sigfillset(all.as_mut_ptr());
            check(libc::posix_spawnattr_setsigmask(
                &mut attr.0,
                empty.as_ptr(),
            ))?;
            check(libc::posix_spawnattr_setsigdefault(
                &mut attr.0,
                all.as_ptr(),
            ))?;
            check(libc::posix_spawnattr_setpgroup(&mut attr.0, 0))?;
            let flags = libc::POSIX_SPAWN_SETSIGMASK
                | libc::POSIX_SPAWN_SETSIGDEF
                | libc::POSIX_SPAWN_SETPGROUP;
            check(libc::posix_spawnattr_setflags(&mut attr.0, flags as _))?;
        }
        Ok(attr)
    }
}

impl Drop for SpawnAttr {
    fn drop(&mut self) {
        // SAFETY: self.0 was initialised in new().
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

fn check(rc: c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// The errno of an `io::Error`, for nginx's log functions.
pub fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Makes the next close(2) of a socket send a reset instead of a clean end of stream (SO_LINGER 0).
pub fn linger_reset(sock: RawFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = syscall!(setsockopt(
        sock,
        libc::SOL_SOCKET,
        libc::SO_LINGER,
        ptr::from_ref(&l).cast(),
        core::mem::size_of::<libc::linger>() as libc::socklen_t
    ));
}
