//! The sandbox of a program: what `transform_sandbox_paths` (Landlock),
//! `transform_sandbox_syscalls` (seccomp) and `transform_sandbox_namespaces` (clone flags) build.
//!
//! Everything is built once, while the configuration is read (in the master; workers inherit it
//! through fork): a Landlock ruleset descriptor per `transform_sandbox_paths` directive and one
//! seccomp program for the `default` profile. The child between clone and exec only applies them
//! with one system call each (`os::spawn`): nothing is allocated there.

use core::ffi::c_int;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use landlock::{
    Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope, ABI,
};
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// The Landlock ABI whose rights the rulesets ask for (best effort: the kernel's own ABI decides
/// what is enforced). 6 brings the scopes (signals, abstract UNIX sockets).
const ABI_ASKED: ABI = ABI::V6;

/// One `transform_sandbox_paths`: a Landlock ruleset, ready to be enforced by a child.
#[derive(Debug)]
pub struct Landlock {
    /// None on a kernel without Landlock (nothing is enforced; the configuration said so).
    fd: Option<OwnedFd>,
    /// The `rw=` paths, as written.
    writable: Vec<PathBuf>,
}

impl Landlock {
    /// The ruleset descriptor for `landlock_restrict_self`, if the kernel has Landlock.
    pub fn fd(&self) -> Option<RawFd> {
        self.fd.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// The paths the program may write beneath (`rw=`), as the directive gives them.
    pub fn writable(&self) -> &[PathBuf] {
        &self.writable
    }
}

/// The Landlock domain of `transform_sandbox_syscalls default` where no `transform_sandbox_paths`
/// applies: it restricts no file access (only making block and character devices, which needs a
/// privilege anyway) but, as every Landlock domain, keeps the program from ptrace-like access to
/// processes outside it (`/proc/<worker>/mem`, which a same-user program could otherwise write:
/// nginx makes its workers dumpable), and with ABI 6 scopes its signals and abstract UNIX sockets.
/// Built once per process.
pub fn scope_only() -> Result<&'static Landlock, String> {
    static SCOPE: OnceLock<Result<Landlock, String>> = OnceLock::new();
    SCOPE
        .get_or_init(|| {
            let created = Ruleset::default()
                .set_compatibility(CompatLevel::BestEffort)
                .handle_access(AccessFs::MakeBlock | AccessFs::MakeChar)
                .and_then(|r| r.scope(Scope::from_all(ABI_ASKED)))
                .and_then(|r| r.create())
                .map_err(|e| format!("Landlock: {e}"))?;
            Ok(Landlock {
                fd: Option::<OwnedFd>::from(created),
                writable: Vec::new(),
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A path of `transform_sandbox_paths` and whether the program may write beneath it.
pub struct Rule<'a> {
    pub path: &'a Path,
    pub write: bool,
}

/// Builds the ruleset of one `transform_sandbox_paths`: everything the kernel can restrict is
/// denied but reading, listing and executing beneath the read-only paths and everything beneath
/// the writable ones; signals and abstract UNIX sockets are scoped to the sandbox. The error is
/// the sentence for `nginx -t`.
pub fn landlock(rules: &[Rule<'_>]) -> Result<Landlock, String> {
    let fail = |e: &dyn core::fmt::Display| format!("Landlock: {e}");
    let all = AccessFs::from_all(ABI_ASKED);
    let read = AccessFs::ReadFile | AccessFs::ReadDir | AccessFs::Execute;
    let mut created = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .and_then(|r| r.scope(Scope::from_all(ABI_ASKED)))
        .and_then(|r| r.create())
        .map_err(|e| fail(&e))?;
    for rule in rules {
        let fd = PathFd::new(rule.path).map_err(|e| format!("\"{}\": {e}", rule.path.display()))?;
        let wanted = if rule.write { all } else { read };
        // A file takes only the rights that apply to files.
        let access = if rule.path.is_dir() {
            wanted
        } else {
            wanted & AccessFs::from_file(ABI_ASKED)
        };
        created = created
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|e| fail(&e))?;
    }
    Ok(Landlock {
        fd: Option::<OwnedFd>::from(created),
        writable: rules
            .iter()
            .filter(|r| r.write)
            .map(|r| r.path.to_path_buf())
            .collect(),
    })
}

/// What the running kernel's Landlock enforces, for the configuration's notice; Err: the line
/// saying it enforces nothing.
pub fn landlock_status() -> Result<String, io::Error> {
    let abi = crate::os::landlock_abi()?;
    let mut parts = vec!["reading, writing and executing files"];
    let mut missing = Vec::new();
    if abi >= 2 {
        parts.push("linking and renaming across directories");
    } else {
        missing.push("linking or renaming into another directory is always denied");
    }
    if abi >= 3 {
        parts.push("truncation");
    } else {
        missing.push("truncation is not restricted");
    }
    if abi >= 5 {
        parts.push("device ioctls");
    } else {
        missing.push("device ioctls are not restricted");
    }
    if abi >= 6 {
        parts.push("signals and abstract UNIX sockets scoped to the program");
    } else {
        missing.push("signals and abstract UNIX sockets are not scoped");
    }
    let mut line = format!(
        "Landlock ABI {abi} enforced by this kernel: {}",
        parts.join(", ")
    );
    if !missing.is_empty() {
        line.push_str("; ");
        line.push_str(&missing.join("; "));
    }
    Ok(line)
}

/// `transform_sandbox_syscalls default`, compiled for this machine (built once per process).
pub fn default_filter() -> Result<&'static [sock_filter], String> {
    static FILTER: OnceLock<Result<BpfProgram, String>> = OnceLock::new();
    FILTER
        .get_or_init(build_default_filter)
        .as_deref()
        .map_err(Clone::clone)
}

/// The system calls the `default` profile refuses (EPERM) whatever their arguments.
const DENIED: &[libc::c_long] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd,
    libc::SYS_kcmp,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_unshare,
    libc::SYS_setns,
];

/// clone() flags that make namespaces: refused by the `default` profile.
const CLONE_NEW: &[c_int] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
];

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

fn build_default_filter() -> Result<BpfProgram, String> {
    let fail = |e: &dyn core::fmt::Display| format!("seccomp: {e}");
    let mut rules = std::collections::BTreeMap::new();
    for &nr in DENIED {
        rules.insert(nr, Vec::new());
    }
    // socket(): only AF_UNIX.
    let not_unix = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Ne,
        libc::AF_UNIX as u64,
    )
    .map_err(|e| fail(&e))?;
    rules.insert(
        libc::SYS_socket,
        vec![SeccompRule::new(vec![not_unix]).map_err(|e| fail(&e))?],
    );
    // clone() with a namespace flag (its first argument on x86_64 and aarch64).
    let mut clone = Vec::new();
    for &flag in CLONE_NEW {
        let cond = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(flag as u64),
            flag as u64,
        )
        .map_err(|e| fail(&e))?;
        clone.push(SeccompRule::new(vec![cond]).map_err(|e| fail(&e))?);
    }
    rules.insert(libc::SYS_clone, clone);
    // Calls that act on another process by pid with no ptrace-like check (same user is enough),
    // which a Landlock domain does not restrict either: only on the caller itself (pid 0).
    let arg_ne = |arg: u8, v: u64| -> Result<SeccompRule, String> {
        let cond = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, v)
            .map_err(|e| fail(&e))?;
        SeccompRule::new(vec![cond]).map_err(|e| fail(&e))
    };
    for nr in [
        libc::SYS_prlimit64,
        libc::SYS_sched_setaffinity,
        libc::SYS_sched_setscheduler,
        libc::SYS_sched_setparam,
        libc::SYS_sched_setattr,
    ] {
        rules.insert(nr, vec![arg_ne(0, 0)?]);
    }
    // setpriority(which, who): PRIO_PROCESS (0) of itself (0) only; PRIO_USER 0 is the whole
    // user, the worker included.
    rules.insert(libc::SYS_setpriority, vec![arg_ne(0, 0)?, arg_ne(1, 0)?]);
    // ioprio_set(which, who): IOPRIO_WHO_PROCESS (1) of itself (0) only.
    rules.insert(libc::SYS_ioprio_set, vec![arg_ne(0, 1)?, arg_ne(1, 0)?]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        ARCH,
    )
    .map_err(|e| fail(&e))?;
    let body: BpfProgram = filter.try_into().map_err(|e| fail(&e))?;
    // Before seccompiler's program (which checks the architecture, then the number):
    // - x32 system calls (numbers with bit 30 set on x86_64) fail: the deny list above names the
    //   x86_64 numbers only;
    // - clone3 fails with ENOSYS: its flags are in memory a filter cannot read, and glibc falls
    //   back to clone (whose flags are checked above) on ENOSYS only.
    let errno = |e: c_int| libc::SECCOMP_RET_ERRNO | (e as u32 & libc::SECCOMP_RET_DATA);
    let mut prog = vec![
        stmt(BPF_LD | BPF_W | BPF_ABS, 0), // seccomp_data.nr
        jump(BPF_JMP | BPF_JGE | BPF_K, 0x4000_0000, 0, 1),
        stmt(BPF_RET | BPF_K, errno(libc::ENOSYS)),
        jump(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_clone3 as u32, 0, 1),
        stmt(BPF_RET | BPF_K, errno(libc::ENOSYS)),
    ];
    prog.extend(body);
    if prog.len() > usize::from(u16::MAX) {
        return Err(fail(&"filter too long"));
    }
    Ok(prog)
}

