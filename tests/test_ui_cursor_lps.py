"""The status bar's patient position under the cursor is where that voxel was acquired: on the
real GE series (uneven gaps 1.1-7.4 mm, gantry tilt) it used the mean slice step and was up to
6.8 mm off the file's ImagePositionPatient (an audit of the viewer)."""

import re

import numpy as np
import pydicom

from _qt import open_window, wait_until
from conftest import DICOM, need

GE = DICOM / "ct_gantry_tilt_uneven_spacing_ge_subset"


def test_cursor_lps_is_the_files_position_on_an_uneven_tilted_series(tmp_path_factory):
    w = open_window(tmp_path_factory, str(need(GE)), size=(1400, 900))
    try:
        assert wait_until(lambda: w.doc.volume is not None and w.load_state == "done", 60)
        w.set_layout("single")
        vol = w.doc.volume
        view = w.view_area.all_views()[0]
        ipp = {}
        for p in need(GE).rglob("*"):
            if p.is_file() and pydicom.misc.is_dicom(p):
                ds = pydicom.dcmread(p, stop_before_pixels=True)
                ipp[ds.SOPInstanceUID] = np.array([float(x) for x in ds.ImagePositionPatient])
        for k in (4, 5, 6):
            w.doc.set_index(0, k)
            texts = []
            view.cursorInfo.connect(texts.append)
            shape3 = vol.array.shape[:3]
            u, v, _ = view.plane.from_voxel((k, 0, 0), shape3)
            view._update_cursor(view.uv_to_screen(float(u), float(v)))
            view.cursorInfo.disconnect(texts.append)
            m = re.search(r"LPS \((-?[\d.]+), (-?[\d.]+), (-?[\d.]+)\) mm", texts[-1])
            assert m, texts[-1]
            want = ipp[vol.headers[k].get("SOPInstanceUID")]
            np.testing.assert_allclose([float(x) for x in m.groups()], want, atol=0.06)
    finally:
        w.close()
