//! Test harness: runs the real nginx (the one the module was built against) with the module
//! loaded, on a free port in a temporary prefix, and talks real HTTP to it.
//!
//! Every test stops its nginx with [`Nginx::stop`], which fails the test if the error log has an
//! `[alert]`, `[crit]` or `[emerg]` line the test did not declare with [`Nginx::allow`].

#![allow(dead_code)]

pub mod pools;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const HELPER: &str = env!("CARGO_BIN_EXE_transform-test-helper");

/// The nginx binary of the tree the module was built against.
pub fn nginx_binary() -> PathBuf {
    if let Ok(p) = std::env::var("TEST_NGINX_BINARY") {
        return p.into();
    }
    Path::new(env!("TRANSFORM_NGINX_BUILD_DIR")).join("nginx")
}

/// The module as `cargo test` just built it.
pub fn module_path() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    // target/<profile>/deps/<test>-<hash>
    let deps = exe.parent().expect("deps dir");
    let so = deps.join("libngx_http_transform_module.so");
    assert!(so.exists(), "module not built at {}", so.display());
    so
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A fresh temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "transform-test-{}-{}-{}",
        tag,
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("logs")).expect("temp dir");
    dir
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// What `TRANSFORM_TEST_SANDBOX=1` adds at the http level of every configuration that does not
/// mention `transform_sandbox` itself: every file readable and executable, writes only under
/// /tmp, /dev and /proc, no network sockets.
pub const GLOBAL_SANDBOX: &str = "transform_sandbox_syscalls default; \
                                  transform_sandbox_paths / rw=/tmp rw=/dev rw=/proc;";

/// Whether this run sandboxes every program (`TRANSFORM_TEST_SANDBOX=1`).
pub fn global_sandbox() -> bool {
    std::env::var("TRANSFORM_TEST_SANDBOX").is_ok_and(|v| v == "1")
}

/// The http-level lines of the global sandbox for a configuration (`http_body`, or a whole
/// file), empty when the run is not sandboxed or the configuration sets a sandbox itself.
fn global_sandbox_lines(conf: &str) -> &'static str {
    if global_sandbox() && !conf.contains("transform_sandbox") {
        GLOBAL_SANDBOX
    } else {
        ""
    }
}

/// Keeps `http_body` out of the global sandbox run (`TRANSFORM_TEST_SANDBOX=1`), for a test that
/// cannot run sandboxed; `reason` says why, in the configuration and on the test's output.
pub fn unsandboxed(reason: &str, http_body: &str) -> String {
    if global_sandbox() {
        eprintln!("not sandboxed under TRANSFORM_TEST_SANDBOX=1: {reason}");
    }
    format!("# no transform_sandbox here: {reason}\n{http_body}")
}

/// Builds a full nginx.conf around `http_body` (the inside of `http {}`); `{PORT}`, `{PREFIX}`
/// and `{HELPER}` are replaced. Under `TRANSFORM_TEST_SANDBOX=1`, [`GLOBAL_SANDBOX`] is added at
/// the http level unless the body mentions `transform_sandbox`.
pub fn config(prefix: &Path, port: u16, main_extra: &str, http_body: &str) -> String {
    config_at_level(prefix, port, main_extra, http_body, "debug")
}

/// As [`config`], with the error log at `level`.
pub fn config_at_level(
    prefix: &Path,
    port: u16,
    main_extra: &str,
    http_body: &str,
    level: &str,
) -> String {
    let conf = format!(
        "load_module {module};\n\
         daemon off;\n\
         worker_processes 1;\n\
         error_log {prefix}/logs/error.log {level};\n\
         pid {prefix}/nginx.pid;\n\
         {main_extra}\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
           access_log {prefix}/logs/access.log;\n\
           client_body_temp_path {prefix}/client_body;\n\
           proxy_temp_path {prefix}/proxy;\n\
           fastcgi_temp_path {prefix}/fastcgi;\n\
           uwsgi_temp_path {prefix}/uwsgi;\n\
           scgi_temp_path {prefix}/scgi;\n\
           {sandbox}\n\
           {http_body}\n\
         }}\n",
        module = module_path().display(),
        prefix = prefix.display(),
        sandbox = global_sandbox_lines(http_body),
    );
    conf.replace("{PORT}", &port.to_string())
        .replace("{PREFIX}", &prefix.display().to_string())
        .replace("{HELPER}", HELPER)
        .replace("{H2_LISTEN}", if HTTP2_ON { "" } else { " http2" })
        .replace("{H2_ON}", if HTTP2_ON { "http2 on;" } else { "" })
}

