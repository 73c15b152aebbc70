//! The sandbox (issue 13): `transform_sandbox_paths` (Landlock), `transform_sandbox_syscalls`
//! (seccomp) and `transform_sandbox_namespaces`, each on and off. The programs are the test
//! helper's probes: each prints `ok ...` or the errno that stopped it, so a response body says
//! what the program could do. An "off" location runs the very same probe without the directive
//! and must succeed: a probe that fails for another reason cannot pass for a sandbox.
//!
//! (cgroup limits, `transform_cgroup`, are tested in their own file.)

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const WRAP: &str = env!("CARGO_BIN_EXE_transform-seccomp-wrap");

/// nginx as on a kernel without Landlock: under transform-seccomp-wrap, with
/// `landlock_create_ruleset` failing with ENOSYS (in nginx, its workers and their programs).
fn without_landlock() -> Command {
    without_landlock_errno("ENOSYS")
}

/// As [`without_landlock`], the call failing with `errno` (`95`, EOPNOTSUPP: Landlock built in
/// but disabled at boot).
fn without_landlock_errno(errno: &str) -> Command {
    let mut cmd = Command::new(WRAP);
    cmd.arg(format!("landlock_create_ruleset={errno}"))
        .arg("--")
        .arg(nginx_binary());
    cmd
}

/// What every sandboxed helper needs to start: its libraries and loader (under /usr: /lib and
/// /lib64 are links into it on this system, and Landlock sees the resolved path), the loader's
/// cache, and the helper's own directory.
fn base_paths() -> String {
    let helper_dir = Path::new(HELPER).parent().expect("helper directory");
    format!("/usr /etc/ld.so.cache {}", helper_dir.display())
}

/// The Landlock ABI of the running kernel (`landlock_create_ruleset(NULL, 0,
/// LANDLOCK_CREATE_RULESET_VERSION)`), or None without Landlock.
fn landlock_abi() -> Option<i64> {
    // SAFETY: the version query takes no memory (NULL attributes, size 0).
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32,
        )
    };
    (v > 0).then_some(v)
}

/// A directory tree for the Landlock tests, open to the workers' user (`nobody` under root) so
/// that only the sandbox can stop a probe:
/// - `ro/inside.txt`: readable and writable by all (the tests allow `ro` read-only); `ro` itself
///   is writable by all;
/// - `rw/`: writable by all (allowed `rw=`);
/// - `outside/` (writable by all) with `secret.txt` and `true` (a copy of /usr/bin/true),
///   readable and executable by all: never allowed;
/// - `html/page.html`: a static page for the filter tests.
struct Tree {
    dir: PathBuf,
}

