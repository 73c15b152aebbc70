//! Streaming, bytes, framing and transport selection, against the real nginx.

mod common;

use std::time::{Duration, Instant};

use common::*;

const BIG: u64 = 256 * 1024 * 1024;

fn server(locations: &str) -> String {
    format!("server {{ listen 127.0.0.1:{{PORT}}; {locations} }}")
}

#[test]
fn bytes_are_exact_on_both_transports() {
    let nginx = Nginx::start(&server(
        "location /splice { transform_exec {HELPER} gen $arg_n; }
         location /buffered { transform_splice off; transform_exec {HELPER} gen $arg_n; }",
    ));
    let want = sha256(&helper_output(&["gen", &BIG.to_string()]));
    for path in ["/splice", "/buffered"] {
        let mut c = Client::connect(nginx.port);
        let r = c.get(&format!("{path}?n={BIG}"));
        assert_eq!(r.status, 200);
        assert!(r.complete, "{path}: body not complete");
        assert_eq!(r.body.len() as u64, BIG, "{path}: length");
        assert_eq!(sha256(&r.body), want, "{path}: sha256");
    }
    assert_eq!(
        transports(&nginx),
        ["splice", "buffered (transform_splice is off)"]
    );
    // $bytes_sent counts what the client got on both transports: body plus framing plus header.
    let log = nginx.access_log();
    for line in log.lines() {
        let sent: u64 = line
            .split('"')
            .nth(2)
            .and_then(|s| s.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("bytes_sent in access log");
        assert!(
            sent > BIG && sent < BIG + BIG / 100,
            "bytes_sent {sent} for {BIG} bytes: {line}"
        );
    }
    nginx.stop();
}

#[test]
fn arguments_arrive_as_single_argv_elements() {
    let nginx = Nginx::start(&server(
        r#"location /argv { transform_exec {HELPER} argv "$arg_a" "literal " two $arg_b; }
           location ~ "(?s)^/cap/(.*)$" { transform_exec {HELPER} argv $1; }"#,
    ));
    let hostile = [
        ("a;b", "a;b"),
        ("$(touch%20/tmp/pwned)", "$(touch%20/tmp/pwned)"),
        ("*", "*"),
        ("-rf", "-rf"),
        ("'\"`", "'\"`"),
        ("", ""),
    ];
    for (raw, expect) in hostile {
        let mut c = Client::connect(nginx.port);
        let r = c.get(&format!("/argv?a={raw}&b=x%20y"));
        assert_eq!(r.status, 200);
        let args: Vec<&[u8]> = r.body.split(|&b| b == 0).collect();
        // The helper prints the arguments after its mode: "$arg_a", "literal ", "two", "x%20y",
        // then comes the empty piece after the last NUL.
        assert_eq!(
            args.len(),
            5,
            "argument count for {raw:?}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(args[0], expect.as_bytes(), "value of $arg_a for {raw:?}");
        assert_eq!(args[1], b"literal ");
        assert_eq!(args[2], b"two");
        assert_eq!(args[3], b"x%20y");
        assert_eq!(args[4], b"");
    }
    // A decoded URI capture with spaces, a newline, quotes and a semicolon stays one element.
    let mut c = Client::connect(nginx.port);
    let r = c.get("/cap/a%20b%0Ac;%22d%22%20$(id)");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"a b\nc;\"d\" $(id)\0");
    assert!(!std::path::Path::new("/tmp/pwned").exists());
    nginx.stop();
}

#[test]
fn a_nul_byte_in_an_argument_is_a_400() {
    // $binary_remote_addr of 127.0.0.1 is 7f 00 00 01: a value with NUL bytes, which an argv
    // element (or an environment entry) cannot hold without being cut.
    let nginx = Nginx::start(&server(
        "location /argv { transform_exec {HELPER} argv $binary_remote_addr; }
         location /env { transform_env ADDR $binary_remote_addr; transform_exec /usr/bin/env; }
         location /arg { transform_exec {HELPER} argv $arg_x; }",
    ));
    let nul_lines = || {
        nginx
            .log_lines("error")
            .iter()
            .filter(|l| l.contains("contains a NUL byte"))
            .count()
    };
    for path in ["/argv", "/env"] {
        let (lines, runs) = (
            nul_lines(),
            nginx.error_log().matches("transform started").count(),
        );
        let r = Client::connect(nginx.port).get(path);
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(nul_lines(), lines + 1, "{path}: one error line");
        assert_eq!(
            nginx.error_log().matches("transform started").count(),
            runs,
            "{path}: no program runs"
        );
    }
    // nginx does not decode $arg_x (and refuses %00 in the path with its own 400): what reaches
    // the program is the three bytes as sent.
    let r = Client::connect(nginx.port).get("/arg?x=a%00b");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"a%00b\0");
    nginx.stop();
}

