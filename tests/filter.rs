//! `transform_filter` (issue 11): a program between whatever handler serves a location (a proxied
//! application, static files, `transform_exec`, a subrequest) and the client: the response body
//! goes to its stdin as it arrives, its stdout is the body sent, streamed.
//!
//! The proxied application is a second server of the same nginx, on a unix socket in the prefix
//! (`{UP}` in the configurations below). Files are served from a directory of the test's own
//! (`{DATA}`), removed when the test ends.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use common::*;

const MIB: usize = 1024 * 1024;

/// At the top of every configuration: the types the tests serve and the upstream's protocol.
const HTTP_TOP: &str = "types { text/html html; text/plain txt; application/json json;
                                application/octet-stream bin; }
                        default_type application/octet-stream;
                        proxy_http_version 1.1;";

/// A directory of files to serve (readable by the workers), removed when dropped.
struct Data {
    path: PathBuf,
}

impl Data {
    fn new(tag: &str) -> Data {
        Data {
            path: temp_dir(&format!("filter-{tag}")),
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

    /// Writes `n` bytes of the helper's stream to `name` without holding them; returns their
    /// sha256.
    fn write_gen(&self, name: &str, n: u64) -> String {
        let path = self.file(name);
        let out = fs::File::create(&path).unwrap();
        let ok = Command::new(HELPER)
            .args(["gen", &n.to_string(), "1048576"])
            .stdout(out)
            .status()
            .expect("run the helper")
            .success();
        assert!(ok, "the helper could not write {}", path.display());
        assert_eq!(fs::metadata(&path).unwrap().len(), n);
        sha256_file(&path, |_| {})
    }
}

impl Drop for Data {
    fn drop(&mut self) {
        if std::env::var_os("TEST_NGINX_LEAVE").is_none() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// The sha256 of a file, read piece by piece; `map` may change each piece before it is hashed
/// (what a filter program does to it).
fn sha256_file(path: &Path, mut map: impl FnMut(&mut [u8])) -> String {
    use std::io::Read;
    let mut f = fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB];
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

/// Starts nginx with `conf` inside `http {}` (after [`HTTP_TOP`]): `{DATA}` is the data
/// directory, `{UPSTREAM}` what the application server listens on, `{UP}` its URL for
/// `proxy_pass`.
fn start(data: &Data, conf: &str) -> Nginx {
    Nginx::start(&expand(data, conf))
}

fn expand(data: &Data, conf: &str) -> String {
    format!("{HTTP_TOP}\n{conf}")
        .replace("{DATA}", &data.path.display().to_string())
        .replace("{UPSTREAM}", "unix:{PREFIX}/up.sock")
        .replace("{UP}", "http://unix:{PREFIX}/up.sock:")
}

fn gen(n: usize) -> Vec<u8> {
    helper_output(&["gen", &n.to_string()])
}

fn xor(data: &[u8], key: u8) -> Vec<u8> {
    data.iter().map(|b| b ^ key).collect()
}

/// What `tr a-z A-Z` makes of `data`.
fn upper(data: &[u8]) -> Vec<u8> {
    data.to_ascii_uppercase()
}

/// Lines of text, about `n` bytes: 16 hex digits each, in no order.
fn text_lines(n: usize) -> Vec<u8> {
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut out = Vec::with_capacity(n + 17);
    while out.len() < n {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(format!("{state:016x}\n").as_bytes());
    }
    out
}

/// What `sort` in the C locale makes of `data` (byte order).
fn sorted_lines(data: &[u8]) -> Vec<u8> {
    let mut lines: Vec<&[u8]> = data
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    lines.sort_unstable();
    let mut out = Vec::with_capacity(data.len());
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run gzip");
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().expect("write to gzip");
    assert!(out.status.success(), "gzip -dc failed: not gzip data");
    out.stdout
}

/// The file `count {PREFIX}/count-NAME ...` programs append their pid to, once per run.
fn counter(nginx: &Nginx, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = nginx.prefix.join(format!("count-{name}"));
    fs::write(&path, "").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
    path
}

/// The pids of the runs counted in `counter`.
fn runs(counter: &Path) -> Vec<u32> {
    fs::read_to_string(counter)
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().expect("a pid"))
        .collect()
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

/// Asserts that a response went through the filter: what the handler's validators and length
/// were is gone.
#[track_caller]
fn assert_rewritten(r: &Response, what: &str) {
    for h in ["ETag", "Last-Modified", "Accept-Ranges", "Content-Range"] {
        assert!(
            r.header(h).is_none(),
            "{what}: a filtered response has no {h}: {:?}",
            r.headers
        );
    }
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

/// GETs `path` and hashes the body as it comes (never holding it): (status, end, length,
/// sha256).
fn fetch_hashed(port: u16, path: &str) -> (Response, End, u64, String) {
    let mut c = Client::connect(port);
    c.send(&format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"));
    let head = c.read_head();
    let mut h = Sha256::new();
    let (end, len) = c.stream_body(&head, &mut |b| h.update(b));
    (head, end, len, format!("{:x}", h.finalize()))
}

/// The programs (or zombies) of the single worker.
#[track_caller]
fn no_programs_left(nginx: &Nginx) {
    let worker = nginx.worker_pid();
    assert!(
        wait_until(Duration::from_secs(5), || children_of(worker).is_empty()),
        "programs (or zombies) left: {:?}",
        children_of(worker)
            .into_iter()
            .map(|p| (p, proc_state(p)))
            .collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------------
// What is filtered: proxied, static, transform_exec, subrequests
// ---------------------------------------------------------------------------------------------

/// A proxied response (buffered and unbuffered) goes through the program byte for byte, chunked,
/// without the application's length and validators; keep-alive works after it; a short output
/// whole before the header gets its own Content-Length.
#[test]
fn a_proxied_response_is_filtered() {
    const N: usize = 5 * MIB;
    let data = Data::new("proxied");
    let page = gen(N);
    data.write("big.html", &page);
    let small = b"<p>Hello, World</p>\n".to_vec();
    data.write("small.html", &small);
    let nginx = start(
        &data,
        "server { listen {UPSTREAM}; root {DATA}; }
         server { listen 127.0.0.1:{PORT};
           location /direct/ { proxy_pass {UP}/; }
           location /buffered/ { proxy_pass {UP}/; transform_filter {HELPER} xor 90; }
           location /unbuffered/ { proxy_pass {UP}/; proxy_buffering off;
                                   transform_filter {HELPER} xor 90; }
           location /text/ { proxy_pass {UP}/; transform_commit_timeout 10s;
                             transform_filter /usr/bin/tr a-z A-Z; } }",
    );
    let mut c = Client::connect(nginx.port);
    // What the application sends: a length, validators, ranges.
    let r = c.get("/direct/big.html");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Length"), Some(N.to_string().as_str()));
    assert!(r.header("ETag").is_some() && r.header("Last-Modified").is_some());
    assert_eq!(r.header("Accept-Ranges"), Some("bytes"));
    assert!(r.body == page);

    let want = xor(&page, 90);
    for path in ["/buffered/big.html", "/unbuffered/big.html"] {
        // Twice on the connection: it stays usable after a filtered response.
        for _ in 0..2 {
            let r = c.get(path);
            assert_eq!(r.status, 200, "{path}");
            assert!(r.complete, "{path}: not complete ({} bytes)", r.body.len());
            assert_eq!(r.header("Content-Type"), Some("text/html"), "{path}");
            assert_eq!(r.header("Transfer-Encoding"), Some("chunked"), "{path}");
            assert!(r.header("Content-Length").is_none(), "{path}");
            assert_rewritten(&r, path);
            assert_eq!(r.body.len(), N, "{path}");
            assert!(r.body == want, "{path}: not the program's output");
        }
    }
    let r = c.get("/text/small.html");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, upper(&small));
    assert_eq!(
        r.header("Content-Length"),
        Some(small.len().to_string().as_str()),
        "an output whole before the header has its length: {:?}",
        r.headers
    );
    assert_rewritten(&r, "/text/small.html");
    no_programs_left(&nginx);
    nginx.stop();
}

/// A 256 MiB static file through `/usr/bin/cat`: the body's sha256 is the file's (hashed as it
/// arrives, never held).
#[test]
fn a_static_file_of_256_mib_through_cat_is_byte_exact() {
    const N: u64 = 256 * 1024 * 1024;
    let data = Data::new("static-big");
    let want = data.write_gen("big.html", N);
    let nginx = start(
        &data,
        "server { listen 127.0.0.1:{PORT}; root {DATA};
                  location / { transform_filter /usr/bin/cat; } }",
    );
    let (head, end, len, sha) = fetch_hashed(nginx.port, "/big.html");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("Transfer-Encoding"), Some("chunked"));
    assert_rewritten(&head, "/big.html");
    assert_eq!(end, End::Complete, "after {len} bytes");
    assert_eq!(len, N);
    assert_eq!(sha, want, "the body is not the file");
    no_programs_left(&nginx);
    nginx.stop();
}

/// A `transform_exec` program's output goes through the filter program (when its type matches);
/// another type passes as the exec program wrote it.
#[test]
fn a_transform_exec_response_is_filtered() {
    const N: usize = 3_000_000;
    let data = Data::new("exec");
    let nginx = start(
        &data,
        "server { listen 127.0.0.1:{PORT};
           location /html { transform_exec {HELPER} gen 3000000; transform_type text/html;
                            transform_filter {HELPER} xor 7; }
           location /binary { transform_exec {HELPER} gen 3000000;
                              transform_type application/octet-stream;
                              transform_filter {HELPER} xor 7; }
           location /small { transform_exec /usr/bin/echo hello exec; transform_type text/html;
                             transform_filter /usr/bin/tr a-z A-Z; } }",
    );
    let mut c = Client::connect(nginx.port);
    let r = c.get("/html");
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert!(r.body == xor(&gen(N), 7), "/html: not the filtered output");
    let r = c.get("/binary");
    assert_eq!(r.status, 200);
    assert!(
        r.body == gen(N),
        "/binary: a type not listed is not filtered"
    );
    let r = c.get("/small");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"HELLO EXEC\n");
    no_programs_left(&nginx);
    nginx.stop();
}

/// An SSI include of a location with a filter is filtered on its own (the including page is
/// not), and SSI directives the program prints are processed (SSI runs after the filter).
#[test]
fn ssi_includes_are_filtered_on_their_own_and_see_the_programs_output() {
    let data = Data::new("ssi");
    data.write(
        "ssi/page.html",
        b"<h1>page</h1><!--# include virtual=\"/inc/part.html\" --><p>end</p>\n",
    );
    data.write("inc/part.html", b"<p>included part</p>\n");
    data.write("marker/page.html", b"before INCLUDE after\n");
    data.write("plain/inc.txt", b"plain text");
    let nginx = start(
        &data,
        r#"server { listen 127.0.0.1:{PORT};
             location /ssi/ { ssi on; alias {DATA}/ssi/; }
             location /inc/ { alias {DATA}/inc/; transform_filter /usr/bin/tr a-z A-Z; }
             location /plain/ { alias {DATA}/plain/; }
             location /marker/ {
                 ssi on; alias {DATA}/marker/;
                 transform_filter /usr/bin/sed
                     "s|INCLUDE|<!--# include virtual=\"/plain/inc.txt\" -->|";
             } }"#,
    );
    let mut c = Client::connect(nginx.port);
    let r = c.get("/ssi/page.html");
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "<h1>page</h1><P>INCLUDED PART</P>\n<p>end</p>\n",
        "the include filtered, the page not"
    );
    let r = c.get("/marker/page.html");
    assert_eq!(r.status, 200);
    assert!(
        r.complete,
        "/marker/page.html ended {:?} after {:?}",
        r.end,
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "before plain text after\n",
        "the program's SSI directive is processed"
    );
    no_programs_left(&nginx);
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// Which responses: types, statuses, methods, encodings
// ---------------------------------------------------------------------------------------------

/// `transform_filter_types`: text/html by default, exactly the listed types otherwise, `*` for
/// any; a charset does not change the type.
#[test]
fn only_the_listed_types_are_filtered() {
    let data = Data::new("types");
    for ext in ["html", "txt", "json", "bin"] {
        data.write(&format!("f.{ext}"), format!("hello {ext}\n").as_bytes());
    }
    let nginx = start(
        &data,
        "server { listen {UPSTREAM}; location /cs/ { charset utf-8; alias {DATA}/; } }
         server { listen 127.0.0.1:{PORT};
           location /default/ { alias {DATA}/; transform_filter /usr/bin/tr a-z A-Z; }
           location /any/ { alias {DATA}/; transform_filter /usr/bin/tr a-z A-Z;
                            transform_filter_types *; }
           location /json/ { alias {DATA}/; transform_filter /usr/bin/tr a-z A-Z;
                             transform_filter_types application/json; }
           location /two/ { alias {DATA}/; transform_filter /usr/bin/tr a-z A-Z;
                            transform_filter_types text/plain application/json; }
           location /charset/ { proxy_pass {UP}/cs/; transform_filter /usr/bin/tr a-z A-Z; } }",
    );
    let cases: &[(&str, &[&str])] = &[
        ("default", &["html"]),
        ("any", &["html", "txt", "json", "bin"]),
        ("json", &["json"]),
        ("two", &["txt", "json"]),
    ];
    let mut c = Client::connect(nginx.port);
    for (loc, filtered) in cases {
        for ext in ["html", "txt", "json", "bin"] {
            let path = format!("/{loc}/f.{ext}");
            let r = c.get(&path);
            assert_eq!(r.status, 200, "{path}");
            let plain = format!("hello {ext}\n");
            let want = if filtered.contains(&ext) {
                plain.to_ascii_uppercase()
            } else {
                plain
            };
            assert_eq!(String::from_utf8_lossy(&r.body), want, "{path}");
        }
    }
    let r = c.get("/charset/f.html");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "HELLO HTML\n",
        "text/html with a charset is text/html"
    );
    nginx.stop();
}

/// `transform_filter_status`: 200 by default; the listed codes, or any; the status is kept.
#[test]
fn only_the_listed_statuses_are_filtered_and_keep_their_status() {
    let data = Data::new("status");
    let nginx = start(
        &data,
        r#"server { listen {UPSTREAM}; default_type text/html;
             location = /ok { return 200 "<p>fine</p>"; }
             location = /created { return 201 "<p>made</p>"; }
             location = /missing { return 404 "<p>not here</p>"; } }
           server { listen 127.0.0.1:{PORT};
             location /default/ { proxy_pass {UP}/; transform_filter /usr/bin/tr a-z A-Z; }
             location /with404/ { proxy_pass {UP}/; transform_filter /usr/bin/tr a-z A-Z;
                                  transform_filter_status 200 404; }
             location /only201/ { proxy_pass {UP}/; transform_filter /usr/bin/tr a-z A-Z;
                                  transform_filter_status 201; }
             location /any/ { proxy_pass {UP}/; transform_filter /usr/bin/tr a-z A-Z;
                              transform_filter_status any; } }"#,
    );
    let cases = [
        ("default", "ok", 200, true),
        ("default", "created", 201, false),
        ("default", "missing", 404, false),
        ("with404", "ok", 200, true),
        ("with404", "created", 201, false),
        ("with404", "missing", 404, true),
        ("only201", "ok", 200, false),
        ("only201", "created", 201, true),
        ("any", "ok", 200, true),
        ("any", "created", 201, true),
        ("any", "missing", 404, true),
    ];
    let bodies = [
        ("ok", "<p>fine</p>"),
        ("created", "<p>made</p>"),
        ("missing", "<p>not here</p>"),
    ];
    for (loc, what, status, filtered) in cases {
        let path = format!("/{loc}/{what}");
        let r = Client::connect(nginx.port).get(&path);
        assert_eq!(r.status, status, "{path}: the status is kept");
        let plain = bodies.iter().find(|(w, _)| *w == what).unwrap().1;
        let want = if filtered {
            plain.to_ascii_uppercase()
        } else {
            plain.to_string()
        };
        assert_eq!(String::from_utf8_lossy(&r.body), want, "{path}");
    }
    nginx.stop();
}