impl Tree {
    fn new() -> Tree {
        let dir = temp_dir("sandbox-tree");
        for sub in ["ro", "rw", "outside", "html"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(dir.join("ro/inside.txt"), "inside\n").unwrap();
        std::fs::write(dir.join("outside/secret.txt"), "secret\n").unwrap();
        std::fs::write(dir.join("html/page.html"), "<p>page</p>\n").unwrap();
        std::fs::copy("/usr/bin/true", dir.join("outside/true")).unwrap();
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        mode(&dir, 0o755);
        mode(&dir.join("ro"), 0o777);
        mode(&dir.join("rw"), 0o777);
        mode(&dir.join("outside"), 0o777);
        mode(&dir.join("html"), 0o755);
        mode(&dir.join("outside/true"), 0o755);
        // inside.txt writable by all: only the sandbox keeps a program from writing it.
        mode(&dir.join("ro/inside.txt"), 0o666);
        for f in ["outside/secret.txt", "html/page.html"] {
            mode(&dir.join(f), 0o644);
        }
        Tree { dir }
    }

    fn path(&self, rel: &str) -> String {
        self.dir.join(rel).display().to_string()
    }

    /// The Landlock paths of the tests: the base, `ro` read-only, `rw` read-write.
    fn paths(&self) -> String {
        format!(
            "transform_sandbox_paths {} {} rw={};",
            base_paths(),
            self.path("ro"),
            self.path("rw")
        )
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A server whose locations `/on/` (with the `sandbox` directives) and `/off/` (without) both
/// run the helper probe named by `?m=` with the one argument `&a=`.
fn on_off_server(sandbox: &str, more: &str) -> String {
    format!(
        "server {{ listen 127.0.0.1:{{PORT}}; default_type text/plain;
           location /on/ {{ {sandbox} transform_exec {{HELPER}} $arg_m $arg_a; }}
           location /off/ {{ transform_sandbox_paths off; transform_sandbox_syscalls none;
                             transform_exec {{HELPER}} $arg_m $arg_a; }}
           {more} }}"
    )
}

/// The body of a GET that must answer 200, trimmed.
#[track_caller]
fn body(nginx: &Nginx, path: &str) -> String {
    let r = Client::connect(nginx.port).get(path);
    assert_eq!(
        r.status,
        200,
        "GET {path}: {}\n{}",
        String::from_utf8_lossy(&r.body),
        nginx.log_lines("error").join("\n")
    );
    String::from_utf8_lossy(&r.body).trim_end().to_string()
}

/// Runs probe `mode` with `arg` in `/on/` and `/off/`; returns both lines.
#[track_caller]
fn on_off(nginx: &Nginx, mode: &str, arg: &str) -> (String, String) {
    let q = format!("?m={mode}&a={arg}");
    (
        body(nginx, &format!("/on/{q}")),
        body(nginx, &format!("/off/{q}")),
    )
}

/// Asserts the probe is stopped with `errno` by the sandbox and succeeds without it.
#[track_caller]
fn blocked(nginx: &Nginx, mode: &str, arg: &str, errno: &str) {
    let (on, off) = on_off(nginx, mode, arg);
    assert_eq!(on, errno, "{mode} {arg} in the sandbox");
    assert!(
        off.starts_with("ok"),
        "{mode} {arg} without a sandbox: {off}"
    );
}

/// Asserts the probe succeeds in the sandbox and out of it.
#[track_caller]
fn allowed(nginx: &Nginx, mode: &str, arg: &str) {
    let (on, off) = on_off(nginx, mode, arg);
    assert!(on.starts_with("ok"), "{mode} {arg} in the sandbox: {on}");
    assert!(
        off.starts_with("ok"),
        "{mode} {arg} without a sandbox: {off}"
    );
}

#[test]
fn landlock_paths_allow_what_they_list_and_nothing_else() {
    let tree = Tree::new();
    let nginx = Nginx::start(&on_off_server(&tree.paths(), ""));
    // Reading.
    blocked(
        &nginx,
        "read-file",
        &tree.path("outside/secret.txt"),
        "EACCES",
    );
    blocked(&nginx, "read-file", "/etc/passwd", "EACCES");
    allowed(&nginx, "read-file", &tree.path("ro/inside.txt"));
    allowed(&nginx, "read-file", &tree.path("rw/../ro/inside.txt"));
    // Writing: not under a read-only path, yes under rw=.
    blocked(&nginx, "write-file", &tree.path("ro/new.txt"), "EACCES");
    blocked(&nginx, "write-file", &tree.path("ro/inside.txt"), "EACCES");
    blocked(
        &nginx,
        "write-file",
        &tree.path("outside/new.txt"),
        "EACCES",
    );
    allowed(&nginx, "write-file", &tree.path("rw/new.txt"));
    assert_eq!(std::fs::read(tree.dir.join("rw/new.txt")).unwrap(), b"ok\n");
    // Executing: what is beneath an allowed path, not what is outside.
    blocked(&nginx, "exec", &tree.path("outside/true"), "EACCES");
    allowed(&nginx, "exec", "/usr/bin/true");
    // A program still reads and writes its standard descriptors (opened before the sandbox).
    assert_eq!(body(&nginx, "/on/?m=pid").split(' ').next(), Some("ok"));
    nginx.stop();
}

#[test]
fn landlock_paths_are_inherited_and_a_lower_level_replaces_them() {
    let tree = Tree::new();
    let secret = tree.path("outside/secret.txt");
    let inside = tree.path("ro/inside.txt");
    let nginx = Nginx::start(&format!(
        "server {{ listen 127.0.0.1:{{PORT}}; default_type text/plain; {paths}
           location /inherited {{ transform_exec {{HELPER}} read-file $arg_a; }}
           location /off {{ transform_sandbox_paths off; transform_exec {{HELPER}} read-file $arg_a; }}
           location /narrower {{ transform_sandbox_paths {base};
                                transform_exec {{HELPER}} read-file $arg_a; }}
           location /outer/ {{ transform_sandbox_paths off;
               location /outer/inner {{ transform_exec {{HELPER}} read-file $arg_a; }} }}
         }}",
        paths = tree.paths(),
        base = base_paths(),
    ));
    assert_eq!(body(&nginx, &format!("/inherited?a={secret}")), "EACCES");
    assert_eq!(body(&nginx, &format!("/inherited?a={inside}")), "ok read 7");
    assert_eq!(body(&nginx, &format!("/off?a={secret}")), "ok read 7");
    assert_eq!(body(&nginx, &format!("/narrower?a={inside}")), "EACCES");
    assert_eq!(
        body(&nginx, &format!("/outer/inner?a={secret}")),
        "ok read 7"
    );
    nginx.stop();
}

#[test]
fn landlock_paths_may_name_single_files() {
    let tree = Tree::new();
    let secret = tree.path("outside/secret.txt");
    let nginx = Nginx::start(&format!(
        "server {{ listen 127.0.0.1:{{PORT}}; default_type text/plain;
           location / {{ transform_sandbox_paths {base} {secret} rw=/dev/null;
                        transform_exec {{HELPER}} $arg_m $arg_a; }} }}",
        base = base_paths(),
    ));
    assert_eq!(
        body(&nginx, &format!("/?m=read-file&a={secret}")),
        "ok read 7"
    );
    assert_eq!(
        body(&nginx, &format!("/?m=write-file&a={secret}")),
        "EACCES"
    );
    assert_eq!(
        body(&nginx, &format!("/?m=exec&a={}", tree.path("outside/true"))),
        "EACCES"
    );
    assert_eq!(body(&nginx, "/?m=write-file&a=/dev/null"), "ok wrote 3");
    assert_eq!(body(&nginx, "/?m=read-file&a=/dev/zero"), "EACCES");
    nginx.stop();
}

