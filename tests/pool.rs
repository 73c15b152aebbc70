//! `transform_pool` / `transform_pass`: long-lived programs answering HTTP/1.1 on stdin/stdout,
//! against the real nginx (the spec is issue 12's). The pooled program is the test helper's mode
//! `pool-serve`, which answers by the last segment of the request's path (`/echo`, `/gen?N`,
//! `/crash?N`, ...; see src/bin/transform-test-helper.rs).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::{Duration, Instant};

use common::pools::*;
use common::*;

/// nginx with `pools` at the http level (`{HELPER}` is the helper) and `locations` in a server
/// whose access log (`logs/pool.log`) holds the module's variables.
fn start(pools: &str, locations: &str) -> Nginx {
    Nginx::start(&conf(pools, locations))
}

fn conf(pools: &str, locations: &str) -> String {
    format!(
        "log_format pool \"$request_uri $status pid=$transform_pid n=$transform_requests \
                           q=$transform_queue_time exit=$transform_exit_status\";
         client_max_body_size 64m;
         {pools}
         server {{ listen 127.0.0.1:{{PORT}}; access_log {{PREFIX}}/logs/pool.log pool;
           {locations} }}"
    )
}

/// What `/echo` answered.
#[derive(Debug, Clone)]
struct Echo {
    pid: u32,
    n: u64,
    method: String,
    uri: String,
    body: u64,
    /// The request's header lines as the program received them, in order.
    headers: Vec<String>,
}

fn parse_echo(r: &Response) -> Echo {
    assert_eq!(
        r.status,
        200,
        "echo: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(r.complete, "echo response not complete");
    let text = String::from_utf8(r.body.clone()).expect("echo body is text");
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k}= in {text:?}"))
            .to_string()
    };
    Echo {
        pid: field("pid").parse().expect("pid"),
        n: field("n").parse().expect("n"),
        method: field("method"),
        uri: field("uri"),
        body: field("body").parse().expect("body"),
        headers: text
            .lines()
            .filter_map(|l| l.strip_prefix("h:"))
            .map(String::from)
            .collect(),
    }
}

fn echo_on(c: &mut Client, path: &str) -> Echo {
    parse_echo(&c.get(path))
}

fn echo(port: u16, path: &str) -> Echo {
    echo_on(&mut Client::connect(port), path)
}

fn get(port: u16, path: &str) -> Response {
    Client::connect(port).get(path)
}

/// Sends a request with a body (raw bytes) and reads the response.
fn post(c: &mut Client, path: &str, body: &[u8]) -> Response {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut s = c.stream();
    s.write_all(head.as_bytes()).expect("send head");
    s.write_all(body).expect("send body");
    c.read_response(false)
}

/// The error-log lines of pool `name` (`transform pool "NAME"` and on).
fn pool_lines(nginx: &Nginx, name: &str) -> Vec<String> {
    let tag = format!("transform pool \"{name}\"");
    nginx
        .error_log()
        .lines()
        .filter_map(|l| l.find(&tag).map(|at| l[at..].to_string()))
        .collect()
}

/// What follows `transform pool "NAME" process PID WHAT: ` (up to nginx's `, client: ...`).
fn reason(nginx: &Nginx, name: &str, pid: u32, what: &str) -> Option<String> {
    pool_reason(nginx, name, pid, &format!("{what}: "))
}

/// Waits (up to 5 s) for the line saying process `pid` of pool `name` was replaced; its reason.
#[track_caller]
fn replaced(nginx: &Nginx, name: &str, pid: u32) -> String {
    let mut found = None;
    wait_until(Duration::from_secs(5), || {
        found = reason(nginx, name, pid, "replaced");
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "no \"process {pid} replaced\" line; the pool's lines:\n{}",
            all_pool_lines(nginx).join("\n")
        )
    })
}

/// Waits (up to 5 s) for the line saying process `pid` of pool `name` was retired; its reason.
#[track_caller]
fn retired(nginx: &Nginx, name: &str, pid: u32) -> String {
    let mut found = None;
    wait_until(Duration::from_secs(5), || {
        found = reason(nginx, name, pid, "retired");
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "no \"process {pid} retired\" line; the pool's lines:\n{}",
            all_pool_lines(nginx).join("\n")
        )
    })
}

/// Asserts that process `pid` is gone and reaped (no zombie) within 5 s.
#[track_caller]
fn gone(pid: u32) {
    assert!(
        wait_until(Duration::from_secs(5), || proc_state(pid).is_none()),
        "process {pid} still there ({:?})",
        proc_state(pid)
    );
}

/// Asserts that the processes are gone once nginx has stopped (a zombie left to an init that
/// does not reap counts as gone: nothing runs).
#[track_caller]
fn all_gone_after_stop(pids: &[u32]) {
    for &pid in pids {
        assert!(
            wait_until(Duration::from_secs(5), || matches!(
                proc_state(pid),
                None | Some('Z')
            )),
            "pool process {pid} still running after nginx stopped ({:?})",
            proc_state(pid)
        );
    }
}

/// A line of the access log (`logs/pool.log`).
#[derive(Debug, Clone)]
struct Logged {
    uri: String,
    status: u16,
    pid: Option<u32>,
    n: Option<u64>,
    /// `$transform_queue_time` as logged.
    q: String,
    exit: Option<String>,
}

impl Logged {
    fn queue_time(&self) -> f64 {
        assert!(
            self.q
                .split_once('.')
                .is_some_and(|(s, ms)| !s.is_empty() && ms.len() == 3),
            "$transform_queue_time {:?} is not seconds.milliseconds",
            self.q
        );
        self.q.parse().expect("queue time")
    }
}

fn access(nginx: &Nginx) -> Vec<Logged> {
    let text = std::fs::read_to_string(nginx.prefix.join("logs/pool.log")).unwrap_or_default();
    text.lines()
        .map(|l| {
            let mut f = l.split(' ');
            let uri = f.next().unwrap().to_string();
            let status = f.next().unwrap().parse().expect("status");
            let mut kv = BTreeMap::new();
            for w in f {
                let (k, v) = w.split_once('=').expect("key=value");
                kv.insert(k.to_string(), v.to_string());
            }
            let value = |k: &str| kv.get(k).filter(|v| !v.is_empty() && *v != "-").cloned();
            Logged {
                uri,
                status,
                pid: value("pid").map(|p| p.parse().expect("pid")),
                n: value("n").map(|n| n.parse().expect("n")),
                q: kv.get("q").cloned().unwrap_or_default(),
                exit: value("exit"),
            }
        })
        .collect()
}