const BPF_LD: u16 = 0x00;
const BPF_W: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
const BPF_JMP: u16 = 0x05;
const BPF_JEQ: u16 = 0x10;
const BPF_JGE: u16 = 0x30;
const BPF_K: u16 = 0x00;
const BPF_RET: u16 = 0x06;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// `transform_sandbox_namespaces`: the names and their clone flags.
pub const NAMESPACES: &[(&str, c_int)] = &[
    ("user", libc::CLONE_NEWUSER),
    ("pid", libc::CLONE_NEWPID),
    ("ipc", libc::CLONE_NEWIPC),
    ("net", libc::CLONE_NEWNET),
    ("mount", libc::CLONE_NEWNS),
    ("uts", libc::CLONE_NEWUTS),
];

/// Where a directive is (file, line).
type At = Option<(String, usize)>;

std::thread_local! {
    /// The first `transform_sandbox_paths` and `transform_sandbox_syscalls default` of the
    /// configuration being read.
    static PATHS_AT: core::cell::RefCell<(At, At)> =
        const { core::cell::RefCell::new((None, None)) };
}

/// A `transform_sandbox_paths` was read at `file:line` (for the line after the configuration).
pub fn note_paths(file: &str, line: usize) {
    PATHS_AT.with_borrow_mut(|(at, _)| {
        at.get_or_insert_with(|| (file.to_owned(), line));
    });
}

