//! nginx FFI layer: the request, connection, event, buffer and configuration calls the module makes.
//!
//! Everything that dereferences an nginx pointer lives here, behind small types whose invariant
//! is stated once: [`Http`] (a request that outlives its user), [`EventFd`] (a non-socket
//! descriptor joined to nginx's event loop as a connection) and [`BufRing`] (a bounded set of
//! reused buffers on their way through nginx's output chain).

pub mod file;
pub mod filter;
pub mod headers;

use core::ffi::c_void;
use core::ptr::{self, NonNull};
use std::io;
use std::os::fd::{BorrowedFd, IntoRawFd, OwnedFd, RawFd};

use nginx_sys::{
    ngx_alloc_chain_link, ngx_buf_t, ngx_chain_t, ngx_chain_update_chains, ngx_close_connection,
    ngx_connection_t, ngx_create_temp_buf, ngx_event_t, ngx_get_connection, ngx_handle_read_event,
    ngx_handle_write_event, ngx_http_cleanup_add, ngx_http_complex_value, ngx_http_complex_value_t,
    ngx_http_event_handler_pt, ngx_http_finalize_request, ngx_http_output_filter,
    ngx_http_request_t, ngx_http_send_special, ngx_http_test_reading, ngx_int_t, ngx_log_t,
    ngx_module_t, ngx_msec_t, ngx_str_t, ngx_uint_t, NGX_ERROR, NGX_HTTP_LAST, NGX_HTTP_OK,
    NGX_HTTP_VERSION_20, NGX_OK,
};
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};

use crate::os;

/// Handler of an event on an [`EventFd`]: receives the `data` pointer given at creation.
pub type EventHandler = unsafe extern "C" fn(ev: *mut ngx_event_t);

/// A request being served.
///
/// Invariant: the request is alive while an `Http` is used. Holders are the per-request state,
/// which lives in the request's pool and stops at the request's cleanup, and handler shims that
/// nginx calls with a live request.
#[derive(Clone, Copy)]
pub struct Http(NonNull<ngx_http_request_t>);

impl Http {
    /// # Safety
    /// `r` is a live request and stays alive for as long as the returned value is used.
    pub unsafe fn from_ptr(r: *mut ngx_http_request_t) -> Http {
        Http(NonNull::new(r).expect("nginx passes a non-null request"))
    }

    pub fn as_ptr(self) -> *mut ngx_http_request_t {
        self.0.as_ptr()
    }

    /// Runs `f` with the request. The `&mut` lives only for the call, and no method of `Http`
    /// is called inside (so two are never live at once).
    fn with_r<T>(self, f: impl FnOnce(&mut ngx_http_request_t) -> T) -> T {
        // SAFETY: the type's invariant; nginx runs one handler at a time on this thread, and
        // the reference does not outlive `f`.
        f(unsafe { &mut *self.0.as_ptr() })
    }

    /// Runs `f` with the request's connection, as [`Http::with_r`].
    fn with_c<T>(self, f: impl FnOnce(&mut ngx_connection_t) -> T) -> T {
        let c = self.connection();
        // SAFETY: a live request has a live connection; the reference does not outlive `f`.
        f(unsafe { &mut *c })
    }

    /// Whether this is the main request (not a subrequest).
    fn is_main(self) -> bool {
        self.with_r(|r| ptr::eq(r.main, r))
    }

    pub fn connection(self) -> *mut ngx_connection_t {
        self.with_r(|r| r.connection)
    }

    pub fn log(self) -> *mut ngx_log_t {
        self.with_c(|c| c.log)
    }

    pub fn pool(self) -> *mut nginx_sys::ngx_pool_t {
        self.with_r(|r| r.pool)
    }

    /// A HEAD request (nginx sets `header_only` only later, in its header filter).
    pub fn is_get(self) -> bool {
        self.with_r(|r| r.method == nginx_sys::NGX_HTTP_GET as ngx_uint_t)
    }

    pub fn is_head(self) -> bool {
        self.with_r(|r| r.method == nginx_sys::NGX_HTTP_HEAD as ngx_uint_t)
    }

    /// The response is a program's output, a dynamic one: conditional request headers
    /// (If-None-Match, If-Unmodified-Since...) are not judged against it, as nginx's upstream
    /// does for responses it does not cache. (A CGI program's own validators may turn this
    /// back on, see `headers::set_cgi_headers`.)
    pub fn disable_not_modified(self) {
        self.with_r(|r| r.set_disable_not_modified(1));
    }

    /// The connection closes after this response (what is left of the request body is not
    /// read).
    pub fn no_keepalive(self) {
        self.with_r(|r| r.set_keepalive(0));
    }

    /// Whether the request announces a body (a Content-Length above 0, or chunked).
    pub fn has_body(self) -> bool {
        self.with_r(|r| r.headers_in.content_length_n > 0 || r.headers_in.chunked() != 0)
    }