/// Waits (up to 5 s) for `count` lines in the access log; returns them.
#[track_caller]
fn access_lines(nginx: &Nginx, count: usize) -> Vec<Logged> {
    assert!(
        wait_until(Duration::from_secs(5), || access(nginx).len() >= count),
        "{} access-log lines of {count}",
        access(nginx).len()
    );
    access(nginx)
}

fn logged<'a>(lines: &'a [Logged], uri: &str) -> &'a Logged {
    lines
        .iter()
        .find(|l| l.uri == uri)
        .unwrap_or_else(|| panic!("no access-log line for {uri}: {lines:#?}"))
}

const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Reuse, bytes and log variables
// ---------------------------------------------------------------------------------------------

/// Sequential requests all go to one process (an idle one is reused first), concurrent ones
/// spread over `processes=2` and no more; bodies are byte-exact whatever the program's framing;
/// `$transform_pid` and `$transform_requests` say which process served each request and how
/// many it had served.
#[test]
fn many_requests_over_few_processes() {
    let nginx = start(
        "transform_pool p {HELPER} pool-serve processes=2;",
        "location / { transform_pass p; }",
    );
    let mut c = Client::connect(nginx.port);
    let first = echo_on(&mut c, "/echo?0");
    assert_eq!(first.n, 1);
    let mut echoes = vec![first.clone()];
    for i in 1..50u64 {
        // Keep-alive connections and new ones alike.
        let e = if i % 5 == 0 {
            c = Client::connect(nginx.port);
            echo_on(&mut c, &format!("/echo?{i}"))
        } else {
            echo_on(&mut c, &format!("/echo?{i}"))
        };
        assert_eq!(
            e.pid, first.pid,
            "request {i}: an idle process is reused first"
        );
        assert_eq!(e.n, i + 1, "request {i}: the process's count");
        echoes.push(e);
    }
    assert_eq!(
        started(&nginx, "p"),
        [first.pid],
        "one process for sequential requests"
    );

    // Byte-exact bodies, with a length and chunked by the program.
    let mut requests = 50;
    for n in [0u64, 1, 4095, 65536, MIB + 17, 3 * MIB + 5] {
        let want = helper_output(&["gen", &n.to_string()]);
        assert_eq!(want.len() as u64, n);
        for path in ["gen", "chunked"] {
            let r = c.get(&format!("/{path}?{n}"));
            assert_eq!(r.status, 200, "/{path}?{n}");
            assert!(r.complete, "/{path}?{n}: body not complete ({:?})", r.end);
            assert_eq!(r.body.len() as u64, n, "/{path}?{n}: length");
            assert!(
                r.body == want,
                "/{path}?{n}: the bytes differ from the stream"
            );
            requests += 1;
        }
    }

    // Concurrent requests: a second process starts, no third.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let port = nginx.port;
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                for i in 0..8 {
                    let r = c.get(&format!("/slow?100&t{t}i{i}"));
                    assert_eq!(r.status, 200);
                    assert_eq!(r.body, b"slow");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    requests += 32;

    let lines = access_lines(&nginx, requests);
    assert_eq!(lines.len(), requests, "one access-log line per request");
    let pids: BTreeSet<u32> = lines
        .iter()
        .map(|l| l.pid.expect("every request has a $transform_pid"))
        .collect();
    let starts = started(&nginx, "p");
    assert_eq!(
        pids,
        starts.iter().copied().collect(),
        "the processes that served are the started ones"
    );
    assert_eq!(pids.len(), 2, "processes=2 under concurrency: {pids:?}");
    // Each process served many, and $transform_requests counts each of its requests once.
    for pid in &pids {
        let mut counts: Vec<u64> = lines
            .iter()
            .filter(|l| l.pid == Some(*pid))
            .map(|l| l.n.expect("$transform_requests"))
            .collect();
        counts.sort_unstable();
        assert!(
            counts.len() >= 5,
            "process {pid} served {} requests",
            counts.len()
        );
        assert_eq!(
            counts,
            (1..=counts.len() as u64).collect::<Vec<_>>(),
            "$transform_requests of process {pid}"
        );
    }
    // The variables match what the program itself saw.
    for (i, e) in echoes.iter().enumerate() {
        let l = logged(&lines, &format!("/echo?{i}"));
        assert_eq!((l.pid, l.n), (Some(e.pid), Some(e.n)), "{l:?}");
        assert_eq!(l.exit, None, "the process did not end: {l:?}");
        if i > 0 {
            assert_eq!(l.queue_time(), 0.0, "an idle process was there: {l:?}");
        }
    }
    // With four clients on two processes, some requests waited.
    assert!(
        lines
            .iter()
            .filter(|l| l.uri.starts_with("/slow"))
            .any(|l| l.queue_time() > 0.0),
        "no request waited for a process"
    );
    let worker = nginx.worker_pid();
    let mut kids = children_of(worker);
    kids.sort_unstable();
    assert_eq!(
        kids,
        pids.iter().copied().collect::<Vec<_>>(),
        "the pool's processes stay"
    );
    assert!(
        pool_lines(&nginx, "p")
            .iter()
            .all(|l| !l.contains("replaced")),
        "{:?}",
        pool_lines(&nginx, "p")
    );
    let started_line = wait_line(&nginx, &format!("started process {}", first.pid));
    assert!(started_line.contains("[info]"), "{started_line}");
    nginx.stop();
    all_gone_after_stop(&starts);
}

/// The program receives the method, the URI as received (the rewritten one after a rewrite,
/// escaped), the client's headers in order without the hop-by-hop ones, and a Content-Length
/// only with a body; chunked client bodies arrive with a Content-Length.
#[test]
fn the_program_receives_the_request_as_the_spec_says() {
    let nginx = start(
        "transform_pool p {HELPER} pool-serve;",
        r#"location / { transform_pass p; }
           location /r/ { rewrite ^/r/(.*)$ "/x/a b/echo?k=$1" last; }
           location /x/ { transform_pass p; }"#,
    );
    let mut c = Client::connect(nginx.port);
    c.send(
        "GET /a/echo?x=1&y=%20z HTTP/1.1\r\nHost: localhost\r\nX-One: 1\r\n\
         Connection: keep-alive\r\nKeep-Alive: 300\r\nProxy-Connection: keep-alive\r\n\
         TE: trailers\r\nUpgrade: something\r\nX-Two: two words\r\n\r\n",
    );
    let e = parse_echo(&c.read_response(false));
    assert_eq!(e.method, "GET");
    assert_eq!(e.uri, "/a/echo?x=1&y=%20z");
    assert_eq!(e.body, 0);
    assert_eq!(
        e.headers,
        ["Host: localhost", "X-One: 1", "X-Two: two words"],
        "the client's headers, hop-by-hop ones dropped, no Content-Length without a body"
    );

    let r = post(&mut c, "/echo", b"hello");
    let e2 = parse_echo(&r);
    assert_eq!((e2.method.as_str(), e2.body), ("POST", 5));
    assert_eq!(e2.headers, ["Host: localhost", "Content-Length: 5"]);
    assert_eq!((e2.pid, e2.n), (e.pid, 2));

    // A chunked body arrives whole, with a Content-Length and no Transfer-Encoding.
    c.send(
        "POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    let e3 = parse_echo(&c.read_response(false));
    assert_eq!(e3.body, 11);
    assert_eq!(e3.headers, ["Host: localhost", "Content-Length: 11"]);

    // After a rewrite: the rewritten path, escaped, and its arguments.
    let e4 = echo_on(&mut c, "/r/v?orig=1");
    assert_eq!(e4.uri, "/x/a%20b/echo?k=v&orig=1");
    assert_eq!(e4.method, "GET");

    // Status line and headers of the program's response reach the client.
    let r = c.get("/status?404");
    assert_eq!(r.status, 404);
    assert_eq!(r.body, b"status 404\n");
    assert_eq!(r.header("Content-Type"), Some("text/plain"));
    assert_eq!(echo_on(&mut c, "/echo").n, 6, "the same process all along");
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// Queue
// ---------------------------------------------------------------------------------------------

/// processes=1 queue=2: requests beyond the busy process wait (and a request's timeouts count
/// from when it got its process), a waiting request whose client leaves is out of the queue, and
/// beyond the queue the answer is 503 with Retry-After and one warn line each.
#[test]
fn beyond_the_pool_requests_wait_and_beyond_the_queue_get_503() {
    let nginx = start(
        "transform_pool p {HELPER} pool-serve processes=1 queue=2;",
        "location / { transform_pass p; }
         location /rt/ { transform_read_timeout 1s; transform_timeout 1s; transform_pass p; }",
    );
    let send = |path: &str| {
        let mut c = Client::connect(nginx.port);
        c.send(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
        c
    };
    let mut a = send("/slow?2500");
    assert!(
        wait_until(Duration::from_secs(5), || started(&nginx, "p").len() == 1),
        "the first request starts a process"
    );
    let pid = started(&nginx, "p")[0];
    // The spacing only orders the requests as nginx sees them.
    let pause = || std::thread::sleep(Duration::from_millis(250));
    pause();
    let x = send("/slow?11");
    pause();
    drop(x);
    pause();
    let mut b = send("/rt/slow?12");
    pause();
    let mut c = send("/slow?13");
    pause();
    for path in ["/slow?14", "/slow?15"] {
        let r = get(nginx.port, path);
        assert_eq!(r.status, 503, "{path}: the queue is full");
        assert_eq!(r.header("Retry-After"), Some("1"), "{path}");
    }
    let ra = a.read_response(false);
    assert_eq!((ra.status, ra.body.as_slice()), (200, &b"slow"[..]));
    // B waited over a second for the process, with a read timeout of one second: its
    // timeouts start when it gets its process.
    let rb = b.read_response(false);
    assert_eq!(
        (rb.status, rb.body.as_slice()),
        (200, &b"slow"[..]),
        "/rt/slow?12"
    );
    let rc = c.read_response(false);
    assert_eq!((rc.status, rc.body.as_slice()), (200, &b"slow"[..]));

    let refused: Vec<String> = nginx
        .log_lines("warn")
        .into_iter()
        .filter(|l| {
            l.contains(
                "transform pool \"p\": 1 processes busy and 2 requests queued (queue=2), \
                 request refused",
            )
        })
        .collect();
    assert_eq!(
        refused.len(),
        2,
        "one warn line per refused request: {refused:?}"
    );

    let lines = access_lines(&nginx, 6);
    let la = logged(&lines, "/slow?2500");
    let lb = logged(&lines, "/rt/slow?12");
    let lc = logged(&lines, "/slow?13");
    assert_eq!((la.pid, la.n), (Some(pid), Some(1)));
    // The request that left the queue never reached the program: B is the process's second.
    assert_eq!((lb.pid, lb.n), (Some(pid), Some(2)));
    assert_eq!((lc.pid, lc.n), (Some(pid), Some(3)));
    assert!(lb.queue_time() > 0.5, "B waited for A: {lb:?}");
    assert!(lc.queue_time() > 0.5, "C waited for A: {lc:?}");
    for path in ["/slow?14", "/slow?15"] {
        let l = logged(&lines, path);
        assert_eq!((l.status, l.pid), (503, None), "{l:?}");
    }
    assert!(
        wait_until(Duration::from_secs(5), || access(&nginx)
            .iter()
            .any(|l| l.uri == "/slow?11")),
        "the request whose client left is logged"
    );
    let lx = access(&nginx)
        .into_iter()
        .find(|l| l.uri == "/slow?11")
        .unwrap();
    assert_eq!(lx.pid, None, "it never got a process: {lx:?}");
    assert_eq!(started(&nginx, "p"), [pid], "processes=1");
    nginx.stop();
    all_gone_after_stop(&[pid]);
}

// ---------------------------------------------------------------------------------------------
// Failures: each process in an unknown state is killed and replaced
// ---------------------------------------------------------------------------------------------

/// A process that dies mid-response: the client sees a truncated response, the log says the
/// process was replaced, and the next request gets a new process.
#[test]
fn a_crash_mid_response_truncates_it_and_replaces_the_process() {
    let nginx = start(
        "transform_pool p {HELPER} pool-serve;",
        "location / { transform_pass p; }",
    );
    let worker = nginx.worker_pid();
    let before = echo(nginx.port, "/echo");
    let mut c = Client::connect(nginx.port);
    c.send(&format!("GET /crash?{MIB} HTTP/1.1\r\nHost: x\r\n\r\n"));
    let head = c.read_head();
    assert_eq!(head.status, 200, "the header went out before the crash");
    c.stream()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut body = Vec::new();
    let (end, _) = c.stream_body(&head, &mut |piece| body.extend_from_slice(piece));
    assert!(
        matches!(end, End::Closed | End::Reset),
        "the response must end broken, not {end:?} ({} bytes)",
        body.len()
    );
    let want = helper_output(&["gen", &MIB.to_string()]);
    assert!(
        body.len() < 2 * want.len() && want.starts_with(&body),
        "what came ({} bytes) is the program's output",
        body.len()
    );
    let why = replaced(&nginx, "p", before.pid);
    assert!(why.contains("SIGSEGV"), "replaced: {why}");
    gone(before.pid);
    let after = echo(nginx.port, "/echo");
    assert_ne!(after.pid, before.pid);
    assert_eq!(after.n, 1);
    assert_eq!(started(&nginx, "p"), [before.pid, after.pid]);
    assert_eq!(children_of(worker), [after.pid]);
    let lines = access_lines(&nginx, 3);
    let crash = logged(&lines, &format!("/crash?{MIB}"));
    assert_eq!(crash.pid, Some(before.pid));
    assert!(
        crash.exit.is_some(),
        "the process ended during the request: {crash:?}"
    );
    nginx.stop();
}

/// Answers that break the protocol: garbage (502), no framing (502), bytes past the
/// Content-Length (the response is complete, the process replaced), a 1xx status (502). Each
/// time the process is replaced: the next request gets a new one.
#[test]
fn protocol_breaches_replace_the_process() {
    let nginx = start(
        "transform_pool p {HELPER} pool-serve;",
        "location / { transform_pass p; }",
    );
    for (path, status, body) in [
        ("/garbage", 502, None),
        ("/no-length", 502, None),
        ("/status?100", 502, None),
        ("/excess", 200, Some(&b"01234"[..])),
    ] {
        let mut c = Client::connect(nginx.port);
        let before = echo_on(&mut c, "/echo");
        let r = c.get(path);
        assert_eq!(r.status, status, "{path}");
        if let Some(body) = body {
            assert!(r.complete, "{path}: {:?}", r.end);
            assert_eq!(r.body, body, "{path}");
        }
        // Right away: never the process in an unknown state.
        let after = echo(nginx.port, "/echo");
        assert_ne!(after.pid, before.pid, "{path}: the process was reused");
        assert_eq!(after.n, 1, "{path}");
        replaced(&nginx, "p", before.pid);
        gone(before.pid);
    }
    nginx.stop();
}

/// A process that writes while idle (after its response, before a request) is replaced before
/// any request reaches it.
#[test]
fn a_process_writing_while_idle_is_replaced() {
    let nginx = start(
        "transform_pool p {HELPER} pool-serve;",
        "location / { transform_pass p; }",
    );
    let mut c = Client::connect(nginx.port);
    let before = echo_on(&mut c, "/echo");
    let r = c.get("/late");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
    replaced(&nginx, "p", before.pid);
    gone(before.pid);
    let after = echo_on(&mut c, "/echo");
    assert_ne!(after.pid, before.pid);
    assert_eq!(after.n, 1);
    nginx.stop();
}

/// A process that does not answer within the location's transform_read_timeout: 504, replaced.
#[test]
fn a_hung_process_times_out_with_504_and_is_replaced() {
    let nginx = start(
        "transform_pool p {HELPER} pool-serve;",
        "location / { transform_read_timeout 1s; transform_pass p; }",
    );
    let before = echo(nginx.port, "/echo");
    let start = Instant::now();
    let r = get(nginx.port, "/hang");
    assert_eq!(r.status, 504);
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "504 before the timeout"
    );
    replaced(&nginx, "p", before.pid);
    gone(before.pid);
    let after = echo(nginx.port, "/echo");
    assert_ne!(after.pid, before.pid);
    assert_eq!(after.n, 1);
    nginx.stop();
}

/// A client that leaves mid-response kills the process: it is never reused, and no zombie is
/// left.
#[test]
fn a_client_abort_mid_response_replaces_the_process() {
    let nginx = start(
        "transform_pool p {HELPER} pool-serve;",
        "location / { transform_pass p; }",
    );
    let worker = nginx.worker_pid();
    let before = echo(nginx.port, "/echo");
    let mut c = Client::connect(nginx.port);
    c.send("GET /gen?100000000 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read_head().status, 200);
    assert_eq!(c.read_some(100_000), 100_000);
    assert_eq!(proc_state(before.pid).map(|s| s != 'Z'), Some(true));
    drop(c);
    replaced(&nginx, "p", before.pid);
    gone(before.pid);
    let after = echo(nginx.port, "/echo");
    assert_ne!(after.pid, before.pid);
    assert_eq!(after.n, 1);
    assert_eq!(children_of(worker), [after.pid], "no zombie, one process");
    nginx.stop();
}

/// A process that did not read all of its request's body is not reused (a small body that fits
/// in the pipe, and a large one).
#[test]
fn a_process_that_left_its_request_body_unread_is_not_reused() {
    let nginx = start(
        "transform_pool p {HELPER} pool-serve;",
        // If the module reused the process, the follow-up request would hang there.
        "location / { transform_read_timeout 3s; transform_pass p; }",
    );
    for size in [MIB as usize, 10] {
        let mut c = Client::connect(nginx.port);
        let before = echo_on(&mut c, "/echo");
        let r = post(&mut c, "/unread-body", &vec![b'x'; size]);
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"ok"[..]),
            "{size} bytes"
        );
        let after = echo_on(&mut c, "/echo");
        assert_ne!(
            after.pid, before.pid,
            "{size} bytes: the process was reused"
        );
        assert_eq!(after.n, 1);
        gone(before.pid);
    }
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// Backoff
// ---------------------------------------------------------------------------------------------

/// A program that dies at start, under steady requests: 502s, backoff lines with delays doubling
/// from 100ms, and only a handful of starts in 2.5 s (no fork storm).
#[test]
fn a_program_dying_at_start_backs_off_instead_of_forking_in_a_loop() {
    let nginx = start(
        "transform_pool dead {HELPER} pool-serve die-at-start 5 processes=2;",
        "location / { transform_pass dead; }",
    );
    let until = Instant::now() + Duration::from_millis(2500);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let port = nginx.port;
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                while Instant::now() < until {
                    let mut c = Client::connect(port);
                    c.stream()
                        .set_read_timeout(Some(Duration::from_secs(2)))
                        .unwrap();
                    c.send("GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                    let mut raw = Vec::new();
                    // A request may wait for the backoff beyond this client's patience.
                    let _ = c.read_to_end(&mut raw);
                    let text = String::from_utf8_lossy(&raw).into_owned();
                    statuses.push(
                        text.split(' ')
                            .nth(1)
                            .and_then(|s| s.parse::<u16>().ok())
                            .unwrap_or(0),
                    );
                }
                statuses
            })
        })
        .collect();
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    let starts = started(&nginx, "dead");
    let statuses: Vec<u16> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .collect();
    let answered: Vec<u16> = statuses.iter().copied().filter(|&s| s != 0).collect();
    assert!(answered.contains(&502), "statuses {statuses:?}");
    assert!(
        answered.iter().all(|&s| s == 502 || s == 503),
        "statuses {statuses:?}"
    );
    assert!(
        (2..=10).contains(&starts.len()),
        "{} processes started in 2.5 s for {} requests",
        starts.len(),
        statuses.len()
    );
    let tag = "transform pool \"dead\" process ";
    let delays: Vec<u64> = nginx
        .error_log()
        .lines()
        .filter_map(|l| l.split_once(tag))
        .filter_map(|(_, rest)| {
            rest.split_once(" exited with code 5 before its first response; next start in ")
        })
        .map(|(_, ms)| leading_number(ms).expect("a delay"))
        .collect();
    assert!(delays.len() >= 3, "backoff lines: {delays:?}");
    let doubling: Vec<u64> = (0..delays.len())
        .map(|i| (100u64 << i.min(20)).min(10_000))
        .collect();
    assert_eq!(delays, doubling, "delays from 100ms, doubling");
    // Every one of them died before its first response: each counts for the backoff.
    for pid in started(&nginx, "dead") {
        wait_line(
            &nginx,
            &format!(
                "transform pool \"dead\" process {pid} exited with code 5 before its first \
                 response; next start in "
            ),
        );
    }
    let worker = nginx.worker_pid();
    assert!(wait_until(Duration::from_secs(3), || children_of(worker).is_empty()));
    nginx.stop();
}

