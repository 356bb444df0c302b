"""A C decoder's own stderr line (libtiff inside Pillow) goes into our one-line error instead of
reaching the user as a second, unexplained line (imaging_assist/native_stderr.py)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT

from imaging_assist.native_stderr import captured


def _fax3_tiff(path):
    """An LZW TIFF whose Compression tag is damaged into CCITT Group 3 (8-bit samples): libtiff
    prints "Fax3SetupState: Bits/sample must be 1 ..." and Pillow raises "decoder error -2"."""
    a = (np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)
    Image.fromarray(a).save(path, compression="tiff_lzw")
    b = bytearray(path.read_bytes())
    i = b.find(bytes([0x03, 0x01, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x05, 0x00]))  # tag 259 = 5 (LZW)
    assert i > 0
    b[i + 8] = 3
    path.write_bytes(bytes(b))
    return path


def test_a_damaged_tiff_is_one_error_with_libtiffs_words_and_nothing_else_on_stderr(tmp_path, capfd):
    from imaging_assist.inference.images import ImageReadError, read_image

    f = _fax3_tiff(tmp_path / "bad.tif")
    with pytest.raises(ImageReadError) as e:
        read_image(f)
    assert "Fax3SetupState" in str(e.value) and "decoder error" in str(e.value)
    assert len(str(e.value).splitlines()) == 1
    assert "Fax3" not in capfd.readouterr().err  # before: libtiff's line on fd 2 as well


def test_the_slide_reader_says_the_same(tmp_path, capfd):
    from imaging_assist.slides.base import SlideReadError
    from imaging_assist.slides.image_backend import ImageSlide

    f = _fax3_tiff(tmp_path / "bad.tif")
    with pytest.raises(SlideReadError) as e:
        ImageSlide(str(f))
    assert "Fax3SetupState" in str(e.value)
    assert "Fax3" not in capfd.readouterr().err


def test_what_else_was_written_meanwhile_is_written_back(capfd):
    with captured() as cap:
        os.write(2, b"another thread's line\n")
    assert cap.lines == ["another thread's line"]
    cap.write_back()
    assert "another thread's line" in capfd.readouterr().err
    with captured() as cap:  # a good decode: nothing captured, nothing written
        pass
    assert cap.lines == [] and capfd.readouterr().err == ""


def test_analyze_prints_one_line_for_it(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    _fax3_tiff(d / "bad.tif")
    p = subprocess.run([sys.executable, "-m", "imaging_assist", "analyze", str(d), "--model", "cxr-pneumonia",
                        "--research-override", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert [ln for ln in lines if "Fax3" in ln] == [ln for ln in lines if ln.startswith("error:")], p.stderr
    assert len([ln for ln in lines if ln.startswith("error:")]) == 1