#[test]
fn chunked_keepalive_http10_and_head() {
    let nginx = Nginx::start(&server(
        "location /gen {
             transform_commit_timeout 5s;
             transform_exec {HELPER} gen-linger $arg_n 100; transform_type application/x-test;
         }
         location /empty { transform_exec /bin/true; }",
    ));
    let want = helper_output(&["gen-linger", "300000", "0"]);
    let mut c = Client::connect(nginx.port);
    // Three requests on one connection: keep-alive works after a streamed response.
    for _ in 0..3 {
        let r = c.get("/gen?n=300000");
        assert_eq!(r.version, "HTTP/1.1");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Transfer-Encoding"), Some("chunked"));
        assert_eq!(r.header("Content-Type"), Some("application/x-test"));
        assert!(r.complete);
        assert!(!r.chunks.is_empty());
        assert_eq!(r.body, want);
    }
    // Empty output: a complete empty 200 with a length.
    let r = c.get("/empty");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Length"), Some("0"));
    assert!(r.body.is_empty() && r.complete);

    // HTTP/1.0: close-delimited.
    let mut c = Client::connect(nginx.port);
    c.send("GET /gen?n=300000 HTTP/1.0\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert!(r.header("Transfer-Encoding").is_none() && r.header("Content-Length").is_none());
    assert_eq!(r.header("Connection"), Some("close"));
    assert_eq!(r.body, want);

    // HEAD: headers only, and the program is not run.
    let runs_before = nginx.error_log().matches("transform started").count();
    let mut c = Client::connect(nginx.port);
    c.send("HEAD /gen?n=300000 HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response(true);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/x-test"));
    // The connection carries nothing after the head: the next response starts right away.
    let r2 = c.get("/gen?n=10");
    assert_eq!(r2.status, 200);
    assert_eq!(r2.body, helper_output(&["gen-linger", "10", "0"]));
    // Output complete within transform_commit_size: a Content-Length, not chunks.
    assert_eq!(r2.header("Content-Length"), Some("10"));
    assert_eq!(
        nginx.error_log().matches("transform started").count(),
        runs_before + 1
    );
    nginx.stop();
}

#[test]
fn first_byte_arrives_before_the_program_exits() {
    let nginx = Nginx::start(&server(
        "transform_commit_size 0;
         location /drip { transform_exec {HELPER} drip 3 700; }
         location /drip-buffered { transform_splice off; transform_exec {HELPER} drip 3 700; }",
    ));
    for path in ["/drip", "/drip-buffered"] {
        let mut c = Client::connect(nginx.port);
        let start = Instant::now();
        c.send(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
        let head = c.read_head();
        assert_eq!(head.status, 200);
        let mut first = [0u8; 1];
        c.stream()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(c.read(&mut first).unwrap(), 1);
        let first_at = start.elapsed();
        // The program takes 3 x 700 ms; the first line must not wait for its exit.
        assert!(
            first_at < Duration::from_millis(1500),
            "first byte after {first_at:?}"
        );
    }
    nginx.stop();
}

#[test]
fn tls_http2_and_gzip_take_the_buffered_transport_byte_exact() {
    let dir = temp_dir("tls");
    let (crt, key) = make_cert(&dir);
    let nginx = Nginx::start(&format!(
        "server {{ listen 127.0.0.1:{{PORT}} ssl{{H2_LISTEN}}; {{H2_ON}}
                  ssl_certificate {crt}; ssl_certificate_key {key};
                  location /gen {{ transform_exec {{HELPER}} gen $arg_n; }}
                  location /late {{ transform_exec {{HELPER}} fail-after 3000000 1; }} }}",
        crt = crt.display(),
        key = key.display()
    ));
    let n = 32 * 1024 * 1024;
    let want = sha256(&helper_output(&["gen", &n.to_string()]));
    let url = format!("https://127.0.0.1:{}/gen?n={n}", nginx.port);
    let (ok, body) = curl(&["-sk", "--http1.1", &url]);
    assert!(ok);
    assert_eq!(sha256(&body), want, "TLS HTTP/1.1 body");
    let (ok, body) = curl(&["-sk", "--http2", "-w", "", &url]);
    assert!(ok);
    assert_eq!(sha256(&body), want, "HTTP/2 body");
    // A program failing after the header: even close-delimited HTTP/1.0 over TLS must not end
    // cleanly (no close_notify), so curl reports an error, and at once (not its timeout).
    let late = format!("https://127.0.0.1:{}/late", nginx.port);
    curl_broken(&["-sk", "--http1.0", &late], Duration::from_secs(10));
    curl_broken(&["-sk", "--http2", &late], Duration::from_secs(10));
    let t = transports(&nginx);
    assert_eq!(t.len(), 4);
    assert!(t.iter().all(|t| t.starts_with("buffered")), "{t:?}");
    assert!(t[1].contains("HTTP/2") || t[1].contains("TLS"), "{t:?}");
    nginx.stop();

    let nginx = Nginx::start(&server(
        "gzip on; gzip_types application/octet-stream;
         location /gen { transform_exec {HELPER} gen $arg_n; transform_type application/octet-stream; }",
    ));
    let (ok, body) = curl(&["-s", "--compressed", &nginx.url(&format!("/gen?n={n}"))]);
    assert!(ok);
    assert_eq!(sha256(&body), want, "gzip body after decompression");
    let (ok, raw) = curl(&[
        "-s",
        "-H",
        "Accept-Encoding: gzip",
        &nginx.url("/gen?n=100000"),
    ]);
    assert!(ok);
    assert_eq!(&raw[..2], b"\x1f\x8b", "response is gzip-encoded");
    let t = transports(&nginx);
    assert!(t.iter().all(|t| t.contains("body filter")), "{t:?}");
    nginx.stop();
}

