//! The buffered transport paced by the client, and pipes sized within the user's pipe budget:
//! TLS records stay whole (one flush when the program's output runs dry, not one per read), a
//! client that takes nothing holds the program back without the worker holding its output in
//! memory, stderr pipes are one page, and a spent pipe budget is said once and costs nothing but
//! speed.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::*;

#[path = "../src/pipes/fair.rs"]
mod fair;

/// Held by each test that runs programs: one takes the workers' user's pipe budget, which the
/// others would feel.
static BUDGET: Mutex<()> = Mutex::new(());

#[test]
fn a_fair_share_of_the_pipe_budget() {
    use fair::{fair_size, start_size, PAGE, PAST_LIMIT, START};
    const MIB: usize = 1 << 20;
    // No limit (root, or no soft limit): what was asked.
    assert_eq!(fair_size(MIB, 0, 5000, 0), MIB);
    // A few programs in a share of 8192 pages: the whole size.
    assert_eq!(fair_size(MIB, 8192, 0, 0), MIB);
    assert_eq!(fair_size(MIB, 8192, 30, 0), MIB);
    // ... unless they hold most of it already: half of what is left, 241 pages, rounded down.
    assert_eq!(fair_size(MIB, 8192, 30, 30 * 257), 128 * PAGE);
    // 100 programs: 81 pages each, less stderr's page, rounded down to a power of two: 64.
    assert_eq!(fair_size(MIB, 8192, 99, 0), 64 * PAGE);
    // 1000: 8 pages each, less stderr's: 4.
    assert_eq!(fair_size(MIB, 8192, 999, 0), 4 * PAGE);
    // 10000: never below what the kernel gives past the limit anyway.
    assert_eq!(fair_size(MIB, 8192, 9999, 0), PAST_LIMIT);
    // Never above what was asked.
    assert_eq!(fair_size(PAGE, 8192, 0, 0), PAGE);
    assert_eq!(fair_size(256 * 1024, 8192, 0, 0), 256 * 1024);
    // A burst: however few programs run yet, no pipe takes more than half of what is left.
    assert_eq!(fair_size(MIB, 8192, 4, 7800), 128 * PAGE);
    assert_eq!(fair_size(MIB, 8192, 10, 8000), 64 * PAGE);
    // Nothing left: the least.
    assert_eq!(fair_size(MIB, 8192, 10, 9000), PAST_LIMIT);
    // A burst of 1000 programs from nothing: what they take above the least (2 pages and the
    // stderr page) stays within the share.
    let (mut used, mut above) = (0, 0);
    for running in 0..1000 {
        let size = fair_size(MIB, 8192, running, used);
        assert!(size >= PAST_LIMIT);
        used += size / PAGE + 1;
        above += size / PAGE - 2;
    }
    assert!(above <= 8192, "{above} pages above the least");
    // A new pipe starts at the kernel's default when a budget applies (it grows from there),
    // at what was asked when none does, and below the default when that is what was asked.
    assert_eq!(start_size(MIB, 8192, 0, 0), START);
    assert_eq!(start_size(MIB, 0, 0, 0), MIB);
    assert_eq!(start_size(32 * 1024, 8192, 0, 0), 32 * 1024);
    assert_eq!(start_size(MIB, 8192, 999, 0), 4 * PAGE);
}

/// Whether the kernel exempts process `pid` from the per-user pipe budget: CAP_SYS_RESOURCE or
/// CAP_SYS_ADMIN effective, in the initial user namespace (fs/pipe.c).
fn budget_exempt(pid: u32) -> bool {
    let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap_or_default();
    if uid_map.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"] {
        return false;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    eff & (1 << 21 | 1 << 24) != 0
}

/// The sizes of nginx's TLS writes (`SSL to write: N` debug lines) from the line that starts
/// `after` on.
fn ssl_writes(log: &str, after: usize) -> Vec<usize> {
    log[after..]
        .lines()
        .filter_map(|l| l.split_once("SSL to write: "))
        .filter_map(|(_, n)| n.trim().parse().ok())
        .collect()
}

