//! `transform_cgroup`: one cgroup per program with its limits (memory.max, pids.max, cpu.max).
//!
//! - While the configuration is read, each directive notes the controllers it needs. Where its
//!   programs run (a location's `transform_exec` or `transform_filter`, a pool) it needs a
//!   `transform_sandbox_paths` that keeps the cgroup file system read-only ([`confined`]): the
//!   program owns its cgroup's files (its worker made them) and could lift its own limits.
//! - After the http block (`postconfiguration`, in the master, root) one hierarchy is found for
//!   each controller (cgroup v2 preferred, v1 as `transform_cgroup_version` allows) and checked:
//!   what the start or reload will write there must be possible ([`configure`]), or `nginx -t`,
//!   the start and the reload fail with one line naming the directive and what is missing.
//!   Nothing is made or moved yet: a later step of reading the configuration may still fail,
//!   and the running configuration must then find the system as it was. `nginx -t` checks the
//!   running master's cgroup (the pid file's), else its own, and says which.
//! - Once the configuration is committed (`init_module`, after every step that may fail), the
//!   module's subtree is made under nginx's own cgroup with its modes (cgroup v2: the master
//!   moves into its leaf, the controllers are enabled, and the workers' leaf's `cgroup.procs`
//!   is opened for them to join), what the workers write is made writable by the worker user's
//!   group (root keeps it), and the places are kept for the workers ([`commit`]). A failure
//!   there cannot fail the reload (nginx exits when `init_module` fails): an `[alert]`, and the
//!   programs with `transform_cgroup` fail until a reload prepares the cgroups.
//! - A worker joins its leaf (cgroup v2) at its start ([`start_worker`]). Each program's cgroup
//!   is made before its spawn ([`Group::create`]); the child joins it by writing "0" to the
//!   `cgroup.procs` descriptors it is given; the [`Group`] goes with the `Child`, which kills it
//!   as a whole and, after the reaping, drops it: its processes are killed and it is removed (if
//!   it is still busy, again later from a list, and at the worker's exit; one that stays is
//!   logged). See `cgroup/files.rs` for the files.

use core::cell::{Cell, RefCell};
use core::ffi::{c_char, c_void};
use std::fs::File;
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_cycle_t, ngx_event_t, ngx_int_t, ngx_log_t, ngx_msec_t,
    NGX_LOG_ALERT, NGX_LOG_EMERG, NGX_LOG_NOTICE, NGX_LOG_WARN,
};
use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};

use crate::nginx::Timer;
use crate::os::{self, ExitStatus};

mod files;

use files::{Cgroup, Made, Place};
pub use files::{Controller, Failure, Policy, Values};

/// One `transform_cgroup` directive: the limits and where it was written.
#[derive(Debug)]
pub struct Limits {
    pub values: Values,
    pub file: String,
    pub line: usize,
}

std::thread_local! {
    /// The directives of the configuration being read: what each needs, and where it is.
    static READ: RefCell<Vec<(Vec<Controller>, String, usize)>> = const { RefCell::new(Vec::new()) };
    /// `transform_cgroup_version` of the configuration being read.
    static POLICY: Cell<Option<Policy>> = const { Cell::new(None) };
    /// The places checked for the configuration being read (its cycle's), until it is
    /// committed.
    static FOUND: RefCell<Option<(usize, Vec<Planned>)>> = const { RefCell::new(None) };
    /// The places of the running configuration (workers inherit them).
    static PLACES: RefCell<Rc<Vec<Place>>> = RefCell::new(Rc::new(Vec::new()));
    /// Whether the running configuration's cgroups could not be prepared (its `[alert]`).
    static UNPREPARED: Cell<bool> = const { Cell::new(false) };
    /// cgroup v2: the descriptor each worker joins its leaf through (closed once it did).
    static JOIN: RefCell<Option<(PathBuf, File)>> = const { RefCell::new(None) };
    /// The cgroup file systems' mount points, for the configuration being read.
    static MOUNTS: RefCell<Option<Vec<PathBuf>>> = const { RefCell::new(None) };
    /// Whether the configuration being read said that Landlock is missing for the cgroups.
    static WARNED: Cell<bool> = const { Cell::new(false) };
    /// This worker's program cgroups not yet removed, and whether their removal is retried.
    static LIVE: RefCell<Vec<Live>> = const { RefCell::new(Vec::new()) };
    /// Programs' cgroups made by this worker (their names' second part).
    static SEQ: Cell<u64> = const { Cell::new(0) };
    /// The timer of the retried removals.
    static RETRY: RefCell<Option<Timer>> = const { RefCell::new(None) };
    static RETRY_DELAY: Cell<ngx_msec_t> = const { Cell::new(RETRY_FIRST) };
}

