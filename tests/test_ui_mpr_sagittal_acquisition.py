"""MPR of a series acquired sagittally or coronally.  Its reformats swap the plane's axes, so
the slice comes as a transposed numpy view; the viewer handed that buffer to QImage with
bytesPerLine = 4 and Qt read past its end (the process died with SIGSEGV as soon as the CT
hanging protocol opened MPR).  Every view's image, with a label overlay too, must be the
display table applied to the plane's pixels, row by row."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtGui import QImage  # noqa: E402

from _qt import open_window  # noqa: E402
from _synth import write_ct_series  # noqa: E402
from imaging_assist.layers import LabelLayer  # noqa: E402

SAGITTAL = (0, 1, 0, 0, 0, -1)  # rows go anterior->posterior, columns superior->inferior
CORONAL = (1, 0, 0, 0, 0, -1)


def _words(q: QImage) -> np.ndarray:
    q = q.convertToFormat(QImage.Format_RGB32)
    w, h = q.width(), q.height()
    a = np.frombuffer(q.constBits(), np.uint32, count=q.bytesPerLine() // 4 * h).reshape(h, -1)
    return a[:, :w] & np.uint32(0xFFFFFF)


@pytest.mark.parametrize("iop,axis", [(SAGITTAL, 0), (CORONAL, 1)])
def test_mpr_of_a_sagittal_or_coronal_acquisition(qapp, tmp_path_factory, iop, axis):
    folder = tmp_path_factory.mktemp("acq")
    positions = [[0.0, 0.0, 0.0] for _ in range(9)]
    for k, p in enumerate(positions):
        p[axis] = 2.0 * k
    write_ct_series(folder / "s", positions, iop=iop, rows=20, cols=24)
    w = open_window(tmp_path_factory, str(folder / "s"))
    try:
        assert w.set_layout("mpr") == "mpr"
        views = w.view_area.views()
        assert len(views) == 3
        vol = w.doc.volume
        for v in views:
            v.repaint()
            q, words = v.base_image()
            s = v.plane.extract(vol.array, v.index)
            assert q.bytesPerLine() >= q.width() * 4
            assert (q.height(), q.width()) == s.shape
            want = w.doc.renderer.render32(s, w.doc.window, w.doc.invert) & np.uint32(0xFFFFFF)
            assert np.array_equal(_words(q), want), v.plane.name
        # a label overlay drawn on every plane (its slice is a transposed view as well)
        lab = np.zeros(vol.array.shape, np.uint8)
        lab[:, :5, :7] = 1
        w.doc.layers.add(LabelLayer("mask", lab, {1: "nodule"}))
        for v in views:
            v.repaint()
            comp = v.composite_image()
            assert comp.bytesPerLine() >= comp.width() * 4
            ls = v.plane.extract(lab, v.index)
            got = _words(comp)
            base = _words(v.base_image()[0])
            assert np.array_equal(got[ls == 0], base[ls == 0]), v.plane.name
            if (ls == 1).any():
                assert not np.array_equal(got[ls == 1], base[ls == 1]), v.plane.name
    finally:
        w.close()