/// HEAD (headers as for GET, no program), 204 and 304 pass untouched even with
/// `transform_filter_status any`; a gzip-encoded response and a part of one (a proxied Range
/// request's 206) are refused with 502, never passed unfiltered; `Content-Encoding: identity`
/// is filtered.
#[test]
fn head_204_304_pass_and_encoded_or_partial_responses_are_refused() {
    let data = Data::new("untouched");
    let page = text_lines(100_000);
    data.write("page.html", &page);
    let nginx = start(
        &data,
        "server { listen {UPSTREAM}; root {DATA};
           location = /nocontent { return 204; }
           location /gz/ { alias {DATA}/; gzip on; gzip_min_length 0; gzip_types text/html; }
           location /id/ { alias {DATA}/; add_header Content-Encoding identity; } }
         server { listen 127.0.0.1:{PORT};
           location /static/ { alias {DATA}/;
               transform_filter {HELPER} count {PREFIX}/count-static xor 1;
               transform_filter_type application/x-filtered; }
           location /plain/ { proxy_pass {UP}/; }
           location /p/ { proxy_pass {UP}/; transform_filter_status any;
               proxy_set_header Accept-Encoding gzip;
               transform_filter {HELPER} count {PREFIX}/count-p xor 1; } }",
    );
    let static_runs = counter(&nginx, "static");
    let p_runs = counter(&nginx, "p");
    let mut c = Client::connect(nginx.port);

    // HEAD: the headers a GET gets, and no program.
    let get = c.get("/static/page.html");
    assert_eq!(get.status, 200);
    assert!(get.body == xor(&page, 1));
    assert_eq!(runs(&static_runs).len(), 1);
    let head = request(
        &mut c,
        "HEAD /static/page.html HTTP/1.1\r\nHost: x\r\n\r\n",
        true,
    );
    assert_eq!(head.status, 200);
    assert_eq!(head.header("Content-Type"), Some("application/x-filtered"));
    assert_rewritten(&head, "HEAD");
    assert!(
        head.header("Content-Length").is_none(),
        "HEAD: the length of an output that was not made: {:?}",
        head.headers
    );
    // The connection carries nothing after the head.
    let again = c.get("/static/page.html");
    assert!(again.body == xor(&page, 1));
    assert_eq!(runs(&static_runs).len(), 2, "HEAD ran no program");

    // 204 and 304 from the application, under `transform_filter_status any`.
    let r = c.get("/p/nocontent");
    assert_eq!(r.status, 204);
    let plain = c.get("/plain/page.html");
    let etag = plain
        .header("ETag")
        .expect("the application's ETag")
        .to_string();
    let r = get_with(
        &mut c,
        "/p/page.html",
        &format!("If-None-Match: {etag}\r\n"),
    );
    assert_eq!(r.status, 304, "the application's 304 is passed on");
    assert!(r.body.is_empty());

    // A gzip-encoded body cannot be filtered: a 502 (the connection closes after it, as after
    // any filter's refusal), never the application's bytes unfiltered.
    let mut refused = Client::connect(nginx.port);
    let r = refused.get("/p/gz/page.html");
    assert_eq!(r.status, 502, "an encoded response is refused");
    assert!(r.header("Content-Encoding").is_none(), "{:?}", r.headers);
    assert!(
        !r.body
            .windows(16)
            .any(|w| page.windows(16).next() == Some(w)),
        "the application's bytes reached the client"
    );
    // Nor a part of a response: the application answered a forwarded Range with a 206, of one
    // range or of several (multipart/byteranges, whose type is not the page's).
    for range in ["bytes=0-99", "bytes=0-5,10-15"] {
        let mut refused = Client::connect(nginx.port);
        let r = get_with(&mut refused, "/p/page.html", &format!("Range: {range}\r\n"));
        assert_eq!(r.status, 502, "{range}: a 206 is refused");
        assert!(
            !r.body.windows(6).any(|w| page.windows(6).next() == Some(w)),
            "{range}: the application's bytes reached the client"
        );
    }
    assert!(
        runs(&p_runs).is_empty(),
        "a program ran: {:?}",
        runs(&p_runs)
    );
    let log = nginx.error_log();
    assert!(
        log.contains("transform_filter cannot filter an encoded response"),
        "{log}"
    );
    assert!(
        log.contains("transform_filter cannot filter a part of a response (206)"),
        "{log}"
    );

    // identity is no encoding.
    let r = c.get("/p/id/page.html");
    assert_eq!(r.status, 200);
    assert!(
        r.body == xor(&page, 1),
        "Content-Encoding: identity is filtered"
    );
    assert_eq!(runs(&p_runs).len(), 1);
    no_programs_left(&nginx);
    nginx.stop();
}