#[test]
fn a_program_outside_the_allowed_paths_cannot_start() {
    let nginx = Nginx::start(
        "server { listen 127.0.0.1:{PORT};
           location /nohelper { transform_sandbox_paths /usr /etc/ld.so.cache;
                                transform_exec {HELPER} pid; }
           location /nolibs { transform_sandbox_paths /usr/bin;
                              transform_exec /usr/bin/true; } }",
    );
    let r = Client::connect(nginx.port).get("/nohelper");
    assert_eq!(r.status, 502);
    let errors = nginx.log_lines("error");
    let want = format!("execve() \"{HELPER}\" failed (13: Permission denied)");
    assert!(
        errors.iter().any(|l| l.contains(&want)),
        "{want}: {errors:?}"
    );
    // Its libraries out of reach: the loader fails (exit 127), before any output.
    let r = Client::connect(nginx.port).get("/nolibs");
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    nginx.stop();
}

#[test]
fn seccomp_default_profile_blocks_network_ptrace_and_namespaces() {
    let nginx = Nginx::start(&on_off_server("transform_sandbox_syscalls default;", ""));
    blocked(&nginx, "socket-inet", "", "EPERM");
    allowed(&nginx, "socket-unix", "");
    blocked(&nginx, "ptrace-child", "", "EPERM");
    // nginx makes its workers dumpable again after setuid (PR_SET_DUMPABLE, for core files):
    // without a sandbox a program may trace its worker and read its memory (TLS keys), unless
    // Yama's ptrace_scope forbids tracing a parent.
    let (on, off) = on_off(&nginx, "ptrace-parent", "");
    assert_eq!(on, "EPERM", "ptrace of the worker in the sandbox");
    let yama = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").unwrap_or_default();
    if matches!(yama.trim(), "" | "0") {
        assert_eq!(off, "ok ptrace", "ptrace of the worker without a sandbox");
    }
    // clone3 fails with ENOSYS (glibc falls back to clone): its raw call shows it.
    let (on, off) = on_off(&nginx, "clone3", "");
    assert_eq!(on, "ENOSYS", "clone3 in the sandbox");
    assert_ne!(off, "ENOSYS", "clone3 without a sandbox");
    // What still works: threads, fork, exec, files.
    allowed(&nginx, "thread", "");
    allowed(&nginx, "fork-bomb", "20");
    allowed(&nginx, "exec", "/usr/bin/true");
    allowed(&nginx, "read-file", "/etc/passwd");
    allowed(&nginx, "write-file", "/dev/null");
    nginx.stop();
}

#[test]
fn seccomp_default_profile_unshare_is_refused() {
    // unshare(1) -U, run by the helper's `exec`: its exit status says whether unshare() worked.
    let nginx = Nginx::start(
        "server { listen 127.0.0.1:{PORT}; default_type text/plain;
           location /on { transform_sandbox_syscalls default;
                          transform_exec {HELPER} exec /usr/bin/unshare -U /usr/bin/true; }
           location /off { transform_sandbox_syscalls none;
                           transform_exec {HELPER} exec /usr/bin/unshare -U /usr/bin/true; } }",
    );
    assert_eq!(
        body(&nginx, "/off"),
        "ok exit 0",
        "unshare -U without a sandbox"
    );
    assert_eq!(
        body(&nginx, "/on"),
        "ok exit 1",
        "unshare -U in the sandbox"
    );
    nginx.stop();
}

#[cfg(target_arch = "x86_64")]
#[test]
fn seccomp_default_profile_kills_a_foreign_architecture_system_call() {
    let nginx = Nginx::start(&on_off_server("transform_sandbox_syscalls default;", ""));
    let off = Client::connect(nginx.port).get("/off/?m=int80");
    let off_body = String::from_utf8_lossy(&off.body).trim_end().to_string();
    let r = Client::connect(nginx.port).get("/on/?m=int80");
    assert_eq!(r.status, 502, "int 0x80 in the sandbox: {:?}", r.body);
    let errors = nginx.log_lines("error");
    assert!(
        errors.iter().any(|l| l.contains("(SIGSYS)")),
        "the program killed by SIGSYS: {errors:?}"
    );
    // Without the sandbox the i386 getpid answers (when the kernel runs 32-bit calls at all).
    assert!(
        off.status == 502 || off_body.starts_with("ok int80 "),
        "{off_body}"
    );
    nginx.stop();
}

#[test]
fn a_sandboxed_program_streams_byte_exact_on_both_transports() {
    let tree = Tree::new();
    let size = 32 * 1024 * 1024;
    let sandbox = format!(
        "{} transform_sandbox_syscalls default; transform_sandbox_namespaces user pid ipc uts;",
        tree.paths()
    );
    let nginx = Nginx::start(&format!(
        "server {{ listen 127.0.0.1:{{PORT}}; {sandbox}
           location /splice {{ transform_exec {{HELPER}} gen {size}; }}
           location /buffered {{ transform_splice off; transform_exec {{HELPER}} gen {size}; }}
           location /threads {{ transform_exec {{HELPER}} thread; }} }}"
    ));
    let expect = sha256(&helper_output(&["gen", &size.to_string()]));
    for path in ["/splice", "/buffered"] {
        let r = Client::connect(nginx.port).get(path);
        assert_eq!(r.status, 200, "{path}");
        assert!(r.complete, "{path}");
        assert_eq!(r.body.len(), size, "{path}");
        assert_eq!(sha256(&r.body), expect, "{path}");
    }
    assert_eq!(body(&nginx, "/threads"), "ok thread");
    nginx.stop();
}

