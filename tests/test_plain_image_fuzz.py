"""Plain images (PNG, JPEG, TIFF: ``inference.images.read_image``, the path of the viewer, analyze
and batch) attacked with mutated copies of a real chest film: every file loads or is refused in one
ImageReadError line; no other exception escapes."""

from __future__ import annotations

import io
import random
import struct
import warnings

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED, need
from imaging_assist.inference.images import ImageReadError, read_image

FILM = SHARED / "cxr" / "lung_masks_covid_generalblockchain" / "images" / "8c7d47e52396dd4f58d04c490228dd8b7acfa408.jpg"


@pytest.fixture(scope="module")
def sources():
    jpg = need(FILM).read_bytes()
    grey = np.asarray(Image.open(io.BytesIO(jpg)).convert("L"))[:256, :256]
    out = {"jpg": jpg}
    for name, arr, fmt in (("png", grey, "PNG"), ("tif", grey, "TIFF"), ("f.tif", grey.astype(np.float32), "TIFF"),
                           ("16.png", grey.astype(np.uint16) * 200, "PNG")):
        b = io.BytesIO()
        Image.fromarray(arr).save(b, fmt)
        out[name] = b.getvalue()
    b = io.BytesIO()
    Image.fromarray(grey).save(b, "TIFF", compression="tiff_lzw")  # decoded by libtiff, which prints
    out["lzw.tif"] = b.getvalue()
    return out


def _check(path):
    try:
        v = read_image(path)
    except ImageReadError as e:
        assert str(e) and "\n" not in str(e), str(e)
        return "refused"
    assert v.array.ndim in (3, 4) and v.array.size > 0
    return "loaded"


@pytest.mark.parametrize("name", ["jpg", "png", "tif", "f.tif", "16.png", "lzw.tif"])
def test_mutated_images_load_or_are_one_line(sources, name, tmp_path, capfd):
    raw = sources[name]
    r = random.Random(name)
    seen = {"loaded": 0, "refused": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(250):
            b = bytearray(raw)
            if t % 6 == 0:
                b = b[: r.randrange(len(b))]
            else:
                for _ in range(r.randint(1, 6)):
                    b[r.randrange(min(len(b), 400 if t % 2 else len(b)))] = r.randrange(256)
            p = tmp_path / f"m{t}.{name.split('.')[-1]}"
            p.write_bytes(bytes(b))
            seen[_check(p)] += 1
    assert seen["refused"] > 20 and seen["loaded"] > 20, seen
    # a decoder's own line goes into the refusal (native_stderr), not beside it on stderr
    err = capfd.readouterr().err
    assert err == "", err[:2000]


def test_tiff_whose_next_page_has_no_size_is_one_line(sources, tmp_path):
    """Pillow raised TypeError ("Missing dimensions") when asked how many pages a TIFF has and
    the first page's next-page pointer leads into the middle of the first page's tags."""
    b = bytearray(sources["tif"])
    (ifd,) = struct.unpack_from("<I", b, 4)
    (n,) = struct.unpack_from("<H", b, ifd)
    struct.pack_into("<I", b, ifd + 2 + 12 * n, 77)  # the next IFD: inside the first one
    p = tmp_path / "nosize.tif"
    p.write_bytes(bytes(b))
    with pytest.raises(ImageReadError, match=r"nosize\.tif: not a readable PNG/JPEG/TIFF image \(TypeError"):
        read_image(p)