/// A place checked by [`configure`], with the directive that needs it, for [`commit`].
struct Planned {
    place: Place,
    file: String,
    line: usize,
}

/// A program's cgroups until they are removed.
struct Live {
    name: String,
    cgroups: Rc<[Cgroup]>,
    /// Busy when dropped (since then): removed again later.
    busy: Option<Instant>,
    /// Whether its [`BUSY_WARN`] line was logged.
    warned: bool,
}

/// The first delay before a busy cgroup is removed again, and the longest.
const RETRY_FIRST: ngx_msec_t = 50;
const RETRY_MAX: ngx_msec_t = 5_000;
/// How long a cgroup may stay busy before a `[warn]` says so (killed processes are gone in
/// milliseconds, even a fork bomb's: one that stays has processes that do not die, in
/// uninterruptible sleep, or a cgroup made in it).
const BUSY_WARN: Duration = Duration::from_secs(3);

/// Before a configuration is read.
pub fn forget() {
    READ.with_borrow_mut(Vec::clear);
    POLICY.set(None);
    FOUND.with_borrow_mut(|f| *f = None);
    MOUNTS.with_borrow_mut(|m| *m = None);
    WARNED.set(false);
}

/// Where programs run with `transform_cgroup` (`limits`; checked at the merge of a location
/// with `transform_exec` or `transform_filter`, and for the pools with the http level's):
/// their `transform_sandbox_paths` (`paths`) must be on and must not make the cgroup file
/// system writable, since a program owns its cgroup's files (its worker made them) and could
/// lift its own limits. False (logged: one `[emerg]` with the directive's file and line) if
/// not; a `[warn]` (once per configuration) when the kernel does not enforce Landlock.
pub fn confined(
    log: *mut ngx_log_t,
    limits: &Limits,
    paths: Option<&crate::sandbox::Landlock>,
) -> bool {
    let (file, line) = (&limits.file, limits.line);
    let Some(paths) = paths else {
        log_error!(
            NGX_LOG_EMERG,
            log,
            0,
            "\"transform_cgroup\" in {file}:{line} needs \"transform_sandbox_paths\" where its \
             programs run: a program owns its cgroup's files and could lift its own limits: \
             confine it with transform_sandbox_paths, which must not make the cgroup file \
             system writable"
        );
        return false;
    };
    let mounts = MOUNTS.with_borrow_mut(|m| m.get_or_insert_with(cgroup_mounts).clone());
    for rw in paths.writable() {
        let real = std::fs::canonicalize(rw).unwrap_or_else(|_| rw.clone());
        if let Some(m) = mounts
            .iter()
            .find(|m| real.starts_with(m) || m.starts_with(&real))
        {
            log_error!(
                NGX_LOG_EMERG,
                log,
                0,
                "\"transform_cgroup\" in {file}:{line} cannot be confined by a \
                 \"transform_sandbox_paths\" with \"rw={}\": it makes the cgroup file system \
                 {} writable, and a program owns its cgroup's files and could lift its own \
                 limits",
                rw.display(),
                m.display()
            );
            return false;
        }
    }
    if paths.fd().is_none() && !WARNED.replace(true) {
        log_error!(
            NGX_LOG_WARN,
            log,
            0,
            "\"transform_cgroup\" in {file}:{line} is NOT enforced against the program itself: \
             this kernel has no Landlock, so \"transform_sandbox_paths\" is not enforced and a \
             program can write its own cgroup's limits"
        );
    }
    true
}

