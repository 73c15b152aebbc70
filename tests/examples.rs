//! Every configuration in nginx-conf/ is loaded by nginx (`nginx -t`; the hardened ImageMagick
//! recipe with its absolute paths moved to a temporary site), and the demo's is served
//! for real: thumbnails checked with ImageMagick's identify, streams byte-counted. So is the
//! opening example of README.md, and pool.conf with the transformers of examples/pool/.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn conf_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("nginx-conf");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    files.sort();
    files
}

/// A configuration of nginx-conf/ as nginx can load it here, in `prefix`: the hardened
/// ImageMagick recipe names absolute paths that must exist (its site under /srv/www, its policy
/// installed under /usr/local/lib/nginx-transform/imagemagick); they become a site made in the
/// prefix and examples/imagemagick (tests/imagemagick_sandbox.rs serves it so).
fn loadable(conf: &Path, prefix: &Path) -> PathBuf {
    const SITE: &str = "/srv/www";
    const POLICY_DIR: &str = "/usr/local/lib/nginx-transform/imagemagick";
    let text = std::fs::read_to_string(conf).unwrap();
    if !text.contains(SITE) {
        return conf.to_path_buf();
    }
    let site = prefix.join("site");
    for dir in ["html/images", "html/cache", "magick-tmp"] {
        std::fs::create_dir_all(site.join(dir)).unwrap();
    }
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/imagemagick");
    let text = text
        .replace(SITE, site.to_str().unwrap())
        .replace(POLICY_DIR, policy.to_str().unwrap());
    let path = prefix.join(conf.file_name().unwrap());
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn every_example_configuration_loads() {
    let files = conf_files();
    assert!(files.len() >= 2, "examples: {files:?}");
    for conf in files {
        let prefix = example_prefix();
        let out = Command::new(nginx_binary())
            .arg("-t")
            .arg("-p")
            .arg(&prefix)
            .arg("-e")
            .arg(prefix.join("logs/error.log"))
            .arg("-c")
            .arg(loadable(&conf, &prefix))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} does not load: {}",
            conf.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_dir_all(prefix).ok();
    }
}

/// Dimensions of an image, by ImageMagick's identify.
fn identify(image: &[u8]) -> String {
    let mut child = Command::new("identify")
        .args(["-format", "%m %wx%h", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("identify");
    child.stdin.take().unwrap().write_all(image).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The opening example of README.md: its first `nginx` block.
fn readme_example() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let open = "```nginx\n";
    let start = readme.find(open).expect("an nginx block in README.md") + open.len();
    let len = readme[start..].find("```").expect("the end of the block");
    readme[start..start + len].to_string()
}

#[test]
fn the_readme_opening_example_is_a_complete_configuration() {
    let s = ExampleServer::start_text("readme.conf", &readme_example());
    let (ok, jpg) = curl(&["-sf", &s.url("/thumb/rose.jpg?size=120x80")]);
    assert!(ok, "thumbnail request failed");
    let id = identify(&jpg);
    assert!(id.starts_with("JPEG "), "not a JPEG: {id}");
    let code = |path: &str| {
        let (_, out) = curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}", &s.url(path)]);
        String::from_utf8(out).unwrap()
    };
    assert_eq!(code("/thumb/rose.jpg?size=huge"), "400", "unvalidated size");
    assert_eq!(code("/thumb/rose.jpg"), "400", "no size");
    s.stop();
}

#[test]
fn demo_configuration_serves_thumbnails_and_streams() {
    for name in ["demo.conf", "minimal.conf"] {
        let s = ExampleServer::start(name);
        let (ok, jpg) = curl(&["-sf", &s.url("/thumb/rose.jpg?size=120x80")]);
        assert!(ok, "{name}: thumbnail request failed");
        let id = identify(&jpg);
        assert!(id.starts_with("JPEG "), "{name}: not a JPEG: {id}");
        let (w, h) = id[5..]
            .split_once('x')
            .map(|(w, h)| (w.parse::<u32>().unwrap(), h.parse::<u32>().unwrap()))
            .unwrap();
        assert!(
            w <= 120 && h <= 80 && (w == 120 || h == 80),
            "{name}: thumbnail is {w}x{h}"
        );

        let code = |path: &str| {
            let (_, out) = curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}", &s.url(path)]);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            code("/thumb/rose.jpg?size=huge"),
            "400",
            "{name}: unvalidated size"
        );
        assert_eq!(
            code("/thumb/rose.jpg?size=-write"),
            "400",
            "{name}: option injection"
        );
        assert_eq!(
            code("/thumb/none.jpg?size=10x10"),
            "404",
            "{name}: missing picture"
        );

        if name == "demo.conf" {
            let (ok, png) = curl(&["-sf", &s.url("/png/logo.jpg")]);
            assert!(ok);
            assert!(identify(&png).starts_with("PNG "), "PNG conversion");
            for path in ["/stream?bytes=50000000", "/stream-buffered?bytes=50000000"] {
                let (ok, out) = curl(&[
                    "-sf",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{size_download}",
                    &s.url(path),
                ]);
                assert!(ok);
                assert_eq!(String::from_utf8(out).unwrap(), "50000000", "{path}");
            }
            let (ok, out) = curl(&["-sf", &s.url("/vmstat")]);
            assert!(ok);
            assert_eq!(
                String::from_utf8(out).unwrap().lines().count(),
                7,
                "vmstat: 2 header lines, 5 samples"
            );
        }
        s.stop();
    }
}