    /// A copy of `bytes` in the request pool (None if out of memory).
    pub fn pool_copy(self, bytes: &[u8]) -> Option<&'static [u8]> {
        // SAFETY: the request pool is live; the copy lives as long as the request.
        unsafe {
            let p = nginx_sys::ngx_pnalloc(self.pool(), bytes.len().max(1)).cast::<u8>();
            if p.is_null() {
                return None;
            }
            ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
            Some(core::slice::from_raw_parts(p, bytes.len()))
        }
    }

    /// Sends `bytes` (copied to the request pool) to `to`, flushed.
    pub fn output_bytes(self, to: filter::Downstream, bytes: &[u8]) -> ngx_int_t {
        // SAFETY: the request pool is live; the buffer and link are fresh.
        unsafe {
            let b = ngx_create_temp_buf(self.pool(), bytes.len());
            let cl = ngx_alloc_chain_link(self.pool());
            if b.is_null() || cl.is_null() {
                return NGX_ERROR as ngx_int_t;
            }
            ptr::copy_nonoverlapping(bytes.as_ptr(), (*b).last, bytes.len());
            (*b).last = (*b).last.add(bytes.len());
            (*b).set_flush(1);
            (*cl).buf = b;
            (*cl).next = ptr::null_mut();
            to.body(self, cl)
        }
    }

    /// The response's Content-Type as set (None if unset).
    pub fn content_type(self) -> Option<&'static [u8]> {
        // SAFETY: the value lives in the request pool, as long as the request.
        self.with_r(|r| {
            let t = r.headers_out.content_type;
            (t.len > 0 && !t.data.is_null())
                .then(|| unsafe { core::slice::from_raw_parts(t.data, t.len) })
        })
    }

    /// Whether the response header went out.
    pub fn header_sent(self) -> bool {
        self.with_r(|r| r.header_sent() != 0)
    }

    /// Whether nginx sends only the header (HEAD), known once the header went out.
    pub fn header_only(self) -> bool {
        self.with_r(|r| r.header_only() != 0)
    }

    /// Where a local redirect (a CGI `Location: /uri?args` or `Location: @name`) goes, checked
    /// as nginx checks X-Accel-Redirect (ngx_http_parse_unsafe_uri: no `..` segments, no NUL,
    /// also percent-encoded). None for an unsafe URI (or no memory).
    pub fn redirect_target(self, location: &[u8]) -> Option<Redirect> {
        let copy = self.pool_copy(location)?;
        let mut uri = ngx_str_t {
            len: copy.len(),
            data: copy.as_ptr().cast_mut(),
        };
        if location.starts_with(b"@") {
            return Some(Redirect::Named(uri));
        }
        let mut args = ngx_str_t::default();
        let mut flags: ngx_uint_t = 0;
        // SAFETY: live request; uri is a copy in its pool, which the call may change in place
        // (it unescapes a quoted URI) and splits at '?' into args.
        let rc = unsafe {
            nginx_sys::ngx_http_parse_unsafe_uri(self.as_ptr(), &mut uri, &mut args, &mut flags)
        };
        (rc == NGX_OK as ngx_int_t).then_some(Redirect::Uri(uri, args))
    }

    /// Restarts the request at `target`, as nginx does for X-Accel-Redirect: a URI is fetched
    /// with GET (HEAD stays HEAD). Returns what the redirect returned (NGX_DONE).
    pub fn redirect(self, target: Redirect) -> ngx_int_t {
        match target {
            Redirect::Named(mut name) => {
                // SAFETY: live request; name lives in its pool.
                unsafe { nginx_sys::ngx_http_named_location(self.as_ptr(), &mut name) }
            }
            Redirect::Uri(mut uri, mut args) => {
                self.with_r(|r| {
                    if r.method != nginx_sys::NGX_HTTP_HEAD as ngx_uint_t {
                        r.method = nginx_sys::NGX_HTTP_GET as ngx_uint_t;
                        // SAFETY: a static of nginx's core module, only read.
                        r.method_name = unsafe { nginx_sys::ngx_http_core_get_method };
                    }
                });
                // SAFETY: live request; uri and args live in its pool.
                unsafe { nginx_sys::ngx_http_internal_redirect(self.as_ptr(), &mut uri, &mut args) }
            }
        }
    }

    /// Adds a response header (for responses nginx makes itself, such as 503).
    pub fn add_header(self, key: &str, value: &str) -> bool {
        // SAFETY: the ngx wrapper type is a transparent view of this live request.
        let r = unsafe { ngx::http::Request::from_ngx_http_request(self.as_ptr()) };
        r.add_header_out(key, value).is_some()
    }

    /// Whether nginx frames the body with chunked transfer encoding (decided by its header filter).
    pub fn chunked(self) -> bool {
        self.with_r(|r| r.chunked() != 0)
    }

    /// The location configuration of module `M`.
    pub fn loc_conf<M: HttpModuleLocationConf>(self) -> &'static M::LocationConf {
        self.with_r(|r| M::location_conf(r).expect("module location conf"))
    }

    /// The location configuration of nginx's core module.
    fn core_conf(self) -> &'static nginx_sys::ngx_http_core_loc_conf_t {
        self.with_r(|r| NgxHttpCoreModule::location_conf(r).expect("core loc conf"))
    }

    /// nginx's `sendfile_max_chunk`: the most one request sends per event (0: no limit).
    pub fn sendfile_max_chunk(self) -> usize {
        self.core_conf().sendfile_max_chunk
    }

    pub fn discard_body(self) -> ngx_int_t {
        // SAFETY: live request.
        unsafe { nginx_sys::ngx_http_discard_request_body(self.as_ptr()) }
    }

    /// Evaluates a compiled complex value; the result lives in the request pool.
    pub fn complex_value(self, cv: &ngx_http_complex_value_t) -> Option<&'static [u8]> {
        let mut s = ngx_str_t::default();
        // SAFETY: cv was compiled at configuration time for this http block; the value is
        // allocated from the request pool, which outlives every user of it.
        let rc =
            unsafe { ngx_http_complex_value(self.as_ptr(), ptr::from_ref(cv).cast_mut(), &mut s) };
        if rc != NGX_OK as ngx_int_t {
            return None;
        }
        if s.len == 0 {
            return Some(&[]);
        }
        // SAFETY: s points at s.len bytes in the request pool (or the configuration), which
        // outlive every user of the value.
        Some(unsafe { core::slice::from_raw_parts(s.data, s.len) })
    }

    /// Sets a 200 response of unknown length with the given Content-Type, optionally a
    /// Content-Length, and sends the header.
    pub fn send_header(self, content_type: ContentType, length: Option<u64>) -> ngx_int_t {
        self.send_status_header(
            filter::Downstream::Top,
            Some(NGX_HTTP_OK as u16),
            content_type,
            length,
        )
    }

    /// As [`Http::send_header`], with the given status (None: as set), to `to`.
    pub fn send_status_header(
        self,
        to: filter::Downstream,
        status: Option<u16>,
        content_type: ContentType,
        length: Option<u64>,
    ) -> ngx_int_t {
        let default_type = self.core_conf().default_type;
        self.with_r(|r| {
            if let Some(status) = status {
                r.headers_out.status = status as _;
                r.headers_out.status_line.len = 0;
            }
            r.headers_out.content_length_n = length.map_or(-1, |n| n as i64);
            let ContentType::Configured(content_type) = content_type else {
                return;
            };
            let ct = match content_type {
                Some(t) if !t.is_empty() => ngx_str_t {
                    len: t.len(),
                    data: t.as_ptr().cast_mut(),
                },
                _ => default_type,
            };
            r.headers_out.content_type_len = ct.len;
            r.headers_out.content_type = ct;
            r.headers_out.content_type_lowcase = ptr::null_mut();
        });
        to.send_header(self)
    }

    /// Why the response body cannot bypass nginx's output chain, or `None` if it can. Call it
    /// after the header went through the filters (they set what is checked here).
    pub fn zero_copy_refusal(self, splice_on: bool) -> Option<&'static str> {
        if !splice_on {
            return Some("transform_splice is off");
        }
        // (With kTLS, nginx's OpenSSL encrypts in the kernel and nginx sendfiles into the
        // socket, `c->ssl->sendfile`; a pipe spliced into such a socket would be encrypted by
        // the kernel too, once OpenSSL flushed what it holds. Not proven byte-exact on a kernel
        // with kTLS here (this machine has none), so such a connection takes the buffered
        // transport as any TLS one.)
        // SAFETY: a TLS connection's ssl is live for as long as the connection.
        #[cfg(ngx_feature = "ssl")]
        let tls = self.with_c(|c| unsafe { c.ssl.as_ref() }.map(|ssl| ssl.sendfile() != 0));
        // An nginx built without TLS has no `c->ssl`.
        #[cfg(not(ngx_feature = "ssl"))]
        let tls: Option<bool> = None;
        self.with_r(|r| {
            if !ptr::eq(r.main, r) {
                return Some("subrequest");
            }
            if r.http_version >= NGX_HTTP_VERSION_20 as usize {
                return Some("HTTP/2 or HTTP/3 framing");
            }
            match tls {
                Some(false) => return Some("TLS connection"),
                Some(true) => return Some("TLS connection with kTLS (splice into it not enabled)"),
                None => {}
            }
            if r.filter_need_in_memory() != 0 || r.main_filter_need_in_memory() != 0 {
                return Some("a body filter needs the data (gzip, sub_filter, ssi)");
            }
            // Evaluated by the write filter when the header went through (callers flush it
            // first).
            if r.limit_rate != 0 {
                return Some("limit_rate is set");
            }
            if r.preserve_body() != 0 {
                return Some("a body filter adds content (add_before_body, add_after_body)");
            }
            if !r.postponed.is_null() {
                return Some("postponed output");
            }
            None
        })
    }

    /// Output nginx holds for this request that has not reached the socket yet.
    pub fn pending_output(self) -> bool {
        self.output_queued() || self.with_c(|c| c.buffered() != 0)
    }

    /// Whether nginx's write filter holds output it could not send yet (not counting what a
    /// lower layer, TLS, keeps back until it is flushed).
    pub fn output_queued(self) -> bool {
        self.with_r(|r| !r.out.is_null())
    }

    /// Whether the client takes no more for now: output is pending and the connection's write
    /// event is not ready (a write met EAGAIN, or an HTTP/2 stream waits for its window or its
    /// connection) or is delayed (limit_rate, sendfile_max_chunk). Its write event comes back.
    pub fn client_blocked(self) -> bool {
        if !self.pending_output() {
            return false;
        }
        let wev = self.with_c(|c| c.write);
        // SAFETY: a live connection has live events.
        unsafe { (*wev).ready() == 0 || (*wev).delayed() != 0 }
    }

    pub fn output_filter(self, chain: *mut ngx_chain_t) -> ngx_int_t {
        // SAFETY: live request; the chain's buffers stay alive until nginx releases them
        // (they belong to the request pool).
        unsafe { ngx_http_output_filter(self.as_ptr(), chain) }
    }

    pub fn send_last(self) -> ngx_int_t {
        // SAFETY: live request.
        unsafe { ngx_http_send_special(self.as_ptr(), NGX_HTTP_LAST as _) }
    }

    /// Ends the request (drops the reference the handler took). The request may be freed.
    pub fn finalize(self, rc: ngx_int_t) {
        // SAFETY: live request; callers do not use self afterwards.
        unsafe { ngx_http_finalize_request(self.as_ptr(), rc) }
    }

    /// The request as a pooled program gets it (see `http1::request_head`): the method, the
    /// URI as received (or, after an internal redirect or a rewrite, the current one escaped,
    /// with its arguments), the client's header lines, and the body's length if it has one.
    pub fn pool_request_head(self, body: Option<u64>) -> Option<Vec<u8>> {
        self.with_r(|r| {
            let method = r.method_name.as_bytes();
            // (Arguments may hold anything after a rewrite or try_files from `$uri`: escaped
            // like a raw URI, so nothing in them can end the request line.)
            let uri = if r.valid_unparsed_uri() != 0 && r.internal() == 0 {
                crate::http1::escape_raw(r.unparsed_uri.as_bytes())
            } else {
                let mut u = crate::http1::escape_uri(r.uri.as_bytes());
                if r.args.len > 0 {
                    u.push(b'?');
                    u.extend(crate::http1::escape_raw(r.args.as_bytes()));
                }
                u
            };
            crate::http1::request_head(method, &uri, header_lines(&r.headers_in.headers), body)
        })
    }

    /// The response as a pooled filter program gets it (see `http1::response_head`): its
    /// status, Content-Type and header lines as they stand (the body's own already removed).
    pub fn pool_response_head(self) -> Option<Vec<u8>> {
        self.with_r(|r| {
            let ho = &r.headers_out;
            let status = u16::try_from(ho.status).unwrap_or(200);
            // "200 OK" from an upstream's status line: its reason.
            let line = ho.status_line.as_bytes();
            let reason = match line.get(4..) {
                Some(r) if !r.is_empty() => r,
                _ => crate::http1::reason(status),
            };
            let mut content_type = ho.content_type.as_bytes().to_vec();
            if ho.charset.len > 0 && !content_type.is_empty() {
                content_type.extend_from_slice(b"; charset=");
                content_type.extend_from_slice(ho.charset.as_bytes());
            }
            crate::http1::response_head(status, reason, &content_type, header_lines(&ho.headers))
        })
    }

    /// Whether the client of an HTTP/1.x request that waits (for a pooled process) is still
    /// there: a byte peeked, or none yet. A client that closed (its close not handled yet) is
    /// ended now as nginx's close check ends it (499; its cleanups run; it must not be used
    /// afterwards). HTTP/2 and HTTP/3 requests are judged by their streams' events: true.
    pub fn client_alive(self) -> bool {
        let stream = self.with_r(|r| !r.stream.is_null());
        let c = self.connection();
        // SAFETY: a live request's connection.
        let (fd, error) = unsafe { ((*c).fd, (*c).error() != 0) };
        if stream || fd < 0 {
            return !error;
        }
        if !error && !os::peer_closed(fd) {
            return true;
        }
        // SAFETY: as above.
        let log = unsafe {
            (*c).set_error(1);
            (*(*c).read).set_eof(1);
            (*c).log
        };
        log_error!(
            nginx_sys::NGX_LOG_INFO,
            log,
            0,
            "client prematurely closed connection while waiting for a pooled process"
        );
        // nginx's own close path (ngx_http_test_reading's): 499, the request terminated.
        self.finalize(nginx_sys::NGX_HTTP_CLIENT_CLOSED_REQUEST as ngx_int_t);
        false
    }

    /// Keeps the request alive after the content handler returns NGX_DONE.
    pub fn take_reference(self) {
        let main = self.with_r(|r| r.main);
        // SAFETY: a live request's main request is live; no other reference to it is held.
        unsafe { (*main).set_count((*main).count() + 1) };
    }

    /// Routes the client's write events to `write`, and its read events to `body` while a
    /// streamed request body is still arriving; otherwise watches the client for a close.
    pub fn set_event_handlers(
        self,
        write: ngx_http_event_handler_pt,
        body: ngx_http_event_handler_pt,
    ) {
        let main = self.is_main();
        let read = if self.streaming_body() {
            body
        } else {
            Some(ngx_http_test_reading as unsafe extern "C" fn(_))
        };
        self.with_r(|r| {
            r.write_event_handler = write;
            if main {
                r.read_event_handler = read;
            }
        });
    }

    /// Stops taking the request body (it is complete, or nobody reads it any more): the
    /// client_body_timeout goes and the client is only watched for a close, from the next
    /// event loop iteration on (a close that was already signalled is not missed). What is
    /// left of an unread body is dropped when the request ends (nginx closes with a lingering
    /// close).
    pub fn stop_reading_body(self) {
        if !self.watch_only_for_close() {
            return;
        }
        let rev = self.with_c(|c| c.read);
        // SAFETY: a live connection has a live read event; nginx's posted queue is ours to add
        // to on this thread, and closing the connection removes the event from it.
        unsafe {
            if (*rev).posted() == 0 {
                nginx_sys::ngx_post_event(rev, ptr::addr_of_mut!(nginx_sys::ngx_posted_events));
            }
        }
    }

    /// As [`Http::stop_reading_body`], checking for a close at once: call it last in a read
    /// handler, since the check may finalize (and free) the request.
    pub fn watch_client_close(self) {
        if self.watch_only_for_close() {
            // SAFETY: live request; it is not used after this call.
            unsafe { ngx_http_test_reading(self.as_ptr()) };
        }
    }

    /// Installs nginx's close check as the read handler and drops the body timer. Whether it
    /// did (main requests only).
    fn watch_only_for_close(self) -> bool {
        if !self.is_main() {
            return false;
        }
        self.with_r(|r| r.read_event_handler = Some(ngx_http_test_reading));
        let rev = self.with_c(|c| c.read);
        // SAFETY: a live connection has a live read event.
        unsafe {
            if (*rev).timer_set() != 0 {
                nginx_sys::ngx_del_timer(rev);
            }
        }
        true
    }

    /// Asks nginx to hand over the request body as it arrives rather than whole (as
    /// `proxy_request_buffering off` does). nginx still reads it whole where it must: for
    /// subrequests, and when all of it came with the header.
    pub fn stream_body(self) {
        if self.is_main() {
            self.with_r(|r| r.set_request_body_no_buffering(1));
        }
    }

    /// Whether the client is still sending a body that nginx hands over as it arrives.
    pub fn streaming_body(self) -> bool {
        self.with_r(|r| r.reading_body() != 0 && r.request_body_no_buffering() != 0)
    }

    /// Whether the client is still sending a body that was streamed (possibly to an earlier
    /// location of this request, before an internal redirect).
    pub fn reading_body(self) -> bool {
        self.with_r(|r| r.reading_body() != 0)
    }

    /// Reads what the client sent of a streamed body into nginx's buffers: NGX_OK at its end,
    /// NGX_AGAIN while more is to come (or nginx's buffers are still taken), else an HTTP error
    /// status (408 on client_body_timeout, 400 when the client closed, 413 past
    /// client_max_body_size).
    pub fn read_unbuffered_body(self) -> ngx_int_t {
        // SAFETY: live request whose body is being streamed.
        unsafe { nginx_sys::ngx_http_read_unbuffered_request_body(self.as_ptr()) }
    }

    /// The request body nginx keeps (null if none).
    fn request_body(self) -> *mut nginx_sys::ngx_http_request_body_t {
        self.with_r(|r| r.request_body)
    }

    /// Takes the buffers of request body that nginx read since the last call.
    fn take_body_bufs(self) -> *mut ngx_chain_t {
        let rb = self.request_body();
        if rb.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: the request's body, alive with the request.
        unsafe { core::mem::replace(&mut (*rb).bufs, ptr::null_mut()) }
    }

    /// Registers `handler(data)` to run when the request ends, however it ends.
    pub fn add_cleanup(
        self,
        handler: unsafe extern "C" fn(*mut c_void),
        data: *mut c_void,
    ) -> bool {
        // SAFETY: live request.
        let cln = unsafe { ngx_http_cleanup_add(self.as_ptr(), 0) };
        if cln.is_null() {
            return false;
        }
        // SAFETY: just allocated.
        unsafe {
            (*cln).handler = Some(handler);
            (*cln).data = data;
        }
        true
    }

    /// Puts `state` (of `kind`) in the module's slot of the request's ctx array. False if out
    /// of memory.
    pub fn set_ctx(self, module: &ngx_module_t, kind: CtxKind, state: *mut c_void) -> bool {
        let tagged = pool_allocate(self.pool(), Ctx { kind, state });
        if tagged.is_null() {
            return false;
        }
        // SAFETY: ctx_index is this module's slot in the request's ctx array.
        self.with_r(|r| unsafe { *r.ctx.add(module.ctx_index) = tagged.cast() });
        true
    }

    /// Empties the module's slot.
    pub fn clear_ctx(self, module: &ngx_module_t) {
        // SAFETY: as in set_ctx.
        self.with_r(|r| unsafe { *r.ctx.add(module.ctx_index) = ptr::null_mut() });
    }

    /// Whether the module's slot is empty (as after an internal redirect).
    pub fn ctx_is_empty(self, module: &ngx_module_t) -> bool {
        // SAFETY: as in set_ctx.
        self.with_r(|r| unsafe { *r.ctx.add(module.ctx_index) })
            .is_null()
    }

    /// The module's per-request state if it is of `kind`, else null.
    pub fn ctx(self, module: &ngx_module_t, kind: CtxKind) -> *mut c_void {
        // SAFETY: as in set_ctx; the slot holds null or a Ctx set there (nginx zeroes it on an
        // internal redirect).
        let tagged = self
            .with_r(|r| unsafe { *r.ctx.add(module.ctx_index) })
            .cast::<Ctx>();
        // SAFETY: null or a Ctx in the request pool.
        match unsafe { tagged.as_ref() } {
            Some(t) if t.kind == kind => t.state,
            _ => ptr::null_mut(),
        }
    }

    /// The client socket (plain HTTP/1.x connections only).
    pub fn client_fd(self) -> RawFd {
        self.with_c(|c| c.fd)
    }

    /// Accounts bytes written to the client behind nginx's back ($bytes_sent, access log).
    pub fn add_sent(self, n: usize) {
        self.with_c(|c| c.sent += n as i64);
    }

    /// Marks the client connection as failed (write error), so nginx closes it.
    pub fn set_client_error(self) {
        self.with_c(|c| c.set_error(1));
    }

    /// Ensures a failed response cannot pass for a complete one: on HTTP/1.x (plain or TLS) the
    /// connection is reset when closed, since a close-delimited body would otherwise look whole
    /// (and clients ignore a missing TLS close_notify). HTTP/2 and HTTP/3 reset the stream.
    pub fn reset_on_close(self) {
        let v1 = self.with_r(|r| r.http_version < NGX_HTTP_VERSION_20 as usize);
        // (A subrequest's failure breaks the page it is part of: the connection is the main's.)
        if v1 {
            os::linger_reset(self.client_fd());
        }
    }

    /// Whether the client write timer fired; if so, marks the connection timed out.
    pub fn take_write_timeout(self) -> bool {
        self.with_c(|c| {
            // SAFETY: a live connection has live events.
            let wev = unsafe { &mut *c.write };
            if wev.timedout() == 0 {
                return false;
            }
            wev.set_timedout(0);
            c.set_timedout(1);
            true
        })
    }

    /// Marks the client socket as full after our own send/splice returned EAGAIN (splice
    /// transport only: nginx's send functions manage the flag on the buffered transport).
    pub fn client_full(self) {
        let wev = self.with_c(|c| c.write);
        // SAFETY: a live connection has live events.
        unsafe { (*wev).set_ready(0) };
    }

    /// Writes are paused for `ms` (as nginx's write filter does at sendfile_max_chunk): the
    /// write event comes back then, delayed and not a send timeout.
    pub fn delay_write(self, ms: ngx_msec_t) {
        let wev = self.with_c(|c| c.write);
        // SAFETY: a live connection has live events.
        unsafe {
            (*wev).set_delayed(1);
            nginx_sys::ngx_add_timer(wev, ms);
        }
    }

    /// Whether writes are paused (sendfile_max_chunk's pause, or limit_rate's).
    pub fn write_delayed(self) -> bool {
        let wev = self.with_c(|c| c.write);
        // SAFETY: a live connection has live events.
        unsafe { (*wev).delayed() != 0 }
    }

    /// Waits for the client as nginx's non-buffered upstream loop does: while `blocked`, (re)starts
    /// `send_timeout` on every wait (not while limit_rate delays the event); otherwise removes it.
    pub fn arm_write(self, blocked: bool, send_timeout: ngx_msec_t) -> bool {
        let lowat = self.core_conf().send_lowat;
        let wev = self.with_c(|c| c.write);
        // SAFETY: live connection event.
        unsafe {
            if ngx_handle_write_event(wev, lowat) != NGX_OK as ngx_int_t {
                return false;
            }
            if blocked && (*wev).delayed() == 0 {
                nginx_sys::ngx_add_timer(wev, send_timeout);
            } else if !blocked && (*wev).delayed() == 0 && (*wev).timer_set() != 0 {
                // (A delayed event's timer is limit_rate's: it must stay.)
                nginx_sys::ngx_del_timer(wev);
            }
        }
        true
    }

    /// Lets small writes go out at once (as nginx's non-buffered upstream mode does), unless
    /// `tcp_nodelay off`.
    pub fn tcp_nodelay(self) {
        if self.core_conf().tcp_nodelay == 0 {
            return;
        }
        // SAFETY: live connection; ngx_tcp_nodelay checks the connection's state itself.
        unsafe { nginx_sys::ngx_tcp_nodelay(self.connection()) };
    }
}

