//! Pools (issue 12): the cases an outside review of the first version found broken, each kept
//! here as it was reproduced. The pooled handler is the test helper's `pool-serve` mode; the
//! pooled filter is tests/fixtures/pool_filter.py (`xor`: every byte XORed with 0x5a, `slow MS`:
//! the same after a pause).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pool_filter.py");

fn xor(data: &[u8]) -> Vec<u8> {
    data.iter().map(|b| b ^ 0x5a).collect()
}

fn gen(n: usize) -> Vec<u8> {
    helper_output(&["gen", &n.to_string()])
}

fn field(r: &Response, key: &str) -> String {
    let text = String::from_utf8_lossy(&r.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {text:?}"))
        .to_string()
}

/// A response whose `transform_filter_pass` waits for a busy process is held, never sent
/// around it: a handler committing meanwhile (here `transform_pass`, whose body would be
/// spliced to the socket) goes through the filter when it gets its process. (The first version
/// spliced the raw body to the client, then sent the filter's empty answer after it.)
#[test]
fn a_response_waiting_for_its_filter_is_not_sent_around_it() {
    let nginx = Nginx::start(&format!(
        "transform_pool p {{HELPER}} pool-serve processes=2;
         transform_pool f /usr/bin/python3 {FIXTURE} slow 1500 processes=1;
         server {{ listen 127.0.0.1:{{PORT}};
           location /pass/ {{ transform_pass p; transform_filter_pass f; transform_filter_types *; }}
         }}"
    ));
    let port = nginx.port;
    let first = std::thread::spawn(move || Client::connect(port).get("/pass/gen?300"));
    std::thread::sleep(Duration::from_millis(400));
    let r = Client::connect(nginx.port).get("/pass/gen?200000");
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(
        r.body,
        xor(&gen(200000)),
        "the second response is filtered, whole"
    );
    assert!(r.header("X-Filter-Pid").is_some(), "{:?}", r.headers);
    let r = first.join().unwrap();
    assert_eq!((r.status, r.body.clone()), (200, xor(&gen(300))));
    nginx.stop();
}

/// A response waiting in the queue for a filter process is not ended by send_timeout (nginx's
/// writer arms it while the response is held; the client waits for nothing). (The first
/// version answered the waiting clients with nothing after send_timeout, 408 in the log.)
#[test]
fn a_queued_response_outlives_send_timeout() {
    let dir = temp_dir("pool-review-files");
    std::fs::write(dir.join("a.html"), b"some page\n").unwrap();
    let nginx = Nginx::start(&format!(
        "transform_pool f /usr/bin/python3 {FIXTURE} slow 1200 processes=1;
         server {{ listen 127.0.0.1:{{PORT}}; send_timeout 1s;
           location /f/ {{ alias {}/; transform_filter_pass f; }}
         }}",
        dir.display()
    ));
    let port = nginx.port;
    let clients: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(move || Client::connect(port).get("/f/a.html")))
        .collect();
    for c in clients {
        let r = c.join().unwrap();
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        assert!(r.complete);
        assert_eq!(r.body, xor(b"some page\n"));
    }
    assert!(
        !nginx.error_log().contains("timed out"),
        "{}",
        nginx.error_log()
    );
    nginx.stop();
    std::fs::remove_dir_all(dir).ok();
}

