//! The kernel floor and what a program gets on every kernel above it.
//!
//! Older kernels are imitated with `transform-seccomp-wrap`, which runs nginx with chosen system
//! calls failing as a kernel without them fails them: `close_range=ENOSYS` is Linux 5.4 to 5.8,
//! `waitid:3=EINVAL` (P_PIDFD) is a kernel before 5.4.

mod common;

use std::ffi::CStr;
use std::io::Read;
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const WRAP: &str = env!("CARGO_BIN_EXE_transform-seccomp-wrap");

fn server(locations: &str) -> String {
    format!(
        "server {{ listen 127.0.0.1:{{PORT}};
           location /quick {{ transform_exec /bin/true; }}
           location /idle {{ return 204; }}
           {locations} }}"
    )
}

/// nginx started under the seccomp wrapper with `rules`.
struct Wrapped {
    prefix: PathBuf,
    port: u16,
    master: Child,
    stopped: bool,
}

impl Wrapped {
    fn start(rules: &[&str], http_body: &str) -> Wrapped {
        let prefix = temp_dir("kernel");
        let port = free_port();
        let conf = prefix.join("nginx.conf");
        std::fs::write(&conf, config(&prefix, port, "", http_body)).expect("write conf");
        let master = Command::new(WRAP)
            .args(rules)
            .arg("--")
            .arg(nginx_binary())
            .arg("-p")
            .arg(&prefix)
            .arg("-e")
            .arg(prefix.join("logs/error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(prefix.join("logs/stderr.log")).expect("stderr"))
            .spawn()
            .expect("start nginx under transform-seccomp-wrap");
        let mut w = Wrapped {
            prefix,
            port,
            master,
            stopped: false,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = w.master.try_wait().ok().flatten();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "nginx did not start ({exited:?}):\n{}\n{}",
                w.stderr(),
                w.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        while children_of(w.master.id()).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        w
    }

    fn worker_pid(&self) -> u32 {
        let w = children_of(self.master.id());
        assert_eq!(w.len(), 1, "expected one worker, got {w:?}");
        w[0]
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("logs/error.log")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.prefix.join("logs/stderr.log")).unwrap_or_default()
    }

    /// Quits nginx and fails on an `[alert]`, `[crit]` or `[emerg]` line.
    fn stop(mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.master.id() as i32, libc::SIGQUIT) };
        let _ = self.master.wait();
        self.stopped = true;
        let log = self.error_log();
        let bad: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("[alert]") || l.contains("[crit]") || l.contains("[emerg]"))
            .collect();
        assert!(bad.is_empty(), "alerts in error.log:\n{}", bad.join("\n"));
        let _ = std::fs::remove_dir_all(&self.prefix);
    }
}

impl Drop for Wrapped {
    fn drop(&mut self) {
        if !self.stopped {
            // SAFETY: signalling our own child process (SIGTERM takes the worker down too).
            unsafe { libc::kill(self.master.id() as i32, libc::SIGTERM) };
            let _ = self.master.wait();
        }
    }
}

/// Opens `n` idle keep-alive connections: each is a descriptor of the worker that is not
/// close-on-exec (nginx accepts without SOCK_CLOEXEC).
fn idle_connections(port: u16, n: usize) -> Vec<Client> {
    (0..n)
        .map(|_| {
            let mut c = Client::connect(port);
            assert_eq!(c.get("/idle").status, 204);
            c
        })
        .collect()
}

/// The descriptors a program sees: `ls /proc/self/fd` lists 0-2 and the directory it reads.
const ONLY_STDIO: &[u8] = b"0\n1\n2\n3\n";

