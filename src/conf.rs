//! Location configuration and every `transform_*` directive (the README documents each one):
//! the command table, the merge of inherited values, and the parsers nginx has no slot for.

use core::ffi::{c_char, c_int, c_void, CStr};
use core::mem::offset_of;
use core::ptr;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use nginx_sys::{
    ngx_array_t, ngx_atoi, ngx_command_t, ngx_conf_enum_t, ngx_conf_merge_path_value,
    ngx_conf_set_access_slot, ngx_conf_set_enum_slot, ngx_conf_set_flag_slot,
    ngx_conf_set_msec_slot, ngx_conf_set_num_slot, ngx_conf_set_path_slot, ngx_conf_set_size_slot,
    ngx_conf_t, ngx_flag_t, ngx_hash_t, ngx_http_compile_complex_value,
    ngx_http_compile_complex_value_t, ngx_http_complex_value_t, ngx_http_html_default_types,
    ngx_http_merge_types, ngx_http_script_variables_count, ngx_http_set_complex_value_slot,
    ngx_http_types_slot, ngx_int_t, ngx_msec_t, ngx_parse_offset, ngx_parse_time, ngx_path_init_t,
    ngx_path_t, ngx_pcalloc, ngx_shm_zone_t, ngx_str_t, ngx_uint_t, NGX_CONF_1MORE, NGX_CONF_2MORE,
    NGX_CONF_FLAG, NGX_CONF_TAKE1, NGX_CONF_TAKE1234, NGX_CONF_TAKE2, NGX_CONF_TAKE3, NGX_ERROR,
    NGX_HTTP_LIF_CONF, NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF,
    NGX_HTTP_MAIN_CONF_OFFSET, NGX_HTTP_SRV_CONF, NGX_LOG_DEBUG, NGX_LOG_EMERG, NGX_LOG_ERR,
    NGX_LOG_INFO, NGX_LOG_NOTICE, NGX_LOG_WARN, NGX_OK,
};
use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::http::{
    HttpModuleLocationConf, HttpModuleMainConf, Merge, MergeConfigError, NgxHttpCoreModule,
};
use ngx::ngx_string;

use crate::os;

/// Default size asked for the stdout pipe: big pipes let splice move large pieces per wake-up.
pub const DEFAULT_PIPE_SIZE: usize = 1024 * 1024;

const NGX_CONF_UNSET: ngx_flag_t = -1;
const NGX_CONF_UNSET_SIZE: usize = usize::MAX;
const NGX_CONF_UNSET_MSEC: ngx_msec_t = ngx_msec_t::MAX;
const NGX_CONF_UNSET_UINT: ngx_uint_t = ngx_uint_t::MAX;

/// One value of an enum directive (nginx's ngx_conf_enum_t).
const fn choice(name: ngx_str_t, value: u32) -> ngx_conf_enum_t {
    ngx_conf_enum_t {
        name,
        value: value as ngx_uint_t,
    }
}

/// The end of an enum table.
const END: ngx_conf_enum_t = ngx_conf_enum_t {
    name: ngx_str_t {
        len: 0,
        data: ptr::null_mut(),
    },
    value: 0,
};

/// Values of `transform_stdin`.
static mut STDIN_MODES: [ngx_conf_enum_t; 3] = [
    choice(ngx_string!("off"), 0),
    choice(ngx_string!("body"), 1),
    END,
];

/// Values of `transform_output`.
static mut OUTPUT_MODES: [ngx_conf_enum_t; 3] = [
    choice(ngx_string!("raw"), 0),
    choice(ngx_string!("cgi"), 1),
    END,
];

/// Values of `transform_stderr`: off, or the level of each line.
static mut STDERR_LEVELS: [ngx_conf_enum_t; 7] = [
    choice(ngx_string!("off"), 0),
    choice(ngx_string!("error"), NGX_LOG_ERR),
    choice(ngx_string!("warn"), NGX_LOG_WARN),
    choice(ngx_string!("notice"), NGX_LOG_NOTICE),
    choice(ngx_string!("info"), NGX_LOG_INFO),
    choice(ngx_string!("debug"), NGX_LOG_DEBUG),
    END,
];

/// Default `transform_commit_size`: small results (thumbnails, documents) are held whole, so a
/// failure is a clean 502 and success gets a Content-Length; long outputs start after 64 KiB.
pub const DEFAULT_COMMIT_SIZE: usize = 64 * 1024;

/// Default `transform_commit_timeout`: how long output is held before the commit when neither
/// `transform_commit_size` nor the program's end came. Below the ~100 ms at which a person
/// notices a delay, so a slow producer (`tail -f`, a progress stream) starts flowing at once;
/// long enough for a program that fails right after its first write (a usage line then exit 1,
/// a converter rejecting its input after the first bytes: a few ms) to become a clean 502.
pub const DEFAULT_COMMIT_TIMEOUT: ngx_msec_t = 100;

/// Default `transform_max_programs`: programs one worker runs at once.
pub const DEFAULT_MAX_PROGRAMS: ngx_int_t = 64;

/// Default `transform_read_timeout`, as nginx's `proxy_read_timeout`.
pub const DEFAULT_READ_TIMEOUT: ngx_msec_t = 60_000;
/// Default `transform_send_timeout`, as nginx's `send_timeout`.
pub const DEFAULT_SEND_TIMEOUT: ngx_msec_t = 60_000;
/// Default `transform_kill_timeout`: the grace between SIGTERM and SIGKILL.
pub const DEFAULT_KILL_TIMEOUT: ngx_msec_t = 2_000;

/// Per-location configuration.
#[derive(Debug)]
pub struct TransformConf {
    /// Program and arguments, compiled; None if unset.
    pub exec: Option<Vec<*mut ngx_http_complex_value_t>>,
    /// Content-Type of the response; null for nginx's `default_type`.
    pub content_type: *mut ngx_http_complex_value_t,
    /// `transform_splice`.
    pub splice: ngx_flag_t,
    /// `transform_pipe_size`.
    pub pipe_size: usize,
    /// `transform_commit_size`: output held before the response header is sent.
    pub commit_size: usize,
    /// `transform_commit_timeout`: longest time output is held before the commit.
    pub commit_timeout: ngx_msec_t,
    /// `transform_timeout`: longest run time of the program; 0 for none.
    pub timeout: ngx_msec_t,
    /// `transform_read_timeout`: longest wait for the program's next output (or its exit).
    pub read_timeout: ngx_msec_t,
    /// `transform_send_timeout`: longest wait for the client to accept more output.
    pub send_timeout: ngx_msec_t,
    /// `transform_kill_timeout`: after SIGTERM, how long before SIGKILL.
    pub kill_timeout: ngx_msec_t,
    /// `transform_stderr`: log level of the program's stderr lines, 0 for off.
    pub stderr_level: ngx_uint_t,
    /// `transform_stdin`: 1 to give the program the request body.
    pub stdin_body: ngx_uint_t,
    /// `transform_request_buffering`: read the whole body before the program starts.
    pub request_buffering: ngx_flag_t,
    /// `transform_output`: 1 when the program prints a CGI header block first.
    pub cgi_output: ngx_uint_t,
    /// `transform_header_buffer_size`: the largest header block.
    pub header_buffer_size: usize,
    /// `transform_max_programs` (http level): programs a worker runs at once; 0 for no limit.
    pub max_programs: ngx_int_t,
    /// `transform_rlimit`: limits set in the program before exec.
    pub rlimits: Option<Vec<(c_int, libc::rlimit)>>,
    /// `transform_env`: the program's environment besides the default PATH.
    pub env: Option<Vec<EnvVar>>,
    /// `transform_chdir`: the program's working directory.
    pub dir: *mut ngx_http_complex_value_t,
    /// `transform_store`: off, on (root/alias + URI), or a path with variables.
    pub store: Store,
    /// `transform_store_access`: the stored file's permissions.
    pub store_access: ngx_uint_t,
    /// `transform_temp_path`: where outputs are written before they are published.
    pub temp_path: *mut ngx_path_t,
    /// `transform_lock`: one program for the requests of one key.
    pub lock: ngx_flag_t,
    /// `transform_lock_key`: the key (default: the store path).
    pub lock_key: *mut ngx_http_complex_value_t,
    /// `transform_lock_timeout`: the longest wait for the running program's next output.
    pub lock_timeout: ngx_msec_t,
    /// `transform_lock_zone` (http level): the shared memory of the locks.
    pub lock_zone: *mut ngx_shm_zone_t,
    /// Where `transform_lock on` was written, for the error when it cannot work.
    lock_at: Option<(String, ngx_uint_t)>,
    /// `transform_filter`: the filter program and arguments, compiled; `Some([])` for off.
    pub filter: Option<Vec<*mut ngx_http_complex_value_t>>,
    /// `transform_filter_types`, as nginx keeps gzip_types: the keys while reading the
    /// configuration, the hash after the merge.
    pub filter_types: ngx_hash_t,
    pub filter_types_keys: *mut ngx_array_t,
    /// `transform_filter_type`: Content-Type of a filtered response; null keeps the original.
    pub filter_type: *mut ngx_http_complex_value_t,
    /// `transform_filter_status`: the statuses filtered; `Some([])` for any.
    pub filter_status: Option<Vec<u16>>,
    /// `transform_pass`: the pool's name and where the directive is (not inherited).
    pub pass: Option<PoolRef>,
    /// The pool `transform_pass` names, resolved at the merge: its index in the main conf.
    pub pool: Option<usize>,
    /// `transform_filter_pass`: the pool's name and where (`Some(None)`: off).
    pub filter_pass: Option<Option<PoolRef>>,
    /// Its pool, resolved at the merge.
    pub filter_pool: Option<usize>,
    /// `transform_sandbox_paths`: the Landlock ruleset (`Some(None)`: off).
    pub sandbox_paths: Option<Option<Arc<crate::sandbox::Landlock>>>,
    /// `transform_sandbox_syscalls`: 1 for `default`, 0 for `none`.
    pub sandbox_syscalls: ngx_uint_t,
    /// `transform_sandbox_namespaces`: the CLONE_NEW* flags (`Some(0)`: off).
    pub sandbox_namespaces: Option<c_int>,
    /// `transform_cgroup`: the limits (`Some(None)`: off).
    pub cgroup: Option<Option<Arc<crate::cgroup::Limits>>>,
}