/// Where nginx-conf/pool.conf says the transformers are installed.
const POOL_INSTALL_DIR: &str = "/usr/local/lib/nginx-transform";

/// A JSON string as Python's `json.dumps` writes it (and the Node transformer too), for ASCII.
fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `[["a","b"],...]`
fn json_pairs(pairs: &[(&str, &str)]) -> String {
    let items: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("[{},{}]", json_str(k), json_str(v)))
        .collect();
    format!("[{}]", items.join(","))
}

/// The number after `"key":` in a JSON text.
fn json_number(body: &[u8], key: &str) -> u32 {
    let text = String::from_utf8_lossy(body);
    let tag = format!("\"{key}\":");
    let at = text
        .find(&tag)
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        + tag.len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap_or_else(|_| panic!("{key} in {text}"))
}

/// The parent pid and the command line of a process.
fn parent_of(pid: u32) -> (u32, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let ppid = status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let cmd = std::fs::read(format!("/proc/{ppid}/cmdline")).unwrap_or_default();
    (ppid, String::from_utf8_lossy(&cmd).replace('\0', " "))
}

/// nginx-conf/pool.conf served for real, with examples/pool/transformer.py and transformer.js
/// where the recipe installs them: each answers several GETs (its JSON, byte for byte), POSTs
/// (the body upper-cased) and a HEAD on one keep-alive connection, all from the same process
/// (the same pid, its request count going up by one), a child of nginx's worker; the access log
/// says the same ($transform_pid, $transform_requests), the error log names the processes it
/// started, and they are gone once nginx stopped.
#[test]
fn pool_configuration_keeps_the_python_and_node_transformers_alive() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let examples = root.join("examples/pool");
    let conf = std::fs::read_to_string(root.join("nginx-conf/pool.conf")).unwrap();
    assert!(
        conf.contains(POOL_INSTALL_DIR),
        "pool.conf installs in {POOL_INSTALL_DIR}"
    );
    let conf = conf.replace(POOL_INSTALL_DIR, examples.to_str().unwrap());
    let s = ExampleServer::start_text("pool.conf", &conf);

    let mut pids = Vec::new();
    for (location, runtime, pool) in [("/py/", "python", "python"), ("/node/", "node", "node")] {
        let mut c = Client::connect(s.port);
        let mut pid = None;
        let mut served = 0;
        for i in 1..=4u32 {
            // GET: the JSON the transformer writes, computed here from what was sent.
            let path = format!("{location}info/{i}");
            let n = i.to_string();
            let query = [("n", n.as_str()), ("word", "a b"), ("empty", "")];
            let marker = format!("{runtime} #{i} \"quoted\" \\ back");
            c.send(&format!(
                "GET {path}?n={i}&word=a+b&empty HTTP/1.1\r\nHost: localhost\r\n\
                 X-Test: {marker}\r\n\r\n"
            ));
            let r = c.read_response(false);
            assert_eq!(r.status, 200, "{runtime} GET #{i}: {r:?}");
            assert!(r.complete, "{runtime} GET #{i}: {r:?}");
            assert_eq!(r.header("Content-Type"), Some("application/json"));
            served += 1;
            let got = json_number(&r.body, "pid");
            let want = format!(
                "{{\"runtime\":{},\"pid\":{got},\"requests\":{served},\"method\":\"GET\",\
                 \"path\":{},\"query\":{},\"headers\":{}}}\n",
                json_str(runtime),
                json_str(&path),
                json_pairs(&query),
                json_pairs(&[("Host", "localhost"), ("X-Test", &marker)]),
            );
            assert_eq!(
                String::from_utf8_lossy(&r.body),
                want,
                "{runtime} GET #{i}: the JSON, byte for byte"
            );
            assert_eq!(*pid.get_or_insert(got), got, "{runtime}: another process");

            // POST: every byte value, in a body of a few KiB: a-z upper-cased, the rest as sent.
            let body: Vec<u8> = (0..=255u8).cycle().take(5000 + i as usize * 997).collect();
            let head = format!(
                "POST {location}upper HTTP/1.1\r\nHost: localhost\r\n\
                 Content-Type: application/x-test-{i}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let mut raw = head.into_bytes();
            raw.extend_from_slice(&body);
            c.stream().write_all(&raw).unwrap();
            let r = c.read_response(false);
            assert_eq!(r.status, 200, "{runtime} POST #{i}: {r:?}");
            let content_type = format!("application/x-test-{i}");
            assert_eq!(r.header("Content-Type"), Some(content_type.as_str()));
            assert!(
                r.body == body.to_ascii_uppercase(),
                "{runtime} POST #{i}: {} bytes back, not the {} sent upper-cased",
                r.body.len(),
                body.len()
            );
            served += 1;
        }
        // HEAD: the GET's status and type, no body (the Python one says the GET's length, the
        // Node one, which frames bodies in chunks, no length); it counts as a request.
        c.send(&format!(
            "HEAD {location}head HTTP/1.1\r\nHost: localhost\r\n\r\n"
        ));
        let r = c.read_response(true);
        assert_eq!(r.status, 200, "{runtime} HEAD: {r:?}");
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        if runtime == "python" {
            let length: usize = r.header("Content-Length").unwrap_or("0").parse().unwrap();
            assert!(length > 100, "{runtime} HEAD: Content-Length {length}");
        }
        served += 1;
        // An unsupported method: the transformer's own 405.
        c.send(&format!(
            "DELETE {location}x HTTP/1.1\r\nHost: localhost\r\n\r\n"
        ));
        let r = c.read_response(false);
        assert_eq!(r.status, 405, "{runtime} DELETE: {r:?}");
        assert_eq!(r.header("Allow"), Some("GET, HEAD, POST, PUT"));
        served += 1;
        let r = c.get(&format!("{location}last"));
        served += 1;
        let pid = pid.unwrap();
        assert_eq!(
            json_number(&r.body, "pid"),
            pid,
            "{runtime}: another process"
        );
        assert_eq!(
            json_number(&r.body, "requests"),
            served,
            "{runtime}: its count"
        );

        let (ppid, parent) = parent_of(pid);
        assert!(
            parent.starts_with("nginx: worker process"),
            "{runtime} process {pid}: its parent {ppid} is {parent:?}"
        );
        // The log line of a request is written once its response went out: wait for the last.
        let access = s.prefix.join("logs/access.log");
        let read = || std::fs::read_to_string(&access).unwrap_or_default();
        let count = |log: &str| log.lines().filter(|l| l.contains(location)).count() as u32;
        wait_until(Duration::from_secs(5), || count(&read()) >= served);
        let log = read();
        let mine: Vec<&str> = log.lines().filter(|l| l.contains(location)).collect();
        assert_eq!(mine.len() as u32, served, "{log}");
        for (k, line) in mine.iter().enumerate() {
            let want = format!("pid={pid} requests={} ", k + 1);
            assert!(line.contains(&want), "{runtime}: {line:?} lacks {want:?}");
        }
        let errors = std::fs::read_to_string(s.prefix.join("logs/error.log")).unwrap();
        let started = format!("transform pool \"{pool}\" started process {pid}");
        assert!(errors.contains(&started), "{started:?} not in {errors}");
        pids.push(pid);
    }
    s.stop();
    // A graceful quit retires the processes (stdin closed: they exit on their own).
    for pid in pids {
        assert!(
            wait_until(Duration::from_secs(10), || !matches!(
                proc_state(pid),
                Some(c) if c != 'Z'
            )),
            "process {pid} outlived nginx"
        );
    }
}