/// The mount points of the cgroup file systems (v1 and v2), and `/sys/fs/cgroup` if
/// /proc/self/mountinfo cannot be read.
fn cgroup_mounts() -> Vec<PathBuf> {
    match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => files::mounts(&text).into_iter().map(|m| m.point).collect(),
        Err(_) => vec![PathBuf::from("/sys/fs/cgroup")],
    }
}

/// `transform_cgroup off | [memory.max=size] [pids.max=N] [cpu.max=P%]`: sets
/// `TransformConf::cgroup` (`Some(None)` for off).
pub extern "C" fn set_cgroup(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls directive handlers with a valid cf and this module's loc conf.
    let (cf, conf) = unsafe { (&mut *cf, &mut *conf.cast::<crate::conf::TransformConf>()) };
    if conf.cgroup.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    // NGX_CONF_1MORE: the name and at least one word.
    let words = &crate::nginx::conf_words(cf)[1..];
    if words.len() == 1 && words[0].as_bytes() == b"off" {
        conf.cgroup = Some(None);
        return NGX_CONF_OK;
    }
    let mut values = Values::default();
    for word in words {
        if !parameter(&mut values, word.as_bytes()) {
            crate::nginx::conf_emerg(cf, &format!("invalid parameter \"{word}\""));
            return NGX_CONF_ERROR;
        }
    }
    let (file, line) = crate::nginx::conf_at(cf);
    READ.with_borrow_mut(|r| r.push((values.controllers(), file.clone(), line)));
    conf.cgroup = Some(Some(Arc::new(Limits { values, file, line })));
    NGX_CONF_OK
}

/// One `name=value` of `transform_cgroup` into `values`; false if it is not one, or given twice.
fn parameter(values: &mut Values, word: &[u8]) -> bool {
    let number = |v: &[u8]| std::str::from_utf8(v).ok()?.parse::<u64>().ok();
    let (slot, value) = if let Some(v) = word.strip_prefix(b"memory.max=") {
        (&mut values.memory_max, crate::nginx::parse_size(v))
    } else if let Some(v) = word.strip_prefix(b"pids.max=") {
        (&mut values.pids_max, number(v))
    } else if let Some(v) = word.strip_prefix(b"cpu.max=") {
        let percent = v.strip_suffix(b"%").and_then(number);
        match (values.cpu_max, percent) {
            (None, Some(p @ 1..=100_000)) => {
                values.cpu_max = Some(p as u32);
                return true;
            }
            _ => return false,
        }
    } else {
        return false;
    };
    match (&slot, value) {
        (None, Some(n)) if n > 0 => {
            *slot = Some(n);
            true
        }
        _ => false,
    }
}

/// `transform_cgroup_version auto | v2 | v1` (http level): which cgroup versions may hold the
/// controllers. `auto`: cgroup v2 where it has the controller, else a v1 hierarchy.
pub extern "C" fn set_version(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls directive handlers with a valid cf.
    let cf = unsafe { &mut *cf };
    if POLICY.get().is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    // NGX_CONF_TAKE1: the name and one word.
    let word = crate::nginx::conf_words(cf)[1];
    let policy = match word.as_bytes() {
        b"auto" => Policy::Auto,
        b"v2" => Policy::V2,
        b"v1" => Policy::V1,
        _ => {
            crate::nginx::conf_emerg(cf, &format!("invalid value \"{word}\": auto, v2 or v1"));
            return NGX_CONF_ERROR;
        }
    };
    POLICY.set(Some(policy));
    NGX_CONF_OK
}

