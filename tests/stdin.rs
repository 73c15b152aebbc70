//! The request body on the program's stdin (`transform_stdin body`), with no deadlock whatever
//! the order in which the program reads and writes.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;

fn server(locations: &str) -> String {
    format!(
        "server {{ listen 127.0.0.1:{{PORT}}; client_max_body_size 200m;
           transform_stdin body; {locations} }}"
    )
}

fn post(port: u16, path: &str, body: &[u8]) -> Response {
    let mut c = Client::connect(port);
    c.send(&format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    c.stream().write_all(body).expect("send body");
    c.read_response(false)
}

#[test]
fn bodies_of_every_size_reach_the_program() {
    let nginx = Nginx::start(&server("location /cat { transform_exec /bin/cat; }"));
    for size in [0usize, 1, 65536, 100 * 1024 * 1024] {
        let body = helper_output(&["gen", &size.to_string()]);
        let start = Instant::now();
        let r = post(nginx.port, "/cat", &body);
        let took = start.elapsed();
        assert_eq!(r.status, 200, "{size}");
        assert!(r.complete);
        assert_eq!(r.body.len(), size);
        assert_eq!(sha256(&r.body), sha256(&body), "{size} bytes echoed");
        eprintln!("stdin: cat of {size} bytes in {took:?}");
    }
    nginx.stop();
}

#[test]
fn chunked_request_bodies_work() {
    let nginx = Nginx::start(&server("location /cat { transform_exec /bin/cat; }"));
    let mut c = Client::connect(nginx.port);
    c.send("POST /cat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    c.send("5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello world");
    nginx.stop();
}

#[test]
fn no_deadlock_whatever_the_program_does_first() {
    let nginx = Nginx::start(&server(
        "location /write-first { transform_exec {HELPER} write-then-read 300000; }
         location /ignore { transform_exec {HELPER} gen 1000; }",
    ));
    let body = helper_output(&["gen", &(2 * 1024 * 1024).to_string()]);
    // Writes 300 KB before it reads a 2 MB body.
    let start = Instant::now();
    let r = post(nginx.port, "/write-first", &body);
    let took = start.elapsed();
    assert_eq!(r.status, 200);
    let mut want = helper_output(&["gen", "300000"]);
    want.extend_from_slice(b"read 2097152\n");
    assert_eq!(r.body, want);
    eprintln!("stdin: 300 KB written before reading a 2 MB body: {took:?}");
    // Never reads its stdin: the response completes, the unread body is dropped.
    let start = Instant::now();
    let r = post(nginx.port, "/ignore", &body);
    let took = start.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, helper_output(&["gen", "1000"]));
    eprintln!("stdin: program that never reads a 2 MB body: {took:?}");
    assert!(took < Duration::from_secs(10));
    nginx.stop();
}

#[test]
fn body_limits_and_a_client_that_stops_sending() {
    let nginx = Nginx::start(&server(
        "client_body_timeout 1s;
         location /cat { transform_exec /bin/cat; }
         location /small { client_max_body_size 1k; transform_exec /bin/cat; }",
    ));
    let worker = nginx.worker_pid();
    assert_eq!(post(nginx.port, "/small", &[b'x'; 2000]).status, 413);
    // Half a body, then silence: nginx gives up after client_body_timeout; no program ran.
    let mut c = Client::connect(nginx.port);
    c.send("POST /cat HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n");
    c.stream().write_all(&[b'y'; 1_000_000]).unwrap();
    let start = Instant::now();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(start.elapsed() < Duration::from_secs(5));
    // (nginx logs no line for a body read timeout; its debug log shows the 408.)
    assert!(nginx
        .error_log()
        .contains("http finalize request: 408, \"/cat?\""));
    assert!(
        !nginx.error_log().contains("transform started"),
        "a program ran"
    );
    assert!(children_of(worker).is_empty());
    nginx.stop();
}

#[test]
fn the_body_stays_intact_for_nginx_and_other_modules() {
    let nginx = Nginx::start(
        "log_format body \"$request_body\";
         server { listen 127.0.0.1:{PORT}; access_log {PREFIX}/logs/body.log body;
           transform_stdin body; location /cat { transform_exec /bin/cat; } }",
    );
    let r = post(nginx.port, "/cat", b"hello, body");
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