/// The kinds of per-request state of the module: a request may go from one to the other (a
/// waiter of `transform_lock` that ends up running its own program).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum CtxKind {
    /// A request running a program (`relay::Transform`).
    Transform,
    /// A request waiting for another's program (`follow::Follower`).
    Follower,
    /// A response whose filter program was refused (`transform_max_programs`): the 503 in its
    /// place says when to retry.
    Refused,
    /// A subrequest's response that could not be filtered: left out of the page.
    Omitted,
    /// A response to filter waiting for a pooled process (`pool::Waiter`).
    Waiting,
}

/// The module's ctx slot: which state, and where.
struct Ctx {
    kind: CtxKind,
    state: *mut c_void,
}

/// The Content-Type a response is sent with.
#[derive(Clone, Copy)]
pub enum ContentType {
    /// Already in the response headers: a CGI program's own, with its charset.
    InHeaders,
    /// `transform_type` evaluated, or nginx's `default_type` (None, or empty). It replaces
    /// whatever the headers hold (an earlier location's, before an internal redirect).
    Configured(Option<&'static [u8]>),
}

/// Where a local redirect goes: a named location, or a URI and its arguments.
pub enum Redirect {
    Named(ngx_str_t),
    Uri(ngx_str_t, ngx_str_t),
}

/// Adds variables at preconfiguration.
///
/// # Safety
/// `cf` is the configuration being read.
pub unsafe fn add_variables(
    cf: *mut nginx_sys::ngx_conf_t,
    vars: &mut [nginx_sys::ngx_http_variable_t],
) -> bool {
    for v in vars {
        // SAFETY: caller's contract.
        let var = unsafe { nginx_sys::ngx_http_add_variable(cf, &mut v.name, v.flags) };
        if var.is_null() {
            return false;
        }
        // SAFETY: var was just returned by nginx.
        unsafe {
            (*var).get_handler = v.get_handler;
            (*var).data = v.data;
        }
    }
    true
}

/// Fills a variable's value slot: a copy of `value` in the request pool, or "not found".
///
/// # Safety
/// `v` is the value slot nginx passed to a variable handler for this request.
pub unsafe fn set_variable(
    http: Http,
    v: *mut nginx_sys::ngx_variable_value_t,
    value: Option<&str>,
) -> bool {
    // SAFETY: caller's contract.
    let v = unsafe { &mut *v };
    let Some(value) = value else {
        v.set_not_found(1);
        return true;
    };
    // SAFETY: the request pool is live.
    let data = unsafe { nginx_sys::ngx_pnalloc(http.pool(), value.len().max(1)) }.cast::<u8>();
    if data.is_null() {
        return false;
    }
    // SAFETY: data has room for value.len() bytes.
    unsafe { ptr::copy_nonoverlapping(value.as_ptr(), data, value.len()) };
    v.data = data;
    v.set_len(value.len() as u32);
    v.set_valid(1);
    v.set_no_cacheable(1);
    v.set_not_found(0);
    true
}

/// nginx's cached millisecond clock.
pub fn now_msec() -> ngx_msec_t {
    // SAFETY: a plain read of nginx's clock, updated on this thread by the event loop.
    unsafe { ptr::read_volatile(ptr::addr_of!(nginx_sys::ngx_current_msec)) }
}

/// Moves `value` into `pool`, to be dropped when the pool is destroyed; null if out of memory.
/// (ngx 0.5.1's `Pool::allocate` writes before checking its allocation.)
pub fn pool_allocate<T>(pool: *mut nginx_sys::ngx_pool_t, value: T) -> *mut T {
    unsafe extern "C" fn drop_value<T>(data: *mut c_void) {
        // SAFETY: registered below for a T written at data.
        unsafe { ptr::drop_in_place(data.cast::<T>()) };
    }
    // SAFETY: pool is a live pool; the cleanup holds space for one T (aligned by the pool).
    unsafe {
        let cln = nginx_sys::ngx_pool_cleanup_add(pool, size_of::<T>());
        if cln.is_null() || (*cln).data.is_null() {
            return ptr::null_mut();
        }
        let p = (*cln).data.cast::<T>();
        ptr::write(p, value);
        (*cln).handler = Some(drop_value::<T>);
        p
    }
}

/// The lines of a header list (nginx's `ngx_list_t` of `ngx_table_elt_t`) that are not deleted
/// (a zero hash).
fn header_lines(list: &nginx_sys::ngx_list_t) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut part: *const nginx_sys::ngx_list_part_t = &list.part;
    let mut lines = Vec::new();
    // SAFETY: a live request's header list: parts and elements allocated in its pool.
    unsafe {
        while !part.is_null() {
            let elts = (*part).elts.cast::<nginx_sys::ngx_table_elt_t>();
            for i in 0..(*part).nelts {
                let h = &*elts.add(i);
                if h.hash != 0 {
                    lines.push((h.key.as_bytes(), h.value.as_bytes()));
                }
            }
            part = (*part).next;
        }
    }
    lines.into_iter()
}

