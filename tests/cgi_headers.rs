//! `transform_output cgi`: a program's headers enter nginx's header model (`r->headers_out`) as an
//! upstream's do, so nginx's filters (gzip, not_modified, expires, charset) see them; what nginx
//! hides from a FastCGI application is hidden; a header block that could split the response is a
//! 502.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn server(extra: &str, locations: &str) -> String {
    format!("server {{ listen 127.0.0.1:{{PORT}}; transform_output cgi; {extra} {locations} }}")
}

/// Every value of header `name` (in order).
fn all<'a>(r: &'a Response, name: &str) -> Vec<&'a str> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Sends `request` as it is and reads the response.
fn ask(port: u16, request: &str) -> Response {
    let mut c = Client::connect(port);
    c.send(request);
    c.read_response(request.starts_with("HEAD "))
}

fn get_with(port: u16, path: &str, header: &str) -> Response {
    ask(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n"),
    )
}

/// The whole response to an HTTP/1.0 request, as bytes (no UTF-8 assumption anywhere).
fn raw_response(port: u16, path: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    out
}

#[test]
fn content_encoding_and_content_type_are_seen_by_gzip() {
    let nginx = Nginx::start(&server(
        "gzip on; gzip_types text/plain; gzip_min_length 0;",
        r#"location /encoded {
               gzip_types *;
               transform_exec /usr/bin/printf "Content-Encoding: gzip\r\nContent-Type: application/octet-stream\r\n\r\nhello";
           }
           location /charset {
               transform_exec /usr/bin/printf "Content-Type: text/plain; charset=utf-8\r\nETag: \"v1\"\r\n\r\nhello";
           }"#,
    ));
    // Already encoded by the program: gzip leaves it alone.
    let r = get_with(nginx.port, "/encoded", "Accept-Encoding: gzip");
    assert_eq!(r.status, 200);
    assert_eq!(all(&r, "Content-Encoding"), ["gzip"]);
    assert_eq!(r.body, b"hello");

    // The type is matched without its charset parameter (gzip_types text/plain), the charset
    // goes out once, and gzip weakens the program's ETag as it does any other.
    let r = get_with(nginx.port, "/charset", "Accept-Encoding: gzip");
    assert_eq!(r.status, 200);
    assert_eq!(all(&r, "Content-Encoding"), ["gzip"]);
    assert_eq!(all(&r, "Content-Type"), ["text/plain; charset=utf-8"]);
    assert_eq!(all(&r, "ETag"), ["W/\"v1\""]);
    nginx.stop();
}

#[test]
fn the_programs_date_and_server_replace_nginxs() {
    let nginx = Nginx::start(&server(
        "",
        r#"location /own {
               transform_exec /usr/bin/printf "Date: Mon, 01 Jan 2001 00:00:00 GMT\r\nServer: prog/1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nCache-Control: private\r\nCache-Control: no-transform\r\n\r\nok";
           }
           location /none { transform_exec /usr/bin/printf "\r\nok"; }"#,
    ));
    let r = Client::connect(nginx.port).get("/own");
    assert_eq!(r.status, 200);
    assert_eq!(all(&r, "Date"), ["Mon, 01 Jan 2001 00:00:00 GMT"]);
    assert_eq!(all(&r, "Server"), ["prog/1"]);
    // Repeatable headers are all passed on, in order.
    assert_eq!(all(&r, "Set-Cookie"), ["a=1", "b=2"]);
    assert_eq!(all(&r, "Cache-Control"), ["private", "no-transform"]);
    assert_eq!(r.body, b"ok");

    let r = Client::connect(nginx.port).get("/none");
    assert_eq!(all(&r, "Server"), [format!("nginx/{}", nginx_version())]);
    assert_eq!(all(&r, "Date").len(), 1);
    nginx.stop();
}