/// After the http block (postconfiguration, in the master, or `nginx -t`): finds a hierarchy
/// for every controller the directives need and checks that the subtrees can be prepared there
/// ([`files::check`]), changing nothing: what a later step of reading the configuration may
/// still refuse (a directive after the http block, a `listen`, a shared memory zone) must
/// leave the system as it was. [`commit`] makes the subtrees. False (logged: one `[emerg]`
/// naming the directive and what is missing) when the cgroups cannot work.
///
/// `nginx -t` checks the cgroup of the running master (the pid file's), where a reload would
/// make them, else its own (where a start from here would), and says which on the terminal.
pub fn configure(cf: &ngx_conf_t) -> bool {
    let read = READ.with_borrow_mut(core::mem::take);
    let policy = POLICY.get().unwrap_or(Policy::Auto);
    let log = cf.log;
    let cycle = cf.cycle as usize;
    if read.is_empty() || crate::nginx::signaller() {
        FOUND.with_borrow_mut(|f| *f = Some((cycle, Vec::new())));
        return true;
    }
    let mut needed: Vec<Controller> = read.iter().flat_map(|(c, ..)| c.clone()).collect();
    needed.sort();
    needed.dedup();
    let at = |c: &[Controller]| {
        read.iter()
            .find(|(n, ..)| n.iter().any(|x| c.contains(x)))
            .map(|(_, f, l)| (f.clone(), *l))
            .unwrap_or_default()
    };
    let testing = crate::nginx::testing_config();
    let pid_file = crate::nginx::pid_path(cf.cycle);
    let master = testing.then(|| running_master(&pid_file)).flatten();
    let pid = master.unwrap_or_else(std::process::id);
    let proc = (
        std::fs::read_to_string(format!("/proc/{pid}/mountinfo")),
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")),
    );
    let (mountinfo, own) = match proc {
        (Ok(m), Ok(c)) => (m, c),
        (Err(e), _) | (_, Err(e)) => {
            let (file, line) = at(&needed);
            log_error!(
                NGX_LOG_EMERG,
                log,
                os::errno(&e),
                "\"transform_cgroup\" in {file}:{line} cannot work: /proc/{pid}/mountinfo or \
                 /proc/{pid}/cgroup cannot be read"
            );
            return false;
        }
    };
    let found = files::locate(Path::new("/"), &mountinfo, &own, &needed, policy);
    if let Some(&c) = found.missing.first() {
        let (file, line) = at(&[c]);
        log_error!(
            NGX_LOG_EMERG,
            log,
            0,
            "\"transform_cgroup\" in {file}:{line} cannot work: {}",
            missing(c, &found, policy)
        );
        return false;
    }
    if let Some(place) = found
        .places
        .iter()
        .find(|p| p.version == files::Version::V2)
    {
        let release = os::kernel_release();
        if !files::release_at_least(&release, (5, 16)) {
            let (file, line) = at(&place.controllers);
            log_error!(
                NGX_LOG_EMERG,
                log,
                0,
                "\"transform_cgroup\" in {file}:{line} cannot work: cgroup v2 needs Linux 5.16 \
                 or newer (the workers join their cgroup through a descriptor the master opens), \
                 this is {release}"
            );
            return false;
        }
        // Between its setuid and init_process a new worker holds that root-opened descriptor
        // while dumpable: without Yama, any process of the worker user could take it
        // (pidfd_getfd) and move the master out of reach. Yama's ptrace_scope 1 or more keeps
        // it to the worker's ancestors.
        let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if scope.unwrap_or(0) < 1 {
            let (file, line) = at(&place.controllers);
            log_error!(
                NGX_LOG_EMERG,
                log,
                0,
                "\"transform_cgroup\" in {file}:{line} cannot work: on cgroup v2 it needs Yama's \
                 kernel.yama.ptrace_scope at 1 or more ({}), or a process of the worker user \
                 could take the descriptor a new worker joins its cgroup with",
                scope.map_or("no Yama".to_string(), |v| format!("it is {v}"))
            );
            return false;
        }
    }
    let mut planned = Vec::new();
    for place in found.places {
        let (file, line) = at(&place.controllers);
        if let Err(f) = files::check(&place, pid) {
            log_error!(
                NGX_LOG_EMERG,
                log,
                os::errno(&f.err),
                "\"transform_cgroup\" in {file}:{line} cannot work{}: {f}{}",
                hint(&f, &place),
                sharing(&f, &place, pid)
            );
            return false;
        }
        if testing {
            let whose = match master {
                Some(m) => format!(
                    "the cgroup of the running master (pid {m} in {})",
                    pid_file.display()
                ),
                None => format!(
                    "this process's cgroup, as no master runs (none in {})",
                    pid_file.display()
                ),
            };
            // (nginx -t shows only warnings and worse on the terminal: this line too.)
            crate::nginx::log_stderr(&format!(
                "[notice] transform_cgroup: {} (cgroup {}) in {}: checked in {whose}",
                names(&place.controllers),
                version_name(place.version),
                place.programs().display(),
            ));
        }
        planned.push(Planned { place, file, line });
    }
    FOUND.with_borrow_mut(|f| *f = Some((cycle, planned)));
    true
}

