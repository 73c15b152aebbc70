//! The nginx side of a body filter: the filters after ours, where a relay's output goes
//! ([`Downstream`]), the response header of a filtered response, the request's `buffered` bit,
//! waking the handler that produces the response, and its client write events.

use core::ptr;

use nginx_sys::{
    ngx_alloc_chain_link, ngx_buf_t, ngx_chain_t, ngx_hash_t, ngx_http_event_handler_pt,
    ngx_http_output_body_filter_pt, ngx_http_output_filter, ngx_http_output_header_filter_pt,
    ngx_http_send_header, ngx_int_t, ngx_module_t, ngx_uint_t, NGX_ERROR,
};

use super::Http;

/// The bit of `r->buffered` the filter holds while its program runs. nginx's own filters take
/// 0x01 (SSI), 0x02 (sub) and 0x04 (copy) of it; 0x08 is free (image_filter's 0x08 is a bit of
/// `c->buffered`, another field).
pub const FILTER_BUFFERED: u32 = 0x08;

/// The filters after ours, saved when ours were put at the top of nginx's chains.
static mut NEXT_HEADER: ngx_http_output_header_filter_pt = None;
static mut NEXT_BODY: ngx_http_output_body_filter_pt = None;

/// Puts `header` and `body` at the top of nginx's filter chains (postconfiguration).
///
/// # Safety
/// Called once per configuration, from postconfiguration, on nginx's thread.
pub unsafe fn install(
    header: ngx_http_output_header_filter_pt,
    body: ngx_http_output_body_filter_pt,
) {
    // SAFETY: caller's contract: nginx reads these only while serving, after configuration.
    unsafe {
        NEXT_HEADER = nginx_sys::ngx_http_top_header_filter;
        nginx_sys::ngx_http_top_header_filter = header;
        NEXT_BODY = nginx_sys::ngx_http_top_body_filter;
        nginx_sys::ngx_http_top_body_filter = body;
    }
}

/// Where a relay's output goes: the whole output chain (a response of its own), or the filters
/// after ours (a response it filters).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Downstream {
    Top,
    Next,
}

impl Downstream {
    /// Sends the response header as set in `r->headers_out`.
    pub fn send_header(self, http: Http) -> ngx_int_t {
        match self {
            // SAFETY: live request.
            Downstream::Top => unsafe { ngx_http_send_header(http.as_ptr()) },
            Downstream::Next => {
                // ngx_http_send_header's own checks, for the header it deferred.
                if http.with_r(|r| r.header_sent() != 0) {
                    return NGX_ERROR as ngx_int_t;
                }
                // SAFETY: installed at postconfiguration; nginx's chain is complete by then.
                match unsafe { NEXT_HEADER } {
                    // SAFETY: live request.
                    Some(next) => unsafe { next(http.as_ptr()) },
                    None => NGX_ERROR as ngx_int_t,
                }
            }
        }
    }

    /// Passes `chain` on (null: only pushes what the filters hold).
    pub fn body(self, http: Http, chain: *mut ngx_chain_t) -> ngx_int_t {
        match self {
            // SAFETY: live request; the chain's buffers live in the request pool.
            Downstream::Top => unsafe { ngx_http_output_filter(http.as_ptr(), chain) },
            // SAFETY: as above; installed at postconfiguration.
            Downstream::Next => match unsafe { NEXT_BODY } {
                // SAFETY: as above.
                Some(next) => unsafe { next(http.as_ptr(), chain) },
                None => NGX_ERROR as ngx_int_t,
            },
        }
    }

    /// A special buffer (flush, or the end of the response) as ngx_http_send_special makes it:
    /// `last_buf` for a main request, `last_in_chain` (with `sync`) for a subrequest.
    pub fn special(self, http: Http, last: bool) -> ngx_int_t {
        // SAFETY: the request pool is live; buffer and link are fresh.
        let cl = unsafe {
            let b = nginx_sys::ngx_pcalloc(http.pool(), size_of::<ngx_buf_t>()).cast::<ngx_buf_t>();
            let cl = ngx_alloc_chain_link(http.pool());
            if b.is_null() || cl.is_null() {
                return NGX_ERROR as ngx_int_t;
            }
            if !last {
                (*b).set_flush(1);
            } else if http.is_main() {
                (*b).set_last_buf(1);
            } else {
                (*b).set_sync(1);
                (*b).set_last_in_chain(1);
            }
            (*cl).buf = b;
            (*cl).next = ptr::null_mut();
            cl
        };
        self.body(http, cl)
    }
}

impl Http {
    /// The response status as the handler set it.
    pub fn status(self) -> ngx_uint_t {
        self.with_r(|r| r.headers_out.status)
    }

    /// Whether the response is an error page in place of one a filter failed (nginx's
    /// ngx_http_filter_finalize_request).
    pub fn with_filter_finalize(self) -> bool {
        self.with_r(|r| r.filter_finalize() != 0)
    }

