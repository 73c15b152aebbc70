//! Defects found by an outside review against nginx's own sources, one test each: every one of
//! them failed on the code before the fix.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;

fn server(locations: &str) -> String {
    format!("server {{ listen 127.0.0.1:{{PORT}}; default_type text/plain; {locations} }}")
}

/// A CGI `Location` is checked as nginx checks X-Accel-Redirect: no traversal out of the
/// target's root, GET for the target, named locations work, and the log variables still tell
/// about the program that redirected.
#[test]
fn cgi_local_redirects_are_checked_like_x_accel_redirect() {
    let nginx = Nginx::start(&format!(
        "log_format tr \"$uri $transform_pid $transform_exit_status\";\n{}",
        server(
            r#"access_log {PREFIX}/logs/tr.log tr;
           transform_output cgi;
           location /files/ { alias {PREFIX}/html/; }
           location /up { transform_exec /usr/bin/printf "Location: /files/../../../../etc/hostname\r\n\r\n"; }
           location /up-quoted { transform_exec /usr/bin/printf "Location: /files/%%2e%%2e/%%2e%%2e/%%2e%%2e/etc/hostname\r\n\r\n"; }
           location /ok { transform_exec /usr/bin/printf "Location: /files/page.txt\r\n\r\n"; }
           location /named { transform_exec /usr/bin/printf "Location: @named\r\n\r\n"; }
           location @named { return 200 "named $request_method\n"; }"#
        )
    ));
    std::fs::create_dir_all(nginx.prefix.join("html")).unwrap();
    std::fs::write(nginx.prefix.join("html/page.txt"), "page\n").unwrap();
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();

    for path in ["/up", "/up-quoted"] {
        let r = Client::connect(nginx.port).get(path);
        assert_eq!(r.status, 502, "{path}: an unsafe URI is refused");
        assert!(
            hostname.is_empty() || !String::from_utf8_lossy(&r.body).contains(hostname.trim()),
            "{path} served /etc/hostname"
        );
    }
    let unsafe_lines = nginx
        .log_lines("error")
        .iter()
        .filter(|l| l.contains("redirected to an unsafe URI"))
        .count();
    assert_eq!(unsafe_lines, 2, "one line per refused redirect");

    // A POST becomes a GET at the static target (which would answer 405 to a POST).
    let mut c = Client::connect(nginx.port);
    c.send("POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"page\n");
    // HEAD stays HEAD.
    c.send("HEAD /ok HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response(true);
    assert_eq!(r.status, 200);
    // A named location, reached with the request's own method.
    let r = c.get("/named");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"named GET\n");

    // The access log still shows the program that redirected.
    let log = || std::fs::read_to_string(nginx.prefix.join("logs/tr.log")).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(2), || log().lines().count() >= 5));
    let line = log()
        .lines()
        .find(|l| l.starts_with("/files/page.txt"))
        .map(String::from)
        .expect("the redirected request's log line");
    let fields: Vec<&str> = line.split(' ').collect();
    assert!(
        fields[1].parse::<u32>().is_ok() && fields[2] == "0",
        "variables after the redirect: {line}"
    );
    nginx.stop();
}

/// 5 million blank stderr lines and exit 1: the worker's memory and the error log stay small,
/// and the tail is one message.
#[test]
fn a_stderr_flood_of_blank_lines_is_bounded() {
    let nginx = Nginx::start_full(
        "",
        &server(
            r#"location /blank { transform_exec /bin/sh -c "yes '' | head -n 5000000 >&2; exit 1"; }
               location /blank-off { transform_stderr off;
                                     transform_exec /bin/sh -c "yes '' | head -n 5000000 >&2; exit 1"; }"#,
        ),
        "info",
    );
    let worker = nginx.worker_pid();
    Client::connect(nginx.port).get("/blank-off");
    let rss_before = rss_kib(worker);
    let log_before = nginx.error_log().len();
    let start = Instant::now();
    let r = Client::connect(nginx.port).get("/blank");
    let took = start.elapsed();
    assert_eq!(r.status, 502);
    let rss_after = rss_kib(worker);
    let log = nginx.error_log();
    let grew = log.len() - log_before;
    eprintln!(
        "5M blank stderr lines: worker RSS {rss_before} -> {rss_after} KiB, error log +{grew} \
         bytes, {took:?}"
    );
    assert!(
        rss_after < rss_before + 8 * 1024,
        "worker RSS grew from {rss_before} to {rss_after} KiB"
    );
    assert!(grew < 64 * 1024, "the error log grew by {grew} bytes");
    let tails = log[log_before..]
        .lines()
        .filter(|l| l.contains("stderr (last lines)"))
        .count();
    assert_eq!(tails, 1, "one tail message");
    // transform_stderr off: not a byte of it.
    let before = nginx.error_log().len();
    assert_eq!(Client::connect(nginx.port).get("/blank-off").status, 502);
    let log = nginx.error_log();
    assert!(
        !log[before..].contains("stderr"),
        "stderr reached the log with transform_stderr off: {}",
        &log[before..]
    );
    nginx.stop();
}

