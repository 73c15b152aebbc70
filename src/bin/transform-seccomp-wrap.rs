//! Test tool: runs a program with some system calls failing as an older kernel fails them.
//!
//! `transform-seccomp-wrap RULE... -- PROGRAM [ARG...]` installs a seccomp filter (after
//! PR_SET_NO_NEW_PRIVS, which the filter requires of an unprivileged process and which the
//! program and all its descendants inherit), then executes PROGRAM. A rule is
//! `SYSCALL[:ARG0]=ERRNO`: the call (by name, see [`SYSCALLS`]) fails with ERRNO (a name of
//! [`ERRNOS`] or a number), only when its first argument equals ARG0 if one is given. Every other
//! call is allowed.
//!
//! - `close_range=ENOSYS`: a kernel before 5.9.
//! - `waitid:3=EINVAL` (3 is P_PIDFD): a kernel before 5.4.
//! - `landlock_create_ruleset=ENOSYS`: a kernel without Landlock.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

/// The system calls a rule may name.
const SYSCALLS: &[(&str, libc::c_long)] = &[
    ("close_range", libc::SYS_close_range),
    ("waitid", libc::SYS_waitid),
    ("pidfd_open", libc::SYS_pidfd_open),
    ("pidfd_send_signal", libc::SYS_pidfd_send_signal),
    ("clone3", libc::SYS_clone3),
    ("getdents64", libc::SYS_getdents64),
    ("landlock_create_ruleset", libc::SYS_landlock_create_ruleset),
];

/// The errno names a rule may use.
const ERRNOS: &[(&str, i32)] = &[
    ("ENOSYS", libc::ENOSYS),
    ("EINVAL", libc::EINVAL),
    ("EPERM", libc::EPERM),
    ("EBADF", libc::EBADF),
];

/// The architecture the syscall numbers above belong to (linux/audit.h).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// Offsets in `struct seccomp_data`: nr, arch, then instruction_pointer, then `args[6]` (the low
/// 32 bits of `args[0]` come first on a little-endian machine).
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARG0_LOW: u32 = 16;

struct Rule {
    nr: libc::c_long,
    arg0: Option<u32>,
    errno: i32,
}

fn parse_rule(s: &str) -> Result<Rule, String> {
    let (call, errno) = s
        .split_once('=')
        .ok_or_else(|| format!("rule \"{s}\" is not SYSCALL[:ARG0]=ERRNO"))?;
    let (name, arg0) = match call.split_once(':') {
        Some((name, arg)) => {
            let arg = arg
                .parse::<u32>()
                .map_err(|_| format!("invalid argument value \"{arg}\""))?;
            (name, Some(arg))
        }
        None => (call, None),
    };
    let nr = SYSCALLS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, nr)| nr)
        .ok_or_else(|| format!("unknown system call \"{name}\""))?;
    let errno = ERRNOS
        .iter()
        .find(|(n, _)| *n == errno)
        .map(|&(_, e)| e)
        .or_else(|| errno.parse().ok())
        .ok_or_else(|| format!("unknown errno \"{errno}\""))?;
    Ok(Rule { nr, arg0, errno })
}

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

/// The filter: a foreign architecture is allowed through untouched; for ours, each rule is a
/// block that returns its errno on a match and falls through to the next block otherwise.
fn filter(rules: &[Rule]) -> Vec<libc::sock_filter> {
    let load = |off| stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, off);
    let ret = |k| stmt(libc::BPF_RET | libc::BPF_K, k);
    let mut blocks = Vec::new();
    for r in rules {
        let fail = ret(libc::SECCOMP_RET_ERRNO | (r.errno as u32 & 0xffff));
        match r.arg0 {
            None => blocks.extend([jeq(r.nr as u32, 0, 1), fail]),
            Some(arg) => blocks.extend([
                jeq(r.nr as u32, 0, 4),
                load(DATA_ARG0_LOW),
                jeq(arg, 0, 1),
                fail,
                load(DATA_NR),
            ]),
        }
    }
    let skip = u8::try_from(blocks.len() + 1).expect("few rules");
    let mut prog = vec![load(DATA_ARCH), jeq(AUDIT_ARCH, 0, skip), load(DATA_NR)];
    prog.extend(blocks);
    prog.push(ret(libc::SECCOMP_RET_ALLOW));
    prog
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(sep) = args.iter().position(|a| a == "--") else {
        eprintln!("usage: transform-seccomp-wrap SYSCALL[:ARG0]=ERRNO... -- PROGRAM [ARG...]");
        return ExitCode::from(2);
    };
    let rules = match args[..sep]
        .iter()
        .map(|s| parse_rule(s))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("transform-seccomp-wrap: {e}");
            return ExitCode::from(2);
        }
    };
    let Some((program, rest)) = args[sep + 1..].split_first() else {
        eprintln!("transform-seccomp-wrap: no program");
        return ExitCode::from(2);
    };
    let prog = filter(&rules);
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).expect("short filter"),
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: prctl with integer arguments; then with a pointer to a filter that lives until the
    // call returns (the kernel copies it).
    let rc = unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1 {
            -1
        } else {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const libc::sock_fprog,
            )
        }
    };
    if rc == -1 {
        eprintln!(
            "transform-seccomp-wrap: prctl() failed: {}",
            std::io::Error::last_os_error()
        );
        return ExitCode::from(1);
    }
    let err = Command::new(program).args(rest).exec();
    eprintln!("transform-seccomp-wrap: cannot run {program}: {err}");
    ExitCode::from(127)
}