    /// Sets the response's Content-Type (its charset included, if any).
    pub fn set_content_type(self, t: &'static [u8]) {
        self.with_r(|r| {
            let ho = &mut r.headers_out;
            ho.content_type = nginx_sys::ngx_str_t {
                len: t.len(),
                data: t.as_ptr().cast_mut(),
            };
            ho.content_type_len = t.len();
            ho.content_type_lowcase = ptr::null_mut();
            ho.charset.len = 0;
        });
    }

    /// Whether an upstream (proxy, fastcgi, uwsgi, scgi, grpc) sent this response's header and
    /// is done with it: whatever it did not pass on never comes. (`header_sent`: an upstream of
    /// this request before an internal redirect, which nginx leaves in `r->upstream`, sent
    /// nothing of this response.)
    pub fn upstream_finished(self) -> bool {
        self.with_r(|r| {
            // SAFETY: null or the request's upstream, in its pool.
            unsafe { r.upstream.as_ref() }
                .is_some_and(|u| u.header_sent() != 0 && u.cleanup.is_null())
        })
    }

    /// Whether the response is several byte ranges (its Content-Type says nothing of the
    /// body's).
    pub fn multipart_ranges(self) -> bool {
        self.content_type()
            .is_some_and(|t| t.len() >= 20 && t[..20].eq_ignore_ascii_case(b"multipart/byteranges"))
    }

    /// Whether this is a subrequest (an SSI include, an addition, a mirror...).
    pub fn is_subrequest(self) -> bool {
        !self.is_main()
    }

    /// Whether output of the request's subrequests waits in nginx's postpone filter.
    pub fn postponed(self) -> bool {
        self.with_r(|r| !r.postponed.is_null())
    }

    /// nginx's `send_timeout` of the location.
    pub fn send_timeout(self) -> nginx_sys::ngx_msec_t {
        self.core_conf().send_timeout
    }

    /// Whether the response body is encoded (a Content-Encoding other than empty or identity).
    pub fn encoded(self) -> bool {
        self.with_r(|r| {
            // SAFETY: null or a header of the response, in the request pool.
            match unsafe { r.headers_out.content_encoding.as_ref() } {
                None => false,
                Some(h) => {
                    let v = h.value.as_bytes();
                    h.hash != 0 && !v.is_empty() && !v.eq_ignore_ascii_case(b"identity")
                }
            }
        })
    }

    /// Whether the response's Content-Type is one of `types` (nginx's test, as gzip_types).
    pub fn type_in(self, types: &ngx_hash_t) -> bool {
        // SAFETY: live request; the hash was built at configuration time.
        !unsafe {
            nginx_sys::ngx_http_test_content_type(self.as_ptr(), ptr::from_ref(types).cast_mut())
        }
        .is_null()
    }

    /// The header of a response whose body a program replaces: what described the old body
    /// goes (Content-Length, ETag, Last-Modified, Accept-Ranges, byte ranges), and conditional
    /// requests are not judged against the new one (as for any program output).
    pub fn clear_body_headers(self) {
        self.with_r(|r| {
            let ho = &mut r.headers_out;
            ho.content_length_n = -1;
            ho.last_modified_time = -1;
            for h in [
                &mut ho.content_length,
                &mut ho.etag,
                &mut ho.last_modified,
                &mut ho.accept_ranges,
            ] {
                // SAFETY: null or a header of the response's list, in the request pool.
                if let Some(e) = unsafe { h.as_mut() } {
                    e.hash = 0;
                }
                *h = ptr::null_mut();
            }
            r.set_allow_ranges(0);
            r.set_disable_not_modified(1);
        });
    }

    /// Removes every header of the response (a pooled filter program answers a whole response,
    /// whose headers take their place); nginx's own (Server, Date) are made again as usual.
    pub fn clear_response_headers(self) {
        self.clear_body_headers();
        self.with_r(|r| {
            let ho = &mut r.headers_out;
            let mut part: *mut nginx_sys::ngx_list_part_t = &mut ho.headers.part;
            // SAFETY: the response's header list, in the request pool.
            unsafe {
                while !part.is_null() {
                    let elts = (*part).elts.cast::<nginx_sys::ngx_table_elt_t>();
                    for i in 0..(*part).nelts {
                        (*elts.add(i)).hash = 0;
                    }
                    part = (*part).next;
                }
            }
            for h in [
                &mut ho.server,
                &mut ho.date,
                &mut ho.content_encoding,
                &mut ho.location,
                &mut ho.refresh,
                &mut ho.content_range,
                &mut ho.www_authenticate,
                &mut ho.expires,
                #[cfg(nginx1_23_0)]
                &mut ho.cache_control,
                #[cfg(nginx1_23_0)]
                &mut ho.link,
            ] {
                *h = ptr::null_mut();
            }
            // Before 1.23 the repeatable ones are arrays of pointers to the lines, and readers
            // test `elts`: 1.22's `expires` reuses the first element when there is an array
            // (it would rewrite a cleared line, which is not sent), gzip_proxied declines. The
            // arrays go as a whole; the program's own lines make new ones.
            #[cfg(not(nginx1_23_0))]
            {
                let none = nginx_sys::ngx_array_t {
                    elts: ptr::null_mut(),
                    nelts: 0,
                    size: 0,
                    nalloc: 0,
                    pool: ptr::null_mut(),
                };
                ho.cache_control = none;
                ho.link = none;
            }
            let mut part: *mut nginx_sys::ngx_list_part_t = &mut ho.trailers.part;
            // SAFETY: the response's trailer list (possibly never initialized: no parts then).
            unsafe {
                while !part.is_null() && !(*part).elts.is_null() {
                    let elts = (*part).elts.cast::<nginx_sys::ngx_table_elt_t>();
                    for i in 0..(*part).nelts {
                        (*elts.add(i)).hash = 0;
                    }
                    part = (*part).next;
                }
            }
            ho.content_type = nginx_sys::ngx_str_t::default();
            ho.content_type_len = 0;
            ho.content_type_lowcase = ptr::null_mut();
            ho.content_type_hash = 0;
            ho.charset = nginx_sys::ngx_str_t::default();
            ho.override_charset = ptr::null_mut();
            ho.status_line = nginx_sys::ngx_str_t::default();
        });
    }