/// Conditional headers do not judge a program's output: no 412 after the program ran, no 304
/// for `If-None-Match: *`, and a CGI program's own ETag does not make its response a 412.
#[test]
fn conditional_requests_do_not_judge_program_output() {
    let nginx = Nginx::start(&server(
        r#"location /raw { transform_exec /bin/echo ran; }
           location /etag { transform_output cgi;
                            transform_exec /usr/bin/printf "ETag: \"abc\"\r\n\r\nbody"; }"#,
    ));
    for (path, header) in [
        ("/raw", "If-Unmodified-Since: Thu, 01 Jan 1970 00:00:01 GMT"),
        ("/raw", "If-Match: \"nothing\""),
        ("/raw", "If-None-Match: *"),
        ("/raw", "If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT"),
        ("/etag", "If-Match: \"abc\""),
    ] {
        let mut c = Client::connect(nginx.port);
        c.send(&format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n"
        ));
        let r = c.read_response(false);
        assert_eq!(r.status, 200, "{path} with {header}");
        assert!(!r.body.is_empty(), "{path} with {header}");
    }
    nginx.stop();
}

/// Output past a CGI Content-Length is dropped (as nginx's fastcgi does), the response stays
/// complete for a slow client, and the connection stays usable; a program that exits 1 after
/// a complete response is logged, not reset.
#[test]
fn output_past_the_content_length_keeps_the_response_complete() {
    let nginx = Nginx::start(&server(
        r#"transform_output cgi;
           location /more { transform_exec /bin/sh -c "printf 'Content-Length: 5000000\r\n\r\n'; head -c 6000000 /dev/zero"; }
           location /exit1 { transform_commit_timeout 0;
                             transform_exec /bin/sh -c "printf 'Content-Length: 5\r\n\r\nhello'; sleep 0.5; exit 1"; }
           location /next { return 200 "next\n"; }"#,
    ));
    let mut c = Client::connect(nginx.port);
    c.send("GET /more HTTP/1.1\r\nHost: x\r\n\r\n");
    // A slow client: the program is done (and past its length) long before it reads.
    std::thread::sleep(Duration::from_millis(1500));
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert!(r.complete, "got {} of 5000000 bytes", r.body.len());
    assert_eq!(r.body.len(), 5_000_000);
    assert!(r.body.iter().all(|&b| b == 0));
    assert_eq!(
        c.get("/next").body,
        b"next\n",
        "the connection stays usable"
    );
    let dropped: Vec<String> = nginx
        .log_lines("error")
        .into_iter()
        .filter(|l| l.contains("sent more than its Content-Length 5000000"))
        .collect();
    assert_eq!(dropped.len(), 1, "{dropped:?}");

    let r = c.get("/exit1");
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(r.body, b"hello");
    assert_eq!(c.get("/next").body, b"next\n", "not reset after exit 1");
    // The program was let go with its complete response; its failure is logged when it ends.
    assert!(wait_until(Duration::from_secs(3), || nginx
        .log_lines("error")
        .iter()
        .any(|l| l.contains(
            "exited with code 1 after its complete response"
        ))));
    nginx.stop();
}

