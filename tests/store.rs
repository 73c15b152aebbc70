//! `transform_store` and `transform_lock` (issue 10), against the real nginx: what is published,
//! what is never published, one program for a herd, and what waiters see when the leader fails.
//!
//! nginx runs as root here, so its workers are `nobody`: the store directories are made theirs,
//! as an operator makes a `proxy_store` directory writable. Programs count their runs by appending
//! a line to a file (`count FILE ...` in the helper).

mod common;

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::*;

const ZONE: &str = "transform_lock_zone herd:1m;";

fn server(locations: &str) -> String {
    format!("server {{ listen 127.0.0.1:{{PORT}}; default_type text/plain; {locations} }}")
}

/// A server whose connections the kernel spreads over the workers (one socket per worker).
fn spread_server(locations: &str) -> String {
    format!(
        "server {{ listen 127.0.0.1:{{PORT}} reuseport; default_type text/plain; {locations} }}"
    )
}

/// A directory under the prefix the workers may write in (owned by their user).
fn worker_dir(nginx: &Nginx, rel: &str) -> PathBuf {
    let dir = nginx.prefix.join(rel);
    fs::create_dir_all(&dir).unwrap();
    let (uid, gid) = ids_of(nginx.worker_pids()[0]);
    std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
    dir
}

/// The file `count {PREFIX}/count-NAME ...` programs append a line to, once per run.
fn counter(nginx: &Nginx, name: &str) -> PathBuf {
    let path = nginx.prefix.join(format!("count-{name}"));
    fs::write(&path, "").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
    path
}

/// How many times the program counting in `counter` ran.
fn runs(counter: &Path) -> usize {
    fs::read_to_string(counter)
        .unwrap_or_default()
        .lines()
        .count()
}

/// Every file (not directory) under `dir`, recursively; empty if `dir` does not exist.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(p),
                _ => out.push(p),
            }
        }
    }
    out.sort();
    out
}

/// Waits until no file is left under the temp directory; fails naming what is left.
#[track_caller]
fn no_temp_file(tmp: &Path, what: &str) {
    assert!(
        wait_until(Duration::from_secs(3), || files_under(tmp).is_empty()),
        "{what}: temp files left: {:?}",
        files_under(tmp)
    );
}

/// The temp files under `tmp` with at least `min` bytes.
fn temp_files_with(tmp: &Path, min: u64) -> Vec<PathBuf> {
    files_under(tmp)
        .into_iter()
        .filter(|p| fs::metadata(p).map(|m| m.len() >= min).unwrap_or(false))
        .collect()
}

fn gen(n: usize) -> Vec<u8> {
    helper_output(&["gen", &n.to_string()])
}

/// Error-log lines at `error` level or more severe.
fn error_lines(nginx: &Nginx) -> Vec<String> {
    nginx
        .error_log()
        .lines()
        .filter(|l| {
            ["[error]", "[crit]", "[alert]", "[emerg]"]
                .iter()
                .any(|t| l.contains(t))
        })
        .map(String::from)
        .collect()
}

/// The error lines logged after the first `mark`, once at least `want` are there (or 3 s passed).
fn new_error_lines(nginx: &Nginx, mark: usize, want: usize) -> Vec<String> {
    wait_until(Duration::from_secs(3), || {
        error_lines(nginx).len() >= mark + want
    });
    error_lines(nginx).split_off(mark)
}

/// The worker children of every worker (programs still running, or zombies not reaped).
fn programs(nginx: &Nginx) -> Vec<u32> {
    nginx
        .worker_pids()
        .into_iter()
        .flat_map(children_of)
        .collect()
}

#[track_caller]
fn no_programs_left(nginx: &Nginx) {
    assert!(
        wait_until(Duration::from_secs(5), || programs(nginx).is_empty()),
        "programs (or zombies) left: {:?}",
        programs(nginx)
            .into_iter()
            .map(|p| (p, proc_state(p)))
            .collect::<Vec<_>>()
    );
}

