//! Failure modes: each asserts the status, the log line, no zombie or orphan left, and the
//! worker's descriptors back to where they were.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn server(locations: &str) -> String {
    format!("server {{ listen 127.0.0.1:{{PORT}}; {locations} }}")
}

/// Waits until the worker has no child and its descriptor count is back to `fds`.
fn settled(nginx: &Nginx, fds: usize) {
    let worker = nginx.worker_pid();
    assert!(
        wait_until(Duration::from_secs(3), || children_of(worker).is_empty()),
        "programs left: {:?}",
        children_of(worker)
    );
    assert!(
        wait_until(Duration::from_secs(2), || fd_count(worker) == fds),
        "worker fds {} vs {fds} before",
        fd_count(worker)
    );
}

/// The worker's descriptor count once a first request has opened the logs.
fn baseline(nginx: &Nginx) -> usize {
    let mut c = Client::connect(nginx.port);
    c.send("GET /warmup HTTP/1.0\r\n\r\n");
    c.read_response(false);
    let worker = nginx.worker_pid();
    assert!(wait_until(Duration::from_secs(2), || children_of(worker).is_empty()));
    stable_fd_count(worker)
}

/// Once the held programs are gone, a new request succeeds and nothing is left behind.
fn recovers(nginx: &Nginx, fds: usize) {
    let worker = nginx.worker_pid();
    assert!(wait_until(Duration::from_secs(3), || children_of(worker).is_empty()));
    assert_eq!(
        Client::connect(nginx.port).get("/quick").status,
        200,
        "recovered"
    );
    settled(nginx, fds);
}

fn has_line(nginx: &Nginx, level: &str, text: &str) -> bool {
    nginx.log_lines(level).iter().any(|l| l.contains(text))
}

