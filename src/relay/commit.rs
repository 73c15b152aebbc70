//! The holding phase and the commit point: output is held in memory until the response can be
//! committed; then the header (from `transform_type`, or from the program's CGI header block)
//! goes out with what was held, and the sink for the rest is chosen. A CGI `Location` without
//! `Status` is a local redirect, checked as nginx checks X-Accel-Redirect.

use nginx_sys::{
    ngx_int_t, ngx_msec_t, NGX_ERROR, NGX_HTTP_BAD_GATEWAY, NGX_HTTP_INTERNAL_SERVER_ERROR,
    NGX_LOG_ERR, NGX_LOG_INFO, NGX_LOG_WARN, NGX_OK,
};
use ngx::http::HttpModule;

use super::sink::FileSink;
use super::{Flow, Next, Phase, Sink, Transform};
use crate::cgi;
use crate::conf::TransformConf;
use crate::log::escape;
use crate::nginx::{headers, now_msec, ContentType, CtxKind};
use crate::os;
use crate::pool::Loss;

/// Output held before the commit.
pub struct Held {
    buf: Vec<u8>,
    head: Head,
    /// When the first byte of body was held (the commit timer runs from then).
    since: Option<ngx_msec_t>,
    /// `transform_commit_timeout` passed.
    expired: bool,
    /// A pooled program's HTTP/1.x response head (not a CGI block) is read.
    http: bool,
    /// A pooled program's first output was checked for being an answer to this request.
    fresh: bool,
}

/// The CGI header block, for `transform_output cgi`.
enum Head {
    /// Raw output: everything held is body.
    Raw,
    /// Not complete yet.
    Reading,
    /// Parsed; the body starts at `body` in the held bytes. A pooled program's response also
    /// has its framing (`http`).
    Parsed {
        head: cgi::Head,
        body: usize,
        http: Option<Framing>,
    },
}

/// How a pooled program's response body is framed.
#[derive(Clone, Copy)]
struct Framing {
    chunked: bool,
    close: bool,
}

impl Held {
    /// For a program's output, or (`http`) a pooled program's response.
    pub fn new(conf: &TransformConf, http: bool) -> Held {
        Held {
            buf: Vec::new(),
            head: if conf.cgi_output != 0 || http {
                Head::Reading
            } else {
                Head::Raw
            },
            since: None,
            expired: false,
            http,
            fresh: false,
        }
    }

    pub fn since(&self) -> Option<ngx_msec_t> {
        self.since
    }

    pub fn expire(&mut self) {
        self.expired = true;
    }

    /// Where the body starts in the held bytes, once known.
    fn body_start(&self) -> Option<usize> {
        match &self.head {
            Head::Raw => Some(0),
            Head::Reading => None,
            Head::Parsed { body, .. } => Some(*body),
        }
    }

    /// Parses the header block if it is complete now. `Err` is the reason it is invalid.
    fn parse_head(&mut self) -> Result<bool, String> {
        if !matches!(self.head, Head::Reading) {
            return Ok(false);
        }
        if self.http {
            return match cgi::parse_response(&self.buf) {
                cgi::ParsedResponse::Done(r, used) => {
                    self.head = Head::Parsed {
                        head: r.head,
                        body: used,
                        http: Some(Framing {
                            chunked: r.chunked,
                            close: r.close,
                        }),
                    };
                    Ok(true)
                }
                cgi::ParsedResponse::Incomplete => Ok(false),
                cgi::ParsedResponse::Invalid(why) => Err(why),
            };
        }
        match cgi::parse(&self.buf) {
            cgi::Parsed::Done(head, used) => {
                self.head = Head::Parsed {
                    head,
                    body: used,
                    http: None,
                };
                Ok(true)
            }
            cgi::Parsed::Incomplete => Ok(false),
            cgi::Parsed::Invalid(why) => Err(why),
        }
    }

    fn body_len(&self) -> usize {
        self.body_start()
            .map_or(0, |start| self.buf.len().saturating_sub(start))
    }
}