/// The filtered response's headers: no Content-Length, ETag, Last-Modified or Accept-Ranges of
/// the file; chunked (an output larger than the pipe) or the output's own length (an output
/// whole before the header); `transform_filter_type`; close-delimited on HTTP/1.0; Range and
/// conditional requests get the whole filtered 200.
#[test]
fn headers_of_a_filtered_response() {
    let data = Data::new("headers");
    let small = b"<p>small page</p>\n".to_vec();
    data.write("small.html", &small);
    let big = text_lines(4 * MIB);
    data.write("big.html", &big);
    let nginx = start(
        &data,
        "server { listen 127.0.0.1:{PORT};
           location /plain/ { alias {DATA}/; }
           location /f/ { alias {DATA}/; transform_commit_timeout 10s; transform_pipe_size 64k;
                          transform_filter /usr/bin/tr a-z A-Z; }
           location /typed/ { alias {DATA}/; transform_filter /usr/bin/tr a-z A-Z;
                              transform_filter_type text/x-upper; }
           location /vtyped/ { alias {DATA}/; transform_filter /usr/bin/tr a-z A-Z;
                               transform_filter_type text/x-$arg_t; } }",
    );
    let mut c = Client::connect(nginx.port);
    let plain = c.get("/plain/small.html");
    assert_eq!(plain.status, 200);
    let etag = plain.header("ETag").expect("the file's ETag").to_string();
    let modified = plain
        .header("Last-Modified")
        .expect("the file's Last-Modified")
        .to_string();
    assert!(plain.header("Content-Length").is_some() && plain.header("Accept-Ranges").is_some());

    let r = c.get("/f/small.html");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, upper(&small));
    assert_eq!(r.header("Content-Type"), Some("text/html"));
    assert_eq!(
        r.header("Content-Length"),
        Some(small.len().to_string().as_str()),
        "{:?}",
        r.headers
    );
    assert_rewritten(&r, "small");

    let r = c.get("/f/big.html");
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(r.header("Transfer-Encoding"), Some("chunked"));
    assert!(r.header("Content-Length").is_none());
    assert_rewritten(&r, "big");
    assert!(r.body == upper(&big));

    let r = c.get("/typed/small.html");
    assert_eq!(r.header("Content-Type"), Some("text/x-upper"));
    assert_eq!(r.body, upper(&small));
    let r = c.get("/vtyped/small.html?t=var");
    assert_eq!(
        r.header("Content-Type"),
        Some("text/x-var"),
        "a type from a variable"
    );
    assert_eq!(r.body, upper(&small));

    // Range and conditional requests: the whole filtered 200.
    for (what, header) in [
        ("Range", "Range: bytes=0-3\r\n".to_string()),
        ("If-None-Match", format!("If-None-Match: {etag}\r\n")),
        ("If-None-Match *", "If-None-Match: *\r\n".to_string()),
        (
            "If-Modified-Since",
            format!("If-Modified-Since: {modified}\r\n"),
        ),
    ] {
        let r = get_with(&mut c, "/f/small.html", &header);
        assert_eq!(r.status, 200, "{what}");
        assert_eq!(r.body, upper(&small), "{what}");
        assert_rewritten(&r, what);
    }

    // HTTP/1.0: close-delimited.
    let mut c = Client::connect(nginx.port);
    let r = request(&mut c, "GET /f/big.html HTTP/1.0\r\n\r\n", false);
    assert_eq!(r.status, 200);
    assert!(r.header("Transfer-Encoding").is_none() && r.header("Content-Length").is_none());
    assert!(r.body == upper(&big));
    no_programs_left(&nginx);
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// Order in nginx's filter chain: before gzip, sub_filter, SSI (above) and addition
// ---------------------------------------------------------------------------------------------

/// gzip compresses the program's output (not the file's).
#[test]
fn gzip_compresses_the_programs_output() {
    let data = Data::new("gzip");
    let page = text_lines(300_000);
    data.write("page.html", &page);
    let nginx = start(
        &data,
        "server { listen 127.0.0.1:{PORT};
           location /gz/ { alias {DATA}/; gzip on; gzip_min_length 0; gzip_types text/html;
                           transform_filter /usr/bin/tr a-z A-Z; } }",
    );
    let mut c = Client::connect(nginx.port);
    let r = get_with(&mut c, "/gz/page.html", "Accept-Encoding: gzip\r\n");
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(r.header("Content-Encoding"), Some("gzip"));
    assert!(r.body.len() < page.len(), "not compressed");
    assert!(
        gunzip(&r.body) == upper(&page),
        "the compressed body is not the program's output"
    );
    let r = c.get("/gz/page.html");
    assert!(r.header("Content-Encoding").is_none());
    assert!(r.body == upper(&page));
    nginx.stop();
}

/// sub_filter replaces strings in the program's output; add_before_body/add_after_body wrap the
/// filtered body with their own (unfiltered) parts.
#[test]
fn sub_filter_and_addition_see_the_programs_output() {
    let data = Data::new("sub");
    data.write("fruit.html", b"an apple a day\n");
    data.write("middle.html", b"middle\n");
    data.write("frag/before.html", b"before\n");
    data.write("frag/after.html", b"after\n");
    let nginx = start(
        &data,
        "server { listen 127.0.0.1:{PORT};
           location /sub/ { alias {DATA}/; sub_filter banana cherry;
                            transform_filter /usr/bin/sed s/apple/banana/; }
           location /add/ { alias {DATA}/;
                            add_before_body /frag/before.html; add_after_body /frag/after.html;
                            transform_filter /usr/bin/tr a-z A-Z; }
           location /frag/ { alias {DATA}/frag/; } }",
    );
    let mut c = Client::connect(nginx.port);
    let r = c.get("/sub/fruit.html");
    assert_eq!(r.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "an cherry a day\n",
        "sub_filter did not see the program's output"
    );
    let r = c.get("/add/middle.html");
    assert_eq!(r.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "before\nMIDDLE\nafter\n",
        "the addition parts are added after the filter, and not filtered"
    );
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// No deadlock, bounded memory
// ---------------------------------------------------------------------------------------------