#[test]
fn total_timeout_before_and_after_the_commit() {
    let nginx = Nginx::start(&server(
        "location /warmup { transform_exec /bin/true; }
         transform_timeout 600ms; transform_read_timeout 10s;
         location /held { transform_commit_timeout 10s; transform_exec {HELPER} drip 100 100; }
         location /streamed { transform_commit_size 0; transform_exec {HELPER} drip 100 100; }",
    ));
    let fds = baseline(&nginx);
    let start = Instant::now();
    let r = Client::connect(nginx.port).get("/held");
    assert_eq!(
        r.status, 504,
        "a program still held under the commit size: 504"
    );
    assert!(start.elapsed() < Duration::from_secs(3));
    let mut c = Client::connect(nginx.port);
    c.send("GET /streamed HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_broken(Duration::from_secs(5));
    assert_eq!(r.status, 200, "cut by transform_timeout");
    let lines = nginx.log_lines("error");
    let n = lines
        .iter()
        .filter(|l| l.contains("timed out (transform_timeout 600ms)"))
        .count();
    assert_eq!(n, 2, "{lines:?}");
    settled(&nginx, fds);
    nginx.stop();
}

#[test]
fn a_program_ignoring_sigterm_is_killed_after_the_kill_timeout() {
    let nginx = Nginx::start(&server(
        "location /warmup { transform_exec /bin/true; }
         transform_kill_timeout 800ms; transform_commit_size 0;
         location /stubborn { transform_exec {HELPER} ignore-term 10; }",
    ));
    let fds = baseline(&nginx);
    let worker = nginx.worker_pid();
    let mut c = Client::connect(nginx.port);
    c.send("GET /stubborn HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read_head().status, 200);
    let kid = children_of(worker)[0];
    let left = Instant::now();
    drop(c);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        proc_state(kid).map(|s| s != 'Z'),
        Some(true),
        "SIGTERM ignored: still running"
    );
    assert!(
        wait_until(Duration::from_secs(2), || proc_state(kid).is_none()),
        "not killed"
    );
    let took = left.elapsed();
    assert!(
        took >= Duration::from_millis(700),
        "killed after {took:?}, before the grace"
    );
    settled(&nginx, fds);
    nginx.stop();
}

#[test]
fn a_client_that_stops_reading_hits_the_send_timeout() {
    let nginx = Nginx::start(&server(
        "location /warmup { transform_exec /bin/true; }
         transform_send_timeout 500ms;
         location /big { transform_exec {HELPER} gen 1000000000; }",
    ));
    let fds = baseline(&nginx);
    let mut c = Client::connect(nginx.port);
    c.send("GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read_head().status, 200);
    // Read nothing more.
    assert!(wait_until(Duration::from_secs(5), || has_line(
        &nginx,
        "info",
        "client timed out (transform_send_timeout 500ms)"
    )));
    settled(&nginx, fds);
    drop(c);
    nginx.stop();
}

#[test]
fn a_grandchild_holding_stdout_does_not_hold_the_response() {
    let nginx = Nginx::start(&server(
        "location /warmup { transform_exec /bin/true; }
         location /gc { transform_exec {HELPER} grandchild 5000; }",
    ));
    let fds = baseline(&nginx);
    let start = Instant::now();
    let r = Client::connect(nginx.port).get("/gc");
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(r.body, helper_output(&["gen", "5000"]));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "held for {:?}",
        start.elapsed()
    );
    assert!(has_line(
        &nginx,
        "info",
        "exited and left processes in its group; they are killed"
    ));
    let log = nginx.error_log();
    let gc: u32 = log
        .lines()
        .find_map(|l| l.split("transform stderr: grandchild ").nth(1))
        .and_then(|rest| rest.split(',').next())
        .and_then(|p| p.trim().parse().ok())
        .expect("grandchild pid in the log");
    assert!(
        wait_until(Duration::from_secs(2), || proc_state(gc).is_none()),
        "grandchild orphaned"
    );
    settled(&nginx, fds);
    nginx.stop();
}

#[test]
fn exec_failures_are_502_with_the_errno() {
    let dir = temp_dir("noexec");
    let script = dir.join("not-executable");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let args = vec!["$arg_a"; 400].join(" ");
    let nginx = Nginx::start(&server(&format!(
        "large_client_header_buffers 4 16k;
         location /warmup {{ transform_exec /bin/true; }}
         location /run {{ transform_exec $arg_p; }}
         location /big {{ transform_exec /bin/true {args}; }}"
    )));
    let fds = baseline(&nginx);
    let r = Client::connect(nginx.port).get(&format!("/run?p={}", script.display()));
    assert_eq!(r.status, 502);
    let want = format!(
        "execve() \"{}\" failed (13: Permission denied)",
        script.display()
    );
    assert!(has_line(&nginx, "error", &want), "{want}");
    // 400 arguments of 7000 bytes: over the kernel's argument space.
    let a = "x".repeat(7000);
    let r = Client::connect(nginx.port).get(&format!("/big?a={a}"));
    assert_eq!(r.status, 502);
    assert!(has_line(
        &nginx,
        "error",
        "execve() \"/bin/true\" failed (7: Argument list too long)"
    ));
    settled(&nginx, fds);
    nginx.stop();
}

#[test]
fn fork_failing_under_rlimit_nproc_is_503_and_recovers() {
    let nginx = Nginx::start(&server(
        "location /warmup { transform_exec /bin/true; }
         transform_commit_size 0;
         location /quick { transform_exec /bin/true; }",
    ));
    let fds = baseline(&nginx);
    let worker = nginx.worker_pid();
    // RLIMIT_NPROC does not bind root. nginx started by root runs its workers as "nobody" (its
    // default user); started by another user, as that user.
    assert_ne!(
        ids_of(worker).0,
        0,
        "the worker runs as root, which RLIMIT_NPROC does not bind: this test needs a worker \
         of another user (nginx's default `user nobody` when started by root)"
    );
    // The worker's soft RLIMIT_NPROC goes to 0 while it runs (as its own user may do): its user
    // has processes (the worker), so every clone() it makes fails with EAGAIN.
    let saved = proc_limit(worker, "Max processes");
    set_rlimit_of(worker, libc::RLIMIT_NPROC, (0, saved.1));
    let r = Client::connect(nginx.port).get("/quick");
    set_rlimit_of(worker, libc::RLIMIT_NPROC, saved);
    assert_eq!(r.status, 503);
    assert!(
        has_line(&nginx, "error", "clone() \""),
        "{:?}",
        nginx.log_lines("error")
    );
    assert!(has_line(
        &nginx,
        "error",
        "failed (11: Resource temporarily unavailable)"
    ));
    recovers(&nginx, fds);
    nginx.stop();
}

#[test]
fn running_out_of_descriptors_is_503_and_recovers() {
    let nginx = Nginx::start_with(
        "worker_rlimit_nofile 48;",
        &server(
            "location /warmup { transform_exec /bin/true; }
             transform_commit_size 0;
             location /hang { transform_exec {HELPER} hang-after 10; }
             location /quick { transform_exec /bin/true; }",
        ),
    );
    let fds = baseline(&nginx);
    let mut held = Vec::new();
    let mut refused = false;
    for _ in 0..20 {
        let mut c = Client::connect(nginx.port);
        c.send("GET /hang HTTP/1.1\r\nHost: x\r\n\r\n");
        let status = c.read_head().status;
        if status == 503 {
            refused = true;
            break;
        }
        assert_eq!(status, 200);
        held.push(c);
    }
    assert!(
        refused,
        "never ran out of descriptors with {} programs",
        held.len()
    );
    assert!(
        has_line(&nginx, "error", "(24: Too many open files)"),
        "{:?}",
        nginx.log_lines("error")
    );
    drop(held);
    recovers(&nginx, fds);
    nginx.stop();
}

#[test]
fn reload_under_load_lets_streams_finish() {
    let nginx = Nginx::start(&server(
        "transform_commit_size 0;
         location /drip { transform_exec {HELPER} drip 6 200; }
         location /quick { transform_exec /bin/true; }",
    ));
    let old = nginx.worker_pid();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(nginx.port);
        c.send("GET /drip HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert_eq!(c.read_head().status, 200);
        streams.push(c);
    }
    // SAFETY: signalling our own nginx master.
    unsafe { libc::kill(nginx.master_pid() as i32, libc::SIGHUP) };
    // A new worker serves new requests while the old one finishes its streams.
    assert!(wait_until(Duration::from_secs(5), || nginx
        .worker_pids()
        .iter()
        .any(|&w| w != old)));
    assert_eq!(Client::connect(nginx.port).get("/quick").status, 200);
    for c in streams {
        drip_ends_whole(c);
    }
    old_worker_exits(old);
    nginx.stop();
}

/// Reads the rest of a `drip 6` response whose head was read: it must end whole (its last line
/// and the last chunk), not cut short by a reload.
fn drip_ends_whole(mut c: Client) {
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).expect("read the rest");
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.contains("line 5\n") && text.ends_with("0\r\n\r\n"),
        "cut short: {text:?}"
    );
}

