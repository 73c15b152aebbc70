//! The cgroup files behind `transform_cgroup`: where each controller is, the module's subtree,
//! and one cgroup per program (its limits, how it is joined, killed and removed, its OOM count).
//!
//! File work only, on paths under a root the caller gives (`/` in nginx; a directory laid out
//! like a cgroup tree in tests/cgroup.rs, which includes this file): nothing here knows about
//! nginx, and nothing needs `unsafe`.
//!
//! The layout, in each hierarchy used, under the cgroup nginx started in (its *base*):
//!
//! ```text
//! cgroup v2:
//! <base>/nginx-transform/                     root's (0755)
//! <base>/nginx-transform/nginx/               the master (a leaf), root's (0755)
//! <base>/nginx-transform/workers/             root's (0755); cgroup.procs: the workers' group
//! <base>/nginx-transform/workers/w/           the workers (a leaf), root's (0755)
//! <base>/nginx-transform/workers/programs/    root's, writable by the workers' group (0775)
//! <base>/nginx-transform/workers/programs/<worker pid>-<n>/   one program, its worker's (0755)
//! cgroup v1:
//! <base>/nginx-transform/                     root's (0755)
//! <base>/nginx-transform/programs/            root's, writable by the workers' group (0775)
//! <base>/nginx-transform/programs/<worker pid>-<n>/           one program, its worker's (0755)
//! ```
//!
//! Every directory is made with its mode, never 0777 less the umask: `ngx_daemon` sets the
//! umask to 0, so a directory made during a reload, or by a worker, would be writable by anyone,
//! who could make a cgroup in it: one its worker then cannot remove, and on cgroup v1 a place in
//! nginx's subtree for the maker's own processes. The subtree's directories get their modes
//! again at each start and reload ([`hand_over`]).
//!
//! cgroup v2 keeps processes in leaves only and enables controllers top-down; a process may be
//! moved by whoever may write the `cgroup.procs` of the destination and of the common ancestor
//! of source and destination. So the master moves itself into `nginx/`, whose common ancestor
//! with anything the worker user can write is `nginx-transform/` (root's): no process of the
//! worker user can move the master into a cgroup it could freeze or kill. Each worker joins
//! `workers/w` through a `cgroup.procs` descriptor the master opened as root (since Linux 5.16
//! a migration is checked with the opener's credentials); a worker moves its child from
//! `workers/w` into `programs/<pid>-<n>` through `workers/cgroup.procs`, which its group may
//! write. The directories the worker user writes in are root's: it cannot chmod them away.
//! cgroup v1 has none of these rules: the master and its workers stay where they are.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// The module's subtree, under nginx's own cgroup.
pub const SUBTREE: &str = "nginx-transform";
/// cgroup v2: the leaf of the master.
pub const MASTER: &str = "nginx";
/// cgroup v2: the workers' part of the subtree, and their leaf in it.
pub const WORKERS: &str = "workers";
pub const WORKERS_LEAF: &str = "w";
/// Where the programs' cgroups are (cgroup v2: in `workers/`).
pub const PROGRAMS: &str = "programs";
/// The CPU period of `cpu.max` (cgroup v2) and `cpu.cfs_period_us` (v1): 100 ms.
pub const PERIOD_US: u64 = 100_000;
/// The mode of the subtree's directories (root's) and of a program's cgroup (its worker's):
/// nobody else may make a cgroup in them.
pub const DIR_MODE: u32 = 0o755;
/// The mode of `programs/` (root's), where the workers' group makes its programs' cgroups.
pub const PROGRAMS_MODE: u32 = 0o775;

/// A cgroup hierarchy's version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The controllers `transform_cgroup` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Controller {
    Memory,
    Pids,
    Cpu,
}

impl Controller {
    pub const ALL: [Controller; 3] = [Controller::Memory, Controller::Pids, Controller::Cpu];

    /// Its name in `cgroup.controllers` and in a v1 hierarchy's mount options.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
        }
    }
}

/// Which versions may hold the controllers (`transform_cgroup_version`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// cgroup v2 where it has the controller, else a v1 hierarchy.
    Auto,
    V2,
    V1,
}

/// The limits of one program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Values {
    /// Bytes.
    pub memory_max: Option<u64>,
    pub pids_max: Option<u64>,
    /// Percent of one CPU.
    pub cpu_max: Option<u32>,
}