/// `transform_store`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Store {
    Unset,
    Off,
    /// The path nginx maps the URI to, as `proxy_store on`.
    On,
    Path(*mut ngx_http_complex_value_t),
}

/// One `transform_env NAME value`.
#[derive(Clone, Debug)]
pub struct EnvVar {
    /// `NAME=`.
    pub prefix: Vec<u8>,
    pub value: *mut ngx_http_complex_value_t,
}

impl Default for TransformConf {
    fn default() -> Self {
        TransformConf {
            exec: None,
            content_type: ptr::null_mut(),
            splice: NGX_CONF_UNSET,
            pipe_size: NGX_CONF_UNSET_SIZE,
            commit_size: NGX_CONF_UNSET_SIZE,
            commit_timeout: NGX_CONF_UNSET_MSEC,
            timeout: NGX_CONF_UNSET_MSEC,
            read_timeout: NGX_CONF_UNSET_MSEC,
            send_timeout: NGX_CONF_UNSET_MSEC,
            kill_timeout: NGX_CONF_UNSET_MSEC,
            stderr_level: NGX_CONF_UNSET_UINT,
            stdin_body: NGX_CONF_UNSET_UINT,
            request_buffering: NGX_CONF_UNSET,
            cgi_output: NGX_CONF_UNSET_UINT,
            header_buffer_size: NGX_CONF_UNSET_SIZE,
            max_programs: NGX_CONF_UNSET as ngx_int_t,
            rlimits: None,
            env: None,
            dir: ptr::null_mut(),
            store: Store::Unset,
            store_access: NGX_CONF_UNSET_UINT,
            temp_path: ptr::null_mut(),
            lock: NGX_CONF_UNSET,
            lock_key: ptr::null_mut(),
            lock_timeout: NGX_CONF_UNSET_MSEC,
            lock_zone: ptr::null_mut(),
            lock_at: None,
            filter: None,
            // SAFETY: an empty hash is all zeroes (nginx's ngx_pcalloc'ed conf).
            filter_types: unsafe { core::mem::zeroed() },
            filter_types_keys: ptr::null_mut(),
            filter_type: ptr::null_mut(),
            filter_status: None,
            pass: None,
            pool: None,
            filter_pass: None,
            filter_pool: None,
            sandbox_paths: None,
            sandbox_syscalls: NGX_CONF_UNSET_UINT,
            sandbox_namespaces: None,
            cgroup: None,
        }
    }
}

impl TransformConf {
    /// The compiled program and arguments.
    pub fn argv(&self) -> impl Iterator<Item = &ngx_http_complex_value_t> {
        // SAFETY: compiled by transform_exec in the configuration pool, alive with it.
        self.exec.iter().flatten().map(|&cv| unsafe { &*cv })
    }

    pub fn dir(&self) -> Option<&ngx_http_complex_value_t> {
        // SAFETY: null or a complex value compiled by ngx_http_set_complex_value_slot.
        unsafe { self.dir.as_ref() }
    }

    pub fn lock_key(&self) -> Option<&ngx_http_complex_value_t> {
        // SAFETY: null or a complex value compiled by ngx_http_set_complex_value_slot.
        unsafe { self.lock_key.as_ref() }
    }

    /// Whether outputs go through a temporary file (to be stored, or read by waiting requests).
    pub fn uses_temp_file(&self) -> bool {
        self.store != Store::Off || self.lock != 0
    }

    pub fn content_type(&self) -> Option<&ngx_http_complex_value_t> {
        // SAFETY: null or a complex value compiled by ngx_http_set_complex_value_slot.
        unsafe { self.content_type.as_ref() }
    }

    /// The compiled filter program and arguments, if the location filters responses.
    pub fn filter_argv(&self) -> Option<impl Iterator<Item = &ngx_http_complex_value_t>> {
        let argv = self.filter.as_ref().filter(|a| !a.is_empty())?;
        // SAFETY: compiled by transform_filter in the configuration pool, alive with it.
        Some(argv.iter().map(|&cv| unsafe { &*cv }))
    }

    pub fn filter_type(&self) -> Option<&ngx_http_complex_value_t> {
        // SAFETY: null or a complex value compiled by ngx_http_set_complex_value_slot.
        unsafe { self.filter_type.as_ref() }
    }

    /// The sandbox of this level's programs, as the child applies it (without the cgroup, which
    /// is made per program).
    pub fn confine(&self) -> os::Confine<'static> {
        os::Confine {
            landlock: match &self.sandbox_paths {
                Some(Some(paths)) => paths.fd(),
                // (Built when the directive was read: it cannot fail here.)
                _ if self.sandbox_syscalls == 1 => crate::sandbox::scope_only()
                    .ok()
                    .and_then(crate::sandbox::Landlock::fd),
                _ => None,
            },
            // (Built when the directive was read: it cannot fail here.)
            filter: (self.sandbox_syscalls == 1)
                .then(crate::sandbox::default_filter)
                .and_then(Result::ok),
            namespaces: self.sandbox_namespaces.unwrap_or(0),
            cgroup_procs: &[],
        }
    }

    /// Whether this (merged) level confines its programs as `http`, the http level's (unmerged)
    /// configuration, does.
    pub fn same_confinement(&self, http: &TransformConf) -> bool {
        fn same<T>(a: &Option<Option<Arc<T>>>, b: &Option<Option<Arc<T>>>) -> bool {
            match (
                a.as_ref().and_then(Option::as_ref),
                b.as_ref().and_then(Option::as_ref),
            ) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
        }
        let syscalls = |v: ngx_uint_t| if v == NGX_CONF_UNSET_UINT { 0 } else { v };
        same(&self.sandbox_paths, &http.sandbox_paths)
            && same(&self.cgroup, &http.cgroup)
            && syscalls(self.sandbox_syscalls) == syscalls(http.sandbox_syscalls)
            && self.sandbox_namespaces.unwrap_or(0) == http.sandbox_namespaces.unwrap_or(0)
    }

    /// The limits of `transform_cgroup`, if on.
    pub fn cgroup(&self) -> Option<&crate::cgroup::Limits> {
        self.cgroup.as_ref()?.as_deref()
    }

    /// Whether `transform_filter_status` names `status` itself (not through `any`).
    pub fn lists_status(&self, status: u16) -> bool {
        self.filter_status
            .as_ref()
            .is_some_and(|list| list.contains(&status))
    }

    /// Whether responses of `status` are filtered (never 1xx, 204 and 304, which have no body).
    pub fn filters_status(&self, status: ngx_uint_t) -> bool {
        if status < 200 || status == 204 || status == 304 {
            return false;
        }
        match &self.filter_status {
            None => status == 200,
            Some(list) if list.is_empty() => true,
            Some(list) => list.iter().any(|&s| ngx_uint_t::from(s) == status),
        }
    }
}

