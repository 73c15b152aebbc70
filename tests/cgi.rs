//! `transform_output cgi`: the program chooses its status and headers.

mod common;

use common::*;

fn server(locations: &str) -> String {
    format!("server {{ listen 127.0.0.1:{{PORT}}; transform_output cgi; {locations} }}")
}

#[test]
fn status_headers_and_body_from_the_program() {
    let nginx = Nginx::start(&server(
        r#"location /created {
               transform_exec /usr/bin/printf "Status: 201 Created\r\nContent-Type: text/plain\r\nX-Test: yes\r\n\r\nhello";
           }
           location /length { transform_exec /usr/bin/printf "Content-Length: 5\n\nhello"; }
           location /short { transform_exec /usr/bin/printf "Content-Length: 10\r\n\r\nhello"; }
           location /local { transform_exec /usr/bin/printf "Location: /target?x=1\r\n\r\n"; }
           location = /target { return 200 "redirected $args"; }
           location /away { transform_exec /usr/bin/printf "Location: http://example.com/\r\n\r\n"; }
           location /big { transform_exec {HELPER} cgi $arg_n; }"#,
    ));
    let r = Client::connect(nginx.port).get("/created");
    assert_eq!(r.status, 201);
    assert_eq!(r.header("Content-Type"), Some("text/plain"));
    assert_eq!(r.header("X-Test"), Some("yes"));
    assert_eq!(r.body, b"hello");

    let r = Client::connect(nginx.port).get("/length");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Length"), Some("5"));
    assert_eq!(r.body, b"hello");

    // A body shorter than its Content-Length is visibly cut, at once.
    let mut c = Client::connect(nginx.port);
    c.send("GET /short HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_broken(std::time::Duration::from_secs(5));
    assert_eq!(r.header("Content-Length"), Some("10"));
    assert!(nginx
        .log_lines("error")
        .iter()
        .any(|l| l.contains("after 5 of its Content-Length 10")));

    // A local Location without Status: an internal redirect, as fastcgi does.
    let r = Client::connect(nginx.port).get("/local");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"redirected x=1");
    let r = Client::connect(nginx.port).get("/away");
    assert_eq!(r.status, 302);
    assert_eq!(r.header("Location"), Some("http://example.com/"));

    // The body after the header block still takes the zero-copy transport: the one transport
    // line this request adds says so (earlier requests logged theirs).
    // (The line is written after the header went out: let the last one land first.)
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before = transports(&nginx).len();
    let n = 5_000_000;
    let r = Client::connect(nginx.port).get(&format!("/big?n={n}"));
    assert_eq!(r.status, 203);
    assert_eq!(r.header("Content-Type"), Some("application/x-cgi"));
    assert_eq!(r.header("X-Helper"), Some("yes"));
    assert!(r.complete);
    assert_eq!(
        sha256(&r.body),
        sha256(&helper_output(&["gen", &n.to_string()]))
    );
    assert_eq!(
        transports(&nginx)[before..],
        ["splice"],
        "transport of /big"
    );

    // HEAD runs the program for its headers, and sends no body.
    let mut c = Client::connect(nginx.port);
    c.send("HEAD /created HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response(true);
    assert_eq!(r.status, 201);
    assert_eq!(r.header("X-Test"), Some("yes"));
    let r = c.get("/length");
    assert_eq!(
        r.body, b"hello",
        "nothing of the HEAD response's body on the connection"
    );
    nginx.stop();
}

#[test]
fn bad_header_blocks_are_502_with_one_line() {
    let long = format!("X-Long: {}\\r\\n\\r\\n", "a".repeat(1500));
    let nginx = Nginx::start(&server(&format!(
        r#"location /hop {{ transform_exec /usr/bin/printf "Transfer-Encoding: chunked\r\n\r\nx"; }}
           location /nocolon {{ transform_exec /usr/bin/printf "this is not a header\r\n\r\n"; }}
           location /status {{ transform_exec /usr/bin/printf "Status: 9000\r\n\r\n"; }}
           location /none {{ transform_exec /usr/bin/printf "Content-Type: text/plain\r\n"; }}
           location /huge {{
               transform_header_buffer_size 1k;
               transform_exec /usr/bin/printf "{long}";
           }}"#
    )));
    for (path, line) in [
        ("/hop", "hop-by-hop header \"Transfer-Encoding\""),
        ("/nocolon", "header line without a colon"),
        ("/status", "invalid Status \"9000\""),
        (
            "/none",
            "ended its output before the end of its header block",
        ),
        ("/huge", "larger than transform_header_buffer_size 1024"),
    ] {
        let r = Client::connect(nginx.port).get(path);
        assert_eq!(r.status, 502, "{path}");
        let lines = nginx.log_lines("error");
        assert_eq!(
            lines.iter().filter(|l| l.contains(line)).count(),
            1,
            "{path}: {lines:?}"
        );
    }
    nginx.stop();
}
