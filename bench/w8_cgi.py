#!/usr/bin/python3
"""W8's fcgiwrap contestant (bench/run.py): a CGI program, one Python start-up per request, that
answers the 200x150 thumbnail of the JPEG named by $W8_IMAGE (a fastcgi_param) (w8_thumb.py, the
work of every W8 contestant)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import w8_thumb  # noqa: E402

body = w8_thumb.thumbnail(os.environ["W8_IMAGE"])
sys.stdout.buffer.write(b"Content-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