impl Values {
    /// The controllers these limits need.
    pub fn controllers(&self) -> Vec<Controller> {
        let mut out = Vec::new();
        if self.memory_max.is_some() {
            out.push(Controller::Memory);
        }
        if self.pids_max.is_some() {
            out.push(Controller::Pids);
        }
        if self.cpu_max.is_some() {
            out.push(Controller::Cpu);
        }
        out
    }
}

/// A cgroup file system from /proc/self/mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub version: Version,
    /// Where it is mounted.
    pub point: PathBuf,
    /// The cgroup at its root ("/" unless a subtree is mounted, as in some containers).
    pub root: String,
    /// cgroup v1: its super options (the controllers, "name=..."); empty for v2.
    pub options: Vec<String>,
}

/// The cgroup file systems in a /proc/self/mountinfo text.
pub fn mounts(mountinfo: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 {
            continue;
        }
        let version = match right[0] {
            "cgroup2" => Version::V2,
            "cgroup" => Version::V1,
            _ => continue,
        };
        let options = match version {
            Version::V2 => Vec::new(),
            Version::V1 => right[2].split(',').map(str::to_owned).collect(),
        };
        out.push(Mount {
            version,
            point: PathBuf::from(unescape(left[4])),
            root: unescape(left[3]),
            options,
        });
    }
    out
}

/// mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let digit = |k: usize| u32::from(b[i + k] - b'0');
            out.push((digit(1) * 64 + digit(2) * 8 + digit(3)) as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of /proc/self/cgroup: a hierarchy and this process's cgroup in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// "0" for cgroup v2.
    pub id: String,
    /// A v1 hierarchy's controllers ("cpu,cpuacct"), "name=..." for a named one; empty for v2.
    pub controllers: Vec<String>,
    pub path: String,
}

/// The lines of a /proc/self/cgroup text.
pub fn memberships(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let id = parts.next()?.to_owned();
            let controllers = parts
                .next()?
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            let path = parts.next()?.to_owned();
            Some(Membership {
                id,
                controllers,
                path,
            })
        })
        .collect()
}

/// The directory of this process's cgroup in `mount`, under `prefix` (the file system's root).
pub fn own_dir(prefix: &Path, mount: &Mount, members: &[Membership]) -> Option<PathBuf> {
    let member = members.iter().find(|m| match mount.version {
        Version::V2 => m.id == "0" && m.controllers.is_empty(),
        Version::V1 => {
            !m.controllers.is_empty() && m.controllers.iter().all(|c| mount.options.contains(c))
        }
    })?;
    // The path is the cgroup's from the hierarchy's root; the mount may show a subtree only.
    let rel = if mount.root == "/" {
        member.path.as_str()
    } else {
        let rest = member.path.strip_prefix(mount.root.as_str())?;
        if !rest.is_empty() && !rest.starts_with('/') {
            return None;
        }
        rest
    };
    let point = mount.point.strip_prefix("/").unwrap_or(&mount.point);
    let mut dir = prefix.join(point);
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        dir.push(part);
    }
    Some(dir)
}

/// The cgroup the subtree is made in: this process's own, or, for a master that moved into
/// `nginx-transform/nginx` at an earlier start (a reload), the one it moved from.
pub fn base_of(own: &Path) -> PathBuf {
    if own.ends_with(Path::new(SUBTREE).join(MASTER)) {
        if let Some(base) = own.parent().and_then(Path::parent) {
            return base.to_path_buf();
        }
    }
    own.to_path_buf()
}

/// A hierarchy the module uses and the controllers it takes there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    pub version: Version,
    /// The cgroup the subtree is made in.
    pub base: PathBuf,
    pub controllers: Vec<Controller>,
}

impl Place {
    pub fn subtree(&self) -> PathBuf {
        self.base.join(SUBTREE)
    }

    pub fn programs(&self) -> PathBuf {
        match self.version {
            Version::V2 => self.workers().join(PROGRAMS),
            Version::V1 => self.subtree().join(PROGRAMS),
        }
    }

    /// cgroup v2: the master's leaf.
    pub fn leaf(&self) -> PathBuf {
        self.subtree().join(MASTER)
    }

    /// cgroup v2: the workers' part of the subtree.
    pub fn workers(&self) -> PathBuf {
        self.subtree().join(WORKERS)
    }

    /// cgroup v2: the workers' leaf.
    pub fn workers_leaf(&self) -> PathBuf {
        self.workers().join(WORKERS_LEAF)
    }
}