/// A completed response resets the backoff; a process that exits after having answered is
/// replaced without backoff.
#[test]
fn a_completed_response_resets_the_backoff() {
    // The program fails at start while the flag file exists (a shell that exits 3 before the
    // helper runs, reading nothing).
    let flag = temp_dir("pool-backoff-flag").join("fail");
    std::fs::write(&flag, b"").unwrap();
    let nginx = start(
        &format!(
            "transform_pool p /bin/sh -c \"test -e {} && exit 3; exec {{HELPER}} pool-serve\";",
            flag.display()
        ),
        "location / { transform_pass p; }",
    );
    let backoff = |nginx: &Nginx| -> Vec<(u64, u64)> {
        nginx
            .error_log()
            .lines()
            .filter_map(|l| l.split_once("transform pool \"p\" process "))
            .filter_map(|(_, rest)| {
                let (_, tail) = rest.split_once(" exited with code ")?;
                let (code, ms) = tail.split_once(" before its first response; next start in ")?;
                Some((code.parse().ok()?, leading_number(ms)?))
            })
            .collect()
    };
    // The spacing lets each backoff pass; its length is not what is tested.
    let pause = || std::thread::sleep(Duration::from_millis(500));
    assert_eq!(get(nginx.port, "/echo").status, 502);
    pause();
    assert_eq!(get(nginx.port, "/echo").status, 502);
    pause();
    assert_eq!(backoff(&nginx), [(3, 100), (3, 200)]);
    std::fs::remove_file(&flag).unwrap();
    let e = echo(nginx.port, "/echo");
    assert_eq!(e.n, 1);
    // This process has answered: its exit is no start failure.
    assert_eq!(get(nginx.port, "/exit").status, 502);
    let why = replaced(&nginx, "p", e.pid);
    assert!(why.contains("exited with code 3"), "{why}");
    pause();
    assert_eq!(backoff(&nginx), [(3, 100), (3, 200)]);
    // A fresh process that dies of its first request (it read it) is no start failure either:
    // a client must not be able to hold the pool back.
    assert_eq!(get(nginx.port, "/exit").status, 502);
    pause();
    assert_eq!(backoff(&nginx), [(3, 100), (3, 200)]);
    // One failing at start again starts the backoff over (the answer reset it).
    std::fs::write(&flag, b"").unwrap();
    assert_eq!(get(nginx.port, "/echo").status, 502);
    pause();
    assert_eq!(backoff(&nginx), [(3, 100), (3, 200), (3, 100)]);
    std::fs::remove_file(&flag).unwrap();
    assert_eq!(echo(nginx.port, "/echo").n, 1);
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// Lifecycle
// ---------------------------------------------------------------------------------------------

/// max_requests=N: a process serves N + 0..N/10 requests, then is retired and a new one serves.
#[test]
fn max_requests_recycles_processes() {
    let nginx = start(
        "transform_pool p {HELPER} pool-serve max_requests=5;
         transform_pool q {HELPER} pool-serve max_requests=20;",
        "location /p/ { transform_pass p; } location /q/ { transform_pass q; }",
    );
    // max_requests=5: 5 + 0 each (5/10 is 0).
    let mut c = Client::connect(nginx.port);
    let echoes: Vec<Echo> = (0..30).map(|_| echo_on(&mut c, "/p/echo")).collect();
    let mut pids = Vec::new();
    for (i, e) in echoes.iter().enumerate() {
        assert_eq!(e.n, (i % 5) as u64 + 1, "request {i}: {echoes:?}");
        if i % 5 == 0 {
            assert!(
                !pids.contains(&e.pid),
                "request {i}: a retired process served"
            );
            pids.push(e.pid);
        } else {
            assert_eq!(e.pid, echoes[i - 1].pid, "request {i}");
        }
    }
    for &pid in &pids {
        assert_eq!(
            retired(&nginx, "p", pid),
            "served 5 requests (max_requests 5)"
        );
        gone(pid);
    }
    let line = wait_line(&nginx, &format!("process {} retired", pids[0]));
    assert!(line.contains("[info]"), "{line}");
    assert_eq!(started(&nginx, "p"), pids);

    // max_requests=20: 20 to 22 each.
    let mut served: Vec<(u32, u64)> = Vec::new();
    for _ in 0..70 {
        let e = echo_on(&mut c, "/q/echo");
        match served.last_mut() {
            Some((pid, n)) if *pid == e.pid => {
                *n += 1;
                assert_eq!(e.n, *n);
            }
            _ => {
                assert_eq!(e.n, 1);
                served.push((e.pid, 1));
            }
        }
    }
    let (done, _) = served.split_at(served.len() - 1);
    assert!(done.len() >= 3, "{served:?}");
    for &(pid, n) in done {
        assert!(
            (20..=22).contains(&n),
            "process {pid} served {n}: {served:?}"
        );
        assert_eq!(
            retired(&nginx, "q", pid),
            format!("served {n} requests (max_requests 20)")
        );
    }
    nginx.stop();
}

/// idle_timeout: an idle process is retired after that long unused, down to no process; a busy
/// one is not (its idle time starts when its request ends).
#[test]
fn idle_processes_are_retired_after_idle_timeout() {
    let nginx = start(
        "transform_pool p {HELPER} pool-serve idle_timeout=1s;",
        "location / { transform_pass p; }",
    );
    let worker = nginx.worker_pid();
    let mut c = Client::connect(nginx.port);
    let first = echo_on(&mut c, "/echo");
    // Busy longer than idle_timeout: still the same process right after.
    let r = c.get("/slow?1500");
    assert_eq!(r.body, b"slow");
    let again = echo_on(&mut c, "/echo");
    assert_eq!((again.pid, again.n), (first.pid, 3));
    assert_eq!(children_of(worker), [first.pid]);
    assert!(
        wait_until(Duration::from_secs(5), || children_of(worker).is_empty()),
        "the idle process is still there: {:?}",
        children_of(worker)
    );
    let why = retired(&nginx, "p", first.pid);
    let ms = why
        .strip_prefix("idle for ")
        .and_then(|rest| rest.strip_suffix("ms (idle_timeout)"))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("retired: {why}"));
    assert!(ms >= 1000, "retired after {ms}ms idle");
    let next = echo_on(&mut c, "/echo");
    assert_ne!(next.pid, first.pid);
    assert_eq!(next.n, 1);
    nginx.stop();
}

