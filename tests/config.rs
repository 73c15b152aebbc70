//! `nginx -t` catches misuse of every directive, naming the file and line.

mod common;

use common::*;

/// Asserts that `nginx -t` fails on `http_body` with `message`; returns stderr, the path of the
/// configuration and its text (the temporary prefix is removed).
fn rejects_anywhere(http_body: &str, message: &str) -> (String, std::path::PathBuf, String) {
    let (ok, stderr, path) = nginx_test_config(http_body);
    let conf = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_dir_all(path.parent().expect("prefix")).ok();
    assert!(!ok, "nginx -t accepted: {http_body}");
    assert!(
        stderr.contains("[emerg]"),
        "no [emerg] for {http_body}: {stderr}"
    );
    assert!(
        stderr.contains(message),
        "expected {message:?} for {http_body}: {stderr}"
    );
    (stderr, path, conf)
}

/// Asserts that `nginx -t` fails on `http_body` with `message`, pointing at the right line.
fn rejects(http_body: &str, message: &str) {
    let (stderr, path, conf) = rejects_anywhere(http_body, message);
    // The directive is on the line marked BAD; nginx names the file and that line.
    let line = conf
        .lines()
        .position(|l| l.contains("#BAD"))
        .expect("BAD marker")
        + 1;
    let at = format!("in {}:{line}", path.display());
    assert!(stderr.contains(&at), "expected {at:?} in: {stderr}");
}