#[test]
fn zero_copy_path_splices_and_never_reads_the_body() {
    let nginx = Nginx::start(&server(
        "location /gen { transform_exec {HELPER} gen $arg_n 1048576; }",
    ));
    let worker = nginx.worker_pid();
    let trace = nginx.prefix.join("strace.out");
    let strace = Strace::attach(worker, "read,readv,recvfrom,splice", &trace);

    let n: u64 = 64 * 1024 * 1024;
    let mut c = Client::connect(nginx.port);
    let r = c.get(&format!("/gen?n={n}"));
    assert_eq!(r.body.len() as u64, n);
    strace.stop();
    let text = std::fs::read_to_string(&trace).expect("strace output");
    let mut spliced = 0u64;
    let mut read = 0u64;
    for line in text.lines() {
        let ret: u64 = line
            .rsplit_once("= ")
            .and_then(|(_, r)| r.split_whitespace().next())
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        if line.contains("splice(") {
            spliced += ret;
        } else if line.contains("read(") || line.contains("readv(") || line.contains("recvfrom(") {
            read += ret;
        }
    }
    assert_eq!(spliced, n, "splice moved {spliced} of {n} bytes");
    assert!(
        read < 64 * 1024,
        "the worker read {read} bytes through userspace"
    );
    assert_eq!(transports(&nginx), ["splice"]);
    nginx.stop();
}

#[test]
fn slow_client_holds_the_program_back_with_bounded_memory() {
    for (name, extra) in [("splice", ""), ("buffered", "transform_splice off;")] {
        let nginx = Nginx::start(&server(&format!(
            "location /gen {{ {extra} transform_exec {{HELPER}} gen $arg_n; }}"
        )));
        let worker = nginx.worker_pid();
        let rss_before = rss_kib(worker);
        let total: u64 = 1024 * 1024 * 1024;
        let mut c = Client::connect(nginx.port);
        c.stream().set_nonblocking(false).unwrap();
        // Small receive buffer so the client really is slow.
        c.send(&format!("GET /gen?n={total} HTTP/1.1\r\nHost: x\r\n\r\n"));
        let head = c.read_head();
        assert_eq!(head.status, 200);
        let got = c.read_some(1024 * 1024);
        assert_eq!(got, 1024 * 1024);
        // Stop reading for a while: the program must block, not run ahead.
        std::thread::sleep(Duration::from_millis(1500));
        let kids = children_of(worker);
        assert_eq!(kids.len(), 1, "{name}: one program running");
        let written = wchar(kids[0]);
        assert!(
            written < 64 * 1024 * 1024,
            "{name}: program ran ahead: {written} bytes written"
        );
        let rss_growth = rss_kib(worker).saturating_sub(rss_before);
        assert!(
            rss_growth < 8 * 1024,
            "{name}: worker RSS grew by {rss_growth} KiB"
        );
        // Read a further 64 MiB: the program resumes.
        let more = c.read_some(64 * 1024 * 1024);
        assert_eq!(more, 64 * 1024 * 1024, "{name}: transfer resumed");
        assert!(wchar(kids[0]) > written, "{name}: program resumed");
        drop(c);
        assert!(wait_until(Duration::from_secs(2), || children_of(worker).is_empty()));
        nginx.stop();
    }
}