/// A client that goes away while its whole body waits in nginx for the program is noticed at
/// once: the program is stopped and the access log says 499.
#[test]
fn a_client_gone_while_its_body_waits_for_the_program_is_noticed() {
    let nginx = Nginx::start(&format!(
        "log_format st \"$uri $status\";\n{}",
        server(
            r#"access_log {PREFIX}/logs/st.log st;
           location /slow { transform_stdin body; transform_exec /bin/sh -c "sleep 8; cat"; }"#
        )
    ));
    let worker = nginx.worker_pid();
    let mut c = Client::connect(nginx.port);
    // The program starts with the first 64 KiB, which fill its stdin pipe; then the last 100
    // bytes arrive: nginx reads all of the body, the program takes none of it yet.
    let body = vec![b'x'; 65_636];
    c.send(&format!(
        "POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    c.stream().write_all(&body[..65_536]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    c.stream().write_all(&body[65_536..]).unwrap();
    assert!(wait_until(Duration::from_secs(3), || !children_of(worker).is_empty()));
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    drop(c);
    assert!(
        wait_until(Duration::from_secs(4), || children_of(worker).is_empty()),
        "the program outlived its client"
    );
    let log = || std::fs::read_to_string(nginx.prefix.join("logs/st.log")).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(2), || !log().is_empty()));
    assert_eq!(log().trim(), "/slow 499");
    eprintln!("client close noticed in {:?}", start.elapsed());
    nginx.stop();
}

/// A program that writes one byte and then works on: the byte reaches the client after
/// `transform_commit_timeout`, not when the program is done.
#[test]
fn the_first_byte_is_not_held_hostage() {
    let nginx = Nginx::start(&server(
        r#"location /slow { transform_exec /bin/sh -c "printf x; sleep 1.5; printf y"; }
           location /fails { transform_exec /bin/sh -c "printf partial; exit 3"; }"#,
    ));
    let mut c = Client::connect(nginx.port);
    let start = Instant::now();
    c.send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n");
    let head = c.read_head();
    let mut first = [0u8; 4];
    let n = c.read(&mut first).unwrap();
    let ttfb = start.elapsed();
    eprintln!("time to first byte of a 1-byte-then-sleep program: {ttfb:?}");
    assert_eq!(head.status, 200);
    assert!(n > 0 && first[..n].contains(&b'x'), "{:?}", &first[..n]);
    assert!(
        ttfb < Duration::from_millis(1000),
        "first byte after {ttfb:?}"
    );
    // A program that fails at once is still a clean 502.
    let r = Client::connect(nginx.port).get("/fails");
    assert_eq!(r.status, 502);
    nginx.stop();
}

/// `tcp_nodelay off` is honoured on the splice path.
#[test]
fn tcp_nodelay_off_is_honoured_when_splicing() {
    let nginx = Nginx::start(&server(
        r#"location /on { transform_exec {HELPER} gen 100000; }
           location /off { tcp_nodelay off; transform_exec {HELPER} gen 100000; }"#,
    ));
    let worker = nginx.worker_pid();
    for (path, want) in [("/off", 0), ("/on", 1)] {
        let trace = nginx
            .prefix
            .join(format!("strace{}", path.replace('/', "-")));
        let strace = Strace::attach(worker, "setsockopt", &trace);
        let r = Client::connect(nginx.port).get(path);
        assert_eq!(r.status, 200);
        std::thread::sleep(Duration::from_millis(200));
        strace.stop();
        let text = std::fs::read_to_string(&trace).unwrap_or_default();
        assert_eq!(text.matches("TCP_NODELAY").count(), want, "{path}: {text}");
    }
    assert!(nginx.error_log().contains("transform transport: splice"));
    nginx.stop();
}

/// A program path from the request cannot write a line of its own into the error log.
#[test]
fn request_derived_strings_are_escaped_in_the_log() {
    // (At info level: nginx's own debug lines print the decoded URI as it is.)
    let nginx = Nginx::start_full(
        "",
        &server(
            r#"location ~ "(?s)^/p(/.*)$" { transform_exec $1; }
           location ~ "(?s)^/q/(.*)$" { transform_exec $1; }
           location ~ "(?s)^/d(/.*)$" { transform_chdir $1; transform_exec /bin/true; }"#,
        ),
        "info",
    );
    for path in [
        "/p/nonexistent%0d%0aINJECTED%20line",
        "/q/relative%0d%0aINJECTED%20line",
        "/d/nonexistent%0aINJECTED%20line",
    ] {
        let r = Client::connect(nginx.port).get(path);
        assert!(r.status >= 500, "{path}: {}", r.status);
    }
    let log = nginx.error_log();
    assert!(
        !log.lines()
            .any(|l| l.starts_with("[emerg]") || l.starts_with("2026/01/01")),
        "a line was injected:\n{log}"
    );
    assert_eq!(log.matches("\\x0d\\x0aINJECTED line").count(), 2, "{log}");
    assert_eq!(log.matches("\\x0aINJECTED line").count(), 3, "{log}");
    nginx.stop();
}