#[test]
fn valid_configuration_passes() {
    let (ok, stderr, _) = nginx_test_config(
        "transform_splice off; transform_pipe_size 256k; transform_type text/plain;
         server { listen 127.0.0.1:{PORT};
           location /a { transform_exec /bin/echo $uri \"two words\" -x; transform_type $arg_t; }
           location /b { transform_exec $arg_prog; transform_splice on; transform_pipe_size 64k; }
           location /c { if ($arg_x) { transform_exec /bin/true; } }
         }",
    );
    assert!(ok, "{stderr}");
}

#[test]
fn transform_exec_misuse() {
    let s = |loc: &str| {
        format!("server {{ listen 127.0.0.1:{{PORT}};\nlocation / {{\n{loc} #BAD\n}} }}")
    };
    rejects(
        &s("transform_exec;"),
        "invalid number of arguments in \"transform_exec\"",
    );
    rejects(
        &s("transform_exec bin/echo hi;"),
        "program \"bin/echo\" is not an absolute path",
    );
    rejects(
        &s("transform_exec /nonexistent/prog;"),
        "program \"/nonexistent/prog\" is not an executable file (2: No such file or directory)",
    );
    rejects(
        &s("transform_exec /etc/passwd;"),
        "program \"/etc/passwd\" is not an executable file (13: Permission denied)",
    );
    rejects(
        &s("transform_exec /bin;"),
        "program \"/bin\" is not an executable file",
    );
    rejects(
        &s("transform_exec /bin/true; transform_exec /bin/true;"),
        "\"transform_exec\" directive is duplicate",
    );
    // nginx resolves variable names after parsing, for every module: no line in this message.
    rejects_anywhere(
        &s("transform_exec /bin/echo ${undefined_variable};"),
        "unknown \"undefined_variable\" variable",
    );
    rejects(
        "server { listen 127.0.0.1:{PORT};\ntransform_exec /bin/true; #BAD\n}",
        "\"transform_exec\" directive is not allowed here",
    );
}

#[test]
fn other_directives_misuse() {
    let s = |d: &str| {
        format!("server {{ listen 127.0.0.1:{{PORT}};\nlocation / {{ transform_exec /bin/true;\n{d} #BAD\n}} }}")
    };
    rejects(
        &s("transform_type;"),
        "invalid number of arguments in \"transform_type\"",
    );
    rejects(
        &s("transform_type a b;"),
        "invalid number of arguments in \"transform_type\"",
    );
    rejects(
        &s("transform_type a; transform_type b;"),
        "\"transform_type\" directive is duplicate",
    );
    rejects(
        &s("transform_splice maybe;"),
        "invalid value \"maybe\" in \"transform_splice\"",
    );
    rejects(
        &s("transform_splice on; transform_splice off;"),
        "\"transform_splice\" directive is duplicate",
    );
    rejects(
        &s("transform_pipe_size big;"),
        "\"transform_pipe_size\" directive invalid value",
    );
    rejects(
        &s("transform_pipe_size 1k;"),
        "pipe size must be from 4k to 1024m",
    );
    rejects(
        &s("transform_pipe_size 2048m;"),
        "pipe size must be from 4k to 1024m",
    );
}

#[test]
fn limit_directives_misuse() {
    let s = |d: &str| {
        format!("server {{ listen 127.0.0.1:{{PORT}};\nlocation / {{ transform_exec /bin/true;\n{d} #BAD\n}} }}")
    };
    rejects(
        &s("transform_rlimit files 10;"),
        "unknown resource \"files\"",
    );
    rejects(
        &s("transform_rlimit nofile many;"),
        "invalid value \"many\"",
    );
    rejects(
        &s("transform_rlimit nofile 1; transform_rlimit nofile 2;"),
        "duplicate resource \"nofile\"",
    );
    rejects(
        &s("transform_env 1BAD x;"),
        "invalid variable name \"1BAD\"",
    );
    rejects(
        &s("transform_env A x; transform_env A y;"),
        "duplicate variable \"A\"",
    );
    rejects(&s("transform_stderr loud;"), "invalid value \"loud\"");
    rejects(&s("transform_stdin always;"), "invalid value \"always\"");
    rejects(
        &s("transform_request_buffering sometimes;"),
        "invalid value \"sometimes\" in \"transform_request_buffering\"",
    );
    rejects(&s("transform_output json;"), "invalid value \"json\"");
    rejects(
        &s("transform_header_buffer_size big;"),
        "\"transform_header_buffer_size\" directive invalid value",
    );
    rejects(
        &s("transform_commit_size lots;"),
        "\"transform_commit_size\" directive invalid value",
    );
    rejects(
        &s("transform_timeout soon;"),
        "\"transform_timeout\" directive invalid value",
    );
    rejects(
        &s("transform_max_programs 3;"),
        "\"transform_max_programs\" directive is not allowed here",
    );
}

#[test]
fn sandbox_directives_misuse() {
    let s = |d: &str| {
        format!("server {{ listen 127.0.0.1:{{PORT}};\nlocation / {{ transform_exec /bin/true;\n{d} #BAD\n}} }}")
    };
    // Paths: absolute, existing when the configuration is read; `off` alone.
    rejects(
        &s("transform_sandbox_paths usr;"),
        "invalid path \"usr\": an absolute path, or rw= and an absolute path",
    );
    rejects(
        &s("transform_sandbox_paths rw=tmp;"),
        "invalid path \"rw=tmp\"",
    );
    for missing in [
        "/usr /nonexistent/sandbox/dir",
        "rw=/nonexistent/sandbox/dir",
    ] {
        rejects(
            &s(&format!("transform_sandbox_paths {missing};")),
            "sandbox path \"/nonexistent/sandbox/dir\" cannot be used (2: No such file or directory)",
        );
    }
    rejects(
        &s("transform_sandbox_paths off /usr;"),
        "invalid path \"off\"",
    );
    rejects(
        &s("transform_sandbox_paths;"),
        "invalid number of arguments in \"transform_sandbox_paths\"",
    );
    rejects(
        &s("transform_sandbox_paths /usr; transform_sandbox_paths /tmp;"),
        "\"transform_sandbox_paths\" directive is duplicate",
    );
    // Profiles: none or default.
    rejects(
        &s("transform_sandbox_syscalls strict;"),
        "invalid value \"strict\"",
    );
    rejects(
        &s("transform_sandbox_syscalls default none;"),
        "invalid number of arguments in \"transform_sandbox_syscalls\"",
    );
    rejects(
        &s("transform_sandbox_syscalls default; transform_sandbox_syscalls none;"),
        "\"transform_sandbox_syscalls\" directive is duplicate",
    );
    // Namespaces: the six names, or off alone.
    rejects(
        &s("transform_sandbox_namespaces user cgroup;"),
        "unknown namespace \"cgroup\": user, pid, ipc, net, mount, uts, or off",
    );
    rejects(
        &s("transform_sandbox_namespaces off user;"),
        "unknown namespace \"off\"",
    );
    rejects(
        &s("transform_sandbox_namespaces;"),
        "invalid number of arguments in \"transform_sandbox_namespaces\"",
    );
    rejects(
        &s("transform_sandbox_namespaces user; transform_sandbox_namespaces pid;"),
        "\"transform_sandbox_namespaces\" directive is duplicate",
    );
    // Every level takes them.
    let (ok, stderr, path) = nginx_test_config(
        "transform_sandbox_paths / rw=/tmp; transform_sandbox_syscalls default;
         transform_sandbox_namespaces user;
         server { listen 127.0.0.1:{PORT};
           transform_sandbox_paths off; transform_sandbox_syscalls none;
           transform_sandbox_namespaces off;
           location / { transform_sandbox_paths /usr rw=/tmp; transform_sandbox_syscalls default;
                        transform_sandbox_namespaces user pid net;
                        transform_exec /bin/true; } }",
    );
    std::fs::remove_dir_all(path.parent().expect("prefix")).ok();
    assert!(ok, "{stderr}");
}

#[test]
fn pool_directives_misuse() {
    let pool = |p: &str| {
        format!(
            "{p} #BAD\nserver {{ listen 127.0.0.1:{{PORT}};\nlocation / {{ transform_pass p; }} }}"
        )
    };
    let pass = |loc: &str| {
        format!(
            "transform_pool p {{HELPER}} pool-serve;\nserver {{ listen 127.0.0.1:{{PORT}};\nlocation / {{\n{loc} #BAD\n}} }}"
        )
    };
    // transform_pass naming no pool: the pool's name and the transform_pass's line.
    rejects(&pass("transform_pass nopool;"), "nopool");
    rejects(
        &pass("transform_pass;"),
        "invalid number of arguments in \"transform_pass\"",
    );
    // Both in one location, in either order: refused at that line, naming both.
    for both in [
        "transform_pass p; transform_exec /bin/true;",
        "transform_exec /bin/true; transform_pass p;",
    ] {
        rejects(&pass(both), "\"transform_pass\"");
        rejects_anywhere(&pass(both), "\"transform_exec\"");
    }
    rejects(
        "transform_pool p {HELPER} pool-serve;\ntransform_pass p; #BAD\n\
         server { listen 127.0.0.1:{PORT}; location / { transform_pass p; } }",
        "\"transform_pass\" directive is not allowed here",
    );
    // A transform_pass location cannot confine its pool's processes otherwise than the http
    // level (they serve every location): refused at the transform_pass line, whatever the level
    // of the differing directive below http.
    for own in [
        "transform_sandbox_syscalls default;",
        "transform_sandbox_paths /usr;",
        "transform_sandbox_namespaces user;",
    ] {
        rejects(
            &pass(&format!("{own} transform_pass p;")),
            "runs its pool's processes, which have the http level's sandbox and cgroup",
        );
        // Set at the http level, the location inherits it: accepted.
        let (ok, out, _) = nginx_test_config(&format!(
            "{own}\ntransform_pool p {{HELPER}} pool-serve;\n\
             server {{ listen 127.0.0.1:{{PORT}}; location / {{ transform_pass p; }} }}"
        ));
        assert!(ok, "{own} at the http level: {out}");
    }
    // The same for transform_filter_pass written in a location that runs no program of its own.
    rejects(
        &pass("transform_sandbox_syscalls default; transform_filter_pass p;"),
        "runs its pool's processes, which have the http level's sandbox and cgroup",
    );
    let (ok, out, _) = nginx_test_config(
        "transform_pool p {HELPER} pool-serve;\ntransform_filter_pass p;\n\
         server { listen 127.0.0.1:{PORT}; transform_sandbox_syscalls default;\n\
         location / { } location /x { transform_exec /bin/true; } }",
    );
    assert!(
        ok,
        "an inherited transform_filter_pass is not refused: {out}"
    );
    // transform_filter_pass: a known pool or off; not with transform_filter at one level.
    rejects(&pass("transform_filter_pass nopool;"), "nopool");
    rejects(
        &pass("transform_filter /bin/cat; transform_filter_pass p;"),
        "is duplicate",
    );
    rejects(
        &pass("transform_filter_pass p; transform_filter /bin/cat;"),
        "is duplicate",
    );
    for ok in [
        "transform_filter_pass off;",
        "transform_filter_pass p; transform_filter_types text/plain;",
    ] {
        let (accepted, stderr, path) = nginx_test_config(&pass(ok).replace(" #BAD", ""));
        std::fs::remove_dir_all(path.parent().expect("prefix")).ok();
        assert!(accepted, "{ok}: {stderr}");
    }
    // The program: an absolute path to an executable, as for transform_exec.
    rejects(
        &pool("transform_pool p bin/echo;"),
        "\"bin/echo\" is not an absolute path",
    );
    rejects(
        &pool("transform_pool p /nonexistent/prog;"),
        "/nonexistent/prog",
    );
    rejects(
        &pool("transform_pool p;"),
        "invalid number of arguments in \"transform_pool\"",
    );
    // Bad parameters name themselves.
    rejects(
        &pool("transform_pool p {HELPER} pool-serve processes=0;"),
        "processes",
    );
    rejects(
        &pool("transform_pool p {HELPER} pool-serve processes=two;"),
        "processes",
    );
    rejects(
        &pool("transform_pool p {HELPER} pool-serve max_requests=many;"),
        "max_requests",
    );
    rejects(
        &pool("transform_pool p {HELPER} pool-serve idle_timeout=soon;"),
        "idle_timeout",
    );
    rejects(
        &pool("transform_pool p {HELPER} pool-serve queue=-1;"),
        "queue",
    );
    rejects(
        "server { listen 127.0.0.1:{PORT};\ntransform_pool p /bin/true; #BAD\n\
         location / { transform_exec /bin/true; } }",
        "\"transform_pool\" directive is not allowed here",
    );
    // Variables in the http level's environment or directory: refused when a pool exists (its
    // processes have no request to take them from), accepted otherwise.
    for http in [
        "transform_env POOL_VAR $hostname;",
        "transform_chdir /tmp/$hostname;",
    ] {
        let with_pool = format!(
            "{http}\ntransform_pool p {{HELPER}} pool-serve;\n\
             server {{ listen 127.0.0.1:{{PORT}}; location / {{ transform_pass p; }} }}"
        );
        rejects_anywhere(&with_pool, "");
        let (ok, stderr, path) = nginx_test_config(&format!(
            "{http}\nserver {{ listen 127.0.0.1:{{PORT}}; location / {{ transform_exec /bin/true; }} }}"
        ));
        std::fs::remove_dir_all(path.parent().expect("prefix")).ok();
        assert!(ok, "without a pool, {http} is fine: {stderr}");
    }
    // Parameters after the arguments; a pool used by several locations.
    let (ok, stderr, path) = nginx_test_config(
        "transform_pool p {HELPER} pool-serve slow-start 10 processes=3 max_requests=0 \
         idle_timeout=0 queue=1;
         transform_pool q {HELPER} pool-serve;
         server { listen 127.0.0.1:{PORT};
           location /a { transform_pass p; } location /b { transform_pass p; }
           location /c { transform_pass q; } }",
    );
    std::fs::remove_dir_all(path.parent().expect("prefix")).ok();
    assert!(ok, "{stderr}");
}

/// Where a directive may appear: in a location (after a `transform_exec`), or in `http`, or in a
/// location of its own with a pool `p` defined (`transform_pass`).
#[derive(Clone, Copy)]
enum Level {
    Location,
    Http,
    Pass,
}

/// Each directive with a bad value (and what nginx -t says of it) and a good one.
struct Row {
    directive: &'static str,
    level: Level,
    bad: &'static str,
    message: &'static str,
    good: &'static str,
}

const fn row(
    directive: &'static str,
    level: Level,
    bad: &'static str,
    message: &'static str,
    good: &'static str,
) -> Row {
    Row {
        directive,
        level,
        bad,
        message,
        good,
    }
}

const DIRECTIVES: &[Row] = &[
    row(
        "transform_exec",
        Level::Location,
        "transform_exec bin/echo hi;",
        "program \"bin/echo\" is not an absolute path",
        "transform_exec /bin/echo $uri \"two words\";",
    ),
    row(
        "transform_type",
        Level::Location,
        "transform_type \"text/${t\";",
        "the closing bracket in \"t\" variable is missing",
        "transform_type text/plain;",
    ),
    row(
        "transform_splice",
        Level::Location,
        "transform_splice maybe;",
        "invalid value \"maybe\" in \"transform_splice\"",
        "transform_splice off;",
    ),
    row(
        "transform_pipe_size",
        Level::Location,
        "transform_pipe_size 1k;",
        "pipe size must be from 4k to 1024m",
        "transform_pipe_size 256k;",
    ),
    row(
        "transform_commit_size",
        Level::Location,
        "transform_commit_size lots;",
        "\"transform_commit_size\" directive invalid value",
        "transform_commit_size 0;",
    ),
    row(
        "transform_commit_timeout",
        Level::Location,
        "transform_commit_timeout soon;",
        "\"transform_commit_timeout\" directive invalid value",
        "transform_commit_timeout 250ms;",
    ),
    row(
        "transform_stderr",
        Level::Location,
        "transform_stderr loud;",
        "invalid value \"loud\"",
        "transform_stderr info;",
    ),
    row(
        "transform_stdin",
        Level::Location,
        "transform_stdin always;",
        "invalid value \"always\"",
        "transform_stdin body;",
    ),
    row(
        "transform_request_buffering",
        Level::Location,
        "transform_request_buffering sometimes;",
        "invalid value \"sometimes\" in \"transform_request_buffering\"",
        "transform_request_buffering on;",
    ),
    row(
        "transform_output",
        Level::Location,
        "transform_output json;",
        "invalid value \"json\"",
        "transform_output cgi;",
    ),
    row(
        "transform_header_buffer_size",
        Level::Location,
        "transform_header_buffer_size big;",
        "\"transform_header_buffer_size\" directive invalid value",
        "transform_header_buffer_size 8k;",
    ),
    row(
        "transform_max_programs",
        Level::Http,
        "transform_max_programs many;",
        "\"transform_max_programs\" directive invalid number",
        "transform_max_programs 16;",
    ),
    row(
        "transform_rlimit",
        Level::Location,
        "transform_rlimit nofile many;",
        "invalid value \"many\"",
        "transform_rlimit nofile 64;",
    ),
    row(
        "transform_env",
        Level::Location,
        "transform_env 1BAD x;",
        "invalid variable name \"1BAD\"",
        "transform_env LANG C.UTF-8;",
    ),
    row(
        "transform_chdir",
        Level::Location,
        "transform_chdir \"/tmp/${dir\";",
        "the closing bracket in \"dir\" variable is missing",
        "transform_chdir /tmp;",
    ),
    row(
        "transform_timeout",
        Level::Location,
        "transform_timeout soon;",
        "\"transform_timeout\" directive invalid value",
        "transform_timeout 10s;",
    ),
    row(
        "transform_read_timeout",
        Level::Location,
        "transform_read_timeout soon;",
        "\"transform_read_timeout\" directive invalid value",
        "transform_read_timeout 30s;",
    ),
    row(
        "transform_send_timeout",
        Level::Location,
        "transform_send_timeout soon;",
        "\"transform_send_timeout\" directive invalid value",
        "transform_send_timeout 30s;",
    ),
    row(
        "transform_kill_timeout",
        Level::Location,
        "transform_kill_timeout soon;",
        "\"transform_kill_timeout\" directive invalid value",
        "transform_kill_timeout 500ms;",
    ),
    row(
        "transform_store",
        Level::Location,
        "transform_store \"\";",
        "empty store path",
        "transform_store {PREFIX}/store$uri;",
    ),
    row(
        "transform_store_access",
        Level::Location,
        "transform_store_access user:rx;",
        "invalid value \"user:rx\"",
        "transform_store_access user:rw group:r all:r;",
    ),
    row(
        "transform_temp_path",
        Level::Location,
        "transform_temp_path {PREFIX}/tt 0;",
        "\"transform_temp_path\" directive invalid value",
        "transform_temp_path {PREFIX}/tt 1 2;",
    ),
    row(
        "transform_lock",
        Level::Location,
        "transform_lock maybe;",
        "it must be \"on\" or \"off\"",
        "transform_lock off;",
    ),
    row(
        "transform_lock_key",
        Level::Location,
        "transform_lock_key $uri $args;",
        "invalid number of arguments in \"transform_lock_key\" directive",
        "transform_lock_key $uri$arg_size;",
    ),
    row(
        "transform_lock_timeout",
        Level::Location,
        "transform_lock_timeout soon;",
        "\"transform_lock_timeout\" directive invalid value",
        "transform_lock_timeout 5s;",
    ),
    row(
        "transform_filter",
        Level::Location,
        "transform_filter bin/cat;",
        "program \"bin/cat\" is not an absolute path",
        "transform_filter /usr/bin/tr a-z A-Z;",
    ),
    row(
        "transform_filter_types",
        Level::Location,
        "transform_filter_types;",
        "invalid number of arguments in \"transform_filter_types\"",
        "transform_filter_types text/html application/json;",
    ),
    row(
        "transform_filter_type",
        Level::Location,
        "transform_filter_type text/html text/plain;",
        "invalid number of arguments in \"transform_filter_type\"",
        "transform_filter_type text/plain;",
    ),
    row(
        "transform_filter_status",
        Level::Location,
        "transform_filter_status abc;",
        "\"abc\"",
        "transform_filter_status 200 404;",
    ),
    row(
        "transform_pool",
        Level::Http,
        "transform_pool p bin/echo;",
        "program \"bin/echo\" is not an absolute path",
        "transform_pool p {HELPER} pool-serve processes=2 max_requests=100 idle_timeout=10s queue=8;",
    ),
    row(
        "transform_pass",
        Level::Pass,
        "transform_pass nopool;",
        "nopool",
        "transform_pass p;",
    ),
    row(
        "transform_filter_pass",
        Level::Pass,
        "transform_filter_pass nopool;",
        "nopool",
        "transform_filter_pass p;",
    ),
    row(
        "transform_sandbox_paths",
        Level::Location,
        "transform_sandbox_paths /usr relative/dir;",
        "invalid path \"relative/dir\"",
        "transform_sandbox_paths /usr /etc/ld.so.cache rw=/tmp;",
    ),
    row(
        "transform_sandbox_syscalls",
        Level::Location,
        "transform_sandbox_syscalls strict;",
        "invalid value \"strict\"",
        "transform_sandbox_syscalls default;",
    ),
    row(
        "transform_sandbox_namespaces",
        Level::Location,
        "transform_sandbox_namespaces user cgroup;",
        "unknown namespace \"cgroup\"",
        "transform_sandbox_namespaces user pid ipc net mount uts;",
    ),
    row(
        "transform_lock_zone",
        Level::Http,
        "transform_lock_zone herd;",
        "invalid zone \"herd\": name:size expected",
        "transform_lock_zone herd:1m;",
    ),
    // (`off`: accepted on any machine; tests/cgroup.rs tests the limits.)
    row(
        "transform_cgroup",
        Level::Location,
        "transform_cgroup memory.max=lots;",
        "invalid parameter \"memory.max=lots\"",
        "transform_cgroup off;",
    ),
    row(
        "transform_cgroup_version",
        Level::Http,
        "transform_cgroup_version v3;",
        "invalid value \"v3\": auto, v2 or v1",
        "transform_cgroup_version auto;",
    ),
];

/// A configuration with `line` where its directive belongs, marked `#BAD` for [`rejects`].
fn placed(r: &Row, line: &str) -> String {
    match r.level {
        Level::Http => format!(
            "{line} #BAD\nserver {{ listen 127.0.0.1:{{PORT}};\nlocation / {{ transform_exec /bin/true; }} }}"
        ),
        Level::Location if r.directive == "transform_exec" => {
            format!("server {{ listen 127.0.0.1:{{PORT}};\nlocation / {{\n{line} #BAD\n}} }}")
        }
        Level::Location => format!(
            "server {{ listen 127.0.0.1:{{PORT}};\nlocation / {{ transform_exec /bin/true;\n{line} #BAD\n}} }}"
        ),
        Level::Pass => format!(
            "transform_pool p {{HELPER}} pool-serve;\nserver {{ listen 127.0.0.1:{{PORT}};\nlocation / {{\n{line} #BAD\n}} }}"
        ),
    }
}

/// The directives in the module's command table (`COMMANDS` in src/conf.rs).
fn module_directives() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/conf.rs");
    let src = std::fs::read_to_string(&path).expect("src/conf.rs");
    let table = src
        .split_once("pub static mut COMMANDS")
        .and_then(|(_, rest)| rest.split_once("ngx_command_t::empty()"))
        .map(|(table, _)| table)
        .expect("the COMMANDS table in src/conf.rs, ending with ngx_command_t::empty()");
    table
        .split("ngx_string!(\"")
        .skip(1)
        .filter_map(|piece| piece.split_once('"').map(|(name, _)| name.to_string()))
        .collect()
}