/// The version of the nginx the module was built against (1028003 for 1.28.3), which the tests
/// run (`TEST_NGINX_BINARY` must name the same version).
pub const NGINX_VERSION_NUMBER: &str = env!("TRANSFORM_NGINX_VERSION_NUMBER");

/// That version as nginx writes it in `Server:` ("1.28.3").
pub fn nginx_version() -> String {
    let n: u64 = NGINX_VERSION_NUMBER.parse().expect("a version number");
    format!("{}.{}.{}", n / 1_000_000, n / 1_000 % 1_000, n % 1_000)
}

/// HTTP/2 is switched on with `http2 on;` from nginx 1.25.1, with the `http2` parameter of
/// `listen` before (Debian 12's 1.22): a configuration writes `listen ... ssl{H2_LISTEN};
/// {H2_ON}` for either.
const HTTP2_ON: bool = {
    let v = NGINX_VERSION_NUMBER.as_bytes();
    let mut n: u64 = 0;
    let mut i = 0;
    while i < v.len() {
        n = n * 10 + (v[i] - b'0') as u64;
        i += 1;
    }
    n >= 1_025_001
};

/// A running nginx.
pub struct Nginx {
    pub prefix: PathBuf,
    pub port: u16,
    master: Option<Child>,
    allowed: Vec<String>,
}

impl Nginx {
    /// Starts nginx with `http_body` inside `http {}`; the body's server listens on `{PORT}`.
    pub fn start(http_body: &str) -> Nginx {
        Self::start_with("", http_body)
    }

    pub fn start_with(main_extra: &str, http_body: &str) -> Nginx {
        Self::start_full(main_extra, http_body, "debug")
    }

    /// Starts nginx with the error log at `level`.
    pub fn start_full(main_extra: &str, http_body: &str, level: &str) -> Nginx {
        Self::start_workers(1, main_extra, http_body, level)
    }