/// A response with `Connection: close`: the process is retired after it; the client's
/// connection goes on.
#[test]
fn connection_close_from_the_program_retires_it() {
    let nginx = start(
        "transform_pool p {HELPER} pool-serve;",
        "location / { transform_pass p; }",
    );
    let mut c = Client::connect(nginx.port);
    let before = echo_on(&mut c, "/echo");
    let r = c.get("/close");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"bye"[..]));
    assert!(r.complete);
    let after = echo_on(&mut c, "/echo");
    assert_ne!(after.pid, before.pid);
    assert_eq!(after.n, 1);
    assert_eq!(
        retired(&nginx, "p", before.pid),
        "it asked to close (Connection: close)"
    );
    gone(before.pid);
    assert!(
        reason(&nginx, "p", before.pid, "replaced").is_none(),
        "a process that asked to close is retired, not replaced"
    );
    nginx.stop();
}

/// HEAD is passed as HEAD and answered without a body; 204 and 304 come without a body or
/// framing; in each case the process stays in a known state and is reused.
#[test]
fn head_204_and_304_keep_the_process() {
    let nginx = start(
        "transform_pool p {HELPER} pool-serve;",
        "location / { transform_pass p; }",
    );
    let mut c = Client::connect(nginx.port);
    let first = echo_on(&mut c, "/echo");
    c.send("HEAD /head-check HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response(true);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Length"), Some("5"));
    // The program saw a HEAD: the length of its head for HEAD /echo is that of a body saying
    // `method=HEAD`.
    c.send("HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response(true);
    assert_eq!(r.status, 200);
    let as_head = format!(
        "pid={}\nn=3\nmethod=HEAD\nuri=/echo\nbody=0\nh:Host: x\n",
        first.pid
    );
    assert_eq!(
        r.header("Content-Length"),
        Some(as_head.len().to_string().as_str()),
        "HEAD /echo: the program answered another method"
    );
    // Nothing follows the heads on the connection, and the process is reused.
    let e = echo_on(&mut c, "/echo");
    assert_eq!((e.pid, e.n), (first.pid, 4));
    let r = c.get("/head-check");
    assert_eq!(r.body, b"hello");
    let mut n = 5;
    for code in [204u16, 304] {
        let r = c.get(&format!("/status?{code}"));
        assert_eq!(r.status, code);
        assert_eq!(r.header("X-Status"), Some(code.to_string().as_str()));
        assert!(
            r.header("Transfer-Encoding").is_none(),
            "{code}: {:?}",
            r.headers
        );
        n += 1;
        let e = echo_on(&mut c, "/echo");
        n += 1;
        assert_eq!((e.pid, e.n), (first.pid, n), "after {code}");
    }
    assert_eq!(started(&nginx, "p"), [first.pid]);
    nginx.stop();
}

