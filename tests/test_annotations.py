"""Measurements and annotations (no Qt): polygon/freehand ROI statistics against hand-computed
values, undo/redo history, the per-study store (atomic JSON, schema version, malformed file)."""

import json
import math

import numpy as np
import pytest

from imaging_assist.annotations import AnnotationSet, AnnotationStore
from imaging_assist.measure import Measurement, polygon_area_mm2, polygon_mask, polygon_stats


def test_polygon_stats_hand_computed():
    img = np.tile(np.arange(10, dtype=np.int16), (10, 1))  # value = column
    square = [(1.5, 1.5), (5.5, 1.5), (5.5, 4.5), (1.5, 4.5)]  # pixel centres cols 2..5, rows 2..4
    st = polygon_stats(img, square, (0.5, 2.0))
    assert st.n == 12
    assert st.mean == pytest.approx(3.5)
    # 3 rows of (2, 3, 4, 5): sum of squared deviations 3 * 5 = 15 over n - 1 = 11
    assert st.sd == pytest.approx(math.sqrt(15 / 11))
    assert (st.min, st.max) == (2, 5)
    assert st.area_mm2 == pytest.approx(4 * 0.5 * 3 * 2.0)  # 2 mm x 6 mm
    assert (st.width_mm, st.height_mm) == (pytest.approx(2.0), pytest.approx(6.0))


def test_triangle_mask_and_area():
    # right triangle (0,0) (10,0) (0,10): centres with u + v < 10 inside
    tri = [(-0.01, -0.01), (10, -0.01), (-0.01, 10)]
    mask, (r0, r1, c0, c1) = polygon_mask((20, 20), tri)
    expect = sum(1 for v in range(20) for u in range(20) if u + v < 10 - 0.02)
    assert mask.sum() == expect == 55
    assert polygon_area_mm2([(0, 0), (10, 0), (0, 10)], (1.0, 1.0)) == pytest.approx(50.0)
    assert polygon_area_mm2([(0, 0), (10, 0), (0, 10)], (0.5, 0.25)) == pytest.approx(50.0 * 0.125)


def test_freehand_measurement_units_and_source_note():
    img = np.full((50, 50), -1000, np.int16)
    img[10:30, 10:30] = 40
    circle = [(20 + 8 * math.cos(t), 20 + 8 * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 64, endpoint=False)]
    m = Measurement("freehand", circle, index=0)
    r = m.compute(img, (0.7, 0.7), "HU", spacing_source="PixelSpacing")
    assert r["mean"] == 40 and r["sd"] == 0 and r["n"] > 180
    assert r["area_mm2"] == pytest.approx(math.pi * 64 * 0.49, rel=0.01)
    assert r["text"][0].startswith("Mean 40.0 HU") and "mm²" in r["text"][2]
    assert "(PixelSpacing)" in m.summary()
    # unknown spacing: pixels, and the summary says so
    r = m.compute(img, (0.7, 0.7), "HU", spacing_source="none")
    assert "px²" in r["text"][2] and r["area_mm2"] == pytest.approx(math.pi * 64, rel=0.01)
    assert "(no spacing)" in m.summary()
    r = m.compute(img, (0.2, 0.2), "", spacing_source="ImagerPixelSpacing")
    assert "(ImagerPixelSpacing)" in m.summary()


def test_polygon_on_a_real_ct_slice(ct_volume):
    """A polygon that is an axis-aligned rectangle equals numpy's own slice of the HU values."""
    vol = ct_volume
    k = vol.array.shape[0] // 2
    poly = [(99.5, 119.5), (160.5, 119.5), (160.5, 140.5), (99.5, 140.5)]
    m = Measurement("polygon", poly, index=k)
    r = m.compute_on(vol)
    vals = vol.array[k, 120:141, 100:161].astype(float)
    assert vol.units == "HU" and r["units"] == "HU"
    assert r["n"] == vals.size
    assert r["mean"] == pytest.approx(vals.mean()) and r["sd"] == pytest.approx(vals.std(ddof=1))
    assert (r["min"], r["max"]) == (vals.min(), vals.max())
    sx, sy = vol.spacing[:2]
    assert r["area_mm2"] == pytest.approx(61 * sx * 21 * sy)
    assert r["spacing_source"] == "PixelSpacing"


def test_arrow_and_text_notes():
    a = Measurement("arrow", [(1, 2), (10, 20)], text="fracture?")
    assert a.compute(None, (1, 1))["text"] == ["fracture?"] and a.summary() == "“fracture?”"
    t = Measurement("text", [(5, 5)], text="see prior")
    assert t.complete and t.to_dict()["text"] == "see prior"
    back = Measurement.from_dict(t.to_dict())
    assert (back.kind, back.points, back.text) == ("text", [(5.0, 5.0)], "see prior")
    p = Measurement("polygon", [(0, 0), (1, 0)], closed=False)
    assert not p.complete
    with pytest.raises(ValueError):
        Measurement("ruler", [(0, float("nan")), (1, 1)])