/// The pid of the master the pid file names, if it runs (its process title says so).
fn running_master(pid_file: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let title = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    title.starts_with(b"nginx: master process").then_some(pid)
}

/// Why controller `c` has no place, for the `[emerg]` line.
fn missing(c: Controller, found: &files::Found, policy: Policy) -> String {
    let name = c.name();
    let v2 = match &found.v2 {
        Some((base, offered)) if offered.is_empty() => format!(
            "cgroup v2 offers no controller in {}",
            base.join("cgroup.controllers").display()
        ),
        Some((base, offered)) => format!(
            "cgroup v2 offers only {} in {}",
            offered.join(" "),
            base.join("cgroup.controllers").display()
        ),
        None => "no cgroup v2 is mounted".to_owned(),
    };
    match policy {
        Policy::V2 => format!(
            "the \"{name}\" controller is not available: {v2}, and \"transform_cgroup_version \
             v2\" excludes cgroup v1"
        ),
        Policy::V1 => format!(
            "the \"{name}\" controller is not available: no cgroup v1 hierarchy has it, and \
             \"transform_cgroup_version v1\" excludes cgroup v2"
        ),
        Policy::Auto => format!(
            "the \"{name}\" controller is not available: {v2}, and no cgroup v1 hierarchy has it"
        ),
    }
}

/// What to do about a refused write.
fn hint(f: &Failure, place: &Place) -> &'static str {
    match f.err.raw_os_error() {
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => {
            " (the master must start as root, or in a cgroup delegated to its user)"
        }
        Some(libc::EBUSY) if place.version == files::Version::V2 => {
            " (other processes share nginx's cgroup: start nginx in a cgroup of its own, \
             e.g. systemd's Delegate=yes)"
        }
        _ => "",
    }
}

/// cgroup v2, for an EBUSY: the processes that share nginx's cgroup (`pid`: the master's).
fn sharing(f: &Failure, place: &Place, pid: u32) -> String {
    if f.err.raw_os_error() != Some(libc::EBUSY) {
        return String::new();
    }
    let others = files::sharing(place, pid);
    if others.is_empty() {
        return String::new();
    }
    let list: Vec<String> = others.iter().take(8).map(i32::to_string).collect();
    format!(
        "; {} lists {}{} besides nginx's master {pid}",
        place.base.join("cgroup.procs").display(),
        list.join(" "),
        if others.len() > 8 { " ..." } else { "" }
    )
}

fn names(controllers: &[Controller]) -> String {
    controllers
        .iter()
        .map(|c| c.name())
        .collect::<Vec<_>>()
        .join(" ")
}

fn version_name(v: files::Version) -> &'static str {
    match v {
        files::Version::V1 => "v1",
        files::Version::V2 => "v2",
    }
}