#[test]
fn the_table_covers_every_directive_of_the_module() {
    let module = module_directives();
    assert!(module.len() >= 18, "directives found: {module:?}");
    let tested: Vec<&str> = DIRECTIVES.iter().map(|r| r.directive).collect();
    let missing: Vec<&String> = module
        .iter()
        .filter(|d| !tested.contains(&d.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "directives without a row in DIRECTIVES (tests/config.rs): {missing:?}"
    );
    let unknown: Vec<&&str> = tested
        .iter()
        .filter(|d| !module.iter().any(|m| m == *d))
        .collect();
    assert!(unknown.is_empty(), "rows for no directive: {unknown:?}");
}

#[test]
fn every_directive_rejects_a_bad_value_naming_file_and_line() {
    for r in DIRECTIVES {
        assert!(r.bad.starts_with(r.directive) && r.good.starts_with(r.directive));
        rejects(&placed(r, r.bad), r.message);
    }
}

#[test]
fn every_directive_accepts_a_good_value() {
    for r in DIRECTIVES {
        let (ok, stderr, path) = nginx_test_config(&placed(r, r.good));
        std::fs::remove_dir_all(path.parent().expect("prefix")).ok();
        assert!(
            ok,
            "{}: nginx -t refused {:?}: {stderr}",
            r.directive, r.good
        );
    }
}
