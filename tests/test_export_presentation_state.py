"""The viewer's measurements and annotations as a GSPS: dciodvfy 0 errors, and read back by
our own presentation-state reader onto the pixels they were drawn on, with their values."""

import numpy as np
import pydicom
import pytest

from test_annotations_sr import _items
from test_export_dicom import dciodvfy_errors

from imaging_assist.dicom.presentation_state import read_presentation_state
from imaging_assist.export.dicom_common import DicomExportError
from imaging_assist.export.presentation_state import write_presentation_state
from imaging_assist.measure import Measurement


def test_written_gsps_is_valid_and_reads_back_where_it_was_drawn(ct_volume, tmp_path):
    k, items = _items(ct_volume)
    warnings = []
    path = write_presentation_state(ct_volume, items, tmp_path / "gsps.dcm", warnings=warnings)
    assert dciodvfy_errors(path) == []
    assert len(warnings) == 1 and "reformatted plane" in warnings[0]
    ps = read_presentation_state(str(path), ct_volume)
    assert ps.warnings == [] and ps.windows == []  # the images' own window: nothing to offer
    shapes = ps.layer.shapes
    graphics = [s for s in shapes if s.kind == "path"]
    texts = {s.text(): s for s in shapes if s.kind == "text"}
    poly, angle, arrow, ruler, ell, free = graphics  # one annotation per image, in slice order
    assert poly.closed and np.allclose(poly.points, [(k, v, u) for u, v in items[0].points], atol=1e-4)
    assert free.closed and np.allclose(free.points, [(k + 1, v, u) for u, v in items[1].points], atol=1e-4)
    assert not angle.closed and np.allclose(angle.points, [(k, v, u) for u, v in items[2].points], atol=1e-4)
    assert np.allclose(arrow.points[::-1], [(k, v, u) for u, v in items[3].points], atol=1e-4)
    assert np.allclose(ruler.points, [(k, v, u) for u, v in items[5].points], atol=1e-4)
    (u0, v0), (u1, v1) = items[6].points
    assert ell.points[:, 2].min() == pytest.approx(u0) and ell.points[:, 2].max() == pytest.approx(u1)
    # the notes, and every item's values as the viewer labels them
    assert "see prior ✓" in texts and "calcification" in texts
    assert np.allclose(texts["see prior ✓"].points, [(k, 200, 30)], atol=1e-4)
    def label(m):
        return " ".join("; ".join(m.result.get("display_text") or m.result["text"]).split())  # as read: one line

    for m in (items[0], items[1], items[2], items[5], items[6]):
        assert label(m) in texts, m.kind  # e.g. "45.1 mm", "Mean -783.5 HU  SD 464.6; ..."
    ruler_text = texts[label(items[5])]
    assert ruler_text.points[0, 0] == k and ruler_text.points[0, 2] > max(u for u, _ in items[5].points)


def test_nothing_on_the_acquired_images_is_one_line(ct_volume, tmp_path):
    m = Measurement("ruler", [(1, 1), (5, 5)], axis=1, index=3)
    with pytest.raises(DicomExportError) as e:
        write_presentation_state(ct_volume, [m], tmp_path / "x.dcm")
    assert "\n" not in str(e.value) and not (tmp_path / "x.dcm").exists()


def test_a_point_dragged_past_the_edge_is_drawn_on_the_edge(ct_volume, tmp_path):
    m = Measurement("ruler", [(-3.0, 10.0), (600.0, 10.0)], index=5)
    m.compute_on(ct_volume)
    path = write_presentation_state(ct_volume, [m], tmp_path / "edge.dcm")
    (line,) = [s for s in read_presentation_state(str(path), ct_volume).layer.shapes if s.kind == "path"]
    assert line.points[:, 2].min() == pytest.approx(-0.5) and line.points[:, 2].max() == pytest.approx(511.5)
    # the label still gives the whole ruler's length: it says the line is cut
    ds = pydicom.dcmread(str(path))
    texts = [t.UnformattedTextValue for a in ds.GraphicAnnotationSequence for t in a.get("TextObjectSequence", [])]
    assert any("cut at the image edge" in t for t in texts), texts


