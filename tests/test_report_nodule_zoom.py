"""The PDF report's nodule view: the slice with the overlay (where it is) beside the nodule
zoomed to a square field in mm with its outline, its long and short axis drawn where they
were measured (the calipers of the table's "Long x short" column) and a 10 mm bar."""

import warnings

import numpy as np
import pytest
from pydicom.uid import generate_uid

from _synth import write_ct_series

from imaging_assist.dicom import load_series, scan
from imaging_assist.export.report_pdf import ZOOM_PX, item_views

YELLOW = np.array([255, 214, 0])


@pytest.fixture(scope="module")
def vol(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoom")
    # anisotropic pixels: rows 0.5 mm apart, columns 0.7 mm apart
    write_ct_series(d / "ct", [(0.0, 0.0, 2.0 * k) for k in range(3)], rows=120, cols=100, spacing=(0.5, 0.7),
                    extra={"FrameOfReferenceUID": generate_uid()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_series(scan(str(d / "ct")).image_series()[0])


def _item(vol, ends_k=1):
    lm = np.zeros(vol.array.shape, np.uint8)
    jj, ii = np.mgrid[:120, :100]
    lm[1][((ii - 50) / 10.5) ** 2 + ((jj - 60) / 8.5) ** 2 <= 1] = 1  # 21 px wide, 17 px high
    long_ends = [vol.index_to_lps(40, 60, ends_k).tolist(), vol.index_to_lps(60, 60, ends_k).tolist()]
    short_ends = [vol.index_to_lps(50, 52, ends_k).tolist(), vol.index_to_lps(50, 68, ends_k).tolist()]
    nd = {"id": "N1", "found": True, "label_value": 1, "key_slice": 1, "long_axis_mm": 20 * 0.7,
          "short_axis_mm": 16 * 0.5,
          "measurements": {"largest_slice": 1, "long_axis_ends_lps": long_ends, "short_axis_ends_lps": short_ends}}
    return {"task": "nodule", "labels": {"0": "background", "1": "nodule N1"}, "nodules": [nd]}, lm


class _Result:
    def __init__(self, lm):
        self.label_map = lm
        self.heatmaps = []


def test_zoomed_nodule_has_its_calipers_where_they_were_measured(vol):
    item, lm = _item(vol)
    (v,) = item_views(item, vol, result=_Result(lm))
    assert v["title"] == "Nodule N1, slice 2 of 3"
    assert v["captions"] == ["with the overlay", "zoomed to 40 mm: outline, long and short axis"]
    z = v["overlay"]
    assert z.shape == (ZOOM_PX, ZOOM_PX, 3) and v["overlay_aspect"] == 1.0
    assert v["plain"].shape[:2] == (120, 100)  # the whole slice, with the overlay
    yellow = np.all(np.abs(z.astype(int) - YELLOW) <= 2, axis=2)
    ys, xs = np.nonzero(yellow)
    # 40 mm field: 8 screen px per mm; the long axis 14 mm wide, the short axis 8 mm high,
    # crossing at the nodule's centre (the field's centre)
    px_mm = ZOOM_PX / 40.0
    row = yellow[ZOOM_PX // 2 - 3:ZOOM_PX // 2 + 4].any(axis=0)
    width = np.flatnonzero(row)
    assert width[-1] - width[0] == pytest.approx(14 * px_mm, abs=4)
    col = yellow[:, ZOOM_PX // 2 - 3:ZOOM_PX // 2 + 4].any(axis=1)
    height = np.flatnonzero(col)
    assert height[-1] - height[0] == pytest.approx(8 * px_mm, abs=4)
    assert abs(xs.mean() - ZOOM_PX / 2) < 6 and abs(ys.mean() - ZOOM_PX / 2) < 6
    # the outline in the label's colour, around the lines
    from imaging_assist.colormaps import label_color
    red = np.all(z == np.array(label_color(1)), axis=2)
    ry, rx = np.nonzero(red)
    assert (rx.max() - rx.min()) == pytest.approx(21 * 0.7 * px_mm, abs=8)
    assert (ry.max() - ry.min()) == pytest.approx(17 * 0.5 * px_mm, abs=8)


def test_ends_off_the_slice_give_no_line(vol):
    item, lm = _item(vol, ends_k=2)  # the ends say another slice: no line rather than a wrong one
    (v,) = item_views(item, vol, result=_Result(lm))
    assert v["captions"][1] == "zoomed to 40 mm: outline"
    assert not np.all(np.abs(v["overlay"].astype(int) - YELLOW) <= 2, axis=2).any()


def test_report_pdf_with_a_nodule_is_written(vol, tmp_path):
    from imaging_assist.export.report_pdf import _Doc, _draw_views  # the drawing path of the report

    item, lm = _item(vol)
    views = item_views(item, vol, result=_Result(lm))
    doc = _Doc("A4", "test")
    doc.pdf.add_page()
    _draw_views(doc, views)
    out = tmp_path / "r.pdf"
    doc.pdf.output(str(out))
    assert out.stat().st_size > 5000