impl Transform {
    /// Holding: looks at what the program wrote and decides whether the response can be
    /// committed, must fail, or waits.
    ///
    /// Raw output stays in the pipe (the sink moves it without a copy after the commit); a CGI
    /// header block is read into memory, with the body bytes that came along. The commit never
    /// depends on a write to a non-empty pipe waking us (kernels 5.5 to 5.13 do not signal it
    /// under EPOLLET): the end of the output (hang-up), the program's exit (pidfd) and
    /// `transform_commit_timeout` each wake the machine on their own, and a full pipe blocks
    /// the program until one of them does.
    pub(super) fn hold(&mut self) -> Flow {
        let filter = self.is_filter();
        let Phase::Holding(held) = &mut self.phase else {
            unreachable!("hold() runs in the holding phase");
        };
        let mut eof = false;
        if matches!(held.head, Head::Reading) {
            eof = match self
                .program
                .read_held(&mut held.buf, self.conf.header_buffer_size)
            {
                Ok(eof) => eof,
                Err(e) => {
                    return Flow::Wait(self.io_failed("read() from the program's stdout", e));
                }
            };
            if held.http && !held.fresh && !held.buf.is_empty() {
                held.fresh = true;
                if self.program.read_nothing() {
                    // Output before it read anything of this request: left from an earlier one
                    // (written late), never this one's answer.
                    log_error!(
                        NGX_LOG_ERR,
                        self.http.log(),
                        0,
                        "transform pool process {} of \"{}\" wrote before it read its request",
                        self.program.pid().unwrap_or(0),
                        self.program.name()
                    );
                    self.program
                        .set_loss(Loss::Broke("output before its request was read".into()));
                    return Flow::Wait(self.fail(NGX_HTTP_BAD_GATEWAY));
                }
            }
            let Phase::Holding(held) = &mut self.phase else {
                unreachable!("hold() runs in the holding phase");
            };
            if let Err(why) = held.parse_head() {
                let what = if held.http {
                    "response head"
                } else {
                    "header block"
                };
                log_error!(
                    NGX_LOG_ERR,
                    self.http.log(),
                    0,
                    "transform program \"{}\" sent an invalid {what}: {why}",
                    self.program.name()
                );
                self.program
                    .set_loss(Loss::Broke(format!("an invalid {what}: {why}")));
                return Flow::Wait(self.fail(NGX_HTTP_BAD_GATEWAY));
            }
            if matches!(held.head, Head::Parsed { http: Some(_), .. }) {
                // A pooled program's head is its commitment, as a proxied server's: the
                // response goes out at once (the process does not end to say it is complete).
                return self.commit(None);
            }
        }
        let (in_pipe, hung_up) = match self.program.stdout() {
            None => (0, true),
            Some(fd) => match os::pipe_state(fd) {
                Ok(state) => state,
                Err(e) => return Flow::Wait(self.io_failed("poll() on the program's stdout", e)),
            },
        };
        let Phase::Holding(held) = &mut self.phase else {
            unreachable!("hold() runs in the holding phase");
        };
        let status = self.program.exit();
        if let Some(status) = status.filter(|s| !s.success() || self.program.is_pooled()) {
            // A program that fails before the commit is a clean 502 (a pooled process that
            // exits has failed, whatever its status).
            return Flow::Wait(self.finish(status));
        }
        // The output is over: end of file, or the program exited and only other processes
        // still hold the pipe (the sink then moves what is there, and no more).
        let ended = eof || hung_up || status.is_some();
        let log = self.http.log();
        match &held.head {
            Head::Reading if held.buf.len() >= self.conf.header_buffer_size => {
                log_error!(
                    NGX_LOG_ERR,
                    log,
                    0,
                    "transform program \"{}\" sent a header block larger than \
                     transform_header_buffer_size {}",
                    self.program.name(),
                    self.conf.header_buffer_size
                );
                self.program.set_loss(Loss::Broke(
                    "a head larger than transform_header_buffer_size".into(),
                ));
                return Flow::Wait(self.fail(NGX_HTTP_BAD_GATEWAY));
            }
            // (Only what was seen before the drain counts: a hang-up observed after it may
            // follow bytes that arrived meanwhile.)
            // A pooled process whose output ended: its exit says why (it comes, within the
            // program's timeouts).
            Head::Reading if eof && status.is_none() && self.program.is_pooled() => {
                return Flow::Wait(Next::Program);
            }
            Head::Reading if eof || status.is_some() => {
                log_error!(
                    NGX_LOG_ERR,
                    log,
                    0,
                    "transform program \"{}\" ended its output before the end of its header block",
                    self.program.name()
                );
                return Flow::Wait(self.fail(NGX_HTTP_BAD_GATEWAY));
            }
            Head::Reading => return Flow::Wait(Next::Program),
            // The redirect is the program's whole answer: it is followed once the program
            // ended (so the log variables have its exit status, and a failure is a 502).
            Head::Parsed { head, .. } if head.is_local_redirect() && filter => {
                log_error!(
                    NGX_LOG_ERR,
                    log,
                    0,
                    "transform filter program \"{}\" sent a local redirect, which a filter \
                     cannot follow",
                    self.program.name()
                );
                return Flow::Wait(self.fail(NGX_HTTP_BAD_GATEWAY));
            }
            Head::Parsed { head, .. } if head.is_local_redirect() => {
                if status.is_none() {
                    return Flow::Wait(Next::Program);
                }
                return self.redirect();
            }
            _ => {}
        }
        let held_body = held.body_len() + in_pipe;
        if ended {
            if status.is_none() {
                // All of the output is there: the exit status decides.
                return Flow::Wait(Next::Program);
            }
            return self.commit(Some(held_body as u64));
        }
        let threshold = self
            .conf
            .commit_size
            .min(self.program.pipe_capacity())
            .max(1);
        // Output (or a complete CGI header block) is held: the commit timer runs from its first
        // byte. Events that are not output (the request body arriving) commit nothing.
        let holding = held_body > 0 || held.body_start().unwrap_or(0) > 0;
        if held_body >= threshold || holding && (held.expired || self.conf.commit_timeout == 0) {
            return self.commit(None);
        }
        if holding && held.since.is_none() {
            held.since = Some(now_msec());
        }
        Flow::Wait(Next::Program)
    }

