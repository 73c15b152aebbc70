#!/usr/bin/node
// A transformer kept alive by nginx (transform_pool), in Node.js with no npm package.
//
// nginx starts this program once (per worker, up to `processes=N` of them) and hands it one
// request after another as HTTP/1.1 messages on its stdin; it answers each with one HTTP/1.1
// response on its stdout. Node starts once (about 120 ms), not once per request: what a request
// costs is only what `handle` does. See nginx-conf/pool.conf and README.md ("transform_pool").
//
//     transform_pool node /usr/bin/node /usr/local/lib/nginx-transform/transformer.js
//                    processes=2 max_requests=1000;
//     location /node/ { transform_pass node; }
//
// What it does: the same as transformer.py (replace `handle` with your own work; the rest is the
// protocol):
// - GET  /any/path?a=1 -> 200 application/json describing the request: method, path, query
//   (decoded pairs), headers (as received, in order), this process's pid and how many requests it
//   has served, this one included (the same process answers request after request). The JSON is
//   byte for byte the Python one's but for "runtime" (non-ASCII escaped as \uXXXX as Python does).
// - HEAD               -> the GET's status and headers, no body.
// - POST or PUT        -> 200 with the body upper-cased (ASCII letters only; other bytes
//   untouched), of the request's Content-Type (application/octet-stream without one).
// - anything else      -> 405 with `Allow`.
// `handle` may be async (return a Promise): requests are still answered one at a time, in order.
//
// The protocol, as this loop speaks it:
// - In: `METHOD URI HTTP/1.1`, the client's header lines (nginx drops the hop-by-hop ones and its
//   own framing), `Content-Length: N` when there is a body, an empty line, then exactly N bytes.
//   stdin is a byte stream: a 'data' event may hold part of a message, or a message and the start
//   of the next (nginx sends the next one only once this one is answered, but a careful reader
//   does not count on that). So bytes are kept (Buffers, never decoded as UTF-8 before the head
//   is cut out) until a whole head is there, then until its Content-Length bytes are there.
// - Out: a status line, headers, `Transfer-Encoding: chunked` and the body in chunks (nginx
//   decodes them and frames the response for the client itself; Content-Length would do as
//   well: see transformer.py), written in one write(2). HEAD, 204 and 304 answers have no body
//   and no framing header. `Connection: close` asks nginx to retire the process after this
//   response (used here when the process cannot go on).
// - stdout carries responses only: anything else written to it breaks the framing and nginx
//   replaces the process (the request gets 502). So console.log is sent to stderr below; stderr
//   lines go to nginx's error log (transform_stderr sets their level).
// - End of file on stdin between requests: nginx retires the process (max_requests,
//   idle_timeout, reload): exit 0. In the middle of a request: an error line on stderr, exit 1.
// - An exception in `handle` answers 500 and logs the stack on stderr; the process serves on.
'use strict';

const { STATUS_CODES } = require('http');

// Limits of what this process accepts. nginx enforces client_max_body_size before the program
// sees a body; these keep a misconfigured pool from making the process huge.
const MAX_HEAD = 64 * 1024;
const MAX_HEADERS = 200;
const MAX_BODY = 64 * 1024 * 1024;
const CHUNK = 16 * 1024; // the size of the response's chunks

let requests = 0; // served by this process, the current one included

// One request -> { status, headers: [[name, value], ...], body: Buffer | string }.
// method: 'GET', 'POST', ...; path: the URI as the client sent it, query string included
// ('/node/x?a=1'); headers: [[name, value], ...] as received, in order, without Content-Length
// (the body's length is body.length); body: a Buffer (empty without one). Strings are latin1,
// as HTTP header bytes are.
function handle(method, path, headers, body) {
  if (method === 'GET' || method === 'HEAD') {
    const q = path.indexOf('?');
    const info = {
      runtime: 'node',
      pid: process.pid,
      requests,
      method,
      path: q < 0 ? path : path.slice(0, q),
      query: [...new URLSearchParams(q < 0 ? '' : path.slice(q + 1))],
      headers,
    };
    return { status: 200, headers: [['Content-Type', 'application/json']],
             body: asciiJson(info) + '\n' };
  }
  if (method === 'POST' || method === 'PUT') {
    const type = header(headers, 'Content-Type') || 'application/octet-stream';
    return { status: 200, headers: [['Content-Type', type]], body: upperAscii(body) };
  }
  return { status: 405, headers: [['Allow', 'GET, HEAD, POST, PUT'], ['Content-Type', 'text/plain']],
           body: 'method not allowed\n' };
}

