//! The content handler: checks the request, evaluates the program and its arguments (each one argv
//! element, never a shell) and hands over to the relay.

use std::ffi::CString;

use nginx_sys::{
    ngx_http_complex_value_t, ngx_http_request_t, ngx_int_t, NGX_DONE, NGX_HTTP_BAD_REQUEST,
    NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_SERVICE_UNAVAILABLE, NGX_HTTP_SPECIAL_RESPONSE,
    NGX_LOG_ERR, NGX_OK,
};

use crate::child;
use crate::conf::TransformConf;
use crate::follow;
use crate::log::escape;
use crate::nginx::{self, ContentType, Http};
use crate::relay::{self, Launch};
use crate::store::{self, Plan};

/// `clcf->handler` of every location with `transform_exec`.
///
/// # Safety
/// nginx calls content handlers with a live request.
pub unsafe extern "C" fn transform_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx's contract for content handlers.
    let http = unsafe { Http::from_ptr(r) };
    handle(http)
}

fn handle(http: Http) -> ngx_int_t {
    let conf: &'static TransformConf = http.loc_conf::<crate::Module>();
    if conf.pool.is_some() {
        return handle_pass(http);
    }
    // A body the program does not take is still read (and dropped) as it arrives, as nginx's
    // upstream reads one it does not pass on: nginx's discarding would take over the client
    // connection's read events (with lingering_timeout cutting a long response, and a client
    // gone unnoticed), which suits only a response that is done.
    let drop_body = conf.stdin_body == 0 && http.has_body();
    if (conf.stdin_body != 0 || drop_body) && !http.is_head() {
        // The program starts with the first part of the body, which then streams to its stdin
        // as it arrives; with transform_request_buffering on, once nginx has all of it (in
        // memory or in a temporary file). (A body only dropped may have been partly read.)
        let stream = conf.request_buffering == 0;
        return read_body_then(http, body_ready, conf.stdin_body != 0, stream);
    }
    let rc = http.discard_body();
    if rc != NGX_OK as ngx_int_t {
        return rc;
    }
    run(http, conf)
}

/// `transform_pass`: the request body is read whole first (its length goes in the request
/// head), then a process of the pool takes the request, now or when one is free.
fn handle_pass(http: Http) -> ngx_int_t {
    if http.has_body() {
        return read_body_then(http, pass_body_ready, true, false);
    }
    let rc = http.discard_body();
    if rc != NGX_OK as ngx_int_t {
        return rc;
    }
    pass(http)
}

/// Reads the request body (whole, or handed over as it arrives: `stream`), then calls `ready`.
/// A body partly read by an earlier location (before an internal redirect or error_page) cannot
/// be given to a program (`whole`): what is left is not the body: 500.
fn read_body_then(
    http: Http,
    ready: unsafe extern "C" fn(*mut ngx_http_request_t),
    whole: bool,
    stream: bool,
) -> ngx_int_t {
    if whole && http.reading_body() {
        // What is left is not the body, and must not pass for it.
        log_error!(
            NGX_LOG_ERR,
            http.log(),
            0,
            "transform: the request body was partly read before an internal redirect; \
             it cannot be given to the program"
        );
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    }
    if stream {
        http.stream_body();
    }
    let rc = nginx::read_body(http, ready);
    if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
        return rc;
    }
    NGX_DONE as ngx_int_t
}

unsafe extern "C" fn pass_body_ready(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls the body handler with a live request.
    let http = unsafe { Http::from_ptr(r) };
    http.finalize(pass(http));
}

fn pass(http: Http) -> ngx_int_t {
    let conf: &'static TransformConf = http.loc_conf::<crate::Module>();
    let content_type = match evaluate_type(http, conf.content_type(), "transform_type") {
        Ok(t) => t,
        Err(rc) => return rc,
    };
    match conf.pool {
        Some(index) => crate::pool::request(http, conf, index, content_type),
        None => NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
    }
}

/// The request body has been read, or has started to arrive: start the program, then drop the
/// reference that reading the body took (the relay holds its own).
unsafe extern "C" fn body_ready(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls the body handler with a live request.
    let http = unsafe { Http::from_ptr(r) };
    let rc = run(http, http.loc_conf::<crate::Module>());
    http.finalize(rc);
}

/// Everything after the body decision.
fn run(http: Http, conf: &'static TransformConf) -> ngx_int_t {
    run_with(http, conf, true)
}

/// For a request that waited for another's program in vain: runs its own, neither stored nor
/// shared (the response was not one to share), or claims the key again (`share`: the request
/// that ran it ended early).
fn run_again(http: Http, share: bool) -> ngx_int_t {
    run_with(http, http.loc_conf::<crate::Module>(), share)
}

