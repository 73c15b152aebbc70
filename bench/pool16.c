/* W8's pooled 16-byte program (bench/run.py builds it with gcc): for transform_pool, it reads one
 * HTTP/1.1 request after another on stdin (the head up to its empty line, then Content-Length
 * body bytes, which it drops) and answers each with 16 bytes ("xxxxxxxxxxxxxxxx", as W2's
 * `transform-bench produce 16`). The pooled counterpart of W2's program spawned per request,
 * in C so that what is measured is the module, not an interpreter. Exits 0 at end of file
 * between requests, 1 on a framing it does not know. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char RESPONSE[] = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                               "Content-Length: 16\r\n\r\nxxxxxxxxxxxxxxxx";

static char buf[65536];
static size_t have;

static int fill(void) {
    for (;;) {
        ssize_t n = read(0, buf + have, sizeof buf - have);
        if (n > 0) {
            have += (size_t)n;
            return 1;
        }
        if (n == 0) return 0;
        if (errno != EINTR) return -1;
    }
}

/* The Content-Length of the head buf[0..len), 0 without one. */
static long long content_length(size_t len) {
    static const char name[] = "\ncontent-length:";
    for (size_t i = 0; i + sizeof name - 1 <= len; i++) {
        if (strncasecmp(buf + i, name, sizeof name - 1) == 0) {
            return strtoll(buf + i + sizeof name - 1, NULL, 10);
        }
    }
    return 0;
}

int main(void) {
    for (;;) {
        char *end;
        while (!(end = memmem(buf, have, "\r\n\r\n", 4))) {
            if (have == sizeof buf) return 1;
            int r = fill();
            if (r == 0) return have ? 1 : 0;
            if (r < 0) return 1;
        }
        size_t head = (size_t)(end + 4 - buf);
        long long body = content_length(head);
        if (body < 0) return 1;
        /* Drop the head and the body (what of it is buffered, then the rest as it comes). */
        size_t drop = head;
        unsigned long long left = (unsigned long long)body;
        size_t now = have - drop < left ? have - drop : (size_t)left;
        drop += now;
        left -= now;
        memmove(buf, buf + drop, have - drop);
        have -= drop;
        while (left) {
            int r = fill();
            if (r <= 0) return 1;
            now = have < left ? have : (size_t)left;
            memmove(buf, buf + now, have - now);
            have -= now;
            left -= now;
        }
        for (size_t off = 0; off < sizeof RESPONSE - 1;) {
            ssize_t n = write(1, RESPONSE + off, sizeof RESPONSE - 1 - off);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return 1;
            off += (size_t)n;
        }
    }
}