/// A program's stderr lines are in the error log at the http level's transform_stderr level.
#[test]
fn stderr_lines_go_to_the_error_log() {
    let nginx = start(
        "transform_stderr error;
         transform_pool p {HELPER} pool-serve;",
        "location / { transform_pass p; }",
    );
    let r = get(nginx.port, "/stderr");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
    let line = wait_line(&nginx, "pool stderr line");
    assert!(line.contains("[error]"), "{line}");
    nginx.stop();
}

/// Bodies of 20 MiB both ways through one process, byte-exact: the program writes its response
/// while it reads the request's body, and nothing deadlocks.
#[test]
fn large_bodies_both_ways() {
    let nginx = start(
        "transform_pool p {HELPER} pool-serve;",
        "location / { transform_pass p; }",
    );
    let data = helper_output(&["gen", &(20 * MIB).to_string()]);
    let want = sha256(&data);
    let mut c = Client::connect(nginx.port);
    let first = echo_on(&mut c, "/echo");
    // In, then out, then both at once.
    let r = post(&mut c, "/sha-body", &data);
    assert_eq!(r.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        format!("len={} sha256={want}\n", data.len())
    );
    let r = c.get(&format!("/gen?{}", data.len()));
    assert!(r.complete, "{:?}", r.end);
    assert_eq!(sha256(&r.body), want);
    let r = post(&mut c, "/echo-body", &data);
    assert_eq!(r.status, 200);
    assert!(r.complete, "{:?}", r.end);
    assert_eq!(r.body.len(), data.len());
    assert_eq!(sha256(&r.body), want);
    let e = echo_on(&mut c, "/echo");
    assert_eq!(
        (e.pid, e.n),
        (first.pid, 5),
        "the process read everything: reused"
    );
    nginx.stop();
}

