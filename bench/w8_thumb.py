"""W8's work, the same in every contestant (bench/run.py): a 200x150 JPEG thumbnail of a JPEG file,
made with PIL (Debian's python3-pil, for /usr/bin/python3). Also makes W8's picture:

    /usr/bin/python3 w8_thumb.py make PATH    -> a photo-like 2400x1800 JPEG of about 1 MB
"""

import io
import random
import sys

from PIL import Image, ImageChops, ImageFilter

SIZE = (200, 150)
# The picture: 4:3 (its thumbnail is exactly SIZE), about a megabyte.
PICTURE = (2400, 1800)
TARGET_BYTES = 1_000_000


def thumbnail(path):
    """The JPEG bytes of a SIZE thumbnail of the JPEG at `path`. Image.thumbnail() lets libjpeg
    decode at a reduced scale (draft mode), as any thumbnailer written with PIL does."""
    with Image.open(path) as im:
        im.thumbnail(SIZE)
        if im.size != SIZE:
            im = im.resize(SIZE)
        out = io.BytesIO()
        im.convert("RGB").save(out, "JPEG", quality=85)
    return out.getvalue()


def picture():
    """A deterministic photo-like picture: smooth colour fields (random colours on a 16x12 grid,
    enlarged bicubically and blurred, as plasma), light falling from the top (a vertical
    gradient), and fine grain (seeded noise)."""
    rng = random.Random(8)
    w, h = PICTURE
    fields = Image.frombytes("RGB", (16, 12), rng.randbytes(16 * 12 * 3))
    base = fields.resize(PICTURE, Image.BICUBIC).filter(ImageFilter.GaussianBlur(32))
    light = Image.linear_gradient("L").transpose(Image.FLIP_TOP_BOTTOM).resize(PICTURE)
    base = Image.blend(base, Image.merge("RGB", (light,) * 3), 0.35)
    grain = Image.frombytes("L", PICTURE, rng.randbytes(w * h)).point(lambda v: v * 48 // 255)
    return ImageChops.add(base, Image.merge("RGB", (grain,) * 3), 1.0, -24)


def make(path):
    """Writes the picture at the JPEG quality whose file is nearest TARGET_BYTES."""
    im = picture()
    best = None
    lo, hi = 20, 95
    while lo <= hi:
        q = (lo + hi) // 2
        out = io.BytesIO()
        im.save(out, "JPEG", quality=q)
        n = out.tell()
        if best is None or abs(n - TARGET_BYTES) < abs(best[1] - TARGET_BYTES):
            best = (q, n, out.getvalue())
        if n < TARGET_BYTES:
            lo = q + 1
        else:
            hi = q - 1
    with open(path, "wb") as f:
        f.write(best[2])
    print(f"{path}: {PICTURE[0]}x{PICTURE[1]}, quality {best[0]}, {best[1]} bytes")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        sys.exit("usage: w8_thumb.py make PATH")