/// The configuration is committed (`init_module`, in the master, after the last step of
/// reading it that may fail): the subtrees [`configure`] checked are made ([`files::prepare`]),
/// their owners and modes set for the worker user (final now), and their places become the
/// workers'; one `[notice]` per hierarchy once it is done. `nginx -t` makes nothing.
///
/// A failure here was not foreseeable by the checks (no memory, `cgroup.max.descendants`, a
/// change since them): nginx exits when `init_module` fails, even a running master on reload,
/// so it is an `[alert]` instead, and the programs with `transform_cgroup` fail (502, each
/// with a line) until a reload prepares the cgroups.
pub fn commit(cycle: *mut ngx_cycle_t) {
    // (Only what was checked for this configuration: not a failed one's.)
    let Some((_, planned)) = FOUND
        .with_borrow_mut(Option::take)
        .filter(|(c, _)| *c == cycle as usize)
    else {
        return;
    };
    if crate::nginx::testing_config() {
        return;
    }
    let log = ngx::log::ngx_cycle_log().as_ptr();
    // (Without a worker user, a master that is not root: everything stays its user's.)
    let gid = crate::nginx::worker_user(cycle).map(|(_, gid)| gid.unwrap_or(0));
    let mut places = Vec::new();
    let mut join = None;
    for Planned { place, file, line } in planned {
        let done = files::prepare(&place, std::process::id())
            .and_then(|()| files::hand_over(&place, gid))
            .and_then(|()| {
                if place.version == files::Version::V2 {
                    let file = files::open_join(&place)?;
                    join = Some((place.workers_leaf().join("cgroup.procs"), file));
                }
                Ok(())
            });
        if let Err(f) = done {
            log_error!(
                NGX_LOG_ALERT,
                log,
                os::errno(&f.err),
                "\"transform_cgroup\" in {file}:{line} cannot work{}: {f}; its programs fail \
                 until a reload prepares the cgroups",
                hint(&f, &place)
            );
            PLACES.with_borrow_mut(|p| *p = Rc::new(Vec::new()));
            JOIN.with_borrow_mut(|j| *j = None);
            UNPREPARED.set(true);
            return;
        }
        log_error!(
            NGX_LOG_NOTICE,
            log,
            0,
            "transform_cgroup: {} (cgroup {}) in {}",
            names(&place.controllers),
            version_name(place.version),
            place.programs().display()
        );
        places.push(place);
    }
    PLACES.with_borrow_mut(|p| *p = Rc::new(places));
    JOIN.with_borrow_mut(|j| *j = join);
    UNPREPARED.set(false);
}

/// A program's cgroup(s), from their creation before the spawn to their removal after the
/// reaping (when this is dropped).
pub struct Group {
    name: String,
    made: Made,
    /// `memory.max`, when the memory controller limits it.
    memory_max: Option<u64>,
}

impl Group {
    /// Makes the cgroup(s) of one program with `limits`: `<worker pid>-<n>`.
    pub fn create(limits: &Limits) -> Result<Group, Failure> {
        let places = PLACES.with_borrow(Rc::clone);
        let n = SEQ.get() + 1;
        SEQ.set(n);
        let name = format!("{}-{n}", std::process::id());
        if places.is_empty() {
            let call = if UNPREPARED.get() {
                "cgroups not prepared (the [alert] of the start or last reload says why); cgroup"
            } else {
                "cgroups not prepared; cgroup"
            };
            return Err(Failure {
                call: call.to_owned(),
                path: name.into(),
                err: io::Error::from_raw_os_error(libc::ENOENT),
            });
        }
        let made = files::make(&places, &name, &limits.values)?;
        LIVE.with_borrow_mut(|l| {
            l.push(Live {
                name: name.clone(),
                cgroups: Rc::clone(&made.cgroups),
                busy: None,
                warned: false,
            })
        });
        Ok(Group {
            name,
            made,
            memory_max: limits.values.memory_max,
        })
    }

    /// Descriptors of the `cgroup.procs` files the child writes "0" to before exec.
    pub fn procs(&self) -> &[RawFd] {
        self.made.procs()
    }

    /// The child has joined (or failed): the `cgroup.procs` descriptors are closed.
    pub fn joined(&mut self) {
        self.made.close_procs();
    }