    /// As [`Nginx::start_full`], with `worker_processes workers` (the other starters run one).
    pub fn start_workers(workers: usize, main_extra: &str, http_body: &str, level: &str) -> Nginx {
        let prefix = temp_dir("nginx");
        let port = free_port();
        let conf = config_at_level(&prefix, port, main_extra, http_body, level).replacen(
            "worker_processes 1;",
            &format!("worker_processes {workers};"),
            1,
        );
        std::fs::write(prefix.join("nginx.conf"), conf).expect("write conf");
        let master = Command::new(nginx_binary())
            .arg("-p")
            .arg(&prefix)
            .arg("-e")
            .arg(prefix.join("logs/error.log"))
            .arg("-c")
            .arg(prefix.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(prefix.join("logs/stderr.log")).expect("stderr"))
            .spawn()
            .expect("start nginx");
        let nginx = Nginx {
            prefix,
            port,
            master: Some(master),
            allowed: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                let log = nginx.error_log();
                panic!("nginx did not start listening on {port}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The workers are ready once they run as their user (`nobody` when nginx starts as
        // root: a test that gives them a directory reads their ids).
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let ready = |pids: &[u32]| {
            pids.len() >= workers
                && (!root
                    || pids.iter().all(|&p| {
                        std::fs::read_to_string(format!("/proc/{p}/status")).is_ok_and(|s| {
                            s.lines()
                                .any(|l| l.starts_with("Uid:") && !l.contains("\t0\t"))
                        })
                    }))
        };
        while !ready(&nginx.worker_pids()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            nginx.worker_pids().len(),
            workers,
            "nginx did not start {workers} workers"
        );
        nginx
    }

    /// Declares an `[alert]`/`[crit]`/`[emerg]` line containing `pattern` as expected.
    pub fn allow(&mut self, pattern: &str) {
        self.allowed.push(pattern.to_string());
    }

    pub fn master_pid(&self) -> u32 {
        self.master.as_ref().expect("running").id()
    }

    pub fn worker_pids(&self) -> Vec<u32> {
        children_of(self.master_pid())
    }

    /// The single worker (tests run worker_processes 1).
    pub fn worker_pid(&self) -> u32 {
        let w = self.worker_pids();
        assert_eq!(w.len(), 1, "expected one worker, got {w:?}");
        w[0]
    }

    pub fn error_log(&self) -> String {
        // (Lossy: a line cut or escaped oddly must not make the whole log read as empty.)
        std::fs::read(self.prefix.join("logs/error.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("logs/access.log")).unwrap_or_default()
    }

    /// Error-log lines at error level or more severe (not debug noise).
    pub fn log_lines(&self, level: &str) -> Vec<String> {
        let tag = format!("[{level}]");
        self.error_log()
            .lines()
            .filter(|l| l.contains(&tag))
            .map(String::from)
            .collect()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Stops nginx (graceful quit) and fails on unexpected alerts.
    pub fn stop(mut self) {
        self.shutdown();
        let log = self.error_log();
        let bad: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("[alert]") || l.contains("[crit]") || l.contains("[emerg]"))
            .filter(|l| !self.allowed.iter().any(|a| l.contains(a.as_str())))
            .collect();
        assert!(
            bad.is_empty(),
            "unexpected alerts in error.log:\n{}",
            bad.join("\n")
        );
    }

    fn shutdown(&mut self) {
        if let Some(mut master) = self.master.take() {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(master.id() as i32, libc::SIGQUIT) };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = master.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    // Too slow to quit: the fast shutdown takes the workers down too.
                    // SAFETY: signalling our own child process.
                    unsafe { libc::kill(master.id() as i32, libc::SIGTERM) };
                    let _ = master.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.shutdown();
        if std::env::var_os("TEST_NGINX_LEAVE").is_none() && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.prefix);
        }
    }
}

/// Runs `nginx -t` on a configuration; returns (success, stderr).
pub fn nginx_test_config(http_body: &str) -> (bool, String, PathBuf) {
    let prefix = temp_dir("conf");
    let conf = config(&prefix, free_port(), "", http_body);
    let path = prefix.join("nginx.conf");
    std::fs::write(&path, conf).expect("write conf");
    let out = Command::new(nginx_binary())
        .arg("-t")
        .arg("-p")
        .arg(&prefix)
        .arg("-e")
        .arg(prefix.join("logs/error.log"))
        .arg("-c")
        .arg(&path)
        .output()
        .expect("nginx -t");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path,
    )
}

/// Child pids of a process.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out
}

/// The state letter of a process (`Z` for a zombie), or None if it is gone.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.trim_start().chars().next()
}

pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A process's resource limit (soft, hard) from the row `name` of /proc/PID/limits
/// (`"Max processes"`); `unlimited` is `RLIM_INFINITY`.
pub fn proc_limit(pid: u32, name: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let row = limits
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name:?} in /proc/{pid}/limits"));
    let value = |v: &str| match v {
        "unlimited" => libc::RLIM_INFINITY,
        n => n.parse().expect("limit"),
    };
    let mut f = row.split_whitespace();
    (value(f.next().unwrap()), value(f.next().unwrap()))
}

/// The real user and group ids of a process.
pub fn ids_of(pid: u32) -> (u32, u32) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let id = |key: &str| -> u32 {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
    };
    (id("Uid:"), id("Gid:"))
}