#[test]
fn landlock_scope_keeps_the_program_from_signalling_the_worker() {
    let Some(abi) = landlock_abi() else {
        panic!("this kernel has no Landlock: the scope test needs it (ABI >= 6)");
    };
    let tree = Tree::new();
    let nginx = Nginx::start(&on_off_server(
        &tree.paths(),
        "location /seccomp/ { transform_sandbox_syscalls default;
                              transform_exec {HELPER} $arg_m $arg_a; }",
    ));
    let (on, off) = on_off(&nginx, "kill-parent", "");
    assert_eq!(
        off, "ok kill",
        "the worker's own program may signal it without a sandbox"
    );
    if abi >= 6 {
        assert_eq!(on, "EPERM", "Landlock ABI {abi} scopes signals");
    } else {
        eprintln!("Landlock ABI {abi} < 6: no signal scoping; kill-parent gives {on}");
    }
    // The seccomp profile alone puts the program in a Landlock domain of its own, with no file
    // rule: signals to the worker are scoped too.
    let expect = if abi >= 6 { "EPERM" } else { "ok kill" };
    assert_eq!(body(&nginx, "/seccomp/?m=kill-parent"), expect);
    assert_eq!(body(&nginx, "/seccomp/?m=ptrace-parent"), "EPERM");
    // Nor can it write the worker's memory through /proc (no system call filter sees that).
    let (on, off) = on_off(&nginx, "parent-mem", "");
    assert_eq!(
        off, "ok mem",
        "without a sandbox the worker's memory is open to its program"
    );
    assert_eq!(on, "EACCES");
    assert_eq!(body(&nginx, "/seccomp/?m=parent-mem"), "EACCES");
    // Nor change its limits or its priority (same-user calls no Landlock hook sees): the
    // profile refuses them for any process but the caller.
    for (mode, ok) in [("prlimit-parent", "ok prlimit"), ("nice-parent", "ok nice")] {
        let (_, off) = on_off(&nginx, mode, "");
        assert_eq!(off, ok, "{mode} without a sandbox");
        assert_eq!(
            body(&nginx, &format!("/seccomp/?m={mode}")),
            "EPERM",
            "{mode}"
        );
    }
    // Abstract UNIX sockets outside the sandbox are out of reach too (ABI 6); the seccomp
    // profile allows AF_UNIX.
    use std::os::linux::net::SocketAddrExt;
    let name = format!("transform-test-sandbox-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    let (on, off) = on_off(&nginx, "connect-abstract", &name);
    assert_eq!(off, "ok connected");
    if abi >= 6 {
        assert_eq!(
            on, "EPERM",
            "Landlock ABI {abi} scopes abstract UNIX sockets"
        );
    }
    // (The seccomp profile allows AF_UNIX; its Landlock domain scopes abstract sockets.)
    let expect = if abi >= 6 { "EPERM" } else { "ok connected" };
    assert_eq!(
        body(&nginx, &format!("/seccomp/?m=connect-abstract&a={name}")),
        expect
    );
    drop(listener);
    // Landlock keeps a sandboxed program from tracing what is outside its domain (every ABI),
    // not its own child.
    assert_eq!(body(&nginx, "/on/?m=ptrace-parent"), "EPERM");
    assert_eq!(body(&nginx, "/on/?m=ptrace-child"), "ok ptrace");
    nginx.stop();
}

#[test]
fn namespaces_net_pid_user_and_off_by_default() {
    let nginx = Nginx::start(
        "server { listen 127.0.0.1:{PORT}; default_type text/plain;
           location /net/ { transform_sandbox_namespaces user net;
                            transform_exec {HELPER} $arg_m $arg_a; }
           location /pid/ { transform_sandbox_namespaces user pid;
                            transform_exec {HELPER} $arg_m $arg_a; }
           location /user/ { transform_sandbox_namespaces user;
                             transform_exec /bin/cat /proc/self/uid_map; }
           location /default/ { transform_exec {HELPER} $arg_m $arg_a; }
           location /default-map/ { transform_exec /bin/cat /proc/self/uid_map; }
           location /all/ { transform_sandbox_namespaces user pid ipc net mount uts;
                            transform_exec {HELPER} $arg_m $arg_a; }
           location /off/ { transform_sandbox_namespaces off;
                            transform_exec {HELPER} $arg_m $arg_a; } }",
    );
    let port = nginx.port;
    let connect = format!("?m=socket-inet&a=127.0.0.1:{port}");
    // No network in a new network namespace: only a loopback, and down.
    let net = body(&nginx, &format!("/net/{connect}"));
    assert!(
        !net.starts_with("ok connected"),
        "connected out of a network namespace: {net}"
    );
    assert_eq!(net, "ENETUNREACH");
    assert_eq!(body(&nginx, &format!("/default/{connect}")), "ok connected");
    assert_eq!(body(&nginx, &format!("/off/{connect}")), "ok connected");
    // pid 1 of its own pid namespace.
    assert_eq!(body(&nginx, "/pid/?m=pid"), "ok pid 1");
    // All six at once: the program runs, alone.
    assert_eq!(body(&nginx, "/all/?m=pid"), "ok pid 1");
    assert_eq!(body(&nginx, &format!("/all/{connect}")), "ENETUNREACH");
    assert_eq!(body(&nginx, "/all/?m=thread"), "ok thread");
    assert_eq!(body(&nginx, "/all/?m=fork-bomb&a=10"), "ok forked 10");
    for path in ["/default/?m=pid", "/off/?m=pid", "/net/?m=pid"] {
        let pid = body(&nginx, path);
        assert!(
            pid.starts_with("ok pid ") && pid != "ok pid 1",
            "{path}: {pid}"
        );
    }
    // A new user namespace without a uid map; none by default.
    assert_eq!(body(&nginx, "/user/"), "");
    let map = body(&nginx, "/default-map/");
    assert!(
        map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"],
        "{map}"
    );
    nginx.stop();
}