    /// SIGKILL to every process in the cgroup(s); whether any besides `except` was there.
    pub fn kill(&self, except: Option<libc::pid_t>) -> bool {
        files::kill(&self.made.cgroups, except) > 0
    }

    /// A program's exit status, told as the memory limit's doing if the kernel's OOM killer
    /// killed in its cgroup and it died of SIGKILL. Asked before the reaping (the cgroup is
    /// there until then).
    pub fn judge(&self, status: ExitStatus) -> ExitStatus {
        match (status, self.memory_max, &self.made.memory) {
            (ExitStatus::Signal(libc::SIGKILL), Some(max), Some((version, dir)))
                if files::oom_kills(*version, dir) > 0 =>
            {
                ExitStatus::MemoryLimit {
                    signal: libc::SIGKILL,
                    max,
                }
            }
            _ => status,
        }
    }
}

impl Drop for Group {
    /// Removes the cgroup(s); if processes are left (busy), kills them first (one pass), and
    /// removes what is still busy later.
    fn drop(&mut self) {
        self.made.close_procs();
        let cgroups = &self.made.cgroups;
        if files::remove(cgroups).is_ok() || {
            files::kill(cgroups, None);
            files::remove(cgroups).is_ok()
        } {
            LIVE.with_borrow_mut(|l| l.retain(|g| g.name != self.name));
            return;
        }
        LIVE.with_borrow_mut(|l| {
            if let Some(g) = l.iter_mut().find(|g| g.name == self.name) {
                g.busy = Some(Instant::now());
            }
        });
        schedule_retry();
    }
}

fn schedule_retry() {
    RETRY.with_borrow_mut(|t| {
        if t.is_none() {
            *t = Timer::worker(retry_event).map(Timer::cancelable);
        }
        if let Some(t) = t.as_ref().filter(|t| !t.is_set()) {
            t.set(RETRY_DELAY.get());
        }
    });
}

/// Removes the busy cgroups again; the delay doubles while some stay.
unsafe extern "C" fn retry_event(_ev: *mut ngx_event_t) {
    if retry_removals() {
        RETRY_DELAY.set(RETRY_FIRST);
    } else {
        RETRY_DELAY.set((RETRY_DELAY.get() * 2).min(RETRY_MAX));
        schedule_retry();
    }
}

/// One more try at the busy cgroups (each killed again: one pass); whether none is left. One
/// still busy after [`BUSY_WARN`] is logged (once), and so is its removal after that.
fn retry_removals() -> bool {
    let log = ngx::log::ngx_cycle_log().as_ptr();
    LIVE.with_borrow_mut(|l| {
        l.retain_mut(|g| {
            let Some(since) = g.busy else {
                return true;
            };
            files::kill(&g.cgroups, None);
            match files::remove(&g.cgroups) {
                Ok(()) => {
                    if g.warned {
                        log_error!(
                            NGX_LOG_NOTICE,
                            log,
                            0,
                            "transform_cgroup: cgroup \"{}\" removed after {} s",
                            g.cgroups[0].dir.display(),
                            since.elapsed().as_secs()
                        );
                    }
                    false
                }
                Err(f) => {
                    if !g.warned && since.elapsed() >= BUSY_WARN {
                        g.warned = true;
                        log_error!(
                            NGX_LOG_WARN,
                            log,
                            os::errno(&f.err),
                            "transform_cgroup: a program's cgroup is still there {} s after its \
                             end ({}); tried again every {} s: {f}",
                            since.elapsed().as_secs(),
                            busy_why(&g.cgroups),
                            RETRY_MAX / 1000
                        );
                    }
                    true
                }
            }
        });
        l.iter().all(|g| g.busy.is_none())
    })
}

