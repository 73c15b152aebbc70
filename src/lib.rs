//! ngx_http_transform_module: answers an HTTP request with the streamed output of a program.
//!
//! This file only wires the parts together: the module statics, the `HttpModule` impl and the
//! worker hooks. See `conf` (directives), `handler` (content handler), `relay` (the per-request
//! state machine), `child` (spawning and reaping), `nginx` (FFI layer) and `os` (OS layer).

use core::ffi::c_void;
use core::ptr;

use nginx_sys::{
    ngx_conf_t, ngx_cycle_t, ngx_http_module_t, ngx_int_t, ngx_module_t, ngx_uint_t,
    NGX_HTTP_MODULE, NGX_LOG_ALERT, NGX_LOG_EMERG,
};
use ngx::core::Status;
use ngx::http::{HttpModule, HttpModuleMainConf};

#[macro_use]
mod log;

mod background;
mod cgi;
mod cgroup;
mod child;
mod conf;
mod filter;
mod follow;
mod handler;
mod http1;
mod lock;
mod nginx;
mod os;
mod pipes;
mod pool;
mod relay;
mod sandbox;
mod stderr;
mod store;
mod variables;

/// The module's type for ngx's `HttpModule` traits.
pub struct Module;

impl HttpModule for Module {
    fn module() -> &'static ngx_module_t {
        // SAFETY: the static is only written by nginx while loading modules.
        unsafe { &*ptr::addr_of!(ngx_http_transform_module) }
    }

    /// Adds the log variables.
    unsafe extern "C" fn preconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
        sandbox::forget_paths();
        cgroup::forget();
        // SAFETY: nginx passes the live configuration; the table is only used here.
        match unsafe { nginx::add_variables(cf, &mut *ptr::addr_of_mut!(variables::VARIABLES)) } {
            true => Status::NGX_OK.into(),
            false => Status::NGX_ERROR.into(),
        }
    }

    /// Refuses a kernel that cannot run the programs (`nginx -t`, start-up and reload fail with
    /// one line). Here rather than in `init_module`, whose failure makes nginx exit(1), even a
    /// running master on reload.
    unsafe extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
        // SAFETY: nginx passes the live configuration.
        let log = unsafe { (*cf).log };
        sandbox::log_report(log);
        // SAFETY: as above.
        if !cgroup::configure(unsafe { &*cf }) {
            return Status::NGX_ERROR.into();
        }
        match os::probe_kernel() {
            Ok(()) => return Status::NGX_OK.into(),
            Err(os::KernelError::Probe(e)) => {
                log_error!(NGX_LOG_EMERG, log, os::errno(&e), "pipe2() failed");
            }
            Err(os::KernelError::TooOld(e)) => {
                log_error!(
                    NGX_LOG_EMERG,
                    log,
                    os::errno(&e),
                    "the transform module needs Linux {} or newer, this is {}: waitid(P_PIDFD) \
                     failed",
                    os::MIN_KERNEL,
                    os::kernel_release()
                );
            }
        }
        Status::NGX_ERROR.into()
    }
}

static NGX_HTTP_TRANSFORM_MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: Some(Module::preconfiguration),
    postconfiguration: Some(Module::postconfiguration),
    create_main_conf: Some(Module::create_main_conf),
    init_main_conf: Some(conf::init_main_conf),
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: Some(Module::create_loc_conf),
    merge_loc_conf: Some(conf::merge_loc_conf),
};

/// The response filter (`transform_filter`): a module of its own for its place in nginx's
/// filter chains and its per-request state; it reads the transform module's configuration.
static NGX_HTTP_TRANSFORM_FILTER_MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: None,
    postconfiguration: Some(filter::init),
    create_main_conf: None,
    init_main_conf: None,
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: None,
    merge_loc_conf: None,
};

#[used]
#[allow(non_upper_case_globals)]
#[cfg_attr(not(feature = "export-modules"), no_mangle)]
pub static mut ngx_http_transform_filter_module: ngx_module_t = ngx_module_t {
    ctx: ptr::addr_of!(NGX_HTTP_TRANSFORM_FILTER_MODULE_CTX)
        .cast_mut()
        .cast::<c_void>(),
    commands: ptr::null_mut(),
    type_: NGX_HTTP_MODULE as ngx_uint_t,
    ..ngx_module_t::default()
};

// The module table of the shared object, as ngx's `ngx_modules!` makes it (whose counting macro
// fails for two modules in ngx 0.5.1).
#[cfg(feature = "export-modules")]
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_modules: [*const ngx_module_t; 3] = [
    ptr::addr_of!(ngx_http_transform_module),
    ptr::addr_of!(ngx_http_transform_filter_module),
    ptr::null(),
];

#[cfg(feature = "export-modules")]
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_module_names: [*const core::ffi::c_char; 3] = [
    c"ngx_http_transform_module".as_ptr(),
    c"ngx_http_transform_filter_module".as_ptr(),
    ptr::null(),
];

#[cfg(feature = "export-modules")]
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_module_order: [*const core::ffi::c_char; 1] = [ptr::null()];

#[used]
#[allow(non_upper_case_globals)]
#[cfg_attr(not(feature = "export-modules"), no_mangle)]
pub static mut ngx_http_transform_module: ngx_module_t = ngx_module_t {
    ctx: ptr::addr_of!(NGX_HTTP_TRANSFORM_MODULE_CTX)
        .cast_mut()
        .cast::<c_void>(),
    // SAFETY: only the address of the command table is taken.
    commands: unsafe { ptr::addr_of_mut!(conf::COMMANDS[0]) },
    type_: NGX_HTTP_MODULE as ngx_uint_t,
    init_module: Some(init_module),
    init_process: Some(init_process),
    exit_process: Some(exit_process),
    ..ngx_module_t::default()
};

/// The configuration is committed (in the master; also under `nginx -t`).
extern "C" fn init_module(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    cgroup::commit(cycle);
    Status::NGX_OK.into()
}

/// Worker start: the module reaps its own children through pidfds, so nginx's SIGCHLD handler
/// (which reaps any child and steals its status) must not run in workers that run programs.
/// A configuration that runs none (the module loaded, as a distribution package loads it, but
/// unused) keeps nginx's handler.
extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: nginx passes the live cycle.
    let runs_programs = <Module as HttpModuleMainConf>::main_conf(unsafe { &*cycle })
        .is_some_and(|main| main.runs_programs);
    if runs_programs {
        if let Err(e) = os::default_sigchld() {
            // SAFETY: nginx passes the live cycle.
            log_error!(
                NGX_LOG_ALERT,
                unsafe { (*cycle).log },
                os::errno(&e),
                "sigaction(SIGCHLD) failed"
            );
            return Status::NGX_ERROR.into();
        }
    }
    // SAFETY: nginx passes the live cycle.
    store::sweep(unsafe { (*cycle).log });
    lock::sweep_dead(cycle);
    // SAFETY: nginx passes the live cycle.
    cgroup::start_worker(unsafe { (*cycle).log });
    Status::NGX_OK.into()
}

/// Worker exit: no program outlives its worker.
extern "C" fn exit_process(_cycle: *mut ngx_cycle_t) {
    background::stop_all();
    pool::stop_all();
    child::kill_all();
    cgroup::exit_all();
    follow::shutdown();
}