/// A client trickling its body keeps no stuck program alive: transform_read_timeout judges
/// the program, which takes nothing.
#[test]
fn a_trickling_client_does_not_keep_a_stuck_program_alive() {
    let nginx = Nginx::start(&server(
        r#"location /stuck { transform_stdin body; transform_read_timeout 1s;
                             client_body_timeout 10s;
                             transform_exec /bin/sh -c "sleep 30"; }"#,
    ));
    let mut c = Client::connect(nginx.port);
    c.send("POST /stuck HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    let start = Instant::now();
    let stream = c.stream().try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        let mut s = stream;
        for _ in 0..40 {
            if s.write_all(b"1\r\nx\r\n").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    c.stream()
        .set_read_timeout(Some(Duration::from_secs(6)))
        .unwrap();
    let r = c.read_response(false);
    let took = start.elapsed();
    assert_eq!(r.status, 504, "after {took:?}");
    assert!(took < Duration::from_secs(4), "504 after {took:?}");
    drop(c);
    trickle.join().unwrap();
    assert!(nginx
        .log_lines("error")
        .iter()
        .any(|l| l.contains("timed out (transform_read_timeout 1000ms)")));
    nginx.stop();
}

/// One splicing stream yields to the other connections every `sendfile_max_chunk`, as nginx's
/// write filter does.
#[test]
fn a_spliced_stream_yields_at_sendfile_max_chunk() {
    let nginx = Nginx::start(&server(
        r#"location /chunked { sendfile_max_chunk 64k; transform_exec {HELPER} gen 8000000; }
           location /unbounded { sendfile_max_chunk 0; transform_exec {HELPER} gen 8000000; }"#,
    ));
    let want = helper_output(&["gen", "8000000"]);
    let yields = |nginx: &Nginx| {
        nginx
            .error_log()
            .matches("sendfile_max_chunk 65536 reached")
            .count()
    };
    let r = Client::connect(nginx.port).get("/unbounded");
    assert_eq!(r.body.len(), want.len());
    assert_eq!(yields(&nginx), 0);
    let r = Client::connect(nginx.port).get("/chunked");
    assert!(r.complete);
    assert_eq!(sha256(&r.body), sha256(&want));
    assert!(yields(&nginx) >= 1, "{} yields", yields(&nginx));
    nginx.stop();
}

/// transform_type from the request: control characters are refused (no header injection), and
/// an empty value means default_type.
#[test]
fn transform_type_from_the_request_is_checked() {
    let nginx = Nginx::start(&server(
        r#"location ~ "(?s)^/tt/(.*)$" { transform_type $1; transform_exec /bin/echo hi; }
           location /arg { transform_type $arg_t; transform_exec /bin/echo hi; }"#,
    ));
    let r = Client::connect(nginx.port).get("/tt/x%0d%0aSet-Cookie:%20session=attacker");
    assert_eq!(r.status, 500);
    assert!(r.header("Set-Cookie").is_none());
    assert_eq!(
        nginx
            .log_lines("error")
            .iter()
            .filter(|l| l.contains("transform_type value") && l.contains("control character"))
            .count(),
        1
    );
    let r = Client::connect(nginx.port).get("/arg");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("text/plain"));
    let r = Client::connect(nginx.port).get("/arg?t=image/png");
    assert_eq!(r.header("Content-Type"), Some("image/png"));
    nginx.stop();
}

/// A large transform_header_buffer_size costs nothing until a header needs it.
#[test]
fn the_header_buffer_grows_with_the_header() {
    let nginx = Nginx::start(&server(
        r#"location /cgi { transform_output cgi; transform_header_buffer_size 8m;
                           transform_exec /bin/sh -c "printf 'X: y\r\n'; sleep 1; printf '\r\nok'"; }"#,
    ));
    let worker = nginx.worker_pid();
    Client::connect(nginx.port).get("/cgi");
    let before = rss_kib(worker);
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let mut c = Client::connect(nginx.port);
            c.send("GET /cgi HTTP/1.1\r\nHost: x\r\n\r\n");
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let during = rss_kib(worker);
    for mut c in clients {
        assert_eq!(c.read_response(false).body, b"ok");
    }
    eprintln!("16 CGI requests with an 8m header buffer: worker RSS {before} -> {during} KiB");
    assert!(during < before + 16 * 1024, "RSS {before} -> {during} KiB");
    nginx.stop();
}