/// A reload with a request in flight: the request completes, the idle process is retired at
/// once, the busy one after its request; the new worker starts its own.
#[test]
fn reload_lets_the_request_in_flight_finish() {
    let nginx = start(
        "transform_pool p {HELPER} pool-serve processes=2;",
        "location / { transform_pass p; }",
    );
    let old_worker = nginx.worker_pid();
    let mut short = Client::connect(nginx.port);
    short.send("GET /slow?300 HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut long = Client::connect(nginx.port);
    long.send("GET /slow?4000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(short.read_response(false).body, b"slow");
    drop(short);
    let lines = access_lines(&nginx, 1);
    let idle = logged(&lines, "/slow?300").pid.expect("pid");
    let starts = started(&nginx, "p");
    assert_eq!(starts.len(), 2, "{starts:?}");
    let busy = *starts.iter().find(|&&p| p != idle).unwrap();

    // SAFETY: signalling our own nginx master.
    unsafe { libc::kill(nginx.master_pid() as i32, libc::SIGHUP) };
    assert_eq!(retired(&nginx, "p", idle), "the worker is shutting down");
    gone(idle);
    assert!(
        matches!(proc_state(busy), Some(s) if s != 'Z'),
        "the busy process was stopped before its request ended"
    );
    assert!(wait_until(Duration::from_secs(5), || nginx
        .worker_pids()
        .iter()
        .any(|&w| w != old_worker)));
    let fresh = echo(nginx.port, "/echo");
    assert!(!starts.contains(&fresh.pid));
    assert_eq!(fresh.n, 1);

    let r = long.read_response(false);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"slow"[..]));
    assert!(r.complete);
    assert_eq!(retired(&nginx, "p", busy), "the worker is shutting down");
    assert!(
        wait_until(Duration::from_secs(5), || proc_state(old_worker).is_none()),
        "the old worker exits"
    );
    all_gone_after_stop(&starts);
    nginx.stop();
    all_gone_after_stop(&[fresh.pid]);
}