#[test]
fn client_abort_kills_the_program_and_frees_everything() {
    for extra in ["", "transform_splice off;"] {
        let nginx = Nginx::start(&server(&format!(
            "location /gen {{ {extra} transform_exec {{HELPER}} gen $arg_n; }}
             location /hang {{ {extra} transform_commit_size 0;
                               transform_exec {{HELPER}} hang-after 1000; }}"
        )));
        let worker = nginx.worker_pid();
        // Warm up once so lazily opened descriptors (logs) are counted in the baseline.
        let mut c = Client::connect(nginx.port);
        c.send("GET /gen?n=10 HTTP/1.0\r\n\r\n");
        assert_eq!(c.read_response(false).status, 200);
        drop(c);
        assert!(wait_until(Duration::from_secs(2), || children_of(worker).is_empty()));
        let fds_before = stable_fd_count(worker);

        for path in ["/gen?n=100000000000", "/hang"] {
            let mut c = Client::connect(nginx.port);
            c.send(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
            assert_eq!(c.read_head().status, 200);
            assert!(c.read_some(500) == 500);
            let kids = children_of(worker);
            assert_eq!(kids.len(), 1, "program running for {path}");
            let child = kids[0];
            let closed = Instant::now();
            drop(c);
            let gone = wait_until(Duration::from_secs(1), || proc_state(child).is_none());
            assert!(
                gone,
                "{path}: program still there ({:?}) after the client left",
                proc_state(child)
            );
            assert!(closed.elapsed() < Duration::from_secs(1));
            assert!(children_of(worker).is_empty(), "no zombie left");
            assert!(
                wait_until(Duration::from_secs(1), || fd_count(worker) == fds_before),
                "{path}: worker fds {} vs {fds_before} before",
                fd_count(worker)
            );
        }
        nginx.stop();
    }
}

#[test]
fn failures_before_and_after_the_header() {
    let nginx = Nginx::start(&server(
        "location /missing { transform_exec $arg_p; }
         location /relative { transform_exec $arg_p; }
         location /exit { transform_exec {HELPER} fail-after 0 3; }
         location /late { transform_exec {HELPER} fail-after 3000000 1; }
         location /late10 { transform_exec {HELPER} fail-after 3000000 1; }
         location /crash { transform_exec {HELPER} crash-after 3000000; }
         location /early-crash { transform_exec {HELPER} crash-after 30000; }
         location /early-exit { transform_exec {HELPER} fail-after 30000 4; }",
    ));
    let mut c = Client::connect(nginx.port);
    let r = c.get("/missing?p=/nonexistent/program");
    assert_eq!(r.status, 502);
    let lines = nginx.log_lines("error");
    assert!(
        lines.iter().any(|l| l
            .contains("execve() \"/nonexistent/program\" failed (2: No such file or directory)")),
        "{lines:?}"
    );
    // nginx closes the connection after a 500 (as after any 500): use a new one.
    let mut c = Client::connect(nginx.port);
    let r = c.get("/relative?p=bin/true");
    assert_eq!(r.status, 500);
    assert!(nginx
        .log_lines("error")
        .iter()
        .any(|l| l.contains("\"bin/true\" is not an absolute path")));
    let mut c = Client::connect(nginx.port);
    let r = c.get("/exit");
    assert_eq!(r.status, 502);
    assert!(nginx
        .log_lines("error")
        .iter()
        .any(|l| l.contains("exited with code 3")));
    // Failing after some output, but within transform_commit_size: still a clean 502.
    for (path, why) in [
        ("/early-crash", "killed by signal 11"),
        ("/early-exit", "exited with code 4"),
    ] {
        let mut c = Client::connect(nginx.port);
        let r = c.get(path);
        assert_eq!(r.status, 502, "{path}");
        assert!(
            nginx.log_lines("error").iter().any(|l| l.contains(why)),
            "{path}"
        );
    }

    // After the header: chunked responses end without the terminating chunk, promptly.
    for path in ["/late", "/crash"] {
        let mut c = Client::connect(nginx.port);
        c.send(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
        let r = c.read_broken(Duration::from_secs(5));
        assert_eq!(r.status, 200, "{path}");
    }
    assert!(nginx
        .log_lines("error")
        .iter()
        .any(|l| l.contains("killed by signal 11")));
    // HTTP/1.0 (close-delimited): the connection is reset, not closed cleanly.
    let mut c = Client::connect(nginx.port);
    c.send("GET /late10 HTTP/1.0\r\n\r\n");
    let r = c.read_broken(Duration::from_secs(5));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.end,
        End::Reset,
        "HTTP/1.0: only a reset tells a cut body from a whole one"
    );
    nginx.stop();
}

#[test]
fn error_page_serves_its_page_for_a_failing_program() {
    let nginx = Nginx::start(&server(
        "error_page 502 504 /oops;
         location = /oops { internal; return 200 \"oops page\\n\"; }
         location /exit { transform_exec {HELPER} fail-after 10 1; }
         location /silent {
             transform_read_timeout 300ms; transform_exec {HELPER} hang-after 0;
         }",
    ));
    for (path, status) in [("/exit", 502), ("/silent", 504)] {
        let r = Client::connect(nginx.port).get(path);
        assert_eq!(r.status, status, "{path}: the program's status stays");
        assert!(r.complete, "{path}");
        let body = String::from_utf8_lossy(&r.body);
        assert_eq!(body, "oops page\n", "{path}: the error page's body");
    }
    nginx.stop();
}

#[test]
fn nested_locations_do_not_inherit_transform_exec() {
    let html = temp_dir("nested");
    std::fs::create_dir_all(html.join("t/static")).unwrap();
    std::fs::write(html.join("t/static/file.txt"), "static file\n").unwrap();
    let nginx = Nginx::start(&server(&format!(
        "root {html};
         location /t/ {{
             transform_exec /bin/echo program;
             location /t/static/ {{ }}
         }}",
        html = html.display()
    )));
    let runs = || nginx.error_log().matches("transform started").count();
    let r = Client::connect(nginx.port).get("/t/x");
    assert_eq!(r.status, 200);
    assert_eq!(String::from_utf8_lossy(&r.body), "program\n");
    let before = runs();
    let r = Client::connect(nginx.port).get("/t/static/file.txt");
    assert_eq!(r.status, 200);
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(body, "static file\n", "the nested location serves its file");
    assert_eq!(runs(), before, "no program ran for the nested location");
    nginx.stop();
}

#[test]
fn child_gets_a_clean_process_state() {
    // Plain C programs report on themselves (a Rust program would ignore SIGPIPE on its own).
    let nginx = Nginx::start(&server(
        "location /status { transform_exec /bin/cat /proc/self/status; }
         location /stat { transform_exec /bin/cat /proc/self/stat; }
         location /fds { transform_exec /bin/ls /proc/self/fd; }",
    ));
    let mut c = Client::connect(nginx.port);
    let status = String::from_utf8(c.get("/status").body).unwrap();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).expect(name);
        u64::from_str_radix(line[name.len()..].trim(), 16).expect("hex mask")
    };
    assert_eq!(field("SigBlk:"), 0, "signal mask: {status}");
    assert_eq!(field("SigIgn:"), 0, "ignored signals: {status}");
    // /proc/self/stat: pid (comm) state ppid pgrp ...
    let stat = String::from_utf8(c.get("/stat").body).unwrap();
    let pid = stat.split_whitespace().next().unwrap();
    let pgrp = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(2)
        .unwrap();
    assert_eq!(pid, pgrp, "own process group: {stat}");
    // ls lists 0, 1, 2 and its own handle on the directory (3): nothing of nginx's.
    let fds = String::from_utf8(c.get("/fds").body).unwrap();
    assert_eq!(
        fds.split_whitespace().collect::<Vec<_>>(),
        ["0", "1", "2", "3"],
        "inherited fds"
    );
    // No SIGCHLD noise: nginx's handler did not see our children.
    assert!(!nginx.error_log().contains("unknown process"));
    nginx.stop();
}

