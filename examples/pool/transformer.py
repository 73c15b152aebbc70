#!/usr/bin/python3
"""A transformer kept alive by nginx (transform_pool), in Python 3 with the standard library only.

nginx starts this program once (per worker, up to `processes=N` of them) and hands it one request
after another as HTTP/1.1 messages on its stdin; it answers each with one HTTP/1.1 response on its
stdout. The interpreter starts once, not once per request: what a request costs is only what
`handle` does. See nginx-conf/pool.conf and README.md ("transform_pool").

    transform_pool python /usr/bin/python3 /usr/local/lib/nginx-transform/transformer.py
                   processes=2 max_requests=1000;
    location /py/ { transform_pass python; }

What it does (replace `handle` with your own work; the rest is the protocol):
- GET  /any/path?a=1  -> 200 application/json describing the request: method, path, query (decoded
  pairs), headers (as received, in order), this process's pid and how many requests it has served,
  this one included (the same process answers request after request: watch `pid` and `requests`).
- HEAD                -> the GET's status and headers, no body.
- POST or PUT         -> 200 with the body upper-cased (ASCII letters only; other bytes untouched),
  of the request's Content-Type (application/octet-stream without one).
- anything else       -> 405 with `Allow`.

The protocol, as this loop speaks it:
- In: `METHOD URI HTTP/1.1`, the client's header lines (nginx drops the hop-by-hop ones and its own
  framing: no Connection, Transfer-Encoding, Expect), `Content-Length: N` when there is a body, an
  empty line, then exactly N bytes. stdin is binary: it is read through sys.stdin.buffer, by lines
  for the head and exactly N bytes for the body, never further than the message (the next request
  is only written once this one is answered, and a read past the message would wait for ever).
- Out: a status line, headers, `Content-Length`, an empty line, the body, then a flush (without it
  the response sits in Python's buffer and the request times out). A HEAD answer has the GET's
  Content-Length and no body (nginx knows a HEAD's answer has none); 204 and 304 have neither. `Connection: close` asks nginx to retire the process after this
  response (used here when the process cannot go on).
- stdout carries responses only: anything else written to it breaks the framing and nginx replaces
  the process (the request gets 502). So `print()` is redirected to stderr below; stderr lines go
  to nginx's error log (transform_stderr sets their level).
- End of file on stdin between requests: nginx retires the process (max_requests, idle_timeout,
  reload): exit 0. In the middle of a request: an error line on stderr, exit 1.
- An exception in `handle` answers 500 and logs the traceback on stderr; the process serves on.
"""

import http
import json
import os
import sys
import traceback
from urllib.parse import parse_qsl

# Limits of what this process accepts. nginx enforces client_max_body_size before the program sees
# a body; these keep a misconfigured pool from making the process huge.
MAX_LINE = 64 * 1024  # one line of the head
MAX_HEADERS = 200
MAX_BODY = 64 * 1024 * 1024

REQUESTS = 0  # served by this process, the current one included


def handle(method, path, headers, body):
    """One request -> (status, [(name, value), ...], body bytes).

    method: "GET", "POST", ...; path: the URI as the client sent it, query string included
    ("/py/x?a=1"); headers: [(name, value), ...] as received, in order, without Content-Length
    (the body's length is len(body)); body: bytes (b"" without one). Strings are latin-1, as HTTP
    header bytes are. Content-Length is added by the caller."""
    if method in ("GET", "HEAD"):
        path_only, _, query = path.partition("?")
        info = {
            "runtime": "python",
            "pid": os.getpid(),
            "requests": REQUESTS,
            "method": method,
            "path": path_only,
            "query": [list(p) for p in parse_qsl(query, keep_blank_values=True)],
            "headers": [list(h) for h in headers],
        }
        out = (json.dumps(info, separators=(",", ":")) + "\n").encode()
        return 200, [("Content-Type", "application/json")], out
    if method in ("POST", "PUT"):
        ctype = header(headers, "Content-Type") or "application/octet-stream"
        return 200, [("Content-Type", ctype)], body.upper()  # bytes.upper(): ASCII a-z only
    return 405, [("Allow", "GET, HEAD, POST, PUT"), ("Content-Type", "text/plain")], \
        b"method not allowed\n"


def header(headers, name):
    """The first value of header `name` (any case), or None."""
    name = name.lower()
    return next((v for k, v in headers if k.lower() == name), None)


# ---------------------------------------------------------------- the protocol (no need to change)

class BadRequest(Exception):
    """What came in is not a message this loop can frame: answered, then the process retires."""

    def __init__(self, status, why):
        super().__init__(why)
        self.status = status