/// Why a cgroup stays busy, for its `[warn]`: what is still in it.
fn busy_why(cgroups: &[Cgroup]) -> String {
    let pids: Vec<i32> = cgroups.iter().flat_map(Cgroup::pids).collect();
    if pids.is_empty() {
        return "no process is left in it: a cgroup was made in it".to_owned();
    }
    let list: Vec<String> = pids.iter().take(8).map(i32::to_string).collect();
    format!(
        "processes {}{} do not die after SIGKILL (uninterruptible sleep?)",
        list.join(" "),
        if pids.len() > 8 { " ..." } else { "" }
    )
}

/// Worker start: cgroup v2, the worker joins its leaf `workers/w` (unless it runs as root, which
/// stays with the master: only root may move it); then the cgroups of programs whose worker is
/// gone (killed before it removed them), and any named after this worker's pid (an earlier
/// worker's), are killed and removed; what cannot be is logged.
pub fn start_worker(log: *mut ngx_log_t) {
    if let Some((path, file)) = JOIN.with_borrow_mut(Option::take) {
        if !rustix::process::geteuid().is_root() {
            if let Err(e) = files::join(&file) {
                log_error!(
                    NGX_LOG_ALERT,
                    log,
                    os::errno(&e),
                    "transform_cgroup: write(\"0\") to \"{}\" failed; this worker's programs \
                     cannot join their cgroups",
                    path.display()
                );
            }
        }
    }
    let places = PLACES.with_borrow(Rc::clone);
    let swept = files::sweep(&places, os::getpid(), os::process_exists);
    if swept.removed > 0 {
        log_error!(
            NGX_LOG_NOTICE,
            log,
            0,
            "transform_cgroup: removed {} cgroups left by a worker that is gone",
            swept.removed
        );
    }
    for f in &swept.busy {
        log_error!(
            NGX_LOG_WARN,
            log,
            os::errno(&f.err),
            "transform_cgroup: a cgroup left by a worker that is gone stays ({}): {f}",
            busy_why(&[Cgroup::at(files::Version::V1, f.path.clone())])
        );
    }
    for dir in &swept.strange {
        log_error!(
            NGX_LOG_WARN,
            log,
            0,
            "transform_cgroup: \"{}\" is no program's cgroup (made by another process of the \
             worker user, or by hand): left alone",
            dir.display()
        );
    }
}

/// Worker exit (after every program was killed and reaped): every cgroup of this worker is
/// killed and removed, waiting briefly (up to ~100 ms) for killed processes to be gone; what
/// is left is logged (the start of a later worker removes it).
pub fn exit_all() {
    RETRY.with_borrow_mut(|t| *t = None);
    let mut live = LIVE.with_borrow_mut(core::mem::take);
    let mut last = None;
    for round in 0..=files::WAIT_ROUNDS {
        live.retain(|g| match files::remove(&g.cgroups) {
            Ok(()) => false,
            Err(f) => {
                files::kill(&g.cgroups, None);
                last = Some(f);
                true
            }
        });
        if live.is_empty() || round == files::WAIT_ROUNDS {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    if let (Some(f), false) = (last, live.is_empty()) {
        log_error!(
            NGX_LOG_WARN,
            ngx::log::ngx_cycle_log().as_ptr(),
            os::errno(&f.err),
            "transform_cgroup: {} of this worker's cgroups stay at its exit ({}); the next \
             worker's start removes them: {f}",
            live.len(),
            busy_why(&live[0].cgroups)
        );
    }
}

/// The 503/502 of a program whose cgroup could not be made (logged).
pub fn create_failed(log: *mut ngx_log_t, f: &Failure) -> ngx_int_t {
    log_error!(
        nginx_sys::NGX_LOG_ERR,
        log,
        os::errno(&f.err),
        "transform_cgroup: {f}"
    );
    failure_status(f)
}

/// 503 for a lack of resources (the next request may succeed), else 502.
pub fn failure_status(f: &Failure) -> ngx_int_t {
    match f.err.raw_os_error() {
        Some(libc::EAGAIN | libc::ENOMEM | libc::ENOSPC | libc::EMFILE | libc::ENFILE) => {
            nginx_sys::NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t
        }
        _ => nginx_sys::NGX_HTTP_BAD_GATEWAY as ngx_int_t,
    }
}