    /// Sends the response header and what was held, and picks the sink for the rest. `length`
    /// is the body's length when all of it is held.
    fn commit(&mut self, length: Option<u64>) -> Flow {
        // A filtered response keeps its status, and its Content-Type unless one is configured.
        let own_status = self.filter_status().map(|s| s as u16);
        let raw_type = match (self.is_filter(), self.content_type) {
            (true, None) => ContentType::InHeaders,
            (_, t) => ContentType::Configured(t),
        };
        let Phase::Holding(held) = &mut self.phase else {
            unreachable!("commit() runs in the holding phase");
        };
        let mut buf = core::mem::take(&mut held.buf);
        let mut unshareable = None;
        // A pooled program's response: its body's length (None: chunked, decoded as it comes).
        let mut pooled: Option<(Option<u64>, Framing)> = None;
        if let Head::Parsed {
            head,
            body,
            http: Some(framing),
        } = &held.head
        {
            let no_body = self.http.is_head() || matches!(head.status, Some(204 | 304));
            let expect = match (no_body, head.content_length, framing.chunked) {
                (true, _, _) => Some(0),
                (false, Some(n), _) => Some(n),
                (false, None, true) => None,
                (false, None, false) => {
                    log_error!(
                        NGX_LOG_ERR,
                        self.http.log(),
                        0,
                        "transform program \"{}\" sent a response without Content-Length or \
                         chunked Transfer-Encoding",
                        self.program.name()
                    );
                    self.program
                        .set_loss(Loss::Broke("a response without a length".into()));
                    return Flow::Wait(self.fail(NGX_HTTP_BAD_GATEWAY));
                }
            };
            if expect.is_none() {
                // The body bytes held with the head are decoded now: a broken framing there is
                // still a clean 502.
                let mut d = crate::http1::Dechunk::default();
                let start = *body;
                match d.decode(&mut buf[start..]) {
                    Ok(decoded) => {
                        let total = buf.len() - start;
                        if d.done() {
                            self.moved.excess = (total - decoded.used) as u64;
                        }
                        buf.truncate(start + decoded.data);
                    }
                    Err(why) => {
                        log_error!(
                            NGX_LOG_ERR,
                            self.http.log(),
                            0,
                            "transform program \"{}\" sent {why}",
                            self.program.name()
                        );
                        self.program.set_loss(Loss::Broke(why.into()));
                        return Flow::Wait(self.fail(NGX_HTTP_BAD_GATEWAY));
                    }
                }
                self.moved.dechunk = Some(d);
            }
            pooled = Some((expect, *framing));
        }
        let Phase::Holding(held) = &mut self.phase else {
            unreachable!("commit() runs in the holding phase");
        };
        let (status, content_type, length, prefix, declared) =
            match core::mem::replace(&mut held.head, Head::Raw) {
                Head::Parsed { head, body, .. } => {
                    unshareable = head.unshareable();
                    let status = head.status.unwrap_or(if head.location.is_some() {
                        302
                    } else {
                        own_status.unwrap_or(200)
                    });
                    for warning in &head.warnings {
                        log_error!(
                            NGX_LOG_WARN,
                            self.http.log(),
                            0,
                            "transform program \"{}\" sent {warning}",
                            self.program.name()
                        );
                    }
                    if pooled.is_some() && self.is_filter() {
                        // A pooled filter program answers a whole response: its headers take
                        // the place of the original's.
                        self.http.clear_response_headers();
                    }
                    if let Err(e) = headers::set_cgi_headers(self.http, &head) {
                        log_error!(NGX_LOG_ERR, self.http.log(), 0, "transform: {e}");
                        let rc = NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
                        return Flow::Wait(Next::Finish(rc));
                    }
                    // The program's own Content-Type is in the headers now (charset apart).
                    let content_type = match &head.content_type {
                        Some(_) => ContentType::InHeaders,
                        None => raw_type,
                    };
                    (
                        status,
                        content_type,
                        head.content_length.or(length),
                        &buf[body..],
                        head.content_length.is_some(),
                    )
                }
                _ => {
                    self.http.disable_not_modified();
                    let status = own_status.unwrap_or(200);
                    (status, raw_type, length, &buf[..], false)
                }
            };
        self.program.set_hold_timer(None);
        if let Some((expect, _)) = pooled {
            if expect != Some(0) {
                // The program judges conditional requests itself (it has their headers): its
                // body is never left unread by nginx's 304.
                self.http.disable_not_modified();
            }
        }
        let rc = self
            .http
            .send_status_header(self.out(), Some(status), content_type, length);
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || self.http.header_only() {
            match pooled {
                Some((Some(0), framing)) if rc != NGX_ERROR as ngx_int_t => {
                    let extra = prefix.len() as u64 + self.program.output_waiting();
                    self.program.end_lease(self.http, extra, framing.close);
                }
                Some((expect, framing)) if rc == NGX_OK as ngx_int_t => {
                    // A request that gets the header only (a mirror or auth_request
                    // subrequest): the body is read and dropped, and the process goes back.
                    self.moved.close = framing.close;
                    self.moved.limit = match expect {
                        Some(n) => n,
                        None if self.moved.dechunk.as_ref().is_some_and(|d| d.done()) => {
                            prefix.len() as u64
                        }
                        None => u64::MAX,
                    };
                    let fits = prefix.len().min(self.moved.room() as usize);
                    self.moved.excess += (prefix.len() - fits) as u64;
                    self.moved.bytes = fits as u64;
                    self.set_phase(Phase::Streaming(Sink::Discard));
                    return Flow::Continue;
                }
                _ => {}
            }
            return Flow::Wait(Next::Finish(rc));
        }
        if let Some(n) = length {
            self.moved.limit = n;
        }
        self.moved.declared = declared;
        if let Some((expect, framing)) = pooled {
            self.moved.close = framing.close;
            match expect {
                Some(n) => self.moved.limit = n,
                None if self.moved.dechunk.as_ref().is_some_and(|d| d.done()) => {
                    self.moved.limit = prefix.len() as u64;
                }
                None => self.moved.limit = u64::MAX,
            }
        }
        let fits = prefix.len().min(self.moved.room() as usize);
        // Logged once the response is complete, with what else comes; or now, when what was
        // held is the whole response (the client has it all with the prefix).
        self.moved.excess += (prefix.len() - fits) as u64;
        if declared && self.moved.excess > 0 {
            self.log_excess(self.moved.excess);
        }
        let prefix = &prefix[..fits];
        let buf_prefix = prefix.to_vec();
        if !prefix.is_empty() {
            if self.http.output_bytes(self.out(), prefix) == NGX_ERROR as ngx_int_t {
                return Flow::Wait(Next::Finish(NGX_ERROR as ngx_int_t));
            }
            self.moved.bytes += prefix.len() as u64;
        }
        // Push the header through the filters now: they make their decisions on the way (gzip,
        // the addition filter's subrequests), and the splice transport must not overtake it.
        if self.out().special(self.http, false) == NGX_ERROR as ngx_int_t {
            return Flow::Wait(Next::Finish(NGX_ERROR as ngx_int_t));
        }
        let mut sink = None;
        if let Some(store) = &mut self.store {
            // Only a 200 with a body is stored or shared (as proxy_store stores only a 200),
            // and not one that is a user's own or whose body is encoded.
            if let (200, Some(why)) = (status, unshareable) {
                log_error!(
                    NGX_LOG_INFO,
                    self.http.log(),
                    0,
                    "transform program \"{}\": its response is neither stored nor shared: {why}",
                    self.program.name()
                );
            }
            let storable = status == 200 && unshareable.is_none();
            let shared_type = match content_type {
                ContentType::InHeaders => self.http.content_type(),
                ContentType::Configured(t) => t,
            };
            if store.begin(self.http, storable, shared_type, &buf_prefix) {
                sink = Some(Sink::File(FileSink::new(store.written())));
            }
        }
        let sink = sink.unwrap_or_else(|| {
            if self.moved.dechunk.is_some() {
                Sink::buffered(self.http, "the program's body is chunked")
            } else if !self.is_filter() && crate::filter::takes_output(self.http) {
                Sink::buffered(self.http, "a transform_filter takes the output")
            } else {
                Sink::choose(self.http, self.conf)
            }
        });
        self.set_phase(Phase::Streaming(sink));
        Flow::Continue
    }