/// The worker of the configuration before a reload exits once its streams are done.
fn old_worker_exits(old: u32) {
    assert!(
        wait_until(Duration::from_secs(5), || proc_state(old).is_none()),
        "old worker exits"
    );
}

/// The pid a `stubborn-grandchild` program reported on stderr (the last one in the log).
fn grandchild_pid(nginx: &Nginx) -> Option<u32> {
    nginx
        .error_log()
        .lines()
        .filter_map(|l| l.split("transform stderr: grandchild ").nth(1))
        .filter_map(|rest| rest.split(',').next())
        .filter_map(|p| p.trim().parse::<u32>().ok())
        .next_back()
}

#[test]
fn worker_shutdown_timeout_closes_streams_and_kills_their_programs() {
    let nginx = Nginx::start_with(
        "worker_shutdown_timeout 500ms;",
        &server(
            "transform_commit_size 0; transform_kill_timeout 300ms;
             location /hang { transform_exec {HELPER} hang-after 10; }
             location /stubborn { transform_exec {HELPER} ignore-term 10; }
             location /gc {
                 transform_exec /bin/sh -c \"trap '' TERM; exec {HELPER} stubborn-grandchild\";
             }",
        ),
    );
    let worker = nginx.worker_pid();
    let mut streams = Vec::new();
    for path in ["/hang", "/stubborn", "/gc"] {
        let mut c = Client::connect(nginx.port);
        c.send(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
        let head = c.read_head();
        assert_eq!(head.status, 200);
        streams.push((c, head));
    }
    let kids = children_of(worker);
    assert_eq!(kids.len(), 3);
    // The /gc program and its grandchild ignore SIGTERM, so both are still there when the worker
    // exits. PR_SET_PDEATHSIG then kills the program, but not the grandchild (no child of the
    // worker): only the module, killing each program's process group as it reaps it, ends it.
    let mut gc = None;
    assert!(wait_until(Duration::from_secs(2), || {
        gc = grandchild_pid(&nginx);
        gc.is_some()
    }));
    let gc = gc.unwrap();
    // SAFETY: signalling our own nginx master.
    unsafe { libc::kill(nginx.master_pid() as i32, libc::SIGQUIT) };
    let start = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || proc_state(worker).is_none()),
        "worker exits"
    );
    assert!(
        start.elapsed() > Duration::from_millis(400),
        "exited before worker_shutdown_timeout"
    );
    for (mut c, head) in streams {
        // Closed by the shutdown, not completed.
        c.read_broken_body(head, Duration::from_secs(5));
    }
    for kid in kids {
        assert!(
            wait_until(Duration::from_secs(2), || proc_state(kid).is_none()),
            "{kid} left"
        );
    }
    let gc_gone = wait_until(Duration::from_secs(2), || {
        matches!(proc_state(gc), None | Some('Z'))
    });
    if !gc_gone {
        // Leave nothing running, then fail.
        // SAFETY: the grandchild our test started through nginx.
        unsafe { libc::kill(gc as i32, libc::SIGKILL) };
    }
    assert!(
        gc_gone,
        "grandchild {gc} outlived the worker: the module did not kill the program's group"
    );
    // (nginx closes every connection: whichever of ours comes first ends the response, so
    // the module's own "worker shutdown" line may or may not be the one that did.)
    nginx.stop();
}