/// Runs nginx's posted requests of a connection (after an event that was not the connection's own).
///
/// # Safety
/// `c` is a live connection.
pub unsafe fn run_posted_requests(c: *mut ngx_connection_t) {
    // SAFETY: caller's contract.
    unsafe { nginx_sys::ngx_http_run_posted_requests(c) }
}

/// A non-socket descriptor (pipe, pidfd) in nginx's event loop, as a connection whose read event
/// calls a handler. Closing it (drop) removes it from the loop, with its posted events and timers.
pub struct EventFd(NonNull<ngx_connection_t>);

impl EventFd {
    /// Takes ownership of `fd`; `data` is what the handler gets back through [`EventFd::data_of`].
    pub fn new(
        fd: OwnedFd,
        log: *mut ngx_log_t,
        handler: EventHandler,
        data: *mut c_void,
    ) -> io::Result<EventFd> {
        let raw = fd.into_raw_fd();
        // SAFETY: raw is an open descriptor we own; log is a live log.
        let c = unsafe { ngx_get_connection(raw, log) };
        let Some(c) = NonNull::new(c) else {
            // ngx_get_connection logged "worker_connections are not enough".
            // SAFETY: raw is still ours.
            unsafe { libc::close(raw) };
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        };
        // SAFETY: a fresh connection with its read and write events.
        unsafe {
            let conn = &mut *c.as_ptr();
            conn.data = data;
            (*conn.read).handler = Some(handler);
            (*conn.read).log = log;
            (*conn.write).log = log;
        }
        Ok(EventFd(c))
    }

    /// The `data` pointer of the connection an event belongs to.
    ///
    /// # Safety
    /// `ev` is the read event of an [`EventFd`].
    pub unsafe fn data_of(ev: *mut ngx_event_t) -> *mut c_void {
        // SAFETY: caller's contract: ev->data is our connection.
        unsafe { (*((*ev).data as *mut ngx_connection_t)).data }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the connection owns its descriptor until it is closed in drop.
        unsafe { BorrowedFd::borrow_raw((*self.0.as_ptr()).fd) }
    }

    /// Changes who handles the events, logging to the cycle's log from now on (the old log may
    /// belong to a connection that goes away) and without the old timer.
    pub fn rebind(&mut self, handler: EventHandler, data: *mut c_void) {
        let log = ngx::log::ngx_cycle_log().as_ptr();
        // SAFETY: live connection and events.
        unsafe {
            let c = &mut *self.0.as_ptr();
            c.data = data;
            c.log = log;
            (*c.read).handler = Some(handler);
            if (*c.write).handler.is_some() {
                // A writer's write events go to the new owner too (its data changed).
                (*c.write).handler = Some(handler);
            }
            (*c.read).log = log;
            (*c.write).log = log;
            if (*c.read).timer_set() != 0 {
                nginx_sys::ngx_del_timer(c.read);
            }
        }
    }

    /// A descriptor we write to: `handler(data)` is called when it accepts more.
    pub fn new_writer(
        fd: OwnedFd,
        log: *mut ngx_log_t,
        handler: EventHandler,
        data: *mut c_void,
    ) -> io::Result<EventFd> {
        let e = EventFd::new(fd, log, handler, data)?;
        // SAFETY: a fresh connection with its events.
        unsafe { (*(*e.0.as_ptr()).write).handler = Some(handler) };
        Ok(e)
    }

