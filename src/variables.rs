//! Log variables: `$transform_pid`, `$transform_exit_status`, `$transform_time`,
//! `$transform_bytes`, and for `transform_pass` `$transform_requests`, `$transform_queue_time`. Empty (not found) in requests that ran no program.

use nginx_sys::{ngx_http_request_t, ngx_http_variable_t, ngx_int_t, ngx_variable_value_t};
use ngx::core::Status;
use ngx::http::HttpModule;
use ngx::ngx_string;

use crate::nginx::{set_variable, CtxKind, Http};
use crate::relay::{Transform, Variable};

const NGX_HTTP_VAR_NOCACHEABLE: usize = 2;

/// The module's variables, added at preconfiguration.
pub static mut VARIABLES: [ngx_http_variable_t; 6] = [
    variable(ngx_string!("transform_pid"), Variable::Pid),
    variable(ngx_string!("transform_exit_status"), Variable::ExitStatus),
    variable(ngx_string!("transform_time"), Variable::Time),
    variable(ngx_string!("transform_bytes"), Variable::Bytes),
    variable(ngx_string!("transform_requests"), Variable::Requests),
    variable(ngx_string!("transform_queue_time"), Variable::QueueTime),
];

const fn variable(name: nginx_sys::ngx_str_t, which: Variable) -> ngx_http_variable_t {
    ngx_http_variable_t {
        name,
        set_handler: None,
        get_handler: Some(get_variable),
        data: which as usize,
        flags: NGX_HTTP_VAR_NOCACHEABLE,
        index: 0,
    }
}

unsafe extern "C" fn get_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    data: usize,
) -> ngx_int_t {
    // SAFETY: nginx calls variable handlers with a live request.
    let http = unsafe { Http::from_ptr(r) };
    let ctx = http
        .ctx(crate::Module::module(), CtxKind::Transform)
        .cast::<Transform>();
    // SAFETY: null or the request's Transform (pool-owned).
    let value = match unsafe { ctx.as_ref() } {
        Some(t) => t.variable(Variable::from(data)),
        // A request that ran no program of its own may have filtered its response through one.
        None => crate::filter::variable(http, Variable::from(data)),
    };
    // SAFETY: v is the value slot nginx passed for this variable.
    if unsafe { set_variable(http, v, value.as_deref()) } {
        Status::NGX_OK.into()
    } else {
        Status::NGX_ERROR.into()
    }
}