def test_undo_redo_add_delete_edit_clear():
    changes = []
    s = AnnotationSet(on_change=changes.append)
    a = s.add(Measurement("ruler", [(0, 0), (10, 0)]))
    b = s.add(Measurement("text", [(3, 3)], text="one"))
    s.remove(a)
    assert s.items == [b]
    assert s.undo() is a and s.items == [a, b]  # the example: delete, Ctrl+Z restores it
    assert s.redo() is None and s.items == [b]
    s.undo()
    before = a.state()
    a.points[1] = (20.0, 0.0)
    assert s.edit(a, before)
    assert not s.edit(a, a.state())  # nothing changed: nothing recorded
    s.set_text(b, "two")
    s.undo()
    assert b.text == "one"
    s.undo()
    assert a.points[1] == (10.0, 0.0)
    s.redo()
    assert a.points[1] == (20.0, 0.0)
    s.clear()
    assert s.items == [] and s.undo_label() == "clear all"
    s.undo()
    assert s.items == [a, b]
    # a new change drops the redo branch
    s.undo()
    assert s.can_redo
    s.add(Measurement("arrow", [(0, 0), (1, 1)]))
    assert not s.can_redo
    while s.can_undo:
        s.undo()
    assert s.items == [] and len(changes) > 10


def test_set_works_on_a_list_it_does_not_own():
    owned = []
    s = AnnotationSet(owned)
    m = s.add(Measurement("ruler", [(0, 0), (1, 1)]))
    assert owned == [m]
    s.undo()
    assert owned == []


def _items():
    return [Measurement("polygon", [(0, 0), (10, 0), (10, 10)], index=2),
            Measurement("text", [(4, 4)], index=3, text="note ✓"),
            Measurement("arrow", [(1, 1), (8, 8)], axis=1, index=5)]


def test_store_round_trip_keeps_other_series(tmp_path):
    st = AnnotationStore(tmp_path)
    items = _items()
    items[0].compute(np.ones((20, 20)), (1, 1), "HU", spacing_source="PixelSpacing")
    path, w = st.save("1.2.3", "1.2.3.4", items)
    assert w == [] and path.parent == tmp_path and path.name.startswith("study-")
    st.save("1.2.3", "1.2.3.5", [Measurement("ruler", [(0, 0), (1, 0)])])
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and doc["study_instance_uid"] == "1.2.3" and len(doc["series"]) == 2
    assert doc["series"]["1.2.3.4"]["items"][0]["values"]["area_mm2"] == pytest.approx(50.0)
    back, w = st.load("1.2.3", "1.2.3.4", shape=(10, 20, 20))
    assert w == []
    assert [(m.kind, m.axis, m.index, m.points, m.text) for m in back] == \
        [(m.kind, m.axis, m.index, m.points, m.text) for m in items]
    assert st.load("1.2.3", "9.9")[0] == []
    # an empty series removes its section, the other stays
    st.save("1.2.3", "1.2.3.4", [])
    assert list(json.loads(path.read_text())["series"]) == ["1.2.3.5"]
    assert not list(tmp_path.glob(".tmp-*"))  # atomic write leaves no temporary file


def test_store_out_of_range_items_stay_in_the_file(tmp_path):
    st = AnnotationStore(tmp_path)
    st.save("7.7", "7.7.1", _items())
    back, w = st.load("7.7", "7.7.1", shape=(3, 5, 20))  # slice 3 and axis-1 slice 5 do not exist
    assert [m.kind for m in back] == ["polygon"] and len(w) == 1 and "stay in the file" in w[0]
    assert len(json.loads(st.path_for("7.7").read_text())["series"]["7.7.1"]["items"]) == 3


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"schema": "imaging-assist-annotations"}',
                                     b"\xff\xfe\x00"])
def test_malformed_file_is_one_warning_and_kept(tmp_path, content):
    st = AnnotationStore(tmp_path)
    p = st.path_for("5.5")
    p.write_bytes(content)
    items, w = st.load("5.5", "5.5.1")
    assert items == [] and len(w) == 1 and "malformed" in w[0]
    kept = list(tmp_path.glob("*.malformed-*.json"))
    assert len(kept) == 1 and kept[0].read_bytes() == content  # nothing lost
    path, w = st.save("5.5", "5.5.1", _items()[:1])
    assert w == [] and st.load("5.5", "5.5.1")[0][0].kind == "polygon"


def test_newer_schema_is_not_overwritten(tmp_path):
    st = AnnotationStore(tmp_path)
    p = st.path_for("6.6")
    body = json.dumps({"schema": "imaging-assist-annotations", "version": 99, "study_instance_uid": "6.6",
                       "series": {}})
    p.write_text(body)
    items, w = st.load("6.6", "6.6.1")
    assert items == [] and "newer version" in w[0]
    path, w = st.save("6.6", "6.6.1", _items())
    assert path is None and "not overwritten" in w[-1] and p.read_text() == body


def test_store_defaults_to_the_user_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "d"))
    st = AnnotationStore()
    path, _ = st.save("1.1", "1.1.1", _items()[:1])
    assert path.is_relative_to(tmp_path / "d")