/// A response read off a raw connection, with the times its bytes arrived.
#[derive(Debug)]
struct Got {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The body ended as its framing says (last chunk, full Content-Length).
    complete: bool,
    /// How the connection ended: `eof`, `reset`, `timeout` (nothing for 30 s), `error`.
    end: &'static str,
    sent: Instant,
    /// When the first body byte arrived.
    first_body: Option<Instant>,
    /// When the connection ended.
    done: Instant,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn summary(&self) -> String {
        format!(
            "status {}, {} body bytes, complete {}, ended {}, after {:?}",
            self.status,
            self.body.len(),
            self.complete,
            self.end,
            self.done - self.sent
        )
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a chunked body: (data, ended with the last chunk, offset of the first data byte).
fn dechunk(data: &[u8]) -> (Vec<u8>, bool, Option<usize>) {
    let (mut pos, mut body, mut first) = (0, Vec::new(), None);
    loop {
        let Some(eol) = find(&data[pos..], b"\r\n") else {
            return (body, false, first);
        };
        let line = std::str::from_utf8(&data[pos..pos + eol]).expect("chunk size line");
        let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
        pos += eol + 2;
        if size == 0 {
            return (body, data[pos..].starts_with(b"\r\n"), first);
        }
        first.get_or_insert(pos);
        if data.len() < pos + size {
            body.extend_from_slice(&data[pos..]);
            return (body, false, first);
        }
        body.extend_from_slice(&data[pos..pos + size]);
        pos += size;
        if data.len() < pos + 2 {
            return (body, false, first);
        }
        assert_eq!(
            &data[pos..pos + 2],
            b"\r\n",
            "chunk data not followed by CRLF"
        );
        pos += 2;
    }
}

/// Sends `method path` with `Connection: close` on `s` and reads the response to the end of the
/// connection. `started`, if given, is incremented once the first body bytes are in.
fn fetch_on(mut s: TcpStream, method: &str, path: &str, started: Option<&AtomicUsize>) -> Got {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let sent = Instant::now();
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .expect("send request");
    let (mut raw, mut reads) = (Vec::new(), Vec::new());
    let mut buf = vec![0u8; 256 * 1024];
    let mut flagged = false;
    let end = loop {
        match s.read(&mut buf) {
            Ok(0) => break "eof",
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                reads.push((Instant::now(), raw.len()));
                if !flagged {
                    if let (Some(c), Some(h)) = (started, find(&raw, b"\r\n\r\n")) {
                        // Past the head and a chunk-size line: body bytes.
                        if raw.len() > h + 4 + 12 {
                            flagged = true;
                            c.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                break match e.kind() {
                    std::io::ErrorKind::ConnectionReset => "reset",
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "timeout",
                    _ => "error",
                }
            }
        }
    };
    let done = Instant::now();
    let mut got = Got {
        status: 0,
        headers: Vec::new(),
        body: Vec::new(),
        complete: false,
        end,
        sent,
        first_body: None,
        done,
    };
    let Some(head_end) = find(&raw, b"\r\n\r\n") else {
        return got;
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    got.status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    for l in lines {
        let (k, v) = l.split_once(':').expect("header has a colon");
        got.headers.push((k.to_string(), v.trim().to_string()));
    }
    let start = head_end + 4;
    let rest = &raw[start..];
    let first = if method == "HEAD" {
        got.complete = true;
        None
    } else if got
        .header("Transfer-Encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let (body, complete, first) = dechunk(rest);
        got.body = body;
        got.complete = complete;
        first
    } else if let Some(cl) = got.header("Content-Length") {
        let cl: usize = cl.parse().expect("numeric length");
        got.body = rest[..rest.len().min(cl)].to_vec();
        got.complete = rest.len() >= cl;
        (cl > 0).then_some(0)
    } else {
        got.body = rest.to_vec();
        got.complete = end == "eof";
        (!rest.is_empty()).then_some(0)
    };
    got.first_body = first.and_then(|off| {
        reads
            .iter()
            .find(|(_, total)| *total > start + off)
            .map(|(t, _)| *t)
    });
    got
}

fn fetch(port: u16, path: &str) -> Got {
    fetch_on(
        TcpStream::connect(("127.0.0.1", port)).expect("connect"),
        "GET",
        path,
        None,
    )
}

/// A tmpfs of a given size, unmounted (lazily, whatever holds it) and removed when dropped.
struct Tmpfs {
    root: PathBuf,
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let root = temp_dir("tmpfs");
        let dir = root.join("small");
        fs::create_dir_all(&dir).unwrap();
        let target = CString::new(dir.as_os_str().as_bytes()).unwrap();
        let fstype = CString::new("tmpfs").unwrap();
        let data = CString::new(format!("size={size},mode=0777")).unwrap();
        // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            let _ = fs::remove_dir_all(&root);
            panic!(
                "THE ENOSPC TEST DID NOT RUN: mounting a {size} tmpfs at {} failed: {e}. It needs \
                 root with CAP_SYS_ADMIN (ci/test runs as root on the CI machine); it does not \
                 pass without testing anything.",
                dir.display()
            );
        }
        Tmpfs { root, dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: umount2(2) with a NUL-terminated path; MNT_DETACH also when nginx still holds it.
        let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            eprintln!(
                "umount {}: {}",
                self.dir.display(),
                std::io::Error::last_os_error()
            );
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

// ---------------------------------------------------------------------------------------------
// Store
// ---------------------------------------------------------------------------------------------

/// The stored file is the output byte for byte, appears at once (a reader polling the final path
/// sees no file, then the whole file, never a part), in directories created for it, with the
/// mode of `transform_store_access`; meanwhile the output grows in `transform-<pid>-<n>` in the
/// temp path.
#[test]
fn the_stored_file_is_byte_exact_and_published_atomically() {
    const N: usize = 2 * 1024 * 1024;
    let nginx = Nginx::start(&server(
        "transform_temp_path {PREFIX}/ttmp;
         transform_store {PREFIX}/store$uri;
         location /slow/ { transform_exec {HELPER} count {PREFIX}/count-slow
                                          pause 2097152 1048576 1000; }
         location /mode/ { transform_exec {HELPER} gen 1000;
                           transform_store_access user:rw group:rw all:r; }
         location /default/ { transform_exec {HELPER} gen 1000; }",
    ));
    let store = worker_dir(&nginx, "store");
    let tmp = nginx.prefix.join("ttmp");
    let count = counter(&nginx, "slow");
    let worker = nginx.worker_pid();
    let want = gen(N);
    let target = store.join("slow/a/b/c.bin");

    let stop = AtomicBool::new(false);
    let (absent, seen) = std::thread::scope(|s| {
        // The reader: polls the final path as fast as it can.
        let reader = s.spawn(|| {
            let mut absent = 0usize;
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
                match fs::read(&target) {
                    Ok(bytes) => return (absent, Some(bytes)),
                    Err(_) => absent += 1,
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (absent, None)
        });
        let request = s.spawn(|| Client::connect(nginx.port).get("/slow/a/b/c.bin"));
        // While the program sleeps after the first half: a temp file of the worker's, nothing
        // at the final path.
        assert!(
            wait_until(Duration::from_secs(5), || !temp_files_with(
                &tmp,
                (N / 2) as u64
            )
            .is_empty()),
            "no temp file with the first half under {}: {:?}",
            tmp.display(),
            files_under(&tmp)
        );
        let temps = files_under(&tmp);
        assert_eq!(temps.len(), 1, "one temp file: {temps:?}");
        let name = temps[0].file_name().unwrap().to_string_lossy().into_owned();
        let prefix = format!("transform-{worker}-");
        assert!(
            name.strip_prefix(&prefix)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
            "temp file named {name:?}, not {prefix}<number>"
        );
        assert!(!target.exists(), "published before the program ended");
        let r = request.join().unwrap();
        assert_eq!(r.status, 200);
        assert!(r.complete, "response not complete");
        assert!(
            r.body == want,
            "response body differs ({} bytes)",
            r.body.len()
        );
        // The file is there by the time the response ended or soon after.
        assert!(wait_until(Duration::from_secs(3), || target.exists()));
        stop.store(true, Ordering::SeqCst);
        reader.join().unwrap()
    });
    assert!(absent > 0, "the reader never saw the path empty");
    let seen = seen.expect("the reader never saw the file");
    assert!(
        seen == want,
        "the reader saw a file of {} bytes at the final path, not the whole {N}",
        seen.len()
    );
    assert!(fs::read(&target).unwrap() == want, "stored file differs");
    let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "default transform_store_access is user:rw");
    assert_eq!(runs(&count), 1);
    no_temp_file(&tmp, "after a publish");

    for (path, mode) in [("/mode/x/y.bin", 0o664), ("/default/x/y.bin", 0o600)] {
        let r = Client::connect(nginx.port).get(path);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, gen(1000));
        let file = store.join(&path[1..]);
        assert!(
            wait_until(Duration::from_secs(3), || file.exists()),
            "{path}: not stored"
        );
        assert_eq!(fs::read(&file).unwrap(), gen(1000), "{path}: content");
        let got = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(got, mode, "{path}: mode {got:o}, want {mode:o}");
    }
    no_temp_file(&tmp, "after the small ones");
    no_programs_left(&nginx);
    nginx.stop();
}

/// `transform_store on` maps the URI as nginx does (root + URI, alias), and the recommended
/// thumbnail setup works: `try_files` serves the stored file, the program runs once.
#[test]
fn store_on_maps_root_and_alias_and_try_files_serves_the_stored_file() {
    let nginx = Nginx::start(&server(
        "location /on/ { root {PREFIX}/html; transform_exec {HELPER} gen 3000;
                         transform_store on; }
         location /al/ { alias {PREFIX}/aliased/; transform_exec {HELPER} gen 3000;
                         transform_store on; }
         location /thumb/ { root {PREFIX}; try_files /cache$uri @make; }
         location @make { transform_exec {HELPER} count {PREFIX}/count-make gen 50000;
                          transform_store {PREFIX}/cache$uri; }",
    ));
    let html = worker_dir(&nginx, "html");
    let aliased = worker_dir(&nginx, "aliased");
    let cache = worker_dir(&nginx, "cache");
    let count = counter(&nginx, "make");

    for (path, file) in [
        ("/on/d1/x.bin", html.join("on/d1/x.bin")),
        ("/al/d2/y.bin", aliased.join("d2/y.bin")),
    ] {
        let r = Client::connect(nginx.port).get(path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body, gen(3000), "{path}");
        assert!(
            wait_until(Duration::from_secs(3), || file.exists()),
            "{path}: not stored at {} (found {:?} {:?})",
            file.display(),
            files_under(&html),
            files_under(&aliased)
        );
        assert_eq!(fs::read(&file).unwrap(), gen(3000), "{path}: content");
    }

    let want = gen(50000);
    let mut c = Client::connect(nginx.port);
    let first = c.get("/thumb/rose.bin");
    assert_eq!(first.status, 200);
    assert!(first.complete && first.body == want, "first response");
    let file = cache.join("thumb/rose.bin");
    assert!(wait_until(Duration::from_secs(3), || file.exists()));
    assert_eq!(fs::read(&file).unwrap(), want);
    let second = c.get("/thumb/rose.bin");
    assert_eq!(second.status, 200);
    assert!(second.complete && second.body == want, "second response");
    assert_eq!(runs(&count), 1, "the second request ran the program");
    assert!(
        second.header("ETag").is_some() && second.header("Last-Modified").is_some(),
        "the second response is nginx's static file (ETag, Last-Modified): {:?}",
        second.headers
    );
    // Another thumbnail is made once too.
    assert_eq!(c.get("/thumb/other.bin").body, want);
    assert_eq!(c.get("/thumb/other.bin").body, want);
    assert_eq!(runs(&count), 2);
    no_temp_file(&nginx.prefix.join("transform_temp"), "default temp path");
    no_programs_left(&nginx);
    nginx.stop();
}

/// Exit 1, a killed program, a CGI 404, a short CGI body, HEAD, transform_timeout and a client
/// that goes away: nothing at the final path, no temp file left.
#[test]
fn failures_leave_nothing_at_the_final_path() {
    let mut nginx = Nginx::start(&server(
        "transform_temp_path {PREFIX}/ttmp;
         transform_store {PREFIX}/store$uri;
         location /exit1-small { transform_exec {HELPER} fail-after 1000 1; }
         location /exit1-big { transform_exec {HELPER} pause-fail 200000 300 1; }
         location /killed { transform_exec {HELPER} pause 400000 200000 10000; }
         location /cgi200 { transform_output cgi; transform_exec {HELPER} cgi-status 200 1000 1000; }
         location /cgi404 { transform_output cgi; transform_exec {HELPER} cgi-status 404 1000 1000; }
         location /short { transform_output cgi; transform_exec {HELPER} cgi-status 200 1000 2000; }
         location /head-raw { transform_exec {HELPER} count {PREFIX}/count-head-raw gen 1000; }
         location /head-cgi { transform_output cgi;
                              transform_exec {HELPER} count {PREFIX}/count-head-cgi
                                             cgi-status 200 1000 1000; }
         location /timeout-late { transform_timeout 500ms;
                                  transform_exec {HELPER} pause 400000 200000 5000; }
         location /timeout-early { transform_timeout 500ms;
                                   transform_exec {HELPER} delay 5000 gen 1000; }
         location /gone { transform_exec {HELPER} pause 400000 200000 800; }",
    ));
    nginx.allow("exited on signal 9");
    let store = worker_dir(&nginx, "store");
    let tmp = nginx.prefix.join("ttmp");
    let worker = nginx.worker_pid();
    let head_raw = counter(&nginx, "head-raw");
    let head_cgi = counter(&nginx, "head-cgi");
    let absent = |uri: &str| {
        assert!(
            !store.join(&uri[1..]).exists(),
            "{uri}: published: {:?}",
            files_under(&store)
        );
        no_temp_file(&tmp, uri);
    };

    // Control: a CGI 200 is stored, its body only.
    let r = Client::connect(nginx.port).get("/cgi200");
    assert_eq!((r.status, r.body.len()), (200, 1000));
    assert!(wait_until(Duration::from_secs(3), || store
        .join("cgi200")
        .exists()));
    assert_eq!(
        fs::read(store.join("cgi200")).unwrap(),
        gen(1000),
        "a CGI program's stored file is its body"
    );

    // exit 1 before the commit (502) and after it (cut).
    assert_eq!(Client::connect(nginx.port).get("/exit1-small").status, 502);
    absent("/exit1-small");
    let mut c = Client::connect(nginx.port);
    c.send("GET /exit1-big HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_broken(Duration::from_secs(5));
    assert_eq!(r.status, 200);
    absent("/exit1-big");

    // A program killed (SIGKILL) half way.
    let mut c = Client::connect(nginx.port);
    c.send("GET /killed HTTP/1.1\r\nHost: x\r\n\r\n");
    let head = c.read_head();
    assert_eq!(head.status, 200);
    assert!(wait_until(Duration::from_secs(5), || !temp_files_with(
        &tmp, 200000
    )
    .is_empty()));
    let kids = children_of(worker);
    assert_eq!(kids.len(), 1, "one program: {kids:?}");
    // SAFETY: signalling the program our nginx started.
    unsafe { libc::kill(kids[0] as i32, libc::SIGKILL) };
    c.read_broken_body(head, Duration::from_secs(5));
    absent("/killed");

    // A CGI status other than 200 is answered, not stored.
    let r = Client::connect(nginx.port).get("/cgi404");
    assert_eq!((r.status, r.body.len()), (404, 1000));
    assert!(r.complete);
    absent("/cgi404");

    // A body shorter than its Content-Length.
    let r = fetch(nginx.port, "/short");
    assert!(
        r.status == 200
            && r.header("Content-Length") == Some("2000")
            && !r.complete
            && r.body == gen(1000),
        "/short: want 1000 bytes of a 2000-byte 200, cut: {}",
        r.summary()
    );
    absent("/short");

    // HEAD: raw mode does not run the program; cgi mode runs it for its headers. Neither stores.
    for (uri, count, ran) in [("/head-raw", &head_raw, 0), ("/head-cgi", &head_cgi, 1)] {
        let mut c = Client::connect(nginx.port);
        c.send(&format!("HEAD {uri} HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(c.read_response(true).status, 200, "{uri}");
        assert!(wait_until(Duration::from_secs(3), || runs(count) == ran));
        no_programs_left(&nginx);
        assert_eq!(runs(count), ran, "{uri}: runs");
        absent(uri);
    }

    // transform_timeout after the commit (cut) and before it (504).
    let mut c = Client::connect(nginx.port);
    c.send("GET /timeout-late HTTP/1.1\r\nHost: x\r\n\r\n");
    c.read_broken(Duration::from_secs(5));
    absent("/timeout-late");
    assert_eq!(
        Client::connect(nginx.port).get("/timeout-early").status,
        504
    );
    absent("/timeout-early");

    // A client that goes away half way: as nginx's upstream does for a response it stores,
    // the program goes on without it, and its output is stored once it exits 0.
    let mut c = Client::connect(nginx.port);
    c.send("GET /gone HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read_head().status, 200);
    assert_eq!(c.read_some(1000), 1000);
    let kids = children_of(worker);
    assert_eq!(kids.len(), 1, "one program: {kids:?}");
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        proc_state(kids[0]).is_some_and(|s| s != 'Z'),
        "the program was stopped with its client"
    );
    assert!(
        wait_until(Duration::from_secs(5), || store.join("gone").exists()),
        "the output of a program whose client left was not stored"
    );
    assert_eq!(fs::read(store.join("gone")).unwrap(), gen(400000));

    assert_eq!(
        files_under(&store),
        [store.join("cgi200"), store.join("gone")],
        "only the CGI 200 and the finished output are stored"
    );
    no_programs_left(&nginx);
    nginx.stop();
}

/// A store path from a variable with a `..` or `.` component, or empty, is not stored; the
/// response is unaffected; one error line each.
#[test]
fn an_unsafe_store_path_from_a_variable_is_not_stored() {
    let nginx = Nginx::start(&server(
        "transform_temp_path {PREFIX}/ttmp;
         location /dots { transform_exec {HELPER} gen 1000;
                          transform_store {PREFIX}/store/$arg_x; }
         location /var { transform_exec {HELPER} gen 1000; transform_store $arg_x; }",
    ));
    let store = worker_dir(&nginx, "store");
    worker_dir(&nginx, "escaped");
    let tmp = nginx.prefix.join("ttmp");
    for path in [
        "/dots?x=../escaped/a.bin",
        "/dots?x=a/../../escaped/b.bin",
        "/dots?x=a/./c.bin",
        "/var?x=",
    ] {
        let mark = error_lines(&nginx).len();
        let r = Client::connect(nginx.port).get(path);
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.complete && r.body == gen(1000),
            "{path}: response affected"
        );
        let new = new_error_lines(&nginx, mark, 1);
        assert_eq!(new.len(), 1, "{path}: one error line: {new:#?}");
        no_temp_file(&tmp, path);
        assert!(
            files_under(&nginx.prefix.join("escaped")).is_empty() && files_under(&store).is_empty(),
            "{path}: stored {:?} {:?}",
            files_under(&nginx.prefix.join("escaped")),
            files_under(&store)
        );
        eprintln!("{path}: {}", new[0]);
    }
    no_programs_left(&nginx);
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// Lock
// ---------------------------------------------------------------------------------------------

/// 100 concurrent identical cold requests over 2 workers: one program run, 100 byte-exact
/// responses, and every client has bytes long before the program ends.
#[test]
fn a_herd_of_100_over_2_workers_runs_the_program_once() {
    const N: usize = 512 * 1024;
    let nginx = Nginx::start_workers(
        2,
        "",
        &format!(
            "{ZONE}
             log_format herd \"$pid $status\";
             {}",
            spread_server(
                "access_log {PREFIX}/logs/herd.log herd;
                 transform_temp_path {PREFIX}/ttmp;
                 location /herd/ { transform_type application/x-herd;
                                   transform_exec {HELPER} count {PREFIX}/count-herd
                                                  pause 524288 262144 1000;
                                   transform_store {PREFIX}/store$uri;
                                   transform_lock on; }"
            )
        ),
        "info",
    );
    let store = worker_dir(&nginx, "store");
    let count = counter(&nginx, "herd");
    let want = gen(N);
    let streams: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(("127.0.0.1", nginx.port)).expect("connect"))
        .collect();
    let barrier = Barrier::new(100);
    let got: Vec<Got> = std::thread::scope(|s| {
        let handles: Vec<_> = streams
            .into_iter()
            .map(|st| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    fetch_on(st, "GET", "/herd/h.bin", None)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let bad: Vec<String> = got
        .iter()
        .enumerate()
        .filter(|(_, g)| g.status != 200 || !g.complete || g.body != want)
        .map(|(i, g)| format!("#{i}: {}", g.summary()))
        .collect();
    assert!(
        bad.is_empty(),
        "{} of 100 responses not byte-exact:\n{}",
        bad.len(),
        bad.join("\n")
    );
    assert_eq!(runs(&count), 1, "program runs for the herd");
    for g in &got {
        assert_eq!(g.header("Content-Type"), Some("application/x-herd"));
    }
    // Bytes before the end: the program sleeps 1 s after its first half.
    let first_done = got.iter().map(|g| g.done).min().unwrap();
    let late = got
        .iter()
        .map(|g| g.first_body.expect("first body byte"))
        .max()
        .unwrap();
    assert!(
        late + Duration::from_millis(400) < first_done,
        "a client's first bytes came {:?} before the first response ended (want >= 400ms)",
        first_done.saturating_duration_since(late)
    );
    let pids: std::collections::BTreeSet<String> =
        fs::read_to_string(nginx.prefix.join("logs/herd.log"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').next().map(String::from))
            .collect();
    assert_eq!(pids.len(), 2, "the herd reached both workers: {pids:?}");
    let file = store.join("herd/h.bin");
    assert!(wait_until(Duration::from_secs(3), || file.exists()));
    assert!(fs::read(&file).unwrap() == want, "stored file differs");
    no_temp_file(&nginx.prefix.join("ttmp"), "after the herd");
    no_programs_left(&nginx);
    nginx.stop();
}

/// Waiters arriving after the leader's first half get it at once, and are woken for the rest:
/// they end with the leader, not up to a polling interval later.
#[test]
fn waiters_stream_the_growing_output_and_end_with_the_leader() {
    const N: usize = 512 * 1024;
    let nginx = Nginx::start_workers(
        2,
        "",
        &format!(
            "{ZONE} {}",
            spread_server(
                "transform_temp_path {PREFIX}/ttmp;
                 location /w/ { transform_exec {HELPER} count {PREFIX}/count-w
                                               pause 524288 262144 1000;
                                transform_store {PREFIX}/store$uri;
                                transform_lock on; }"
            )
        ),
        "info",
    );
    worker_dir(&nginx, "store");
    let count = counter(&nginx, "w");
    let tmp = nginx.prefix.join("ttmp");
    let want = gen(N);
    let port = nginx.port;
    let (leader, waiters) = std::thread::scope(|s| {
        let leader = s.spawn(|| fetch(port, "/w/x.bin"));
        assert!(
            wait_until(Duration::from_secs(5), || !temp_files_with(
                &tmp,
                (N / 2) as u64
            )
            .is_empty()),
            "the leader's first half never reached its temp file"
        );
        let waiters: Vec<_> = (0..5)
            .map(|_| s.spawn(|| fetch(port, "/w/x.bin")))
            .collect();
        (
            leader.join().unwrap(),
            waiters
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>(),
        )
    });
    assert!(
        leader.status == 200 && leader.complete && leader.body == want,
        "leader: {}",
        leader.summary()
    );
    for (i, w) in waiters.iter().enumerate() {
        assert!(
            w.status == 200 && w.complete && w.body == want,
            "waiter {i}: {}",
            w.summary()
        );
        let first = w.first_body.unwrap() - w.sent;
        assert!(
            first < Duration::from_millis(300),
            "waiter {i}: first bytes after {first:?}, though half the output was on disk"
        );
        let lag = w.done.saturating_duration_since(leader.done);
        assert!(
            lag < Duration::from_millis(300),
            "waiter {i} ended {lag:?} after the leader: woken by polling?"
        );
        eprintln!("waiter {i}: first bytes after {first:?}, ended {lag:?} after the leader");
    }
    assert_eq!(runs(&count), 1);
    no_programs_left(&nginx);
    nginx.stop();
}

/// The leader fails (exit 1): waiters that had bytes are cut (no last chunk), those that had
/// none get 502 and do not run a program of their own. Nothing is published.
#[test]
fn a_failing_leader_cuts_waiters_with_bytes_and_gives_502_to_the_others() {
    let nginx = Nginx::start_workers(
        2,
        "",
        &format!(
            "{ZONE} {}",
            spread_server(
                "transform_temp_path {PREFIX}/ttmp;
                 transform_store {PREFIX}/store$uri;
                 transform_lock on;
                 location /cut/ { transform_exec {HELPER} count {PREFIX}/count-cut
                                                 pause-fail 200000 1000 1; }
                 location /none/ { transform_exec {HELPER} count {PREFIX}/count-none
                                                  pause-fail 0 1000 1; }"
            )
        ),
        "info",
    );
    let store = worker_dir(&nginx, "store");
    let tmp = nginx.prefix.join("ttmp");
    let (cut, none) = (counter(&nginx, "cut"), counter(&nginx, "none"));
    let port = nginx.port;
    let (cut_got, none_got) = std::thread::scope(|s| {
        let cut_leader = s.spawn(|| fetch(port, "/cut/x.bin"));
        let none_leader = s.spawn(|| fetch(port, "/none/x.bin"));
        assert!(wait_until(Duration::from_secs(5), || runs(&none) == 1));
        let none_waiters: Vec<_> = (0..5)
            .map(|_| s.spawn(|| fetch(port, "/none/x.bin")))
            .collect();
        assert!(
            wait_until(Duration::from_secs(5), || !temp_files_with(&tmp, 200000)
                .is_empty()),
            "the failing leader's output never reached its temp file"
        );
        let cut_waiters: Vec<_> = (0..5)
            .map(|_| s.spawn(|| fetch(port, "/cut/x.bin")))
            .collect();
        let all = |leader: std::thread::ScopedJoinHandle<'_, Got>, waiters: Vec<_>| {
            let mut v = vec![leader.join().unwrap()];
            v.extend(
                waiters
                    .into_iter()
                    .map(|h: std::thread::ScopedJoinHandle<'_, Got>| h.join().unwrap()),
            );
            v
        };
        (all(cut_leader, cut_waiters), all(none_leader, none_waiters))
    });
    let want = gen(200000);
    for (i, g) in cut_got.iter().enumerate() {
        let who = if i == 0 { "leader" } else { "waiter" };
        assert!(
            g.status == 200 && !g.complete && !g.body.is_empty(),
            "/cut {who} {i}: must be a 200 with bytes, cut: {}",
            g.summary()
        );
        assert!(
            g.body[..] == want[..g.body.len()],
            "/cut {who} {i}: bytes differ"
        );
        assert!(
            matches!(g.end, "eof" | "reset") && g.done - g.sent < Duration::from_secs(5),
            "/cut {who} {i}: not cut promptly: {}",
            g.summary()
        );
    }
    for (i, g) in none_got.iter().enumerate() {
        assert_eq!(g.status, 502, "/none {i}: {}", g.summary());
    }
    assert_eq!(runs(&cut), 1, "/cut: waiters ran programs");
    assert_eq!(runs(&none), 1, "/none: waiters ran programs");
    no_temp_file(&tmp, "after the failures");
    assert!(
        files_under(&store).is_empty(),
        "published: {:?}",
        files_under(&store)
    );
    no_programs_left(&nginx);
    nginx.stop();
}

/// transform_lock_timeout 1s with a leader silent for 3 s: a waiter with nothing sent gets 504,
/// one with bytes sent is cut; one error line each; the leader completes and publishes.
#[test]
fn the_lock_timeout_gives_504_or_cuts_the_waiter() {
    let nginx = Nginx::start(&format!(
        "{ZONE} {}",
        server(
            "transform_temp_path {PREFIX}/ttmp;
             transform_store {PREFIX}/store$uri;
             transform_lock on;
             transform_lock_timeout 1s;
             location /silent/ { transform_exec {HELPER} count {PREFIX}/count-silent
                                                delay 3000 gen 100000; }
             location /stall/ { transform_exec {HELPER} count {PREFIX}/count-stall
                                               pause 200000 100000 3000; }"
        )
    ));
    let store = worker_dir(&nginx, "store");
    let tmp = nginx.prefix.join("ttmp");
    let (silent, stall) = (counter(&nginx, "silent"), counter(&nginx, "stall"));
    let port = nginx.port;
    let mark = error_lines(&nginx).len();
    let got = std::thread::scope(|s| {
        let silent_leader = s.spawn(|| fetch(port, "/silent/x.bin"));
        let stall_leader = s.spawn(|| fetch(port, "/stall/x.bin"));
        assert!(wait_until(Duration::from_secs(5), || runs(&silent) == 1));
        let silent_waiter = s.spawn(|| fetch(port, "/silent/x.bin"));
        assert!(wait_until(Duration::from_secs(5), || !temp_files_with(
            &tmp, 100000
        )
        .is_empty()));
        let stall_waiter = s.spawn(|| fetch(port, "/stall/x.bin"));
        [silent_leader, silent_waiter, stall_leader, stall_waiter].map(|h| h.join().unwrap())
    });
    let [silent_leader, silent_waiter, stall_leader, stall_waiter] = got;
    let took = silent_waiter.done - silent_waiter.sent;
    assert!(
        silent_waiter.status == 504
            && took > Duration::from_millis(900)
            && took < Duration::from_millis(2500),
        "silent waiter: want 504 after ~1s: {}",
        silent_waiter.summary()
    );
    let took = stall_waiter.done - stall_waiter.sent;
    assert!(
        stall_waiter.status == 200
            && !stall_waiter.complete
            && stall_waiter.body[..] == gen(200000)[..stall_waiter.body.len()]
            && !stall_waiter.body.is_empty()
            && took > Duration::from_millis(900)
            && took < Duration::from_millis(2500),
        "stalled waiter: want a 200 with the first half, cut after ~1s: {}",
        stall_waiter.summary()
    );
    for (leader, n, file) in [
        (&silent_leader, 100000, "silent/x.bin"),
        (&stall_leader, 200000, "stall/x.bin"),
    ] {
        assert!(
            leader.status == 200 && leader.complete && leader.body == gen(n),
            "{file} leader: {}",
            leader.summary()
        );
        let path = store.join(file);
        assert!(wait_until(Duration::from_secs(3), || path.exists()));
        assert_eq!(fs::read(&path).unwrap(), gen(n), "{file}: stored");
    }
    assert_eq!((runs(&silent), runs(&stall)), (1, 1), "runs");
    let new = new_error_lines(&nginx, mark, 2);
    assert_eq!(
        new.len(),
        2,
        "one error line per timed-out waiter: {new:#?}"
    );
    eprintln!("lock timeout lines:\n{}", new.join("\n"));
    no_temp_file(&tmp, "after the timeouts");
    no_programs_left(&nginx);
    nginx.stop();
}

/// A leader whose CGI status is 404 publishes nothing, and its waiters run programs of their own.
#[test]
fn a_cgi_404_leader_lets_waiters_run_their_own_program() {
    let nginx = Nginx::start(&format!(
        "{ZONE} {}",
        server(
            "transform_temp_path {PREFIX}/ttmp;
             location /c404/ { transform_output cgi;
                               transform_exec {HELPER} count {PREFIX}/count-c404
                                              delay 800 cgi-status 404 1000 1000;
                               transform_store {PREFIX}/store$uri;
                               transform_lock on; }"
        )
    ));
    let store = worker_dir(&nginx, "store");
    let count = counter(&nginx, "c404");
    let port = nginx.port;
    let got: Vec<Got> = std::thread::scope(|s| {
        let leader = s.spawn(|| fetch(port, "/c404/x.bin"));
        assert!(wait_until(Duration::from_secs(5), || runs(&count) == 1));
        let waiters: Vec<_> = (0..4)
            .map(|_| s.spawn(|| fetch(port, "/c404/x.bin")))
            .collect();
        std::iter::once(leader)
            .chain(waiters)
            .map(|h| h.join().unwrap())
            .collect()
    });
    for (i, g) in got.iter().enumerate() {
        assert!(
            g.status == 404 && g.complete && g.body == gen(1000),
            "request {i}: {}",
            g.summary()
        );
    }
    assert_eq!(
        runs(&count),
        5,
        "every request runs its own program after a 404"
    );
    assert!(files_under(&store).is_empty(), "a 404 was published");
    no_temp_file(&nginx.prefix.join("ttmp"), "after the 404s");
    no_programs_left(&nginx);
    nginx.stop();
}

/// `nginx -t` refuses `transform_lock on` without a zone, and without a key when nothing is
/// stored, naming the file and the line of `transform_lock on`.
#[test]
fn nginx_t_refuses_a_lock_without_zone_or_key() {
    let bad = [
        (
            "no zone",
            "server { listen 127.0.0.1:{PORT};
               location /a { transform_exec /bin/true;
                             transform_store /tmp/store$uri;
                             transform_lock on;
               }
             }",
        ),
        (
            "no key and no store",
            "transform_lock_zone z:1m;
             server { listen 127.0.0.1:{PORT};
               location /b { transform_exec /bin/true;
                             transform_lock on;
               }
             }",
        ),
    ];
    for (what, body) in bad {
        let (ok, stderr, path) = nginx_test_config(body);
        let conf = fs::read_to_string(&path).unwrap();
        let line = conf
            .lines()
            .position(|l| l.contains("transform_lock on;"))
            .unwrap()
            + 1;
        fs::remove_dir_all(path.parent().unwrap()).ok();
        assert!(!ok, "{what}: nginx -t accepted it");
        let at = format!("{}:{line}", path.display());
        assert!(
            stderr.contains("[emerg]") && stderr.contains(&at),
            "{what}: want an [emerg] naming {at}: {stderr}"
        );
    }
    let good = ["transform_lock_zone z:1m;
         server { listen 127.0.0.1:{PORT};
           location /c { transform_exec /bin/true; transform_lock on; transform_lock_key $uri; }
           location /d { transform_exec /bin/true; transform_lock on;
                         transform_store /tmp/store$uri; transform_lock_timeout 5s; }
         }"];
    for body in good {
        let (ok, stderr, path) = nginx_test_config(body);
        fs::remove_dir_all(path.parent().unwrap()).ok();
        assert!(ok, "nginx -t refused a valid lock: {stderr}");
    }
    let (ok, stderr, path) =
        nginx_test_config("server { listen 127.0.0.1:{PORT}; transform_lock_zone z:1m; }");
    fs::remove_dir_all(path.parent().unwrap()).ok();
    assert!(!ok, "transform_lock_zone is http only: {stderr}");
}

// ---------------------------------------------------------------------------------------------
// A full disk, a killed worker, a reload, and what is left behind
// ---------------------------------------------------------------------------------------------

/// A 4 MB output into a 1 MB tmpfs: the client still gets all of it byte for byte, nothing is
/// published, the temp file is removed, one error line mentioning transform_store.
#[test]
fn a_full_disk_still_gives_the_client_everything() {
    const N: usize = 4 * 1024 * 1024;
    let fs_ = Tmpfs::mount("1m");
    let small = fs_.dir.display().to_string();
    let nginx = Nginx::start(&format!(
        "{ZONE} {}",
        server(&format!(
            "transform_temp_path {small}/tmp;
             location /big/ {{ transform_exec {{HELPER}} gen 4194304;
                              transform_store {small}/store$uri; }}
             location /big-locked/ {{ transform_exec {{HELPER}} gen 4194304;
                                     transform_store {small}/store$uri;
                                     transform_lock on; }}
             location /slow-locked/ {{ transform_exec {{HELPER}} delay 300 gen 4194304;
                                      transform_store {small}/store$uri;
                                      transform_lock on; }}"
        ))
    ));
    let want = gen(N);
    for path in ["/big/x.bin", "/big-locked/x.bin"] {
        let mark = error_lines(&nginx).len();
        let r = Client::connect(nginx.port).get(path);
        assert_eq!(r.status, 200, "{path}");
        assert!(r.complete, "{path}: not complete ({} bytes)", r.body.len());
        assert!(
            r.body == want,
            "{path}: body differs ({} bytes of {N})",
            r.body.len()
        );
        no_temp_file(&fs_.dir.join("tmp"), path);
        assert!(
            files_under(&fs_.dir.join("store")).is_empty(),
            "{path}: published: {:?}",
            files_under(&fs_.dir.join("store"))
        );
        let new = new_error_lines(&nginx, mark, 1);
        assert!(
            new.len() == 1 && new[0].contains("transform_store"),
            "{path}: want one error line mentioning transform_store: {new:#?}"
        );
        eprintln!("{path}: {}", new[0]);
    }
    // With waiters: the leader's client still gets everything; a waiter never gets a wrong
    // byte: it has the whole output (it ran its own program, having sent nothing when the file
    // stopped) or a cut prefix of it (it was streaming the file when the disk filled).
    let port = nginx.port;
    let got: Vec<Got> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(move || fetch(port, "/slow-locked/y.bin")))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let whole = got
        .iter()
        .filter(|g| g.status == 200 && g.complete && g.body == want)
        .count();
    assert!(whole >= 1, "no response was whole");
    for g in &got {
        let prefix = g.body.len() <= N && g.body[..] == want[..g.body.len()];
        assert!(
            (g.status == 200 && prefix) || g.status == 502,
            "a response with wrong bytes: {}",
            g.summary()
        );
    }
    no_temp_file(&fs_.dir.join("tmp"), "/slow-locked/y.bin");
    no_programs_left(&nginx);
    nginx.stop();
    drop(fs_);
}

/// A worker SIGKILLed while its program's output is being stored: no partial file is published,
/// the next worker removes the stale temp file, and the next request runs the program again
/// (taking over the dead worker's lock entry) and publishes. With a flat temp path, then with
/// level directories (`transform_temp_path ... 1 2`).
#[test]
fn a_worker_killed_mid_store_leaves_nothing_and_the_next_request_recomputes() {
    for levels in ["", " 1 2"] {
        worker_killed_mid_store(levels);
    }
}

fn worker_killed_mid_store(levels: &str) {
    const N: usize = 300000;
    let mut nginx = Nginx::start(&format!(
        "{ZONE} {}",
        server(&format!(
            "transform_temp_path {{PREFIX}}/ttmp{levels};
             location /k/ {{ transform_exec {{HELPER}} count {{PREFIX}}/count-k
                                           pause 300000 150000 $arg_ms;
                            transform_store {{PREFIX}}/store$uri;
                            transform_lock on;
                            transform_lock_timeout 5s; }}"
        ))
    ));
    nginx.allow("exited on signal 9");
    let store = worker_dir(&nginx, "store");
    let tmp = nginx.prefix.join("ttmp");
    let count = counter(&nginx, "k");
    let worker = nginx.worker_pid();
    let mut c = Client::connect(nginx.port);
    c.send("GET /k/a.bin?ms=20000 HTTP/1.1\r\nHost: x\r\n\r\n");
    let head = c.read_head();
    assert_eq!(head.status, 200);
    assert!(
        wait_until(Duration::from_secs(5), || !temp_files_with(&tmp, 150000)
            .is_empty()),
        "temp path levels {levels:?}: no temp file with the first half: {:?}; log:\n{}",
        files_under(&tmp),
        error_lines(&nginx).join("\n")
    );
    let program = children_of(worker)[0];
    // SAFETY: signalling the worker of our own nginx.
    unsafe { libc::kill(worker as i32, libc::SIGKILL) };
    c.read_broken_body(head, Duration::from_secs(5));
    assert!(
        wait_until(Duration::from_secs(3), || matches!(
            proc_state(program),
            None | Some('Z')
        )),
        "the program outlived its worker"
    );
    assert!(
        wait_until(Duration::from_secs(5), || {
            let w = nginx.worker_pids();
            w.len() == 1 && w[0] != worker
        }),
        "no new worker"
    );
    assert!(
        wait_until(Duration::from_secs(5), || files_under(&tmp).is_empty()),
        "levels {levels:?}: the new worker left the dead one's temp file: {:?}",
        files_under(&tmp)
    );
    assert!(
        files_under(&store).is_empty(),
        "published: {:?}",
        files_under(&store)
    );
    let r = fetch(nginx.port, "/k/a.bin?ms=0");
    assert!(
        r.status == 200 && r.complete && r.body == gen(N),
        "levels {levels:?}: the next request: {}",
        r.summary()
    );
    assert_eq!(runs(&count), 2, "the next request ran the program again");
    let file = store.join("k/a.bin");
    assert!(wait_until(Duration::from_secs(3), || file.exists()));
    assert_eq!(fs::read(&file).unwrap(), gen(N));
    no_temp_file(&tmp, "after the recompute");
    no_programs_left(&nginx);
    nginx.stop();
}

/// SIGHUP while a herd waits on one program: every response complete and byte-exact, one run;
/// a request the new worker takes meanwhile waits on the same program (the zone survives).
#[test]
fn a_reload_with_a_herd_in_flight_keeps_one_run_and_whole_responses() {
    const N: usize = 512 * 1024;
    let nginx = Nginx::start_full(
        "",
        &format!(
            "{ZONE} {}",
            server(
                "transform_temp_path {PREFIX}/ttmp;
                 location /r/ { transform_exec {HELPER} count {PREFIX}/count-r
                                               pause 524288 262144 2500;
                                transform_store {PREFIX}/store$uri;
                                transform_lock on; }"
            )
        ),
        "info",
    );
    let store = worker_dir(&nginx, "store");
    let count = counter(&nginx, "r");
    let want = gen(N);
    let port = nginx.port;
    let old = nginx.worker_pid();
    let started = AtomicUsize::new(0);
    let got: Vec<Got> = std::thread::scope(|s| {
        let mut handles: Vec<_> = (0..20)
            .map(|_| {
                let started = &started;
                s.spawn(move || {
                    let st = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                    fetch_on(st, "GET", "/r/x.bin", Some(started))
                })
            })
            .collect();
        assert!(
            wait_until(Duration::from_secs(5), || started.load(Ordering::SeqCst)
                == 20),
            "only {} of 20 had bytes",
            started.load(Ordering::SeqCst)
        );
        // SAFETY: signalling our own nginx master.
        unsafe { libc::kill(nginx.master_pid() as i32, libc::SIGHUP) };
        assert!(
            wait_until(Duration::from_secs(5), || nginx
                .worker_pids()
                .iter()
                .any(|&w| w != old)),
            "no new worker after SIGHUP"
        );
        assert!(
            !store.join("r/x.bin").exists(),
            "the program ended before the reload was done (machine too slow for this test)"
        );
        handles.push(s.spawn(move || fetch(port, "/r/x.bin")));
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, g) in got.iter().enumerate() {
        assert!(
            g.status == 200 && g.complete && g.body == want,
            "response {i}: {}",
            g.summary()
        );
    }
    assert_eq!(
        runs(&count),
        1,
        "program runs: >1 means the request after the reload did not find the running program"
    );
    assert!(
        wait_until(Duration::from_secs(5), || proc_state(old).is_none()),
        "the old worker did not exit"
    );
    let file = store.join("r/x.bin");
    assert!(wait_until(Duration::from_secs(3), || file.exists()));
    assert!(fs::read(&file).unwrap() == want);
    no_temp_file(&nginx.prefix.join("ttmp"), "after the reload");
    no_programs_left(&nginx);
    nginx.stop();
}

/// Rounds of stores, herds, failing leaders, lock timeouts and clients going away: after each
/// round, no program or zombie is left and each worker's descriptors are where they were after
/// the first round.
#[test]
fn no_descriptor_leak_and_no_zombie_after_store_and_lock_work() {
    let nginx = Nginx::start_workers(
        2,
        "",
        &format!(
            "{ZONE} {}",
            spread_server(
                "transform_temp_path {PREFIX}/ttmp;
                 transform_store {PREFIX}/store$uri;
                 transform_lock on;
                 location /ok/ { transform_exec {HELPER} pause 200000 100000 300; }
                 location /fail/ { transform_exec {HELPER} pause-fail 100000 300 1; }
                 location /lt/ { transform_lock_timeout 300ms;
                                 transform_exec {HELPER} delay 1000 gen 1000; }
                 location /bad/ { transform_exec {HELPER} fail-after 1000 1; }
                 location /gone/ { transform_exec {HELPER} pause 400000 200000 300; }"
            )
        ),
        "info",
    );
    worker_dir(&nginx, "store");
    let tmp = nginx.prefix.join("ttmp");
    let port = nginx.port;
    let round = |tag: &str| {
        std::thread::scope(|s| {
            let mut hs = Vec::new();
            for _ in 0..10 {
                let p = format!("/ok/{tag}.bin");
                hs.push(s.spawn(move || fetch(port, &p).status));
            }
            for _ in 0..4 {
                let p = format!("/fail/{tag}.bin");
                hs.push(s.spawn(move || fetch(port, &p).status));
            }
            for _ in 0..3 {
                let p = format!("/lt/{tag}.bin");
                hs.push(s.spawn(move || fetch(port, &p).status));
            }
            let p = format!("/bad/{tag}.bin");
            hs.push(s.spawn(move || fetch(port, &p).status));
            let p = format!("/gone/{tag}.bin");
            hs.push(s.spawn(move || {
                let mut c = Client::connect(port);
                c.send(&format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n"));
                let status = c.read_head().status;
                c.read_some(1000);
                status
            }));
            for h in hs {
                h.join().unwrap();
            }
        });
        no_programs_left(&nginx);
        no_temp_file(&tmp, tag);
    };
    round("r1");
    let workers = nginx.worker_pids();
    let base: Vec<usize> = workers.iter().map(|&w| stable_fd_count(w)).collect();
    for tag in ["r2", "r3"] {
        round(tag);
        assert_eq!(nginx.worker_pids(), workers, "a worker died");
        for (w, &fds) in workers.iter().zip(&base) {
            assert!(
                wait_until(Duration::from_secs(3), || fd_count(*w) == fds),
                "{tag}: worker {w} has {} descriptors, {fds} after the first round",
                fd_count(*w)
            );
        }
    }
    nginx.stop();
}

#[test]
fn store_and_waiters_are_byte_exact_over_tls_http2_gzip_and_without_sendfile() {
    // The leader is served from its temp file, the waiters from the same growing file: over TLS,
    // HTTP/2 and gzip nginx reads that file into its buffers; with sendfile off too.
    const N: usize = 3 * 1024 * 1024 + 12345;
    let dir = temp_dir("store-tls");
    let (crt, key) = make_cert(&dir);
    let nginx = Nginx::start_workers(
        2,
        "",
        &format!(
            "{ZONE}
             server {{ listen 127.0.0.1:{{PORT}} ssl reuseport{{H2_LISTEN}}; {{H2_ON}}
                      ssl_certificate {crt}; ssl_certificate_key {key};
                      default_type application/octet-stream;
                      gzip on; gzip_types application/octet-stream;
                      transform_temp_path {{PREFIX}}/ttmp 1;
                      location /s/ {{ sendfile on;
                                     transform_exec {{HELPER}} pause {N} 1000000 700;
                                     transform_store {{PREFIX}}/store$uri; transform_lock on; }}
                      location /n/ {{ sendfile off;
                                     transform_exec {{HELPER}} pause {N} 1000000 700;
                                     transform_store {{PREFIX}}/store$uri; transform_lock on; }} }}",
            crt = crt.display(),
            key = key.display()
        ),
        "info",
    );
    worker_dir(&nginx, "store");
    let want = sha256(&gen(N));
    for (path, modes) in [
        ("/s/a.bin", ["--http1.1", "--http2", "--compressed"]),
        ("/n/b.bin", ["--http2", "--http1.1", "--compressed"]),
    ] {
        let url = format!("https://127.0.0.1:{}{path}", nginx.port);
        let bodies: Vec<(bool, Vec<u8>)> = std::thread::scope(|s| {
            let hs: Vec<_> = modes
                .iter()
                .map(|m| {
                    let url = url.clone();
                    s.spawn(move || curl(&["-sk", m, &url]))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for ((ok, body), mode) in bodies.iter().zip(modes) {
            assert!(ok, "{path} {mode}: curl failed");
            assert_eq!(sha256(body), want, "{path} {mode}: body");
        }
        let stored = fs::read(nginx.prefix.join(format!("store{path}"))).expect("stored file");
        assert_eq!(sha256(&stored), want, "{path}: stored file");
    }
    nginx.stop();
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_stored_output_moves_by_splice_and_sendfile_never_through_userspace() {
    const N: usize = 64 * 1024 * 1024;
    let nginx = Nginx::start(&format!(
        "{ZONE} {}",
        server(
            "sendfile on; transform_temp_path {PREFIX}/ttmp;
             location /z/ { transform_exec {HELPER} gen 67108864 1048576;
                            transform_store {PREFIX}/store$uri; transform_lock on; }"
        )
    ));
    worker_dir(&nginx, "store");
    let worker = nginx.worker_pid();
    let trace = nginx.prefix.join("strace.out");
    let strace = Strace::attach(
        worker,
        "read,pread64,readv,write,pwrite64,writev,splice,sendfile",
        &trace,
    );
    let got = fetch(nginx.port, "/z/big.bin");
    strace.stop();
    assert!(got.status == 200 && got.complete, "{}", got.summary());
    assert_eq!(got.body.len(), N);
    assert_eq!(sha256(&got.body), sha256(&gen(N)));
    let text = fs::read_to_string(&trace).unwrap();
    let calls = |name: &str| {
        text.lines()
            .filter(|l| l.contains(&format!("{name}(")) && !l.contains("resumed"))
            .collect::<Vec<_>>()
    };
    let moved = |lines: &[&str]| -> u64 {
        lines
            .iter()
            .filter_map(|l| l.rsplit("= ").next()?.trim().parse::<u64>().ok())
            .sum()
    };
    let splices = calls("splice");
    let sendfiles = calls("sendfile");
    assert!(
        moved(&splices) >= N as u64,
        "splice moved {} of {N} bytes into the file",
        moved(&splices)
    );
    assert!(
        moved(&sendfiles) >= N as u64,
        "sendfile sent {} of {N} bytes",
        moved(&sendfiles)
    );
    // What else went through userspace: the request, the header, the log, stderr: kilobytes.
    let copied: u64 = ["read", "pread64", "readv", "write", "pwrite64", "writev"]
        .iter()
        .map(|c| moved(&calls(c)))
        .sum();
    assert!(
        copied < 256 * 1024,
        "{copied} bytes went through read/write calls for a {N}-byte output"
    );
    nginx.stop();
}

#[test]
fn before_linux_6_6_the_leader_touches_the_file_for_its_waiters() {
    // splice(2) into a file raises no inotify event before Linux 6.6: there the leader marks the
    // file changed after each write while waiters are there. TRANSFORM_TEST_KERNEL makes the
    // module take that path on this machine's newer kernel; strace sees the touches, and the
    // waiters still stream the output as it grows.
    const N: usize = 512 * 1024;
    let nginx = Nginx::start_with(
        "env TRANSFORM_TEST_KERNEL=6.1.0-18-amd64;",
        &format!(
            "{ZONE} {}",
            server(
                "transform_temp_path {PREFIX}/ttmp;
                 location /t/ { transform_exec {HELPER} pause 524288 262144 1000;
                                transform_store {PREFIX}/store$uri; transform_lock on; }"
            )
        ),
    );
    worker_dir(&nginx, "store");
    let tmp = nginx.prefix.join("ttmp");
    let worker = nginx.worker_pid();
    let trace = nginx.prefix.join("strace.out");
    let strace = Strace::attach(worker, "utimensat", &trace);
    let port = nginx.port;
    let want = gen(N);
    let (leader, waiter) = std::thread::scope(|s| {
        let leader = s.spawn(|| fetch(port, "/t/x.bin"));
        // The waiter comes while the leader's first half is in the file and its program sleeps.
        assert!(
            wait_until(Duration::from_secs(5), || !temp_files_with(
                &tmp,
                (N / 2) as u64
            )
            .is_empty()),
            "the leader's first half never reached its temp file"
        );
        let waiter = s.spawn(|| fetch(port, "/t/x.bin"));
        (leader.join().unwrap(), waiter.join().unwrap())
    });
    strace.stop();
    assert!(leader.status == 200 && leader.complete && leader.body == want);
    assert!(
        waiter.status == 200 && waiter.complete && waiter.body == want,
        "{}",
        waiter.summary()
    );
    let touches = fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("utimensat("))
        .count();
    assert!(touches >= 1, "no utimensat() by the leader with a waiter");
    nginx.stop();
}

#[test]
fn a_lock_under_steady_load_never_cuts_a_waiter() {
    // Requests for one key keep coming while programs end and start: a finished slot is taken
    // again while its waiters still read their end. None may be cut or refused (the review
    // found 433 of 1809 cut: waiters of a finished generation took its reuse for a dead leader).
    const N: usize = 400_000;
    let nginx = Nginx::start_workers(
        2,
        "",
        &format!(
            "{ZONE} {}",
            spread_server(
                "transform_temp_path {PREFIX}/ttmp;
                 location /fast/ { transform_exec {HELPER} count {PREFIX}/count-fast
                                                  pause 400000 100000 150;
                                   transform_lock on; transform_lock_key $uri; }
                 location /c404/ { transform_output cgi;
                                   transform_exec {HELPER} delay 200 cgi-status 404 1000 -;
                                   transform_store {PREFIX}/store$uri; transform_lock on; }"
            )
        ),
        "info",
    );
    worker_dir(&nginx, "store");
    let count = counter(&nginx, "fast");
    let want = gen(N);
    let port = nginx.port;
    let until = Instant::now() + Duration::from_secs(3);
    let results: Vec<Vec<(String, String)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..16)
            .map(|i| {
                let want = &want;
                s.spawn(move || {
                    let mut bad = Vec::new();
                    while Instant::now() < until {
                        let path = if i % 4 == 3 { "/c404/k" } else { "/fast/k" };
                        let g = fetch(port, path);
                        let ok = if i % 4 == 3 {
                            g.status == 404 && g.complete && g.body == gen(1000)
                        } else {
                            g.status == 200 && g.complete && g.body == *want
                        };
                        if !ok {
                            bad.push((path.to_string(), g.summary()));
                        }
                    }
                    bad
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let bad: Vec<_> = results.into_iter().flatten().collect();
    assert!(
        bad.is_empty(),
        "{} bad responses: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    assert!(runs(&count) >= 2, "the load did not span several programs");
    let log = nginx.error_log();
    assert!(
        !log.contains("worker is gone"),
        "a live leader was taken for a dead one"
    );
    no_temp_file(&nginx.prefix.join("ttmp"), "after the load");
    nginx.stop();
}

#[test]
fn private_or_encoded_responses_are_neither_stored_nor_shared() {
    // A cookie, Cache-Control private/no-store/no-cache or a Content-Encoding: each request runs
    // its own program and gets its own headers; nothing is published (the review saw a waiter get
    // a gzip body without its Content-Encoding, and a Set-Cookie response stored).
    let script = |header: &str, name: &str| {
        format!(
            "location /{name}/ {{ transform_output cgi;
                 transform_exec /bin/sh -c \"echo run >> {{PREFIX}}/count-{name}; sleep 0.5;
                     printf 'Content-Type: text/plain\\r\\n{header}\\r\\n\\r\\nbody'\";
                 transform_store {{PREFIX}}/store$uri; transform_lock on; }}"
        )
    };
    let cases = [
        ("Set-Cookie: session=leader-secret", "cookie"),
        ("Cache-Control: private, max-age=60", "private"),
        ("Cache-Control: no-store", "nostore"),
        ("Content-Encoding: x-custom", "encoded"),
    ];
    let locations: String = cases.iter().map(|(h, n)| script(h, n)).collect();
    let nginx = Nginx::start(&format!(
        "{ZONE} {}",
        server(&format!("transform_temp_path {{PREFIX}}/ttmp; {locations}"))
    ));
    let store = worker_dir(&nginx, "store");
    let port = nginx.port;
    for (header, name) in cases {
        let count = counter(&nginx, name);
        let path = format!("/{name}/x");
        let got: Vec<Got> = std::thread::scope(|s| {
            let leader = s.spawn(|| fetch(port, &path));
            assert!(wait_until(Duration::from_secs(5), || runs(&count) == 1));
            let waiters: Vec<_> = (0..3).map(|_| s.spawn(|| fetch(port, &path))).collect();
            std::iter::once(leader)
                .chain(waiters)
                .map(|h| h.join().unwrap())
                .collect()
        });
        let (hname, hvalue) = header.split_once(": ").unwrap();
        for (i, g) in got.iter().enumerate() {
            assert!(
                g.status == 200 && g.complete && g.body == b"body",
                "{name} {i}: {}",
                g.summary()
            );
            assert_eq!(g.header(hname), Some(hvalue), "{name} {i}: its header");
        }
        assert_eq!(runs(&count), 4, "{name}: every request ran its own program");
        assert!(files_under(&store).is_empty(), "{name}: published");
    }
    no_temp_file(&nginx.prefix.join("ttmp"), "after the private responses");
    nginx.stop();
}

#[test]
fn output_past_its_content_length_is_not_stored() {
    let nginx = Nginx::start(&format!(
        "{ZONE} {}",
        server(
            "transform_temp_path {PREFIX}/ttmp;
             location /long/ { transform_output cgi;
                               transform_exec {HELPER} cgi-status 200 3000 2000;
                               transform_store {PREFIX}/store$uri; }"
        )
    ));
    let store = worker_dir(&nginx, "store");
    let g = fetch(nginx.port, "/long/x");
    assert!(
        g.status == 200 && g.complete && g.body == gen(3000)[..2000],
        "{}",
        g.summary()
    );
    assert!(
        wait_until(Duration::from_secs(5), || nginx
            .error_log()
            .contains("sent more than its Content-Length")),
        "the excess was not logged"
    );
    assert!(
        files_under(&store).is_empty(),
        "published despite the excess"
    );
    no_temp_file(&nginx.prefix.join("ttmp"), "after the excess");
    nginx.stop();
}

#[test]
fn when_the_leaders_client_goes_away_one_waiter_takes_over() {
    const N: usize = 100_000;
    let nginx = Nginx::start(&format!(
        "{ZONE} {}",
        server(
            "transform_temp_path {PREFIX}/ttmp;
             location /a/ { transform_exec {HELPER} count {PREFIX}/count-a delay 700 gen 100000;
                            transform_store {PREFIX}/store$uri; transform_lock on; }"
        )
    ));
    let store = worker_dir(&nginx, "store");
    let count = counter(&nginx, "a");
    let port = nginx.port;
    let mut leader = TcpStream::connect(("127.0.0.1", port)).unwrap();
    leader
        .write_all(b"GET /a/x.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || runs(&count) == 1));
    let got: Vec<Got> = std::thread::scope(|s| {
        let waiters: Vec<_> = (0..4)
            .map(|_| s.spawn(|| fetch(port, "/a/x.bin")))
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        drop(leader);
        waiters.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, g) in got.iter().enumerate() {
        assert!(
            g.status == 200 && g.complete && g.body == gen(N),
            "waiter {i}: {}",
            g.summary()
        );
    }
    assert_eq!(
        runs(&count),
        2,
        "the aborted leader's program, then one for all the waiters"
    );
    assert!(
        wait_until(Duration::from_secs(5), || files_under(&store).len() == 1),
        "the new leader's output was not stored"
    );
    assert_eq!(fs::read(&files_under(&store)[0]).unwrap(), gen(N));
    no_temp_file(&nginx.prefix.join("ttmp"), "after the take-over");
    no_programs_left(&nginx);
    nginx.stop();
}

#[test]
fn nginx_t_refuses_a_temp_path_too_long_for_the_lock() {
    // Five components of 100 bytes: a valid path, too long for a lock slot's name.
    let long = format!("{{PREFIX}}{}", format!("/{}", "d".repeat(100)).repeat(5));
    let (ok, stderr, path) = nginx_test_config(&format!(
        "{ZONE} server {{ listen 127.0.0.1:{{PORT}};
           location / {{ transform_exec /bin/true; transform_temp_path {long};
                        transform_lock on; transform_lock_key $uri; }} }}"
    ));
    std::fs::remove_dir_all(path.parent().unwrap()).ok();
    assert!(!ok, "accepted");
    assert!(
        stderr.contains("\"transform_temp_path\" in ") && stderr.contains("is too long"),
        "{stderr}"
    );
}

#[test]
fn a_stalled_client_holds_the_stored_output_back_within_bounds() {
    // The file sink does not wait for the client, up to 64 MiB ahead when nobody else reads the
    // file: a client that stops reading must not let an output run onto the disk unbounded (the
    // review saw 2 GB in 3 s behind a client reading 10 KB/s).
    const N: usize = 200 * 1024 * 1024;
    let nginx = Nginx::start(&server(
        "sendfile on; transform_temp_path {PREFIX}/ttmp;
         location /big/ { transform_exec {HELPER} gen 209715200 1048576;
                          transform_store {PREFIX}/store$uri; }",
    ));
    worker_dir(&nginx, "store");
    let tmp = nginx.prefix.join("ttmp");
    let mut s = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    s.write_all(b"GET /big/x.bin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut raw = Vec::with_capacity(N + 4096);
    let n = s.read(&mut buf).unwrap();
    raw.extend_from_slice(&buf[..n]);
    // The client stops reading: the file grows to its bound, then no further.
    std::thread::sleep(Duration::from_secs(2));
    // (Without a bound the whole output is on disk by now, published even.)
    let stored = nginx.prefix.join("store/big/x.bin");
    let size = temp_files_with(&tmp, 0)
        .iter()
        .chain(std::iter::once(&stored))
        .map(|p| fs::metadata(p).map_or(0, |m| m.len()))
        .max()
        .unwrap_or(0);
    assert!(
        size > 0 && size < 160 * 1024 * 1024,
        "the temp file is {size} bytes behind a client that stopped reading"
    );
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let (body, complete, _) = dechunk(&raw[find(&raw, b"\r\n\r\n").unwrap() + 4..]);
    assert!(complete, "not complete: {} bytes", body.len());
    assert_eq!(body.len(), N);
    assert_eq!(sha256(&body), sha256(&gen(N)));
    assert!(wait_until(Duration::from_secs(5), || stored.exists()));
    assert_eq!(fs::metadata(&stored).unwrap().len(), N as u64);
    nginx.stop();
}

#[test]
fn a_killed_workers_slots_are_freed_when_its_successor_starts() {
    // A 32k zone holds a few slots: a worker killed while it leads as many keys leaves them
    // all running under a dead pid; the next worker frees them, so new keys are shared again
    // (the review saw every new key run unshared, "zone is full", until each dead key came back).
    let mut nginx = Nginx::start(&format!(
        "transform_lock_zone small:32k;
         {}",
        server(
            "transform_temp_path {PREFIX}/ttmp;
             location /k/ { transform_exec {HELPER} count {PREFIX}/count-k pause 2000 1000 30000;
                            transform_lock on; transform_lock_key $uri; }
             location /n/ { transform_exec {HELPER} count {PREFIX}/count-k pause 2000 1000 500;
                            transform_lock on; transform_lock_key $uri; }"
        )
    ));
    nginx.allow("exited on signal 9");
    let count = counter(&nginx, "k");
    let port = nginx.port;
    // More keys than slots: some run unshared already ("full"); the slots all lead.
    let mut conns: Vec<TcpStream> = (0..14)
        .map(|i| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(format!("GET /k/{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .unwrap();
            s
        })
        .collect();
    assert!(wait_until(Duration::from_secs(10), || runs(&count) == 14));
    let old = nginx.worker_pid();
    // SAFETY: signalling the worker of the nginx we started.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    assert!(wait_until(Duration::from_secs(10), || nginx
        .worker_pids()
        .first()
        .is_some_and(|&p| p != old)));
    conns.clear();
    let mark = nginx.error_log().lines().count();
    // A new key, twice at once: shared (one run), not refused for want of room.
    let before = runs(&count);
    let got: Vec<Got> = std::thread::scope(|s| {
        let a = s.spawn(|| fetch(port, "/n/new"));
        assert!(wait_until(Duration::from_secs(5), || runs(&count) == before + 1));
        let b = s.spawn(|| fetch(port, "/n/new"));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    for g in &got {
        assert!(
            g.status == 200 && g.complete && g.body == gen(2000),
            "{}",
            g.summary()
        );
    }
    assert_eq!(runs(&count), before + 1, "the new key ran twice");
    let log = nginx.error_log();
    let full = log
        .lines()
        .skip(mark)
        .filter(|l| l.contains("transform_lock_zone is full"))
        .count();
    assert_eq!(
        full, 0,
        "the zone was full after the worker's successor started"
    );
    nginx.stop();
}

#[test]
fn only_get_requests_are_stored_or_shared() {
    // A POST's output may depend on its body: it is neither shared with a GET for the same URI
    // nor stored (the review poisoned the stored file with a POST body).
    let nginx = Nginx::start(&format!(
        "{ZONE} {}",
        server(
            "transform_temp_path {PREFIX}/ttmp;
             location /p/ { transform_stdin body; transform_request_buffering on;
                            transform_exec /bin/sh -c \"sleep 0.8; cat\";
                            transform_store {PREFIX}/store$uri; transform_lock on; }"
        )
    ));
    let store = worker_dir(&nginx, "store");
    let port = nginx.port;
    let (post, get) = std::thread::scope(|s| {
        let post = s.spawn(|| {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.write_all(
                b"POST /p/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 19\r\n\r\nATTACKER-CONTROLLED",
            )
            .unwrap();
            let mut out = Vec::new();
            c.read_to_end(&mut out).ok();
            out
        });
        std::thread::sleep(Duration::from_millis(300));
        let get = s.spawn(|| fetch(port, "/p/x"));
        (post.join().unwrap(), get.join().unwrap())
    });
    assert!(
        find(&post, b"ATTACKER-CONTROLLED").is_some(),
        "the POST got its own output"
    );
    assert!(
        get.status == 200 && get.complete && get.body.is_empty(),
        "the GET got: {}",
        get.summary()
    );
    assert!(
        wait_until(Duration::from_secs(3), || store.join("p/x").exists()),
        "the GET's own output was not stored"
    );
    assert_eq!(fs::read(store.join("p/x")).unwrap(), b"");
    nginx.stop();
}

#[test]
fn a_response_that_varies_is_neither_stored_nor_shared() {
    let nginx = Nginx::start(&format!(
        "{ZONE} {}",
        server(
            "transform_temp_path {PREFIX}/ttmp;
             location /v/ { transform_output cgi;
                            transform_exec /bin/sh -c \"echo run >> {PREFIX}/count-v; sleep 0.5;
                                printf 'Content-Type: image/webp\\r\\nVary: Accept\\r\\n\\r\\nwebp'\";
                            transform_store {PREFIX}/store$uri; transform_lock on; }"
        )
    ));
    let store = worker_dir(&nginx, "store");
    let count = counter(&nginx, "v");
    let port = nginx.port;
    let got: Vec<Got> = std::thread::scope(|s| {
        let a = s.spawn(|| fetch(port, "/v/x"));
        assert!(wait_until(Duration::from_secs(5), || runs(&count) == 1));
        let b = s.spawn(|| fetch(port, "/v/x"));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    for g in &got {
        assert!(g.status == 200 && g.complete, "{}", g.summary());
        assert_eq!(g.header("Vary"), Some("Accept"));
    }
    assert_eq!(runs(&count), 2, "a varying response was shared");
    assert!(
        files_under(&store).is_empty(),
        "a varying response was stored"
    );
    nginx.stop();
}

#[test]
fn a_cgi_response_with_its_length_is_stored_once_the_program_exits() {
    // The response is complete at its Content-Length before the program exits: it is stored
    // when the program exits 0 (the review saw it stored 0 times in 3 when the program lingered).
    let nginx = Nginx::start(&server(
        "transform_temp_path {PREFIX}/ttmp;
         location /l/ { transform_output cgi;
                        transform_exec /bin/sh -c \"printf 'Content-Type: text/plain\\r\\nContent-Length: 6\\r\\n\\r\\nhello\\n'; sleep 0.3\";
                        transform_store {PREFIX}/store$uri; }
         location /lf/ { transform_output cgi;
                         transform_exec /bin/sh -c \"printf 'Content-Type: text/plain\\r\\nContent-Length: 6\\r\\n\\r\\nhello\\n'; sleep 0.3; exit 3\";
                         transform_store {PREFIX}/store$uri; }",
    ));
    let store = worker_dir(&nginx, "store");
    for i in 0..3 {
        let g = fetch(nginx.port, &format!("/l/{i}"));
        assert!(
            g.status == 200 && g.complete && g.body == b"hello\n",
            "{}",
            g.summary()
        );
        assert!(
            wait_until(Duration::from_secs(5), || store
                .join(format!("l/{i}"))
                .exists()),
            "not stored ({i})"
        );
        assert_eq!(fs::read(store.join(format!("l/{i}"))).unwrap(), b"hello\n");
    }
    // The same, exiting 3 after its complete response: not stored.
    let g = fetch(nginx.port, "/lf/x");
    assert!(g.status == 200 && g.complete, "{}", g.summary());
    assert!(wait_until(Duration::from_secs(5), || nginx
        .error_log()
        .contains("exited with code 3 after its complete response")));
    assert!(!store.join("lf/x").exists(), "stored despite exit 3");
    no_temp_file(&nginx.prefix.join("ttmp"), "after the lingering programs");
    nginx.stop();
}

#[test]
fn a_leader_whose_client_leaves_mid_stream_finishes_for_its_waiters_and_the_store() {
    // As nginx's upstream keeps reading a response it stores after its client closed: the
    // program goes on in the background, the waiters get the whole output, and it is stored
    // (the review saw every streaming waiter cut at 100000 bytes).
    const N: usize = 400_000;
    let nginx = Nginx::start(&format!(
        "{ZONE} {}",
        server(
            "transform_temp_path {PREFIX}/ttmp;
             location /m/ { transform_exec {HELPER} count {PREFIX}/count-m
                                           pause 400000 100000 1000;
                            transform_store {PREFIX}/store$uri; transform_lock on; }"
        )
    ));
    let store = worker_dir(&nginx, "store");
    let count = counter(&nginx, "m");
    let port = nginx.port;
    let want = gen(N);
    for (path, waiters) in [("/m/shared.bin", 3), ("/m/alone.bin", 0)] {
        let before = runs(&count);
        let mut leader = TcpStream::connect(("127.0.0.1", port)).unwrap();
        leader
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        // The leader's client reads the first bytes, then goes away while the program sleeps.
        let mut buf = [0u8; 4096];
        assert!(leader.read(&mut buf).unwrap() > 0);
        let got: Vec<Got> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..waiters)
                .map(|_| s.spawn(|| fetch(port, path)))
                .collect();
            std::thread::sleep(Duration::from_millis(300));
            drop(leader);
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, g) in got.iter().enumerate() {
            assert!(
                g.status == 200 && g.complete && g.body == want,
                "{path} waiter {i}: {}",
                g.summary()
            );
        }
        let file = store.join(&path[1..]);
        assert!(
            wait_until(Duration::from_secs(5), || file.exists()),
            "{path}: not stored after its client left"
        );
        assert_eq!(fs::read(&file).unwrap(), want, "{path}: stored file");
        assert_eq!(runs(&count), before + 1, "{path}: the program ran again");
    }
    assert!(nginx.error_log().contains("goes on in the background"));
    no_temp_file(&nginx.prefix.join("ttmp"), "after the background");
    no_programs_left(&nginx);
    nginx.stop();
}

#[test]
fn a_program_in_the_background_keeps_its_timeouts() {
    // transform_timeout still ends a program that goes on after its client left: nothing is
    // stored, its file removed, it is reaped.
    let nginx = Nginx::start(&server(
        "transform_temp_path {PREFIX}/ttmp;
         location /t/ { transform_timeout 1500ms;
                        transform_exec {HELPER} count {PREFIX}/count-t pause 400000 100000 30000;
                        transform_store {PREFIX}/store$uri; }",
    ));
    let store = worker_dir(&nginx, "store");
    let count = counter(&nginx, "t");
    let mut c = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    c.write_all(b"GET /t/x.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    assert!(c.read(&mut buf).unwrap() > 0);
    drop(c);
    assert!(wait_until(Duration::from_secs(5), || nginx
        .error_log()
        .contains("goes on in the background")));
    assert_eq!(runs(&count), 1);
    assert!(
        wait_until(Duration::from_secs(5), || nginx
            .error_log()
            .contains("ran out of its transform_timeout")),
        "transform_timeout did not end the program in the background"
    );
    no_programs_left(&nginx);
    no_temp_file(&nginx.prefix.join("ttmp"), "after the timeout");
    assert!(files_under(&store).is_empty(), "stored despite the timeout");
    nginx.stop();
}
