"""W8's uWSGI contestant (bench/run.py): a WSGI app, loaded once by uWSGI's processes, that answers
the 200x150 thumbnail of the JPEG named by $W8_IMAGE (uWSGI's --env) (w8_thumb.py, the work of
every W8 contestant)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import w8_thumb  # noqa: E402

IMAGE = os.environ["W8_IMAGE"]


def application(environ, start_response):
    body = w8_thumb.thumbnail(IMAGE)
    start_response("200 OK", [("Content-Type", "image/jpeg"), ("Content-Length", str(len(body)))])
    return [body]
