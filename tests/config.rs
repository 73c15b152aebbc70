//! `nginx -t` catches misuse of every directive, naming the file and line.

mod common;

use common::*;

/// Asserts that `nginx -t` fails on `http_body` with `message`; returns stderr and the path.
fn rejects_anywhere(http_body: &str, message: &str) -> (String, std::path::PathBuf) {
    let (ok, stderr, path) = nginx_test_config(http_body);
    assert!(!ok, "nginx -t accepted: {http_body}");
    assert!(
        stderr.contains("[emerg]"),
        "no [emerg] for {http_body}: {stderr}"
    );
    assert!(
        stderr.contains(message),
        "expected {message:?} for {http_body}: {stderr}"
    );
    (stderr, path)
}

/// Asserts that `nginx -t` fails on `http_body` with `message`, pointing at the right line.
fn rejects(http_body: &str, message: &str) {
    let (stderr, path) = rejects_anywhere(http_body, message);
    // The directive is on the line marked BAD; nginx names the file and that line.
    let conf = std::fs::read_to_string(&path).unwrap();
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