    /// A CGI `Location: /uri` (or `@name`) without `Status`: the request restarts there, as
    /// with nginx's X-Accel-Redirect: an unsafe URI is refused, the method becomes GET (but
    /// HEAD), and a request body the program consumed is never handed on.
    fn redirect(&mut self) -> Flow {
        if let Some(store) = self.store.take() {
            // Not an output to store or share: waiters run their own.
            store.give_up();
        }
        let Phase::Holding(Held {
            head: Head::Parsed { head, .. },
            ..
        }) = &self.phase
        else {
            unreachable!("redirect() runs with a parsed header block");
        };
        let Some(location) = head.location.clone() else {
            unreachable!("a local redirect has a Location");
        };
        let log = self.http.log();
        if self.program.took_streamed_body(self.http) {
            log_error!(
                NGX_LOG_ERR,
                log,
                0,
                "transform program \"{}\" redirected to \"{}\" after taking the request body as \
                 it streamed, which cannot be handed on (transform_request_buffering off)",
                self.program.name(),
                escape(&location)
            );
            return Flow::Wait(self.fail(NGX_HTTP_BAD_GATEWAY));
        }
        let Some(target) = self.http.redirect_target(&location) else {
            log_error!(
                NGX_LOG_ERR,
                log,
                0,
                "transform program \"{}\" redirected to an unsafe URI \"{}\"",
                self.program.name(),
                escape(&location)
            );
            return Flow::Wait(self.fail(NGX_HTTP_BAD_GATEWAY));
        };
        debug!(log, "transform internal redirect");
        self.release();
        let rc = self.http.redirect(target);
        // The next location may run no program of its own: the log variables keep telling
        // about this one.
        let module = crate::Module::module();
        if self.http.ctx_is_empty(module) {
            let me = (self as *mut Transform).cast();
            // (Out of memory: the variables are empty.)
            let _ = self.http.set_ctx(module, CtxKind::Transform, me);
        }
        Flow::Wait(Next::Finish(rc))
    }
}

impl cgi::Head {
    /// `Location: /...` or `Location: @name` without `Status`.
    fn is_local_redirect(&self) -> bool {
        self.status.is_none()
            && self
                .location
                .as_deref()
                .is_some_and(|l| l.starts_with(b"/") || l.starts_with(b"@"))
    }
}
