//! Logging macros in nginx's manner: a level, a log, an errno (0 for none) and a message.
//!
//! `log_error!(NGX_LOG_ERR, log, err, "execve() \"{p}\" failed")` prints
//! `execve() "/bin/x" failed (2: No such file or directory)` with the request context.

/// Logs at `level` with an errno that nginx formats after the message.
macro_rules! log_error {
    ($level:expr, $log:expr, $err:expr, $($arg:tt)+) => {{
        let log: *mut nginx_sys::ngx_log_t = $log;
        let level = $level as nginx_sys::ngx_uint_t;
        // SAFETY: `log` is a live nginx log (a connection's, a request's or the cycle's).
        if level <= unsafe { (*log).log_level } {
            let mut buf = [const { ::core::mem::MaybeUninit::<u8>::uninit() };
                ngx::log::LOG_BUFFER_SIZE];
            let msg = ngx::log::write_fmt(&mut buf, format_args!($($arg)+));
            // SAFETY: as above; `msg` is a formatted slice of `buf`.
            unsafe { ngx::log::log_error(level, log, $err, msg) };
        }
    }};
}

/// Logs at debug level under the HTTP debug mask (only in nginx built `--with-debug`).
macro_rules! debug {
    ($log:expr, $($arg:tt)+) => {{
        let log: *mut nginx_sys::ngx_log_t = $log;
        ngx::ngx_log_debug!(mask: ngx::log::DebugMask::Http, log, $($arg)+);
    }};
}

/// Bytes from a program, a client or a configuration value as they may appear in a log line:
/// printable ASCII as it is, everything else (and `\` and `"`) as `\xNN`, so nothing can start
/// a line of its own or end a quoted value.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if (0x20..0x7f).contains(&b) && b != b'\\' && b != b'"' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}