#[test]
fn an_endless_stderr_flood_does_not_stall_the_worker() {
    let nginx = Nginx::start_full(
        "",
        &server(
            "location /warmup { transform_exec /bin/true; }
             location /flood {
                 transform_timeout 1500ms; transform_exec {HELPER} stderr 1000000000 100 0 0;
             }
             location /quick { transform_exec /bin/true; }",
        ),
        "warn",
    );
    let fds = baseline(&nginx);
    let start = Instant::now();
    let flood = std::thread::spawn({
        let port = nginx.port;
        move || Client::connect(port).get("/flood").status
    });
    std::thread::sleep(Duration::from_millis(300));
    // The same worker still serves others while the flood goes on.
    let quick = Instant::now();
    assert_eq!(Client::connect(nginx.port).get("/quick").status, 200);
    assert!(
        quick.elapsed() < Duration::from_millis(1000),
        "served in {:?}",
        quick.elapsed()
    );
    assert_eq!(
        flood.join().unwrap(),
        504,
        "the total timeout fired during the flood"
    );
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "took {:?}",
        start.elapsed()
    );
    settled(&nginx, fds);
    nginx.stop();
}

#[test]
fn descendants_ignoring_sigterm_do_not_outlive_the_request() {
    let nginx = Nginx::start(&server(
        "location /warmup { transform_exec /bin/true; }
         transform_commit_size 0; transform_kill_timeout 5s;
         location /gc { transform_exec {HELPER} stubborn-grandchild; }",
    ));
    let fds = baseline(&nginx);
    let mut c = Client::connect(nginx.port);
    c.send("GET /gc HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read_head().status, 200);
    let mut gc = None;
    assert!(wait_until(Duration::from_secs(2), || {
        gc = grandchild_pid(&nginx);
        gc.is_some()
    }));
    let gc = gc.unwrap();
    drop(c);
    // The program dies of SIGTERM at once; its grandchild ignores it and is killed as soon as
    // the program is gone, long before the 5 s grace.
    assert!(
        wait_until(Duration::from_secs(2), || proc_state(gc).is_none()),
        "grandchild left"
    );
    settled(&nginx, fds);
    nginx.stop();
}

/// Whether a process catches SIGCHLD (its `SigCgt` mask in /proc).
fn catches_sigchld(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .expect("SigCgt in /proc/PID/status");
    u64::from_str_radix(mask.trim(), 16).unwrap() & (1 << (libc::SIGCHLD - 1)) != 0
}

/// Loaded where no program runs (as a distribution package loads it into every configuration),
/// the module leaves nginx's SIGCHLD handler in the workers; where programs run it takes SIGCHLD
/// back to its default there (it reaps its own children); the master keeps nginx's either way.
#[test]
fn sigchld_is_taken_from_nginx_only_where_programs_run() {
    for (body, runs) in [
        (
            "server { listen 127.0.0.1:{PORT}; location / { return 200 ok; } }",
            false,
        ),
        (
            "server { listen 127.0.0.1:{PORT}; location / { transform_exec /bin/echo ok; } }",
            true,
        ),
        (
            "transform_pool p {HELPER} pool-serve processes=1;
             server { listen 127.0.0.1:{PORT}; location / { return 200 ok; } }",
            true,
        ),
        (
            "server { listen 127.0.0.1:{PORT}; location / { transform_filter /bin/cat; return 200 ok; } }",
            true,
        ),
        (
            "transform_filter off;
             server { listen 127.0.0.1:{PORT}; location / { return 200 ok; } }",
            false,
        ),
    ] {
        let nginx = Nginx::start(body);
        // A request served: the worker has run the module's init_process.
        let r = Client::connect(nginx.port).get("/");
        assert_eq!(r.status, 200, "{body}");
        assert_eq!(catches_sigchld(nginx.worker_pid()), !runs, "{body}");
        assert!(catches_sigchld(nginx.master_pid()), "{body}");
        nginx.stop();
    }
}

/// A reload from a configuration that runs programs to one that runs none: the old worker keeps
/// its programs to the end (its SIGCHLD stays at the default, its stream is whole), the new one
/// has nginx's handler back.
#[test]
fn sigchld_follows_a_reload_to_a_configuration_without_programs() {
    let nginx = Nginx::start(&server(
        "transform_commit_size 0; location /drip { transform_exec {HELPER} drip 6 200; }",
    ));
    let old = nginx.worker_pid();
    let mut c = Client::connect(nginx.port);
    c.send("GET /drip HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(c.read_head().status, 200);
    assert!(!catches_sigchld(old));
    std::fs::write(
        nginx.prefix.join("nginx.conf"),
        config(
            &nginx.prefix,
            nginx.port,
            "",
            &server("location / { return 200 ok; }"),
        ),
    )
    .unwrap();
    // SAFETY: signalling our own nginx master.
    unsafe { libc::kill(nginx.master_pid() as i32, libc::SIGHUP) };
    assert!(wait_until(Duration::from_secs(5), || nginx
        .worker_pids()
        .iter()
        .any(|&w| w != old)));
    let new = *nginx.worker_pids().iter().find(|&&w| w != old).unwrap();
    // Served by the new configuration (the old worker stops accepting once told to quit).
    assert!(wait_until(Duration::from_secs(5), || Client::connect(
        nginx.port
    )
    .get("/")
    .status
        == 200));
    assert!(catches_sigchld(new), "the new worker has nginx's handler");
    drip_ends_whole(c);
    old_worker_exits(old);
    assert!(
        !nginx.error_log().contains("unknown process"),
        "{}",
        nginx.error_log()
    );
    nginx.stop();
}