/// Each order of reading and writing, on 20 MiB bodies from a static file, a proxied application
/// (buffered and unbuffered) and a `transform_exec` program: a program that writes 20 MiB before
/// it reads, one that reads everything before it writes (`sort`, the helper's `slurp`), one that
/// never reads, one that exits after 100000 bytes (`head`), and `cat`. Every response is whole
/// and exact, and the worker's RSS grows by at most 16 MiB in any of them.
#[test]
fn no_deadlock_whatever_order_the_program_reads_and_writes() {
    const N: usize = 20 * MIB;
    let data = Data::new("orders");
    let bytes = gen(N);
    data.write("big.bin", &bytes);
    let lines = text_lines(N);
    data.write("lines.txt", &lines);
    data.write("tiny.bin", b"warm up\n");

    let mut wtr = gen(N);
    wtr.extend_from_slice(format!("read {N}\n").as_bytes());
    let programs: Vec<(&str, String, &str, Vec<u8>)> = vec![
        (
            "write-then-read",
            format!("{{HELPER}} write-then-read {N}"),
            "big.bin",
            wtr,
        ),
        ("slurp", "{HELPER} slurp".into(), "big.bin", bytes.clone()),
        (
            "sort",
            "/usr/bin/sort".into(),
            "lines.txt",
            sorted_lines(&lines),
        ),
        (
            "never-reads",
            "{HELPER} gen 1000000".into(),
            "big.bin",
            gen(1_000_000),
        ),
        (
            "exits-early",
            "/usr/bin/head -c 100000".into(),
            "big.bin",
            bytes[..100_000].to_vec(),
        ),
        ("cat", "/usr/bin/cat".into(), "big.bin", bytes.clone()),
    ];
    drop(bytes);
    // The static file, the application (buffered, unbuffered), `cat` of the file by
    // transform_exec.
    let sources = [
        ("s", "alias {DATA}/;"),
        ("p", "proxy_pass {UP}/;"),
        ("u", "proxy_pass {UP}/; proxy_buffering off;"),
        ("e", "transform_exec /usr/bin/cat {DATA}/$file;"),
    ];
    let mut locations = String::new();
    for (name, program, _, _) in &programs {
        for (src, how) in sources {
            let at = if src == "e" {
                format!("~ ^/e/{name}/(?<file>[a-z]+\\.[a-z]+)$")
            } else {
                format!("/{src}/{name}/")
            };
            locations.push_str(&format!(
                "location {at} {{ {how} transform_filter {program}; }}\n"
            ));
        }
    }
    let nginx = start(
        &data,
        &format!(
            "server {{ listen {{UPSTREAM}}; root {{DATA}}; }}
             server {{ listen 127.0.0.1:{{PORT}}; transform_filter_types *;
                       transform_type application/octet-stream;
                       {locations} }}"
        ),
    );
    let worker = nginx.worker_pid();
    // Warm up every source (lazily allocated buffers, log files).
    for (src, _) in sources {
        let r = Client::connect(nginx.port).get(&format!("/{src}/cat/tiny.bin"));
        assert_eq!(r.status, 200, "warm-up of {src}");
        assert_eq!(r.body, b"warm up\n", "warm-up of {src}");
    }
    no_programs_left(&nginx);
    let base = rss_kib(worker);
    for (name, _, file, want) in &programs {
        let want_sha = sha256(want);
        for (src, _) in sources {
            let path = format!("/{src}/{name}/{file}");
            let ((head, end, len, sha), peak) =
                peak_rss(worker, || fetch_hashed(nginx.port, &path));
            assert_eq!(head.status, 200, "{path}");
            assert_eq!(end, End::Complete, "{path}: ended after {len} bytes");
            assert_eq!(len, want.len() as u64, "{path}: length");
            assert_eq!(sha, want_sha, "{path}: sha256");
            let growth = peak.saturating_sub(base);
            assert!(
                growth <= 16 * 1024,
                "{path}: worker RSS grew by {growth} KiB (from {base} KiB)"
            );
        }
    }
    no_programs_left(&nginx);
    nginx.stop();
}

/// A slow application (rate-limited) and a slow client (small window, pauses) at once, proxy
/// buffering on and off: the response is exact and the worker's RSS grows by at most 16 MiB
/// over a 48 MiB body.
#[test]
fn a_slow_client_and_a_slow_upstream_keep_the_worker_small() {
    const N: usize = 48 * MIB;
    let data = Data::new("slow");
    data.write_gen("big.bin", N as u64);
    let want = sha256_file(&data.file("big.bin"), |b| {
        b.iter_mut().for_each(|x| *x ^= 33)
    });
    let nginx = start(
        &data,
        "server { listen {UPSTREAM}; location /slow/ { alias {DATA}/; limit_rate 16m; } }
         server { listen 127.0.0.1:{PORT}; transform_filter_types *;
           location /on/ { proxy_pass {UP}/slow/; transform_filter {HELPER} xor 33; }
           location /off/ { proxy_pass {UP}/slow/; proxy_buffering off;
                            transform_filter {HELPER} xor 33; }
           location /warm/ { alias {DATA}/; transform_filter {HELPER} xor 33; } }",
    );
    let worker = nginx.worker_pid();
    data.write("tiny.bin", b"warm");
    for p in ["/warm/tiny.bin", "/on/tiny.bin", "/off/tiny.bin"] {
        assert_eq!(Client::connect(nginx.port).get(p).status, 200, "{p}");
    }
    let base = rss_kib(worker);
    for path in ["/on/big.bin", "/off/big.bin"] {
        let ((head, end, len, sha), peak) = peak_rss(worker, || {
            let mut c = Client::connect(nginx.port);
            c.set_recv_buffer(64 * 1024);
            c.send(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
            let head = c.read_head();
            let mut h = Sha256::new();
            // Reads 2 MiB, then stops for 300 ms, and again: slower than the application at
            // times, faster at others.
            let mut since_pause = 0usize;
            let (end, len) = c.stream_body(&head, &mut |b| {
                h.update(b);
                since_pause += b.len();
                if since_pause >= 2 * MIB {
                    since_pause = 0;
                    std::thread::sleep(Duration::from_millis(300));
                }
            });
            (head, end, len, format!("{:x}", h.finalize()))
        });
        assert_eq!(head.status, 200, "{path}");
        assert_eq!(end, End::Complete, "{path}: ended after {len} bytes");
        assert_eq!(len, N as u64, "{path}");
        assert_eq!(sha, want, "{path}: sha256");
        let growth = peak.saturating_sub(base);
        assert!(
            growth <= 16 * 1024,
            "{path}: worker RSS grew by {growth} KiB over a {N}-byte body"
        );
    }
    no_programs_left(&nginx);
    nginx.stop();
}

/// A client that does not read for a while (small socket buffers both sides) still gets the
/// whole response, on the splice transport, the buffered one (`transform_splice off`) and
/// through gzip: the program has long finished when the client reads on, and what is left in
/// nginx's output chain must still go out.
#[test]
fn a_client_that_pauses_gets_the_whole_response_on_every_transport() {
    let data = Data::new("pause");
    // Bytes gzip cannot shrink: the socket fills through gzip too.
    let page = gen(3 * MIB);
    data.write("page.html", &page);
    let nginx = start(
        &data,
        "server { listen 127.0.0.1:{PORT} sndbuf=64k;
           location /splice/ { alias {DATA}/; transform_filter {HELPER} xor 1; }
           location /buffered/ { alias {DATA}/; transform_splice off;
                                 transform_filter {HELPER} xor 1; }
           location /gzip/ { alias {DATA}/; gzip on; gzip_types text/html;
                             transform_filter {HELPER} xor 1; } }",
    );
    let want = xor(&page, 1);
    for path in [
        "/splice/page.html",
        "/buffered/page.html",
        "/gzip/page.html",
    ] {
        let mut c = Client::connect(nginx.port);
        c.set_recv_buffer(64 * 1024);
        c.send(&format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n"
        ));
        let head = c.read_head();
        assert_eq!(head.status, 200, "{path}");
        std::thread::sleep(Duration::from_millis(500));
        // Nothing is slow any more: 10 s without a byte is a hang.
        c.stream()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let r = c.read_body(head, false);
        assert_eq!(
            r.end,
            End::Complete,
            "{path}: the response stopped after {} bytes",
            r.body.len()
        );
        let body = if path.starts_with("/gzip/") {
            assert_eq!(r.header("Content-Encoding"), Some("gzip"), "{path}");
            gunzip(&r.body)
        } else {
            r.body
        };
        assert!(body == want, "{path}: not the program's output");
    }
    no_programs_left(&nginx);
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// Failures, timeouts, client aborts
// ---------------------------------------------------------------------------------------------