/// Sets a resource limit of another process with prlimit(2), called from a short-lived child
/// that takes that process's user and group ids first: a process may set the limits of one with
/// the very same ids, up to the hard limit, without privilege (root here may lack the
/// CAP_SYS_RESOURCE that would allow it across users).
pub fn set_rlimit_of(pid: u32, resource: libc::__rlimit_resource_t, (soft, hard): (u64, u64)) {
    use std::os::unix::process::CommandExt;
    let (uid, gid) = ids_of(pid);
    let mut cmd = Command::new("/bin/true");
    cmd.uid(uid).gid(gid);
    // SAFETY: prlimit is async-signal-safe; it runs in the child before exec.
    unsafe {
        cmd.pre_exec(move || {
            let new = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            match libc::prlimit(pid as libc::pid_t, resource, &new, std::ptr::null_mut()) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        })
    };
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("prlimit({pid}) as uid {uid}, gid {gid}: {e}"));
    assert!(status.success(), "prlimit({pid}): {status}");
}

/// The descriptor count of a process once it stopped changing (same value 100 ms apart).
pub fn stable_fd_count(pid: u32) -> usize {
    let mut last = fd_count(pid);
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let now = fd_count(pid);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Bytes a process has written (from /proc/PID/io).
pub fn wchar(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("wchar:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The debug line naming the transport of each response (`splice`, `buffered (why)`), in order.
pub fn transports(nginx: &Nginx) -> Vec<String> {
    nginx
        .error_log()
        .lines()
        .filter_map(|l| {
            l.split_once("transform transport: ")
                .map(|(_, t)| t.to_string())
        })
        .collect()
}

/// Waits until `f` holds or the time is up; returns whether it held.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The output of the helper run directly (what a response body must equal).
pub fn helper_output(args: &[&str]) -> Vec<u8> {
    let out = Command::new(HELPER)
        .args(args)
        .output()
        .expect("run helper");
    out.stdout
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(data))
}

/// How the reading of a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// As its framing says: terminating chunk, full Content-Length, or (close-delimited) a clean
    /// close.
    Complete,
    /// The server closed the connection (FIN) before the framing said the body was complete.
    Closed,
    /// The connection was reset (RST).
    Reset,
    /// Nothing came for the client's read timeout: the response hung, it did not end.
    Hung,
    /// Another read error.
    Error(std::io::ErrorKind),
}

impl End {
    fn of(e: &std::io::Error) -> End {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::UnexpectedEof => End::Closed,
            K::ConnectionReset | K::ConnectionAborted => End::Reset,
            K::WouldBlock | K::TimedOut => End::Hung,
            k => End::Error(k),
        }
    }
}

/// A response read by the strict HTTP/1.x parser.
#[derive(Debug)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body ended as its framing says (terminating chunk, full Content-Length, or close).
    pub complete: bool,
    /// How the reading ended (`End::Complete` exactly when `complete`).
    pub end: End,
    /// Sizes of the chunks, for chunked responses.
    pub chunks: Vec<usize>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.x client connection with a strict response parser.