/// `transform_header_buffer_size 0` fails `nginx -t` with the file and line.
#[test]
fn a_zero_header_buffer_is_a_configuration_error() {
    let (ok, err, path) = nginx_test_config(
        "server { listen 127.0.0.1:1; location / { transform_header_buffer_size 0; \
         transform_exec /bin/true; } }",
    );
    assert!(!ok);
    assert!(
        err.contains("header buffer size must be at least 16 bytes")
            && err.contains(&format!("{}:", path.display())),
        "{err}"
    );
}

/// A program that exits while a process that left its group (setsid) holds its stdout: the
/// response ends with the program, and the log says that process was not killed (it was not:
/// the module kills only the program's group).
#[test]
fn descendants_that_left_the_group_are_not_claimed_killed() {
    let nginx = Nginx::start(&server(
        r#"location /escaped { transform_exec /bin/sh -c "setsid sleep 30 & sleep 0.3; jobs -p"; }
           location /stayed { transform_exec /bin/sh -c "sleep 30 & jobs -p"; }"#,
    ));
    let r = Client::connect(nginx.port).get("/escaped");
    assert_eq!(r.status, 200);
    let pid: i32 = String::from_utf8_lossy(&r.body)
        .trim()
        .parse()
        .expect("pid");
    let alive = proc_state(pid as u32).is_some();
    // SAFETY: the test's own sleep, started through the module; killed by its pid.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(alive, "the escaped process was not expected to be killed");
    let r = Client::connect(nginx.port).get("/stayed");
    assert_eq!(r.status, 200);
    let pid: u32 = String::from_utf8_lossy(&r.body)
        .trim()
        .parse()
        .expect("pid");
    assert!(wait_until(Duration::from_secs(2), || proc_state(pid)
        .is_none_or(|s| s == 'Z')));
    let info = nginx.log_lines("info");
    let escaped: Vec<&String> = info.iter().filter(|l| l.contains("GET /escaped")).collect();
    let stayed: Vec<&String> = info.iter().filter(|l| l.contains("GET /stayed")).collect();
    assert!(
        escaped
            .iter()
            .any(|l| l.contains("outside its group") && l.contains("not killed")),
        "{escaped:?}"
    );
    assert!(
        !escaped.iter().any(|l| l.contains("they are killed")),
        "{escaped:?}"
    );
    assert!(
        stayed
            .iter()
            .any(|l| l.contains("left processes in its group; they are killed")),
        "{stayed:?}"
    );
    nginx.stop();
}

/// With `transform_commit_timeout 0` only output commits: request body arriving before the
/// program wrote anything does not send a header, so a failure is still a clean 502.
#[test]
fn only_output_commits_the_response() {
    let nginx = Nginx::start(&server(
        r#"location /eat { transform_stdin body; transform_commit_timeout 0;
                           transform_exec /bin/sh -c "cat >/dev/null; exit 3"; }"#,
    ));
    let mut c = Client::connect(nginx.port);
    c.send("POST /eat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..3 {
        c.send("5\r\nhello\r\n");
        std::thread::sleep(Duration::from_millis(100));
    }
    c.send("0\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.status, 502);
    nginx.stop();
}

/// A response committed without a length, whose program exits while a descendant keeps its
/// stdout open: the chunked framing ends well on both transports, and the response ends with
/// what the pipe held when the program exited, even while the descendant keeps writing.
#[test]
fn output_ends_with_the_program_in_good_framing() {
    let nginx = Nginx::start(&server(
        r#"location /spliced { transform_exec /bin/sh -c "printf hello; sleep 0.3; sleep 5 & exit 0"; }
           location /buffered { transform_splice off;
                                transform_exec /bin/sh -c "printf hello; sleep 0.3; sleep 5 & exit 0"; }
           location /writer { transform_exec /bin/sh -c "printf start; sleep 0.2; yes & sleep 0.5; exit 0"; }"#,
    ));
    for path in ["/spliced", "/buffered"] {
        let mut c = Client::connect(nginx.port);
        let r = c.get(path);
        assert_eq!(r.status, 200, "{path}");
        assert!(r.complete, "{path}: not complete");
        assert_eq!(r.body, b"hello", "{path}");
        assert_eq!(
            c.get("/spliced").body,
            b"hello",
            "{path}: the connection goes on"
        );
    }
    // A descendant writing without end: the response still ends soon after the program (a
    // client reading as fast as it can; before, it never ended).
    let mut c = Client::connect(nginx.port);
    let start = Instant::now();
    c.send("GET /writer HTTP/1.1\r\nHost: x\r\n\r\n");
    let head = c.read_head();
    assert_eq!(head.status, 200);
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    while start.elapsed() < Duration::from_secs(10) {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                got += n;
                if buf[..n].ends_with(b"0\r\n\r\n") {
                    break;
                }
            }
        }
    }
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "the response went on for {:?} ({got} bytes)",
        start.elapsed()
    );
    nginx.stop();
}