class Eof(Exception):
    """stdin ended in the middle of a message."""


def log(msg):
    sys.stderr.write(f"transformer.py[{os.getpid()}]: {msg}\n")
    sys.stderr.flush()


def read_line(inp):
    line = inp.readline(MAX_LINE + 1)
    if not line.endswith(b"\n"):
        if len(line) > MAX_LINE:
            raise BadRequest(431, f"a head line longer than {MAX_LINE} bytes")
        raise Eof(f"end of file inside the head (after {len(line)} bytes of a line)")
    return line[:-2] if line.endswith(b"\r\n") else line[:-1]


def read_request(inp):
    """(method, uri, headers, body) of the next message, None at end of file before one."""
    first = inp.readline(MAX_LINE + 1)
    if not first:
        return None
    if not first.endswith(b"\n"):
        if len(first) > MAX_LINE:
            raise BadRequest(414, "request line too long")
        raise Eof("end of file inside the request line")
    parts = first.rstrip(b"\r\n").split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise BadRequest(400, f"not a request line: {first[:200]!r}")
    method, uri = parts[0].decode("latin-1"), parts[1].decode("latin-1")
    headers, length = [], 0
    while True:
        line = read_line(inp)
        if not line:
            break
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise BadRequest(400, f"not a header line: {line[:200]!r}")
        name, value = name.decode("latin-1"), value.strip(b" \t").decode("latin-1")
        lower = name.lower()
        if lower == "content-length":
            if not value.isdigit():
                raise BadRequest(400, f"bad Content-Length {value!r}")
            length = int(value)
        elif lower == "transfer-encoding":
            raise BadRequest(501, "a request body in chunks (nginx sends Content-Length)")
        else:
            headers.append((name, value))
            if len(headers) > MAX_HEADERS:
                raise BadRequest(431, f"more than {MAX_HEADERS} header lines")
    if length > MAX_BODY:
        # Not read: the process must not be reused, hence Connection: close.
        raise BadRequest(413, f"a body of {length} bytes, over {MAX_BODY}")
    body = inp.read(length) if length else b""
    if len(body) != length:
        raise Eof(f"end of file after {len(body)} of {length} body bytes")
    return method, uri, headers, body


def write_response(out, status, headers, body, head_only=False, close=False):
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [f"HTTP/1.1 {status} {phrase}"]
    for name, value in headers:
        lines.append(f"{name}: {value}")
    bodiless = head_only or status in (204, 304)
    if status not in (204, 304):
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    out.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if not bodiless:
        out.write(body)
    out.flush()


def checked(result):
    """handle()'s answer, or ValueError saying what is wrong with it."""
    status, headers, body = result
    if not isinstance(status, int) or not 200 <= status <= 599:
        raise ValueError(f"status {status!r} (200..599)")
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise ValueError(f"a body of type {type(body).__name__}, not bytes")
    headers = [(str(k), str(v)) for k, v in headers]
    for name, value in headers:
        bad = set("\r\n\0")
        if not name or set(name) & (bad | set(" \t:")) or set(value) & bad:
            raise ValueError(f"header {name!r}: {value!r}")
        if name.lower() in ("content-length", "transfer-encoding", "connection"):
            raise ValueError(f"header {name} is the loop's to write")
    return status, headers, bytes(body)


def main():
    global REQUESTS
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # print() in handle() must not break the framing
    while True:
        try:
            req = read_request(inp)
        except BadRequest as e:
            log(f"{e}: answering {e.status} and retiring")
            write_response(out, e.status, [("Content-Type", "text/plain")],
                           f"{e}\n".encode(), close=True)
            return 0
        except Eof as e:
            log(str(e))
            return 1
        if req is None:
            return 0  # nginx closed stdin: retired
        method, uri, headers, body = req
        REQUESTS += 1
        try:
            status, rheaders, rbody = checked(handle(method, uri, headers, body))
        except Exception:  # noqa: BLE001 - any failure of the user's code is a 500
            for line in traceback.format_exc().rstrip().splitlines():
                log(line)
            status, rheaders, rbody = 500, [("Content-Type", "text/plain")], \
                b"internal error\n"
        write_response(out, status, rheaders, rbody, head_only=method == "HEAD")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        # nginx closed our stdout (it stopped the request, or the client went away): nothing
        # more can be answered. os._exit: no second flush of the dead pipe at shutdown.
        try:
            log("stdout closed by nginx: exiting")
        except OSError:
            pass
        os._exit(1)
    except KeyboardInterrupt:
        os._exit(130)