pub struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        Client {
            reader: BufReader::with_capacity(256 * 1024, s),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    /// Caps the socket's receive buffer (which turns off its autotuning): the TCP window stays
    /// small, so a client that reads slowly holds the server back at once.
    pub fn set_recv_buffer(&self, bytes: usize) {
        use std::os::fd::AsRawFd;
        let v = bytes as libc::c_int;
        // SAFETY: setsockopt on our own socket, with a pointer to an int and its size.
        let rc = unsafe {
            libc::setsockopt(
                self.stream().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "setsockopt(SO_RCVBUF)");
    }

    pub fn send(&mut self, raw: &str) {
        self.reader
            .get_mut()
            .write_all(raw.as_bytes())
            .expect("send request");
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.send(&format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"));
        self.read_response(false)
    }

    /// Reads the status line and headers only.
    pub fn read_head(&mut self) -> Response {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("status line");
        assert!(
            line.ends_with("\r\n"),
            "status line not CRLF-terminated: {line:?}"
        );
        let mut parts = line.trim_end().splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_string();
        assert!(
            version == "HTTP/1.1" || version == "HTTP/1.0",
            "bad version in {line:?}"
        );
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).expect("header line");
            assert!(
                h.ends_with("\r\n"),
                "header line not CRLF-terminated: {h:?}"
            );
            if h == "\r\n" {
                break;
            }
            let (k, v) = h.trim_end().split_once(':').expect("header has a colon");
            assert!(!k.is_empty() && !k.contains(' '), "bad header name {k:?}");
            headers.push((k.to_string(), v.trim().to_string()));
        }
        Response {
            version,
            status,
            headers,
            body: Vec::new(),
            complete: false,
            end: End::Closed,
            chunks: Vec::new(),
        }
    }

    /// Reads a whole response; `head` for a HEAD request (no body).
    pub fn read_response(&mut self, head: bool) -> Response {
        let resp = self.read_head();
        self.read_body(resp, head)
    }

    /// Reads the body of a response whose head `read_head` returned; `head` for a HEAD request.
    pub fn read_body(&mut self, mut resp: Response, head: bool) -> Response {
        if head || resp.status == 204 || resp.status == 304 {
            resp.complete = true;
            resp.end = End::Complete;
            return resp;
        }
        let te = resp
            .header("Transfer-Encoding")
            .map(str::to_ascii_lowercase);
        let cl = resp
            .header("Content-Length")
            .map(|v| v.parse::<usize>().expect("numeric length"));
        resp.end = if te.as_deref() == Some("chunked") {
            assert!(cl.is_none(), "both chunked and Content-Length");
            self.read_chunked(&mut resp)
        } else if let Some(n) = cl {
            resp.body = vec![0; n];
            match self.reader.read_exact(&mut resp.body) {
                Ok(()) => End::Complete,
                Err(e) => End::of(&e),
            }
        } else {
            let mut body = Vec::new();
            let end = match self.reader.read_to_end(&mut body) {
                Ok(_) => End::Complete,
                Err(e) => End::of(&e),
            };
            resp.body = body;
            end
        };
        resp.complete = resp.end == End::Complete;
        resp
    }

    /// Reads a response that must end broken, and asserts the break itself: the connection is
    /// closed or reset before the framing says the body is complete, all within `within` of the
    /// call. The client waits at most `within` for each read, so a response that merely hangs
    /// (until some client gives up) fails here instead of passing for a broken one.
    #[track_caller]
    pub fn read_broken(&mut self, within: Duration) -> Response {
        let start = Instant::now();
        self.stream().set_read_timeout(Some(within)).unwrap();
        let head = self.read_head();
        self.finish_broken(head, start, within)
    }

    /// As [`Client::read_broken`], for a response whose head was read already.
    #[track_caller]
    pub fn read_broken_body(&mut self, head: Response, within: Duration) -> Response {
        let start = Instant::now();
        self.stream().set_read_timeout(Some(within)).unwrap();
        self.finish_broken(head, start, within)
    }

    #[track_caller]
    fn finish_broken(&mut self, head: Response, start: Instant, within: Duration) -> Response {
        let r = self.read_body(head, false);
        let took = start.elapsed();
        assert!(
            matches!(r.end, End::Closed | End::Reset),
            "a broken response must end closed or reset; it ended {:?} after {took:?} \
             ({} body bytes, status {})",
            r.end,
            r.body.len(),
            r.status
        );
        assert!(took < within, "the break took {took:?}, over {within:?}");
        self.stream()
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        r
    }

    fn read_chunked(&mut self, resp: &mut Response) -> End {
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return End::Closed,
                Err(e) => return End::of(&e),
                Ok(_) => {}
            }
            if !line.ends_with('\n') {
                // Cut inside the size line.
                return End::Closed;
            }
            assert!(
                line.ends_with("\r\n"),
                "chunk size line not CRLF-terminated: {line:?}"
            );
            let size_str = line.trim_end();
            assert!(
                !size_str.is_empty() && size_str.bytes().all(|b| b.is_ascii_hexdigit()),
                "bad chunk size line {line:?}"
            );
            let size = usize::from_str_radix(size_str, 16).expect("chunk size");
            if size == 0 {
                let mut end = String::new();
                self.reader.read_line(&mut end).expect("final CRLF");
                assert_eq!(
                    end, "\r\n",
                    "no trailer support expected; bad end of chunked body"
                );
                return End::Complete;
            }
            let start = resp.body.len();
            resp.body.resize(start + size, 0);
            if let Err(e) = self.reader.read_exact(&mut resp.body[start..]) {
                resp.body.truncate(start);
                return End::of(&e);
            }
            resp.chunks.push(size);
            let mut crlf = [0u8; 2];
            if let Err(e) = self.reader.read_exact(&mut crlf) {
                return End::of(&e);
            }
            assert_eq!(&crlf, b"\r\n", "chunk data not followed by CRLF");
        }
    }

    /// Reads the body of a response whose head `read_head` returned and hands it to `sink` piece
    /// by piece instead of keeping it (for bodies too large to hold); returns how the reading
    /// ended and how many body bytes came.
    pub fn stream_body(&mut self, resp: &Response, sink: &mut dyn FnMut(&[u8])) -> (End, u64) {
        let chunked = resp
            .header("Transfer-Encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let length = resp
            .header("Content-Length")
            .map(|v| v.parse::<u64>().expect("numeric length"));
        let mut buf = vec![0u8; 1024 * 1024];
        let mut total = 0u64;
        // Passes `n` bytes (all of the rest when None) to the sink.
        let mut pass = |this: &mut Self, n: Option<u64>, total: &mut u64| -> Result<(), End> {
            let mut left = n;
            while left != Some(0) {
                let want = left.map_or(buf.len(), |l| l.min(buf.len() as u64) as usize);
                match this.reader.read(&mut buf[..want]) {
                    Ok(0) if left.is_none() => return Ok(()),
                    Ok(0) => return Err(End::Closed),
                    Ok(k) => {
                        sink(&buf[..k]);
                        *total += k as u64;
                        left = left.map(|l| l - k as u64);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(End::of(&e)),
                }
            }
            Ok(())
        };
        if !chunked {
            assert!(
                resp.version == "HTTP/1.0" || length.is_some(),
                "an HTTP/1.1 response neither chunked nor with a length"
            );
            let end = match pass(self, length, &mut total) {
                Ok(()) => End::Complete,
                Err(e) => e,
            };
            return (end, total);
        }
        assert!(length.is_none(), "both chunked and Content-Length");
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return (End::Closed, total),
                Err(e) => return (End::of(&e), total),
                Ok(_) => {}
            }
            if !line.ends_with('\n') {
                return (End::Closed, total);
            }
            assert!(
                line.ends_with("\r\n"),
                "chunk size line not CRLF-terminated: {line:?}"
            );
            let size = u64::from_str_radix(line.trim_end(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
            if size == 0 {
                let mut end = String::new();
                self.reader.read_line(&mut end).expect("final CRLF");
                assert_eq!(end, "\r\n", "bad end of chunked body");
                return (End::Complete, total);
            }
            if let Err(e) = pass(self, Some(size), &mut total) {
                return (e, total);
            }
            let mut crlf = [0u8; 2];
            if let Err(e) = self.reader.read_exact(&mut crlf) {
                return (End::of(&e), total);
            }
            assert_eq!(&crlf, b"\r\n", "chunk data not followed by CRLF");
        }
    }

    /// Reads what is there (through the buffer that `read_head` may have filled).
    pub fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reader.read(buf)
    }

    /// Reads to the end of the connection (through the buffer).
    pub fn read_to_end(&mut self, out: &mut Vec<u8>) -> std::io::Result<usize> {
        self.reader.read_to_end(out)
    }

    /// Reads up to `n` body bytes of a response whose head was read (raw, framing included).
    pub fn read_some(&mut self, n: usize) -> usize {
        let mut buf = vec![0u8; n];
        let mut got = 0;
        while got < n {
            match self.reader.read(&mut buf[got..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => got += k,
            }
        }
        got
    }
}

/// Runs curl with `args`; returns (exit success, stdout).
pub fn curl(args: &[&str]) -> (bool, Vec<u8>) {
    let (code, out) = curl_code(args);
    (code == Some(0), out)
}

/// Runs curl with `args`; returns its exit code (None if killed) and stdout.
pub fn curl_code(args: &[&str]) -> (Option<i32>, Vec<u8>) {
    let out = Command::new("curl")
        .args(args)
        .output()
        .expect("run curl (is it installed?)");
    (out.status.code(), out.stdout)
}

/// curl's exit code for "operation timed out" (`--max-time`).
pub const CURL_TIMED_OUT: i32 = 28;

/// Runs curl (with `--max-time`) on a response that must end broken, and asserts the break
/// itself: curl reports an error, not its own timeout, within `within`. Returns the exit code.
#[track_caller]
pub fn curl_broken(args: &[&str], within: Duration) -> i32 {
    let max = within.as_secs().to_string();
    let mut all = vec!["--max-time", &max];
    all.extend_from_slice(args);
    let start = Instant::now();
    let (code, body) = curl_code(&all);
    let took = start.elapsed();
    let code = code.expect("curl exit code");
    assert!(
        code != 0 && code != CURL_TIMED_OUT,
        "curl {args:?}: exit code {code} after {took:?} and {} bytes: a broken response must \
         end in an error, promptly",
        body.len()
    );
    assert!(took < within, "curl {args:?}: the break took {took:?}");
    code
}

/// A self-signed certificate and key for TLS tests, made with the openssl command.
pub fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (crt, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl (is it installed?)")
        .success();
    assert!(ok, "openssl could not make a certificate");
    (crt, key)
}

/// A prefix laid out as ci/demo lays it out: modules/ (the module), logs/, html/images/ with two
/// pictures made by ImageMagick.
pub fn example_prefix() -> PathBuf {
    let prefix = temp_dir("example");
    std::fs::create_dir_all(prefix.join("modules")).unwrap();
    std::fs::create_dir_all(prefix.join("html/images")).unwrap();
    std::os::unix::fs::symlink(
        module_path(),
        prefix.join("modules/ngx_http_transform_module.so"),
    )
    .unwrap();
    for (builtin, name, resize) in [
        ("rose:", "rose.jpg", "1200x"),
        ("logo:", "logo.jpg", "100%"),
    ] {
        let ok = Command::new("convert")
            .args([builtin, "-resize", resize])
            .arg(prefix.join("html/images").join(name))
            .status()
            .expect("run convert (ImageMagick; ci/test installs it)")
            .success();
        assert!(ok, "convert could not make {name}");
    }
    prefix
}

/// nginx serving a file of nginx-conf/ as it is, but on free ports (its 127.0.0.1:8080 and
/// 127.0.0.1:8081 are replaced).
pub struct ExampleServer {
    pub prefix: PathBuf,
    pub port: u16,
    master: Child,
    stopped: bool,
}

impl Drop for ExampleServer {
    fn drop(&mut self) {
        if !self.stopped {
            // A failed test: do not leave nginx running (SIGTERM takes the workers down too).
            // SAFETY: signalling our own nginx master.
            unsafe { libc::kill(self.master.id() as i32, libc::SIGTERM) };
            let _ = self.master.wait();
        }
    }
}

impl ExampleServer {
    pub fn start(name: &str) -> ExampleServer {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("nginx-conf")
            .join(name);
        Self::start_text(name, &std::fs::read_to_string(path).unwrap())
    }

    /// As [`ExampleServer::start`], with the configuration `src` (saved as `name`).
    pub fn start_text(name: &str, src: &str) -> ExampleServer {
        let prefix = example_prefix();
        let (port, backend) = (free_port(), free_port());
        assert!(
            src.contains("listen 127.0.0.1:8080;"),
            "{name} listens on 127.0.0.1:8080"
        );
        let mut conf = src
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
            .replace("127.0.0.1:8081", &format!("127.0.0.1:{backend}"));
        let sandbox = global_sandbox_lines(&conf);
        if !sandbox.is_empty() {
            let at = conf
                .find("http {")
                .map(|i| i + "http {".len())
                .unwrap_or_else(|| panic!("{name} has no \"http {{\" block"));
            conf.insert_str(at, &format!("\n    {sandbox}"));
        }
        let conf_path = prefix.join(name);
        std::fs::write(&conf_path, conf).unwrap();
        let stderr = prefix.join("logs/stderr.log");
        let mut master = Command::new(nginx_binary())
            .arg("-p")
            .arg(&prefix)
            .arg("-e")
            .arg(prefix.join("logs/error.log"))
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = matches!(master.try_wait(), Ok(Some(_)));
            if exited || Instant::now() > deadline {
                if !exited {
                    // SAFETY: signalling our own nginx master.
                    unsafe { libc::kill(master.id() as i32, libc::SIGTERM) };
                    let _ = master.wait();
                }
                let said = std::fs::read_to_string(&stderr).unwrap_or_default();
                panic!("{name}: nginx did not start: {said}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        ExampleServer {
            prefix,
            port,
            master,
            stopped: false,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Stops nginx and fails on any alert in its log.
    pub fn stop(mut self) {
        // SAFETY: signalling our own nginx master.
        unsafe { libc::kill(self.master.id() as i32, libc::SIGQUIT) };
        self.master.wait().unwrap();
        self.stopped = true;
        let log = std::fs::read_to_string(self.prefix.join("logs/error.log")).unwrap_or_default();
        assert!(
            !log.contains("[alert]") && !log.contains("[emerg]") && !log.contains("[crit]"),
            "{log}"
        );
        std::fs::remove_dir_all(&self.prefix).ok();
    }
}

/// strace attached to a process (not its children), writing the system calls `trace` names to
/// `out`. Panics when strace is missing (ci/test installs it) or does not attach in time.
pub struct Strace {
    child: Child,
}

impl Strace {
    pub fn attach(pid: u32, trace: &str, out: &Path) -> Strace {
        Self::attach_with(pid, &[], trace, out)
    }

    /// As [`Strace::attach`], with more strace options (`-y` to print the paths of descriptors).
    pub fn attach_with(pid: u32, options: &[&str], trace: &str, out: &Path) -> Strace {
        if Command::new("strace").arg("-V").output().is_err() {
            panic!("strace is not installed: ci/test installs it; this test needs it to observe the worker");
        }
        let mut child = Command::new("strace")
            .args(options)
            .args(["-e", &format!("trace={trace}"), "-o"])
            .arg(out)
            .arg("-p")
            .arg(pid.to_string())
            .stderr(Stdio::piped())
            .spawn()
            .expect("strace");
        // strace prints "Process N attached" once it is tracing.
        let mut err = child.stderr.take().expect("strace stderr");
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !String::from_utf8_lossy(&seen).contains("attached") {
            match std::io::Read::read(&mut err, &mut byte) {
                Ok(1) => seen.push(byte[0]),
                _ => panic!("strace did not attach: {}", String::from_utf8_lossy(&seen)),
            }
        }
        Strace { child }
    }

    /// Detaches (SIGINT) and waits for strace to write its last lines.
    pub fn stop(mut self) {
        // SAFETY: signalling the strace this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}