#[test]
fn read_timeout_gives_504_or_a_truncated_response() {
    let nginx = Nginx::start(&server(
        "transform_read_timeout 300ms;
         location /silent { transform_exec {HELPER} hang-after 0; }
         location /stall { transform_exec {HELPER} hang-after 100000; }",
    ));
    let worker = nginx.worker_pid();
    let mut c = Client::connect(nginx.port);
    let start = Instant::now();
    let r = c.get("/silent");
    assert_eq!(r.status, 504);
    assert!(start.elapsed() < Duration::from_secs(3));
    let mut c = Client::connect(nginx.port);
    c.send("GET /stall HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_broken(Duration::from_secs(5));
    assert_eq!(r.status, 200);
    let lines = nginx.log_lines("error");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("timed out (transform_read_timeout 300ms)"))
            .count(),
        2,
        "{lines:?}"
    );
    assert!(
        wait_until(Duration::from_secs(1), || children_of(worker).is_empty()),
        "programs reaped"
    );
    nginx.stop();
}

#[test]
fn graceful_quit_lets_an_in_flight_stream_finish() {
    let nginx = Nginx::start(&server(
        "transform_commit_size 0; location /drip { transform_exec {HELPER} drip 4 300; }",
    ));
    let mut c = Client::connect(nginx.port);
    c.send("GET /drip HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read_head().status, 200);
    // SAFETY: signalling our own nginx master.
    unsafe { libc::kill(nginx.master_pid() as i32, libc::SIGQUIT) };
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).expect("read the rest");
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.contains("line 3\n") && text.ends_with("0\r\n\r\n"),
        "stream cut short: {text:?}"
    );
    nginx.stop();
}