// The first value of header `name` (any case), or undefined.
function header(headers, name) {
  const lower = name.toLowerCase();
  const found = headers.find(([k]) => k.toLowerCase() === lower);
  return found && found[1];
}

// JSON.stringify, with what is not ASCII escaped as \uXXXX (as Python's json.dumps does).
function asciiJson(value) {
  return JSON.stringify(value).replace(/[\u0080-\uffff]/g,
    (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'));
}

// A copy with the bytes a-z turned into A-Z (a binary body stays intact; no UTF-8 decoding).
function upperAscii(buf) {
  const out = Buffer.from(buf);
  for (let i = 0; i < out.length; i++) {
    if (out[i] >= 0x61 && out[i] <= 0x7a) out[i] -= 0x20;
  }
  return out;
}

// ---------------------------------------------------------------- the protocol (no need to change)

class BadRequest extends Error {
  // What came in is not a message this loop can frame: answered, then the process retires.
  constructor(status, why) {
    super(why);
    this.status = status;
  }
}

function log(msg) {
  process.stderr.write(`transformer.js[${process.pid}]: ${msg}\n`);
}
console.log = console.info = console.debug = (...args) => log(args.join(' '));

let chunks = []; // what stdin gave and no message took yet
let buffered = 0; // their total length
let head = null; // the parsed head of the message being received
let busy = false; // a request is being handled: the next one waits
let ended = false; // stdin is at its end

// Everything buffered, as one Buffer (concatenated only when a message may be complete).
function joined() {
  if (chunks.length > 1) chunks = [Buffer.concat(chunks, buffered)];
  return chunks.length ? chunks[0] : Buffer.alloc(0);
}

// Removes the first n buffered bytes and returns them.
function take(n) {
  const all = joined();
  const rest = all.subarray(n);
  chunks = rest.length ? [rest] : [];
  buffered = rest.length;
  return all.subarray(0, n);
}

// The head at the start of `buf`, or null when its end is not there yet.
function parseHead(buf) {
  const lines = [];
  let pos = 0;
  for (;;) {
    const nl = buf.indexOf(0x0a, pos);
    if (nl < 0) {
      if (buf.length > MAX_HEAD) throw new BadRequest(431, `a head over ${MAX_HEAD} bytes`);
      return null;
    }
    const end = nl > pos && buf[nl - 1] === 0x0d ? nl - 1 : nl;
    const line = buf.toString('latin1', pos, end);
    pos = nl + 1;
    if (pos > MAX_HEAD) throw new BadRequest(431, `a head over ${MAX_HEAD} bytes`);
    if (line === '') {
      if (lines.length === 0) throw new BadRequest(400, 'an empty line before a request');
      break;
    }
    lines.push(line);
  }
  const parts = lines[0].split(' ');
  if (parts.length !== 3 || !parts[2].startsWith('HTTP/1.')) {
    throw new BadRequest(400, `not a request line: ${JSON.stringify(lines[0].slice(0, 200))}`);
  }
  const headers = [];
  let length = 0;
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    const name = colon > 0 ? line.slice(0, colon) : '';
    if (!name || name !== name.trim()) {
      throw new BadRequest(400, `not a header line: ${JSON.stringify(line.slice(0, 200))}`);
    }
    const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '');
    const lower = name.toLowerCase();
    if (lower === 'content-length') {
      if (!/^[0-9]+$/.test(value)) throw new BadRequest(400, `bad Content-Length ${value}`);
      length = Number(value);
    } else if (lower === 'transfer-encoding') {
      throw new BadRequest(501, 'a request body in chunks (nginx sends Content-Length)');
    } else {
      headers.push([name, value]);
      if (headers.length > MAX_HEADERS) {
        throw new BadRequest(431, `more than ${MAX_HEADERS} header lines`);
      }
    }
  }
  // Not read: the process must not be reused, hence Connection: close.
  if (length > MAX_BODY) throw new BadRequest(413, `a body of ${length} bytes, over ${MAX_BODY}`);
  return { method: parts[0], uri: parts[1], headers, length, size: pos };
}

