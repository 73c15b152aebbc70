//! `transform_filter_pass` (issue 12, the end of its spec): a pooled long-lived program filters
//! responses. It gets each as an HTTP/1.1 response message (its body chunked) on stdin and
//! answers the response that replaces it on stdout.
//!
//! The program is tests/fixtures/pool_filter.py, a mode per pool (its argv) or per response (an
//! `X-Filter-Mode` header the proxied application adds); every answer carries `X-Filter-Pid` and
//! `X-Filter-N` (the responses that process answered). The proxied application is a second
//! server of the same nginx on a unix socket (`{UP}`); files are served from a directory of the
//! test's own (`{DATA}`).

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use common::pools::*;
use common::*;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// The byte the fixture's `xor` mode XORs every body byte with.
const KEY: u8 = 0x5a;

/// The fixture program.
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pool_filter.py");

/// The program and arguments of a `transform_pool` running the fixture in `mode`: the fixture
/// itself when it is executable, else through the interpreter (a checkout that lost the bit).
fn program(mode: &str) -> String {
    let executable = fs::metadata(FIXTURE)
        .map(|m| m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false);
    if executable {
        format!("{FIXTURE} {mode}")
    } else {
        format!("/usr/bin/python3 {FIXTURE} {mode}")
    }
}

/// At the top of every configuration: the types the tests serve, the upstream's protocol, and
/// the access log format of the front server (`logs/pf.log`).
const HTTP_TOP: &str = "types { text/html html; text/plain txt; application/json json;
                                application/octet-stream bin; }
                        default_type application/octet-stream;
                        proxy_http_version 1.1;
                        log_format pf \"$uri $status pid=$transform_pid n=$transform_requests \
                                        q=$transform_queue_time\";";

/// A directory of files to serve (readable by the workers), removed when dropped.
struct Data {
    path: PathBuf,
}