/// A `transform_sandbox_syscalls default` was read at `file:line`.
pub fn note_syscalls(file: &str, line: usize) {
    PATHS_AT.with_borrow_mut(|(_, at)| {
        at.get_or_insert_with(|| (file.to_owned(), line));
    });
}

/// Before a configuration is read.
pub fn forget_paths() {
    PATHS_AT.with_borrow_mut(|at| *at = (None, None));
}

/// Logs what `transform_sandbox_paths` gets from this kernel: a notice, or a warning that it
/// enforces nothing (the programs then run without file restrictions); and, without Landlock,
/// that `transform_sandbox_syscalls default` cannot keep programs away from the worker.
pub fn log_report(log: *mut nginx_sys::ngx_log_t) {
    let (paths, syscalls) = PATHS_AT.with_borrow_mut(core::mem::take);
    if crate::nginx::signaller() {
        // (`nginx -s` reads the configuration only to find the master.)
        return;
    }
    if let (Some((file, line)), Ok(abi @ ..=5)) = (&syscalls, crate::os::landlock_abi()) {
        log_error!(
            nginx_sys::NGX_LOG_WARN,
            log,
            0,
            "\"transform_sandbox_syscalls default\" in {file}:{line} and every other cannot keep \
             the programs from signalling the worker: this kernel's Landlock ABI {abi} does not \
             scope signals and abstract UNIX sockets (ABI 6, Linux 6.12)"
        );
    }
    if let (Some((file, line)), Err(e)) = (&syscalls, crate::os::landlock_abi()) {
        log_error!(
            nginx_sys::NGX_LOG_WARN,
            log,
            crate::os::errno(&e),
            "\"transform_sandbox_syscalls default\" in {file}:{line} and every other cannot keep \
             the programs from the worker's memory and signals: this kernel has no Landlock; \
             landlock_create_ruleset() failed"
        );
    }
    let Some((file, line)) = paths else {
        return;
    };
    match landlock_status() {
        Ok(what) => {
            log_error!(
                nginx_sys::NGX_LOG_NOTICE,
                log,
                0,
                "transform_sandbox_paths: {what}"
            );
            // nginx -t shows only warnings and worse on the terminal: this line too.
            if crate::nginx::testing_config() {
                crate::nginx::log_stderr(&format!("[notice] transform_sandbox_paths: {what}"));
            }
        }
        Err(e) => log_error!(
            nginx_sys::NGX_LOG_WARN,
            log,
            crate::os::errno(&e),
            "\"transform_sandbox_paths\" in {file}:{line} and every other is NOT enforced: this \
             kernel has no Landlock, the programs can read and write every file the worker can; \
             landlock_create_ruleset() failed"
        ),
    }
}