/// A filter program failing before the commit is a 502 (504 for a timeout) with the log line;
/// after the commit the response is visibly cut (no last chunk; a reset on HTTP/1.0).
#[test]
fn a_failing_filter_program_before_and_after_the_commit() {
    let data = Data::new("fail");
    data.write("page.html", &text_lines(200_000));
    let nginx = start(
        &data,
        "server { listen 127.0.0.1:{PORT};
           location /before/ { alias {DATA}/; transform_filter {HELPER} fail-after 0 3; }
           location /early/ { alias {DATA}/; transform_filter {HELPER} fail-after 30000 4; }
           location /after/ { alias {DATA}/; transform_filter {HELPER} fail-after 3000000 1; }
           location /missing/ { alias {DATA}/; transform_filter $arg_p; }
           location /read-timeout/ { alias {DATA}/; transform_read_timeout 300ms;
                                     transform_filter {HELPER} hang-after 0; }
           location /timeout/ { alias {DATA}/; transform_timeout 500ms;
                                transform_filter {HELPER} spin; } }",
    );
    let logged = |what: &str| nginx.log_lines("error").iter().any(|l| l.contains(what));
    let r = Client::connect(nginx.port).get("/before/page.html");
    assert_eq!(r.status, 502);
    assert!(
        logged("exited with code 3"),
        "{:?}",
        nginx.log_lines("error")
    );
    let r = Client::connect(nginx.port).get("/early/page.html");
    assert_eq!(r.status, 502, "output within the commit size, then exit 4");
    assert!(logged("exited with code 4"));
    let r = Client::connect(nginx.port).get("/read-timeout/page.html");
    assert_eq!(r.status, 504);
    assert!(logged("timed out (transform_read_timeout 300ms)"));
    let r = Client::connect(nginx.port).get("/timeout/page.html");
    assert_eq!(r.status, 504);
    assert!(logged("timed out (transform_timeout 500ms)"));

    // After the commit (3 MB does not fit in the pipe: the program cannot exit before the
    // response was committed): cut, promptly.
    let mut c = Client::connect(nginx.port);
    c.send("GET /after/page.html HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_broken(Duration::from_secs(5));
    assert_eq!(r.status, 200);
    // What the program wrote, at most, without the last chunk.
    assert!(
        gen(3_000_000).starts_with(&r.body),
        "{} bytes, not the program's",
        r.body.len()
    );
    assert!(logged("exited with code 1"));
    let mut c = Client::connect(nginx.port);
    c.send("GET /after/page.html HTTP/1.0\r\n\r\n");
    let r = c.read_broken(Duration::from_secs(5));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.end,
        End::Reset,
        "HTTP/1.0: only a reset tells a cut body from a whole one"
    );
    // A program that cannot be executed: a 502 with the execve line.
    let mut c = Client::connect(nginx.port);
    c.send(
        "GET /missing/page.html?p=/nonexistent/program HTTP/1.1\r\nHost: x\r\n\
         Connection: close\r\n\r\n",
    );
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    assert!(
        raw.starts_with(b"HTTP/1.1 502 "),
        "a program that cannot be executed: want a 502, got {} bytes: {:?}",
        raw.len(),
        String::from_utf8_lossy(&raw[..raw.len().min(200)])
    );
    assert!(logged(
        "execve() \"/nonexistent/program\" failed (2: No such file or directory)"
    ));
    no_programs_left(&nginx);
    nginx.stop();
}