#[test]
fn validators_answer_conditional_gets_only() {
    let nginx = Nginx::start(&server(
        "",
        r#"location /etag {
               transform_exec /usr/bin/printf "ETag: \"v1\"\r\nContent-Type: text/plain\r\n\r\nbody";
           }
           location /modified {
               transform_exec /usr/bin/printf "Last-Modified: Mon, 01 Jan 2001 00:00:00 GMT\r\n\r\nbody";
           }
           location /plain { transform_exec /usr/bin/printf "Content-Type: text/plain\r\n\r\nbody"; }
           location /own-304 {
               transform_exec /usr/bin/printf "Status: 304\r\nETag: \"v1\"\r\n\r\n";
           }"#,
    ));
    let port = nginx.port;

    // GET and HEAD with the program's validators: nginx's not_modified filter answers.
    let r = get_with(port, "/etag", "If-None-Match: \"v1\"");
    assert_eq!(r.status, 304);
    assert_eq!(all(&r, "ETag"), ["\"v1\""]);
    assert!(r.header("Content-Type").is_none());
    let r = ask(
        port,
        "HEAD /etag HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"v1\"\r\n\r\n",
    );
    assert_eq!(r.status, 304);
    let r = get_with(port, "/etag", "If-None-Match: \"v2\"");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"body"[..]));
    let r = get_with(port, "/etag", "If-Match: \"v2\"");
    assert_eq!(r.status, 412);
    let r = get_with(
        port,
        "/modified",
        "If-Modified-Since: Mon, 01 Jan 2001 00:00:00 GMT",
    );
    assert_eq!(r.status, 304);
    let r = get_with(
        port,
        "/modified",
        "If-Modified-Since: Sun, 31 Dec 2000 00:00:00 GMT",
    );
    assert_eq!((r.status, r.body.as_slice()), (200, &b"body"[..]));

    // Other methods: the program has acted, nginx does not answer for it afterwards.
    let r = ask(
        port,
        "POST /etag HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"v1\"\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!((r.status, r.body.as_slice()), (200, &b"body"[..]));
    let r = ask(
        port,
        "POST /etag HTTP/1.1\r\nHost: x\r\nIf-Match: \"v2\"\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 200);

    // Without validators there is nothing to compare: no 412 for If-Match or
    // If-Unmodified-Since.
    let r = get_with(port, "/plain", "If-Match: \"v1\"");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"body"[..]));
    let r = get_with(
        port,
        "/plain",
        "If-Unmodified-Since: Mon, 01 Jan 2001 00:00:00 GMT",
    );
    assert_eq!(r.status, 200);

    // A program that answers conditionals itself is passed on.
    let r = Client::connect(port).get("/own-304");
    assert_eq!(r.status, 304);
    assert_eq!(all(&r, "ETag"), ["\"v1\""]);
    nginx.stop();
}

#[test]
fn expires_sees_last_modified_and_replaces_cache_headers() {
    let nginx = Nginx::start(&server(
        "",
        r#"location /modified {
               expires modified 1h;
               transform_exec /usr/bin/printf "Last-Modified: Mon, 01 Jan 2001 00:00:00 GMT\r\n\r\nok";
           }
           location /cached {
               expires 1h;
               transform_exec /usr/bin/printf "Cache-Control: no-cache\r\nCache-Control: private\r\nExpires: Thu, 01 Jan 1970 00:00:01 GMT\r\n\r\nok";
           }
           location /kept {
               transform_exec /usr/bin/printf "Cache-Control: no-cache\r\nExpires: Thu, 01 Jan 1970 00:00:01 GMT\r\n\r\nok";
           }"#,
    ));
    // `expires modified` counts from the program's Last-Modified.
    let r = Client::connect(nginx.port).get("/modified");
    assert_eq!(r.status, 200);
    assert_eq!(all(&r, "Last-Modified"), ["Mon, 01 Jan 2001 00:00:00 GMT"]);
    assert_eq!(all(&r, "Expires"), ["Mon, 01 Jan 2001 01:00:00 GMT"]);

    // `expires` replaces the program's cache headers, as it does an upstream's.
    let r = Client::connect(nginx.port).get("/cached");
    assert_eq!(all(&r, "Cache-Control"), ["max-age=3600"]);
    assert_eq!(all(&r, "Expires").len(), 1);
    assert_ne!(all(&r, "Expires"), ["Thu, 01 Jan 1970 00:00:01 GMT"]);

    let r = Client::connect(nginx.port).get("/kept");
    assert_eq!(all(&r, "Cache-Control"), ["no-cache"]);
    assert_eq!(all(&r, "Expires"), ["Thu, 01 Jan 1970 00:00:01 GMT"]);
    nginx.stop();
}