#[test]
fn tls_records_are_whole_with_chunked_framing() {
    let _budget = BUDGET.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("pacing-tls");
    let (crt, key) = make_cert(&dir);
    let nginx = Nginx::start(&format!(
        "server {{ listen 127.0.0.1:{{PORT}} ssl; ssl_protocols TLSv1.3;
                  ssl_certificate {crt}; ssl_certificate_key {key};
                  location /gen {{ transform_exec {{HELPER}} gen $arg_n; }} }}",
        crt = crt.display(),
        key = key.display()
    ));
    let n = 8 * 1024 * 1024;
    let want = sha256(&helper_output(&["gen", &n.to_string()]));
    let url = format!("https://127.0.0.1:{}/gen?n={n}", nginx.port);
    let before = nginx.error_log().len();
    let (ok, body) = curl(&["-sk", "--http1.1", &url]);
    assert!(ok);
    assert_eq!(sha256(&body), want, "TLS HTTP/1.1 body");
    let log = nginx.error_log();
    let t = transports(&nginx);
    assert!(t.last().is_some_and(|t| t.starts_with("buffered")), "{t:?}");
    assert!(
        log[before..].contains("http chunk:"),
        "the response was not chunked"
    );
    let writes = ssl_writes(&log, before);
    let flushes = log[before..].matches("transform buffered: flush").count();
    let reads = writes.iter().sum::<usize>() / (64 * 1024);
    let small = writes.iter().filter(|&&w| w < 16384).count();
    // Every read of 64 KiB used to end in a flush, and the chunk framing after it in a record
    // of its own: now the small records are the header's, the last one, and one per time the
    // program's output ran dry (each flushed: the client gets what there is at once).
    assert!(
        small <= flushes + 3,
        "{small} TLS records under 16 KiB for {flushes} flushes and ~{reads} reads: {:?}",
        writes
            .iter()
            .filter(|&&w| w < 16384)
            .take(20)
            .collect::<Vec<_>>()
    );
    nginx.stop();
}

#[test]
fn a_client_that_reads_nothing_leaves_the_output_in_the_pipe() {
    let _budget = BUDGET.lock().unwrap_or_else(|e| e.into_inner());
    // (/sub: sub_filter passes on shadows of the transport's buffers, which hold them until
    // sent: the buffers given back meanwhile must be the free ones only.)
    let nginx = Nginx::start(
        "server { listen 127.0.0.1:{PORT};
           location /buffered { transform_splice off; transform_exec {HELPER} gen $arg_n; }
           location /sub { sub_filter_types *; sub_filter_once off;
                           sub_filter 'no-such-text-in-the-stream' 'x';
                           transform_exec {HELPER} gen $arg_n; } }",
    );
    let n: u64 = 64 * 1024 * 1024;
    let worker = nginx.worker_pid();
    // Warm the worker up (its pools, the first buffers).
    let mut warm = Client::connect(nginx.port);
    let r = warm.get("/buffered?n=100000");
    assert_eq!(r.body.len(), 100000);
    let rss_before = rss_kib(worker);
    let mut clients = Vec::new();
    for i in 0..24 {
        let mut c = Client::connect(nginx.port);
        c.set_recv_buffer(64 * 1024);
        let path = if i < 20 { "/buffered" } else { "/sub" };
        c.send(&format!(
            "GET {path}?n={n} HTTP/1.1\r\nHost: localhost\r\n\r\n"
        ));
        clients.push(c);
    }
    // Every client is blocked: its socket and the program's pipe are full (each connection's
    // debug lines carry its number, `*N`).
    let log_blocked = || {
        let log = nginx.error_log();
        let mut conns: Vec<String> = log
            .lines()
            .filter(|l| l.contains("client blocked,"))
            .filter_map(|l| {
                l.split_whitespace()
                    .find(|w| w.starts_with('*'))
                    .map(String::from)
            })
            .collect();
        conns.sort();
        conns.dedup();
        conns.len()
    };
    assert!(
        wait_until(Duration::from_secs(20), || log_blocked() >= 24),
        "not every client was blocked: {}",
        log_blocked()
    );
    std::thread::sleep(Duration::from_millis(500));
    let rss_blocked = rss_kib(worker);
    let log = nginx.error_log();
    let most_in_memory = log
        .lines()
        .filter_map(|l| l.split_once("client blocked, "))
        .filter_map(|(_, rest)| rest.split(' ').next()?.parse::<usize>().ok())
        .max()
        .unwrap_or(usize::MAX);
    // The transport may hold 8 buffers of 64 KiB; a blocked client keeps at most the one it is
    // being sent (and the one read with it), not all eight.
    assert!(
        most_in_memory <= 2,
        "{most_in_memory} buffers held for a blocked client"
    );
    // 24 blocked clients at 8 x 64 KiB each would be 12 MiB.
    let grown = rss_blocked.saturating_sub(rss_before);
    assert!(
        grown < 24 * 192,
        "the worker grew by {grown} KiB for 24 blocked clients"
    );
    // And each gets all of its bytes, in order, once it reads.
    let want = sha256(&helper_output(&["gen", &n.to_string()]));
    for mut c in clients {
        let r = c.read_response(false);
        assert_eq!(r.status, 200);
        assert_eq!(sha256(&r.body), want);
    }
    nginx.stop();
}