    /// Marks the connection idle (nginx closes idle connections, calling the read handler, when
    /// the worker shuts down gracefully) and its read timer as one that does not keep a shutting
    /// down worker alive; or not.
    pub fn set_idle(&self, idle: bool) {
        // SAFETY: live connection and read event.
        unsafe {
            let c = &mut *self.0.as_ptr();
            c.set_idle(u32::from(idle) as _);
            (*c.read).set_cancelable(u32::from(idle) as _);
        }
    }

    /// Asks for the next writability (edge-triggered: call after a write would block).
    pub fn arm_write(&self) -> bool {
        // SAFETY: live connection.
        unsafe {
            let wev = (*self.0.as_ptr()).write;
            (*wev).set_ready(0);
            ngx_handle_write_event(wev, 0) == NGX_OK as ngx_int_t
        }
    }

    /// Asks for the next readability (edge-triggered: call after the descriptor ran dry).
    pub fn arm_read(&self) -> bool {
        // SAFETY: live connection.
        unsafe {
            let rev = (*self.0.as_ptr()).read;
            (*rev).set_ready(0);
            ngx_handle_read_event(rev, 0) == NGX_OK as ngx_int_t
        }
    }
}

impl EventFd {
    /// Starts (or restarts) the timer of the read event; the handler then sees a timed-out event.
    pub fn set_timer(&self, ms: ngx_msec_t) {
        // SAFETY: live connection event.
        unsafe { nginx_sys::ngx_add_timer((*self.0.as_ptr()).read, ms) };
    }

    /// Runs the read handler again in the next event-loop iteration (after the other
    /// connections had their turn), to continue draining without waiting for a new edge.
    pub fn post_read(&self) {
        // SAFETY: live connection event; the queue is nginx's.
        unsafe {
            nginx_sys::ngx_post_event(
                (*self.0.as_ptr()).read,
                ptr::addr_of_mut!(nginx_sys::ngx_posted_next_events),
            )
        };
    }

    /// Stops the timer of the read event.
    pub fn clear_timer(&self) {
        // SAFETY: live connection event.
        unsafe {
            let rev = (*self.0.as_ptr()).read;
            if (*rev).timer_set() != 0 {
                nginx_sys::ngx_del_timer(rev);
            }
        }
    }

    /// Whether nginx asked this connection to close (worker shutdown timeout).
    ///
    /// # Safety
    /// `ev` is the read event of an [`EventFd`].
    pub unsafe fn closing(ev: *mut ngx_event_t) -> bool {
        // SAFETY: caller's contract: ev->data is our connection.
        unsafe { (*((*ev).data as *mut ngx_connection_t)).close() != 0 }
    }

    /// Whether the read event's timer has fired (clears the flag).
    ///
    /// # Safety
    /// `ev` is the read event of an [`EventFd`].
    pub unsafe fn take_timedout(ev: *mut ngx_event_t) -> bool {
        // SAFETY: caller's contract.
        let ev = unsafe { &mut *ev };
        let fired = ev.timedout() != 0;
        ev.set_timedout(0);
        fired
    }
}

impl Drop for EventFd {
    fn drop(&mut self) {
        // SAFETY: live connection, closed once: removes events and timers, closes the fd.
        unsafe { ngx_close_connection(self.0.as_ptr()) };
    }
}

/// What is left to write to a program's stdin. Three kinds:
///
/// - a body nginx read whole: a read-only walk over its chain of buffers (in memory or in
///   nginx's temporary file), which nginx and other modules (mirror, error_page,
///   `$request_body`, subrequests) keep using as they are;
/// - a streamed body: the buffers nginx read so far are taken from it, and each one is handed
///   back (its `pos` advances) as it is written, which lets nginx reuse its buffer and read on,
///   as nginx's upstream module does with `proxy_request_buffering off`;
/// - a response being filtered: the buffers the response's handler passed to the filter, each
///   handed back as it is written (`pos`, or `file_pos` for a buffer in a file), so the handler
///   (nginx's upstream, the static module, a relay) reuses it and sends more.
pub struct BodyCursor {
    cl: *mut ngx_chain_t,
    /// Position in the current buffer: memory address, or file offset for an in-file buffer.
    pos: *mut u8,
    file_pos: i64,
    /// The current buffer's bytes are taken from its file (else from memory): a response's
    /// buffer may be in memory and in a file at once (the same bytes), and memory is used then,
    /// as nginx's own output does.
    from_file: bool,
    kind: CursorKind,
    pool: *mut nginx_sys::ngx_pool_t,
    /// Buffers handed back so far.
    handed_back: u64,
    /// Bytes written before the body (a pooled program's request head) or between its
    /// buffers (chunk framing), and how many were.
    head: Vec<u8>,
    head_pos: usize,
    /// A response to a pooled program: chunked, each buffer a chunk; the current buffer's
    /// chunk size (None before its size line), and whether the last chunk was written.
    chunked: bool,
    chunk: Option<u64>,
    terminated: bool,
    /// Bytes written to the pipe so far (head, framing and body).
    written: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum CursorKind {
    Whole,
    Streamed,
    /// `ended` once the response's last buffer was taken.
    Response {
        ended: bool,
    },
}

impl BodyCursor {
    /// The request body as nginx has it when the program starts (empty if there is none).
    pub fn of(http: Http) -> BodyCursor {
        let streaming = http.streaming_body();
        let rb = http.request_body();
        let cl = if streaming {
            http.take_body_bufs()
        } else if rb.is_null() {
            ptr::null_mut()
        } else {
            // SAFETY: the request's body, alive with the request.
            unsafe { (*rb).bufs }
        };
        let mut cursor = BodyCursor {
            cl,
            pos: ptr::null_mut(),
            file_pos: 0,
            from_file: false,
            kind: if streaming {
                CursorKind::Streamed
            } else {
                CursorKind::Whole
            },
            pool: http.pool(),
            handed_back: 0,
            head: Vec::new(),
            head_pos: 0,
            chunked: false,
            chunk: None,
            terminated: false,
            written: 0,
        };
        cursor.enter();
        cursor
    }

    /// Bytes written to the pipe so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The same, each buffer written as a chunk of HTTP/1.1's chunked coding, and the last
    /// chunk after the last buffer.
    pub fn chunked(mut self) -> BodyCursor {
        self.chunked = true;
        self
    }

    /// Queues framing bytes, written before what comes next.
    fn queue(&mut self, bytes: &[u8]) {
        if self.head_pos == self.head.len() {
            self.head.clear();
            self.head_pos = 0;
        }
        self.head.extend_from_slice(bytes);
    }

    /// The same, written after `head`.
    pub fn with_head(mut self, head: Vec<u8>) -> BodyCursor {
        self.head = head;
        self.head_pos = 0;
        self
    }

    /// The bytes of a whole body left to write (its length, before any was written).
    pub fn body_len(&self) -> u64 {
        let mut n = 0;
        let mut cl = self.cl;
        while !cl.is_null() {
            // SAFETY: the body's chain, alive with the request; only read.
            unsafe {
                let b = &*(*cl).buf;
                n += if b.in_file() != 0 {
                    (b.file_last - b.file_pos) as u64
                } else {
                    b.last.offset_from(b.pos) as u64
                };
                cl = (*cl).next;
            }
        }
        n
    }

    /// A response to filter: empty until [`BodyCursor::push`] gives it buffers.
    pub fn response(http: Http) -> BodyCursor {
        BodyCursor {
            cl: ptr::null_mut(),
            pos: ptr::null_mut(),
            file_pos: 0,
            from_file: false,
            kind: CursorKind::Response { ended: false },
            pool: http.pool(),
            handed_back: 0,
            head: Vec::new(),
            head_pos: 0,
            chunked: false,
            chunk: None,
            terminated: false,
            written: 0,
        }
    }

    /// Whether the body is streamed (nginx reads more of it as the program takes it).
    pub fn streaming(&self) -> bool {
        self.kind == CursorKind::Streamed
    }

    /// Whether this is a response being filtered.
    pub fn is_response(&self) -> bool {
        matches!(self.kind, CursorKind::Response { .. })
    }

    /// A response whose last buffer was taken.
    pub fn ended(&self) -> bool {
        self.kind == CursorKind::Response { ended: true }
    }

    /// Buffers handed back so far.
    pub fn handed_back(&self) -> u64 {
        self.handed_back
    }

    /// Whether everything taken so far was written.
    pub fn is_empty(&self) -> bool {
        self.cl.is_null() && self.head_pos == self.head.len()
    }

    /// A response: takes the buffers of `chain` (links of our own, in the request pool) after
    /// what is still to write, noting its last buffer. False if out of memory.
    pub fn push(&mut self, chain: *mut ngx_chain_t) -> bool {
        let mut in_ = chain;
        while !in_.is_null() {
            // SAFETY: the caller's chain of live links and buffers (the handler's).
            let b = unsafe { (*in_).buf };
            // SAFETY: as above.
            unsafe {
                if (*b).last_buf() != 0 || (*b).last_in_chain() != 0 {
                    self.kind = CursorKind::Response { ended: true };
                }
                in_ = (*in_).next;
            }
        }
        let was_empty = self.cl.is_null();
        // SAFETY: the pool is the request's; ngx_chain_add_copy appends links of its own that
        // point at the caller's buffers.
        if unsafe { nginx_sys::ngx_chain_add_copy(self.pool, &mut self.cl, chain) }
            != NGX_OK as ngx_int_t
        {
            return false;
        }
        if was_empty {
            self.enter();
        }
        true
    }