#[test]
fn namespaces_do_not_lift_the_process_limit() {
    // RLIMIT_NPROC counts the worker's user's processes, also from a user namespace of its own.
    let nginx = Nginx::start(
        "server { listen 127.0.0.1:{PORT}; default_type text/plain; transform_rlimit nproc 64;
           location /plain { transform_exec {HELPER} fork-bomb 200; }
           location /ns { transform_sandbox_namespaces user pid;
                          transform_exec {HELPER} fork-bomb 200; } }",
    );
    assert_eq!(body(&nginx, "/plain"), "EAGAIN");
    assert_eq!(body(&nginx, "/ns"), "EAGAIN");
    nginx.stop();
}

#[test]
fn a_pid_namespace_program_that_ignores_sigterm_is_killed_after_the_kill_timeout() {
    // pid 1 ignores SIGTERM unless it handles it: stopping it takes transform_kill_timeout, then
    // SIGKILL; the response is a 504 and no process is left.
    let nginx = Nginx::start(
        "server { listen 127.0.0.1:{PORT};
           location /hang { transform_sandbox_namespaces user pid; transform_timeout 1s;
                            transform_kill_timeout 300ms;
                            transform_exec {HELPER} hang-after 0; } }",
    );
    let worker = nginx.worker_pid();
    let start = Instant::now();
    let r = Client::connect(nginx.port).get("/hang");
    assert_eq!(r.status, 504);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(3), || children_of(worker).is_empty()),
        "programs left: {:?}",
        children_of(worker)
    );
    nginx.stop();
}

/// The lines that say what `transform_sandbox_paths` gets from the kernel.
fn abi_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("transform_sandbox_paths: Landlock ABI"))
        .map(String::from)
        .collect()
}

/// `nginx -t` says once per configuration what Landlock enforces, as a `[notice]`: nginx writes
/// a notice of the configuration's reading to the prefix's `logs/error.log` (its terminal only
/// gets warnings and worse), and so does the start-up.
#[test]
fn a_pid_namespace_takes_the_program_s_descendants_with_it() {
    // A grandchild holding stdout past its program's exit: in a pid namespace the kernel kills
    // it when the program (pid 1) exits, and the response ends.
    let nginx = Nginx::start(
        "server { listen 127.0.0.1:{PORT};
           location /gc { transform_sandbox_namespaces user pid;
                          transform_exec {HELPER} grandchild 1000; } }",
    );
    let worker = nginx.worker_pid();
    let start = Instant::now();
    let r = Client::connect(nginx.port).get("/gc");
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(r.body, helper_output(&["gen", "1000"]));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(3), || children_of(worker).is_empty()),
        "{:?}",
        children_of(worker)
    );
    nginx.stop();
}

#[test]
fn nginx_t_and_the_start_up_name_the_landlock_abi_once() {
    let Some(abi) = landlock_abi() else {
        panic!("this kernel has no Landlock: this test needs it");
    };
    let tree = Tree::new();
    let body = format!(
        "server {{ listen 127.0.0.1:{{PORT}};
           location /a {{ {paths} transform_exec /bin/true; }}
           location /b {{ {paths} transform_exec /bin/true; }} }}",
        paths = tree.paths()
    );
    let (ok, stderr, path) = nginx_test_config(&body);
    let prefix = path.parent().expect("prefix").to_path_buf();
    let log = std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default();
    std::fs::remove_dir_all(prefix).ok();
    assert!(ok, "{stderr}");
    let want = format!("Landlock ABI {abi} enforced by this kernel: ");
    let lines = abi_lines(&log);
    assert_eq!(lines.len(), 1, "nginx -t: {log}\n{stderr}");
    assert!(
        lines[0].contains("[notice]") && lines[0].contains(&want),
        "{}",
        lines[0]
    );
    eprintln!("nginx -t on its terminal:\n{stderr}");
    let nginx = Nginx::start(&body);
    let lines = abi_lines(&nginx.error_log());
    assert_eq!(lines.len(), 1, "start-up: {lines:?}");
    assert!(
        lines[0].contains("[notice]") && lines[0].contains(&want),
        "{}",
        lines[0]
    );
    nginx.stop();
    // Without transform_sandbox_paths, nothing is said.
    let (ok, stderr, path) = nginx_test_config(&unsandboxed(
        "checks the absence of the Landlock line",
        "server { listen 127.0.0.1:{PORT}; location / { transform_exec /bin/true; } }",
    ));
    let prefix = path.parent().expect("prefix").to_path_buf();
    let log = std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default();
    std::fs::remove_dir_all(prefix).ok();
    assert!(ok, "{stderr}");
    assert!(abi_lines(&log).is_empty(), "{log}");
}