/// The worker's death takes its processes with it (PDEATHSIG).
#[test]
fn the_workers_death_kills_its_processes() {
    let mut nginx = start(
        "transform_pool p {HELPER} pool-serve processes=2;",
        "location / { transform_pass p; }",
    );
    nginx.allow("exited on signal 9");
    let worker = nginx.worker_pid();
    let e = echo(nginx.port, "/echo");
    assert_eq!(children_of(worker), [e.pid]);
    // SAFETY: signalling the worker of our own nginx.
    unsafe { libc::kill(worker as i32, libc::SIGKILL) };
    assert!(
        wait_until(Duration::from_secs(5), || matches!(
            proc_state(e.pid),
            None | Some('Z')
        )),
        "process {} outlived its worker ({:?})",
        e.pid,
        proc_state(e.pid)
    );
    nginx.stop();
}

/// The processes are spawned as transform_exec's programs with the http level's settings: its
/// environment, limits, directory, and a process group of their own.
#[test]
fn processes_get_the_http_level_settings() {
    let nginx = start(
        "transform_env POOL_VAR pool-value;
         transform_rlimit nofile 100;
         transform_chdir /tmp;
         transform_pool p {HELPER} pool-serve;",
        "location / { transform_pass p; }",
    );
    let e = echo(nginx.port, "/echo");
    let environ = std::fs::read(format!("/proc/{}/environ", e.pid)).expect("environ");
    assert!(
        environ
            .split(|&b| b == 0)
            .any(|v| v == b"POOL_VAR=pool-value"),
        "{:?}",
        String::from_utf8_lossy(&environ)
    );
    assert_eq!(proc_limit(e.pid, "Max open files"), (100, 100));
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/cwd", e.pid)).expect("cwd"),
        std::path::Path::new("/tmp")
    );
    // SAFETY: getpgid has no preconditions.
    let pgid = unsafe { libc::getpgid(e.pid as i32) };
    assert_eq!(pgid, e.pid as i32, "its own process group");
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// transform_filter_pass
// ---------------------------------------------------------------------------------------------

/// Files of a test, served by nginx and filtered by a pool (`pool-serve` picks its answer by the
/// Content-Type of the response it gets: see the helper's header).
struct Files {
    dir: std::path::PathBuf,
}

impl Files {
    fn new(sizes: &[u64]) -> Files {
        let dir = temp_dir("pool-files");
        for &n in sizes {
            std::fs::write(
                dir.join(format!("f{n}")),
                helper_output(&["gen", &n.to_string()]),
            )
            .expect("write a file");
        }
        Files { dir }
    }

    /// A location serving the files as `type`, filtered by pool `pool`.
    fn location(&self, path: &str, ctype: &str, pool: &str) -> String {
        format!(
            "location {path} {{ alias {}/; types {{ }} default_type {ctype};
               transform_filter_types *; transform_filter_pass {pool}; add_header X-After yes; }}",
            self.dir.display()
        )
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `X-Filter: pid=PID n=N status=S` of a filtered response: (PID, N, S).
fn filtered_by(r: &Response) -> (u32, u64, String) {
    let v = r
        .header("X-Filter")
        .unwrap_or_else(|| panic!("not filtered by the pool: {:?}", r.headers));
    let field = |k: &str| {
        v.split(' ')
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k}= in {v:?}"))
            .to_string()
    };
    (
        field("pid").parse().unwrap(),
        field("n").parse().unwrap(),
        field("status"),
    )
}