impl Data {
    fn new(tag: &str) -> Data {
        Data {
            path: temp_dir(&format!("pfilter-{tag}")),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        let path = self.file(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }

    /// Writes `n` bytes of the helper's stream to `name` without holding them.
    fn write_gen(&self, name: &str, n: u64) {
        let path = self.file(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let out = fs::File::create(&path).unwrap();
        let ok = Command::new(HELPER)
            .args(["gen", &n.to_string(), "1048576"])
            .stdout(out)
            .status()
            .expect("run the helper")
            .success();
        assert!(ok, "the helper could not write {}", path.display());
        assert_eq!(fs::metadata(&path).unwrap().len(), n);
    }
}

impl Drop for Data {
    fn drop(&mut self) {
        if std::env::var_os("TEST_NGINX_LEAVE").is_none() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// The sha256 of a file, read piece by piece; `map` may change each piece before it is hashed.
fn sha256_file(path: &Path, mut map: impl FnMut(&mut [u8])) -> String {
    let mut f = fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        map(&mut buf[..n]);
        h.update(&buf[..n]);
    }
    format!("{:x}", h.finalize())
}

/// What the fixture's `xor` mode makes of the file, as a sha256.
fn xor_sha(path: &Path) -> String {
    sha256_file(path, |b| b.iter_mut().for_each(|x| *x ^= KEY))
}

fn xor(data: &[u8]) -> Vec<u8> {
    data.iter().map(|b| b ^ KEY).collect()
}

fn gen(n: usize) -> Vec<u8> {
    helper_output(&["gen", &n.to_string()])
}

/// Starts nginx with `conf` inside `http {}` (after [`HTTP_TOP`]): `{DATA}` is the data
/// directory, `{UPSTREAM}` what the application server listens on, `{UP}` its URL for
/// `proxy_pass`, `{XOR}`, `{UPPER}`, `{HEADERS}`, `{STATUS}` the fixture in that mode,
/// `{FIXTURE}` the fixture's program (to which a mode is appended).
fn start(data: &Data, conf: &str) -> Nginx {
    Nginx::start(&expand(data, conf))
}

fn expand(data: &Data, conf: &str) -> String {
    format!("{HTTP_TOP}\n{conf}")
        .replace("{DATA}", &data.path.display().to_string())
        .replace("{UPSTREAM}", "unix:{PREFIX}/up.sock")
        .replace("{UP}", "http://unix:{PREFIX}/up.sock:")
        .replace("{XOR}", &program("xor"))
        .replace("{UPPER}", &program("upper"))
        .replace("{HEADERS}", &program("headers"))
        .replace("{STATUS}", &program("status"))
        .replace("{FIXTURE}", &program(""))
}

/// Sends a request (a whole raw head) and reads the response.
fn request(c: &mut Client, raw: &str, head: bool) -> Response {
    c.send(raw);
    c.read_response(head)
}

fn get_with(c: &mut Client, path: &str, headers: &str) -> Response {
    request(
        c,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n"),
        false,
    )
}

fn get(port: u16, path: &str) -> Response {
    Client::connect(port).get(path)
}

/// GETs `path` and hashes the body as it comes (never holding it): (head, end, length, sha256).
fn fetch_hashed(port: u16, path: &str) -> (Response, End, u64, String) {
    let mut c = Client::connect(port);
    c.send(&format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"));
    let head = c.read_head();
    let mut h = Sha256::new();
    let (end, len) = c.stream_body(&head, &mut |b| h.update(b));
    (head, end, len, format!("{:x}", h.finalize()))
}

/// The pid of the pooled process that answered (its `X-Filter-Pid`).
#[track_caller]
fn filter_pid(r: &Response) -> u32 {
    r.header("X-Filter-Pid")
        .unwrap_or_else(|| panic!("no X-Filter-Pid: not filtered? {:?}", r.headers))
        .parse()
        .expect("a pid")
}

/// How many responses that process had answered (its `X-Filter-N`).
#[track_caller]
fn filter_n(r: &Response) -> u64 {
    r.header("X-Filter-N")
        .unwrap_or_else(|| panic!("no X-Filter-N: {:?}", r.headers))
        .parse()
        .expect("a count")
}

/// Asserts that a response went through the pooled program: what the handler's validators and
/// length were is gone, and the program's own header is there.
#[track_caller]
fn assert_filtered(r: &Response, what: &str) {
    for h in ["ETag", "Last-Modified", "Accept-Ranges", "Content-Range"] {
        assert!(
            r.header(h).is_none(),
            "{what}: a filtered response has no {h}: {:?}",
            r.headers
        );
    }
    assert!(
        r.header("X-Filter-Pid").is_some(),
        "{what}: not answered by the pooled program: {:?}",
        r.headers
    );
}

/// Samples the RSS of `pid` every 10 ms while `f` runs; returns what `f` returned and the
/// largest RSS seen, in KiB.
fn peak_rss<T>(pid: u32, f: impl FnOnce() -> T) -> (T, u64) {
    /// Stops the sampler also when `f` panics (the scope would wait for it forever).
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let stop = AtomicBool::new(false);
    let peak = AtomicU64::new(rss_kib(pid));
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                peak.fetch_max(rss_kib(pid), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let _stop = Stop(&stop);
        f()
    });
    (out, peak.load(Ordering::SeqCst))
}

/// The error-log lines of the module's pools.
fn pool_lines(nginx: &Nginx) -> Vec<String> {
    all_pool_lines(nginx)
}

/// What follows `transform pool "NAME" process PID WHAT` (up to nginx's `, client: ...`).
fn reason(nginx: &Nginx, name: &str, pid: u32, what: &str) -> Option<String> {
    pool_reason(nginx, name, pid, what)
}

/// Waits (up to 5 s) for the line `transform pool "NAME" process PID WHAT...`; what follows.
#[track_caller]
fn wait_reason(nginx: &Nginx, name: &str, pid: u32, what: &str) -> String {
    let mut found = None;
    wait_until(Duration::from_secs(5), || {
        found = reason(nginx, name, pid, what);
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "no \"process {pid} {what}\" line; the pools' lines:\n{}",
            pool_lines(nginx).join("\n")
        )
    })
}

/// Waits (up to 5 s) for the line that says what became of process `pid` of pool `name` (it was
/// replaced, retired, or exited before its first response); what follows `process PID `, or
/// `(no line)`.
fn what_became(nginx: &Nginx, name: &str, pid: u32) -> String {
    let mut found = None;
    wait_until(Duration::from_secs(5), || {
        found = ["replaced", "retired", "exited"]
            .into_iter()
            .find_map(|what| reason(nginx, name, pid, what).map(|rest| format!("{what}{rest}")));
        found.is_some()
    });
    found.unwrap_or_else(|| "(no line)".to_string())
}

/// One line of the front server's access log (`logs/pf.log`).
#[derive(Debug, Clone)]
struct Logged {
    uri: String,
    status: u16,
    pid: String,
    n: String,
    queue: String,
}

/// The access log once it has `count` lines (waited for up to 5 s).
#[track_caller]
fn access(nginx: &Nginx, count: usize) -> Vec<Logged> {
    let path = nginx.prefix.join("logs/pf.log");
    let read = || {
        fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    wait_until(Duration::from_secs(5), || read().len() >= count);
    let lines = read();
    assert_eq!(lines.len(), count, "access log lines: {lines:#?}");
    lines
        .iter()
        .map(|l| {
            let mut w = l.split(' ');
            let uri = w.next().unwrap().to_string();
            let status = w.next().unwrap().parse().expect("status");
            let mut field = |k: &str| {
                w.next()
                    .and_then(|v| v.strip_prefix(&format!("{k}=")))
                    .unwrap_or_else(|| panic!("no {k}= in {l:?}"))
                    .to_string()
            };
            Logged {
                uri,
                status,
                pid: field("pid"),
                n: field("n"),
                queue: field("q"),
            }
        })
        .collect()
}

/// The worker's children are running processes only (no zombie), at most `max` of them.
#[track_caller]
fn no_zombies(nginx: &Nginx, max: usize) {
    let worker = nginx.worker_pid();
    let ok = || {
        let c = children_of(worker);
        c.len() <= max
            && c.iter()
                .all(|&p| matches!(proc_state(p), Some(s) if s != 'Z'))
    };
    assert!(
        wait_until(Duration::from_secs(5), ok),
        "the worker's children (at most {max}, no zombie): {:?}",
        children_of(worker)
            .into_iter()
            .map(|p| (p, proc_state(p)))
            .collect::<Vec<_>>()
    );
}

/// Stops nginx and asserts that the pooled processes `pids` are gone (not even zombies).
#[track_caller]
fn stop_and_check_gone(nginx: Nginx, pids: &[u32]) {
    nginx.stop();
    for &pid in pids {
        assert!(
            wait_until(Duration::from_secs(5), || proc_state(pid).is_none()),
            "pooled process {pid} left after nginx stopped ({:?})",
            proc_state(pid)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// What is filtered, byte for byte: static files and proxied responses
// ---------------------------------------------------------------------------------------------

/// Static files and proxied responses (proxy buffering on and off) of 0, 1, 64 KiB and 20 MiB
/// come back as the XOR of the original, byte for byte, complete, with the original's type and
/// without its length and validators; all through the pool's one process. The worker's RSS grows
/// by at most 16 MiB over a 20 MiB body (the program streams, so must the module).
#[test]
fn static_and_proxied_responses_are_filtered_byte_exact() {
    let data = Data::new("exact");
    let sizes = [0, 1, 64 * KIB, 20 * MIB];
    for n in sizes {
        data.write_gen(&format!("f{n}.html"), n);
    }
    let nginx = start(
        &data,
        "transform_pool x {XOR};
         server { listen {UPSTREAM}; root {DATA}; }
         server { listen 127.0.0.1:{PORT}; access_log {PREFIX}/logs/pf.log pf;
           location /static/ { alias {DATA}/; transform_filter_pass x; }
           location /buffered/ { proxy_pass {UP}/; transform_filter_pass x; }
           location /unbuffered/ { proxy_pass {UP}/; proxy_buffering off;
                                   transform_filter_pass x; } }",
    );
    let worker = nginx.worker_pid();
    let mut pids = Vec::new();
    for n in sizes {
        let want = xor_sha(&data.file(&format!("f{n}.html")));
        for loc in ["static", "buffered", "unbuffered"] {
            let path = format!("/{loc}/f{n}.html");
            let before = rss_kib(worker);
            let ((head, end, len, sha), peak) =
                peak_rss(worker, || fetch_hashed(nginx.port, &path));
            assert_eq!(head.status, 200, "{path}: {:?}", head.headers);
            assert_eq!(end, End::Complete, "{path}: after {len} bytes");
            assert_eq!(len, n, "{path}: the length");
            assert_eq!(sha, want, "{path}: not the XOR of the original");
            assert_eq!(head.header("Content-Type"), Some("text/html"), "{path}");
            assert_filtered(&head, &path);
            pids.push(filter_pid(&head));
            if n == 20 * MIB {
                assert_eq!(
                    head.header("Transfer-Encoding"),
                    Some("chunked"),
                    "{path}: a long streamed output is chunked: {:?}",
                    head.headers
                );
                assert!(
                    peak.saturating_sub(before) <= 16 * 1024,
                    "{path}: the worker's RSS grew from {before} KiB to {peak} KiB"
                );
            }
        }
    }
    pids.dedup();
    assert_eq!(pids.len(), 1, "one process answered all: {pids:?}");
    assert_eq!(started(&nginx, "x"), pids, "{:#?}", pool_lines(&nginx));
    let logged = access(&nginx, 12);
    for (i, l) in logged.iter().enumerate() {
        assert_eq!(l.status, 200, "{l:?}");
        assert_eq!(l.pid, pids[0].to_string(), "{l:?}");
        assert_eq!(
            l.n,
            (i + 1).to_string(),
            "$transform_requests counts: {l:?}"
        );
    }
    no_zombies(&nginx, 1);
    stop_and_check_gone(nginx, &pids);
}

/// Range and conditional requests to a filtered file get the whole filtered 200; an HTTP/1.0
/// client gets it close-delimited; keep-alive goes on after filtered responses.
#[test]
fn range_conditional_and_http10_requests_get_the_whole_filtered_response() {
    let data = Data::new("range");
    let page = gen(300_000);
    data.write("page.html", &page);
    let nginx = start(
        &data,
        "transform_pool x {XOR};
         server { listen 127.0.0.1:{PORT};
           location /plain/ { alias {DATA}/; }
           location /f/ { alias {DATA}/; transform_filter_pass x; } }",
    );
    let want = xor(&page);
    let mut c = Client::connect(nginx.port);
    let plain = c.get("/plain/page.html");
    let etag = plain.header("ETag").expect("the file's ETag").to_string();
    let modified = plain
        .header("Last-Modified")
        .expect("the file's Last-Modified")
        .to_string();
    for (what, header) in [
        ("plain GET", String::new()),
        ("Range", "Range: bytes=0-3\r\n".to_string()),
        ("If-None-Match", format!("If-None-Match: {etag}\r\n")),
        (
            "If-Modified-Since",
            format!("If-Modified-Since: {modified}\r\n"),
        ),
        (
            "If-Range",
            format!("Range: bytes=5-9\r\nIf-Range: {etag}\r\n"),
        ),
    ] {
        let r = get_with(&mut c, "/f/page.html", &header);
        assert_eq!(r.status, 200, "{what}: {:?}", r.headers);
        assert!(r.complete, "{what}");
        assert!(r.body == want, "{what}: not the whole filtered body");
        assert_filtered(&r, what);
    }
    let mut c = Client::connect(nginx.port);
    let r = request(&mut c, "GET /f/page.html HTTP/1.0\r\n\r\n", false);
    assert_eq!(r.status, 200);
    assert!(r.header("Transfer-Encoding").is_none(), "{:?}", r.headers);
    assert!(
        r.complete && r.body == want,
        "HTTP/1.0: {} bytes",
        r.body.len()
    );
    no_zombies(&nginx, 1);
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// One process, many responses; what it receives; what replaces what
// ---------------------------------------------------------------------------------------------

/// Many responses one after the other go through one process (an idle one is reused first, even
/// with `processes=2`): its pid in `X-Filter-Pid` and `$transform_pid`, its count in `X-Filter-N`
/// and `$transform_requests`, `$transform_queue_time` 0.000 with nobody waiting. With
/// `max_requests=5` a process is retired after 5 responses (no jitter below 10).
#[test]
fn many_responses_are_served_by_one_process() {
    let data = Data::new("many");
    let page = gen(10_000);
    data.write("page.html", &page);
    let nginx = start(
        &data,
        "transform_pool x {XOR} processes=2;
         transform_pool recycled {XOR} max_requests=5;
         server { listen 127.0.0.1:{PORT}; access_log {PREFIX}/logs/pf.log pf;
           location /x/ { alias {DATA}/; transform_filter_pass x; }
           location /recycled/ { alias {DATA}/; transform_filter_pass recycled; } }",
    );
    let want = xor(&page);
    let mut keep = Client::connect(nginx.port);
    let mut pids = Vec::new();
    for i in 1..=30u64 {
        // Half on one keep-alive connection, half on connections of their own.
        let r = if i % 2 == 0 {
            keep.get("/x/page.html")
        } else {
            get(nginx.port, "/x/page.html")
        };
        assert_eq!(r.status, 200, "response {i}");
        assert!(r.body == want, "response {i}: not the filtered body");
        assert_filtered(&r, "many");
        assert_eq!(filter_n(&r), i, "response {i}: the process's count");
        pids.push(filter_pid(&r));
    }
    pids.dedup();
    assert_eq!(pids.len(), 1, "one process: {pids:?}");
    assert_eq!(started(&nginx, "x"), pids, "{:#?}", pool_lines(&nginx));
    let logged = access(&nginx, 30);
    for (i, l) in logged.iter().enumerate() {
        assert_eq!(l.uri, "/x/page.html");
        assert_eq!(l.pid, pids[0].to_string(), "{l:?}");
        assert_eq!(l.n, (i + 1).to_string(), "{l:?}");
        assert_eq!(l.queue, "0.000", "nobody waited: {l:?}");
    }

    // max_requests=5: 12 responses, three processes (5, 5, 2).
    let mut recycled = Vec::new();
    for i in 0..12u64 {
        let r = keep.get("/recycled/page.html");
        assert_eq!(r.status, 200, "recycled {i}");
        assert!(r.body == want, "recycled {i}");
        assert_eq!(filter_n(&r), i % 5 + 1, "recycled {i}");
        recycled.push(filter_pid(&r));
    }
    recycled.dedup();
    assert_eq!(recycled.len(), 3, "{recycled:?}");
    for &pid in &recycled[..2] {
        assert_eq!(
            wait_reason(&nginx, "recycled", pid, "retired: "),
            "served 5 requests (max_requests 5)"
        );
    }
    no_zombies(&nginx, 2);
    let mut all = pids;
    all.extend(recycled);
    stop_and_check_gone(nginx, &all);
}

/// A process that answers `Connection: close` (and exits right after writing, as the spec lets
/// it) is retired after that response, with the `it asked to close` line, never counted as one
/// that failed before its first response (no backoff); the next response gets a new process.
#[test]
fn connection_close_retires_the_process_after_its_response() {
    let data = Data::new("close");
    let page = gen(10_000);
    data.write("page.html", &page);
    let nginx = start(
        &data,
        &format!(
            "transform_pool closing {};
             server {{ listen 127.0.0.1:{{PORT}};
               location /closing/ {{ alias {{DATA}}/; transform_filter_pass closing; }} }}",
            program("close")
        ),
    );
    let want = xor(&page);
    let mut closing = Vec::new();
    for i in 0..10 {
        let r = get(nginx.port, "/closing/page.html");
        assert_eq!(r.status, 200, "closing {i}");
        assert!(r.body == want, "closing {i}");
        assert_eq!(filter_n(&r), 1, "closing {i}: a fresh process");
        assert!(
            r.header("Connection")
                .is_none_or(|v| !v.eq_ignore_ascii_case("close")),
            "the program's Connection header is not the client's: {:?}",
            r.headers
        );
        let pid = filter_pid(&r);
        assert_eq!(
            wait_reason(&nginx, "closing", pid, "retired: "),
            "it asked to close (Connection: close)"
        );
        closing.push(pid);
    }
    closing.dedup();
    assert_eq!(closing.len(), 10, "a new process each time: {closing:?}");
    let backoff: Vec<String> = pool_lines(&nginx)
        .into_iter()
        .filter(|l| l.contains("before its first response"))
        .collect();
    assert!(
        backoff.is_empty(),
        "a process that answered counted as failed: {backoff:#?}"
    );
    no_zombies(&nginx, 1);
    stop_and_check_gone(nginx, &closing);
}

/// The head the program receives: `HTTP/1.1 STATUS REASON`, the Content-Type, the response's
/// other header lines (an application's own included), no Content-Length, ETag, Last-Modified or
/// Accept-Ranges, `Transfer-Encoding: chunked` last, all CRLF; then the body chunked. Headers
/// that later filters add (add_header) are not in it, but in the response.
#[test]
fn the_program_receives_the_response_head() {
    let data = Data::new("head");
    data.write("page.html", &gen(100_000));
    data.write("empty.html", b"");
    let nginx = start(
        &data,
        "transform_pool h {HEADERS};
         server { listen {UPSTREAM}; root {DATA};
           location /app/ { alias {DATA}/; add_header X-Application \"one, two\";
                            add_header Cache-Control no-cache; }
           location = /app404 { default_type text/html; return 404 \"<p>gone</p>\"; } }
         server { listen 127.0.0.1:{PORT};
           location /s/ { alias {DATA}/; transform_filter_pass h; add_header X-Later later; }
           location /p/ { proxy_pass {UP}/; transform_filter_pass h;
                          transform_filter_status 200 404; } }",
    );
    // Parses what the program reports: (the head's lines, the summary line).
    let report = |r: &Response, what: &str| -> (Vec<String>, String) {
        assert_eq!(
            r.status,
            200,
            "{what}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.header("Content-Type"), Some("text/plain"), "{what}");
        let text = String::from_utf8(r.body.clone()).expect("text");
        let (head, summary) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("{what}: no head in {text:?}"));
        let lines: Vec<String> = head.split("\r\n").map(String::from).collect();
        for l in &lines {
            assert!(!l.contains('\n'), "{what}: a line not ended by CRLF: {l:?}");
        }
        (lines, summary.trim_end().to_string())
    };
    let has = |lines: &[String], name: &str| {
        lines.iter().any(|l| {
            l.to_ascii_lowercase()
                .starts_with(&format!("{}:", name.to_ascii_lowercase()))
        })
    };
    let check_common = |lines: &[String], what: &str| {
        for h in ["Content-Length", "ETag", "Last-Modified", "Accept-Ranges"] {
            assert!(!has(lines, h), "{what}: the program got {h}: {lines:#?}");
        }
        assert_eq!(
            lines.last().map(String::as_str),
            Some("Transfer-Encoding: chunked"),
            "{what}: {lines:#?}"
        );
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:"))
                .count(),
            1,
            "{what}: {lines:#?}"
        );
    };

    // The status lines (checked last, so that a wrong one does not hide the rest): (what, got,
    // want).
    let mut status_lines = Vec::new();
    let mut c = Client::connect(nginx.port);
    let r = c.get("/s/page.html");
    assert_eq!(
        r.header("X-Later"),
        Some("later"),
        "add_header applies after: {:?}",
        r.headers
    );
    let (lines, summary) = report(&r, "static");
    status_lines.push(("static", lines[0].clone(), "HTTP/1.1 200 OK"));
    assert_eq!(lines[1], "Content-Type: text/html", "{lines:#?}");
    assert!(
        !has(&lines, "X-Later"),
        "add_header runs after the filter: {lines:#?}"
    );
    check_common(&lines, "static");
    let chunks: u64 = summary
        .strip_prefix("-- body=100000 chunks=")
        .and_then(leading_number)
        .unwrap_or_else(|| panic!("static: {summary:?}"));
    assert!(chunks >= 1, "{summary}");
    assert!(summary.ends_with("framing=chunked"), "{summary}");

    let r = c.get("/s/empty.html");
    let (lines, summary) = report(&r, "empty");
    status_lines.push(("empty", lines[0].clone(), "HTTP/1.1 200 OK"));
    check_common(&lines, "empty");
    assert_eq!(summary, "-- body=0 chunks=0 framing=chunked");

    let r = c.get("/p/app/page.html");
    let (lines, summary) = report(&r, "proxied");
    status_lines.push(("proxied", lines[0].clone(), "HTTP/1.1 200 OK"));
    assert_eq!(lines[1], "Content-Type: text/html", "{lines:#?}");
    assert!(
        lines.iter().any(|l| l == "X-Application: one, two"),
        "the application's header as it stands: {lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l == "Cache-Control: no-cache"),
        "{lines:#?}"
    );
    for h in ["Connection", "Keep-Alive"] {
        assert!(!has(&lines, h), "proxied: the program got {h}: {lines:#?}");
    }
    check_common(&lines, "proxied");
    assert!(summary.starts_with("-- body=100000 chunks="), "{summary}");

    let r = c.get("/p/app404");
    let (lines, summary) = report(&r, "404");
    status_lines.push(("404", lines[0].clone(), "HTTP/1.1 404 Not Found"));
    assert_eq!(lines[1], "Content-Type: text/html", "{lines:#?}");
    check_common(&lines, "404");
    assert!(
        summary.starts_with("-- body=11 chunks=") && summary.ends_with("framing=chunked"),
        "{summary}"
    );
    nginx.stop();
    let wrong: Vec<_> = status_lines
        .iter()
        .filter(|(_, got, want)| got != want)
        .collect();
    assert!(
        wrong.is_empty(),
        "the program's status line is `HTTP/1.1 STATUS REASON`: (response, got, want) {wrong:#?}"
    );
}

/// The program's status and headers replace the original's: its status (201 for a 200 and for a
/// 404), its type, its own headers; none of the application's. nginx adds Server and Date, and
/// add_header in the location still applies.
#[test]
fn the_programs_status_and_headers_replace_the_originals() {
    let data = Data::new("replace");
    data.write("page.html", &gen(5000));
    let nginx = start(
        &data,
        "transform_pool s {STATUS};
         server { listen {UPSTREAM}; root {DATA};
           location /app/ { alias {DATA}/; add_header X-Application yes;
                            add_header Cache-Control no-cache;
                            add_header Set-Cookie app=1; }
           location = /app404 { default_type text/html; add_header X-Application yes always;
                                return 404 \"<p>gone</p>\"; } }
         server { listen 127.0.0.1:{PORT};
           location /p/ { proxy_pass {UP}/; transform_filter_pass s; transform_filter_status any;
                          add_header X-Later later always; }
           location /e/ { proxy_pass {UP}/; transform_filter_pass s; expires 1h; } }",
    );
    let mut c = Client::connect(nginx.port);
    for (path, len, status) in [("/p/app/page.html", 5000, 200), ("/p/app404", 11, 404)] {
        let r = c.get(path);
        assert_eq!(
            r.status, 201,
            "{path}: the program's status: {:?}",
            r.headers
        );
        assert_eq!(r.header("Content-Type"), Some("text/x-filtered"), "{path}");
        assert_eq!(r.header("X-From-Filter"), Some("yes"), "{path}");
        assert_eq!(
            r.header("X-Later"),
            Some("later"),
            "{path}: add_header applies"
        );
        assert!(
            r.header("Server").is_some() && r.header("Date").is_some(),
            "{path}"
        );
        for h in [
            "X-Application",
            "Cache-Control",
            "Set-Cookie",
            "ETag",
            "Last-Modified",
        ] {
            assert!(
                r.header(h).is_none(),
                "{path}: the original's {h} is replaced: {:?}",
                r.headers
            );
        }
        let body = format!("replaced {len} bytes of {status}\n");
        assert_eq!(String::from_utf8_lossy(&r.body), body, "{path}");
        assert_eq!(
            r.header("Content-Length"),
            Some(body.len().to_string().as_str()),
            "{path}: {:?}",
            r.headers
        );
    }
    // `expires` after the filter makes its own Cache-Control, not one of the original's lines
    // (before nginx 1.23 it reuses the first element of the Cache-Control array when there is
    // one: the cleared array must be empty, not merely counted as such).
    let r = c.get("/e/app/page.html");
    assert_eq!(r.status, 201, "{:?}", r.headers);
    let cc: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("Cache-Control"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cc, ["max-age=3600"], "{:?}", r.headers);
    assert!(r.header("Expires").is_some(), "{:?}", r.headers);
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// Which responses: types, statuses, methods, encodings
// ---------------------------------------------------------------------------------------------

/// Types and statuses not listed pass untouched (the original's length and validators kept, no
/// process used, `$transform_pid` empty); listed ones are filtered; 204 and 304 pass even with
/// `transform_filter_status any`; a gzip-encoded response and a 206 are refused with 502 and
/// never reach a process.
#[test]
fn responses_not_to_filter_pass_untouched_and_encoded_or_partial_ones_are_refused() {
    let data = Data::new("which");
    for ext in ["html", "txt", "json", "bin"] {
        data.write(&format!("f.{ext}"), format!("hello {ext}\n").as_bytes());
    }
    let page = gen(50_000);
    data.write("page.html", &page);
    let nginx = start(
        &data,
        "transform_pool u {UPPER};
         transform_pool never {XOR};
         server { listen {UPSTREAM}; root {DATA};
           location = /nocontent { return 204; }
           location = /missing.html { default_type text/html; return 404 \"<p>gone</p>\"; }
           location /gz/ { alias {DATA}/; gzip on; gzip_min_length 0; gzip_types text/html; } }
         server { listen 127.0.0.1:{PORT}; access_log {PREFIX}/logs/pf.log pf;
           location /default/ { alias {DATA}/; transform_filter_pass u; }
           location /any/ { alias {DATA}/; transform_filter_pass u; transform_filter_types *; }
           location /two/ { alias {DATA}/; transform_filter_pass u;
                            transform_filter_types text/plain application/json; }
           location /p/ { proxy_pass {UP}/; transform_filter_pass u; }
           location /p404/ { proxy_pass {UP}/; transform_filter_pass u;
                             transform_filter_status 404; }
           location /refused/ { proxy_pass {UP}/; transform_filter_pass never;
                                transform_filter_status any;
                                proxy_set_header Accept-Encoding gzip; } }",
    );
    let mut c = Client::connect(nginx.port);
    let cases: &[(&str, &[&str])] = &[
        ("default", &["html"]),
        ("any", &["html", "txt", "json", "bin"]),
        ("two", &["txt", "json"]),
    ];
    let mut expected_log = Vec::new();
    for (loc, filtered) in cases {
        for ext in ["html", "txt", "json", "bin"] {
            let path = format!("/{loc}/f.{ext}");
            let r = c.get(&path);
            assert_eq!(r.status, 200, "{path}");
            let plain = format!("hello {ext}\n");
            if filtered.contains(&ext) {
                assert_eq!(
                    String::from_utf8_lossy(&r.body),
                    plain.to_ascii_uppercase(),
                    "{path}"
                );
                assert_filtered(&r, &path);
            } else {
                assert_eq!(String::from_utf8_lossy(&r.body), plain, "{path}: untouched");
                assert!(
                    r.header("X-Filter-Pid").is_none(),
                    "{path}: {:?}",
                    r.headers
                );
                assert!(
                    r.header("ETag").is_some() && r.header("Last-Modified").is_some(),
                    "{path}: the file's validators are kept: {:?}",
                    r.headers
                );
                assert_eq!(
                    r.header("Content-Length"),
                    Some(plain.len().to_string().as_str()),
                    "{path}"
                );
            }
            expected_log.push((path, filtered.contains(&ext)));
        }
    }
    // Statuses: 200 only by default; 404 when listed (and then 200 is not).
    let r = c.get("/p/missing.html");
    assert_eq!(r.status, 404);
    assert_eq!(r.body, b"<p>gone</p>", "a 404 is not filtered by default");
    assert!(r.header("X-Filter-Pid").is_none());
    let r = c.get("/p404/missing.html");
    assert_eq!(r.status, 404, "the program's status line keeps 404");
    assert_eq!(r.body, b"<P>GONE</P>", "a listed 404 is filtered");
    assert_filtered(&r, "listed 404");
    let r = c.get("/p404/page.html");
    assert_eq!(r.status, 200);
    assert!(r.body == page, "200 is not listed there");
    assert!(r.header("X-Filter-Pid").is_none());
    expected_log.push(("/p/missing.html".into(), false));
    expected_log.push(("/p404/missing.html".into(), true));
    expected_log.push(("/p404/page.html".into(), false));

    // 204 and 304 pass under `transform_filter_status any`.
    let r = c.get("/refused/nocontent");
    assert_eq!(r.status, 204);
    let etag = get(nginx.port, "/p404/page.html")
        .header("ETag")
        .expect("the application's ETag")
        .to_string();
    let r = get_with(
        &mut c,
        "/refused/page.html",
        &format!("If-None-Match: {etag}\r\n"),
    );
    assert_eq!(r.status, 304, "the application's 304 is passed on");
    assert!(r.body.is_empty());

    // Encoded and partial responses: 502, never the application's bytes.
    let r = get(nginx.port, "/refused/gz/page.html");
    assert_eq!(
        r.status, 502,
        "an encoded response is refused: {:?}",
        r.headers
    );
    assert!(r.header("Content-Encoding").is_none(), "{:?}", r.headers);
    for range in ["bytes=0-99", "bytes=0-5,10-15"] {
        let mut refused = Client::connect(nginx.port);
        let r = get_with(
            &mut refused,
            "/refused/page.html",
            &format!("Range: {range}\r\n"),
        );
        assert_eq!(r.status, 502, "{range}: a 206 is refused");
        assert!(
            !r.body.windows(6).any(|w| page.windows(6).next() == Some(w)),
            "{range}: the application's bytes reached the client"
        );
    }
    assert!(
        started(&nginx, "never").is_empty(),
        "a process of pool \"never\" was started: {:#?}",
        pool_lines(&nginx)
    );
    let log = nginx.error_log();
    assert!(log.contains("cannot filter an encoded response"), "{log}");
    assert!(
        log.contains("cannot filter a part of a response (206)"),
        "{log}"
    );
    assert_eq!(started(&nginx, "u").len(), 1, "{:#?}", pool_lines(&nginx));

    // $transform_pid is empty for what passed untouched.
    // Besides those: the 204, the ETag's GET, the 304, the gzip and the two ranges.
    let logged = access(&nginx, expected_log.len() + 6);
    for (path, filtered) in &expected_log {
        let l = logged
            .iter()
            .find(|l| &l.uri == path)
            .unwrap_or_else(|| panic!("no access log line for {path}"));
        assert_eq!(l.pid != "-", *filtered, "{path}: {l:?}");
    }
    no_zombies(&nginx, 1);
    nginx.stop();
}

/// HEAD gets the header a GET would (the original's, without length and validators) and runs
/// no process: none is started for it, no response is counted.
#[test]
fn head_requests_do_not_run_the_program() {
    let data = Data::new("head-req");
    let page = gen(20_000);
    data.write("page.html", &page);
    let nginx = start(
        &data,
        "transform_pool h {XOR};
         server { listen {UPSTREAM}; root {DATA}; }
         server { listen 127.0.0.1:{PORT}; access_log {PREFIX}/logs/pf.log pf;
           location /s/ { alias {DATA}/; transform_filter_pass h; }
           location /p/ { proxy_pass {UP}/; transform_filter_pass h; } }",
    );
    let mut c = Client::connect(nginx.port);
    for path in ["/s/page.html", "/p/page.html"] {
        let r = request(
            &mut c,
            &format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n"),
            true,
        );
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("Content-Type"), Some("text/html"), "{path}");
        for h in [
            "ETag",
            "Last-Modified",
            "Accept-Ranges",
            "Content-Length",
            "X-Filter-Pid",
        ] {
            assert!(r.header(h).is_none(), "HEAD {path}: {h}: {:?}", r.headers);
        }
    }
    assert!(
        started(&nginx, "h").is_empty(),
        "HEAD started a process: {:#?}",
        pool_lines(&nginx)
    );
    // The connection carries nothing after the heads.
    let r = c.get("/s/page.html");
    assert!(r.body == xor(&page));
    assert_eq!(filter_n(&r), 1, "the first response the process saw");
    let r = request(
        &mut c,
        "HEAD /p/page.html HTTP/1.1\r\nHost: x\r\n\r\n",
        true,
    );
    assert_eq!(r.status, 200);
    let r = c.get("/p/page.html");
    assert!(r.body == xor(&page));
    assert_eq!(filter_n(&r), 2, "HEAD was not counted");
    let logged = access(&nginx, 5);
    for l in logged.iter().filter(|l| l.n == "-") {
        assert_eq!(l.pid, "-", "{l:?}");
    }
    assert_eq!(
        logged.iter().filter(|l| l.pid != "-").count(),
        2,
        "{logged:#?}"
    );
    nginx.stop();
}

/// An SSI include of a location filtered by the pool is filtered on its own (the including page
/// is not), through the same process as the page's other responses.
#[test]
fn ssi_includes_are_filtered_by_the_pool() {
    let data = Data::new("ssi");
    data.write(
        "ssi/page.html",
        b"<h1>page</h1><!--# include virtual=\"/inc/part.html\" --><p>end</p>\n",
    );
    data.write("inc/part.html", b"<p>included part</p>\n");
    let nginx = start(
        &data,
        "transform_pool u {UPPER};
         server { listen 127.0.0.1:{PORT};
           location /ssi/ { ssi on; alias {DATA}/ssi/; }
           location /inc/ { alias {DATA}/inc/; transform_filter_pass u; } }",
    );
    let mut c = Client::connect(nginx.port);
    for _ in 0..3 {
        let r = c.get("/ssi/page.html");
        assert_eq!(r.status, 200);
        assert!(r.complete);
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            "<h1>page</h1><P>INCLUDED PART</P>\n<p>end</p>\n"
        );
    }
    assert_eq!(started(&nginx, "u").len(), 1, "{:#?}", pool_lines(&nginx));
    no_zombies(&nginx, 1);
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// Queueing
// ---------------------------------------------------------------------------------------------

/// With `processes=1` and a slow program, concurrent responses (their bodies held meanwhile)
/// wait in the queue and are all filtered exactly, by the one process; `$transform_queue_time`
/// says some waited. A waiting response whose client leaves leaves the queue: the process never
/// sees it.
#[test]
fn responses_wait_in_the_queue_for_a_busy_process() {
    let data = Data::new("queue");
    let mut pages = Vec::new();
    for i in 0..4 {
        let page = gen(300_000 + i * 1000);
        data.write(&format!("page{i}.html"), &page);
        pages.push(page);
    }
    let nginx = start(
        &data,
        &format!(
            "transform_pool q {} processes=1;
             server {{ listen {{UPSTREAM}}; root {{DATA}}; }}
             server {{ listen 127.0.0.1:{{PORT}}; access_log {{PREFIX}}/logs/pf.log pf;
               location /s/ {{ alias {{DATA}}/; transform_filter_pass q; }}
               location /p/ {{ proxy_pass {{UP}}/; transform_filter_pass q; }} }}",
            program("slow 300")
        ),
    );
    let port = nginx.port;
    let results: Vec<(usize, Response)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                s.spawn(move || {
                    let loc = if i % 2 == 0 { "s" } else { "p" };
                    (i, get(port, &format!("/{loc}/page{i}.html")))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ns = Vec::new();
    let mut pids = Vec::new();
    for (i, r) in &results {
        assert_eq!(r.status, 200, "page{i}: {:?}", r.headers);
        assert!(r.complete, "page{i}");
        assert!(r.body == xor(&pages[*i]), "page{i}: not its filtered body");
        ns.push(filter_n(r));
        pids.push(filter_pid(r));
    }
    ns.sort_unstable();
    assert_eq!(ns, [1, 2, 3, 4], "one process took them one by one");
    pids.dedup();
    assert_eq!(pids.len(), 1, "{pids:?}");
    let logged = access(&nginx, 4);
    let waited: Vec<f64> = logged
        .iter()
        .map(|l| {
            let (s, ms) = l.queue.split_once('.').unwrap_or_else(|| panic!("{l:?}"));
            assert!(
                ms.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()),
                "$transform_queue_time as seconds.milliseconds: {l:?}"
            );
            l.queue.parse().unwrap()
        })
        .collect();
    assert!(
        waited.iter().any(|&q| q > 0.0),
        "some waited for the process: {logged:#?}"
    );
    assert!(waited.contains(&0.0), "the first did not wait: {logged:#?}");

    // A waiting response whose client leaves is dropped from the queue.
    let pid = pids[0];
    let mut a = Client::connect(port);
    a.send("GET /s/page0.html?staying HTTP/1.1\r\nHost: x\r\n\r\n");
    wait_line(&nginx, "\"GET /s/page0.html?staying HTTP/1.1\"");
    let mut b = Client::connect(port);
    b.send("GET /s/page1.html?leaving HTTP/1.1\r\nHost: x\r\n\r\n");
    wait_line(&nginx, "\"GET /s/page1.html?leaving HTTP/1.1\"");
    drop(b);
    let r = a.read_response(false);
    assert_eq!(r.status, 200);
    assert_eq!(filter_n(&r), 5);
    let r = get(port, "/s/page2.html");
    assert_eq!(r.status, 200);
    assert!(r.body == xor(&pages[2]));
    assert_eq!(filter_pid(&r), pid);
    assert_eq!(
        filter_n(&r),
        6,
        "the response whose client left never reached the process"
    );
    no_zombies(&nginx, 1);
    stop_and_check_gone(nginx, &[pid]);
}

/// Large responses waiting for the one process (`processes=1`, a program that takes its time
/// before it reads) are held with their handlers backpressured: a static file, a buffered and an
/// unbuffered proxied response of 20 MiB each, at once, all come back exact, and the worker's
/// RSS grows by at most 16 MiB meanwhile.
#[test]
fn large_responses_wait_in_the_queue_with_bounded_memory() {
    const N: u64 = 20 * MIB;
    let data = Data::new("queue-large");
    data.write_gen("big.html", N);
    let want = xor_sha(&data.file("big.html"));
    let nginx = start(
        &data,
        &format!(
            "transform_pool q {} processes=1;
             server {{ listen {{UPSTREAM}}; root {{DATA}}; }}
             server {{ listen 127.0.0.1:{{PORT}}; access_log {{PREFIX}}/logs/pf.log pf;
               location /static/ {{ alias {{DATA}}/; transform_filter_pass q; }}
               location /buffered/ {{ proxy_pass {{UP}}/; transform_filter_pass q; }}
               location /unbuffered/ {{ proxy_pass {{UP}}/; proxy_buffering off;
                                       transform_filter_pass q; }} }}",
            program("slow 300")
        ),
    );
    let worker = nginx.worker_pid();
    let port = nginx.port;
    let before = rss_kib(worker);
    let (results, peak) = peak_rss(worker, || {
        std::thread::scope(|s| {
            let handles: Vec<_> = ["static", "buffered", "unbuffered"]
                .into_iter()
                .map(|loc| s.spawn(move || (loc, fetch_hashed(port, &format!("/{loc}/big.html")))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        })
    });
    let mut pids = Vec::new();
    for (loc, (head, end, len, sha)) in &results {
        assert_eq!(head.status, 200, "{loc}: {:?}", head.headers);
        assert_eq!(*end, End::Complete, "{loc}: after {len} bytes");
        assert_eq!(*len, N, "{loc}");
        assert_eq!(sha, &want, "{loc}: not the XOR of the file");
        pids.push(filter_pid(head));
    }
    pids.dedup();
    assert_eq!(pids.len(), 1, "{pids:?}");
    assert!(
        peak.saturating_sub(before) <= 16 * 1024,
        "the worker's RSS grew from {before} KiB to {peak} KiB"
    );
    let logged = access(&nginx, 3);
    assert!(
        logged.iter().filter(|l| l.queue != "0.000").count() >= 2,
        "two of three waited: {logged:#?}"
    );
    no_zombies(&nginx, 1);
    stop_and_check_gone(nginx, &pids);
}

/// `queue=1` full: the next response to filter gets a 503 with `Retry-After: 1` and the warn
/// line; the busy and the queued ones are filtered whole.
#[test]
fn a_full_queue_refuses_with_503_and_retry_after() {
    let data = Data::new("full");
    let page = gen(100_000);
    for name in ["a", "b", "c"] {
        data.write(&format!("{name}.html"), &page);
    }
    let nginx = start(
        &data,
        &format!(
            "transform_pool full {} processes=1 queue=1;
             server {{ listen 127.0.0.1:{{PORT}};
               location /full/ {{ alias {{DATA}}/; transform_filter_pass full; }} }}",
            program("slow 1500")
        ),
    );
    let mut a = Client::connect(nginx.port);
    a.send("GET /full/a.html HTTP/1.1\r\nHost: x\r\n\r\n");
    let pid = {
        let mut pids = Vec::new();
        wait_until(Duration::from_secs(5), || {
            pids = started(&nginx, "full");
            !pids.is_empty()
        });
        assert_eq!(pids.len(), 1, "{:#?}", pool_lines(&nginx));
        pids[0]
    };
    let mut b = Client::connect(nginx.port);
    b.send("GET /full/b.html HTTP/1.1\r\nHost: x\r\n\r\n");
    // Its header filter ran in the same event as its request line (a static file).
    wait_line(&nginx, "\"GET /full/b.html HTTP/1.1\"");
    let mut c = Client::connect(nginx.port);
    let r = c.get("/full/c.html");
    assert_eq!(r.status, 503, "the queue is full: {:?}", r.headers);
    assert_eq!(r.header("Retry-After"), Some("1"), "{:?}", r.headers);
    assert!(r.header("X-Filter-Pid").is_none());
    let warn = wait_line(&nginx, "response to filter refused");
    assert!(warn.contains("[warn]"), "{warn}");
    assert!(
        warn.contains(
            "transform pool \"full\": 1 processes busy and 1 requests queued (queue=1), \
             response to filter refused"
        ),
        "{warn}"
    );
    for (name, client) in [("a", &mut a), ("b", &mut b)] {
        let r = client.read_response(false);
        assert_eq!(r.status, 200, "{name}");
        assert!(r.body == xor(&page), "{name}: not the filtered body");
        assert_eq!(filter_pid(&r), pid, "{name}");
    }
    no_zombies(&nginx, 1);
    stop_and_check_gone(nginx, &[pid]);
}

// ---------------------------------------------------------------------------------------------
// Failures: crashes, garbage, timeouts, client aborts
// ---------------------------------------------------------------------------------------------

/// A process that exits before the commit gives a 502 (its error page in place); after the
/// commit, a visibly broken response; one that writes garbage a 502, one too slow a 504. Each
/// time the pool's `replaced` line says why, and the next response gets a new process. A process
/// that dies before it read anything of its first response delays the next start (the backoff
/// line); one that dies of a response it read does not (a response must not hold the pool back).
#[test]
fn a_failing_process_is_replaced() {
    let data = Data::new("crash");
    let page = gen(200_000);
    data.write("page.html", &page);
    let nginx = start(
        &data,
        &format!(
            "transform_pool c {{XOR}};
             transform_pool first {};
             server {{ listen {{UPSTREAM}}; root {{DATA}};
               location /crash/ {{ alias {{DATA}}/; add_header X-Filter-Mode crash; }}
               location /late/ {{ alias {{DATA}}/; add_header X-Filter-Mode \"crash 300000\"; }}
               location /garbage/ {{ alias {{DATA}}/; add_header X-Filter-Mode garbage; }}
               location /slow/ {{ alias {{DATA}}/; add_header X-Filter-Mode \"slow 3000\"; }}
               location /ok/ {{ alias {{DATA}}/; }} }}
             server {{ listen 127.0.0.1:{{PORT}};
               location /c/ {{ proxy_pass {{UP}}/; transform_filter_pass c;
                              transform_read_timeout 500ms; }}
               location /first/ {{ alias {{DATA}}/; transform_filter_pass first; }} }}",
            // (A program that dies before it reads anything: a start failure.)
            "/bin/sh -c \"exit 3\""
        ),
    );
    let want = xor(&page);
    let ok = |what: &str| -> u32 {
        let r = get(nginx.port, "/c/ok/page.html");
        assert_eq!(r.status, 200, "{what}");
        assert!(
            r.complete && r.body == want,
            "{what}: not the filtered body"
        );
        filter_pid(&r)
    };
    let p1 = ok("first response");
    assert_eq!(started(&nginx, "c"), [p1]);
    // What the pool's lines said of each failed process, checked last so that a wrong one does
    // not hide the rest: (case, got, want).
    let mut lines = Vec::new();

    // Exit before the commit: 502.
    let r = get(nginx.port, "/c/crash/page.html");
    assert_eq!(r.status, 502, "{:?}", r.headers);
    assert!(r.header("X-Filter-Pid").is_none());
    lines.push((
        "exit before the commit",
        what_became(&nginx, "c", p1),
        "replaced: exited with code 3".to_string(),
    ));
    assert!(
        nginx
            .log_lines("error")
            .iter()
            .any(|l| l.contains("/c/crash/page.html")),
        "the request's own error line: {:#?}",
        nginx.log_lines("error")
    );
    let p2 = ok("after a crash before the commit");
    assert_ne!(p2, p1, "a new process");

    // Exit after the commit (300000 bytes are past the commit size): a broken response.
    let mut c = Client::connect(nginx.port);
    c.send("GET /c/late/page.html HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_broken(Duration::from_secs(10));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Filter-Pid"), Some(p2.to_string().as_str()));
    assert!(
        r.body.len() <= 300_000 && r.body.iter().all(|&b| b == 0),
        "what the program wrote, at most, and cut: {} bytes",
        r.body.len()
    );
    lines.push((
        "exit after the commit",
        what_became(&nginx, "c", p2),
        "replaced: exited with code 3".to_string(),
    ));
    let p3 = ok("after a crash after the commit");
    assert!(![p1, p2].contains(&p3), "a new process: {p3}");

    // Garbage instead of a response: 502.
    let r = get(nginx.port, "/c/garbage/page.html");
    assert_eq!(r.status, 502);
    let why = wait_reason(&nginx, "c", p3, "replaced: ");
    assert!(why.starts_with("broke the framing"), "{why}");
    let p4 = ok("after garbage");
    assert!(![p1, p2, p3].contains(&p4), "a new process: {p4}");

    // Too slow for transform_read_timeout: 504.
    let r = get(nginx.port, "/c/slow/page.html");
    assert_eq!(r.status, 504);
    let why = wait_reason(&nginx, "c", p4, "replaced: ");
    assert!(why.starts_with("timed out"), "{why}");
    let p5 = ok("after a timeout");
    assert!(![p1, p2, p3, p4].contains(&p5), "a new process: {p5}");
    for p in [p1, p2, p3, p4] {
        assert!(
            wait_until(Duration::from_secs(5), || proc_state(p).is_none()),
            "replaced process {p} still there ({:?})",
            proc_state(p)
        );
    }

    // Dying before its first response: the backoff.
    for (i, delay) in [(0, 100), (1, 200)] {
        let r = get(nginx.port, "/first/page.html");
        assert_eq!(r.status, 502, "first {i}");
        let mut pids = Vec::new();
        wait_until(Duration::from_secs(5), || {
            pids = started(&nginx, "first");
            pids.len() > i
        });
        assert!(pids.len() > i, "{:#?}", pool_lines(&nginx));
        lines.push((
            "exit before a first response",
            what_became(&nginx, "first", pids[i]),
            format!("exited with code 3 before its first response; next start in {delay}ms"),
        ));
    }
    no_zombies(&nginx, 1);
    stop_and_check_gone(nginx, &[p5]);
    let wrong: Vec<_> = lines.iter().filter(|(_, got, want)| got != want).collect();
    assert!(
        wrong.is_empty(),
        "what the pool logged of a failed process: (case, got, want) {wrong:#?}"
    );
}

/// A client that leaves mid-response kills the process that filters it (never reused in an
/// unknown state): the pid is gone, the `replaced` line says so, the next response gets a new
/// process.
#[test]
fn a_client_abort_mid_response_kills_the_process() {
    let data = Data::new("abort");
    data.write_gen("page.html", 2 * MIB);
    let small = gen(1000);
    data.write("small.html", &small);
    let nginx = start(
        &data,
        "transform_pool a {XOR};
         server { listen {UPSTREAM}; location /slow/ { alias {DATA}/; limit_rate 1m; }
                                     location /ok/ { alias {DATA}/; } }
         server { listen 127.0.0.1:{PORT};
           location /p/ { proxy_pass {UP}/; transform_filter_pass a; } }",
    );
    let mut c = Client::connect(nginx.port);
    c.send("GET /p/slow/page.html HTTP/1.1\r\nHost: x\r\n\r\n");
    let head = c.read_head();
    assert_eq!(head.status, 200);
    let pid = filter_pid(&head);
    assert_eq!(c.read_some(1000), 1000);
    assert!(matches!(proc_state(pid), Some(s) if s != 'Z'));
    drop(c);
    assert!(
        wait_until(Duration::from_secs(5), || proc_state(pid).is_none()),
        "process {pid} still there ({:?}) after its client left",
        proc_state(pid)
    );
    assert_eq!(
        wait_reason(&nginx, "a", pid, "replaced: "),
        "its request ended mid-response"
    );
    let r = get(nginx.port, "/p/ok/small.html");
    assert_eq!(r.status, 200);
    assert!(r.body == xor(&small));
    let next = filter_pid(&r);
    assert_ne!(next, pid);
    assert_eq!(filter_n(&r), 1);
    no_zombies(&nginx, 1);
    stop_and_check_gone(nginx, &[next]);
}

// ---------------------------------------------------------------------------------------------
// Configuration, levels, lifecycle
// ---------------------------------------------------------------------------------------------

/// `nginx -t` refuses `transform_filter_pass` naming no pool (at any level, naming the pool and
/// the file:line) and `transform_filter` with `transform_filter_pass` at one level ("is
/// duplicate"); it accepts them at different levels, `off`, and every level.
#[test]
fn nginx_t_refuses_an_unknown_pool_and_both_filters_at_one_level() {
    let pool = format!("transform_pool known {};", program("xor"));
    let unknown = [
        "server { listen 127.0.0.1:{PORT};\nlocation / {\ntransform_filter_pass nope; #BAD\n} }",
        "server { listen 127.0.0.1:{PORT};\ntransform_filter_pass nope; #BAD\nlocation / { } }",
        "transform_filter_pass nope; #BAD\nserver { listen 127.0.0.1:{PORT}; location / { } }",
    ];
    for body in unknown {
        let body = format!("{pool}\n{body}");
        let (ok, stderr, path) = nginx_test_config(&body);
        let conf = fs::read_to_string(&path).unwrap();
        fs::remove_dir_all(path.parent().unwrap()).ok();
        assert!(!ok, "nginx -t accepted an unknown pool:\n{body}");
        let line = conf.lines().position(|l| l.contains("#BAD")).unwrap() + 1;
        let at = format!("{}:{line}", path.display());
        assert!(
            stderr.contains("[emerg]") && stderr.contains(&at),
            "want an [emerg] naming {at}: {stderr}"
        );
        assert!(
            stderr.contains("\"nope\"") && stderr.contains("transform_pool"),
            "want the pool's name: {stderr}"
        );
    }
    // No pool at all.
    let (ok, stderr, path) = nginx_test_config(
        "server { listen 127.0.0.1:{PORT}; location / { transform_filter_pass nope; } }",
    );
    fs::remove_dir_all(path.parent().unwrap()).ok();
    assert!(!ok && stderr.contains("\"nope\""), "{stderr}");

    let duplicate = [
        "transform_filter /usr/bin/cat;\ntransform_filter_pass known; #BAD",
        "transform_filter_pass known;\ntransform_filter /usr/bin/cat; #BAD",
        "transform_filter_pass known;\ntransform_filter_pass known; #BAD",
        "transform_filter_pass off;\ntransform_filter /usr/bin/cat; #BAD",
    ];
    for level in ["location", "server", "http"] {
        for both in duplicate {
            let body = match level {
                "location" => format!(
                    "{pool}\nserver {{ listen 127.0.0.1:{{PORT}};\nlocation / {{\n{both}\n}} }}"
                ),
                "server" => format!(
                    "{pool}\nserver {{ listen 127.0.0.1:{{PORT}};\n{both}\nlocation / {{ }} }}"
                ),
                _ => format!("{pool}\n{both}\nserver {{ listen 127.0.0.1:{{PORT}}; }}"),
            };
            let (ok, stderr, path) = nginx_test_config(&body);
            let conf = fs::read_to_string(&path).unwrap();
            fs::remove_dir_all(path.parent().unwrap()).ok();
            assert!(!ok, "{level}: nginx -t accepted both:\n{both}");
            let line = conf.lines().position(|l| l.contains("#BAD")).unwrap() + 1;
            let at = format!("{}:{line}", path.display());
            assert!(
                stderr.contains("[emerg]")
                    && stderr.contains("is duplicate")
                    && stderr.contains(&at),
                "{level}: want \"is duplicate\" naming {at}: {stderr}\n{both}"
            );
        }
    }

    let good = [
        "{POOL} transform_filter_pass known;
         server { listen 127.0.0.1:{PORT}; location / { } }",
        "{POOL} server { listen 127.0.0.1:{PORT}; transform_filter /usr/bin/cat;
           location / { transform_filter_pass known; }
           location /off/ { transform_filter_pass off; }
           location /exec/ { transform_filter /usr/bin/tr a-z A-Z; } }",
        "{POOL} transform_filter /usr/bin/cat;
         server { listen 127.0.0.1:{PORT}; transform_filter_pass known;
           location / { transform_filter off; } }",
        "{POOL} server { listen 127.0.0.1:{PORT};
           location / { transform_exec /usr/bin/echo; transform_filter_pass known; } }",
    ];
    for body in good {
        let body = body.replace("{POOL}", &pool);
        let (ok, stderr, path) = nginx_test_config(&body);
        fs::remove_dir_all(path.parent().unwrap()).ok();
        assert!(
            ok,
            "nginx -t refused a valid configuration: {stderr}\n{body}"
        );
    }
}

/// The level that sets `transform_filter` or `transform_filter_pass` decides: the other is not
/// inherited past it, and `off` cancels either.
#[test]
fn the_level_that_sets_a_filter_decides() {
    let data = Data::new("levels");
    data.write("page.html", b"<p>hello levels</p>\n");
    let nginx = start(
        &data,
        "transform_pool x {XOR};
         server { listen 127.0.0.1:{PORT}; transform_filter_pass x;
           location /inherit/ { alias {DATA}/; }
           location /off/ { alias {DATA}/; transform_filter_pass off; }
           location /filter-off/ { alias {DATA}/; transform_filter off; }
           location /program/ { alias {DATA}/; transform_filter /usr/bin/tr a-z A-Z; } }
         server { listen 127.0.0.1:{PORT}; server_name other;
           transform_filter /usr/bin/tr a-z A-Z;
           location /inherit/ { alias {DATA}/; }
           location /pass/ { alias {DATA}/; transform_filter_pass x; }
           location /off/ { alias {DATA}/; transform_filter_pass off; } }",
    );
    let plain = b"<p>hello levels</p>\n".to_vec();
    let mut c = Client::connect(nginx.port);
    let cases: [(&str, &str, Vec<u8>, bool); 7] = [
        ("localhost", "/inherit/", xor(&plain), true),
        ("localhost", "/off/", plain.clone(), false),
        ("localhost", "/filter-off/", plain.clone(), false),
        ("localhost", "/program/", plain.to_ascii_uppercase(), false),
        ("other", "/inherit/", plain.to_ascii_uppercase(), false),
        ("other", "/pass/", xor(&plain), true),
        ("other", "/off/", plain.clone(), false),
    ];
    for (host, loc, want, pooled) in cases {
        let r = request(
            &mut c,
            &format!("GET {loc}page.html HTTP/1.1\r\nHost: {host}\r\n\r\n"),
            false,
        );
        assert_eq!(r.status, 200, "{host}{loc}");
        assert_eq!(r.body, want, "{host}{loc}");
        assert_eq!(
            r.header("X-Filter-Pid").is_some(),
            pooled,
            "{host}{loc}: {:?}",
            r.headers
        );
    }
    nginx.stop();
}

/// Processes started for concurrent responses (`processes=2`) are the worker's children while
/// nginx runs, with no zombie among them; nginx's stop retires each ("the worker is shutting
/// down") and leaves none behind.
#[test]
fn no_process_is_left_after_stop() {
    let data = Data::new("stop");
    let page = gen(50_000);
    data.write("page.html", &page);
    // A second error log, outside the prefix that stopping nginx removes.
    let log = data.file("stop.log");
    let nginx = Nginx::start_with(
        &format!("error_log {} info;", log.display()),
        &expand(
            &data,
            &format!(
                "transform_pool two {} processes=2;
             server {{ listen 127.0.0.1:{{PORT}};
               location /f/ {{ alias {{DATA}}/; transform_filter_pass two; }} }}",
                program("slow 500")
            ),
        ),
    );
    let port = nginx.port;
    let pids: Vec<u32> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| s.spawn(move || get(port, "/f/page.html")))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let r = h.join().unwrap();
                assert_eq!(r.status, 200);
                assert!(r.body == xor(&page));
                filter_pid(&r)
            })
            .collect()
    });
    assert_ne!(
        pids[0], pids[1],
        "two processes for two concurrent responses"
    );
    let mut both = started(&nginx, "two");
    both.sort_unstable();
    let mut sorted = pids.clone();
    sorted.sort_unstable();
    assert_eq!(both, sorted, "{:#?}", pool_lines(&nginx));
    let worker = nginx.worker_pid();
    let mut children = children_of(worker);
    children.sort_unstable();
    assert_eq!(
        children, sorted,
        "the pool's processes are the worker's children"
    );
    no_zombies(&nginx, 2);
    stop_and_check_gone(nginx, &pids);
    let log = String::from_utf8_lossy(&fs::read(log).unwrap()).into_owned();
    for pid in pids {
        let tag =
            format!("transform pool \"two\" process {pid} retired: the worker is shutting down");
        assert!(
            log.contains(&tag),
            "no {tag:?}:\n{}",
            log.lines()
                .filter(|l| l.contains("transform pool"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