/// nginx started as on a kernel without Landlock ([`without_landlock`]).
struct Wrapped {
    prefix: PathBuf,
    port: u16,
    master: Child,
}

impl Wrapped {
    fn start(http_body: &str) -> Wrapped {
        let prefix = temp_dir("sandbox-wrap");
        let port = free_port();
        let conf = prefix.join("nginx.conf");
        std::fs::write(&conf, config(&prefix, port, "", http_body)).expect("write conf");
        let master = without_landlock()
            .arg("-p")
            .arg(&prefix)
            .arg("-e")
            .arg(prefix.join("logs/error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(prefix.join("logs/stderr.log")).expect("stderr"))
            .spawn()
            .expect("start nginx without Landlock");
        let mut w = Wrapped {
            prefix,
            port,
            master,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = w.master.try_wait().ok().flatten();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "nginx did not start ({exited:?}):\n{}\n{}",
                w.file("logs/stderr.log"),
                w.file("logs/error.log")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        w
    }

    fn file(&self, rel: &str) -> String {
        std::fs::read_to_string(self.prefix.join(rel)).unwrap_or_default()
    }

    fn body(&self, path: &str) -> String {
        let r = Client::connect(self.port).get(path);
        assert_eq!(r.status, 200, "GET {path}: {:?}", r.body);
        String::from_utf8_lossy(&r.body).trim_end().to_string()
    }
}

impl Drop for Wrapped {
    fn drop(&mut self) {
        // SAFETY: signalling our own child process (SIGQUIT: a graceful stop).
        unsafe { libc::kill(self.master.id() as i32, libc::SIGQUIT) };
        let _ = self.master.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.prefix);
        }
    }
}

#[test]
fn without_landlock_nginx_starts_with_one_loud_warning_and_programs_run() {
    let tree = Tree::new();
    let secret = tree.path("outside/secret.txt");
    let w = Wrapped::start(&format!(
        "server {{ listen 127.0.0.1:{{PORT}}; default_type text/plain;
               location /a {{ {paths} transform_exec {{HELPER}} $arg_m $arg_a; }}
               location /b {{ {paths} transform_sandbox_syscalls default;
                             transform_exec {{HELPER}} $arg_m $arg_a; }} }}",
        paths = tree.paths()
    ));
    // Not enforced: the program reads what the paths would have kept from it...
    assert_eq!(w.body(&format!("/a?m=read-file&a={secret}")), "ok read 7");
    // ...and the seccomp profile still applies.
    assert_eq!(w.body("/b?m=socket-inet"), "EPERM");
    let log = w.file("logs/error.log");
    let warns: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("is NOT enforced: this kernel has no Landlock"))
        .collect();
    assert_eq!(warns.len(), 1, "one warning:\n{log}");
    assert!(warns[0].contains("[warn]"), "{}", warns[0]);
    assert!(!log.contains("Landlock ABI"), "no ABI claimed:\n{log}");
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("[alert]") || l.contains("[crit]") || l.contains("[emerg]"))
        .collect();
    assert!(bad.is_empty(), "{bad:?}");
    drop(w);
    // nginx -t says it too, and succeeds; so does a kernel with Landlock disabled (EOPNOTSUPP).
    for errno in ["ENOSYS", "95"] {
        nginx_t_without_landlock(&tree, errno);
    }
}

fn nginx_t_without_landlock(tree: &Tree, errno: &str) {
    let prefix = temp_dir("sandbox-wrap-t");
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        config(
            &prefix,
            free_port(),
            "",
            &format!(
                "server {{ listen 127.0.0.1:{{PORT}};
                   location / {{ {} transform_exec /bin/true; }} }}",
                tree.paths()
            ),
        ),
    )
    .unwrap();
    let out = without_landlock_errno(errno)
        .arg("-t")
        .arg("-p")
        .arg(&prefix)
        .arg("-e")
        .arg(prefix.join("logs/error.log"))
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains("is NOT enforced: this kernel has no Landlock"))
            .count(),
        1,
        "{errno}: {stderr}"
    );
    std::fs::remove_dir_all(prefix).ok();
}

/// Reloads nginx (SIGHUP) and waits for the old worker to be gone and one new one to run.
fn reload(nginx: &Nginx) {
    let old = nginx.worker_pid();
    // SAFETY: signalling our own nginx master.
    unsafe { libc::kill(nginx.master_pid() as i32, libc::SIGHUP) };
    assert!(
        wait_until(Duration::from_secs(10), || {
            let w = nginx.worker_pids();
            w.len() == 1 && w[0] != old && proc_state(old).is_none()
        }),
        "no new worker after the reload: {:?}",
        nginx.worker_pids()
    );
}

#[test]
fn the_sandbox_survives_a_reload() {
    let tree = Tree::new();
    let nginx = Nginx::start(&on_off_server(
        &format!("{} transform_sandbox_syscalls default;", tree.paths()),
        "",
    ));
    let secret = tree.path("outside/secret.txt");
    let check = |nginx: &Nginx| {
        blocked(nginx, "read-file", &secret, "EACCES");
        blocked(nginx, "socket-inet", "", "EPERM");
        allowed(nginx, "read-file", &tree.path("ro/inside.txt"));
    };
    check(&nginx);
    let master = nginx.master_pid();
    reload(&nginx);
    check(&nginx);
    // Each configuration has its own rulesets: the old one's are closed with it (the master's
    // descriptors do not grow with reloads).
    let after_one = fd_count(master);
    for _ in 0..5 {
        reload(&nginx);
    }
    check(&nginx);
    assert_eq!(
        fd_count(master),
        after_one,
        "the master's descriptors after 5 more reloads"
    );
    // Each configuration said once what Landlock enforces.
    let notices = abi_lines(&nginx.error_log()).len();
    assert_eq!(notices, 7, "a notice per configuration");
    nginx.stop();
}