/// Where the needed controllers are, and which none has.
#[derive(Debug, Default)]
pub struct Found {
    pub places: Vec<Place>,
    pub missing: Vec<Controller>,
    /// The cgroup v2 base, if there is a v2 mount, and the controllers it offers.
    pub v2: Option<(PathBuf, Vec<String>)>,
}

/// Finds a hierarchy for each controller in `needed`: cgroup v2 where nginx's cgroup offers it
/// (its `cgroup.controllers`), else a v1 hierarchy mounted with it, as `policy` allows.
pub fn locate(
    prefix: &Path,
    mountinfo: &str,
    proc_cgroup: &str,
    needed: &[Controller],
    policy: Policy,
) -> Found {
    let all = mounts(mountinfo);
    let members = memberships(proc_cgroup);
    let mut found = Found::default();
    let v2 = all
        .iter()
        .filter(|m| m.version == Version::V2)
        .find_map(|m| own_dir(prefix, m, &members))
        .map(|own| {
            let base = base_of(&own);
            let offered: Vec<String> = fs::read_to_string(base.join("cgroup.controllers"))
                .map(|s| s.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default();
            (base, offered)
        });
    for &c in needed {
        if let (Some((base, offered)), false) = (&v2, policy == Policy::V1) {
            if offered.iter().any(|o| o == c.name()) {
                add(&mut found.places, Version::V2, base, c);
                continue;
            }
        }
        if policy != Policy::V2 {
            let v1 = all
                .iter()
                .filter(|m| m.version == Version::V1 && m.options.iter().any(|o| o == c.name()))
                .find_map(|m| own_dir(prefix, m, &members));
            if let Some(own) = v1 {
                add(&mut found.places, Version::V1, &base_of(&own), c);
                continue;
            }
        }
        found.missing.push(c);
    }
    found.v2 = v2;
    found
}

fn add(places: &mut Vec<Place>, version: Version, base: &Path, c: Controller) {
    match places
        .iter_mut()
        .find(|p| p.version == version && p.base == base)
    {
        Some(p) => p.controllers.push(c),
        None => places.push(Place {
            version,
            base: base.to_path_buf(),
            controllers: vec![c],
        }),
    }
}

/// A file operation that failed: the call (as nginx names calls), the path and the error.
#[derive(Debug)]
pub struct Failure {
    pub call: String,
    pub path: PathBuf,
    pub err: io::Error,
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} \"{}\" failed", self.call, self.path.display())
    }
}

fn failure(call: impl Into<String>, path: &Path, err: io::Error) -> Failure {
    Failure {
        call: call.into(),
        path: path.to_path_buf(),
        err,
    }
}

/// mkdir with [`DIR_MODE`] (the umask may take bits away, never add them).
fn mkdir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).create(dir)
}

/// [`mkdir`] of a directory of the subtree: one that exists is fine (an earlier start made it).
fn mkdir_subtree(dir: &Path) -> Result<(), Failure> {
    match mkdir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(failure("mkdir()", dir, e)),
        _ => Ok(()),
    }
}

/// Writes `value` to an existing file (cgroup files exist or do not: nothing is created).
fn write(path: &Path, value: &str) -> Result<(), Failure> {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| failure(format!("write(\"{value}\")"), path, e))
}

