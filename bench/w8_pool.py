#!/usr/bin/python3
"""W8's pooled contestant (bench/run.py), run by `transform_pool NAME /usr/bin/python3 w8_pool.py
ARG`: the loop of examples/pool/transformer.py (copied next to this file by the bench) with a
handle() of its own: ARG a JPEG file's path, the 200x150 thumbnail of it (w8_thumb.py, the work of
every W8 contestant); ARG "16", 16 bytes (the pooled counterpart of W2's 16-byte program)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import transformer  # noqa: E402
import w8_thumb  # noqa: E402

ARG = sys.argv[1]
SIXTEEN = b"x" * 16


def thumbnail(method, path, headers, body):
    return 200, [("Content-Type", "image/jpeg")], w8_thumb.thumbnail(ARG)


def sixteen(method, path, headers, body):
    return 200, [("Content-Type", "application/octet-stream")], SIXTEEN


transformer.handle = sixteen if ARG == "16" else thumbnail

if __name__ == "__main__":
    try:
        sys.exit(transformer.main())
    except BrokenPipeError:
        os._exit(1)