#[test]
fn a_stderr_pipe_is_one_page_and_stdout_grows_from_the_default() {
    let _budget = BUDGET.lock().unwrap_or_else(|e| e.into_inner());
    let nginx = Nginx::start(
        "server { listen 127.0.0.1:{PORT};
           location /sizes { transform_exec {HELPER} pipe-sizes; }
           location /small { transform_pipe_size 32k; transform_exec {HELPER} pipe-sizes; }
           location /burst { transform_exec {HELPER} gen $arg_n 1048576; } }",
    );
    // Workers bound by their user's pipe budget (not CAP_SYS_RESOURCE or CAP_SYS_ADMIN in the
    // initial user namespace, as the kernel decides) start a pipe at the kernel's default size
    // and grow it when its program fills it; others get transform_pipe_size at once.
    let bound = !budget_exempt(nginx.worker_pid());
    let start = if bound { 65536 } else { 1048576 };
    let mut c = Client::connect(nginx.port);
    let r = c.get("/sizes");
    assert_eq!(
        String::from_utf8_lossy(&r.body).trim(),
        format!("stdout {start} stderr 4096")
    );
    let r = c.get("/small");
    assert_eq!(
        String::from_utf8_lossy(&r.body).trim(),
        "stdout 32768 stderr 4096"
    );
    if bound {
        // A program writing 1 MiB at a time fills its pipe before the worker reads it: the pipe
        // doubles up to transform_pipe_size (1m), and not beyond.
        let n = 32 * 1024 * 1024;
        let r = c.get(&format!("/burst?n={n}"));
        assert_eq!(
            sha256(&r.body),
            sha256(&helper_output(&["gen", &n.to_string()]))
        );
        let log = nginx.error_log();
        let grown: Vec<usize> = log
            .lines()
            .filter_map(|l| l.split_once(" grown to "))
            .filter_map(|(_, n)| n.trim().parse().ok())
            .collect();
        assert!(grown.contains(&131072), "{grown:?}");
        assert!(grown.iter().all(|&g| g <= 1048576), "{grown:?}");
    }
    nginx.stop();
}

