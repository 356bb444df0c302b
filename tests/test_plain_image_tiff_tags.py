"""TIFF tags an audit found misread: the Orientation tag (Pillow applies it, and decodes
orientations 5-8 of an uncompressed TIFF into streaks, while the warning said the stored grid
was kept) and a 16-bit MinIsWhite image (loaded inverted without a word)."""

import numpy as np
import pytest
import tifffile

from imaging_assist.display import render_slice
from imaging_assist.inference.images import read_image


def _stored(h=40, w=56, dtype=np.uint8):
    y, x = np.mgrid[0:h, 0:w]
    a = (x * 3 + y * 5) % 251
    return a.astype(dtype) * (257 if dtype == np.uint16 else 1)


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize("compression", [None, "lzw"])
def test_tiff_orientation_keeps_the_stored_grid_as_the_warning_says(tmp_path, orientation, compression):
    a = _stored()
    p = tmp_path / f"o{orientation}.tif"
    tifffile.imwrite(p, a, photometric="minisblack", compression=compression,
                     extratags=[(274, "H", 1, orientation, True)])
    vol = read_image(p)
    np.testing.assert_array_equal(vol.array[0], a)
    assert any(f"orientation {orientation} is ignored" in w for w in vol.warnings), vol.warnings


def test_16_bit_min_is_white_tiff_is_monochrome1(tmp_path):
    a = _stored(dtype=np.uint16)
    p = tmp_path / "w16.tif"
    tifffile.imwrite(p, a, photometric="miniswhite")
    vol = read_image(p)
    assert vol.photometric == "MONOCHROME1" and any("MinIsWhite" in w for w in vol.warnings), vol.warnings
    np.testing.assert_array_equal(vol.array[0], a)
    # shown as the file means it: the lowest value white
    img = render_slice(vol, 0)
    lo, hi = np.unravel_index(np.argmin(a), a.shape), np.unravel_index(np.argmax(a), a.shape)
    assert img[lo] > img[hi]


def test_8_bit_min_is_white_tiff_is_shown_as_pillow_inverts_it(tmp_path):
    a = _stored()
    p = tmp_path / "w8.tif"
    tifffile.imwrite(p, a, photometric="miniswhite")
    vol = read_image(p)
    assert vol.photometric == "MONOCHROME2"
    np.testing.assert_array_equal(vol.array[0], 255 - a)


def test_a_bmp_is_analysed_like_the_viewer_opens_it(tmp_path):
    """analyze said "nothing matches the model" for a BMP the viewer opens."""
    from PIL import Image

    from imaging_assist.cli import main

    a = _stored()
    Image.fromarray(a).save(tmp_path / "film.bmp")
    vol = read_image(tmp_path / "film.bmp")
    np.testing.assert_array_equal(vol.array[0], a)
    rc = main(["analyze", str(tmp_path / "film.bmp"), "--model", "cxr-lung-seg", "--out", str(tmp_path / "out")])
    assert rc in (0, 1) and (tmp_path / "out" / "results.json").is_file()
