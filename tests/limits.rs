//! Limits and the program's surroundings: transform_max_programs, transform_rlimit,
//! transform_env, transform_chdir.

mod common;

use std::time::Duration;

use common::*;

fn server(locations: &str) -> String {
    format!("server {{ listen 127.0.0.1:{{PORT}}; {locations} }}")
}

#[test]
fn environment_is_clean_unless_configured() {
    let nginx = Nginx::start(&server(
        "location /default { transform_exec /usr/bin/env; }
         location /set {
             transform_env GREETING \"hello $arg_who\";
             transform_env PATH /opt/bin;
             transform_exec /usr/bin/env;
         }",
    ));
    let body = |p: &str| String::from_utf8(Client::connect(nginx.port).get(p).body).unwrap();
    assert_eq!(body("/default"), "PATH=/usr/local/bin:/usr/bin:/bin\n");
    let mut set: Vec<String> = body("/set?who=a%20b;c").lines().map(String::from).collect();
    set.sort();
    assert_eq!(set, ["GREETING=hello a%20b;c", "PATH=/opt/bin"]);
    nginx.stop();
}

#[test]
fn working_directory() {
    let dir = temp_dir("chdir");
    let nginx = Nginx::start(&server(&format!(
        "location /pwd {{ transform_chdir {dir}; transform_exec /bin/pwd; }}
         location /missing {{ transform_chdir {dir}/nope; transform_exec /bin/pwd; }}",
        dir = dir.display()
    )));
    let r = Client::connect(nginx.port).get("/pwd");
    assert_eq!(
        String::from_utf8(r.body).unwrap().trim_end(),
        dir.display().to_string()
    );
    let r = Client::connect(nginx.port).get("/missing");
    assert_eq!(r.status, 502);
    let want = format!(
        "chdir() \"{}/nope\" failed (2: No such file or directory)",
        dir.display()
    );
    assert!(
        nginx.log_lines("error").iter().any(|l| l.contains(&want)),
        "{want}"
    );
    nginx.stop();
}

#[test]
fn resource_limits_are_set_in_the_program() {
    let nginx = Nginx::start(&server(
        "location /limits {
             transform_rlimit cpu 7s; transform_rlimit as 512m; transform_rlimit fsize 1m;
             transform_rlimit nofile 32; transform_rlimit core 0;
             transform_exec /bin/cat /proc/self/limits;
         }
         location /spin { transform_rlimit cpu 1; transform_exec {HELPER} spin; }",
    ));
    let limits = String::from_utf8(Client::connect(nginx.port).get("/limits").body).unwrap();
    let row = |name: &str| {
        let line = limits
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name}"));
        line[name.len()..]
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(row("Max cpu time"), "7 8");
    assert_eq!(row("Max address space"), "536870912 536870912");
    assert_eq!(row("Max file size"), "1048576 1048576");
    assert_eq!(row("Max open files"), "32 32");
    assert_eq!(row("Max core file size"), "0 0");
    // A program over its CPU limit is stopped by the kernel: a 502 naming the signal.
    let r = Client::connect(nginx.port).get("/spin");
    assert_eq!(r.status, 502);
    assert!(nginx
        .log_lines("error")
        .iter()
        .any(|l| l.contains("(SIGXCPU)")));
    nginx.stop();
}

#[test]
fn max_programs_refuses_with_503_and_retry_after() {
    let nginx = Nginx::start(
        "transform_max_programs 2;
         server { listen 127.0.0.1:{PORT}; transform_commit_size 0;
             location /hang { transform_exec {HELPER} hang-after 10; }
             location /quick { transform_exec /bin/true; } }",
    );
    let worker = nginx.worker_pid();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect(nginx.port);
        c.send("GET /hang HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(c.read_head().status, 200);
        held.push(c);
    }
    let r = Client::connect(nginx.port).get("/quick");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("Retry-After"), Some("1"));
    let warn = nginx.log_lines("warn");
    assert!(
        warn.iter()
            .any(|l| l.contains("2 programs running in this worker (transform_max_programs 2)")),
        "{warn:?}"
    );
    // When a program ends, there is room again.
    held.pop();
    assert!(wait_until(Duration::from_secs(2), || children_of(worker)
        .len()
        == 1));
    assert_eq!(Client::connect(nginx.port).get("/quick").status, 200);
    drop(held);
    nginx.stop();
}