impl Merge for TransformConf {
    fn merge(&mut self, prev: &TransformConf) -> Result<(), MergeConfigError> {
        if self.exec.is_none() {
            self.exec.clone_from(&prev.exec);
        }
        if self.rlimits.is_none() {
            self.rlimits.clone_from(&prev.rlimits);
        }
        if self.env.is_none() {
            self.env.clone_from(&prev.env);
        }
        if self.filter.is_none() && self.filter_pass.is_none() {
            // (The level that sets either decides.)
            self.filter.clone_from(&prev.filter);
            self.filter_pass.clone_from(&prev.filter_pass);
        }
        if self.filter_status.is_none() {
            self.filter_status.clone_from(&prev.filter_status);
        }
        if self.sandbox_paths.is_none() {
            self.sandbox_paths.clone_from(&prev.sandbox_paths);
        }
        if self.sandbox_namespaces.is_none() {
            self.sandbox_namespaces = prev.sandbox_namespaces;
        }
        if self.cgroup.is_none() {
            self.cgroup.clone_from(&prev.cgroup);
        }
        merge(
            &mut self.sandbox_syscalls,
            prev.sandbox_syscalls,
            NGX_CONF_UNSET_UINT,
            0,
        );
        merge(
            &mut self.filter_type,
            prev.filter_type,
            ptr::null_mut(),
            ptr::null_mut(),
        );
        merge(
            &mut self.content_type,
            prev.content_type,
            ptr::null_mut(),
            ptr::null_mut(),
        );
        merge(&mut self.dir, prev.dir, ptr::null_mut(), ptr::null_mut());
        merge(&mut self.store, prev.store, Store::Unset, Store::Off);
        merge(
            &mut self.store_access,
            prev.store_access,
            NGX_CONF_UNSET_UINT,
            0o600,
        );
        merge(&mut self.lock, prev.lock, NGX_CONF_UNSET, 0);
        merge(
            &mut self.lock_key,
            prev.lock_key,
            ptr::null_mut(),
            ptr::null_mut(),
        );
        merge(
            &mut self.lock_zone,
            prev.lock_zone,
            ptr::null_mut(),
            ptr::null_mut(),
        );
        if self.lock_at.is_none() {
            self.lock_at.clone_from(&prev.lock_at);
        }
        merge(&mut self.splice, prev.splice, NGX_CONF_UNSET, 1);
        merge(
            &mut self.request_buffering,
            prev.request_buffering,
            NGX_CONF_UNSET,
            0,
        );
        merge(
            &mut self.pipe_size,
            prev.pipe_size,
            NGX_CONF_UNSET_SIZE,
            DEFAULT_PIPE_SIZE,
        );
        merge(
            &mut self.commit_size,
            prev.commit_size,
            NGX_CONF_UNSET_SIZE,
            DEFAULT_COMMIT_SIZE,
        );
        merge(
            &mut self.stdin_body,
            prev.stdin_body,
            NGX_CONF_UNSET_UINT,
            0,
        );
        let warn = NGX_LOG_WARN as ngx_uint_t;
        merge(
            &mut self.cgi_output,
            prev.cgi_output,
            NGX_CONF_UNSET_UINT,
            0,
        );
        let size = NGX_CONF_UNSET_SIZE;
        merge(
            &mut self.header_buffer_size,
            prev.header_buffer_size,
            size,
            4096,
        );
        merge(
            &mut self.stderr_level,
            prev.stderr_level,
            NGX_CONF_UNSET_UINT,
            warn,
        );
        let unset = NGX_CONF_UNSET as ngx_int_t;
        merge(
            &mut self.max_programs,
            prev.max_programs,
            unset,
            DEFAULT_MAX_PROGRAMS,
        );
        let unset = NGX_CONF_UNSET_MSEC;
        merge(&mut self.timeout, prev.timeout, unset, 0);
        merge(
            &mut self.commit_timeout,
            prev.commit_timeout,
            unset,
            DEFAULT_COMMIT_TIMEOUT,
        );
        merge(
            &mut self.read_timeout,
            prev.read_timeout,
            unset,
            DEFAULT_READ_TIMEOUT,
        );
        merge(
            &mut self.send_timeout,
            prev.send_timeout,
            unset,
            DEFAULT_SEND_TIMEOUT,
        );
        merge(
            &mut self.kill_timeout,
            prev.kill_timeout,
            unset,
            DEFAULT_KILL_TIMEOUT,
        );
        merge(
            &mut self.lock_timeout,
            prev.lock_timeout,
            unset,
            DEFAULT_LOCK_TIMEOUT,
        );
        Ok(())
    }
}

/// Default `transform_lock_timeout`, as `transform_read_timeout`'s: a waiting request waits as
/// long as the program it waits for may be silent.
pub const DEFAULT_LOCK_TIMEOUT: ngx_msec_t = DEFAULT_READ_TIMEOUT;

/// Default `transform_temp_path`: `transform_temp` under the prefix (as proxy_temp), or what
/// `TRANSFORM_TEMP_PATH` said at build time (see build.rs). NUL-terminated: nginx uses an
/// absolute name as it is.
const TEMP_PATH_NAME: &str = concat!(env!("TRANSFORM_TEMP_PATH_DEFAULT"), "\0");
static mut TEMP_PATH: ngx_path_init_t = ngx_path_init_t {
    name: ngx_str_t {
        len: TEMP_PATH_NAME.len() - 1,
        data: TEMP_PATH_NAME.as_ptr().cast_mut(),
    },
    level: [0; 3],
};

