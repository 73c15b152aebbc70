//! A program's CGI header block in nginx's header model: `r->headers_out`, filled as
//! ngx_http_upstream_process_headers() fills it from an upstream's header lines, so that nginx's
//! filters (not_modified, range, gzip, charset, expires) see them.

use core::ops::Range;
use core::ptr;

use nginx_sys::{
    ngx_hash_strlow, ngx_http_headers_out_t, ngx_list_push, ngx_parse_http_time, ngx_pnalloc,
    ngx_str_t, ngx_table_elt_t, ngx_uint_t, NGX_HTTP_GET, NGX_HTTP_HEAD,
};

use super::Http;
use crate::cgi::{show, Head};

/// The request pool could not hold the headers: the response cannot be made (500).
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("ngx_list_push() failed")]
    ListPush,
    #[error("ngx_pnalloc() failed")]
    Alloc,
}

/// Puts the program's headers into `r->headers_out` as the copy handlers of
/// ngx_http_upstream_headers_in do: Content-Type (and its charset) into `content_type`, each
/// other line into the `headers` list, pointed at by its `headers_out` field where it has one
/// (Date, Server, ETag, Last-Modified with `last_modified_time`, Expires, Cache-Control, ...).
/// Location is kept as the program wrote it (it is `headers_out.location` unless relative, so
/// nginx does not make it absolute).
///
/// Then decides, as ngx_http_upstream_process_headers does, whether nginx's not_modified
/// filter may answer conditional requests from the program's validators: for GET and HEAD, when
/// the program gave an ETag or a Last-Modified.
///
/// Status and Content-Length are the relay's to set, and so is the default Content-Type when
/// the program gave none. Call once, before the header is sent.
pub fn set_cgi_headers(http: Http, head: &Head) -> Result<(), HeaderError> {
    if let Some(t) = &head.content_type {
        set_content_type(http, t)?;
    }
    if let Some(location) = &head.location {
        let h = push(http, b"Location", location)?;
        if !location.starts_with(b"/") {
            // SAFETY: the type's invariant of Http; no other reference to the request is live.
            unsafe { (*http.as_ptr()).headers_out.location = h };
        }
    }
    for (name, value) in &head.headers {
        let h = push(http, name, value)?;
        // SAFETY: as above.
        let (ho, pool) = unsafe { (&mut (*http.as_ptr()).headers_out, (*http.as_ptr()).pool) };
        known(ho, pool, &name.to_ascii_lowercase(), h)?;
    }
    // SAFETY: as above.
    let r = unsafe { &mut *http.as_ptr() };
    let safe = r.method & (NGX_HTTP_GET | NGX_HTTP_HEAD) as ngx_uint_t != 0;
    let validators = !r.headers_out.etag.is_null() || r.headers_out.last_modified_time != -1;
    r.set_disable_not_modified(u32::from(!(safe && validators)));
    Ok(())
}

/// Points the `headers_out` field that filters read at `h`, a line just pushed, if its name
/// (`lower`, lowercase) has one.
fn known(
    ho: &mut ngx_http_headers_out_t,
    pool: *mut nginx_sys::ngx_pool_t,
    lower: &[u8],
    h: *mut ngx_table_elt_t,
) -> Result<(), HeaderError> {
    let field = match lower {
        b"date" => &mut ho.date,
        b"server" => &mut ho.server,
        b"etag" => &mut ho.etag,
        b"expires" => &mut ho.expires,
        b"refresh" => &mut ho.refresh,
        b"content-encoding" => &mut ho.content_encoding,
        b"content-range" => &mut ho.content_range,
        b"accept-ranges" => &mut ho.accept_ranges,
        b"last-modified" => {
            // SAFETY: h is a header line just pushed, its value in the request pool.
            let v = unsafe { (*h).value };
            // SAFETY: v.data points at v.len bytes; nginx's parser only reads them.
            ho.last_modified_time = unsafe { ngx_parse_http_time(v.data, v.len) };
            &mut ho.last_modified
        }
        // Repeatable: copy_multi_header_lines keeps all of them.
        b"cache-control" => return append(&mut ho.cache_control, pool, h),
        b"link" => return append(&mut ho.link, pool, h),
        _ => return Ok(()),
    };
    *field = h;
    Ok(())
}

/// nginx 1.23 and later: the lines of a repeatable header form a list through `next`.
#[cfg(nginx1_23_0)]
fn append(
    first: &mut *mut ngx_table_elt_t,
    _pool: *mut nginx_sys::ngx_pool_t,
    h: *mut ngx_table_elt_t,
) -> Result<(), HeaderError> {
    let mut at: *mut *mut ngx_table_elt_t = first;
    // SAFETY: the chain holds header lines of this request, alive with its pool.
    unsafe {
        while !(*at).is_null() {
            at = &mut (**at).next;
        }
        *at = h;
    }
    Ok(())
}