    /// Sets or clears the filter's bit of `r->buffered`: while set, nginx does not end the
    /// request (it waits in ngx_http_writer for the bit to clear).
    pub fn set_buffered(self, on: bool) {
        self.with_r(|r| {
            let b = r.buffered();
            r.set_buffered(if on {
                b | FILTER_BUFFERED
            } else {
                b & !FILTER_BUFFERED
            });
        });
    }

    /// Has the handler that produces the response called again (its write event handler, as
    /// nginx runs a posted subrequest): it sees what the filter took and sends more, or ends
    /// the request once the filter let go of it. Runs from the connection's posted requests.
    pub fn post(self) -> bool {
        // SAFETY: live request; nginx allocates the posted entry from its pool.
        unsafe { nginx_sys::ngx_http_post_request(self.as_ptr(), ptr::null_mut()) == 0 }
    }

    /// The handler of the request's write events (the response's producer's).
    pub fn write_handler(self) -> ngx_http_event_handler_pt {
        self.with_r(|r| r.write_event_handler)
    }

    pub fn set_write_handler(self, h: ngx_http_event_handler_pt) {
        self.with_r(|r| r.write_event_handler = h);
    }

    /// Whether the client write event timed out (send_timeout), left for its owner to see.
    pub fn write_timed_out(self) -> bool {
        // SAFETY: a live connection has live events.
        self.with_c(|c| unsafe { (*c.write).timedout() != 0 })
    }

    /// Whether this request is the one the connection writes for now (not a subrequest
    /// waiting for its turn).
    pub fn active(self) -> bool {
        let r = self.as_ptr();
        self.with_c(|c| ptr::eq(c.data.cast(), r))
    }

    /// Removes the client's send_timeout when nothing waits for the client (the filter waits
    /// for its program, whose own timers run): nginx's writer and ngx_http_set_write_handler
    /// start it whenever the request is buffered.
    pub fn drop_idle_send_timer(self) {
        if !self.active() || self.pending_output() {
            return;
        }
        let wev = self.with_c(|c| c.write);
        // SAFETY: a live connection has live events; a delayed event's timer is limit_rate's.
        unsafe {
            if (*wev).timer_set() != 0 && (*wev).delayed() == 0 {
                nginx_sys::ngx_del_timer(wev);
            }
        }
    }

    /// Watches the client for a close while the response is produced by a handler that does
    /// not (nginx's static and other in-memory handlers block reading): a client that leaves
    /// ends the request, and the filter's program with it.
    pub fn watch_close_if_blocked(self) {
        let blocked = nginx_sys::ngx_http_block_reading as *const () as usize;
        let main = self.is_main();
        let reading_body = self.reading_body();
        self.with_r(|r| {
            // (nginx's own function, whose address nginx stored: one address.)
            if main && !reading_body && r.read_event_handler.map(|f| f as usize) == Some(blocked) {
                r.read_event_handler = Some(nginx_sys::ngx_http_test_reading);
            }
        });
    }

    /// Ends a response that failed before its header went out with an error page of `status`
    /// in its place (nginx's ngx_http_filter_finalize_request: other modules' state is
    /// dropped, `module`'s kept). Returns NGX_ERROR for the caller to pass on.
    pub fn filter_finalize(self, module: &ngx_module_t, status: ngx_int_t) -> ngx_int_t {
        // SAFETY: live request; the module is nginx's.
        unsafe {
            nginx_sys::ngx_http_filter_finalize_request(
                self.as_ptr(),
                ptr::from_ref(module).cast_mut(),
                status,
            )
        }
    }
}

/// Marks every buffer of `chain` consumed (a response nobody reads), as a filter releases a
/// buffer; whether the chain held the response's last buffer.
pub fn consume(mut chain: *mut ngx_chain_t) -> bool {
    let mut last = false;
    while !chain.is_null() {
        // SAFETY: the handler's live chain of live buffers.
        unsafe {
            let b = (*chain).buf;
            last |= (*b).last_buf() != 0 || (*b).last_in_chain() != 0;
            (*b).pos = (*b).last;
            (*b).file_pos = (*b).file_last;
            chain = (*chain).next;
        }
    }
    last
}