/// Headers for HEAD, the store and the lock (`share`), limits, evaluation, the relay.
fn run_with(http: Http, conf: &'static TransformConf, share: bool) -> ngx_int_t {
    let content_type = match evaluate_type(http, conf.content_type(), "transform_type") {
        Ok(t) => t,
        Err(rc) => return rc,
    };

    if http.is_head() && conf.cgi_output == 0 {
        // HEAD: the headers of a raw-output response do not depend on the program, so it is not run.
        http.disable_not_modified();
        return http.send_header(ContentType::Configured(content_type), None);
    }

    if child::over_limit(http, conf) {
        if !http.add_header("Retry-After", "1") {
            return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
        }
        return NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t;
    }

    // Only GET responses are stored or shared (as nginx's cache keeps GET and HEAD only): a
    // POST's output may depend on its body, and must not be served for the URI. A HEAD
    // request's response has no body.
    let store = if share && conf.uses_temp_file() && http.is_get() {
        match store::plan(http, conf) {
            Ok(Plan::Run(store)) => store,
            Ok(Plan::Follow(watch)) => {
                return follow::start(http, conf, watch, content_type, run_again);
            }
            Err(rc) => return rc,
        }
    } else {
        None
    };

    let launch = match evaluate(http, conf, conf.argv(), "transform_exec") {
        Ok(launch) => launch,
        Err(rc) => return rc,
    };
    relay::start(http, conf, launch, content_type, store)
}

/// Evaluates a Content-Type directive (`what`): None for unset or empty.
pub fn evaluate_type(
    http: Http,
    cv: Option<&ngx_http_complex_value_t>,
    what: &str,
) -> Result<Option<&'static [u8]>, ngx_int_t> {
    let Some(cv) = cv else {
        return Ok(None);
    };
    match http.complex_value(cv) {
        // Empty: as if unset.
        Some([]) => Ok(None),
        Some(v) if v.iter().any(|&b| b < 0x20 && b != b'\t' || b == 0x7f) => {
            // A value from the request must not start a header of its own.
            log_error!(
                NGX_LOG_ERR,
                http.log(),
                0,
                "{what} value \"{}\" contains a control character",
                escape(v)
            );
            Err(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t)
        }
        Some(v) => Ok(Some(v)),
        None => Err(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t),
    }
}

/// Evaluates what the program (`argv`, of directive `what`) starts with: argv, environment,
/// working directory.
pub fn evaluate<'a>(
    http: Http,
    conf: &TransformConf,
    argv: impl Iterator<Item = &'a ngx_http_complex_value_t>,
    what: &str,
) -> Result<Launch, ngx_int_t> {
    let argv = evaluate_argv(http, argv, what)?;
    let mut env = Vec::new();
    let mut has_path = false;
    for var in conf.env.iter().flatten() {
        // SAFETY: value was compiled by transform_env and lives as long as the configuration.
        let cv = unsafe { &*var.value };
        let value = http
            .complex_value(cv)
            .ok_or(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t)?;
        let mut entry = var.prefix.clone();
        entry.extend_from_slice(value);
        has_path |= var.prefix == b"PATH=";
        env.push(to_cstring(http, entry, "transform_env value")?);
    }
    if !has_path {
        env.push(relay::DEFAULT_PATH.to_owned());
    }
    let dir = match conf.dir() {
        None => None,
        Some(cv) => {
            let value = http
                .complex_value(cv)
                .ok_or(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t)?;
            Some(to_cstring(http, value.to_vec(), "transform_chdir")?)
        }
    };
    Ok(Launch { argv, env, dir })
}

/// A value for the program; a NUL byte (which would silently cut it) is a bad request.
fn to_cstring(http: Http, value: Vec<u8>, what: &str) -> Result<CString, ngx_int_t> {
    CString::new(value).map_err(|_| {
        log_error!(NGX_LOG_ERR, http.log(), 0, "{what} contains a NUL byte");
        NGX_HTTP_BAD_REQUEST as ngx_int_t
    })
}

/// Evaluates the program and arguments; each value becomes exactly one argv element.
fn evaluate_argv<'a>(
    http: Http,
    words: impl Iterator<Item = &'a ngx_http_complex_value_t>,
    what: &str,
) -> Result<Vec<CString>, ngx_int_t> {
    let mut argv = Vec::new();
    for (i, cv) in words.enumerate() {
        let value = http
            .complex_value(cv)
            .ok_or(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t)?;
        let Ok(arg) = CString::new(value) else {
            log_error!(
                NGX_LOG_ERR,
                http.log(),
                0,
                "{what} argument {i} contains a NUL byte"
            );
            return Err(NGX_HTTP_BAD_REQUEST as ngx_int_t);
        };
        argv.push(arg);
    }
    let program = argv[0].as_bytes();
    if !program.starts_with(b"/") {
        log_error!(
            NGX_LOG_ERR,
            http.log(),
            0,
            "{what} program \"{}\" is not an absolute path",
            escape(program)
        );
        return Err(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
    }
    Ok(argv)
}