#[test]
fn transform_send_timeout_follows_progress_and_ends_a_stalled_client() {
    // nginx's own send_timeout is an hour: only transform_send_timeout can end anything here.
    // Small socket buffers, a full pipe: the relay waits for the client during the whole
    // transfer, never for the program.
    let nginx = Nginx::start(
        "server { listen 127.0.0.1:{PORT} sndbuf=64k;
            send_timeout 1h; transform_send_timeout 1s; transform_read_timeout 1s;
            location /gen { transform_exec {HELPER} gen $arg_n; }
            location /buffered { transform_splice off; transform_exec {HELPER} gen $arg_n; } }",
    );
    let n: usize = 16 * 1024 * 1024;
    // Bytes a second: the transfer lasts about four transform_send_timeout periods.
    let rate = 4.0 * 1024.0 * 1024.0;
    let want = sha256(&helper_output(&["gen", &n.to_string()]));
    for path in ["/gen", "/buffered"] {
        // Slowly but steadily: each piece the client takes restarts the timer, so the response
        // outlives several periods.
        let mut c = Client::connect(nginx.port);
        c.set_recv_buffer(64 * 1024);
        c.send(&format!("GET {path}?n={n} HTTP/1.0\r\n\r\n"));
        assert_eq!(c.read_head().status, 200);
        let start = Instant::now();
        let mut body = Vec::new();
        let mut piece = vec![0u8; 32 * 1024];
        loop {
            let k = c.read(&mut piece).expect("read");
            if k == 0 {
                break;
            }
            body.extend_from_slice(&piece[..k]);
            let due = Duration::from_secs_f64(body.len() as f64 / rate);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let took = start.elapsed();
        assert_eq!(body.len(), n, "{path}: body cut short after {took:?}");
        assert_eq!(sha256(&body), want, "{path}");
        assert!(
            took > Duration::from_secs(3),
            "{path}: the client was not slow ({took:?})"
        );

        // Stopped: after three periods without reading, the response is found cut (it would
        // complete if anything but transform_send_timeout applied).
        let mut c = Client::connect(nginx.port);
        c.set_recv_buffer(64 * 1024);
        c.send(&format!("GET {path}?n={n} HTTP/1.1\r\nHost: x\r\n\r\n"));
        let head = c.read_head();
        assert_eq!(head.status, 200);
        std::thread::sleep(Duration::from_secs(3));
        let r = c.read_broken_body(head, Duration::from_secs(5));
        assert!(r.body.len() < n, "{path}: {} bytes", r.body.len());
    }
    nginx.stop();
}

#[test]
fn limit_rate_is_honoured_by_taking_the_buffered_transport() {
    let nginx = Nginx::start(&server(
        "location /gen { limit_rate 8m; transform_exec {HELPER} gen $arg_n; }",
    ));
    let n = 4 * 1024 * 1024;
    let mut c = Client::connect(nginx.port);
    let start = Instant::now();
    let r = c.get(&format!("/gen?n={n}"));
    let took = start.elapsed();
    assert!(r.complete && r.body.len() == n);
    assert!(
        took > Duration::from_millis(300),
        "limit_rate ignored: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "response held back: {took:?}"
    );
    assert_eq!(transports(&nginx), ["buffered (limit_rate is set)"]);
    nginx.stop();
}