#[test]
fn a_kernel_without_waitid_p_pidfd_is_refused_in_one_line() {
    let body = server("location /run { transform_exec /bin/true; }");
    let prefix = temp_dir("oldkernel");
    let conf = prefix.join("nginx.conf");
    std::fs::write(&conf, config(&prefix, free_port(), "", &body)).expect("write conf");
    let run = |test: bool| {
        let mut cmd = Command::new(WRAP);
        cmd.args(["waitid:3=EINVAL", "--"]).arg(nginx_binary());
        if test {
            cmd.arg("-t");
        }
        let mut child = cmd
            .arg("-p")
            .arg(&prefix)
            .arg("-e")
            .arg(prefix.join("logs/error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nginx under transform-seccomp-wrap");
        let ok = wait_until(Duration::from_secs(10), || {
            child.try_wait().ok().flatten().is_some()
        });
        if !ok {
            // It started: stop it (SIGTERM takes the worker down too) and fail below.
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        let status = child.wait().expect("wait nginx");
        let mut err = String::new();
        child
            .stderr
            .take()
            .expect("piped")
            .read_to_string(&mut err)
            .expect("read stderr");
        (status.success(), err)
    };
    for test in [true, false] {
        let what = if test { "nginx -t" } else { "nginx" };
        let (ok, err) = run(test);
        assert!(
            !ok,
            "{what} accepted a kernel without waitid(P_PIDFD):\n{err}"
        );
        let emerg: Vec<&str> = err.lines().filter(|l| l.contains("[emerg]")).collect();
        assert_eq!(emerg.len(), 1, "{what}: one line expected:\n{err}");
        assert!(
            emerg[0].contains("needs Linux 5.4 or newer")
                && emerg[0].contains("waitid(P_PIDFD) failed (22: Invalid argument)"),
            "{what}: {}",
            emerg[0]
        );
    }
    // The same configuration on this kernel is fine.
    let (ok, err, _) = nginx_test_config(&body);
    assert!(ok, "{err}");
    let _ = std::fs::remove_dir_all(&prefix);
}

/// Under `rules`, programs started while the worker holds idle connections see only 0-2:
/// `/fd` lists the descriptors of `ls` (0-2 and its directory, 3); `/fd-stat` asks for each of
/// 0-1023 by name, for when directories cannot be read.
fn programs_get_only_stdio_under(rules: &[&str]) {
    let nginx = Wrapped::start(
        rules,
        &server(
            "location /fd { transform_exec /bin/ls /proc/self/fd; }
             location /fd-stat {
                 transform_exec /bin/sh -c
                     \"seq -f /proc/self/fd/%g 0 1023 | xargs ls -d 2>/dev/null; exit 0\";
             }",
        ),
    );
    let worker = nginx.worker_pid();
    let idle = idle_connections(nginx.port, 8);
    assert!(
        fd_count(worker) > 8 + 3,
        "the worker holds the idle connections"
    );
    let proc_readable = !rules.iter().any(|r| r.starts_with("getdents64"));
    for _ in 0..3 {
        for (uri, want) in [
            ("/fd", ONLY_STDIO),
            (
                "/fd-stat",
                b"/proc/self/fd/0\n/proc/self/fd/1\n/proc/self/fd/2\n".as_slice(),
            ),
        ] {
            if uri == "/fd" && !proc_readable {
                continue;
            }
            let r = Client::connect(nginx.port).get(uri);
            let errors: Vec<String> = nginx
                .error_log()
                .lines()
                .filter(|l| l.contains("[error]"))
                .map(String::from)
                .collect();
            assert_eq!(r.status, 200, "{errors:?}");
            assert_eq!(
                String::from_utf8_lossy(&r.body),
                String::from_utf8_lossy(want),
                "{uri}: the program inherited descriptors of the worker"
            );
        }
    }
    drop(idle);
    nginx.stop();
}

#[test]
fn without_close_range_programs_still_get_only_stdio() {
    programs_get_only_stdio_under(&["close_range=ENOSYS"]);
}

#[test]
fn without_close_range_and_proc_listing_programs_still_get_only_stdio() {
    programs_get_only_stdio_under(&["close_range=ENOSYS", "getdents64=ENOSYS"]);
}

#[test]
fn with_close_range_forbidden_by_seccomp_programs_still_get_only_stdio() {
    // Container profiles written before close_range existed answer EPERM.
    programs_get_only_stdio_under(&["close_range=EPERM"]);
}

#[test]
fn programs_get_only_stdio() {
    programs_get_only_stdio_under(&[]);
}

#[test]
fn programs_run_with_no_new_privs() {
    let nginx = Nginx::start(&server(
        "location /nnp { transform_exec /bin/grep NoNewPrivs /proc/self/status; }",
    ));
    let worker = nginx.worker_pid();
    let status = std::fs::read_to_string(format!("/proc/{worker}/status")).expect("status");
    assert!(
        status.contains("NoNewPrivs:\t0"),
        "the worker itself must not be under no_new_privs for this test"
    );
    let r = Client::connect(nginx.port).get("/nnp");
    assert_eq!(r.status, 200);
    assert_eq!(String::from_utf8_lossy(&r.body), "NoNewPrivs:\t1\n");
    nginx.stop();
}

/// The OS layer itself, for what no request can show.
#[allow(dead_code)]
#[path = "../src/os.rs"]
mod os;

/// Runs `sh -c script` through `os::spawn`, stdout and stderr on one pipe; returns the child and
/// our (non-blocking) end of the pipe.
fn sh(script: &CStr, dir: Option<&CStr>) -> Result<(os::Spawned, os::Pipe), os::SpawnError> {
    let pipe = os::stdout_pipe().expect("pipe");
    let cmd = os::Command {
        argv: &[c"/bin/sh", c"-c", script],
        env: &[c"PATH=/usr/bin:/bin"],
        dir,
        stdin: None,
        stdout: pipe.write.as_raw_fd(),
        stderr: pipe.write.as_raw_fd(),
        rlimits: &[],
        confine: os::Confine::default(),
    };
    os::spawn(&cmd).map(|child| (child, pipe))
}

/// The first line the program writes.
fn first_line(pipe: &os::Pipe) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    assert!(wait_until(Duration::from_secs(5), || {
        if let Ok(n) = os::read(pipe.read.as_fd(), &mut buf) {
            out.extend_from_slice(&buf[..n]);
        }
        out.contains(&b'\n')
    }));
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn exited(child: &os::Spawned) -> os::ExitStatus {
    let mut status = None;
    assert!(wait_until(Duration::from_secs(5), || {
        status = os::peek_exit(child.pidfd.as_fd()).expect("waitid");
        status.is_some()
    }));
    status.expect("exited")
}

#[test]
fn killing_descendants_says_whether_anyone_was_left() {
    let gone = |pid: u32| matches!(proc_state(pid), None | Some('Z'));

    // A descendant in the program's group: killed, and reported.
    let (child, pipe) = sh(c"sleep 30 & echo $!", None).expect("spawn");
    let kept: u32 = first_line(&pipe).parse().expect("pid");
    assert_eq!(exited(&child), os::ExitStatus::Code(0));
    assert!(os::kill_group_and_reap(child.pid, child.pidfd.as_fd()));
    assert!(
        wait_until(Duration::from_secs(2), || gone(kept)),
        "descendant left"
    );
    assert_eq!(proc_state(child.pid as u32), None, "program not reaped");

    // A descendant that left the group (setsid): not killed, and reported as nobody.
    let (child, pipe) = sh(c"setsid sleep 30 & echo $!", None).expect("spawn");
    let escaped: u32 = first_line(&pipe).parse().expect("pid");
    assert!(wait_until(Duration::from_secs(2), || {
        std::fs::read_to_string(format!("/proc/{escaped}/comm")).is_ok_and(|c| c == "sleep\n")
    }));
    assert_eq!(exited(&child), os::ExitStatus::Code(0));
    assert!(!os::kill_group_and_reap(child.pid, child.pidfd.as_fd()));
    assert_eq!(
        proc_state(escaped),
        Some('S'),
        "the escaped descendant was killed"
    );
    // SAFETY: signalling the sleep this test started.
    unsafe { libc::kill(escaped as i32, libc::SIGKILL) };

    // No descendant at all.
    let (child, _pipe) = sh(c"exit 3", None).expect("spawn");
    assert_eq!(exited(&child), os::ExitStatus::Code(3));
    assert!(!os::kill_group_and_reap(child.pid, child.pidfd.as_fd()));
}

#[test]
fn spawn_failures_name_their_step_and_statuses_read_back() {
    let err = sh(c"true", Some(c"/nonexistent"))
        .err()
        .expect("chdir fails");
    assert_eq!(err.step.call(), "chdir()");
    assert_eq!(err.err.raw_os_error(), Some(libc::ENOENT));

    let (child, _pipe) = sh(c"kill -9 $$", None).expect("spawn");
    assert_eq!(exited(&child), os::ExitStatus::Signal(libc::SIGKILL));
    assert_eq!(
        os::try_reap(child.pidfd.as_fd()).expect("waitid"),
        Some(os::ExitStatus::Signal(libc::SIGKILL))
    );

    // Our ends non-blocking, the child's blocking, all close-on-exec, the child's above 0-2.
    for (pipe, ours_is_read) in [(os::stdout_pipe(), true), (os::stdin_pipe(), false)] {
        let pipe = pipe.expect("pipe");
        let (ours, theirs) = match ours_is_read {
            true => (&pipe.read, &pipe.write),
            false => (&pipe.write, &pipe.read),
        };
        // SAFETY: F_GETFL and F_GETFD on descriptors we own.
        let flags = |fd: &OwnedFd| unsafe {
            (
                libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) & libc::O_NONBLOCK != 0,
                libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) & libc::FD_CLOEXEC != 0,
            )
        };
        assert_eq!(flags(ours), (true, true));
        assert_eq!(flags(theirs), (false, true));
        assert!(theirs.as_raw_fd() > 2);
    }
}