/// nginx before 1.23 (Debian 12's 1.22): an array of pointers to the lines, made in the request
/// pool on first use, as 1.22's ngx_http_upstream_copy_multi_header_lines makes it.
#[cfg(not(nginx1_23_0))]
fn append(
    list: &mut nginx_sys::ngx_array_t,
    pool: *mut nginx_sys::ngx_pool_t,
    h: *mut ngx_table_elt_t,
) -> Result<(), HeaderError> {
    let size = core::mem::size_of::<*mut ngx_table_elt_t>();
    // SAFETY: pool is the request's pool, which outlives the array and the line h.
    unsafe {
        if list.elts.is_null() {
            // ngx_array_init (inline in C, so not bound): room for two, as upstream's.
            let elts = nginx_sys::ngx_palloc(pool, 2 * size);
            if elts.is_null() {
                return Err(HeaderError::Alloc);
            }
            *list = nginx_sys::ngx_array_t {
                elts,
                nelts: 0,
                size,
                nalloc: 2,
                pool,
            };
        }
        let at = nginx_sys::ngx_array_push(list).cast::<*mut ngx_table_elt_t>();
        if at.is_null() {
            return Err(HeaderError::Alloc);
        }
        *at = h;
    }
    Ok(())
}

/// Appends a header line to `headers_out.headers`: key, value and lowercase key in the request
/// pool, NUL-terminated as nginx's parser leaves them, hash set.
fn push(http: Http, name: &[u8], value: &[u8]) -> Result<*mut ngx_table_elt_t, HeaderError> {
    debug!(
        http.log(),
        "transform cgi header: \"{}: {}\"",
        show(name),
        show(value)
    );
    let r = http.as_ptr();
    // SAFETY: a live request (Http's invariant); the list and the pool are its own.
    let h = unsafe { ngx_list_push(&mut (*r).headers_out.headers) }.cast::<ngx_table_elt_t>();
    if h.is_null() {
        return Err(HeaderError::ListPush);
    }
    let size = name.len() + 1 + value.len() + 1 + name.len();
    // SAFETY: as above.
    let p = unsafe { ngx_pnalloc((*r).pool, size) }.cast::<u8>();
    if p.is_null() {
        // SAFETY: h is the list's new element: a zero hash makes the filters skip it.
        unsafe { (*h).hash = 0 };
        return Err(HeaderError::Alloc);
    }
    // SAFETY: p has `size` bytes: key, NUL, value, NUL, lowercase key, laid out in that order;
    // h is the list's new element, fully written here.
    unsafe {
        let key = p;
        let val = key.add(name.len() + 1);
        let low = val.add(value.len() + 1);
        ptr::copy_nonoverlapping(name.as_ptr(), key, name.len());
        *key.add(name.len()) = 0;
        ptr::copy_nonoverlapping(value.as_ptr(), val, value.len());
        *val.add(value.len()) = 0;
        h.write(ngx_table_elt_t {
            hash: ngx_hash_strlow(low, key, name.len()),
            key: ngx_str_t {
                len: name.len(),
                data: key,
            },
            value: ngx_str_t {
                len: value.len(),
                data: val,
            },
            lowcase_key: low,
            #[cfg(nginx1_23_0)]
            next: ptr::null_mut(),
        });
    }
    Ok(h)
}

/// Content-Type as ngx_http_upstream_copy_content_type sets it: the type without its
/// `; charset=` parameter in `content_type_len`, the charset apart (the charset and gzip
/// filters match types by that length).
fn set_content_type(http: Http, value: &[u8]) -> Result<(), HeaderError> {
    let data = pool_str(http, value)?;
    let (type_len, charset) = charset_split(data).unwrap_or((data.len(), 0..0));
    let s = |r: Range<usize>| ngx_str_t {
        len: r.len(),
        data: data[r].as_ptr().cast_mut(),
    };
    // SAFETY: the type's invariant of Http; no other reference to the request is live.
    let ho = unsafe { &mut (*http.as_ptr()).headers_out };
    ho.content_type = s(0..data.len());
    ho.content_type_len = type_len;
    ho.content_type_lowcase = ptr::null_mut();
    // The program's type replaces the response's, charset included (a filtered response's
    // original charset does not describe the program's output).
    ho.charset = if charset.is_empty() {
        ngx_str_t::default()
    } else {
        s(charset)
    };
    Ok(())
}

/// Where `;` + spaces + `charset=` splits a Content-Type: the length of what comes before, and
/// the charset (unquoted). The same scan as ngx_http_upstream_copy_content_type, except that
/// `charset="` gives an empty charset where nginx's subtraction would wrap.
fn charset_split(v: &[u8]) -> Option<(usize, Range<usize>)> {
    let mut p = 0;
    while p < v.len() {
        if v[p] != b';' {
            p += 1;
            continue;
        }
        let last = p;
        p += 1;
        while v.get(p) == Some(&b' ') {
            p += 1;
        }
        if p == v.len() {
            return None;
        }
        if !v[p..]
            .get(..8)
            .is_some_and(|c| c.eq_ignore_ascii_case(b"charset="))
        {
            p += 1;
            continue;
        }
        p += 8;
        let start = if v.get(p) == Some(&b'"') { p + 1 } else { p };
        let end = if v.last() == Some(&b'"') {
            v.len() - 1
        } else {
            v.len()
        };
        return Some((last, start..end.max(start)));
    }
    None
}

/// A NUL-terminated copy of `bytes` in the request pool (nginx's header values are).
fn pool_str(http: Http, bytes: &[u8]) -> Result<&'static [u8], HeaderError> {
    // SAFETY: a live request's pool (Http's invariant).
    let p = unsafe { ngx_pnalloc(http.pool(), bytes.len() + 1) }.cast::<u8>();
    if p.is_null() {
        return Err(HeaderError::Alloc);
    }
    // SAFETY: p has bytes.len() + 1 bytes; the copy lives as long as the request.
    unsafe {
        ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
        *p.add(bytes.len()) = 0;
        Ok(core::slice::from_raw_parts(p, bytes.len()))
    }
}