/// A queued response to filter whose process cannot start (its program became unexecutable)
/// gets a whole error page. (The first version dropped the page's body and closed: an empty
/// reply.)
#[test]
fn a_queued_response_whose_process_cannot_start_gets_an_error_page() {
    let dir = temp_dir("pool-review-prog");
    let prog = dir.join("filter.py");
    std::fs::copy(FIXTURE, &prog).unwrap();
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("a.html"), b"page\n").unwrap();
    let nginx = Nginx::start(&format!(
        "transform_pool f {} slow 1500 processes=1 max_requests=1;
         server {{ listen 127.0.0.1:{{PORT}};
           location /f/ {{ alias {}/; transform_filter_pass f; }}
         }}",
        prog.display(),
        dir.display()
    ));
    let port = nginx.port;
    let first = std::thread::spawn(move || Client::connect(port).get("/f/a.html"));
    std::thread::sleep(Duration::from_millis(400));
    let second = std::thread::spawn(move || Client::connect(port).get("/f/a.html"));
    std::thread::sleep(Duration::from_millis(300));
    // The first one's process retires after it (max_requests=1): the next cannot start.
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = first.join().unwrap();
    assert_eq!((r.status, r.body.clone()), (200, xor(b"page\n")));
    let r = second.join().unwrap();
    assert_eq!(r.status, 502, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(r.complete, "the error page is whole");
    assert!(
        String::from_utf8_lossy(&r.body).contains("502 Bad Gateway"),
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    nginx.stop();
    std::fs::remove_dir_all(dir).ok();
}

/// Subrequests that get the header only (`mirror`) leave the process in a known state: its
/// body is read and dropped, and it serves the next request. (The first version killed and
/// replaced the process for every mirrored request.)
#[test]
fn mirror_subrequests_keep_the_process() {
    let dir = temp_dir("pool-review-mirror");
    std::fs::write(dir.join("x"), b"main\n").unwrap();
    let nginx = Nginx::start(&format!(
        "transform_pool p {{HELPER}} pool-serve processes=1;
         server {{ listen 127.0.0.1:{{PORT}};
           location /m/ {{ mirror /pass/mirrored/gen?100000; alias {}/; }}
           location /pass/ {{ transform_pass p; }}
         }}",
        dir.display()
    ));
    for _ in 0..3 {
        let r = Client::connect(nginx.port).get("/m/x");
        assert_eq!((r.status, r.body.clone()), (200, b"main\n".to_vec()));
    }
    // The three mirrored requests, then this one, on one process.
    assert!(
        wait_until(Duration::from_secs(5), || {
            let r = Client::connect(nginx.port).get("/pass/echo");
            field(&r, "n") == "4"
        }),
        "the process did not serve the mirrored requests and this one: {}",
        nginx.error_log()
    );
    let log = nginx.error_log();
    assert_eq!(log.matches("started process").count(), 1, "{log}");
    assert!(!log.contains("replaced"), "{log}");
    nginx.stop();
    std::fs::remove_dir_all(dir).ok();
}

/// After a rewrite the program gets the current URI escaped, `%` included: a `%25` of the
/// client's stays one (the first version sent `%41` for `%2541`, which the program decodes
/// again).
#[test]
fn a_rewritten_uri_reaches_the_program_escaped() {
    let nginx = Nginx::start(
        "transform_pool p {HELPER} pool-serve processes=1;
         server { listen 127.0.0.1:{PORT};
           location /r/ { rewrite ^/r/(.*)$ /pass/$1 last; }
           location /pass/ { transform_pass p; }
         }",
    );
    let r = Client::connect(nginx.port).get("/r/a%2541%20b/echo?q=%25");
    assert_eq!(r.status, 200);
    assert_eq!(field(&r, "uri"), "/pass/a%2541%20b/echo?q=%25");
    let r = Client::connect(nginx.port).get("/pass/x%2541/echo");
    assert_eq!(
        field(&r, "uri"),
        "/pass/x%2541/echo",
        "as received, unrewritten"
    );
    nginx.stop();
}

/// A pool's processes are bounded by its `processes=`, not counted by
/// `transform_max_programs` (the first version refused `transform_exec` while an idle pool
/// process was alive).
#[test]
fn pool_processes_do_not_count_against_max_programs() {
    let nginx = Nginx::start(
        "transform_max_programs 1;
         transform_pool p {HELPER} pool-serve processes=1;
         server { listen 127.0.0.1:{PORT};
           location /pass/ { transform_pass p; }
           location /exec { transform_exec {HELPER} gen 10; }
         }",
    );
    assert_eq!(Client::connect(nginx.port).get("/pass/echo").status, 200);
    let r = Client::connect(nginx.port).get("/exec");
    assert_eq!((r.status, r.body.clone()), (200, gen(10)));
    nginx.stop();
}

/// A location whose `transform_pass` and `transform_filter_pass` name one pool is refused: its
/// responses would wait for a process their own request holds.
#[test]
fn one_pool_for_a_location_and_its_filter_is_refused() {
    let (ok, err, _) = nginx_test_config(
        "transform_pool p /bin/cat;
         server { listen 127.0.0.1:1; location / { transform_pass p; transform_filter_pass p; } }",
    );
    assert!(!ok);
    assert!(err.contains("use one pool"), "{err}");
}

/// What a client decodes into the URI cannot reach the program's stdin as a line of its own:
/// arguments made from `$uri` by try_files (or a rewrite) are escaped. (The first version wrote
/// them raw: a client smuggled a request of its own into the shared process, and the next
/// client got its answer.)
#[test]
fn arguments_made_from_the_uri_cannot_split_the_request() {
    let nginx = Nginx::start(
        "transform_pool p {HELPER} pool-serve processes=1;
         server { listen 127.0.0.1:{PORT};
           location /tf/ { try_files $uri /pass/echo?q=$uri; }
           location /pass/ { transform_pass p; }
         }",
    );
    let r = Client::connect(nginx.port)
        .get("/tf/x%20HTTP/1.1%0D%0AX-Evil:%201%0D%0A%0D%0AGET%20/pass/slow%3F1000%20HTTP/1.1");
    assert_eq!(r.status, 200);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(
        field(&r, "uri"),
        "/pass/echo?q=/tf/x%20HTTP/1.1%0D%0AX-Evil:%201%0D%0A%0D%0AGET%20/pass/slow?1000%20HTTP/1.1",
        "the decoded URI, escaped (its `?` stays a character of the argument's)"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("h:X-Evil")),
        "a header line of the client's making: {text}"
    );
    // The process took one request, and answers the next client with its own answer.
    let r = Client::connect(nginx.port).get("/pass/echo");
    assert_eq!(field(&r, "n"), "2");
    assert_eq!(field(&r, "uri"), "/pass/echo");
    nginx.stop();
}