#[test]
fn unsafe_header_blocks_are_502_with_one_line() {
    let nginx = Nginx::start(&server(
        "",
        r#"location /100 { transform_exec /usr/bin/printf "Status: 100\r\n\r\nHTTP/1.1 200 OK\r\nX-Forged: yes\r\n\r\nforged"; }
           location /199 { transform_exec /usr/bin/printf "Status: 199 Early\r\n\r\nx"; }
           location /600 { transform_exec /usr/bin/printf "Status: 600\r\n\r\nx"; }
           location /two-lengths { transform_exec /usr/bin/printf "Content-Length: 1\r\nContent-Length: 2\r\n\r\nxy"; }
           location /two-statuses { transform_exec /usr/bin/printf "Status: 404\r\nstatus: 200\r\n\r\nx"; }
           location /two-locations { transform_exec /usr/bin/printf "Location: http://a/\r\nLocation: http://b/\r\n\r\n"; }
           location /cr { transform_exec /usr/bin/printf "X-A: a\rX-B: b\r\n\r\nx"; }
           location /nul { transform_exec /usr/bin/printf "X-N: a\000b\r\n\r\nx"; }
           location /fold { transform_exec /usr/bin/printf "X-A: a\r\n X-B: b\r\n\r\nx"; }"#,
    ));
    for (path, line) in [
        ("/100", "invalid Status \"100\""),
        ("/199", "invalid Status \"199 Early\""),
        ("/600", "invalid Status \"600\""),
        (
            "/two-lengths",
            "duplicate header line: \"Content-Length: 2\", previous value: \"Content-Length: 1\"",
        ),
        (
            "/two-statuses",
            "duplicate header line: \"status: 200\", previous value: \"Status: 404\"",
        ),
        (
            "/two-locations",
            "duplicate header line: \"Location: http://b/\", previous value: \"Location: http://a/\"",
        ),
        ("/cr", "control character in header \"X-A\""),
        ("/nul", "control character in header \"X-N\""),
        ("/fold", "obsolete line folding"),
    ] {
        let r = Client::connect(nginx.port).get(path);
        assert_eq!(r.status, 502, "{path}");
        assert!(r.header("X-Forged").is_none() && r.header("X-B").is_none());
        let lines = nginx.log_lines("error");
        assert_eq!(
            lines.iter().filter(|l| l.contains(line)).count(),
            1,
            "{path}: {lines:?}"
        );
    }
    nginx.stop();
}

#[test]
fn duplicates_of_single_headers_keep_the_first_with_a_warning() {
    let nginx = Nginx::start(&server(
        "",
        r#"location /twice {
               transform_exec /usr/bin/printf "Content-Type: text/plain\r\nETag: \"a\"\r\nContent-Type: text/html\r\nETag: \"b\"\r\n\r\nok";
           }"#,
    ));
    let r = Client::connect(nginx.port).get("/twice");
    assert_eq!(r.status, 200);
    assert_eq!(all(&r, "Content-Type"), ["text/plain"]);
    assert_eq!(all(&r, "ETag"), ["\"a\""]);
    let warnings = nginx.log_lines("warn");
    for line in [
        "duplicate header line: \"Content-Type: text/html\", previous value: \"Content-Type: text/plain\", ignored",
        "duplicate header line: \"ETag: \"b\"\", previous value: \"ETag: \"a\"\", ignored",
    ] {
        assert_eq!(
            warnings.iter().filter(|l| l.contains(line)).count(),
            1,
            "{warnings:?}"
        );
    }
    nginx.stop();
}

#[test]
fn x_accel_headers_are_hidden_and_not_acted_on() {
    let nginx = Nginx::start(&server(
        "",
        r#"location /accel {
               transform_exec /usr/bin/printf "X-Accel-Redirect: /target\r\nX-Accel-Buffering: no\r\nX-Accel-Expires: 0\r\nX-Accel-Limit-Rate: 1\r\nx-accel-charset: koi8-r\r\nX-Accel-Other: kept\r\n\r\nbody";
           }
           location = /target { return 200 "redirected"; }"#,
    ));
    let r = Client::connect(nginx.port).get("/accel");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"body");
    for name in [
        "X-Accel-Redirect",
        "X-Accel-Buffering",
        "X-Accel-Expires",
        "X-Accel-Limit-Rate",
        "X-Accel-Charset",
    ] {
        assert!(r.header(name).is_none(), "{name} reached the client");
    }
    // Only the headers fastcgi hides are hidden.
    assert_eq!(r.header("X-Accel-Other"), Some("kept"));
    nginx.stop();
}

#[test]
fn header_values_pass_byte_exact() {
    let nginx = Nginx::start(&server(
        "",
        r#"location /bytes {
               transform_exec /usr/bin/printf "X-Bytes: caf\xc3\xa9 \xff\x80\t~\r\nLocation: http://h/\xe2\x82\xac\r\nStatus: 302\r\n\r\n";
           }"#,
    ));
    let raw = raw_response(nginx.port, "/bytes");
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head");
    let head = &raw[..end + 2];
    let shown = head.escape_ascii().to_string();
    assert!(head.starts_with(b"HTTP/1.1 302 "), "{shown}");
    let lines: Vec<&[u8]> = head.split_inclusive(|&b| b == b'\n').collect();
    assert!(
        lines.contains(&&b"X-Bytes: caf\xc3\xa9 \xff\x80\t~\r\n"[..]),
        "{shown}"
    );
    assert!(
        lines.contains(&&b"Location: http://h/\xe2\x82\xac\r\n"[..]),
        "{shown}"
    );
    nginx.stop();
}