// The bytes of one response: head, then the body in chunks (none for HEAD, 204, 304).
function serialize(status, headers, body, headOnly, close) {
  const lines = [`HTTP/1.1 ${status} ${STATUS_CODES[status] || 'Unknown'}`];
  for (const [name, value] of headers) lines.push(`${name}: ${value}`);
  const bodiless = headOnly || status === 204 || status === 304;
  if (!bodiless) lines.push('Transfer-Encoding: chunked');
  if (close) lines.push('Connection: close');
  const out = [Buffer.from(lines.join('\r\n') + '\r\n\r\n', 'latin1')];
  if (!bodiless) {
    for (let at = 0; at < body.length; at += CHUNK) {
      const piece = body.subarray(at, at + CHUNK);
      out.push(Buffer.from(piece.length.toString(16) + '\r\n'), piece, Buffer.from('\r\n'));
    }
    out.push(Buffer.from('0\r\n\r\n'));
  }
  return Buffer.concat(out);
}

// handle()'s answer, or an Error saying what is wrong with it.
function checked(r) {
  if (!r || !Number.isInteger(r.status) || r.status < 200 || r.status > 599) {
    throw new Error(`status ${r && r.status} (200..599)`);
  }
  const body = typeof r.body === 'string' ? Buffer.from(r.body)
    : r.body === undefined ? Buffer.alloc(0) : r.body;
  if (!Buffer.isBuffer(body) && !(body instanceof Uint8Array)) {
    throw new Error('a body that is neither a string nor a Buffer');
  }
  const headers = (r.headers || []).map(([k, v]) => [String(k), String(v)]);
  for (const [name, value] of headers) {
    if (!name || /[\r\n\0 \t:]/.test(name) || /[\r\n\0]/.test(value)) {
      throw new Error(`header ${JSON.stringify(name)}: ${JSON.stringify(value)}`);
    }
    if (['content-length', 'transfer-encoding', 'connection'].includes(name.toLowerCase())) {
      throw new Error(`header ${name} is the loop's to write`);
    }
  }
  return { status: r.status, headers, body: Buffer.from(body.buffer, body.byteOffset, body.length) };
}

function send(bytes, then) {
  process.stdout.write(bytes, (err) => {
    if (!err) then();
  });
}

// Takes every complete message in turn, one at a time.
function pump() {
  while (!busy) {
    try {
      if (!head) head = buffered ? parseHead(joined()) : null;
    } catch (e) {
      if (!(e instanceof BadRequest)) throw e;
      log(`${e.message}: answering ${e.status} and retiring`);
      busy = true;
      process.stdin.pause();
      send(serialize(e.status, [['Content-Type', 'text/plain']], Buffer.from(e.message + '\n'),
                     false, true), () => process.exit(0));
      return;
    }
    if (!head || buffered < head.size + head.length) {
      if (ended) {
        if (!buffered) process.exit(0); // nginx closed stdin: retired
        log(`end of file inside a request (${buffered} bytes of it)`);
        process.exit(1);
      }
      return; // wait for more bytes
    }
    const { method, uri, headers, size, length } = head;
    head = null;
    take(size);
    const body = Buffer.from(take(length)); // a copy: the rest of the buffer is not held
    requests += 1;
    busy = true;
    Promise.resolve()
      .then(() => handle(method, uri, headers, body))
      .then(checked)
      .catch((e) => {
        for (const line of String((e && e.stack) || e).split('\n')) log(line);
        return { status: 500, headers: [['Content-Type', 'text/plain']],
                 body: Buffer.from('internal error\n') };
      })
      .then((r) => send(serialize(r.status, r.headers, r.body, method === 'HEAD', false), () => {
        busy = false;
        pump();
      }));
  }
}

process.stdin.on('data', (chunk) => {
  chunks.push(chunk);
  buffered += chunk.length;
  pump();
});
process.stdin.on('end', () => {
  ended = true;
  pump();
});
process.stdout.on('error', (e) => {
  // nginx closed our stdout (it stopped the request, or the client went away).
  log(`stdout: ${e.code || e.message}: exiting`);
  process.exit(1);
});