/// A response complete at its Content-Length frees its connection at once, whatever the
/// program does next: lingers, or writes on.
#[test]
fn a_complete_response_frees_the_connection_at_once() {
    let nginx = Nginx::start(&server(
        r#"transform_output cgi; transform_commit_timeout 0;
           location /linger { transform_exec /bin/sh -c "printf 'Content-Length: 5\r\n\r\nhello'; exec sleep 4"; }
           location /yes { transform_exec /bin/sh -c "printf 'Content-Length: 5\r\n\r\nhello'; exec yes"; }
           location /next { return 200 "next\n"; }"#,
    ));
    let worker = nginx.worker_pid();
    for path in ["/linger", "/yes"] {
        let mut c = Client::connect(nginx.port);
        let start = Instant::now();
        let r = c.get(path);
        assert_eq!(r.body, b"hello", "{path}");
        assert_eq!(c.get("/next").body, b"next\n", "{path}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{path}: next request after {:?}",
            start.elapsed()
        );
    }
    // `yes` dies of SIGPIPE at once; the lingering one within transform_kill_timeout.
    assert!(
        wait_until(Duration::from_secs(5), || children_of(worker).is_empty()),
        "programs left: {:?}",
        children_of(worker)
    );
    nginx.stop();
}

/// A body the program does not take (`transform_stdin off`) is read and dropped as it arrives:
/// a slow upload does not cut a long response at lingering_timeout, and a client that leaves is
/// noticed.
#[test]
fn a_body_the_program_does_not_take_is_dropped_as_it_arrives() {
    let nginx = Nginx::start(&server(
        r#"lingering_timeout 1s;
           location /lines { transform_exec /bin/sh -c "for i in 1 2 3 4 5 6; do echo line; sleep 0.5; done"; }
           location /quiet { transform_exec /bin/sh -c "sleep 4; echo done"; }"#,
    ));
    let worker = nginx.worker_pid();
    let mut c = Client::connect(nginx.port);
    // A byte every 1.5 s: slower than lingering_timeout.
    c.send("POST /lines HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n");
    let stream = c.stream().try_clone().unwrap();
    let uploader = std::thread::spawn(move || {
        let mut s = stream;
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(1500));
            if s.write_all(b"x").is_err() {
                break;
            }
        }
    });
    let r = c.read_response(false);
    uploader.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.complete, "cut after {} bytes", r.body.len());
    assert_eq!(r.body.iter().filter(|&&b| b == b'\n').count(), 6);

    let mut c = Client::connect(nginx.port);
    // The body comes after the header (nginx reads it after the program started).
    c.send("POST /quiet HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n");
    assert!(wait_until(Duration::from_secs(3), || !children_of(worker).is_empty()));
    std::thread::sleep(Duration::from_millis(200));
    c.send("abc");
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    drop(c);
    assert!(
        wait_until(Duration::from_secs(2), || children_of(worker).is_empty()),
        "the program outlived its client"
    );
    eprintln!("client close noticed in {:?}", start.elapsed());
    nginx.stop();
}

