//! The request body on the program's stdin (`transform_stdin body`): streamed as it arrives
//! (the default) or read whole first (`transform_request_buffering on`), with no deadlock
//! whatever the order in which the program reads and writes.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;

/// Two locations per program: `/s/...` streams the body, `/b/...` buffers it first.
fn server(extra: &str, locations: &[(&str, &str)]) -> String {
    let mut http = format!(
        "server {{ listen 127.0.0.1:{{PORT}}; client_max_body_size 200m;
           transform_stdin body; {extra}"
    );
    for (name, exec) in locations {
        http.push_str(&format!(
            "location /s/{name} {{ transform_exec {exec}; }}
             location /b/{name} {{ transform_request_buffering on; transform_exec {exec}; }}"
        ));
    }
    http.push('}');
    http
}

/// Sends a POST and its body from another thread while the response is read, as real clients
/// do (curl reads while it uploads): a program may answer before the body is all sent. Returns
/// the response, when it was read, and whether the whole body could be sent.
fn post(port: u16, path: &str, body: &[u8]) -> (Response, Duration, bool) {
    let mut c = Client::connect(port);
    c.send(&format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    let mut w = c.stream().try_clone().expect("clone");
    let start = Instant::now();
    std::thread::scope(|s| {
        let writer = s.spawn(move || w.write_all(body).is_ok());
        let r = c.read_response(false);
        let took = start.elapsed();
        (r, took, writer.join().expect("writer"))
    })
}

#[test]
fn bodies_of_every_size_reach_the_program() {
    let nginx = Nginx::start(&server("", &[("cat", "/bin/cat")]));
    for size in [0usize, 1, 65536, 100 * 1024 * 1024] {
        let body = helper_output(&["gen", &size.to_string()]);
        for mode in ["s", "b"] {
            let (r, took, sent) = post(nginx.port, &format!("/{mode}/cat"), &body);
            assert_eq!(r.status, 200, "{mode} {size}");
            assert!(r.complete && sent, "{mode} {size}");
            assert_eq!(r.body.len(), size);
            assert_eq!(
                sha256(&r.body),
                sha256(&body),
                "{mode}: {size} bytes echoed"
            );
            eprintln!("stdin ({mode}): cat of {size} bytes in {took:?}");
        }
    }
    nginx.stop();
}

#[test]
fn chunked_request_bodies_work() {
    let nginx = Nginx::start(&server("", &[("cat", "/bin/cat")]));
    for mode in ["s", "b"] {
        // Two requests on one connection: the second one is read after the first body.
        let mut c = Client::connect(nginx.port);
        for _ in 0..2 {
            c.send(&format!(
                "POST /{mode}/cat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            ));
            c.send("5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n");
            let r = c.read_response(false);
            assert_eq!(r.status, 200, "{mode}");
            assert_eq!(r.body, b"hello world", "{mode}");
        }
    }
    nginx.stop();
}

/// Reads raw response bytes until `want` appears, or gives up after `limit`.
fn read_until(c: &mut Client, want: &[u8], limit: Duration) -> (bool, Vec<u8>) {
    c.stream()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        if got.windows(want.len()).any(|w| w == want) {
            break;
        }
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    c.stream()
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    (got.windows(want.len()).any(|w| w == want), got)
}

#[test]
fn the_body_streams_to_the_program_as_it_arrives() {
    let nginx = Nginx::start(&server("transform_commit_size 0;", &[("cat", "/bin/cat")]));
    // Streamed: the program echoes the first part while the client still holds the rest.
    let mut c = Client::connect(nginx.port);
    c.send("POST /s/cat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    c.send("6\r\nfirst \r\n");
    let (echoed, raw) = read_until(&mut c, b"first ", Duration::from_secs(10));
    assert!(
        echoed,
        "the first part was not echoed before the body ended: {raw:?}"
    );
    c.send("4\r\nlast\r\n0\r\n\r\n");
    let (done, rest) = read_until(&mut c, b"0\r\n\r\n", Duration::from_secs(10));
    assert!(done, "no end of response: {rest:?}");
    let all = [raw, rest].concat();
    assert!(all.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(
        all.ends_with(b"6\r\nfirst \r\n4\r\nlast\r\n0\r\n\r\n"),
        "{all:?}"
    );

    // Buffered: nothing reaches the program (so nothing comes back) until the body is complete.
    let mut c = Client::connect(nginx.port);
    c.send("POST /b/cat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    c.send("6\r\nfirst \r\n");
    let (early, raw) = read_until(&mut c, b"first ", Duration::from_secs(1));
    assert!(!early && raw.is_empty(), "buffered, yet answered early");
    c.send("4\r\nlast\r\n0\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.body, b"first last");
    nginx.stop();
}

#[test]
fn no_deadlock_whatever_the_program_does_first() {
    let nginx = Nginx::start(&server(
        "",
        &[
            ("write-first", "{HELPER} write-then-read 300000"),
            ("ignore", "{HELPER} gen 1000"),
        ],
    ));
    let body = helper_output(&["gen", &(2 * 1024 * 1024).to_string()]);
    let mut want = helper_output(&["gen", "300000"]);
    want.extend_from_slice(b"read 2097152\n");
    for mode in ["s", "b"] {
        // Writes 300 KB before it reads a 2 MB body.
        let (r, took, sent) = post(nginx.port, &format!("/{mode}/write-first"), &body);
        assert_eq!(r.status, 200, "{mode}");
        assert!(sent && r.complete, "{mode}");
        assert_eq!(r.body, want, "{mode}");
        eprintln!("stdin ({mode}): 300 KB written before reading a 2 MB body: {took:?}");
        // Never reads its stdin: the response completes, the unread body is dropped.
        let (r, took, _) = post(nginx.port, &format!("/{mode}/ignore"), &body);
        assert_eq!(r.status, 200, "{mode}");
        assert!(r.complete, "{mode}");
        assert_eq!(r.body, helper_output(&["gen", "1000"]), "{mode}");
        eprintln!("stdin ({mode}): program that never reads a 2 MB body: {took:?}");
        assert!(took < Duration::from_secs(10), "{mode}");
    }
    nginx.stop();
}

#[test]
fn the_read_timeout_does_not_run_while_the_program_waits_for_the_body() {
    // The client pauses for longer than transform_read_timeout between pieces of the body; cat
    // waits for them (as does the relay), and client_body_timeout is the limit that applies.
    let nginx = Nginx::start(&server(
        "transform_read_timeout 1s; client_body_timeout 30s;",
        &[("cat", "/bin/cat")],
    ));
    let body = helper_output(&["gen", "300000"]);
    let mut c = Client::connect(nginx.port);
    c.send(&format!(
        "POST /s/cat HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    // The first piece stays under transform_commit_size (nothing sent yet), the second goes
    // past it (the response has started).
    let (first, rest) = body.split_at(1000);
    let (second, third) = rest.split_at(100_000);
    for piece in [first, second] {
        c.stream().write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(2500));
    }
    c.stream().write_all(third).unwrap();
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert!(r.complete, "ended {:?} after {} bytes", r.end, r.body.len());
    assert_eq!(r.body.len(), body.len());
    assert_eq!(sha256(&r.body), sha256(&body), "the body echoed byte-exact");
    nginx.stop();
}

/// Waits for the worker's programs to be gone (killed and reaped, no zombie).
fn no_programs_left(worker: u32) -> bool {
    wait_until(Duration::from_secs(5), || children_of(worker).is_empty())
}

/// Sends the first half of a 2 MB body, then nothing more.
fn half_a_body(port: u16, path: &str) -> Client {
    let mut c = Client::connect(port);
    c.send(&format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n"
    ));
    c.stream().write_all(&[b'y'; 1_000_000]).unwrap();
    c
}

#[test]
fn body_limits_and_a_client_that_stops_sending() {
    let nginx = Nginx::start(&server(
        "client_body_timeout 1s;",
        &[
            ("cat", "/bin/cat"),
            ("read-first", "{HELPER} write-then-read 0"),
            ("write-first", "{HELPER} write-then-read 300000"),
        ],
    ));
    let worker = nginx.worker_pid();
    // A Content-Length over client_max_body_size: nginx refuses it before any program runs.
    let mut c = Client::connect(nginx.port);
    c.send("POST /s/cat HTTP/1.1\r\nHost: x\r\nContent-Length: 300000000\r\n\r\n");
    assert_eq!(c.read_response(false).status, 413);

    // A chunked body that grows past client_max_body_size while it streams: 413, the program
    // (which reads everything before it writes) is stopped.
    let nginx_log_before = nginx.error_log().len();
    let mut c = Client::connect(nginx.port);
    c.send("POST /s/read-first HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    let chunk = format!("100000\r\n{}\r\n", "z".repeat(0x100000));
    let mut w = c.stream().try_clone().unwrap();
    let r = std::thread::scope(|s| {
        s.spawn(move || {
            for _ in 0..201 {
                if w.write_all(chunk.as_bytes()).is_err() {
                    break;
                }
            }
        });
        c.read_response(false)
    });
    assert_eq!(r.status, 413);
    let log = nginx.error_log()[nginx_log_before..].to_string();
    assert!(log.contains("larger than client_max_body_size; the program is stopped"));
    assert!(no_programs_left(worker));

    // Half a body, then silence. Streamed: the program started, and client_body_timeout ends
    // the request and the program (a 408 closes the connection without a response, as nginx
    // always does).
    let mut c = half_a_body(nginx.port, "/s/read-first");
    assert!(wait_until(Duration::from_secs(2), || children_of(worker)
        .len()
        == 1));
    let start = Instant::now();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5));
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(nginx
        .error_log()
        .contains("http finalize request: 408, \"/s/read-first?\""));
    assert!(no_programs_left(worker));
    assert!(nginx
        .error_log()
        .contains("client timed out sending it (client_body_timeout); the program is stopped"));
    eprintln!("stdin: client stopped half-way through the body: 408 after {took:?}");

    // A client that goes away half-way through the body: the program is stopped.
    let c = half_a_body(nginx.port, "/s/read-first");
    assert!(wait_until(Duration::from_secs(2), || children_of(worker)
        .len()
        == 1));
    drop(c);
    assert!(no_programs_left(worker));
    assert!(nginx
        .error_log()
        .contains("the client closed the connection, or sent a bad body; the program is stopped"));

    // The same when the program answered first: the response is cut (no terminating chunk).
    let mut c = half_a_body(nginx.port, "/s/write-first");
    let r = c.read_broken(Duration::from_secs(5));
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 300000);
    assert!(no_programs_left(worker));

    // Buffered: nginx gives up after client_body_timeout before any program runs.
    let started = nginx.error_log().matches("transform started").count();
    let mut c = half_a_body(nginx.port, "/b/cat");
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(nginx
        .error_log()
        .contains("http finalize request: 408, \"/b/cat?\""));
    assert_eq!(
        nginx.error_log().matches("transform started").count(),
        started,
        "a program ran"
    );
    assert!(children_of(worker).is_empty());
    nginx.stop();
}

#[test]
fn http2_bodies_stream_too() {
    let dir = temp_dir("h2-body");
    let (crt, key) = make_cert(&dir);
    let nginx = Nginx::start(&format!(
        "server {{ listen 127.0.0.1:{{PORT}} ssl{{H2_LISTEN}}; {{H2_ON}} client_max_body_size 200m;
                  ssl_certificate {crt}; ssl_certificate_key {key};
                  transform_stdin body;
                  location /cat {{ transform_exec /bin/cat; }}
                  location /ignore {{ transform_exec {{HELPER}} gen 1000; }} }}",
        crt = crt.display(),
        key = key.display()
    ));
    let body = helper_output(&["gen", &(20 * 1024 * 1024).to_string()]);
    let file = dir.join("body");
    std::fs::write(&file, &body).unwrap();
    let url = format!("https://127.0.0.1:{}/cat", nginx.port);
    let data = format!("@{}", file.display());
    let (ok, out) = curl(&["-sk", "--http2", "--data-binary", &data, &url]);
    assert!(ok);
    assert_eq!(out.len(), body.len());
    assert_eq!(sha256(&out), sha256(&body));
    assert!(
        nginx
            .error_log()
            .contains("http2 read unbuffered request body"),
        "the HTTP/2 body was not streamed"
    );
    // A program that never reads: the whole response goes out with END_STREAM, then the stream
    // is reset with NO_ERROR (RFC 9113 8.1: the client may stop sending). curl 7.88 (Debian 12)
    // keeps waiting to upload after that (curl issues 10433/11157, fixed in 8.1), so its exit
    // status says nothing here: the response it received and nginx's frames are checked.
    let url = format!("https://127.0.0.1:{}/ignore", nginx.port);
    let (_, out) = curl(&[
        "-sk",
        "--max-time",
        "3",
        "--http2",
        "--data-binary",
        &data,
        &url,
    ]);
    assert_eq!(out, helper_output(&["gen", "1000"]));
    let log = nginx.error_log();
    let ignore = &log[log.find("/ignore").expect("the /ignore request")..];
    assert!(
        ignore.contains("http2 send RST_STREAM frame sid:1, status:0"),
        "no RST_STREAM(NO_ERROR)"
    );
    nginx.stop();
}

#[test]
fn buffered_bodies_stay_intact_for_nginx_and_other_modules() {
    let nginx = Nginx::start(
        "log_format body \"$request_body\";
         server { listen 127.0.0.1:{PORT}; access_log {PREFIX}/logs/body.log body;
           transform_stdin body; transform_request_buffering on;
           location /cat { transform_exec /bin/cat; } }",
    );
    let mut c = Client::connect(nginx.port);
    c.send("POST /cat HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n");
    std::thread::sleep(Duration::from_millis(100));
    c.send("hello, body");
    let r = c.read_response(false);
    assert_eq!(r.body, b"hello, body");
    let read = || std::fs::read_to_string(nginx.prefix.join("logs/body.log")).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(2), || !read().is_empty()));
    assert_eq!(
        read().trim_end(),
        "hello, body",
        "$request_body after the program read it"
    );
    nginx.stop();
}

#[test]
fn a_redirect_halfway_through_a_streamed_body_is_refused_not_repeated() {
    let nginx = Nginx::start(
        r#"server { listen 127.0.0.1:{PORT}; transform_stdin body;
             location /cgi { transform_output cgi;
                             transform_exec /usr/bin/printf "Location: /second\r\n\r\n"; }
             location /error { error_page 502 = /second; transform_exec /bin/false; }
             location /second { transform_exec /bin/cat; } }"#,
    );
    let worker = nginx.worker_pid();
    for path in ["/cgi", "/error"] {
        let before = nginx.error_log().matches("transform started").count();
        let mut c = Client::connect(nginx.port);
        c.send(&format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello"
        ));
        std::thread::sleep(Duration::from_millis(300));
        c.send("world");
        let r = c.read_response(false);
        // A CGI redirect is refused where it is made (the program took the body); an
        // error_page redirect is refused by the next transform location.
        let (status, line) = match path {
            "/cgi" => (502, "which cannot be handed on"),
            _ => (
                500,
                "the request body was partly read before an internal redirect",
            ),
        };
        assert_eq!(r.status, status, "{path}");
        let log = nginx.error_log();
        assert_eq!(
            log.matches("transform started").count(),
            before + 1,
            "{path}: only the first program runs"
        );
        assert_eq!(log.matches(line).count(), 1, "{path}: {line}");
        assert!(no_programs_left(worker));
    }
    nginx.stop();
}
