#!/usr/bin/python3
"""W8's transform_exec contestant (bench/run.py): `transform_exec /usr/bin/python3 w8_exec.py PATH`
writes the 200x150 thumbnail of the JPEG at PATH to stdout (w8_thumb.py, the work of every W8
contestant), one Python start-up per request."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import w8_thumb  # noqa: E402

sys.stdout.buffer.write(w8_thumb.thumbnail(sys.argv[1]))
