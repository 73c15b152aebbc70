//! The content handler: checks the request, evaluates the program and its arguments (each one argv
//! element, never a shell) and hands over to the relay.

use std::ffi::CString;

use nginx_sys::{
    ngx_http_request_t, ngx_int_t, NGX_HTTP_BAD_REQUEST, NGX_HTTP_INTERNAL_SERVER_ERROR,
    NGX_LOG_ERR, NGX_OK,
};

use crate::conf::TransformConf;
use crate::nginx::Http;
use crate::relay;

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
    let rc = http.discard_body();
    if rc != NGX_OK as ngx_int_t {
        return rc;
    }
    let conf: &'static TransformConf = http.loc_conf::<crate::Module>();

    let content_type = match conf.content_type() {
        None => None,
        Some(cv) => match http.complex_value(cv) {
            Some(v) => Some(v),
            None => return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
        },
    };

    if http.is_head() {
        // HEAD: the headers of a raw-output response do not depend on the program, so it is not run.
        return http.send_header(content_type, None);
    }

    let argv = match evaluate_argv(http, conf) {
        Ok(argv) => argv,
        Err(rc) => return rc,
    };
    relay::start(http, conf, argv, content_type)
}

/// Evaluates the program and arguments; each value becomes exactly one argv element.
fn evaluate_argv(http: Http, conf: &TransformConf) -> Result<Vec<CString>, ngx_int_t> {
    let mut argv = Vec::with_capacity(conf.argv().len());
    for (i, cv) in conf.argv().iter().enumerate() {
        let value = http
            .complex_value(cv)
            .ok_or(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t)?;
        let Ok(arg) = CString::new(value) else {
            log_error!(
                NGX_LOG_ERR,
                http.log(),
                0,
                "transform_exec argument {i} contains a NUL byte"
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
            "transform_exec program \"{}\" is not an absolute path",
            String::from_utf8_lossy(program)
        );
        return Err(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
    }
    Ok(argv)
}