/// Conditional requests are judged as usual at the target of a CGI redirect.
#[test]
fn a_redirect_target_answers_conditional_requests() {
    let nginx = Nginx::start(&server(
        r#"if_modified_since before;
           location /files/ { alias {PREFIX}/html/; }
           location /go { transform_output cgi;
                          transform_exec /usr/bin/printf "Location: /files/page.txt\r\n\r\n"; }"#,
    ));
    std::fs::create_dir_all(nginx.prefix.join("html")).unwrap();
    std::fs::write(nginx.prefix.join("html/page.txt"), "page\n").unwrap();
    for path in ["/files/page.txt", "/go"] {
        let mut c = Client::connect(nginx.port);
        c.send(&format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nIf-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT\r\n\r\n"
        ));
        assert_eq!(c.read_response(false).status, 304, "{path}");
    }
    nginx.stop();
}

/// Second review: a CGI redirect is not refused for a body the program never took
/// (`transform_stdin off`), however late the body comes.
#[test]
fn a_redirect_with_an_unread_body_is_followed() {
    let nginx = Nginx::start(&server(
        r#"location /files/ { alias {PREFIX}/html/; }
           location /go { transform_output cgi;
                          transform_exec /usr/bin/printf "Location: /files/page.txt\r\n\r\n"; }"#,
    ));
    std::fs::create_dir_all(nginx.prefix.join("html")).unwrap();
    std::fs::write(nginx.prefix.join("html/page.txt"), "page\n").unwrap();
    let mut c = Client::connect(nginx.port);
    c.send("POST /go HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n");
    std::thread::sleep(Duration::from_millis(200));
    c.send("abc");
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"page\n");
    nginx.stop();
}

/// Second review: bytes past a Content-Length are logged also when all of the output was read
/// before the commit.
#[test]
fn excess_output_of_a_short_program_is_logged() {
    let nginx = Nginx::start(&server(
        r#"location /cl { transform_output cgi;
                          transform_exec /usr/bin/printf "Content-Length: 2\r\n\r\nhello"; }"#,
    ));
    let r = Client::connect(nginx.port).get("/cl");
    assert_eq!(r.body, b"he");
    let lines = nginx.log_lines("error");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("sent more than its Content-Length 2 (3 bytes more"))
            .count(),
        1,
        "{lines:?}"
    );
    nginx.stop();
}

/// Second review: with `transform_request_buffering on` a body the program does not take is
/// read whole first, so `$request_body` holds all of it.
#[test]
fn request_buffering_on_gives_a_whole_request_body_variable() {
    let nginx = Nginx::start(&server(
        r#"location /rb { transform_request_buffering on;
                          transform_exec /usr/bin/printf "[%s]" $request_body; }"#,
    ));
    let mut c = Client::connect(nginx.port);
    c.send("POST /rb HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nabc");
    std::thread::sleep(Duration::from_millis(300));
    c.send("def");
    assert_eq!(c.read_response(false).body, b"[abcdef]");
    nginx.stop();
}

/// Second review: a program let go after its complete response, killed by SIGPIPE when it
/// writes on, is not reported as a failure (the module closed its pipes).
#[test]
fn sigpipe_after_a_complete_response_is_not_a_failure() {
    let nginx = Nginx::start(&server(
        r#"location /late { transform_output cgi; transform_commit_timeout 0;
                            transform_exec /bin/sh -c "printf 'Content-Length: 5\r\n\r\nhello'; sleep 0.3; echo more; echo done >&2"; }"#,
    ));
    let worker = nginx.worker_pid();
    assert_eq!(Client::connect(nginx.port).get("/late").body, b"hello");
    assert!(wait_until(Duration::from_secs(3), || children_of(worker).is_empty()));
    let lines = nginx.log_lines("error");
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("after its complete response")),
        "{lines:?}"
    );
    nginx.stop();
}

/// Second review: a body nobody reads that fails after the commit (here: past
/// client_max_body_size) does not cut the response; the connection closes after it.
#[test]
fn an_unread_body_failing_after_the_commit_does_not_cut_the_response() {
    let nginx = Nginx::start(&server(
        r#"location /slow { client_max_body_size 1k; transform_commit_timeout 0;
                            transform_exec /bin/sh -c "printf first; sleep 1; printf second"; }"#,
    ));
    let mut c = Client::connect(nginx.port);
    c.send("POST /slow HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    let head = c.read_head();
    assert_eq!(head.status, 200);
    let big = format!("1000\r\n{}\r\n", "x".repeat(4096));
    c.send(&big);
    let mut rest = Vec::new();
    c.stream()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = c.read_to_end(&mut rest);
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.contains("first") && text.contains("second") && text.ends_with("0\r\n\r\n"),
        "{text:?}"
    );
    nginx.stop();
}
