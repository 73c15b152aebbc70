//! The topologies of the recipes, served for real: two module nodes sharing a store directory
//! behind a front nginx that hashes the path onto them (three nginx instances on one machine, then
//! nginx-conf/two-nodes.conf as it is), and the single-node thumbnail recipe
//! (nginx-conf/thumbnails.conf). A herd of identical cold requests runs the program once, every
//! response is byte-exact, and the stored file serves every later request, on either node.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;

/// `n` identical GETs of `path` at once, each on a connection of its own (all connected before
/// the first is sent), in the order of the clients.
fn herd(port: u16, path: &str, n: usize) -> Vec<Response> {
    let start = Arc::new(Barrier::new(n));
    let clients: Vec<_> = (0..n)
        .map(|_| {
            let (start, path) = (start.clone(), path.to_string());
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                start.wait();
                c.get(&path)
            })
        })
        .collect();
    clients.into_iter().map(|c| c.join().unwrap()).collect()
}

/// Asserts that every response is a complete 200 whose body is `expect`.
#[track_caller]
fn assert_all_exact(responses: &[Response], expect: &[u8]) {
    for (i, r) in responses.iter().enumerate() {
        assert_eq!(r.status, 200, "response {i}: {:?}", r.headers);
        assert!(r.complete, "response {i} ended {:?}", r.end);
        assert!(
            r.body == expect,
            "response {i}: {} bytes (sha256 {}), not the {} expected (sha256 {})",
            r.body.len(),
            sha256(&r.body),
            expect.len(),
            sha256(expect)
        );
    }
}