#[test]
fn body_filters_and_subrequests_see_the_output() {
    let html = temp_dir("html");
    std::fs::write(
        html.join("page.shtml"),
        "A<!--# include virtual=\"/gen?n=100000\" -->B<!--# include virtual=\"/text\" -->C",
    )
    .unwrap();
    let nginx = Nginx::start(&server(&format!(
        "root {html};
         location /gen {{ transform_exec {{HELPER}} gen $arg_n; }}
         location /text {{ transform_exec /bin/echo hello world; transform_type text/html; }}
         location /sub {{
             sub_filter world there; transform_type text/html;
             transform_exec /bin/echo hello world;
         }}
         location /add {{
             add_before_body /before; add_after_body /after; transform_type text/html;
             transform_exec /bin/echo middle;
         }}
         location = /before {{ return 200 \"BEFORE\\n\"; }}
         location = /after {{ return 200 \"AFTER\\n\"; }}
         location = /page.shtml {{ ssi on; default_type text/html; }}",
        html = html.display()
    )));
    let mut c = Client::connect(nginx.port);
    let r = c.get("/sub");
    assert_eq!(r.body, b"hello there\n", "sub_filter rewrote the output");
    let r = c.get("/add");
    assert_eq!(
        r.body, b"BEFORE\nmiddle\nAFTER\n",
        "addition filter kept the order"
    );
    let r = c.get("/page.shtml");
    assert!(r.complete);
    let mut want = b"A".to_vec();
    want.extend(helper_output(&["gen", "100000"]));
    want.extend(b"Bhello world\nC");
    assert_eq!(r.body, want, "SSI includes of the module's output");
    let t = transports(&nginx);
    assert_eq!(t.len(), 4, "{t:?}");
    assert!(t[0].contains("body filter"), "{t:?}");
    assert!(t[1].contains("add_before_body"), "{t:?}");
    assert!(
        t[2].contains("subrequest") && t[3].contains("subrequest"),
        "{t:?}"
    );
    nginx.stop();
}

#[test]
fn http2_client_with_a_small_window_is_flow_controlled_not_cut() {
    let dir = temp_dir("h2");
    let (crt, key) = make_cert(&dir);
    let nginx = Nginx::start(&format!(
        "server {{ listen 127.0.0.1:{{PORT}} ssl{{H2_LISTEN}}; {{H2_ON}}
                  ssl_certificate {crt}; ssl_certificate_key {key};
                  location /gen {{ transform_exec {{HELPER}} gen $arg_n; }} }}",
        crt = crt.display(),
        key = key.display()
    ));
    let n = 6 * 1024 * 1024;
    let want = sha256(&helper_output(&["gen", &n.to_string()]));
    let url = format!("https://127.0.0.1:{}/gen?n={n}", nginx.port);
    let start = Instant::now();
    let (ok, body) = curl(&["-sk", "--http2", "--limit-rate", "3M", &url]);
    assert!(ok);
    assert!(
        start.elapsed() > Duration::from_secs(1),
        "the client was not slow"
    );
    assert_eq!(sha256(&body), want);
    nginx.stop();
}

#[test]
fn bytes_sent_matches_the_bytes_on_the_wire() {
    let nginx = Nginx::start(
        "log_format sent \"$request_uri $bytes_sent\";
          server { listen 127.0.0.1:{PORT}; access_log {PREFIX}/logs/sent.log sent;
            location /splice { transform_exec {HELPER} gen $arg_n; }
            location /buffered { transform_splice off; transform_exec {HELPER} gen $arg_n; } }",
    );
    let mut wire = Vec::new();
    for (path, version) in [
        ("/splice?n=3000000", "HTTP/1.1"),
        ("/buffered?n=3000000", "HTTP/1.1"),
        ("/splice?n=3000001", "HTTP/1.0"),
        ("/buffered?n=3000001", "HTTP/1.0"),
    ] {
        let mut c = Client::connect(nginx.port);
        c.send(&format!(
            "GET {path} {version}\r\nHost: x\r\nConnection: close\r\n\r\n"
        ));
        let mut all = Vec::new();
        c.read_to_end(&mut all).expect("read all");
        assert!(all.len() > 3_000_000, "{path}: {} bytes", all.len());
        wire.push((path, all.len()));
    }
    let log = std::fs::read_to_string(nginx.prefix.join("logs/sent.log")).unwrap();
    for (path, n) in wire {
        let line = log
            .lines()
            .find(|l| l.starts_with(&format!("{path} ")))
            .expect("log line");
        let logged: usize = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert_eq!(logged, n, "{path}: $bytes_sent vs bytes on the wire");
    }
    nginx.stop();
}

#[test]
fn programs_die_with_a_worker_killed_outright() {
    let mut nginx = Nginx::start(&server(
        "transform_commit_size 0; location /hang { transform_exec {HELPER} hang-after 1000; }",
    ));
    nginx.allow("exited on signal 9");
    let worker = nginx.worker_pid();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(nginx.port);
        c.send("GET /hang HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(c.read_head().status, 200);
        clients.push(c);
    }
    let kids = children_of(worker);
    assert_eq!(kids.len(), 3, "three programs running");
    // SAFETY: signalling the worker of our own nginx.
    unsafe { libc::kill(worker as i32, libc::SIGKILL) };
    for kid in kids {
        let gone = wait_until(Duration::from_secs(2), || {
            matches!(proc_state(kid), None | Some('Z'))
        });
        assert!(
            gone,
            "program {kid} survived its worker ({:?})",
            proc_state(kid)
        );
    }
    // The master started a new worker, which serves as usual.
    assert!(wait_until(Duration::from_secs(5), || nginx
        .worker_pids()
        .len()
        == 1
        && nginx.worker_pids()[0] != worker));
    drop(clients);
    nginx.stop();
}

#[test]
fn log_variables_describe_the_program() {
    let nginx = Nginx::start(
        "log_format t \"$uri pid=$transform_pid status=$transform_exit_status time=$transform_time bytes=$transform_bytes\";
         server { listen 127.0.0.1:{PORT}; access_log {PREFIX}/logs/t.log t;
           location /ok { transform_exec {HELPER} gen-linger 5000 300; }
           location /exit { transform_exec {HELPER} fail-after 10 7; }
           location /crash { transform_exec {HELPER} crash-after 0; }
           location /static { return 204; } }",
    );
    for path in ["/ok", "/exit", "/crash", "/static"] {
        let mut c = Client::connect(nginx.port);
        c.get(path);
    }
    // nginx writes the access log after the response went out.
    let read = || std::fs::read_to_string(nginx.prefix.join("logs/t.log")).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(2), || read()
        .lines()
        .count()
        == 4));
    let log = read();
    let line = |p: &str| {
        log.lines()
            .find(|l| l.starts_with(&format!("{p} ")))
            .unwrap()
            .to_string()
    };
    let ok = line("/ok");
    let field = |l: &str, k: &str| {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .unwrap()
            .to_string()
    };
    assert!(field(&ok, "pid").parse::<u32>().unwrap() > 1, "{ok}");
    assert_eq!(field(&ok, "status"), "0", "{ok}");
    assert_eq!(field(&ok, "bytes"), "5000", "{ok}");
    let t: f64 = field(&ok, "time").parse().unwrap();
    assert!((0.3..5.0).contains(&t), "time of a 300 ms program: {ok}");
    assert!(
        field(&ok, "time").split('.').nth(1).unwrap().len() == 3,
        "milliseconds: {ok}"
    );
    assert_eq!(field(&line("/exit"), "status"), "7");
    assert_eq!(field(&line("/crash"), "status"), "SIGSEGV");
    // No program: the variables are empty ("-" in the log).
    assert_eq!(field(&line("/static"), "pid"), "-");
    nginx.stop();
}

