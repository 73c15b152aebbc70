//! `transform_filter`: the response filter module (`ngx_http_transform_filter_module`, in the
//! same shared object). Its header filter decides whether a response is filtered and starts the
//! program, holding the header back; its body filter hands the response's buffers to the relay
//! (`relay::filter`), which sends the program's output to the filters after ours.
//!
//! A dynamic module's filters are registered after nginx's own, so ours run first: the program
//! gets the body as the handler made it, and gzip, sub_filter, SSI, addition and chunked see the
//! program's output.

use core::ffi::c_void;
use core::ptr;

use nginx_sys::{
    ngx_chain_t, ngx_conf_t, ngx_http_request_t, ngx_int_t, ngx_module_t, NGX_ERROR,
    NGX_HTTP_BAD_GATEWAY, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_SERVICE_UNAVAILABLE,
    NGX_LOG_ERR, NGX_OK,
};

use crate::child;
use crate::conf::TransformConf;
use crate::handler;
use crate::nginx::filter::{consume, install, Downstream};
use crate::nginx::{CtxKind, Http};
use crate::relay::filter as relay_filter;
use crate::relay::{Transform, Variable};

/// The filter module: this file's filters, with the transform module's configuration.
pub fn module() -> &'static ngx_module_t {
    // SAFETY: the static is only written by nginx while loading modules.
    unsafe { &*ptr::addr_of!(crate::ngx_http_transform_filter_module) }
}

/// Postconfiguration of the filter module: puts its filters at the top of nginx's chains.
///
/// # Safety
/// nginx calls it once per configuration.
pub unsafe extern "C" fn init(_cf: *mut ngx_conf_t) -> ngx_int_t {
    // SAFETY: nginx's contract for postconfiguration.
    unsafe { install(Some(header_filter), Some(body_filter)) };
    NGX_OK as ngx_int_t
}

/// The relay filtering this request's response, or null.
fn relay(http: Http) -> *mut Transform {
    http.ctx(module(), CtxKind::Transform).cast()
}

/// Ties the relay to the request.
pub fn set_ctx(http: Http, data: *mut c_void) -> bool {
    http.set_ctx(module(), CtxKind::Transform, data)
}

/// Whether a filter program takes this request's output (which then cannot bypass the
/// chain).
pub fn takes_output(http: Http) -> bool {
    !relay(http).is_null() || !waiting(http).is_null()
}

/// A log variable of the filter program (for a request that ran no `transform_exec`).
pub fn variable(http: Http, which: Variable) -> Option<String> {
    // SAFETY: null or the request's relay (pool-owned).
    unsafe { relay(http).as_ref() }.and_then(|t| t.variable(which))
}