/// A client that goes away (after the header, before it, while a slow application still sends)
/// kills the filter program: its pid (counted by the program, and in `$transform_pid`) is gone
/// within seconds, and no zombie is left.
#[test]
fn a_client_abort_kills_the_filter_program() {
    let data = Data::new("abort");
    data.write_gen("page.html", 2 * MIB as u64);
    let nginx = start(
        &data,
        "log_format pids \"$uri $transform_pid\";
         server { listen {UPSTREAM}; location /slow/ { alias {DATA}/; limit_rate 1m; } }
         server { listen 127.0.0.1:{PORT}; access_log {PREFIX}/logs/pids.log pids;
           location /after-header/ { alias {DATA}/;
               transform_filter {HELPER} count {PREFIX}/count-a hang-after 100000; }
           location /before-header/ { alias {DATA}/;
               transform_filter {HELPER} count {PREFIX}/count-b spin; }
           location /proxied/ { proxy_pass {UP}/slow/;
               transform_filter {HELPER} count {PREFIX}/count-c xor 1; } }",
    );
    let worker = nginx.worker_pid();
    for (path, name, header) in [
        ("/after-header/page.html", "a", true),
        ("/before-header/page.html", "b", false),
        ("/proxied/page.html", "c", true),
    ] {
        let count = counter(&nginx, name);
        let mut c = Client::connect(nginx.port);
        c.send(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
        if header {
            assert_eq!(c.read_head().status, 200, "{path}");
            assert_eq!(c.read_some(1000), 1000, "{path}");
        }
        assert!(
            wait_until(Duration::from_secs(5), || runs(&count).len() == 1),
            "{path}: the program did not start"
        );
        let pid = runs(&count)[0];
        assert!(
            matches!(proc_state(pid), Some(s) if s != 'Z'),
            "{path}: the program is not running ({:?})",
            proc_state(pid)
        );
        drop(c);
        assert!(
            wait_until(Duration::from_secs(5), || proc_state(pid).is_none()),
            "{path}: program {pid} still there ({:?}) after the client left",
            proc_state(pid)
        );
        no_programs_left(&nginx);
        let log = nginx.prefix.join("logs/pids.log");
        let line = |l: &str| l.starts_with(&format!("{path} "));
        assert!(
            wait_until(Duration::from_secs(5), || fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .any(line)),
            "{path}: no access log line"
        );
        let logged = fs::read_to_string(&log).unwrap();
        let logged = logged.lines().find(|l| line(l)).unwrap();
        assert_eq!(
            logged,
            format!("{path} {pid}"),
            "$transform_pid is the program's pid"
        );
        assert!(children_of(worker).is_empty());
    }
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// Protocols and transports
// ---------------------------------------------------------------------------------------------

/// TLS (HTTP/1.1) and HTTP/2: filtered static and proxied bodies byte-exact, also to a slow
/// client; a program failing after the commit ends the response in an error.
#[test]
fn tls_and_http2_are_byte_exact() {
    let (_, version) = curl(&["-V"]);
    let version = String::from_utf8_lossy(&version).into_owned();
    assert!(
        version
            .lines()
            .any(|l| l.starts_with("Features:") && l.contains("HTTP2")),
        "this test needs a curl with HTTP/2 (ci/test installs Debian's): {version}"
    );
    const N: u64 = 8 * 1024 * 1024;
    let data = Data::new("tls");
    let (crt, key) = make_cert(&data.path);
    data.write_gen("big.bin", N);
    let want = sha256_file(&data.file("big.bin"), |b| {
        b.iter_mut().for_each(|x| *x ^= 61)
    });
    data.write("page.html", &text_lines(300_000));
    let nginx = start(
        &data,
        &format!(
            "server {{ listen {{UPSTREAM}}; root {{DATA}}; }}
             server {{ listen 127.0.0.1:{{PORT}} ssl sndbuf=64k{{H2_LISTEN}}; {{H2_ON}}
                ssl_certificate {crt}; ssl_certificate_key {key};
                transform_filter_types *;
                location /f/ {{ alias {{DATA}}/; transform_filter {{HELPER}} xor 61; }}
                location /p/ {{ proxy_pass {{UP}}/; transform_filter {{HELPER}} xor 61; }}
                location /late/ {{ alias {{DATA}}/;
                                  transform_filter {{HELPER}} fail-after 3000000 1; }} }}",
            crt = crt.display(),
            key = key.display()
        ),
    );
    let out = data.file("out.bin");
    // Every case is tried; the failures are reported together. A slow client is curl reading
    // 4 MB/s into the small socket buffers: slower than the program. 30 s without the end
    // of the body is a hang.
    let mut problems = Vec::new();
    for (path, rate) in [
        ("/f/big.bin", None),
        ("/p/big.bin", None),
        ("/f/big.bin", Some("4M")),
    ] {
        for (mode, want_version) in [("--http1.1", "1.1"), ("--http2", "2")] {
            let case = format!("{path} {mode}{}", rate.map_or("", |_| ", slow client"));
            let url = format!("https://127.0.0.1:{}{path}", nginx.port);
            let _ = fs::remove_file(&out);
            let mut args = vec!["-sk", mode, "--max-time", "30"];
            if let Some(rate) = rate {
                args.extend(["--limit-rate", rate]);
            }
            let out_path = out.to_str().unwrap();
            args.extend(["-o", out_path, "-w", "%{http_version} %{http_code}", &url]);
            let (code, said) = curl_code(&args);
            let said = String::from_utf8_lossy(&said).into_owned();
            let got = fs::metadata(&out).map_or(0, |m| m.len());
            if code != Some(0) {
                problems.push(format!(
                    "{case}: curl exit {code:?} (28: timed out) after {got} of {N} bytes"
                ));
            } else if said != format!("{want_version} 200") {
                problems.push(format!("{case}: {said}"));
            } else if sha256_file(&out, |_| {}) != want {
                problems.push(format!("{case}: {got} bytes, not the program's output"));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    let late = format!("https://127.0.0.1:{}/late/page.html", nginx.port);
    curl_broken(&["-sk", "--http1.1", &late], Duration::from_secs(10));
    curl_broken(&["-sk", "--http2", &late], Duration::from_secs(10));
    no_programs_left(&nginx);
    nginx.stop();
}

/// Zero-copy on plain HTTP/1.1 (sendfile on and off): the static file goes to the program's
/// stdin by splice(2) from the file, its output to the client by splice from the pipe, and the
/// worker reads neither through userspace.
#[test]
fn a_static_files_body_is_spliced_into_the_program_and_its_output_to_the_client() {
    const N: u64 = 64 * 1024 * 1024;
    let data = Data::new("zero-copy");
    let want = data.write_gen("big.html", N);
    for sendfile in ["on", "off"] {
        let nginx = start(
            &data,
            &format!(
                "server {{ listen 127.0.0.1:{{PORT}}; sendfile {sendfile}; root {{DATA}};
                          location / {{ transform_filter /usr/bin/cat; }} }}"
            ),
        );
        let worker = nginx.worker_pid();
        let trace = nginx.prefix.join("strace.out");
        let strace = Strace::attach_with(
            worker,
            &["-y"],
            "read,pread64,readv,preadv,recvfrom,splice,sendfile",
            &trace,
        );
        let (head, end, len, sha) = fetch_hashed(nginx.port, "/big.html");
        strace.stop();
        assert_eq!(head.status, 200);
        assert_eq!(end, End::Complete);
        assert_eq!(len, N);
        assert_eq!(sha, want, "sendfile {sendfile}: sha256");
        let text = fs::read_to_string(&trace).expect("strace output");
        let ret = |l: &str| -> u64 {
            l.rsplit_once("= ")
                .and_then(|(_, r)| r.split_whitespace().next())
                .and_then(|r| r.parse().ok())
                .unwrap_or(0)
        };
        // The first argument, with its path (`12</path/big.html>`, `14<pipe:[123]>`).
        let first = |l: &str| -> String {
            l.split_once('(')
                .map(|(_, a)| a.split(", ").next().unwrap_or("").to_string())
                .unwrap_or_default()
        };
        let (mut file_to_pipe, mut pipe_to_socket, mut read_file, mut read_pipe) = (0, 0, 0, 0);
        for l in text.lines() {
            let from = first(l);
            if l.starts_with("splice(") {
                if from.ends_with("big.html>") && l.contains("<pipe:[") {
                    file_to_pipe += ret(l);
                } else if from.contains("<pipe:[")
                    && (l.contains("<socket:[") || l.contains("<TCP"))
                {
                    pipe_to_socket += ret(l);
                }
            } else if !l.starts_with("sendfile(") {
                if from.ends_with("big.html>") {
                    read_file += ret(l);
                } else if from.contains("<pipe:[") {
                    read_pipe += ret(l);
                }
            }
        }
        assert!(
            file_to_pipe >= N,
            "sendfile {sendfile}: splice moved {file_to_pipe} of {N} bytes from the file to a pipe"
        );
        assert!(
            pipe_to_socket >= N,
            "sendfile {sendfile}: splice moved {pipe_to_socket} of {N} bytes from a pipe to the \
             socket"
        );
        assert!(
            read_file < 64 * 1024 && read_pipe < 64 * 1024,
            "sendfile {sendfile}: the worker read {read_file} bytes of the file and {read_pipe} \
             of a pipe through userspace"
        );
        nginx.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// The program: arguments, inheritance, CGI, the other directives, log variables
// ---------------------------------------------------------------------------------------------

/// Arguments take variables, each one argv element (no shell); a filter set for a server is
/// inherited and `transform_filter off` cancels it.
#[test]
fn arguments_take_variables_and_off_cancels_an_inherited_filter() {
    let data = Data::new("args");
    data.write("page.html", b"some page\n");
    let nginx = start(
        &data,
        r#"server { listen 127.0.0.1:{PORT};
             transform_filter /usr/bin/tr a-z A-Z;
             location /inherit/ { alias {DATA}/; }
             location /off/ { alias {DATA}/; transform_filter off; }
             location /args/ { alias {DATA}/;
                               transform_filter {HELPER} argv "$arg_a" "two words" $uri; } }"#,
    );
    let mut c = Client::connect(nginx.port);
    assert_eq!(c.get("/inherit/page.html").body, b"SOME PAGE\n");
    assert_eq!(c.get("/off/page.html").body, b"some page\n");
    for (raw, want) in [
        ("a;b", "a;b"),
        (
            "$(touch%20/tmp/filter-pwned)",
            "$(touch%20/tmp/filter-pwned)",
        ),
        ("*", "*"),
        ("", ""),
    ] {
        let r = c.get(&format!("/args/page.html?a={raw}"));
        assert_eq!(r.status, 200);
        assert_eq!(
            r.body,
            format!("{want}\0two words\0/args/page.html\0").as_bytes(),
            "{raw:?}"
        );
    }
    assert!(!Path::new("/tmp/filter-pwned").exists());
    nginx.stop();
}

/// `transform_output cgi` with a filter: the program's Status, Content-Type and headers apply;
/// a local Location is refused with 502.
#[test]
fn cgi_output_of_a_filter_program() {
    let data = Data::new("cgi");
    data.write("page.html", b"input\n");
    let nginx = start(
        &data,
        r#"server { listen 127.0.0.1:{PORT};
             location /cgi/ { alias {DATA}/; transform_output cgi;
                              transform_filter {HELPER} cgi 100000; }
             location /local/ { alias {DATA}/; transform_output cgi;
                                transform_filter /usr/bin/printf "Location: /elsewhere\r\n\r\n"; }
             location = /elsewhere { return 200 "redirected"; } }"#,
    );
    let mut c = Client::connect(nginx.port);
    let r = c.get("/cgi/page.html");
    assert_eq!(r.status, 203);
    assert_eq!(r.header("Content-Type"), Some("application/x-cgi"));
    assert_eq!(r.header("X-Helper"), Some("yes"));
    assert!(r.complete);
    assert!(r.body == gen(100_000));
    assert_rewritten(&r, "cgi");
    let r = Client::connect(nginx.port).get("/local/page.html");
    assert_eq!(r.status, 502, "a local redirect of a filter is refused");
    assert_ne!(r.body, b"redirected");
    nginx.stop();
}

/// transform_env, transform_chdir, transform_rlimit, transform_stderr, transform_splice,
/// transform_pipe_size and transform_max_programs apply to the filter program.
#[test]
fn the_other_directives_apply_to_the_filter_program() {
    let data = Data::new("directives");
    data.write("page.html", b"input\n");
    let big = text_lines(4 * MIB);
    data.write("big.html", &big);
    let nginx = start(
        &data,
        "server { listen 127.0.0.1:{PORT};
           location /env/ { alias {DATA}/; transform_env FOO \"bar $arg_x\";
                            transform_filter /usr/bin/env; }
           location /chdir/ { alias {DATA}/; transform_chdir {DATA}; transform_filter /usr/bin/pwd; }
           location /limits/ { alias {DATA}/; transform_rlimit nofile 32;
                               transform_filter /usr/bin/cat /proc/self/limits; }
           location /stderr/ { alias {DATA}/; transform_filter {HELPER} stderr 3 20 10 0; }
           location /buffered/ { alias {DATA}/; transform_splice off; transform_pipe_size 64k;
                                 transform_filter /usr/bin/tr a-z A-Z; } }",
    );
    let body = |p: &str| String::from_utf8(Client::connect(nginx.port).get(p).body).unwrap();
    let mut env: Vec<String> = body("/env/page.html?x=1")
        .lines()
        .map(String::from)
        .collect();
    env.sort();
    assert_eq!(env, ["FOO=bar 1", "PATH=/usr/local/bin:/usr/bin:/bin"]);
    assert_eq!(
        body("/chdir/page.html").trim_end(),
        data.path.display().to_string()
    );
    let limits = body("/limits/page.html");
    let row = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .expect("Max open files");
    assert_eq!(
        row.split_whitespace().take(2).collect::<Vec<_>>(),
        ["32", "32"]
    );
    let r = Client::connect(nginx.port).get("/stderr/page.html");
    assert_eq!(r.status, 200);
    assert!(r.body == gen(10));
    let log = nginx.error_log();
    assert!(
        log.lines().any(|l| l.contains("[warn]")
            && l.contains("transform stderr: err 2 ")
            && l.contains("GET /stderr/page.html")),
        "the program's stderr at warn, with its request"
    );
    let r = Client::connect(nginx.port).get("/buffered/big.html");
    assert!(r.complete);
    assert!(r.body == upper(&big), "transform_splice off: byte-exact");

    nginx.stop();

    // transform_max_programs 1: a second filter while one runs is a 503, then room again.
    let nginx = start(
        &data,
        "transform_max_programs 1;
         server { listen 127.0.0.1:{PORT};
           location /hang/ { alias {DATA}/; transform_filter {HELPER} hang-after 100000; }
           location /quick/ { alias {DATA}/; transform_filter /usr/bin/cat; } }",
    );
    let worker = nginx.worker_pid();
    let mut held = Client::connect(nginx.port);
    held.send("GET /hang/page.html HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(held.read_head().status, 200);
    let r = Client::connect(nginx.port).get("/quick/page.html");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("Retry-After"), Some("1"));
    drop(held);
    assert!(wait_until(Duration::from_secs(5), || children_of(worker).is_empty()));
    let r = Client::connect(nginx.port).get("/quick/page.html");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"input\n");
    nginx.stop();
}

/// With no `transform_exec`, `$transform_pid`, `$transform_exit_status`, `$transform_bytes`
/// and `$transform_time` describe the filter program; empty when nothing was filtered.
#[test]
fn log_variables_describe_the_filter_program() {
    let data = Data::new("logvars");
    data.write("page.html", &gen(5000));
    data.write("page.txt", b"text\n");
    let nginx = start(
        &data,
        "log_format t \"$uri pid=$transform_pid status=$transform_exit_status time=$transform_time bytes=$transform_bytes\";
         server { listen 127.0.0.1:{PORT}; access_log {PREFIX}/logs/t.log t;
           location /ok/ { alias {DATA}/; transform_filter {HELPER} count {PREFIX}/count-ok xor 1; }
           location /exit/ { alias {DATA}/; transform_filter {HELPER} fail-after 10 7; }
           location /none/ { alias {DATA}/; transform_filter /usr/bin/cat; } }",
    );
    let ok_runs = counter(&nginx, "ok");
    let mut c = Client::connect(nginx.port);
    assert_eq!(c.get("/ok/page.html").body.len(), 5000);
    assert_eq!(
        Client::connect(nginx.port).get("/exit/page.html").status,
        502
    );
    assert_eq!(
        Client::connect(nginx.port).get("/none/page.txt").status,
        200
    );
    let read = || fs::read_to_string(nginx.prefix.join("logs/t.log")).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(3), || read()
        .lines()
        .count()
        == 3));
    let log = read();
    let line = |p: &str| {
        log.lines()
            .find(|l| l.starts_with(&format!("{p} ")))
            .unwrap_or_else(|| panic!("no line for {p}: {log}"))
            .to_string()
    };
    let field = |l: &str, k: &str| {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .unwrap()
            .to_string()
    };
    let ok = line("/ok/page.html");
    assert_eq!(field(&ok, "pid"), runs(&ok_runs)[0].to_string(), "{ok}");
    assert_eq!(field(&ok, "status"), "0", "{ok}");
    assert_eq!(field(&ok, "bytes"), "5000", "{ok}");
    let t: f64 = field(&ok, "time").parse().expect("a time");
    assert!(
        t >= 0.0 && field(&ok, "time").split('.').nth(1).unwrap().len() == 3,
        "{ok}"
    );
    assert_eq!(field(&line("/exit/page.html"), "status"), "7");
    let none = line("/none/page.txt");
    assert_eq!(field(&none, "pid"), "-", "nothing filtered: {none}");
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// `nginx -t` refuses misuse of the filter directives, naming the file and line, and accepts
/// them at every level.
#[test]
fn nginx_t_refuses_bad_filter_directives_naming_file_and_line() {
    let bad = [
        (
            "transform_filter bin/cat;",
            "\"bin/cat\" is not an absolute path",
        ),
        (
            "transform_filter;",
            "invalid number of arguments in \"transform_filter\"",
        ),
        (
            "transform_filter /nonexistent/prog;",
            "\"/nonexistent/prog\" is not an executable file",
        ),
        ("transform_filter_status abc;", "\"abc\""),
        ("transform_filter_status 99;", "\"99\""),
        ("transform_filter_status 200 1000;", "\"1000\""),
        (
            "transform_filter_types;",
            "invalid number of arguments in \"transform_filter_types\"",
        ),
        (
            "transform_filter_type;",
            "invalid number of arguments in \"transform_filter_type\"",
        ),
        (
            "transform_filter_type a b;",
            "invalid number of arguments in \"transform_filter_type\"",
        ),
    ];
    for (directive, message) in bad {
        let body = format!(
            "server {{ listen 127.0.0.1:{{PORT}};\nlocation / {{\ntransform_filter /usr/bin/cat;\n\
             {directive} #BAD\n}} }}"
        );
        let body = if directive.starts_with("transform_filter ") || directive == "transform_filter;"
        {
            body.replace("transform_filter /usr/bin/cat;\n", "\n")
        } else {
            body
        };
        let (ok, stderr, path) = nginx_test_config(&body);
        let conf = fs::read_to_string(&path).unwrap();
        fs::remove_dir_all(path.parent().unwrap()).ok();
        assert!(!ok, "nginx -t accepted {directive:?}");
        let line = conf.lines().position(|l| l.contains("#BAD")).unwrap() + 1;
        let at = format!("{}:{line}", path.display());
        assert!(
            stderr.contains("[emerg]") && stderr.contains(&at),
            "{directive:?}: want an [emerg] naming {at}: {stderr}"
        );
        assert!(
            stderr.contains(message),
            "{directive:?}: want {message:?} in: {stderr}"
        );
    }
    let good = [
        "transform_filter /usr/bin/tr a-z A-Z; transform_filter_types text/html text/plain;
         transform_filter_status 200 404; transform_filter_type text/html;
         server { listen 127.0.0.1:{PORT}; location / { } }",
        "server { listen 127.0.0.1:{PORT}; transform_filter /usr/bin/cat;
           transform_filter_types *; transform_filter_status any;
           location / { transform_filter off; }
           location /v/ { transform_filter {HELPER} argv $uri \"$arg_a b\"; } }",
        "server { listen 127.0.0.1:{PORT};
           location / { transform_exec /usr/bin/echo; transform_filter /usr/bin/cat; } }",
    ];
    for body in good {
        let (ok, stderr, path) = nginx_test_config(body);
        fs::remove_dir_all(path.parent().unwrap()).ok();
        assert!(
            ok,
            "nginx -t refused a valid configuration: {stderr}\n{body}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The recipe
// ---------------------------------------------------------------------------------------------

/// nginx-conf/filter.conf as shipped: the application's JSON pretty-printed by Python's
/// json.tool (gzip after it), its errors and broken JSON handled, its photos shrunk by
/// ImageMagick.
#[test]
fn the_filter_recipe_serves_pretty_json_and_small_photos() {
    assert!(
        Path::new("/usr/bin/python3").exists(),
        "filter.conf runs /usr/bin/python3: install python3"
    );
    let s = ExampleServer::start("filter.conf");
    let api = s.prefix.join("html/api");
    fs::create_dir_all(&api).unwrap();
    let json = br#"{"items":[{"id":1,"name":"rose","tags":["red","flower"]},{"id":2,"name":"logo"}],"count":2}"#;
    fs::write(api.join("items.json"), json).unwrap();
    fs::write(api.join("broken.json"), b"{\"items\": [1, 2").unwrap();
    // What json.tool makes of the file, run here the way the recipe runs it.
    let want = Command::new("/usr/bin/python3")
        .args(["-m", "json.tool", "--indent", "2"])
        .arg(api.join("items.json"))
        .output()
        .unwrap();
    assert!(want.status.success());
    assert!(want.stdout.len() > json.len() && want.stdout.contains(&b'\n'));

    let (ok, body) = curl(&["-sf", &s.url("/api/items.json")]);
    assert!(ok, "/api/items.json failed");
    assert_eq!(
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(&want.stdout)
    );
    let (ok, body) = curl(&["-sf", "--compressed", &s.url("/api/items.json")]);
    assert!(ok);
    assert_eq!(body, want.stdout, "gzip of the pretty JSON");
    let (ok, raw) = curl(&[
        "-sf",
        "-H",
        "Accept-Encoding: gzip",
        &s.url("/api/items.json"),
    ]);
    assert!(ok);
    assert_eq!(
        &raw[..2],
        b"\x1f\x8b",
        "the JSON is compressed after the filter"
    );
    let code = |path: &str| {
        let (_, out) = curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}", &s.url(path)]);
        String::from_utf8(out).unwrap()
    };
    assert_eq!(code("/api/missing.json"), "404");
    assert_eq!(
        code("/api/broken.json"),
        "502",
        "json.tool fails on broken JSON"
    );

    let (ok, original) = curl(&["-sf", &s.url("/images/rose.jpg")]);
    assert!(ok, "the application's picture");
    let (ok, photo) = curl(&["-sf", &s.url("/photos/rose.jpg")]);
    assert!(ok, "/photos/rose.jpg failed");
    assert!(photo.len() < original.len(), "not smaller");
    let id = identify(&photo);
    let (w, h) = id
        .strip_prefix("JPEG ")
        .and_then(|d| d.split_once('x'))
        .map(|(w, h)| (w.parse::<u32>().unwrap(), h.parse::<u32>().unwrap()))
        .unwrap_or_else(|| panic!("not a JPEG: {id}"));
    assert!(
        w <= 400 && h <= 400 && (w == 400 || h == 400),
        "the photo is {w}x{h}"
    );
    s.stop();
}

/// Format and size of an image, by ImageMagick's identify.
fn identify(image: &[u8]) -> String {
    let mut child = Command::new("identify")
        .args(["-format", "%m %wx%h", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("identify (ImageMagick; ci/test installs it)");
    child.stdin.take().unwrap().write_all(image).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------------
// What the handler does wrong, and what the filters after ours hold
// ---------------------------------------------------------------------------------------------

/// A scripted HTTP upstream on 127.0.0.1: for each connection, reads the request head, then
/// plays `script` (its parts, with a wait on `gate` where a part is `None`) and closes.
fn scripted_upstream(
    script: Vec<Option<Vec<u8>>>,
    gate: std::sync::mpsc::Receiver<()>,
) -> (u16, std::thread::JoinHandle<()>) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
            head.push(b[0]);
        }
        for part in script {
            match part {
                Some(bytes) => {
                    if s.write_all(&bytes).is_err() {
                        return;
                    }
                }
                None => {
                    let _ = gate.recv_timeout(Duration::from_secs(30));
                }
            }
        }
    });
    (port, t)
}

/// An upstream that fails after its header (it announces more than it sends, then closes:
/// nginx ends such a response with a flush and no last buffer) never passes for a whole
/// response through the filter, and nothing hangs: a 502 before the commit, a broken response
/// after it; the program is stopped.
#[test]
fn a_response_its_upstream_cut_short_fails_and_never_hangs() {
    let data = Data::new("cut");
    for (name, sent, pause) in [("before", 1000usize, false), ("after", 300_000, true)] {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut script = vec![
            Some(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5000000\r\n\r\n"
                    .to_vec(),
            ),
            Some(vec![b'x'; sent]),
        ];
        if pause {
            // Long enough for the commit (more than transform_commit_size went in).
            script.push(None);
        }
        let (up, t) = scripted_upstream(script, rx);
        let nginx = start(
            &data,
            &format!(
                "server {{ listen 127.0.0.1:{{PORT}};
                   location / {{ proxy_pass http://127.0.0.1:{up};
                       transform_filter /bin/cat; }} }}"
            ),
        );
        let mut c = Client::connect(nginx.port);
        c.send("GET /page.html HTTP/1.1\r\nHost: x\r\n\r\n");
        if pause {
            let head = c.read_head();
            assert_eq!(head.status, 200, "{name}: committed");
            tx.send(()).unwrap();
            let r = c.read_broken_body(head, Duration::from_secs(10));
            assert!(!r.complete, "{name}: a cut response passed for whole");
        } else {
            c.stream()
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let r = c.read_response(false);
            assert_eq!(r.status, 502, "{name}: {:?} {:?}", r.end, r.headers);
        }
        t.join().unwrap();
        let log = nginx.error_log();
        assert!(
            log.contains("the response it filters ended before its end"),
            "{name}: {log}"
        );
        no_programs_left(&nginx);
        nginx.stop();
    }
}