#[test]
fn stderr_goes_to_the_error_log_bounded_and_never_blocks_stdout() {
    let nginx = Nginx::start(&server(
        "location /flood { transform_exec {HELPER} stderr 200000 50 100000 0; }
         location /few { transform_exec {HELPER} stderr 3 20 10 0; }
         location /long { transform_exec {HELPER} stderr 1 5000 10 0; }
         location /off { transform_stderr off; transform_exec {HELPER} stderr 3 20 10 0; }
         location /fail { transform_stderr off; transform_exec {HELPER} stderr 3 20 0 9; }
         location /fail-on { transform_exec {HELPER} stderr 3 20 0 9; }",
    ));
    // 10 MB of stderr before 100 KB of stdout: the response is complete and exact, quickly.
    let start = Instant::now();
    let mut c = Client::connect(nginx.port);
    let r = c.get("/flood");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, helper_output(&["gen", "100000"]));
    assert!(start.elapsed() < Duration::from_secs(20));
    let stderr_lines = |log: &str| {
        log.lines()
            .filter(|l| l.contains("transform stderr: err "))
            .count()
    };
    let log = nginx.error_log();
    let flood_lines = stderr_lines(&log);
    assert!(
        (100..1000).contains(&flood_lines),
        "{flood_lines} lines of 200000 logged"
    );
    assert!(log.contains("lines suppressed (rate limit)"));
    // (The tests log at debug level; only the program's lines count here.)
    let stderr_bytes: usize = log
        .lines()
        .filter(|l| l.contains("transform stderr:"))
        .map(str::len)
        .sum();
    assert!(
        stderr_bytes < 512 * 1024,
        "10 MB of stderr made {stderr_bytes} bytes of log"
    );

    // Lines at warn, with the request; control bytes escaped.
    let r = Client::connect(nginx.port).get("/few");
    assert_eq!(r.status, 200);
    let log = nginx.error_log();
    let line = log
        .lines()
        .find(|l| l.contains("transform stderr: err 2 ") && l.contains("GET /few"))
        .expect("third line");
    assert!(
        line.contains("[warn]") && line.contains("request: \"GET /few HTTP/1.1\""),
        "{line}"
    );
    assert!(
        line.contains("\\x1b[31m") && !line.contains('\u{1b}'),
        "{line}"
    );
    // A long line is cut.
    Client::connect(nginx.port).get("/long");
    let log = nginx.error_log();
    let long = log
        .lines()
        .find(|l| l.contains("GET /long") && l.contains("[...]"));
    let long = long.expect("cut line");
    assert!(long.len() < 1300, "line of {} bytes", long.len());

    // transform_stderr off: nothing of stderr reaches the log, not even a failing program's
    // tail; with it on, the tail is one error-level message.
    let before = stderr_lines(&nginx.error_log());
    assert_eq!(Client::connect(nginx.port).get("/off").status, 200);
    assert_eq!(Client::connect(nginx.port).get("/fail").status, 502);
    let log = nginx.error_log();
    assert_eq!(
        stderr_lines(&log),
        before,
        "stderr logged despite transform_stderr off"
    );
    assert!(
        !log.contains("stderr (last lines)"),
        "tail logged despite off"
    );
    assert!(log.contains("exited with code 9"));
    assert_eq!(Client::connect(nginx.port).get("/fail-on").status, 502);
    let log = nginx.error_log();
    let tail: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("[error]") && l.contains("stderr (last lines): "))
        .collect();
    assert_eq!(tail.len(), 1, "{tail:?}");
    for n in 0..3 {
        assert!(tail[0].contains(&format!("err {n} ")), "{tail:?}");
    }
    nginx.stop();
}

#[test]
fn a_programs_stderr_is_in_the_log_when_its_response_ends() {
    // The program writes to stderr, then stdout, and exits, often before nginx watches its
    // pipes: its lines are logged before the last byte of its response goes out, never after.
    let nginx = Nginx::start(&server(
        "location /s { transform_exec {HELPER} stderr 1 20 10 0; }",
    ));
    let logged = |log: &str| {
        log.lines()
            .filter(|l| l.contains("transform stderr: err 0 ") && l.contains("GET /s"))
            .count()
    };
    let mut c = Client::connect(nginx.port);
    for n in 1..=300 {
        let r = c.get("/s");
        assert_eq!(r.status, 200);
        assert_eq!(logged(&nginx.error_log()), n, "after response {n}");
    }
    nginx.stop();
}