    /// A streamed body: takes what nginx read since, after what is still to write. Whether
    /// there was any.
    pub fn pull(&mut self, http: Http) -> bool {
        let new = http.take_body_bufs();
        if new.is_null() {
            return false;
        }
        if self.cl.is_null() {
            self.cl = new;
            self.enter();
        } else {
            let mut last = self.cl;
            // SAFETY: our own chain of links, taken from the body.
            unsafe {
                while !(*last).next.is_null() {
                    last = (*last).next;
                }
                (*last).next = new;
            }
        }
        true
    }

    /// Drops everything taken so far (a streamed body nobody reads, a response the program no
    /// longer takes): each buffer is handed back as consumed, so its producer goes on.
    pub fn skip(&mut self) {
        while !self.cl.is_null() {
            // SAFETY: a link of the chain, alive with the request.
            let next = unsafe { (*self.cl).next };
            if self.kind != CursorKind::Whole {
                // SAFETY: the buffer is marked consumed; the link is ours (as in write_to).
                unsafe {
                    let b = (*self.cl).buf;
                    (*b).pos = (*b).last;
                    if self.is_response() {
                        (*b).file_pos = (*b).file_last;
                    }
                }
                self.hand_back();
            }
            self.cl = next;
        }
    }

    /// Returns the current link to the request pool's free links (nginx's ngx_free_chain):
    /// it was taken from the body, or made by `push`, and is ours.
    fn hand_back(&mut self) {
        // SAFETY: see above; the caller moves on to the next link, saved before.
        unsafe {
            (*self.cl).next = (*self.pool).chain;
            (*self.pool).chain = self.cl;
        }
        self.handed_back += 1;
    }

    /// Starts on the current link's buffer.
    fn enter(&mut self) {
        if !self.cl.is_null() {
            // SAFETY: a link of the chain, alive with the request.
            let b = unsafe { &*(*self.cl).buf };
            self.pos = b.pos;
            self.file_pos = b.file_pos;
            let in_memory = b.temporary() != 0 || b.memory() != 0 || b.mmap() != 0;
            self.from_file =
                b.in_file() != 0 && !(self.is_response() && in_memory && b.pos < b.last);
        }
    }

    /// Writes as much as `pipe` takes, from memory with write(2) and from a file with
    /// splice(2). `Ok(())` when all of it was written; WouldBlock when the pipe is full.
    pub fn write_to(&mut self, pipe: BorrowedFd<'_>) -> io::Result<()> {
        let response = self.is_response();
        loop {
            while self.head_pos < self.head.len() {
                let n = os::write(pipe, &self.head[self.head_pos..])?;
                self.head_pos += n;
                self.written += n as u64;
            }
            if self.cl.is_null() {
                if self.chunked && self.ended() && !self.terminated {
                    self.terminated = true;
                    self.queue(b"0\r\n\r\n");
                    continue;
                }
                return Ok(());
            }
            // SAFETY: a link of the chain, alive with the request; only read.
            let b = unsafe { &*(*self.cl).buf };
            if self.chunked && self.chunk.is_none() {
                // SAFETY: pos and last point into the same buffer.
                let n = if self.from_file {
                    (b.file_last - self.file_pos).max(0) as u64
                } else {
                    (unsafe { b.last.offset_from(self.pos) }).max(0) as u64
                };
                self.chunk = Some(n);
                if n > 0 {
                    self.queue(format!("{n:x}\r\n").as_bytes());
                    continue;
                }
            }
            if self.from_file && self.file_pos < b.file_last {
                let len = (b.file_last - self.file_pos) as usize;
                // SAFETY: an in-file buffer points at an open file.
                let fd = unsafe { (*b.file).fd };
                let n = os::splice_file_to_pipe(fd, &mut self.file_pos, pipe, len)?;
                self.written += n as u64;
                if response {
                    // SAFETY: the handler's buffer, handed to us: marked consumed so far.
                    unsafe { (*(*self.cl).buf).file_pos = self.file_pos };
                }
                if n == 0 {
                    // The file is shorter than nginx says: never a clean end.
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
                }
                continue;
            }
            if !self.from_file && self.pos < b.last {
                // SAFETY: [pos, last) is the rest of the buffer's data.
                let data = unsafe {
                    core::slice::from_raw_parts(self.pos, b.last.offset_from(self.pos) as usize)
                };
                let n = os::write(pipe, data)?;
                self.written += n as u64;
                // SAFETY: n <= data.len().
                self.pos = unsafe { self.pos.add(n) };
                if self.kind != CursorKind::Whole {
                    // SAFETY: a streamed body's (or a filtered response's) buffers were handed
                    // to us; their owner reuses the memory once every buffer over it is
                    // consumed (pos == last).
                    unsafe { (*(*self.cl).buf).pos = self.pos };
                }
                continue;
            }
            // SAFETY: as above.
            let next = unsafe { (*self.cl).next };
            if self.kind != CursorKind::Whole {
                if response {
                    // SAFETY: as above: all of it is consumed, in memory and in the file.
                    unsafe {
                        let b = (*self.cl).buf;
                        (*b).pos = (*b).last;
                        (*b).file_pos = (*b).file_last;
                    }
                }
                self.hand_back();
            }
            if self.chunk.take().is_some_and(|n| n > 0) {
                self.queue(b"\r\n");
            }
            self.cl = next;
            self.enter();
        }
    }
}

/// Reads the request body, then calls `ready` (nginx's ngx_http_read_client_request_body: it
/// honours client_max_body_size, chunked bodies and client_body_timeout, and spools large
/// bodies to a temporary file).
pub fn read_body(http: Http, ready: unsafe extern "C" fn(*mut ngx_http_request_t)) -> ngx_int_t {
    // SAFETY: live request.
    unsafe { nginx_sys::ngx_http_read_client_request_body(http.as_ptr(), Some(ready)) }
}

/// A bounded set of reused buffers carrying a program's output through nginx's output chain
/// (nginx's non-buffered upstream pattern: output_filter, then ngx_chain_update_chains), paced by
/// the client:
///
/// - it reads from the pipe only while the client takes what it is given: once a write would
///   block, the rest waits in the pipe (which holds it anyway), not in memory here; buffers left
///   free then are given back, so a slow client holds about one buffer;
/// - its buffers are not flushed one by one: a flush goes down when the pipe runs dry (or
///   ends), so TLS makes whole records of the output and the chunked framing, not one small
///   record for the framing after every read.
pub struct BufRing {
    free: *mut ngx_chain_t,
    busy: *mut ngx_chain_t,
    out: *mut ngx_chain_t,
    out_tail: *mut *mut ngx_chain_t,
    allocated: usize,
    max: usize,
    size: usize,
    tag: nginx_sys::ngx_buf_tag_t,
    /// Output passed on since the last flush.
    unflushed: bool,
    /// The flush buffer, made once and passed again each time (it holds no data).
    flush: *mut ngx_buf_t,
}

/// The tag of the flush buffer: not the ring's, so ngx_chain_update_chains never takes it for
/// a data buffer.
static FLUSH_TAG: u8 = 0;

/// Counters of what a transport moved, and the most it may move.
pub struct Moved {
    /// Bytes of program output passed on.
    pub bytes: u64,
    /// read(2) or splice(2) calls that moved them.
    pub calls: u64,
    /// The response's Content-Length when it was committed with one (u64::MAX otherwise).
    pub limit: u64,
    /// Whether `limit` is the program's own Content-Length (a CGI header), not the length of
    /// output the module had whole.
    pub declared: bool,
    /// Where the output ends when that is known before its end of file: the program exited, and
    /// what its pipe held then is all there is (u64::MAX otherwise).
    pub end: u64,
    /// Bytes past a declared Content-Length already dropped.
    pub excess: u64,
    /// Whether those were logged already.
    pub excess_logged: bool,
    /// A pooled program's chunked body: its decoder (the output's end is the last chunk, and
    /// `limit` is set there).
    pub dechunk: Option<crate::http1::Dechunk>,
    /// A pooled program asked to close after its response.
    pub close: bool,
}

impl Default for Moved {
    fn default() -> Moved {
        Moved {
            bytes: 0,
            calls: 0,
            limit: u64::MAX,
            declared: false,
            end: u64::MAX,
            excess: 0,
            excess_logged: false,
            dechunk: None,
            close: false,
        }
    }
}

impl Moved {
    /// Bytes that may still be moved.
    pub fn room(&self) -> u64 {
        self.limit.min(self.end).saturating_sub(self.bytes)
    }
}

/// What a transport's `pump` ended on.
pub enum Pumped {
    /// The program has nothing more for now.
    ProgramIdle,
    /// Every buffer is waiting for the client.
    ClientBusy,
    /// The program closed its output.
    Eof,
    /// `sendfile_max_chunk` (or a stream's part of the worker's turn) was moved in one go: the
    /// other connections, and requests that arrived meanwhile, go first; then the program's
    /// output is read again in the next turn of the event loop (nginx's posted-next events,
    /// which it runs after an epoll_wait that does not block).
    Yield,
}

impl BufRing {
    /// Whether buffers are still held by the filters after ours (or the client).
    pub fn has_busy(&self) -> bool {
        !self.busy.is_null()
    }

