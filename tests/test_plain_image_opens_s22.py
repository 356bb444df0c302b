"""A single plain image file opens where its models are: a chest film or a pathology tile in the
image viewer, a plain image as large as `scan` lists slides (4096 px on its longer side) in the
slide view.  Every plain JPEG/PNG file opened in the slide view, where cxr-pneumonia is not offered
("slide models only"), though README says `scan` lists *large* plain images as slides."""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from _qt import open_window  # noqa: E402
from conftest import SHARED, need  # noqa: E402

KERMANY = SHARED / "cxr" / "pneumonia_kermany" / "test" / "NORMAL"


def test_small_plain_images_are_not_slides_large_ones_are(tmp_path):
    from PIL import Image

    from imaging_assist.slides.cli import SCAN_MIN_PLAIN_SIDE
    from imaging_assist_ui.slides.slide_detect import is_slide_target

    film = sorted(need(KERMANY).glob("*.jpeg"))[0]
    assert not is_slide_target(film)
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((64, SCAN_MIN_PLAIN_SIDE + 8), np.uint8)).save(big)
    assert is_slide_target(big)


def test_a_chest_film_jpeg_opens_in_the_image_viewer(qapp, tmp_path_factory):
    film = sorted(need(KERMANY).glob("*.jpeg"))[0]
    w = open_window(tmp_path_factory, str(film))
    try:
        assert w.doc.volume is not None and w.doc.volume.array.shape[0] == 1
        assert w.slide_page is None or not w.slide_page.isVisible()
    finally:
        w.close()