def test_an_ellipse_past_the_edge_is_its_outline_cut_at_the_edge_not_another_ellipse(ct_volume, tmp_path):
    # an ellipse centred on the first column (radius 30 px): clipping its box would have made
    # an ellipse centred 15 px to the right with its axes swapped
    m = Measurement("ellipse", [(-30.0, 200.0), (30.0, 260.0)], index=5)
    m.compute_on(ct_volume)
    warn: list = []
    path = write_presentation_state(ct_volume, [m], tmp_path / "ell.dcm", warnings=warn)
    ds = pydicom.dcmread(str(path))
    (obj,) = [g for a in ds.GraphicAnnotationSequence for g in a.get("GraphicObjectSequence", [])]
    assert obj.GraphicType == "POLYLINE" and obj.GraphicFilled in ("N", None)
    pts = np.asarray(obj.GraphicData, float).reshape(-1, 2)  # (column, row), PIXEL units, corner at 0
    assert np.allclose(pts[0], pts[-1]) and pts[:, 0].min() == 0.0
    inside = pts[pts[:, 0] > 0.01]
    # the part inside the image lies on the measured ellipse: centre (0.5, 230.5), radii 30
    r = np.hypot((inside[:, 0] - 0.5) / 30.0, (inside[:, 1] - 230.5) / 30.0)
    assert np.allclose(r, 1.0, atol=1e-3), r
    assert any("reaches past the image" in w for w in warn)
    assert not dciodvfy_errors(path)


def test_non_square_pixels_keep_their_aspect_in_the_presentation_state(ct_volume, tmp_path):
    import copy

    vol = copy.copy(ct_volume)
    vol.spacing = (0.8, 0.4, float(ct_volume.spacing[2]))  # columns 0.8 mm apart, rows 0.4 mm
    m = Measurement("ruler", [(100, 100), (200, 100)], index=2)
    path = write_presentation_state(vol, [m], tmp_path / "aspect.dcm")
    da = pydicom.dcmread(str(path)).DisplayedAreaSelectionSequence[0]
    # vertical : horizontal pixel size (PS3.3 C.10.4), as the viewer shows the image
    assert [int(v) for v in da.PresentationPixelAspectRatio] == [1, 2]
    path = write_presentation_state(ct_volume, [m], tmp_path / "square.dcm")
    da = pydicom.dcmread(str(path)).DisplayedAreaSelectionSequence[0]
    assert [int(v) for v in da.PresentationPixelAspectRatio] == [1, 1]


def test_multiframe_sources_without_functional_groups_and_with_per_frame_rescales(tmp_path):
    """An XA cine (multi-frame, no functional groups): written with its identity rescale and,
    having no window of its own, the viewer's automatic window, said; an enhanced MR whose
    frames carry two rescales: one line (a presentation state holds one)."""
    from conftest import DICOM, need
    from imaging_assist.dicom import load_series, scan
    from imaging_assist.display import default_window

    xa = load_series(scan(str(need(DICOM / "xa_multiframe_cine_jpeg_baseline"))).image_series()[0])
    m = Measurement("ruler", [(100, 100), (200, 150)], index=49)
    warn: list = []
    path = write_presentation_state(xa, [m], tmp_path / "xa.dcm", warnings=warn)
    ds = pydicom.dcmread(str(path))
    assert int(ds.GraphicAnnotationSequence[0].ReferencedImageSequence[0].ReferencedFrameNumber) == 50
    assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == 0.0
    voi = ds.SoftcopyVOILUTSequence[0]
    w = default_window(xa)
    assert float(voi.WindowCenter) == pytest.approx(w.center) and float(voi.WindowWidth) == pytest.approx(w.width)
    assert any("no window of its own" in s for s in warn)
    assert not dciodvfy_errors(path)

    mr = load_series(scan(str(need(DICOM / "mr_enhanced_multiframe_philips"))).image_series()[0])
    with pytest.raises(DicomExportError) as e:
        write_presentation_state(mr, [Measurement("ruler", [(10, 10), (30, 10)], index=3)], tmp_path / "mr.dcm")
    assert "different rescales" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "mr.dcm").exists()