    pub fn new(max: usize, size: usize, tag: *const ngx_module_t) -> BufRing {
        BufRing {
            free: ptr::null_mut(),
            busy: ptr::null_mut(),
            out: ptr::null_mut(),
            out_tail: ptr::null_mut(),
            allocated: 0,
            max,
            size,
            tag: tag.cast_mut().cast(),
            unflushed: false,
            flush: ptr::null_mut(),
        }
    }

    /// Reads from `pipe` and passes what it gets to nginx, until the pipe runs dry, the client
    /// takes no more, the buffers are all in flight, the pipe ends, or about `max_chunk` bytes
    /// went (nginx's sendfile_max_chunk; 0 for no limit): then the other connections go first,
    /// as the splice transport and nginx's write filter do, so one fast stream (a program that
    /// refills its pipe as fast as it is read, a client that takes all) cannot hold the worker.
    pub fn pump(
        &mut self,
        http: Http,
        to: filter::Downstream,
        pipe: BorrowedFd<'_>,
        moved: &mut Moved,
        max_chunk: usize,
    ) -> io::Result<Pumped> {
        let start = moved.bytes;
        loop {
            // What waits goes on: our buffers (busy ones too: a filter after us may hold them,
            // waiting for something else than the client, and they are only found free again
            // after a call), what nginx holds for the client; not a partial TLS record kept
            // back on purpose (a call without buffers flushes it).
            if !self.out.is_null()
                || !self.busy.is_null()
                || http.output_queued()
                || (!self.unflushed && http.pending_output())
            {
                self.pass(http, to)?;
            }
            if moved.room() == 0 {
                self.flush_owed(http, to)?;
                return Ok(Pumped::Eof);
            }
            if http.client_blocked() {
                // The rest stays in the pipe, and the program waits there. A client that did
                // not even take what was pending (nothing was read this time) is a slow one:
                // the free buffers give their memory back. (A fast one that blocks after each
                // burst keeps them, and the allocator is not asked each time.)
                if moved.bytes == start {
                    self.release_free(http);
                }
                return Ok(Pumped::ClientBusy);
            }
            if max_chunk > 0 && moved.bytes - start >= max_chunk as u64 {
                debug!(
                    http.log(),
                    "transform: sendfile_max_chunk {max_chunk} reached, yielding"
                );
                return Ok(Pumped::Yield);
            }
            let Some(cl) = self.take_free(http)? else {
                return Ok(Pumped::ClientBusy);
            };
            // SAFETY: cl is a chain link holding one of our temp buffers, empty (pos == last).
            let b: &mut ngx_buf_t = unsafe { &mut *(*cl).buf };
            // SAFETY: last and end point into the same buffer, last <= end.
            let free = (unsafe { b.end.offset_from(b.last) } as u64).min(moved.room());
            // SAFETY: [last, last + free) lies in the buffer's free space.
            let space = unsafe { core::slice::from_raw_parts_mut(b.last, free as usize) };
            moved.calls += 1;
            match os::read(pipe, space) {
                Ok(0) => {
                    self.put_back(cl);
                    self.flush_owed(http, to)?;
                    return Ok(Pumped::Eof);
                }
                Ok(n) if moved.dechunk.is_some() => {
                    let Some(d) = moved.dechunk.as_mut() else {
                        unreachable!("checked");
                    };
                    let decoded = match d.decode(&mut space[..n]) {
                        Ok(decoded) => decoded,
                        Err(why) => {
                            self.put_back(cl);
                            return Err(io::Error::new(io::ErrorKind::InvalidData, why));
                        }
                    };
                    if d.done() {
                        // What came after the last chunk is not the response's.
                        moved.excess += (n - decoded.used) as u64;
                    }
                    let done = d.done();
                    if decoded.data == 0 {
                        self.put_back(cl);
                    } else {
                        // SAFETY: decoded.data <= n, in the buffer's free space.
                        b.last = unsafe { b.last.add(decoded.data) };
                        moved.bytes += decoded.data as u64;
                        self.append(cl);
                    }
                    if done {
                        moved.limit = moved.bytes;
                    }
                }
                Ok(n) => {
                    // SAFETY: n <= space.len().
                    b.last = unsafe { b.last.add(n) };
                    moved.bytes += n as u64;
                    self.append(cl);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.put_back(cl);
                    // The program has nothing more for now: what was passed goes out.
                    self.flush_owed(http, to)?;
                    return Ok(if http.client_blocked() {
                        Pumped::ClientBusy
                    } else {
                        Pumped::ProgramIdle
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.put_back(cl),
                Err(e) => {
                    self.put_back(cl);
                    return Err(e);
                }
            }
        }
    }

    /// Passes `out` (maybe nothing) down and takes back the buffers nginx is done with.
    fn pass(&mut self, http: Http, to: filter::Downstream) -> io::Result<()> {
        if !self.out.is_null() {
            self.unflushed = true;
        }
        if to.body(http, self.out) == NGX_ERROR as ngx_int_t {
            return Err(io::Error::other("output filter failed"));
        }
        // SAFETY: the chains are ours and the request pool's; tag marks our buffers.
        unsafe {
            ngx_chain_update_chains(
                http.pool(),
                &mut self.free,
                &mut self.busy,
                &mut self.out,
                self.tag,
            )
        };
        self.out = ptr::null_mut();
        self.out_tail = ptr::null_mut();
        Ok(())
    }

    /// Sends a flush after what was passed since the last one.
    fn flush_owed(&mut self, http: Http, to: filter::Downstream) -> io::Result<()> {
        if !self.unflushed {
            return Ok(());
        }
        if self.flush.is_null() {
            // SAFETY: the request pool is live; an all-zero buffer is ngx_calloc_buf's.
            let b = unsafe {
                nginx_sys::ngx_pcalloc(http.pool(), size_of::<ngx_buf_t>()).cast::<ngx_buf_t>()
            };
            if b.is_null() {
                return Err(io::Error::from(io::ErrorKind::OutOfMemory));
            }
            // SAFETY: fresh buffer.
            unsafe {
                (*b).set_flush(1);
                (*b).tag = ptr::addr_of!(FLUSH_TAG).cast_mut().cast();
            }
            self.flush = b;
        }
        // SAFETY: the request pool is live.
        let cl = unsafe { ngx_alloc_chain_link(http.pool()) };
        if cl.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        // SAFETY: a fresh link (ngx_chain_update_chains gives it back to the pool's list).
        unsafe { (*cl).buf = self.flush };
        self.append(cl);
        debug!(http.log(), "transform buffered: flush");
        self.pass(http, to)?;
        self.unflushed = false;
        Ok(())
    }

    /// Gives back the memory of the free buffers (while the client is blocked nothing is read
    /// into them); they get it again when taken.
    fn release_free(&mut self, http: Http) {
        let mut in_memory = self.allocated;
        let mut cl = self.free;
        while !cl.is_null() {
            // SAFETY: free is a list of our links and buffers, which nothing downstream points
            // into any more (ngx_chain_update_chains found them all sent); a buffer's memory is
            // a large allocation of the request pool (bigger than NGX_MAX_ALLOC_FROM_POOL), which
            // ngx_pfree frees (it declines anything else, and then the buffer keeps it).
            unsafe {
                let b = (*cl).buf;
                if !(*b).start.is_null()
                    && nginx_sys::ngx_pfree(http.pool(), (*b).start.cast()) == NGX_OK as ngx_int_t
                {
                    (*b).start = ptr::null_mut();
                    (*b).pos = ptr::null_mut();
                    (*b).last = ptr::null_mut();
                    (*b).end = ptr::null_mut();
                }
                if (*b).start.is_null() {
                    in_memory -= 1;
                }
                cl = (*cl).next;
            }
        }
        debug!(
            http.log(),
            "transform buffered: client blocked, {in_memory} of {} buffers in memory",
            self.allocated
        );
    }

    fn take_free(&mut self, http: Http) -> io::Result<Option<*mut ngx_chain_t>> {
        if !self.free.is_null() {
            let cl = self.free;
            // SAFETY: free is a list of our links.
            unsafe {
                self.free = (*cl).next;
                let b = (*cl).buf;
                if (*b).start.is_null() {
                    // Given back while the client was blocked: its memory again.
                    let p = nginx_sys::ngx_palloc(http.pool(), self.size).cast::<u8>();
                    if p.is_null() {
                        self.put_back(cl);
                        return Err(io::Error::from(io::ErrorKind::OutOfMemory));
                    }
                    (*b).start = p;
                    (*b).pos = p;
                    (*b).last = p;
                    (*b).end = p.add(self.size);
                }
            }
            return Ok(Some(cl));
        }
        if self.allocated == self.max {
            return Ok(None);
        }
        // SAFETY: the request pool is live.
        let (b, cl) = unsafe {
            (
                ngx_create_temp_buf(http.pool(), self.size),
                ngx_alloc_chain_link(http.pool()),
            )
        };
        if b.is_null() || cl.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        // SAFETY: fresh buffer and link.
        unsafe {
            (*b).tag = self.tag;
            (*b).set_recycled(1);
            (*cl).buf = b;
            (*cl).next = ptr::null_mut();
        }
        self.allocated += 1;
        Ok(Some(cl))
    }

    /// Appends a link to what goes out next.
    fn append(&mut self, cl: *mut ngx_chain_t) {
        // SAFETY: cl is ours, in no other list.
        unsafe { (*cl).next = ptr::null_mut() };
        if self.out.is_null() {
            self.out = cl;
        } else {
            // SAFETY: out_tail points at the last link's next field.
            unsafe { *self.out_tail = cl };
        }
        // SAFETY: cl is live.
        self.out_tail = unsafe { &mut (*cl).next };
    }

    fn put_back(&mut self, cl: *mut ngx_chain_t) {
        // SAFETY: cl is one of our links, not in any other list.
        unsafe { (*cl).next = self.free };
        self.free = cl;
    }
}

/// A timer of its own (not a connection's): `handler(data)` runs when it fires. Stopped when
/// dropped.
pub struct Timer(NonNull<ngx_event_t>);

impl Timer {
    /// An event in `pool` (which outlives the Timer: both belong to one request).
    pub fn new(
        pool: *mut nginx_sys::ngx_pool_t,
        log: *mut ngx_log_t,
        handler: EventHandler,
        data: *mut c_void,
    ) -> Option<Timer> {
        // SAFETY: the pool is live; an all-zero event is nginx's initial state (ngx_pcalloc).
        unsafe {
            let ev = nginx_sys::ngx_pcalloc(pool, size_of::<ngx_event_t>()).cast::<ngx_event_t>();
            let ev = NonNull::new(ev)?;
            (*ev.as_ptr()).handler = Some(handler);
            (*ev.as_ptr()).data = data;
            (*ev.as_ptr()).log = log;
            Some(Timer(ev))
        }
    }

    /// A timer of no connection nor request (a worker-wide chore), in the cycle's pool, logging
    /// to the cycle's log: its handler gets no `data`.
    pub fn worker(handler: EventHandler) -> Option<Timer> {
        // SAFETY: the cycle (and its pool) outlives the worker's timers.
        let pool = unsafe { (*nginx_sys::ngx_cycle).pool };
        let log = ngx::log::ngx_cycle_log().as_ptr();
        // nginx's debug lines read a timer's data as a connection (`ngx_event_ident`): it points
        // at an empty one.
        let data = ptr::addr_of!(NO_CONNECTION).cast_mut().cast::<c_void>();
        Timer::new(pool, log, handler, data)
    }

    /// The `data` given at creation.
    ///
    /// # Safety
    /// `ev` is a Timer's event.
    pub unsafe fn data_of(ev: *mut ngx_event_t) -> *mut c_void {
        // SAFETY: caller's contract.
        unsafe { (*ev).data }
    }

    /// Starts or restarts it.
    pub fn set(&self, ms: ngx_msec_t) {
        // SAFETY: a live event of ours.
        unsafe { nginx_sys::ngx_add_timer(self.0.as_ptr(), ms) };
    }

    /// Runs the handler once more in this event-loop iteration, after the events at hand.
    pub fn post(&self) {
        // SAFETY: a live event of ours; nginx's posted queue is ours to add to on this thread
        // (dropping the Timer removes it from there).
        unsafe {
            if (*self.0.as_ptr()).posted() == 0 {
                nginx_sys::ngx_post_event(
                    self.0.as_ptr(),
                    ptr::addr_of_mut!(nginx_sys::ngx_posted_events),
                );
            }
        }
    }

    pub fn is_set(&self) -> bool {
        // SAFETY: a live event of ours.
        unsafe { (*self.0.as_ptr()).timer_set() != 0 }
    }

    /// A timer that does not hold a worker's graceful shutdown (nginx's `ev->cancelable`).
    pub fn cancelable(self) -> Timer {
        // SAFETY: a live event of ours, not in the timer tree yet.
        unsafe { (*self.0.as_ptr()).set_cancelable(1) };
        self
    }

    pub fn clear(&self) {
        // SAFETY: a live event of ours.
        unsafe {
            if (*self.0.as_ptr()).timer_set() != 0 {
                nginx_sys::ngx_del_timer(self.0.as_ptr());
            }
            if (*self.0.as_ptr()).posted() != 0 {
                nginx_sys::ngx_delete_posted_event(self.0.as_ptr());
            }
        }
    }
}

/// The connection a [`Timer::worker`] names: all zeroes, only read (its `fd`, in debug lines).
struct NoConnection(#[allow(dead_code)] ngx_connection_t); // (read by nginx, through pointers)

// SAFETY: never written; nginx reads it on the worker's thread only.
unsafe impl Sync for NoConnection {}

// SAFETY: an all-zero ngx_connection_t is nginx's initial state of one (ngx_get_connection zeroes).
static NO_CONNECTION: NoConnection = NoConnection(unsafe { core::mem::zeroed() });

impl Drop for Timer {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Whether this process only tests the configuration (`nginx -t`, `-T`).
pub fn testing_config() -> bool {
    // SAFETY: nginx's global, set from the command line before the configuration is read.
    unsafe { nginx_sys::ngx_test_config != 0 }
}

/// Whether this process reads the configuration only to signal the master (`nginx -s`).
pub fn signaller() -> bool {
    // SAFETY: nginx's global, set from the command line before the configuration is read.
    unsafe { nginx_sys::ngx_process == nginx_sys::NGX_PROCESS_SIGNALLER as ngx_uint_t }
}

/// The core module's configuration of `cycle` (`conf_ctx[ngx_core_module.index]`), once it was
/// created (before the http block is read); None before.
///
/// # Safety
/// `cycle` is live, and the reference is not kept past its configuration's life.
unsafe fn core_conf<'a>(
    cycle: *mut nginx_sys::ngx_cycle_t,
) -> Option<&'a nginx_sys::ngx_core_conf_t> {
    // SAFETY: caller's contract; conf_ctx, when set, has a slot per core module.
    unsafe {
        let ctx = (*cycle).conf_ctx;
        if ctx.is_null() {
            return None;
        }
        let index = (*ptr::addr_of!(nginx_sys::ngx_core_module)).index;
        (*ctx.add(index))
            .cast::<nginx_sys::ngx_core_conf_t>()
            .as_ref()
    }
}

/// The user and group the workers run as (nginx's `user` directive, or its default when the
/// master runs as root), if known in `cycle` yet: None when unset (a master that is not root,
/// or before the core module's configuration is complete and the `user` directive was not read).
pub fn worker_user(cycle: *mut nginx_sys::ngx_cycle_t) -> Option<(u32, Option<u32>)> {
    const UNSET: u32 = u32::MAX;
    // SAFETY: a live cycle (nginx's, while the configuration is read).
    let ccf = unsafe { core_conf(cycle) }?;
    let (user, group) = (ccf.user, ccf.group);
    (user != UNSET).then_some((user, (group != UNSET).then_some(group)))
}

/// The number of worker processes of the running configuration (`worker_processes`).
pub fn worker_processes() -> usize {
    // SAFETY: a worker's cycle is live, its configuration complete.
    unsafe { core_conf(nginx_sys::ngx_cycle) }.map_or(1, |c| {
        usize::try_from(c.worker_processes).unwrap_or(1).max(1)
    })
}

/// The pid file of the configuration being read (nginx's `pid` directive if it was read yet,
/// else its default), relative paths from the prefix as nginx makes them full.
pub fn pid_path(cycle: *mut nginx_sys::ngx_cycle_t) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: a live cycle (nginx's, while the configuration is read).
    let set = unsafe { core_conf(cycle) }
        .filter(|c| c.pid.len > 0 && !c.pid.data.is_null())
        .map(|c| c.pid.as_bytes().to_vec());
    // SAFETY: as above.
    let prefix = unsafe { (*cycle).prefix.as_bytes() }.to_vec();
    let name = set.unwrap_or_else(|| nginx_sys::NGX_PID_PATH.to_bytes().to_vec());
    let name = std::path::Path::new(std::ffi::OsStr::from_bytes(&name));
    std::path::Path::new(std::ffi::OsStr::from_bytes(&prefix)).join(name)
}

/// The words of the directive being read, its name first (`cf->args`).
pub fn conf_words(cf: &nginx_sys::ngx_conf_t) -> &[ngx_str_t] {
    // SAFETY: while a directive is read, cf->args is nginx's array of its words.
    unsafe { (*cf.args).as_slice() }
}

/// The file and line of the directive being read.
pub fn conf_at(cf: &nginx_sys::ngx_conf_t) -> (String, usize) {
    // SAFETY: while a directive is read, cf->conf_file is the file being read.
    unsafe { ((*cf.conf_file).file.name.to_string(), (*cf.conf_file).line) }
}

/// An `[emerg]` about the directive being read (nginx adds "in FILE:LINE").
pub fn conf_emerg(cf: &mut nginx_sys::ngx_conf_t, msg: &str) {
    // SAFETY: cf is the configuration being read; the format takes a length and a pointer.
    unsafe {
        nginx_sys::ngx_conf_log_error(
            nginx_sys::NGX_LOG_EMERG as ngx_uint_t,
            cf,
            0,
            c"%*s".as_ptr(),
            msg.len(),
            msg.as_ptr(),
        )
    };
}

/// A size in nginx's syntax (`64m`, `1g`, `4096`), as `ngx_parse_offset` reads it.
pub fn parse_size(word: &[u8]) -> Option<u64> {
    let mut s = ngx_str_t {
        len: word.len(),
        data: word.as_ptr().cast_mut(),
    };
    // SAFETY: s points into `word`, which outlives the call; nginx only reads it.
    let n = unsafe { nginx_sys::ngx_parse_offset(&mut s) };
    u64::try_from(n).ok()
}

/// Writes `text` as one line on nginx's stderr (`nginx: text`), as nginx reports to the terminal.
pub fn log_stderr(text: &str) {
    // SAFETY: the format takes a length and a pointer to that many bytes.
    unsafe { nginx_sys::ngx_log_stderr(0, c"%*s".as_ptr(), text.len(), text.as_ptr()) };
}