#[test]
fn a_spent_pipe_budget_is_said_once_and_loses_no_byte() {
    let _budget = BUDGET.lock().unwrap_or_else(|e| e.into_inner());
    let nginx = Nginx::start(
        "server { listen 127.0.0.1:{PORT};
           location /gen { transform_exec {HELPER} gen $arg_n; }
           location /buffered { transform_splice off; transform_exec {HELPER} gen $arg_n; } }",
    );
    let (uid, gid) = ids_of(nginx.worker_pid());
    assert!(
        !budget_exempt(nginx.worker_pid()),
        "the workers have CAP_SYS_RESOURCE or CAP_SYS_ADMIN: no pipe budget binds them"
    );
    // Another process of the workers' user takes the whole budget.
    let mut holder = {
        use std::os::unix::process::CommandExt;
        Command::new(HELPER)
            .arg("hold-pipes")
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the pipe holder")
    };
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("holder's line");
    assert!(line.starts_with("held "), "{line:?}");
    let n = 3 * 1024 * 1024;
    let want = sha256(&helper_output(&["gen", &n.to_string()]));
    let mut c = Client::connect(nginx.port);
    for path in ["/gen", "/buffered", "/gen"] {
        let r = c.get(&format!("{path}?n={n}"));
        assert_eq!(r.status, 200);
        assert_eq!(sha256(&r.body), want, "{path}");
    }
    let said = nginx
        .log_lines("warn")
        .into_iter()
        .filter(|l| l.contains("the pipe budget of the workers' user is spent"))
        .collect::<Vec<_>>();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains("fs.pipe-user-pages-soft") && said[0].contains("new pipes get 8192 bytes"),
        "{}",
        said[0]
    );
    holder.stdin.take().unwrap().write_all(b"").ok();
    holder.wait().expect("holder exits");
    nginx.stop();
}

/// Whether the kernel lets a TCP socket take the `tls` upper-layer protocol (kTLS): setsockopt
/// TCP_ULP "tls" on a connected socket, as OpenSSL does.
fn kernel_ktls() -> std::io::Result<()> {
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let s = TcpStream::connect(listener.local_addr()?)?;
    let _peer = listener.accept()?;
    const TCP_ULP: libc::c_int = 31;
    // SAFETY: setsockopt on our own socket with a pointer to 4 bytes and their length.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            TCP_ULP,
            c"tls".as_ptr().cast(),
            4,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// kTLS: with `ssl_conf_command Options KTLS` nginx's OpenSSL encrypts in the kernel where the
/// kernel can. The module does not splice into such a socket (not proven byte-exact: the
/// machines it was built on have no kTLS); the test finds out whether this kernel has it, says
/// so, and checks that a connection set up for kTLS is served byte-exact by the buffered
/// transport, naming why.
#[test]
fn ktls_is_looked_for_and_a_ktls_connection_takes_the_buffered_transport() {
    let _budget = BUDGET.lock().unwrap_or_else(|e| e.into_inner());
    let ktls = kernel_ktls();
    match &ktls {
        Ok(()) => eprintln!("pacing: this kernel has kTLS (TCP_ULP \"tls\" accepted)"),
        Err(e) => eprintln!(
            "pacing: THIS KERNEL HAS NO kTLS (setsockopt TCP_ULP \"tls\": {e}): the refusal \
             path is tested, not a kTLS socket"
        ),
    }
    let dir = temp_dir("pacing-ktls");
    let (crt, key) = make_cert(&dir);
    let nginx = Nginx::start(&format!(
        "server {{ listen 127.0.0.1:{{PORT}} ssl; ssl_protocols TLSv1.3;
                  ssl_conf_command Options KTLS;
                  ssl_certificate {crt}; ssl_certificate_key {key};
                  location /gen {{ transform_exec {{HELPER}} gen $arg_n; }} }}",
        crt = crt.display(),
        key = key.display()
    ));
    let n = 8 * 1024 * 1024;
    let want = sha256(&helper_output(&["gen", &n.to_string()]));
    let url = format!("https://127.0.0.1:{}/gen?n={n}", nginx.port);
    let (ok, body) = curl(&["-sk", "--http1.1", &url]);
    assert!(ok);
    assert_eq!(sha256(&body), want);
    let t = transports(&nginx);
    let last = t.last().expect("a transport line");
    if ktls.is_ok() {
        // OpenSSL may or may not have turned kTLS on for the connection: either way, buffered.
        assert!(last.starts_with("buffered (TLS connection"), "{last}");
    } else {
        assert_eq!(last, "buffered (TLS connection)");
    }
    nginx.stop();
}