/// What filters after ours hold goes on without more from the handler: SSI holds the rest of
/// the page until its include is done, and the include's end posts the page's request, whose
/// handler (a proxied application waiting for its upstream) has nothing to send: the filter
/// pushes it on. The rest of the page arrives while the application is still silent.
#[test]
fn output_held_after_the_filter_goes_on_while_the_handler_waits() {
    let data = Data::new("held");
    data.write("inc/part.txt", b"INCLUDED");
    let (tx, rx) = std::sync::mpsc::channel();
    let (up, t) = scripted_upstream(
        vec![
            Some(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n".to_vec(),
            ),
            Some(b"PART1 <!--# include virtual=\"/inc/part.txt\" --> PART2 ".to_vec()),
            None,
            Some(b"PART3\n".to_vec()),
        ],
        rx,
    );
    let nginx = start(
        &data,
        &format!(
            "server {{ listen 127.0.0.1:{{PORT}};
               location /inc/ {{ alias {{DATA}}/inc/; }}
               location / {{ proxy_pass http://127.0.0.1:{up}; proxy_buffering off; ssi on;
                   transform_filter /bin/cat; }} }}"
        ),
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    s.write_all(b"GET /page.html HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    use std::io::Read;
    while !String::from_utf8_lossy(&got).contains("PART2") && std::time::Instant::now() < deadline {
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&got).to_string();
    // Only now does the application go on.
    tx.send(()).unwrap();
    assert!(
        text.contains("INCLUDED") && text.contains("PART2"),
        "the include and the rest of the page stayed held while the application was silent: {text:?}"
    );
    assert!(!text.contains("PART3"), "{text:?}");
    t.join().unwrap();
    nginx.stop();
}