#[test]
fn filter_programs_use_their_location_sandbox() {
    let tree = Tree::new();
    let secret = tree.path("outside/secret.txt");
    let nginx = Nginx::start(&format!(
        "server {{ listen 127.0.0.1:{{PORT}}; root {html};
           location /on/ {{ alias {html}/; {paths} transform_sandbox_syscalls default;
                            transform_filter {{HELPER}} $arg_m $arg_a; }}
           location /off/ {{ alias {html}/; transform_sandbox_paths off;
                             transform_filter {{HELPER}} $arg_m $arg_a; }}
           location /xor/ {{ alias {html}/; {paths} transform_sandbox_syscalls default;
                             transform_filter {{HELPER}} xor 1; }} }}",
        html = tree.path("html"),
        paths = tree.paths(),
    ));
    let get = |path: &str| body(&nginx, path);
    assert_eq!(
        get(&format!("/on/page.html?m=read-file&a={secret}")),
        "EACCES"
    );
    assert_eq!(
        get(&format!("/off/page.html?m=read-file&a={secret}")),
        "ok read 7"
    );
    assert_eq!(get("/on/page.html?m=socket-inet"), "EPERM");
    assert_eq!(get("/off/page.html?m=socket-inet"), "ok socket");
    // A sandboxed filter still filters.
    let r = Client::connect(nginx.port).get("/xor/page.html");
    assert_eq!(r.status, 200);
    let plain: Vec<u8> = r.body.iter().map(|b| b ^ 1).collect();
    assert_eq!(plain, b"<p>page</p>\n");
    nginx.stop();
}

#[test]
fn pool_processes_use_the_http_level_sandbox() {
    let tree = Tree::new();
    let secret = tree.path("outside/secret.txt");
    let inside = tree.path("ro/inside.txt");
    let pool_server = |http: &str, location: &str| {
        format!(
            "{http}
             transform_pool p {{HELPER}} pool-serve processes=1;
             server {{ listen 127.0.0.1:{{PORT}};
               location /p/ {{ transform_pass p; }}
               location /loc/ {{ {location} transform_pass p; }} }}"
        )
    };
    // The http level's sandbox: the pool's processes run in it, at every location.
    let nginx = Nginx::start(&pool_server(
        &format!("{} transform_sandbox_syscalls default;", tree.paths()),
        "",
    ));
    for at in ["/p/", "/loc/"] {
        assert_eq!(
            body(&nginx, &format!("{at}probe?read-file:{secret}")),
            "EACCES"
        );
        assert_eq!(
            body(&nginx, &format!("{at}probe?read-file:{inside}")),
            "ok read 7"
        );
        assert_eq!(body(&nginx, &format!("{at}probe?socket-inet")), "EPERM");
        assert_eq!(body(&nginx, &format!("{at}probe?socket-unix")), "ok unix");
    }
    nginx.stop();
    // No sandbox at the http level: none for the pool's processes.
    let nginx = Nginx::start(&pool_server(
        "transform_sandbox_paths off; transform_sandbox_syscalls none;",
        "",
    ));
    for at in ["/p/", "/loc/"] {
        assert_eq!(
            body(&nginx, &format!("{at}probe?read-file:{secret}")),
            "ok read 7"
        );
        assert_eq!(body(&nginx, &format!("{at}probe?socket-inet")), "ok socket");
    }
    nginx.stop();
    // A location that would confine them otherwise is refused (tests/config.rs has the lines):
    // the pool's processes serve every location.
    let (ok, out, _) = nginx_test_config(&pool_server(
        "",
        &format!("{} transform_sandbox_syscalls default;", tree.paths()),
    ));
    assert!(!ok && out.contains("runs its pool's processes"), "{out}");
}