/// As [`write`], for a file that not every kernel has (memory.swap.max, memsw): none is fine.
fn write_if_there(path: &Path, value: &str) -> Result<(), Failure> {
    match write(path, value) {
        Err(f) if f.err.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Once the configuration is committed (the master, as root): the subtree and its `programs/`;
/// cgroup v2: also the leaves `nginx/` and `workers/w`, the master moves into `nginx/` (`pid`),
/// then the controllers are enabled in the base, the subtree, `workers/` and `programs/`.
/// [`check`] said beforehand whether this can work.
pub fn prepare(place: &Place, pid: u32) -> Result<(), Failure> {
    let subtree = place.subtree();
    mkdir_subtree(&subtree)?;
    if place.version == Version::V1 {
        return mkdir_subtree(&place.programs());
    }
    for dir in [
        place.leaf(),
        place.workers(),
        place.workers_leaf(),
        place.programs(),
    ] {
        mkdir_subtree(&dir)?;
    }
    write(&place.leaf().join("cgroup.procs"), &pid.to_string())?;
    for dir in [
        place.base.clone(),
        subtree,
        place.workers(),
        place.programs(),
    ] {
        enable(&dir, &place.controllers)?;
    }
    Ok(())
}

/// cgroup v2, at start-up (the master, as root): the workers' leaf's `cgroup.procs`, open for
/// writing (close-on-exec) for the workers to join it with [`join`]: the move is checked with
/// the credentials of the opener (Linux 5.16), so it needs no right of the worker user.
pub fn open_join(place: &Place) -> Result<File, Failure> {
    let path = place.workers_leaf().join("cgroup.procs");
    OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| failure("open()", &path, e))
}

/// A worker joins the workers' leaf through the descriptor of [`open_join`].
pub fn join(mut procs: &File) -> io::Result<()> {
    procs.write_all(b"0")
}

/// What [`enable`] writes to `dir`'s `cgroup.subtree_control`: the `controllers` not enabled
/// there yet ("+memory +pids"; empty if none).
fn to_enable(dir: &Path, controllers: &[Controller]) -> Result<String, Failure> {
    let file = dir.join("cgroup.subtree_control");
    let on = fs::read_to_string(&file).map_err(|e| failure("open()", &file, e))?;
    let missing: Vec<String> = controllers
        .iter()
        .filter(|c| !on.split_whitespace().any(|o| o == c.name()))
        .map(|c| format!("+{}", c.name()))
        .collect();
    Ok(missing.join(" "))
}

/// Enables `controllers` in `dir`'s `cgroup.subtree_control` (those not enabled yet).
fn enable(dir: &Path, controllers: &[Controller]) -> Result<(), Failure> {
    let missing = to_enable(dir, controllers)?;
    if missing.is_empty() {
        return Ok(());
    }
    write(&dir.join("cgroup.subtree_control"), &missing)
}

/// Before anything is made (postconfiguration, and `nginx -t`, which changes nothing): whether
/// [`prepare`] can work for a master `pid`. The directories it writes in must be writable; and,
/// cgroup v2, the controllers it still has to enable in the base must not be refused for other
/// processes there (the kernel refuses with EBUSY while a cgroup other than the root holds
/// processes: reported as the failure of that write, before anything is made).
pub fn check(place: &Place, pid: u32) -> Result<(), Failure> {
    let writable = |path: &Path| {
        rustix::fs::access(path, rustix::fs::Access::WRITE_OK)
            .map_err(|e| failure("access()", path, e.into()))
    };
    let subtree = place.subtree();
    if subtree.exists() {
        writable(&subtree)?;
    } else {
        writable(&place.base)?;
    }
    if place.version == Version::V2 {
        let control = place.base.join("cgroup.subtree_control");
        writable(&control)?;
        let missing = to_enable(&place.base, &place.controllers)?;
        if !missing.is_empty() && !sharing(place, pid).is_empty() {
            return Err(failure(
                format!("write(\"{missing}\")"),
                &control,
                io::Error::from_raw_os_error(libc::EBUSY),
            ));
        }
    }
    Ok(())
}

/// cgroup v2: the processes in the base besides `pid` (none in the root cgroup, which has no
/// `cgroup.type` and may hold processes while its controllers are enabled).
pub fn sharing(place: &Place, pid: u32) -> Vec<i32> {
    if place.version != Version::V2 || !place.base.join("cgroup.type").exists() {
        return Vec::new();
    }
    Cgroup::at(Version::V2, place.base.clone())
        .pids()
        .into_iter()
        .filter(|&p| i64::from(p) != i64::from(pid))
        .collect()
}

/// After [`prepare`], once the worker user is known: the owners and modes of the subtree, set
/// again at each start and reload (whatever an older version or the umask left). Its
/// directories are [`DIR_MODE`]. With the workers' group `gid` (a master that is root), what
/// the workers write is writable by that group but stays root's, so that no process of the
/// worker user (a worker, a program, another daemon of that user) can chmod it away: the
/// `programs/` directory (they make and remove their programs' cgroups there;
/// [`PROGRAMS_MODE`]) and, cgroup v2, `workers/cgroup.procs` (0664: the common ancestor of
/// `workers/w` and a program's cgroup); the subtree's own `cgroup.procs` (the common ancestor
/// with the master) is root's alone (0644), as an older version left it too. Without one (a
/// master that is not root: its workers are its user) they stay the master user's, writable
/// by that user only.
pub fn hand_over(place: &Place, gid: Option<u32>) -> Result<(), Failure> {
    let group_writes = |mode: u32| if gid.is_some() { mode } else { mode & 0o755 };
    let mut paths = vec![(place.subtree(), DIR_MODE, None)];
    if place.version == Version::V2 {
        for dir in [place.leaf(), place.workers(), place.workers_leaf()] {
            paths.push((dir, DIR_MODE, None));
        }
        paths.push((place.subtree().join("cgroup.procs"), 0o644, gid.map(|_| 0)));
        paths.push((
            place.workers().join("cgroup.procs"),
            group_writes(0o664),
            gid,
        ));
    }
    paths.push((place.programs(), group_writes(PROGRAMS_MODE), gid));
    for (path, mode, group) in paths {
        if let Some(group) = group {
            std::os::unix::fs::chown(&path, Some(0), Some(group))
                .map_err(|e| failure(format!("chown(0, {group})"), &path, e))?;
        }
        fs::set_permissions(&path, Permissions::from_mode(mode))
            .map_err(|e| failure(format!("chmod({mode:o})"), &path, e))?;
    }
    Ok(())
}

/// One program's cgroup in one hierarchy, with the descriptors its worker lists and kills it
/// through: opened when it was made, so they work whatever the program does to the files it
/// owns (a chmod of its `cgroup.procs`, `cgroup.kill` or directory to 0).
#[derive(Debug)]
pub struct Cgroup {
    pub version: Version,
    pub dir: PathBuf,
    /// `cgroup.procs`, open for reading (None: read by its path).
    procs: Option<File>,
    /// cgroup v2: `cgroup.kill` (Linux 5.14), open for writing.
    kill: Option<File>,
}

impl Cgroup {
    /// A cgroup known by its path only (a dead worker's: the files are the worker user's, so
    /// their modes are set back first).
    pub fn at(version: Version, dir: PathBuf) -> Cgroup {
        Cgroup {
            version,
            dir,
            procs: None,
            kill: None,
        }
    }

    /// Opens the descriptors of a cgroup just made.
    pub fn open(version: Version, dir: PathBuf) -> Result<Cgroup, Failure> {
        let path = dir.join("cgroup.procs");
        let procs = File::open(&path).map_err(|e| failure("open()", &path, e))?;
        let kill = match version {
            Version::V2 => match OpenOptions::new().write(true).open(dir.join("cgroup.kill")) {
                Ok(f) => Some(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(failure("open()", &dir.join("cgroup.kill"), e)),
            },
            Version::V1 => None,
        };
        Ok(Cgroup {
            version,
            dir,
            procs: Some(procs),
            kill,
        })
    }

    /// The processes in it (nothing if it cannot be read).
    pub fn pids(&self) -> Vec<i32> {
        let mut text = String::new();
        let read = match self.procs.as_ref() {
            Some(mut f) => f
                .rewind()
                .and_then(|()| f.read_to_string(&mut text))
                .is_ok(),
            None => File::open(self.dir.join("cgroup.procs"))
                .and_then(|mut f| f.read_to_string(&mut text))
                .is_ok(),
        };
        if !read {
            return Vec::new();
        }
        text.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// `cgroup.kill`: whether it was written.
    fn kill_all(&self) -> bool {
        if self.version != Version::V2 {
            return false;
        }
        match self.kill.as_ref() {
            Some(mut f) => f.write_all(b"1").is_ok(),
            None => write(&self.dir.join("cgroup.kill"), "1").is_ok(),
        }
    }
}

/// A program's cgroups, one per place used.
#[derive(Debug)]
pub struct Made {
    /// Shared with the list of cgroups not removed yet (the removal may be retried later).
    pub cgroups: Rc<[Cgroup]>,
    /// Their `cgroup.procs`, open for the child to write "0" to (close-on-exec).
    procs: Vec<OwnedFd>,
    raw: Vec<RawFd>,
    /// The cgroup with the memory controller.
    pub memory: Option<(Version, PathBuf)>,
}

impl Made {
    /// The `cgroup.procs` descriptors, while open.
    pub fn procs(&self) -> &[RawFd] {
        &self.raw
    }

    /// Closes the `cgroup.procs` descriptors (the child has joined).
    pub fn close_procs(&mut self) {
        self.raw.clear();
        self.procs.clear();
    }
}

/// Makes the cgroup `name` of a program ([`DIR_MODE`]) in the places that hold a controller
/// `values` limits, writes the limits there, opens each `cgroup.procs` for the child to join
/// and keeps the descriptors the worker lists and kills it through. One that exists already is
/// a failure (EEXIST): it is not this program's, and may hold someone else's processes or
/// limits. On failure nothing it made is left.
pub fn make(places: &[Place], name: &str, values: &Values) -> Result<Made, Failure> {
    make_with(places, name, values, &mkdir)
}

/// [`make`], with the directory made by `mkdir` (tests: one that also makes the files the
/// kernel makes in a new cgroup).
pub fn make_with(
    places: &[Place],
    name: &str,
    values: &Values,
    mkdir: &dyn Fn(&Path) -> io::Result<()>,
) -> Result<Made, Failure> {
    let wanted = values.controllers();
    let mut cgroups: Vec<Cgroup> = Vec::new();
    let mut procs = Vec::new();
    let mut raw = Vec::new();
    let mut memory = None;
    for place in places {
        let here: Vec<Controller> = place
            .controllers
            .iter()
            .copied()
            .filter(|c| wanted.contains(c))
            .collect();
        if here.is_empty() {
            continue;
        }
        let dir = place.programs().join(name);
        let step = mkdir(&dir)
            .map_err(|e| failure("mkdir()", &dir, e))
            .and_then(|()| match Cgroup::open(place.version, dir.clone()) {
                Ok(c) => {
                    cgroups.push(c);
                    Ok(())
                }
                Err(f) => {
                    cgroups.push(Cgroup::at(place.version, dir.clone()));
                    Err(f)
                }
            })
            .and_then(|()| write_limits(place.version, &dir, &here, values))
            .and_then(|()| {
                let path = dir.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| failure("open()", &path, e))
            });
        match step {
            Ok(file) => {
                let fd = OwnedFd::from(file);
                raw.push(fd.as_raw_fd());
                procs.push(fd);
                if here.contains(&Controller::Memory) {
                    memory = Some((place.version, dir));
                }
            }
            Err(f) => {
                let _ = remove(&cgroups);
                return Err(f);
            }
        }
    }
    Ok(Made {
        cgroups: cgroups.into(),
        procs,
        raw,
        memory,
    })
}

/// The limit files of `controllers` in a program's cgroup.
fn write_limits(
    version: Version,
    dir: &Path,
    controllers: &[Controller],
    v: &Values,
) -> Result<(), Failure> {
    for &c in controllers {
        match c {
            Controller::Memory => {
                let Some(m) = v.memory_max else { continue };
                let m = m.to_string();
                if version == Version::V2 {
                    write(&dir.join("memory.max"), &m)?;
                    // No swapping around the limit (the file is there with swap accounting).
                    write_if_there(&dir.join("memory.swap.max"), "0")?;
                } else {
                    write(&dir.join("memory.limit_in_bytes"), &m)?;
                    // Memory plus swap: the same limit, so none of it is swap.
                    write_if_there(&dir.join("memory.memsw.limit_in_bytes"), &m)?;
                }
            }
            Controller::Pids => {
                let Some(n) = v.pids_max else { continue };
                write(&dir.join("pids.max"), &n.to_string())?;
            }
            Controller::Cpu => {
                let Some(p) = v.cpu_max else { continue };
                if version == Version::V2 {
                    write(
                        &dir.join("cpu.max"),
                        &format!("{} {PERIOD_US}", quota_us(p)),
                    )?;
                } else {
                    write(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                    write(&dir.join("cpu.cfs_quota_us"), &quota_us(p).to_string())?;
                }
            }
        }
    }
    Ok(())
}

/// Whether a kernel release ("6.1.0-18-amd64") is `at_least` (major, minor).
pub fn release_at_least(release: &str, at_least: (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= at_least
}

/// The CPU time per period for `percent` of one CPU.
pub fn quota_us(percent: u32) -> u64 {
    u64::from(percent) * PERIOD_US / 100
}

/// SIGKILL to every process of the cgroups: `cgroup.kill` (cgroup v2, Linux 5.14) where it is
/// there, else each process listed (cgroup v1), in one pass: one listing and at most pids.max
/// kill() calls per hierarchy, however fast the processes fork. A process forked meanwhile (a
/// fork bomb's) is caught by the next call: a busy cgroup's removal is retried later, and
/// kills again. Returns how many processes besides `except` were in them.
pub fn kill(cgroups: &[Cgroup], except: Option<i32>) -> usize {
    let mut seen: Vec<i32> = Vec::new();
    let mut killed: Vec<i32> = Vec::new();
    for cgroup in cgroups {
        let listed = cgroup.pids();
        for &p in &listed {
            if Some(p) != except && !seen.contains(&p) {
                seen.push(p);
            }
        }
        if cgroup.kill_all() {
            continue;
        }
        // (A program's processes are in each of its v1 hierarchies: each gets one SIGKILL.)
        for p in listed {
            if killed.contains(&p) {
                continue;
            }
            killed.push(p);
            if let Some(pid) = rustix::process::Pid::from_raw(p) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
    seen.len()
}

/// Removes the cgroups; the first failure if one is still there (busy: its killed processes are
/// not gone yet, or a cgroup was made in it).
pub fn remove(cgroups: &[Cgroup]) -> Result<(), Failure> {
    let mut first = None;
    for cgroup in cgroups {
        match fs::remove_dir(&cgroup.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                first.get_or_insert_with(|| failure("rmdir()", &cgroup.dir, e));
            }
        }
    }
    first.map_or(Ok(()), Err)
}

/// How many processes the memory limit killed in a program's cgroup: `oom_kill` in
/// `memory.events.local` (cgroup v2, Linux 5.7: this cgroup's own, not its descendants'; a
/// program's cgroup has none unless it makes them), else `memory.events`, or v1's
/// `memory.oom_control`. The victims may be any process of the cgroup, not only the program.
pub fn oom_kills(version: Version, dir: &Path) -> u64 {
    let files: &[&str] = match version {
        Version::V2 => &["memory.events.local", "memory.events"],
        Version::V1 => &["memory.oom_control"],
    };
    files
        .iter()
        .find_map(|file| fs::read_to_string(dir.join(file)).ok())
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// What [`sweep`] did: how many cgroups it removed, those it could not (busy), and the
/// directories in `programs/` that are no program's cgroup (left alone).
#[derive(Debug, Default)]
pub struct Swept {
    pub removed: usize,
    pub busy: Vec<Failure>,
    pub strange: Vec<PathBuf>,
}

/// At a worker's start (`own`: its pid; it has made no cgroup yet): the cgroups of programs
/// whose worker is gone (killed before it removed them), and those named after `own` (left by
/// an earlier worker with the same pid): their processes are killed and they are removed.
pub fn sweep(places: &[Place], own: i32, alive: impl Fn(i32) -> bool) -> Swept {
    let mut swept = Swept::default();
    for place in places {
        let Ok(entries) = fs::read_dir(place.programs()) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.split_once('-'))
                .filter(|(_, n)| n.parse::<u64>().is_ok())
                .and_then(|(p, _)| p.parse::<i32>().ok());
            if !entry.path().is_dir() {
                continue;
            }
            let Some(pid) = pid else {
                swept.strange.push(entry.path());
                continue;
            };
            if pid != own && alive(pid) {
                continue;
            }
            // (Its program may have taken the modes away; the files are the worker user's.)
            let dir = entry.path();
            let _ = fs::set_permissions(&dir, Permissions::from_mode(0o755));
            for (file, mode) in [("cgroup.procs", 0o644), ("cgroup.kill", 0o200)] {
                let _ = fs::set_permissions(dir.join(file), Permissions::from_mode(mode));
            }
            match kill_and_remove(&[Cgroup::at(place.version, dir)]) {
                Ok(()) => swept.removed += 1,
                Err(f) => swept.busy.push(f),
            }
        }
    }
    swept
}

/// How long [`kill_and_remove`] waits for killed processes to be gone: rounds of 2 ms.
pub const WAIT_ROUNDS: usize = 50;

/// Removes the cgroups, killing what is in them and waiting up to [`WAIT_ROUNDS`] × 2 ms for
/// it to be gone (at a worker's start or exit, which serve no request meanwhile).
pub fn kill_and_remove(cgroups: &[Cgroup]) -> Result<(), Failure> {
    let mut round = 0;
    loop {
        match remove(cgroups) {
            Err(_) if round < WAIT_ROUNDS => {
                kill(cgroups, None);
                std::thread::sleep(std::time::Duration::from_millis(2));
                round += 1;
            }
            done => return done,
        }
    }
}