/// What becomes of a response.
enum Decision {
    /// Not one to filter (its status or type): it passes untouched.
    Pass,
    Filter,
    /// One to filter that the program cannot take: an error in its place, never the
    /// unfiltered original (a filter may be what keeps content from clients).
    Refuse(&'static str),
}

fn decide(http: Http, conf: &TransformConf) -> Decision {
    if http.header_only() {
        return Decision::Pass;
    }
    let status = http.status();
    // A 206 is a part of a 200 that would be filtered whole (unless 206 is listed itself); the
    // type of several parts (multipart/byteranges) says nothing of theirs.
    let partial = status == 206 && !conf.lists_status(206);
    let filtered = if partial {
        conf.filters_status(200)
    } else {
        conf.filters_status(status)
    };
    let typed = http.type_in(&conf.filter_types) || partial && http.multipart_ranges();
    if !filtered || !typed {
        return Decision::Pass;
    }
    if partial {
        return Decision::Refuse(
            "a part of a response (206): its handler answered a Range request (for a proxied \
             one: proxy_set_header Range \"\"; proxy_set_header If-Range \"\";)",
        );
    }
    if http.encoded() {
        return Decision::Refuse(
            "an encoded response (Content-Encoding): the program would get compressed bytes \
             (for a proxied one: proxy_set_header Accept-Encoding \"\";)",
        );
    }
    Decision::Filter
}

unsafe extern "C" fn header_filter(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls header filters with a live request.
    let http = unsafe { Http::from_ptr(r) };
    let conf: &'static TransformConf = http.loc_conf::<crate::Module>();
    // (A response already under way here is the error page in place of one that failed.)
    let filter_finalize = http.with_filter_finalize();
    let argv = conf.filter_argv();
    if argv.is_none() && conf.filter_pool.is_none() {
        return Downstream::Next.send_header(http);
    }
    if filter_finalize
        && !http.ctx(module(), CtxKind::Refused).is_null()
        && !http.add_header("Retry-After", "1")
    {
        return NGX_ERROR as ngx_int_t;
    }
    if filter_finalize || !relay(http).is_null() || !waiting(http).is_null() {
        return Downstream::Next.send_header(http);
    }
    match decide(http, conf) {
        Decision::Pass => return Downstream::Next.send_header(http),
        Decision::Refuse(why) => {
            log_error!(
                NGX_LOG_ERR,
                http.log(),
                0,
                "transform_filter cannot filter {why}"
            );
            return fail(http, NGX_HTTP_BAD_GATEWAY as ngx_int_t);
        }
        Decision::Filter => {}
    }
    let content_type =
        match handler::evaluate_type(http, conf.filter_type(), "transform_filter_type") {
            Ok(t) => t,
            Err(rc) => return fail(http, rc),
        };
    http.clear_body_headers();
    if let Some(t) = content_type {
        http.set_content_type(t);
    }
    if http.is_head() {
        // The header of what a GET would get; the program does not run.
        return Downstream::Next.send_header(http);
    }
    if let (Some(index), None) = (conf.filter_pool, &argv) {
        let Some(head) = http.pool_response_head() else {
            log_error!(
                NGX_LOG_ERR,
                http.log(),
                0,
                "transform_filter_pass cannot pass a response with a CR, LF or NUL in its \
                 status line or headers"
            );
            return fail(http, NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
        };
        return match crate::pool::filter_request(http, conf, index, content_type, head) {
            // The header goes out at the commit.
            Ok(()) => NGX_OK as ngx_int_t,
            Err(rc) => {
                if rc == NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t {
                    mark_refused(http);
                }
                fail(http, rc)
            }
        };
    }
    let Some(argv) = argv else {
        return Downstream::Next.send_header(http);
    };
    if child::over_limit(http, conf) {
        mark_refused(http);
        return fail(http, NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t);
    }
    let launch = match handler::evaluate(http, conf, argv, "transform_filter") {
        Ok(launch) => launch,
        Err(rc) => return fail(http, rc),
    };
    match relay_filter::start(http, conf, launch, content_type) {
        // The header goes out at the commit, with what the program made of the body.
        Ok(_) => NGX_OK as ngx_int_t,
        Err(rc) => fail(http, rc),
    }
}

/// Marks the request for its 503, which comes back through this filter (with Retry-After).
fn mark_refused(http: Http) {
    let _ = http.set_ctx(
        module(),
        CtxKind::Refused,
        ptr::NonNull::<u8>::dangling().as_ptr().cast(),
    );
}

/// The response waiting for a pooled process, or null.
fn waiting(http: Http) -> *mut crate::pool::Waiter {
    http.ctx(module(), CtxKind::Waiting).cast()
}

/// Ties a waiting response to the request.
pub fn set_waiting(http: Http, data: *mut c_void) -> bool {
    http.set_ctx(module(), CtxKind::Waiting, data)
}

/// A response that waited for a pooled process and cannot be filtered after all (its process
/// could not start): as [`fail`], from outside the filters (the handler passed its buffers,
/// `held`, which are dropped).
pub fn refuse_late(http: Http, status: ngx_int_t, held: *mut ngx_chain_t) {
    http.set_buffered(false);
    consume(held);
    // The error page (or the include's end) passes through this filter untouched.
    http.clear_ctx(module());
    if http.is_subrequest() {
        let _ = fail(http, status);
        let _ = Downstream::Next.special(http, true);
        // Its handler goes on (its buffers were taken).
        http.post();
        return;
    }
    let _ = http.filter_finalize(module(), status);
    http.finalize(NGX_ERROR as ngx_int_t);
}

/// A response that cannot be filtered (refused, or its program could not start): an error page
/// of `status` in its place; a subrequest's (an SSI include) is left out of the page instead
/// (its header never reaches the client; the reason is in the log): ending the main request for
/// it would lose the whole page.
fn fail(http: Http, status: ngx_int_t) -> ngx_int_t {
    if http.is_subrequest() {
        // (Its body is dropped by the body filter; the ctx marks it.)
        let omitted = ptr::NonNull::<u8>::dangling().as_ptr().cast();
        if !http.set_ctx(module(), CtxKind::Omitted, omitted) {
            return NGX_ERROR as ngx_int_t;
        }
        return Downstream::Next.send_header(http);
    }
    http.filter_finalize(module(), status)
}

unsafe extern "C" fn body_filter(r: *mut ngx_http_request_t, chain: *mut ngx_chain_t) -> ngx_int_t {
    // SAFETY: nginx calls body filters with a live request.
    let http = unsafe { Http::from_ptr(r) };
    if !http.ctx(module(), CtxKind::Omitted).is_null() {
        // An include left out: only its end goes on.
        return if consume(chain) {
            Downstream::Next.special(http, true)
        } else {
            Downstream::Next.body(http, ptr::null_mut())
        };
    }
    let w = waiting(http);
    if !w.is_null() {
        // SAFETY: the request's waiter, in its pool.
        return unsafe { crate::pool::hold(w, chain) };
    }
    let t = relay(http);
    if t.is_null() {
        return Downstream::Next.body(http, chain);
    }
    // SAFETY: the request's relay, in its pool.
    unsafe { (*t).filter_body(chain) }
}
