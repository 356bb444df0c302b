"""The viewer's measurements and annotations as a GSPS: dciodvfy 0 errors, and read back by
our own presentation-state reader onto the pixels they were drawn on, with their values."""

import numpy as np
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