/// Responses filtered one after another by one pooled process: byte-exact bodies of any size,
/// the message the process gets (status line, headers without those of the old body, chunked),
/// its status and headers replacing the original's, later filters (add_header) still applying,
/// HEAD not filtered.
#[test]
fn filter_pass_filters_responses_through_one_process() {
    let sizes = [0u64, 1, 100_000, 3 * MIB + 5];
    let files = Files::new(&sizes);
    let nginx = start(
        "transform_pool f {HELPER} pool-serve;",
        &format!(
            "{} {} {} location /plain/ {{ alias {}/; }}",
            files.location("/files/", "text/plain", "f"),
            files.location("/headers/", "application/x-pool-headers", "f"),
            files.location("/replace/", "application/x-pool-replace", "f"),
            files.dir.display()
        ),
    );
    let mut c = Client::connect(nginx.port);
    let mut pid = None;
    let mut n = 0;
    for size in sizes {
        let data = helper_output(&["gen", &size.to_string()]);
        let r = c.get(&format!("/files/f{size}"));
        assert_eq!(r.status, 200, "f{size}");
        assert!(r.complete, "f{size}: {:?}", r.end);
        assert!(
            r.body.iter().zip(&data).all(|(a, b)| *a == b ^ 1) && r.body.len() == data.len(),
            "f{size}: the body is not the file XORed with 1 ({} bytes)",
            r.body.len()
        );
        assert_eq!(r.header("Content-Type"), Some("text/plain"));
        assert_eq!(r.header("X-After"), Some("yes"), "add_header applies after");
        let (p, count, status) = filtered_by(&r);
        assert_eq!(*pid.get_or_insert(p), p, "one process for all");
        n += 1;
        assert_eq!(count, n);
        assert_eq!(status, "200");
    }
    // HEAD is not filtered: the process does not see it.
    c.send("HEAD /files/f100000 HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response(true);
    assert_eq!(r.status, 200);
    assert!(r.header("X-Filter").is_none(), "{:?}", r.headers);

    // The message: status line, the headers as they stand without those of the old body, and a
    // chunked body.
    let r = c.get("/headers/f100000");
    assert_eq!(r.status, 200);
    n += 1;
    assert_eq!(filtered_by(&r).1, n, "HEAD reached the process");
    let text = String::from_utf8(r.body.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // (The reason phrase may be empty: `HTTP/1.1 200 ` is a valid status line.)
    assert!(
        lines
            .first()
            .is_some_and(|l| l.starts_with("line=HTTP/1.1 200 ")),
        "{text}"
    );
    assert!(
        lines.contains(&"h:Content-Type: application/x-pool-headers"),
        "{text}"
    );
    assert_eq!(
        lines[lines.len() - 2..],
        ["h:Transfer-Encoding: chunked", "body=100000"],
        "{text}"
    );
    for gone in ["Content-Length", "ETag", "Last-Modified", "Accept-Ranges"] {
        assert!(
            !lines.iter().any(|l| l
                .to_ascii_lowercase()
                .starts_with(&format!("h:{}:", gone.to_ascii_lowercase()))),
            "{gone} passed to the program: {text}"
        );
    }
    // The answer's status and headers replace the original's.
    let r = c.get("/replace/f1");
    assert_eq!((r.status, r.body.as_slice()), (201, &b"replaced"[..]));
    assert_eq!(r.header("X-Replaced"), Some("yes"));
    assert!(
        r.header("ETag").is_none() && r.header("Last-Modified").is_none(),
        "the original's headers stayed: {:?}",
        r.headers
    );
    n += 1;
    assert_eq!(filtered_by(&r), (pid.unwrap(), n, "200".to_string()));
    // Unfiltered next to it.
    let r = c.get("/plain/f100000");
    assert_eq!(r.body, helper_output(&["gen", "100000"]));
    assert!(r.header("X-Filter").is_none());
    assert_eq!(started(&nginx, "f"), [pid.unwrap()]);
    nginx.stop();
}

/// A filtering process that crashes: 502 before the commit or a broken response after; it is
/// replaced and the next response gets a new process.
#[test]
fn filter_pass_crash_replaces_the_process() {
    let files = Files::new(&[100_000]);
    let nginx = start(
        "transform_pool f {HELPER} pool-serve;",
        &format!(
            "{} {}",
            files.location("/files/", "text/plain", "f"),
            files.location("/crash/", "application/x-pool-crash", "f")
        ),
    );
    let before = filtered_by(&get(nginx.port, "/files/f100000")).0;
    let mut c = Client::connect(nginx.port);
    c.send("GET /crash/f100000 HTTP/1.1\r\nHost: x\r\n\r\n");
    c.stream()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = c.read_head();
    if head.status == 200 {
        let mut body = Vec::new();
        let (end, _) = c.stream_body(&head, &mut |p| body.extend_from_slice(p));
        assert!(
            matches!(end, End::Closed | End::Reset),
            "a crash after the commit must break the response, not {end:?}"
        );
    } else {
        assert_eq!(head.status, 502, "{:?}", head.headers);
    }
    replaced(&nginx, "f", before);
    gone(before);
    let after = filtered_by(&get(nginx.port, "/files/f100000"));
    assert_ne!(after.0, before);
    assert_eq!(after.1, 1);
    nginx.stop();
}

/// Responses beyond a busy process wait in the queue; beyond the queue: 503 with Retry-After
/// and the warn line.
#[test]
fn filter_pass_queue_full_is_a_503() {
    let files = Files::new(&[1]);
    let nginx = start(
        "transform_pool f {HELPER} pool-serve processes=1 queue=1;",
        &files.location("/slow/", "application/x-pool-slow", "f"),
    );
    let send = || {
        let mut c = Client::connect(nginx.port);
        c.send("GET /slow/f1 HTTP/1.1\r\nHost: x\r\n\r\n");
        c
    };
    let mut a = send();
    assert!(wait_until(Duration::from_secs(5), || started(&nginx, "f")
        .len()
        == 1));
    // The spacing only orders the requests as nginx sees them.
    std::thread::sleep(Duration::from_millis(250));
    let mut b = send();
    std::thread::sleep(Duration::from_millis(250));
    let r = get(nginx.port, "/slow/f1");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("Retry-After"), Some("1"));
    for (c, n) in [(&mut a, 1), (&mut b, 2)] {
        let r = c.read_response(false);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"slow"[..]));
        assert_eq!(filtered_by(&r).1, n);
    }
    let refused: Vec<String> = nginx
        .log_lines("warn")
        .into_iter()
        .filter(|l| {
            l.contains("transform pool \"f\": ") && l.contains("response to filter refused")
        })
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    nginx.stop();
}