/// A directory or file anyone may write (nginx's workers run as nobody under root).
fn open_to_all(path: &Path) {
    let mode = if path.is_dir() { 0o777 } else { 0o666 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The runs a program counted, one line each.
fn runs(count: &Path) -> usize {
    std::fs::read_to_string(count).unwrap().lines().count()
}

/// Waits for `path` to be published; returns its content.
#[track_caller]
fn published(path: &Path) -> Vec<u8> {
    assert!(
        wait_until(Duration::from_secs(5), || path.exists()),
        "{} was not published",
        path.display()
    );
    std::fs::read(path).unwrap()
}

/// A module node: GET /t/NAME serves the stored file STORE/t/NAME, or runs the program (which
/// counts its run in COUNT, works 200 ms and writes 200000 bytes) under the lock, storing it.
fn node(store: &Path, count: &Path) -> Nginx {
    let body = r#"
        transform_lock_zone topology:1m;
        server {
            listen 127.0.0.1:{PORT};
            root {STORE};
            # Per node: a node removes the temporary files of processes it does not see.
            transform_temp_path {PREFIX}/transform_temp;
            location /t/ {
                try_files $uri @make;
            }
            location @make {
                transform_exec /bin/sh -c "echo run >> {COUNT}; sleep 0.2; exec {HELPER} gen 200000";
                transform_store on;
                transform_lock on;
            }
        }"#
    .replace("{STORE}", &store.display().to_string())
    .replace("{COUNT}", &count.display().to_string());
    Nginx::start_full("", &body, "info")
}

/// GET requests (of `/t/`) a node's access log holds.
fn node_requests(node: &Nginx) -> Vec<String> {
    node.access_log()
        .lines()
        .filter(|l| l.contains("\"GET /t/"))
        .map(String::from)
        .collect()
}

#[test]
fn a_herd_through_the_front_runs_the_program_once_across_two_nodes_sharing_the_store() {
    let (store, counts) = (temp_dir("store"), temp_dir("count"));
    open_to_all(&store);
    let count = counts.join("runs");
    std::fs::write(&count, "").unwrap();
    open_to_all(&count);
    let nodes = [node(&store, &count), node(&store, &count)];
    let front = Nginx::start_full(
        "",
        &format!(
            "upstream nodes {{
                 hash $uri consistent;
                 server 127.0.0.1:{};
                 server 127.0.0.1:{};
             }}
             server {{
                 listen 127.0.0.1:{{PORT}};
                 location / {{
                     proxy_pass http://nodes;
                 }}
             }}",
            nodes[0].port, nodes[1].port
        ),
        "info",
    );
    let expect = helper_output(&["gen", "200000"]);
    assert_eq!(expect.len(), 200_000);

    // 50 identical cold requests through the front: one program, 50 byte-exact responses.
    let responses = herd(front.port, "/t/cold.bin", 50);
    assert_all_exact(&responses, &expect);
    assert!(wait_until(Duration::from_secs(5), || runs(&count) >= 1));
    std::thread::sleep(Duration::from_millis(300)); // a second program would have counted itself
    assert_eq!(runs(&count), 1, "program runs across both nodes");
    let stored = published(&store.join("t/cold.bin"));
    assert!(stored == expect, "the stored file is not the output");
    // The front sent every request for the path to one node (which logs each as it ends).
    let per_node = || -> Vec<usize> { nodes.iter().map(|n| node_requests(n).len()).collect() };
    wait_until(Duration::from_secs(5), || {
        per_node().iter().sum::<usize>() >= 50
    });
    let per_node = per_node();
    assert!(
        per_node.contains(&50) && per_node.contains(&0),
        "requests per node: {per_node:?}"
    );

    // The shared store: either node serves the file without running the program.
    for n in &nodes {
        let mut c = Client::connect(n.port);
        let r = c.get("/t/cold.bin");
        assert_eq!(r.status, 200);
        assert!(r.body == expect, "node {} served other bytes", n.port);
    }
    assert_eq!(runs(&count), 1, "a stored file ran its program again");

    // Different paths spread over both nodes: each is made once, by one node or the other.
    for i in 0..16 {
        let mut c = Client::connect(front.port);
        let r = c.get(&format!("/t/k{i}.bin"));
        assert_eq!(r.status, 200, "/t/k{i}.bin");
        assert!(r.body == expect, "/t/k{i}.bin: {} bytes", r.body.len());
    }
    assert_eq!(runs(&count), 17, "one run per new path");
    for (i, n) in nodes.iter().enumerate() {
        let made = node_requests(n)
            .iter()
            .filter(|l| l.contains("GET /t/k"))
            .count();
        assert!(
            made > 0,
            "node {i} received none of 16 paths: not a two-node topology"
        );
    }

    front.stop();
    for n in nodes {
        n.stop();
    }
    std::fs::remove_dir_all(store).ok();
    std::fs::remove_dir_all(counts).ok();
}

/// A configuration of nginx-conf/ with a log format naming the program each request ran
/// (`$transform_pid`), so that the runs can be counted; `ports` replaces each `(from, to)`.
fn with_run_log(name: &str, ports: &[(&str, u16)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("nginx-conf")
        .join(name);
    let mut conf = std::fs::read_to_string(path).unwrap();
    let log = "    access_log logs/access.log;\n";
    assert!(conf.contains(log), "{name}: no access_log line");
    conf = conf.replace(
        log,
        "    log_format runs \"$uri $status $transform_pid\";\n    \
         access_log logs/access.log runs;\n",
    );
    for (from, to) in ports {
        assert!(conf.contains(from), "{name}: no {from}");
        conf = conf.replace(from, &format!("127.0.0.1:{to}"));
    }
    conf
}

/// The program runs the access log shows for `uri`: distinct `$transform_pid` values.
fn program_runs(prefix: &Path, uri: &str) -> usize {
    let log = std::fs::read_to_string(prefix.join("logs/access.log")).unwrap_or_default();
    let mut pids: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix(uri)?.strip_prefix(' '))
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|pid| *pid != "-")
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids.len()
}

/// The store of an example prefix, open to the workers (the recipes say so).
fn example_store(prefix: &Path) -> PathBuf {
    let cache = prefix.join("html/cache");
    std::fs::create_dir_all(&cache).unwrap();
    open_to_all(&cache);
    cache
}