/// `merge_loc_conf`: the values, then what needs the configuration (the temp path, whose
/// directories nginx creates at start-up, and the checks of `transform_lock`).
///
/// # Safety
/// nginx calls it with the configuration and two of this module's location configurations.
pub unsafe extern "C" fn merge_loc_conf(
    cf: *mut ngx_conf_t,
    prev: *mut c_void,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx's contract for merge_loc_conf.
    let (cf, prev, conf) = unsafe {
        (
            &mut *cf,
            &mut *prev.cast::<TransformConf>(),
            &mut *conf.cast::<TransformConf>(),
        )
    };
    // (Written at this level, not inherited.)
    let own_filter_pass = conf.filter_pass.is_some();
    if conf.merge(prev).is_err() {
        return NGX_CONF_ERROR;
    }
    // SAFETY: nginx's merge of a types directive (as gzip_types): keys read by
    // ngx_http_types_slot into the temporary pool, hashes built here.
    let rv = unsafe {
        ngx_http_merge_types(
            cf,
            &mut conf.filter_types_keys,
            &mut conf.filter_types,
            &mut prev.filter_types_keys,
            &mut prev.filter_types,
            ptr::addr_of_mut!(ngx_http_html_default_types).cast(),
        )
    };
    if rv != NGX_CONF_OK {
        return rv;
    }
    // SAFETY: the paths are null or nginx's; TEMP_PATH is only read by nginx.
    let rv = unsafe {
        ngx_conf_merge_path_value(
            cf,
            &mut conf.temp_path,
            prev.temp_path,
            ptr::addr_of_mut!(TEMP_PATH),
        )
    };
    if rv != NGX_CONF_OK {
        return rv;
    }
    if conf.exec.is_some() && conf.uses_temp_file() {
        // SAFETY: merged above: nginx's path.
        let (name, levels) = unsafe { ((*conf.temp_path).name.len, (*conf.temp_path).len) };
        // "dir/" + levels + "transform-<pid>-<10 digits>" must fit a lock slot.
        if name + 1 + levels + 40 > crate::lock::MAX_TEMP_NAME {
            // SAFETY: conf_file is null or the NUL-terminated name of the file it was set in.
            let at = unsafe {
                let p = &*conf.temp_path;
                (!p.conf_file.is_null()).then(|| {
                    let file = CStr::from_ptr(p.conf_file.cast()).to_string_lossy();
                    format!(" in {file}:{}", p.line)
                })
            };
            log_error!(
                NGX_LOG_EMERG,
                cf.log,
                0,
                "\"transform_temp_path\"{} is too long: its name with its levels must stay \
                 under {} bytes",
                at.unwrap_or_default(),
                crate::lock::MAX_TEMP_NAME - 40
            );
            return NGX_CONF_ERROR;
        }
        crate::store::register_temp_path(conf.temp_path);
    }
    if let (Some(limits), true) = (
        conf.cgroup(),
        conf.exec.is_some() || conf.filter_argv().is_some(),
    ) {
        let paths = conf.sandbox_paths.as_ref().and_then(Option::as_deref);
        if !crate::cgroup::confined(cf.log, limits, paths) {
            return NGX_CONF_ERROR;
        }
    }
    if let Some(Some(at)) = &conf.filter_pass {
        match find_pool(cf, "transform_filter_pass", at) {
            Some(i) => conf.filter_pool = Some(i),
            None => return NGX_CONF_ERROR,
        }
        // Where this level names the pool and runs no program of its own, a sandbox or cgroup
        // that differs from the http level's could only be meant for the pool's processes: it
        // would be ignored, so refuse.
        let own_programs = conf.exec.is_some() || conf.pass.is_some();
        if own_filter_pass
            && !own_programs
            && !same_confinement_as_pool(cf, conf, conf.filter_pool, "transform_filter_pass", at)
        {
            return NGX_CONF_ERROR;
        }
    }
    if let Some(at) = &conf.pass {
        let (_, file, line) = at;
        if conf.store != Store::Off || conf.lock != 0 {
            log_error!(
                NGX_LOG_EMERG,
                cf.log,
                0,
                "\"transform_pass\" in {file}:{line} cannot store or share its responses: set \
                 \"transform_store off\" and \"transform_lock off\" there"
            );
            return NGX_CONF_ERROR;
        }
        match find_pool(cf, "transform_pass", at) {
            Some(i) => conf.pool = Some(i),
            None => return NGX_CONF_ERROR,
        }
        if !same_confinement_as_pool(cf, conf, conf.pool, "transform_pass", at) {
            return NGX_CONF_ERROR;
        }
    }
    if let (Some(a), Some(b), Some((_, file, line))) = (conf.pool, conf.filter_pool, &conf.pass) {
        if a == b {
            log_error!(
                NGX_LOG_EMERG,
                cf.log,
                0,
                "\"transform_pass\" in {file}:{line} and its \"transform_filter_pass\" use one \
                 pool: a response would wait for a process its own request holds"
            );
            return NGX_CONF_ERROR;
        }
    }
    if conf.lock != 0 && conf.exec.is_some() {
        let (file, line) = conf.lock_at.clone().unwrap_or_default();
        let missing = if conf.lock_zone.is_null() {
            Some("no \"transform_lock_zone\" is defined")
        } else if conf.lock_key.is_null() && conf.store == Store::Off {
            Some("it needs \"transform_store\" or \"transform_lock_key\"")
        } else {
            None
        };
        if let Some(why) = missing {
            log_error!(
                NGX_LOG_EMERG,
                cf.log,
                0,
                "\"transform_lock\" in {file}:{line} cannot work: {why}"
            );
            return NGX_CONF_ERROR;
        }
    }
    NGX_CONF_OK
}

/// Whether `conf` confines programs as its pool's processes are (the http level's); if not, the
/// directive `what` at `at` is refused with a line: a sandbox or cgroup set below http would not
/// reach the pool's processes, which serve every location.
fn same_confinement_as_pool(
    cf: &ngx_conf_t,
    conf: &TransformConf,
    pool: Option<usize>,
    what: &str,
    (_, file, line): &PoolRef,
) -> bool {
    let main = <crate::Module as HttpModuleMainConf>::main_conf(cf).expect("main conf");
    let http = pool.and_then(|i| main.pools[i].http_conf());
    if http.is_none_or(|http| conf.same_confinement(http)) {
        return true;
    }
    log_error!(
        NGX_LOG_EMERG,
        cf.log,
        0,
        "\"{what}\" in {file}:{line} runs its pool's processes, which have the http level's \
         sandbox and cgroup: set transform_sandbox_* and transform_cgroup there, not in this \
         location or its server"
    );
    false
}

/// The pool a directive (`what`, at `file:line`) names, by its index in the main conf; an
/// unknown one is logged.
fn find_pool(cf: &ngx_conf_t, what: &str, (name, file, line): &PoolRef) -> Option<usize> {
    let main = <crate::Module as HttpModuleMainConf>::main_conf(cf).expect("main conf");
    let found = main
        .pools
        .iter()
        .position(|p| p.name.as_bytes() == name.as_slice());
    if found.is_none() {
        log_error!(
            NGX_LOG_EMERG,
            cf.log,
            0,
            "\"{what}\" in {file}:{line} names no \"transform_pool\": \"{}\"",
            crate::log::escape(name)
        );
    }
    found
}

/// A pool's name as a directive gives it, and where (file, line): found at the merge.
pub type PoolRef = (Vec<u8>, String, usize);

/// The name a directive gives (its one argument) and where it stands.
fn pool_ref(cf: &ngx_conf_t) -> PoolRef {
    // SAFETY: cf->args is an array of ngx_str_t with the name and one word; conf_file is the
    // file being read.
    unsafe {
        let args: &[ngx_str_t] = (*cf.args).as_slice();
        let cfile = &*cf.conf_file;
        (
            args[1].as_bytes().to_vec(),
            cfile.file.name.to_string(),
            cfile.line,
        )
    }
}

/// What `transform_filter` and `transform_filter_pass` say when either is set at a level already.
const FILTER_DUPLICATE: &CStr = c"is duplicate (with transform_filter or transform_filter_pass)";

/// nginx's ngx_conf_merge_*_value: unset takes the enclosing level's value, else the default.
fn merge<T: PartialEq + Copy>(conf: &mut T, prev: T, unset: T, default: T) {
    if *conf == unset {
        *conf = if prev == unset { default } else { prev };
    }
}

/// Contexts of the directives that apply at every level.
const ANY: u32 = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;

type SetHandler =
    unsafe extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char;

/// One directive of the location configuration.
const fn command(
    name: ngx_str_t,
    type_: u32,
    set: SetHandler,
    offset: usize,
    post: *mut c_void,
) -> ngx_command_t {
    ngx_command_t {
        name,
        type_: type_ as ngx_uint_t,
        set: Some(set),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset,
        post,
    }
}