#[test]
fn sandboxed_failures_leave_no_zombie_and_no_descriptor() {
    let tree = Tree::new();
    let nginx = Nginx::start(&format!(
        "server {{ listen 127.0.0.1:{{PORT}}; default_type text/plain;
           location /noexec {{ transform_sandbox_paths /usr /etc/ld.so.cache;
                              transform_exec {{HELPER}} pid; }}
           location /nouser {{ transform_sandbox_namespaces net;
                              transform_exec {{HELPER}} pid; }}
           location /denied {{ {paths} transform_sandbox_syscalls default;
                              transform_exec {{HELPER}} read-file {secret}; }}
           location /sigsys {{ transform_sandbox_syscalls default;
                              transform_exec {{HELPER}} int80; }}
           location /pid1 {{ transform_sandbox_namespaces user pid;
                            transform_exec {{HELPER}} fork-bomb 10; }}
           location /ok {{ {paths} transform_exec {{HELPER}} pid; }} }}",
        paths = tree.paths(),
        secret = tree.path("outside/secret.txt"),
    ));
    let worker = nginx.worker_pid();
    assert!(body(&nginx, "/ok").starts_with("ok pid "));
    let baseline = stable_fd_count(worker);
    for _ in 0..5 {
        assert_eq!(Client::connect(nginx.port).get("/noexec").status, 502);
        assert_eq!(Client::connect(nginx.port).get("/nouser").status, 502);
        assert_eq!(body(&nginx, "/denied"), "EACCES");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(Client::connect(nginx.port).get("/sigsys").status, 502);
        }
        assert_eq!(body(&nginx, "/pid1"), "ok forked 10");
    }
    let errors = nginx.log_lines("error");
    let want = format!("clone() \"{HELPER}\" failed (1: Operation not permitted)");
    assert!(
        errors.iter().any(|l| l.contains(&want)),
        "{want}: {errors:?}"
    );
    let want = format!("execve() \"{HELPER}\" failed (13: Permission denied)");
    assert!(
        errors.iter().any(|l| l.contains(&want)),
        "{want}: {errors:?}"
    );
    if cfg!(target_arch = "x86_64") {
        assert!(
            errors
                .iter()
                .any(|l| l.contains("killed by signal 31 (SIGSYS)")),
            "{errors:?}"
        );
    }
    assert!(
        wait_until(Duration::from_secs(3), || children_of(worker).is_empty()),
        "programs left: {:?}",
        children_of(worker)
    );
    for pid in children_of(worker) {
        assert_ne!(proc_state(pid), Some('Z'), "zombie {pid}");
    }
    assert_eq!(
        stable_fd_count(worker),
        baseline,
        "descriptors of the worker"
    );
    assert!(body(&nginx, "/ok").starts_with("ok pid "));
    nginx.stop();
}

/// Under `TRANSFORM_TEST_SANDBOX=1` a configuration without a sandbox of its own gets the global
/// one (no network socket, writes only under /tmp, /dev and /proc); otherwise none.
#[test]
fn a_pool_whose_program_the_sandbox_keeps_from_starting_fails_cleanly() {
    // The http level's paths leave out the helper: each process fails at execve (502s, the
    // pool's backoff), and nothing is left behind.
    let nginx = Nginx::start(
        "transform_sandbox_paths /usr /etc/ld.so.cache;
         transform_pool p {HELPER} pool-serve processes=1;
         server { listen 127.0.0.1:{PORT};
           location /p/ { transform_pass p; }
           location /ok { transform_sandbox_paths off; transform_exec /bin/true; } }",
    );
    let worker = nginx.worker_pid();
    assert_eq!(Client::connect(nginx.port).get("/ok").status, 200);
    let baseline = stable_fd_count(worker);
    for _ in 0..3 {
        let r = Client::connect(nginx.port).get("/p/echo");
        assert!(matches!(r.status, 502 | 503), "{}", r.status);
    }
    let want = format!("execve() \"{HELPER}\" failed (13: Permission denied)");
    assert!(
        nginx.error_log().contains(&want),
        "{want}:\n{}",
        nginx.log_lines("error").join("\n")
    );
    assert!(
        wait_until(Duration::from_secs(3), || children_of(worker).is_empty()),
        "{:?}",
        children_of(worker)
    );
    assert_eq!(
        stable_fd_count(worker),
        baseline,
        "descriptors of the worker"
    );
    nginx.stop();
}

#[test]
fn the_global_sandbox_applies_when_asked() {
    let nginx = Nginx::start(
        "server { listen 127.0.0.1:{PORT}; default_type text/plain;
           location / { transform_exec {HELPER} $arg_m $arg_a; } }",
    );
    let sandboxed = global_sandbox();
    let inet = body(&nginx, "/?m=socket-inet");
    assert_eq!(inet, if sandboxed { "EPERM" } else { "ok socket" });
    assert_eq!(
        body(&nginx, "/?m=read-file&a=/etc/passwd")
            .split(' ')
            .next(),
        Some("ok")
    );
    // /var/tmp is open to all, and out of the global sandbox's writable paths.
    let file = format!("/var/tmp/transform-test-global-{}", std::process::id());
    let wrote = body(&nginx, &format!("/?m=write-file&a={file}"));
    std::fs::remove_file(&file).ok();
    assert_eq!(wrote, if sandboxed { "EACCES" } else { "ok wrote 3" });
    let tmp = format!("/tmp/transform-test-global-{}", std::process::id());
    assert_eq!(
        body(&nginx, &format!("/?m=write-file&a={tmp}")),
        "ok wrote 3"
    );
    std::fs::remove_file(&tmp).ok();
    nginx.stop();
}

#[test]
fn the_global_sandbox_switch_is_off_unless_asked() {
    // TRANSFORM_TEST_SANDBOX=1 adds GLOBAL_SANDBOX to configurations that set no sandbox; a
    // configuration that sets one keeps its own.
    let prefix = temp_dir("sandbox-switch");
    let plain = config(&prefix, 1, "", "server { listen 127.0.0.1:{PORT}; }");
    let own = config(
        &prefix,
        1,
        "",
        "transform_sandbox_syscalls none; server { listen 127.0.0.1:{PORT}; }",
    );
    assert_eq!(plain.contains(GLOBAL_SANDBOX), global_sandbox());
    assert!(!own.contains(GLOBAL_SANDBOX));
    std::fs::remove_dir_all(prefix).ok();
}