/// A process that writes after its response (late: a second response while the next request
/// waits in its stdin, unread) never answers that request with it: output before the process
/// read anything of its request is refused (502, the process replaced). (What cannot be told
/// apart is late output of a program that reads the next request at once after writing it: the
/// README's Limitations say so.)
#[test]
fn output_written_late_never_answers_the_next_request() {
    let dir = temp_dir("pool-review-late");
    let prog = dir.join("late.py");
    std::fs::write(
        &prog,
        "import sys, time\n\
         inp, out = sys.stdin.buffer, sys.stdout.buffer\n\
         def answer(body):\n\
         \x20   out.write(b'HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n%s' % (len(body), body))\n\
         \x20   out.flush()\n\
         while True:\n\
         \x20   line = inp.readline()\n\
         \x20   if not line: break\n\
         \x20   while inp.readline() not in (b'\\r\\n', b''): pass\n\
         \x20   answer(b'own answer to ' + line.split()[1])\n\
         \x20   if b'/late' in line:\n\
         \x20       time.sleep(1.0)\n\
         \x20       answer(b'INJECTED')\n\
         \x20       time.sleep(0.5)\n",
    )
    .unwrap();
    let nginx = Nginx::start(&format!(
        "transform_pool p /usr/bin/python3 {} processes=1;
         server {{ listen 127.0.0.1:{{PORT}}; location / {{ transform_pass p; }} }}",
        prog.display()
    ));
    let r = Client::connect(nginx.port).get("/late");
    assert_eq!(r.body, b"own answer to /late");
    std::thread::sleep(Duration::from_millis(300));
    // Sent while the process sleeps: its request waits unread when the late output comes.
    let r = Client::connect(nginx.port).get("/victim");
    assert_ne!(r.body, b"INJECTED", "late output answered another request");
    assert_eq!(r.status, 502, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(
        nginx
            .error_log()
            .contains("wrote before it read its request"),
        "{}",
        nginx.error_log()
    );
    let r = Client::connect(nginx.port).get("/after");
    assert_eq!(r.body, b"own answer to /after");
    nginx.stop();
    std::fs::remove_dir_all(dir).ok();
}

/// Clients that leave while their requests wait for a process end as nginx ends them (499,
/// logged), and cost no process: the one process serves the next request.
#[test]
fn waiting_clients_that_leave_cost_no_process() {
    let nginx = Nginx::start(
        "log_format q \"$request_uri $status\";
         transform_pool p {HELPER} pool-serve processes=1;
         server { listen 127.0.0.1:{PORT}; access_log {PREFIX}/logs/q.log q;
           location / { transform_pass p; } }",
    );
    let port = nginx.port;
    let busy = std::thread::spawn(move || Client::connect(port).get("/slow?1000"));
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..3 {
        let mut c = Client::connect(nginx.port);
        c.send(&format!("GET /echo?{i} HTTP/1.1\r\nHost: x\r\n\r\n"));
        drop(c);
    }
    assert_eq!(busy.join().unwrap().status, 200);
    let r = Client::connect(nginx.port).get("/echo");
    assert_eq!(
        field(&r, "n"),
        "2",
        "the process served /slow, then this one"
    );
    let log = nginx.error_log();
    assert_eq!(log.matches("started process").count(), 1, "{log}");
    assert!(!log.contains("replaced"), "{log}");
    let q = nginx.prefix.join("logs/q.log");
    assert!(
        wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(&q).is_ok_and(|l| l.matches(" 499").count() == 3)
        }),
        "{:?}",
        std::fs::read_to_string(&q)
    );
    nginx.stop();
}