/// The directive table.
pub static mut COMMANDS: [ngx_command_t; 39] = [
    command(
        ngx_string!("transform_exec"),
        NGX_HTTP_LOC_CONF | NGX_HTTP_LIF_CONF | NGX_CONF_1MORE,
        set_exec,
        0,
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_type"),
        ANY | NGX_CONF_TAKE1,
        ngx_http_set_complex_value_slot,
        offset_of!(TransformConf, content_type),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_splice"),
        ANY | NGX_CONF_FLAG,
        ngx_conf_set_flag_slot,
        offset_of!(TransformConf, splice),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_pipe_size"),
        ANY | NGX_CONF_TAKE1,
        set_pipe_size,
        offset_of!(TransformConf, pipe_size),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_commit_size"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_size_slot,
        offset_of!(TransformConf, commit_size),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_commit_timeout"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_msec_slot,
        offset_of!(TransformConf, commit_timeout),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_stderr"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_enum_slot,
        offset_of!(TransformConf, stderr_level),
        ptr::addr_of_mut!(STDERR_LEVELS).cast(),
    ),
    command(
        ngx_string!("transform_stdin"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_enum_slot,
        offset_of!(TransformConf, stdin_body),
        ptr::addr_of_mut!(STDIN_MODES).cast(),
    ),
    command(
        ngx_string!("transform_request_buffering"),
        ANY | NGX_CONF_FLAG,
        ngx_conf_set_flag_slot,
        offset_of!(TransformConf, request_buffering),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_output"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_enum_slot,
        offset_of!(TransformConf, cgi_output),
        ptr::addr_of_mut!(OUTPUT_MODES).cast(),
    ),
    command(
        ngx_string!("transform_header_buffer_size"),
        ANY | NGX_CONF_TAKE1,
        set_header_buffer_size,
        offset_of!(TransformConf, header_buffer_size),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_max_programs"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        ngx_conf_set_num_slot,
        offset_of!(TransformConf, max_programs),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_rlimit"),
        ANY | NGX_CONF_TAKE2,
        set_rlimit,
        0,
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_env"),
        ANY | NGX_CONF_TAKE2,
        set_env,
        0,
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_chdir"),
        ANY | NGX_CONF_TAKE1,
        ngx_http_set_complex_value_slot,
        offset_of!(TransformConf, dir),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_timeout"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_msec_slot,
        offset_of!(TransformConf, timeout),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_read_timeout"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_msec_slot,
        offset_of!(TransformConf, read_timeout),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_send_timeout"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_msec_slot,
        offset_of!(TransformConf, send_timeout),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_kill_timeout"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_msec_slot,
        offset_of!(TransformConf, kill_timeout),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_store"),
        ANY | NGX_CONF_TAKE1,
        set_store,
        0,
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_store_access"),
        ANY | NGX_CONF_TAKE1 | NGX_CONF_TAKE2 | NGX_CONF_TAKE3,
        ngx_conf_set_access_slot,
        offset_of!(TransformConf, store_access),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_temp_path"),
        ANY | NGX_CONF_TAKE1234,
        ngx_conf_set_path_slot,
        offset_of!(TransformConf, temp_path),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_lock"),
        ANY | NGX_CONF_FLAG,
        set_lock,
        offset_of!(TransformConf, lock),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_lock_key"),
        ANY | NGX_CONF_TAKE1,
        ngx_http_set_complex_value_slot,
        offset_of!(TransformConf, lock_key),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_lock_timeout"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_msec_slot,
        offset_of!(TransformConf, lock_timeout),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_lock_zone"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        crate::lock::set_zone,
        offset_of!(TransformConf, lock_zone),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_filter"),
        ANY | NGX_CONF_1MORE,
        set_filter,
        0,
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_filter_types"),
        ANY | NGX_CONF_1MORE,
        ngx_http_types_slot,
        offset_of!(TransformConf, filter_types_keys),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_filter_type"),
        ANY | NGX_CONF_TAKE1,
        ngx_http_set_complex_value_slot,
        offset_of!(TransformConf, filter_type),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_filter_status"),
        ANY | NGX_CONF_1MORE,
        set_filter_status,
        0,
        ptr::null_mut(),
    ),
    ngx_command_t {
        name: ngx_string!("transform_pool"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_2MORE) as ngx_uint_t,
        set: Some(set_pool),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    command(
        ngx_string!("transform_filter_pass"),
        ANY | NGX_CONF_TAKE1,
        set_filter_pass,
        0,
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_pass"),
        NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
        set_pass,
        0,
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_sandbox_paths"),
        ANY | NGX_CONF_1MORE,
        set_sandbox_paths,
        0,
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_sandbox_syscalls"),
        ANY | NGX_CONF_TAKE1,
        set_sandbox_syscalls,
        offset_of!(TransformConf, sandbox_syscalls),
        ptr::addr_of_mut!(SYSCALL_PROFILES).cast(),
    ),
    command(
        ngx_string!("transform_sandbox_namespaces"),
        ANY | NGX_CONF_1MORE,
        set_sandbox_namespaces,
        0,
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_cgroup"),
        ANY | NGX_CONF_1MORE,
        crate::cgroup::set_cgroup,
        0,
        ptr::null_mut(),
    ),
    command(
        ngx_string!("transform_cgroup_version"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        crate::cgroup::set_version,
        0,
        ptr::null_mut(),
    ),
    ngx_command_t::empty(),
];

/// Values of `transform_sandbox_syscalls`.
static mut SYSCALL_PROFILES: [ngx_conf_enum_t; 3] = [
    choice(ngx_string!("none"), 0),
    choice(ngx_string!("default"), 1),
    END,
];

/// `transform_sandbox_syscalls none | default`: nginx's enum slot; the `default` filter is
/// compiled now (once per process), so a failure is an `nginx -t` error.
extern "C" fn set_sandbox_syscalls(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: forwarded as nginx gave them.
    let rv = unsafe { ngx_conf_set_enum_slot(cf, cmd, conf) };
    if rv != NGX_CONF_OK {
        return rv;
    }
    // SAFETY: conf is this module's loc conf.
    if unsafe { (*conf.cast::<TransformConf>()).sandbox_syscalls } == 1 {
        // SAFETY: nginx passes a valid cf to directive handlers.
        let cf = unsafe { &mut *cf };
        if let Err(e) = crate::sandbox::default_filter().and(crate::sandbox::scope_only()) {
            conf_error(cf, 0, format_args!("{e}"));
            return NGX_CONF_ERROR;
        }
        // SAFETY: conf_file is the file being read.
        let (file, line) = unsafe { ((*cf.conf_file).file.name.to_string(), (*cf.conf_file).line) };
        crate::sandbox::note_syscalls(&file, line);
    }
    NGX_CONF_OK
}

/// `transform_sandbox_paths off | path ...` (`rw=path` for a writable one): the Landlock ruleset
/// is built now; the paths must be absolute and exist.
extern "C" fn set_sandbox_paths(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls directive handlers with a valid cf and this module's loc conf.
    let (cf, conf) = unsafe { (&mut *cf, &mut *conf.cast::<TransformConf>()) };
    if conf.sandbox_paths.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    // SAFETY: cf->args is an array of ngx_str_t with the name and at least one word.
    let args: &[ngx_str_t] = unsafe { (*cf.args).as_slice() };
    let words = &args[1..];
    if words.len() == 1 && words[0].as_bytes() == b"off" {
        conf.sandbox_paths = Some(None);
        return NGX_CONF_OK;
    }
    let mut paths = Vec::with_capacity(words.len());
    for word in words {
        let bytes = word.as_bytes();
        let (write, path) = match bytes.strip_prefix(b"rw=") {
            Some(p) => (true, p),
            None => (false, bytes),
        };
        if !path.starts_with(b"/") || path.contains(&0) {
            conf_error(
                cf,
                0,
                format_args!(
                    "invalid path \"{word}\": an absolute path, or rw= and an absolute path"
                ),
            );
            return NGX_CONF_ERROR;
        }
        let path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(path));
        if let Err(e) = std::fs::metadata(&path) {
            conf_error(
                cf,
                e.raw_os_error().unwrap_or(0),
                format_args!("sandbox path \"{}\" cannot be used", path.display()),
            );
            return NGX_CONF_ERROR;
        }
        paths.push((path, write));
    }
    let rules: Vec<crate::sandbox::Rule<'_>> = paths
        .iter()
        .map(|(path, write)| crate::sandbox::Rule {
            path,
            write: *write,
        })
        .collect();
    match crate::sandbox::landlock(&rules) {
        Ok(ruleset) => {
            // SAFETY: conf_file is the file being read.
            let file = unsafe { (*cf.conf_file).file.name.to_string() };
            // SAFETY: as above.
            crate::sandbox::note_paths(&file, unsafe { (*cf.conf_file).line });
            conf.sandbox_paths = Some(Some(Arc::new(ruleset)));
            NGX_CONF_OK
        }
        Err(e) => {
            conf_error(cf, 0, format_args!("{e}"));
            NGX_CONF_ERROR
        }
    }
}

/// `transform_sandbox_namespaces off | user | pid | ipc | net | mount | uts ...`.
extern "C" fn set_sandbox_namespaces(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls directive handlers with a valid cf and this module's loc conf.
    let (cf, conf) = unsafe { (&mut *cf, &mut *conf.cast::<TransformConf>()) };
    if conf.sandbox_namespaces.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    // SAFETY: cf->args is an array of ngx_str_t with the name and at least one word.
    let args: &[ngx_str_t] = unsafe { (*cf.args).as_slice() };
    let words = &args[1..];
    if words.len() == 1 && words[0].as_bytes() == b"off" {
        conf.sandbox_namespaces = Some(0);
        return NGX_CONF_OK;
    }
    let mut flags = 0;
    for word in words {
        let found = crate::sandbox::NAMESPACES
            .iter()
            .find(|(name, _)| name.as_bytes() == word.as_bytes());
        let Some(&(_, flag)) = found else {
            conf_error(
                cf,
                0,
                format_args!(
                    "unknown namespace \"{word}\": user, pid, ipc, net, mount, uts, or off"
                ),
            );
            return NGX_CONF_ERROR;
        };
        flags |= flag;
    }
    conf.sandbox_namespaces = Some(flags);
    NGX_CONF_OK
}

/// `transform_filter program [argument ...] | off`: compiles each word as a complex value (one
/// argv element each), as `transform_exec`; no content handler (a body filter runs the
/// program on whatever handler's response).
extern "C" fn set_filter(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls directive handlers with a valid cf and this module's loc conf.
    let (cf, conf) = unsafe { (&mut *cf, &mut *conf.cast::<TransformConf>()) };
    if conf.filter.is_some() || conf.filter_pass.is_some() {
        return FILTER_DUPLICATE.as_ptr().cast_mut();
    }
    // SAFETY: cf->args is an array of ngx_str_t with the name and at least one word.
    let args: &mut [ngx_str_t] = unsafe { (*cf.args).as_slice_mut() };
    let words = &mut args[1..];
    if words.len() == 1 && words[0].as_bytes() == b"off" {
        conf.filter = Some(Vec::new());
        return NGX_CONF_OK;
    }
    match compile_argv(cf, words) {
        Ok(argv) => conf.filter = Some(argv),
        Err(msg) => return msg,
    }
    note_programs(cf);
    NGX_CONF_OK
}

/// `transform_filter_pass name | off`: the pool is found at the merge.
extern "C" fn set_filter_pass(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls directive handlers with a valid cf and this module's loc conf.
    let (cf, conf) = unsafe { (&mut *cf, &mut *conf.cast::<TransformConf>()) };
    if conf.filter.is_some() || conf.filter_pass.is_some() {
        return FILTER_DUPLICATE.as_ptr().cast_mut();
    }
    let at = pool_ref(cf);
    conf.filter_pass = Some((at.0 != b"off").then_some(at));
    NGX_CONF_OK
}

/// `transform_filter_status code ... | any`: the statuses whose responses are filtered.
extern "C" fn set_filter_status(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls directive handlers with a valid cf and this module's loc conf.
    let (cf, conf) = unsafe { (&mut *cf, &mut *conf.cast::<TransformConf>()) };
    if conf.filter_status.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    // SAFETY: cf->args is an array of ngx_str_t with the name and at least one word.
    let args: &mut [ngx_str_t] = unsafe { (*cf.args).as_slice_mut() };
    let words = &args[1..];
    if words.len() == 1 && words[0].as_bytes() == b"any" {
        conf.filter_status = Some(Vec::new());
        return NGX_CONF_OK;
    }
    let mut list = Vec::with_capacity(words.len());
    for word in words {
        let code = core::str::from_utf8(word.as_bytes())
            .ok()
            .and_then(|w| w.parse::<u16>().ok())
            .filter(|c| (200..=599).contains(c) && *c != 204 && *c != 304);
        let Some(code) = code else {
            conf_error(
                cf,
                0,
                format_args!(
                    "invalid status \"{word}\": a response status from 200 to 599 with a body \
                     (not 204 or 304), or \"any\""
                ),
            );
            return NGX_CONF_ERROR;
        };
        list.push(code);
    }
    conf.filter_status = Some(list);
    NGX_CONF_OK
}

/// `transform_store on | off | path`: the path may contain variables.
extern "C" fn set_store(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls directive handlers with a valid cf and this module's loc conf.
    let (cf, conf) = unsafe { (&mut *cf, &mut *conf.cast::<TransformConf>()) };
    if conf.store != Store::Unset {
        return c"is duplicate".as_ptr().cast_mut();
    }
    // NGX_CONF_TAKE1: args holds the name and one value.
    // SAFETY: cf->args is an array of ngx_str_t.
    let args: &mut [ngx_str_t] = unsafe { (*cf.args).as_slice_mut() };
    conf.store = match args[1].as_bytes() {
        b"off" => Store::Off,
        b"on" => Store::On,
        b"" => {
            conf_error(cf, 0, format_args!("empty store path"));
            return NGX_CONF_ERROR;
        }
        _ => match compile(cf, &mut args[1]) {
            Some(cv) => Store::Path(cv),
            None => return NGX_CONF_ERROR,
        },
    };
    NGX_CONF_OK
}

/// `transform_lock on | off`: remembers where, to point at it if it cannot work.
extern "C" fn set_lock(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: forwarded as nginx gave them.
    let rv = unsafe { ngx_conf_set_flag_slot(cf, cmd, conf) };
    if rv != NGX_CONF_OK {
        return rv;
    }
    // SAFETY: nginx calls directive handlers with a valid cf (its conf_file is the file being
    // read) and this module's loc conf.
    unsafe {
        let conf = &mut *conf.cast::<TransformConf>();
        let file = &(*(*cf).conf_file).file;
        conf.lock_at = Some((file.name.to_string(), (*(*cf).conf_file).line));
    }
    NGX_CONF_OK
}

/// `transform_exec program [argument ...]`: compiles each word as a complex value (one argv
/// element each) and installs the content handler.
extern "C" fn set_exec(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls directive handlers with a valid cf and this module's loc conf.
    let (cf, conf) = unsafe { (&mut *cf, &mut *conf.cast::<TransformConf>()) };
    if conf.exec.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    // NGX_CONF_1MORE: args holds the directive name and at least one word.
    // SAFETY: cf->args is an array of ngx_str_t.
    let args: &mut [ngx_str_t] = unsafe { (*cf.args).as_slice_mut() };
    let words = &mut args[1..];

    if conf.pass.is_some() {
        conf_error(
            cf,
            0,
            format_args!("\"transform_exec\" and \"transform_pass\" in one location"),
        );
        return NGX_CONF_ERROR;
    }
    match compile_argv(cf, words) {
        Ok(argv) => conf.exec = Some(argv),
        Err(msg) => return msg,
    }
    note_programs(cf);

    let clcf = NgxHttpCoreModule::location_conf_mut(cf).expect("core loc conf");
    clcf.handler = Some(crate::handler::transform_handler);
    NGX_CONF_OK
}

/// `transform_rlimit resource value`: cpu (time), as, fsize, core, data, stack (size), nofile,
/// nproc (number). Repeatable; a level that sets any replaces the inherited list.
extern "C" fn set_rlimit(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls directive handlers with a valid cf and this module's loc conf.
    let (cf, conf) = unsafe { (&mut *cf, &mut *conf.cast::<TransformConf>()) };
    // NGX_CONF_TAKE2: args holds the name and two values.
    // SAFETY: cf->args is an array of ngx_str_t.
    let args: &mut [ngx_str_t] = unsafe { (*cf.args).as_slice_mut() };
    let (name, value) = (args[1], &mut args[2]);
    enum Kind {
        Time,
        Size,
        Number,
    }
    let (resource, kind) = match name.as_bytes() {
        b"cpu" => (libc::RLIMIT_CPU, Kind::Time),
        b"as" => (libc::RLIMIT_AS, Kind::Size),
        b"fsize" => (libc::RLIMIT_FSIZE, Kind::Size),
        b"core" => (libc::RLIMIT_CORE, Kind::Size),
        b"data" => (libc::RLIMIT_DATA, Kind::Size),
        b"stack" => (libc::RLIMIT_STACK, Kind::Size),
        b"nofile" => (libc::RLIMIT_NOFILE, Kind::Number),
        b"nproc" => (libc::RLIMIT_NPROC, Kind::Number),
        _ => {
            conf_error(cf, 0, format_args!("unknown resource \"{name}\""));
            return NGX_CONF_ERROR;
        }
    };
    // SAFETY: value is a valid ngx_str_t of the configuration.
    let n: i64 = unsafe {
        match kind {
            Kind::Time => ngx_parse_time(value, 1) as i64,
            Kind::Size => ngx_parse_offset(value),
            Kind::Number => ngx_atoi(value.data, value.len) as i64,
        }
    };
    if n < 0 {
        conf_error(cf, 0, format_args!("invalid value \"{value}\""));
        return NGX_CONF_ERROR;
    }
    // For cpu, the kernel sends SIGXCPU at the soft limit and SIGKILL at the hard one: a second
    // apart, so a program can be told before it is killed.
    let hard = if resource == libc::RLIMIT_CPU {
        n + 1
    } else {
        n
    };
    let limit = libc::rlimit {
        rlim_cur: n as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    let list = conf.rlimits.get_or_insert_with(Vec::new);
    if list.iter().any(|(r, _)| *r == resource as c_int) {
        conf_error(cf, 0, format_args!("duplicate resource \"{name}\""));
        return NGX_CONF_ERROR;
    }
    list.push((resource as c_int, limit));
    NGX_CONF_OK
}

/// `transform_env NAME value`: the value may contain variables. Repeatable; a level that sets any
/// replaces the inherited list.
extern "C" fn set_env(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls directive handlers with a valid cf and this module's loc conf.
    let (cf, conf) = unsafe { (&mut *cf, &mut *conf.cast::<TransformConf>()) };
    // NGX_CONF_TAKE2: args holds the name and two values.
    // SAFETY: cf->args is an array of ngx_str_t.
    let args: &mut [ngx_str_t] = unsafe { (*cf.args).as_slice_mut() };
    let name = args[1];
    let valid = !name.is_empty()
        && name
            .as_bytes()
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if !valid {
        conf_error(cf, 0, format_args!("invalid variable name \"{name}\""));
        return NGX_CONF_ERROR;
    }
    let Some(value) = compile(cf, &mut args[2]) else {
        return NGX_CONF_ERROR;
    };
    let mut prefix = name.as_bytes().to_vec();
    prefix.push(b'=');
    let list = conf.env.get_or_insert_with(Vec::new);
    if list.iter().any(|e| e.prefix == prefix) {
        conf_error(cf, 0, format_args!("duplicate variable \"{name}\""));
        return NGX_CONF_ERROR;
    }
    list.push(EnvVar { prefix, value });
    NGX_CONF_OK
}

/// A program and its arguments: each word a complex value (one argv element each); a literal
/// program must be an absolute path to an executable file now.
fn compile_argv(
    cf: &mut ngx_conf_t,
    words: &mut [ngx_str_t],
) -> Result<Vec<*mut ngx_http_complex_value_t>, *mut c_char> {
    // SAFETY: words[0] is a valid ngx_str_t of the configuration.
    if unsafe { ngx_http_script_variables_count(&mut words[0]) } == 0 {
        check_program(cf, words[0])?;
    }
    let mut argv = Vec::with_capacity(words.len());
    for word in words.iter_mut() {
        argv.push(compile(cf, word).ok_or(NGX_CONF_ERROR)?);
    }
    Ok(argv)
}

/// A literal program must be an absolute path to an executable file.
fn check_program(cf: &mut ngx_conf_t, word: ngx_str_t) -> Result<(), *mut c_char> {
    let bytes = word.as_bytes();
    if !bytes.starts_with(b"/") {
        conf_error(
            cf,
            0,
            format_args!("program \"{word}\" is not an absolute path"),
        );
        return Err(NGX_CONF_ERROR);
    }
    let Ok(path) = CString::new(bytes) else {
        conf_error(
            cf,
            0,
            format_args!("program \"{word}\" contains a NUL byte"),
        );
        return Err(NGX_CONF_ERROR);
    };
    if let Err(e) = os::check_executable(&path) {
        let err = os::errno(&e);
        conf_error(
            cf,
            err,
            format_args!("program \"{word}\" is not an executable file"),
        );
        return Err(NGX_CONF_ERROR);
    }
    Ok(())
}

/// Compiles a word that may contain variables into a complex value in the configuration pool.
fn compile(cf: &mut ngx_conf_t, word: &mut ngx_str_t) -> Option<*mut ngx_http_complex_value_t> {
    // SAFETY: cf->pool is the configuration pool.
    let cv = unsafe { ngx_pcalloc(cf.pool, size_of::<ngx_http_complex_value_t>()) }
        .cast::<ngx_http_complex_value_t>();
    if cv.is_null() {
        return None;
    }
    // SAFETY: all-zero is the initial state of the compile request (as ngx_memzero in C).
    let mut ccv: ngx_http_compile_complex_value_t = unsafe { core::mem::zeroed() };
    ccv.cf = cf;
    ccv.value = word;
    ccv.complex_value = cv;
    // SAFETY: ccv is filled as ngx_http_compile_complex_value requires.
    if unsafe { ngx_http_compile_complex_value(&mut ccv) } != NGX_OK as isize {
        return None;
    }
    Some(cv)
}

/// `transform_pipe_size size`: nginx's size syntax, from a page to 1 GiB.
extern "C" fn set_pipe_size(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let within = |c: &TransformConf| (4096..=(1 << 30)).contains(&c.pipe_size);
    set_size_checked(cf, cmd, conf, within, "pipe size must be from 4k to 1024m")
}

/// `transform_header_buffer_size size`: nginx's size syntax, at least 16 bytes (the shortest
/// useful header block, `Status: 200` and a blank line, takes 15).
extern "C" fn set_header_buffer_size(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let within = |c: &TransformConf| c.header_buffer_size >= 16;
    set_size_checked(
        cf,
        cmd,
        conf,
        within,
        "header buffer size must be at least 16 bytes",
    )
}

/// nginx's size slot, then a check of the value it set; `msg` when it fails.
fn set_size_checked(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
    within: impl Fn(&TransformConf) -> bool,
    msg: &str,
) -> *mut c_char {
    // SAFETY: forwarded as nginx gave them.
    let rv = unsafe { ngx_conf_set_size_slot(cf, cmd, conf) };
    if rv != NGX_CONF_OK {
        return rv;
    }
    // SAFETY: conf is this module's loc conf.
    if !within(unsafe { &*conf.cast::<TransformConf>() }) {
        // SAFETY: nginx passes a valid cf to directive handlers.
        conf_error(unsafe { &mut *cf }, 0, format_args!("{msg}"));
        return NGX_CONF_ERROR;
    }
    NGX_CONF_OK
}

/// An `[emerg]` naming the configuration file and line (nginx adds "in FILE:LINE").
fn conf_error(cf: &mut ngx_conf_t, err: i32, msg: core::fmt::Arguments<'_>) {
    let text = std::format!("{msg}");
    let fmt: &CStr = c"%*s";
    // SAFETY: cf is valid; the format takes a length and a pointer.
    unsafe {
        nginx_sys::ngx_conf_log_error(
            NGX_LOG_EMERG as _,
            cf,
            err,
            fmt.as_ptr(),
            text.len(),
            text.as_ptr(),
        )
    };
}

/// `transform_exec` / `transform_pass`: the content handler, once per location.
fn set_handler(cf: &mut ngx_conf_t) -> Result<(), *mut c_char> {
    let clcf = NgxHttpCoreModule::location_conf_mut(cf).expect("core loc conf");
    if clcf.handler.is_some() {
        conf_error(
            cf,
            0,
            format_args!("the location has a content handler already"),
        );
        return Err(NGX_CONF_ERROR);
    }
    clcf.handler = Some(crate::handler::transform_handler);
    Ok(())
}

/// The module's http-level configuration: the pools.
#[derive(Default)]
pub struct MainConf {
    pub pools: Vec<PoolConf>,
    /// A directive that runs programs is configured (`transform_exec`, `transform_filter`,
    /// `transform_pool`): only then do the workers take SIGCHLD from nginx (see lib.rs).
    pub runs_programs: bool,
}

/// Notes in the main conf that the configuration runs programs.
fn note_programs(cf: &ngx_conf_t) {
    if let Some(main) = <crate::Module as HttpModuleMainConf>::main_conf_mut(cf) {
        main.runs_programs = true;
    }
}

/// One `transform_pool`.
pub struct PoolConf {
    pub name: String,
    pub argv: Vec<CString>,
    pub processes: usize,
    pub max_requests: u64,
    pub idle_timeout: ngx_msec_t,
    pub queue: usize,
    /// The http level's location configuration: what the processes start with
    /// (`transform_env`, `transform_rlimit`...), merged with the defaults at `init_main_conf`.
    http: *mut TransformConf,
    pub spawn: Option<Box<TransformConf>>,
    /// Environment and working directory, from the http level (literal values).
    pub env: Vec<CString>,
    pub dir: Option<CString>,
}

// SAFETY: the module allocates MainConf in create_main_conf (see lib.rs).
unsafe impl HttpModuleMainConf for crate::Module {
    type MainConf = MainConf;
}

/// `transform_pool name program [argument ...] [processes=N] [max_requests=N]
/// [idle_timeout=time] [queue=N]`.
extern "C" fn set_pool(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls directive handlers with a valid cf and this module's main conf.
    let (cf, main) = unsafe { (&mut *cf, &mut *conf.cast::<MainConf>()) };
    // SAFETY: cf->args is an array of ngx_str_t.
    let args: &mut [ngx_str_t] = unsafe { (*cf.args).as_slice_mut() };
    let name = args[1].to_string();
    if main.pools.iter().any(|p| p.name == name) {
        conf_error(cf, 0, format_args!("duplicate pool \"{name}\""));
        return NGX_CONF_ERROR;
    }
    main.runs_programs = true;
    let mut pool = PoolConf {
        name,
        argv: Vec::new(),
        processes: 1,
        max_requests: 0,
        idle_timeout: 60_000,
        queue: 64,
        http: <crate::Module as HttpModuleLocationConf>::location_conf_mut(&*cf)
            .map_or(ptr::null_mut(), |c| c as *mut TransformConf),
        spawn: None,
        env: Vec::new(),
        dir: None,
    };
    for word in args[2..].iter() {
        let bytes = word.as_bytes();
        let param = |prefix: &[u8]| bytes.strip_prefix(prefix);
        let number = |v: &[u8]| -> Option<u64> { std::str::from_utf8(v).ok()?.parse::<u64>().ok() };
        let bad = |cf: &mut ngx_conf_t| {
            conf_error(cf, 0, format_args!("invalid parameter \"{word}\""));
            NGX_CONF_ERROR
        };
        if !pool.argv.is_empty() {
            if let Some(v) = param(b"processes=") {
                match number(v) {
                    Some(n @ 1..=1024) => pool.processes = n as usize,
                    _ => return bad(cf),
                }
                continue;
            }
            if let Some(v) = param(b"max_requests=") {
                match number(v) {
                    Some(n) => pool.max_requests = n,
                    None => return bad(cf),
                }
                continue;
            }
            if let Some(v) = param(b"queue=") {
                match number(v) {
                    Some(n) if n <= 65536 => pool.queue = n as usize,
                    _ => return bad(cf),
                }
                continue;
            }
            if let Some(v) = param(b"idle_timeout=") {
                let mut s = ngx_str_t {
                    len: v.len(),
                    data: v.as_ptr().cast_mut(),
                };
                // SAFETY: s points into the configuration's word.
                let ms = unsafe { ngx_parse_time(&mut s, 0) };
                if ms == NGX_ERROR as ngx_int_t {
                    return bad(cf);
                }
                pool.idle_timeout = ms as ngx_msec_t;
                continue;
            }
        }
        // SAFETY: word is a valid ngx_str_t of the configuration.
        if unsafe { ngx_http_script_variables_count(&mut { *word }) } != 0 {
            conf_error(
                cf,
                0,
                format_args!(
                    "\"{word}\": a pool's program and arguments cannot have variables (its \
                     processes serve many requests)"
                ),
            );
            return NGX_CONF_ERROR;
        }
        if pool.argv.is_empty() {
            if let Err(e) = check_program(cf, *word) {
                return e;
            }
        }
        let Ok(arg) = CString::new(bytes) else {
            conf_error(cf, 0, format_args!("\"{word}\" contains a NUL byte"));
            return NGX_CONF_ERROR;
        };
        pool.argv.push(arg);
    }
    if pool.argv.is_empty() {
        conf_error(cf, 0, format_args!("no program for pool \"{}\"", pool.name));
        return NGX_CONF_ERROR;
    }
    main.pools.push(pool);
    NGX_CONF_OK
}

impl PoolConf {
    /// The http level's location configuration, as read (not merged).
    pub fn http_conf(&self) -> Option<&TransformConf> {
        // SAFETY: null or the http level's loc conf, alive with the configuration.
        unsafe { self.http.as_ref() }
    }
}

/// `transform_pass name`: the pool is found at the merge (it may be declared later).
extern "C" fn set_pass(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls directive handlers with a valid cf and this module's loc conf.
    let (cf, conf) = unsafe { (&mut *cf, &mut *conf.cast::<TransformConf>()) };
    if conf.pass.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    if conf.exec.is_some() {
        conf_error(
            cf,
            0,
            format_args!("\"transform_pass\" and \"transform_exec\" in one location"),
        );
        return NGX_CONF_ERROR;
    }
    conf.pass = Some(pool_ref(cf));
    if let Err(e) = set_handler(cf) {
        return e;
    }
    NGX_CONF_OK
}

/// `init_main_conf`: each pool's processes start with the http level's settings, merged with
/// the defaults; their environment and working directory must be literal there.
///
/// # Safety
/// nginx calls it with the configuration and this module's main conf.
pub unsafe extern "C" fn init_main_conf(cf: *mut ngx_conf_t, conf: *mut c_void) -> *mut c_char {
    // SAFETY: nginx's contract.
    let (cf, main) = unsafe { (&mut *cf, &mut *conf.cast::<MainConf>()) };
    for pool in &mut main.pools {
        let mut spawn = Box::new(TransformConf::default());
        // SAFETY: the http level's loc conf, parsed and alive with the configuration.
        if let Some(http) = unsafe { pool.http.as_ref() } {
            if spawn.merge(http).is_err() {
                return NGX_CONF_ERROR;
            }
        } else {
            let empty = TransformConf::default();
            if spawn.merge(&empty).is_err() {
                return NGX_CONF_ERROR;
            }
        }
        let literal = |cv: *mut ngx_http_complex_value_t| -> Option<Vec<u8>> {
            // SAFETY: a compiled complex value: without length codes it is constant.
            unsafe {
                (*cv)
                    .lengths
                    .is_null()
                    .then(|| (*cv).value.as_bytes().to_vec())
            }
        };
        let mut has_path = false;
        for var in spawn.env.iter().flatten() {
            let Some(value) = literal(var.value) else {
                log_error!(
                    NGX_LOG_EMERG,
                    cf.log,
                    0,
                    "transform_pool \"{}\": the http-level \"transform_env {}\" has variables; a \
                     pool's processes serve many requests",
                    pool.name,
                    String::from_utf8_lossy(&var.prefix[..var.prefix.len() - 1])
                );
                return NGX_CONF_ERROR;
            };
            has_path |= var.prefix == b"PATH=";
            let mut entry = var.prefix.clone();
            entry.extend_from_slice(&value);
            match CString::new(entry) {
                Ok(c) => pool.env.push(c),
                Err(_) => return NGX_CONF_ERROR,
            }
        }
        if !has_path {
            pool.env.push(crate::relay::DEFAULT_PATH.to_owned());
        }
        if !spawn.dir.is_null() {
            let Some(dir) = literal(spawn.dir).and_then(|d| CString::new(d).ok()) else {
                log_error!(
                    NGX_LOG_EMERG,
                    cf.log,
                    0,
                    "transform_pool \"{}\": the http-level \"transform_chdir\" has variables",
                    pool.name
                );
                return NGX_CONF_ERROR;
            };
            pool.dir = Some(dir);
        }
        if let Some(limits) = spawn.cgroup() {
            let paths = spawn.sandbox_paths.as_ref().and_then(Option::as_deref);
            if !crate::cgroup::confined(cf.log, limits, paths) {
                return NGX_CONF_ERROR;
            }
        }
        pool.spawn = Some(spawn);
    }
    NGX_CONF_OK
}

// SAFETY: the module allocates TransformConf in create_loc_conf (see lib.rs).
unsafe impl HttpModuleLocationConf for crate::Module {
    type LocationConf = TransformConf;
}