/// Asserts, with ImageMagick's identify, that `image` is a JPEG thumbnail fitting 120x80.
#[track_caller]
fn assert_thumbnail(image: &Path) {
    let out = Command::new("identify")
        .args(["-format", "%m %w %h"])
        .arg(image)
        .output()
        .expect("identify (ImageMagick)");
    let id = String::from_utf8_lossy(&out.stdout).into_owned();
    let f: Vec<&str> = id.split(' ').collect();
    let (w, h): (u32, u32) = match f[..] {
        ["JPEG", w, h] => (w.parse().unwrap(), h.parse().unwrap()),
        _ => panic!("{}: not a JPEG: {id:?}", image.display()),
    };
    assert!(
        w <= 120 && h <= 80 && (w == 120 || h == 80),
        "thumbnail is {w}x{h}"
    );
}

#[test]
fn two_nodes_conf_makes_a_thumbnail_once_for_a_herd_and_both_nodes_serve_it() {
    let (node1, node2) = (free_port(), free_port());
    let conf = with_run_log(
        "two-nodes.conf",
        &[("127.0.0.1:8081", node1), ("127.0.0.1:8082", node2)],
    );
    let s = ExampleServer::start_text("two-nodes.conf", &conf);
    let cache = example_store(&s.prefix);
    let uri = "/thumb/120x80/rose.jpg";

    let responses = herd(s.port, uri, 50);
    let stored = published(&cache.join("thumb/120x80/rose.jpg"));
    assert_all_exact(&responses, &stored);
    assert_thumbnail(&cache.join("thumb/120x80/rose.jpg"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(program_runs(&s.prefix, uri), 1, "convert runs for the herd");

    for port in [node1, node2] {
        let mut c = Client::connect(port);
        let r = c.get(uri);
        assert_eq!(r.status, 200, "node on {port}");
        assert!(r.body == stored, "node on {port} served other bytes");
    }
    assert_eq!(
        program_runs(&s.prefix, uri),
        1,
        "the stored file ran convert again"
    );
    s.stop();
}

#[test]
fn thumbnails_conf_stores_once_serves_the_file_and_remakes_it_once_deleted() {
    let conf = with_run_log("thumbnails.conf", &[]);
    let s = ExampleServer::start_text("thumbnails.conf", &conf);
    let cache = example_store(&s.prefix);
    let uri = "/thumb/120x80/rose.jpg";
    let file = cache.join("thumb/120x80/rose.jpg");

    let responses = herd(s.port, uri, 20);
    let stored = published(&file);
    assert_all_exact(&responses, &stored);
    assert_thumbnail(&file);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(program_runs(&s.prefix, uri), 1, "convert runs for the herd");

    // Later requests: nginx's static handler on the stored file (it validates it too).
    let mut c = Client::connect(s.port);
    let r = c.get(uri);
    assert_eq!(r.status, 200);
    assert!(r.body == stored);
    assert!(r.header("Last-Modified").is_some() && r.header("ETag").is_some());
    assert_eq!(program_runs(&s.prefix, uri), 1);

    // Invalidation: delete the file; the next request makes it again.
    std::fs::remove_file(&file).unwrap();
    let r = c.get(uri);
    assert_eq!(r.status, 200);
    assert!(r.body == stored, "the remade thumbnail differs");
    assert!(published(&file) == stored);
    // (The access log line is written after the last byte is sent: it may trail the body.)
    wait_until(Duration::from_secs(3), || program_runs(&s.prefix, uri) >= 2);
    assert_eq!(program_runs(&s.prefix, uri), 2, "deleted, made again once");

    // Only validated URIs reach the program.
    for bad in [
        "/thumb/huge/rose.jpg",
        "/thumb/120x80/none.jpg",
        "/thumb/-write/rose.jpg",
    ] {
        assert_eq!(c.get(bad).status, 404, "{bad}");
    }
    s.stop();
}
