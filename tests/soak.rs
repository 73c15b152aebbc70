//! Soak: many mixed requests (normal, failing, aborted, timed out) from several clients at once;
//! afterwards no zombie, the worker's descriptors back to baseline, its RSS near baseline, and no
//! alert in the log. `TRANSFORM_SOAK_REQUESTS` sets the count (default 20,000).

mod common;

use std::time::{Duration, Instant};

use common::*;

const THREADS: usize = 8;

#[derive(Default, Debug)]
struct Tally {
    ok: usize,
    failed: usize,
    aborted: usize,
    timed_out: usize,
}

fn one_client(port: u16, requests: usize, want_ok: &[u8]) -> Tally {
    let mut tally = Tally::default();
    let mut conn: Option<Client> = None;
    for i in 0..requests {
        match i % 10 {
            0..=6 => {
                let c = conn.get_or_insert_with(|| Client::connect(port));
                let r = c.get("/ok");
                assert_eq!(r.status, 200);
                assert!(r.complete && r.body == want_ok, "body of /ok");
                if r.header("Connection") == Some("close") {
                    conn = None;
                }
                tally.ok += 1;
            }
            7 => {
                let r = Client::connect(port).get("/fail");
                assert_eq!(r.status, 502);
                tally.failed += 1;
            }
            8 => {
                let mut c = Client::connect(port);
                c.send("GET /abort HTTP/1.1\r\nHost: x\r\n\r\n");
                assert_eq!(c.read_head().status, 200);
                tally.aborted += 1;
            }
            _ => {
                let r = Client::connect(port).get("/timeout");
                assert_eq!(r.status, 504);
                tally.timed_out += 1;
            }
        }
    }
    tally
}

#[test]
fn soak_mixed_requests_leave_nothing_behind() {
    let total: usize = std::env::var("TRANSFORM_SOAK_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    // Debug logging of 20,000 requests would be gigabytes: warn level here.
    let nginx = Nginx::start_full(
        "",
        "server { listen 127.0.0.1:{PORT};
             location /ok { transform_exec {HELPER} gen 2000; }
             location /fail { transform_exec {HELPER} fail-after 100 1; }
             location /abort { transform_commit_size 0; transform_exec {HELPER} hang-after 100; }
             location /timeout {
                 transform_read_timeout 50ms; transform_exec {HELPER} hang-after 0;
             } }",
        "warn",
    );
    let worker = nginx.worker_pid();
    let want_ok = helper_output(&["gen", "2000"]);
    // Warm up: logs opened, pools and allocator at their working size.
    one_client(nginx.port, 200, &want_ok);
    assert!(wait_until(Duration::from_secs(3), || children_of(worker).is_empty()));
    let fds_before = stable_fd_count(worker);
    let rss_before = rss_kib(worker);
    let failures = || {
        nginx
            .log_lines("error")
            .iter()
            .filter(|l| l.contains("exited with code 1"))
            .count()
    };
    let failures_before = failures();

    let start = Instant::now();
    let per_thread = total.div_ceil(THREADS);
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| s.spawn(|| one_client(nginx.port, per_thread, &want_ok)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let took = start.elapsed();
    let sum = tallies.iter().fold(Tally::default(), |a, t| Tally {
        ok: a.ok + t.ok,
        failed: a.failed + t.failed,
        aborted: a.aborted + t.aborted,
        timed_out: a.timed_out + t.timed_out,
    });
    let done = sum.ok + sum.failed + sum.aborted + sum.timed_out;
    assert!(done >= total, "{done} of {total} requests");
    eprintln!("soak: {done} requests in {took:?}: {sum:?}");

    assert_eq!(nginx.worker_pid(), worker, "the worker never restarted");
    assert!(
        wait_until(Duration::from_secs(5), || children_of(worker).is_empty()),
        "programs left after the soak: {:?}",
        children_of(worker)
    );
    assert!(
        wait_until(Duration::from_secs(3), || fd_count(worker) == fds_before),
        "worker fds {} vs {fds_before} before",
        fd_count(worker)
    );
    let rss_after = rss_kib(worker);
    assert!(
        rss_after < rss_before + 16 * 1024,
        "worker RSS {rss_after} KiB after, {rss_before} KiB before"
    );
    assert_eq!(
        failures() - failures_before,
        sum.failed,
        "one error line per failing program"
    );
    nginx.stop();
}