/// An SSI include whose filter program fails before its commit is left out of the page (one
/// error line); the page itself is whole.
#[test]
fn an_include_whose_program_fails_is_left_out_of_a_whole_page() {
    let data = Data::new("incfail");
    // A program that fails, one that cannot start, a response the filter refuses (encoded).
    data.write(
        "ssi/page.html",
        b"BEFORE<!--# include virtual=\"/fail/part.html\" -->ONE\
<!--# include virtual=\"/nostart/part.html\" -->TWO\
<!--# include virtual=\"/p/gz/part.html\" -->AFTER\n",
    );
    data.write("fail/part.html", b"<p>part</p>\n");
    data.write("nostart/part.html", b"<p>part</p>\n");
    data.write("gz/part.html", &b"<p>part</p>\n".repeat(100));
    let nginx = start(
        &data,
        "server { listen 127.0.0.1:{PORT};
           location /ssi/ { ssi on; alias {DATA}/ssi/; }
           location /fail/ { alias {DATA}/fail/; transform_filter /bin/false; }
           location /nostart/ { alias {DATA}/nostart/; transform_filter /nonexistent$uri; }
           location /p/ { proxy_pass {UP}/; transform_filter /bin/cat; } }
         server { listen {UPSTREAM};
           location /gz/ { alias {DATA}/gz/; add_header Content-Encoding gzip; } }",
    );
    let mut c = Client::connect(nginx.port);
    let r = get_with(&mut c, "/ssi/page.html", "Accept-Encoding: gzip\r\n");
    assert_eq!(r.status, 200);
    assert!(r.complete, "{:?}", r.end);
    let page = if r.header("Content-Encoding") == Some("gzip") {
        gunzip(&r.body)
    } else {
        r.body.clone()
    };
    assert_eq!(String::from_utf8_lossy(&page), "BEFOREONETWOAFTER\n");
    // The connection serves on.
    let r = c.get("/ssi/page.html");
    assert_eq!(String::from_utf8_lossy(&r.body), "BEFOREONETWOAFTER\n");
    let log = nginx.error_log();
    assert!(
        log.contains("transform program \"/bin/false\" exited with code 1")
            && log.contains("execve() \"/nonexistent/nostart/part.html\" failed")
            && log.contains("transform_filter cannot filter an encoded response"),
        "{log}"
    );
    no_programs_left(&nginx);
    nginx.stop();
}

/// A response reached through an internal redirect (an `error_page` after a failed upstream),
/// whose handler sends its body in several calls, is filtered whole: the earlier location's
/// upstream, which nginx leaves on the request, is not taken for this response's.
#[test]
fn a_response_after_an_internal_redirect_from_an_upstream_is_filtered() {
    let data = Data::new("redirected");
    let dead = free_port();
    let nginx = start(
        &data,
        &format!(
            r#"server {{ listen 127.0.0.1:{{PORT}};
                 location /gen {{ transform_exec /bin/sh -c "echo one; sleep 0.2; echo two";
                     transform_type text/html; transform_filter /usr/bin/tr a-z A-Z; }}
                 location /dead {{ proxy_pass http://127.0.0.1:{dead}; error_page 502 = /gen; }} }}"#
        ),
    );
    let mut c = Client::connect(nginx.port);
    let r = c.get("/gen");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ONE\nTWO\n"[..]));
    let r = c.get("/dead");
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, b"ONE\nTWO\n");
    assert!(r.complete);
    no_programs_left(&nginx);
    nginx.stop();
}

/// The splice transport's pause at `sendfile_max_chunk` does not rely on the client's write
/// timer, which nginx's non-buffered upstream deletes when it did not set it: a proxied response
/// with `proxy_buffering off`, many times `sendfile_max_chunk`, arrives whole.
#[test]
fn an_unbuffered_proxied_response_many_max_chunks_long_arrives_whole() {
    let data = Data::new("maxchunk");
    let sum = data.write_gen("big.bin", 64 * MIB as u64);
    let nginx = start(
        &data,
        "server { listen {UPSTREAM}; root {DATA}; }
         server { listen 127.0.0.1:{PORT};
           location / { proxy_pass {UP}; proxy_buffering off; proxy_buffer_size 64k;
               proxy_buffers 8 64k; sendfile_max_chunk 64k;
               transform_filter /bin/cat; transform_filter_types *; } }",
    );
    for _ in 0..3 {
        let (r, end, n, got) = fetch_hashed(nginx.port, "/big.bin");
        assert_eq!(r.status, 200);
        assert!(matches!(end, End::Complete), "{end:?} after {n} bytes");
        assert_eq!(n, 64 * MIB as u64);
        assert_eq!(got, sum);
    }
    no_programs_left(&nginx);
    nginx.stop();
}
