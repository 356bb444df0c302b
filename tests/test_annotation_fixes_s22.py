"""Saved measurements stay on the image they were drawn on (SOP Instance UID and frame), the
same series in two viewports is one set of measurements, and Del acts on the active viewport."""

import json
import os
import shutil

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402

from _qt import open_window, pump_until  # noqa: E402
from conftest import SHARED, need  # noqa: E402
from test_ui_annotations import drag, sp, store  # noqa: E402,F401
from imaging_assist.annotations import AnnotationStore  # noqa: E402
from imaging_assist.measure import Measurement  # noqa: E402

SLAB = SHARED / "ct" / "lidc_idri_0001_slab"  # 16 CT slices, 2.5 mm apart
K = 8  # image 9


def _copy_slab(dst):
    dst.mkdir(parents=True)
    for f in sorted(need(SLAB).glob("*.dcm")):
        shutil.copy(f, dst / f.name)
    return dst


def _open(folder):
    from imaging_assist.dicom import load_series, scan
    s = scan(str(folder)).image_series()[0]
    return s, load_series(s)


def _sop(vol, k):
    return vol.headers[k].get("SOPInstanceUID")


@pytest.fixture
def slab(tmp_path):
    """A copy of the slab, an ellipse on image 9 saved as the viewer saves it."""
    folder = _copy_slab(tmp_path / "series")
    s, vol = _open(folder)
    m = Measurement("ellipse", [(300, 280), (360, 330)], 0, K)
    m.compute_on(vol)
    st = AnnotationStore(tmp_path / "annotations")
    path, w = st.save(s.study_uid, s.key, [m], extra={"shape": list(vol.array.shape[:3])}, volume=vol)
    assert path is not None and w == []
    return folder, st, s, vol, m


# ------------------------------------------------------------------ 1. the image, not the slice number
def test_a_saved_roi_comes_back_on_its_image_when_a_lower_slice_is_removed(slab):
    folder, st, s, vol, m = slab
    item = json.loads(st.path_for(s.study_uid).read_text())["series"][s.key]["items"][0]
    assert item["sop_instance_uid"] == _sop(vol, K) and item["frame"] == 1
    assert item["position"] == pytest.approx(float(vol.slice_positions[K]))
    os.remove(vol.headers[0].path)  # the lowest slice is gone: image 9 is now image 8
    s2, vol2 = _open(folder)
    (back,), w = st.load(s2.study_uid, s2.key, volume=vol2)
    assert w == [] and back.index == K - 1 and _sop(vol2, back.index) == _sop(vol, K)
    back.compute_on(vol2)
    assert back.result["mean"] == pytest.approx(m.result["mean"])
    # saved again from there: it names the same image, at its new slice number
    st.save(s2.study_uid, s2.key, [back], volume=vol2)
    item = json.loads(st.path_for(s.study_uid).read_text())["series"][s.key]["items"][0]
    assert item["index"] == K - 1 and item["sop_instance_uid"] == _sop(vol, K)


def test_an_roi_whose_image_is_gone_is_a_warning_and_stays_in_the_file(slab):
    folder, st, s, vol, m = slab
    gone = folder.parent / "gone.dcm"  # out of the folder
    shutil.move(vol.headers[K].path, gone)  # the image drawn on is removed
    s2, vol2 = _open(folder)
    items, w = st.load(s2.study_uid, s2.key, volume=vol2)
    assert items == [] and len(w) == 1 and "no longer holds" in w[0] and "image 9" in w[0]
    assert f"{float(vol.slice_positions[K]):g} mm" in w[0] and "stay in the file" in w[0]
    # the reader draws something else: the ROI of the missing image is kept, not overwritten
    st.save(s2.study_uid, s2.key, [Measurement("ruler", [(10, 10), (50, 10)], 0, 3)], volume=vol2)
    saved = json.loads(st.path_for(s.study_uid).read_text())["series"][s.key]["items"]
    assert sorted(d["kind"] for d in saved) == ["ellipse", "ruler"]
    shutil.move(gone, vol.headers[K].path)  # the image is back: so is the ROI, on it
    s3, vol3 = _open(folder)
    items, w = st.load(s3.study_uid, s3.key, volume=vol3)
    assert w == [] and {(x.kind, x.index) for x in items} == {("ellipse", K), ("ruler", 3)}


def test_the_command_line_lists_the_roi_on_its_own_image(slab, monkeypatch, capsys):
    from imaging_assist.cli.main import main

    folder, st, s, vol, m = slab
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(st.root.parent))
    assert st.root == st.root.parent / "annotations"
    os.remove(vol.headers[0].path)
    assert main(["annotations", str(folder), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["warnings"] == [] and len(got["items"]) == 1
    item = got["items"][0]  # image 9 is image 8 now; its mean is the one measured on it
    assert item["image"] == K and item["index"] == K - 1
    assert any(f"{m.result['mean']:.1f}" in v for v in item["values"]), item["values"]


def test_a_file_of_the_old_format_loads_only_while_the_series_keeps_its_shape(tmp_path):
    st = AnnotationStore(tmp_path)
    m = Measurement("ellipse", [(30, 30), (60, 60)], 0, K)
    st.save("1.2", "1.2.3", [m], extra={"shape": [16, 512, 512]})  # as the viewer saved it: no UID
    assert "sop_instance_uid" not in json.loads(st.path_for("1.2").read_text())["series"]["1.2.3"]["items"][0]
    (back,), w = st.load("1.2", "1.2.3", shape=(16, 512, 512))
    assert w == [] and back.index == K
    items, w = st.load("1.2", "1.2.3", shape=(15, 512, 512))  # a slice fewer: no guessing
    assert items == [] and len(w) == 1 and "16×512×512" in w[0] and "15×512×512" in w[0]
    # saved from the changed series, the old item keeps the shape it was drawn on
    st.save("1.2", "1.2.3", [], extra={"shape": [15, 512, 512]})
    st.save("1.2", "1.2.3", [Measurement("ruler", [(1, 1), (9, 9)])], extra={"shape": [15, 512, 512]})
    assert st.load("1.2", "1.2.3", shape=(15, 512, 512))[0][0].kind == "ruler"
    assert [x.kind for x in st.load("1.2", "1.2.3", shape=(16, 512, 512))[0]] == ["ellipse"]


def test_a_reformatted_plane_item_warns_when_the_series_images_changed(slab):
    folder, st, s, vol, m = slab
    cor = Measurement("ruler", [(100, 2), (300, 12)], 1, 256)
    st.save(s.study_uid, s.key, [m, cor], volume=vol)
    item = json.loads(st.path_for(s.study_uid).read_text())["series"][s.key]["items"][1]
    assert item["shape"] == [16, 512, 512] and len(item["images"]) == 32
    assert len(st.load(s.study_uid, s.key, volume=vol)[0]) == 2
    os.remove(vol.headers[0].path)
    s2, vol2 = _open(folder)
    items, w = st.load(s2.study_uid, s2.key, volume=vol2)
    assert [(x.kind, x.index) for x in items] == [("ellipse", K - 1)]
    assert len(w) == 1 and "other images" in w[0] and "16×512×512" in w[0] and "15×512×512" in w[0]


def test_the_viewer_saves_the_image_and_reopens_the_roi_on_it(qapp, tmp_path, tmp_path_factory, monkeypatch):
    from imaging_assist_ui.radiology.annotation_tools import AnnotationController, annotations_for

    st = AnnotationStore(tmp_path / "annotations")
    monkeypatch.setattr(AnnotationController, "store", st)
    folder = _copy_slab(tmp_path / "series")
    w = open_window(tmp_path_factory, str(folder))
    try:
        vol = w.doc.volume
        sop = _sop(vol, K)
        mean = annotations_for(w.doc).add(Measurement("ellipse", [(300, 280), (360, 330)], 0, K)).result["mean"]
        item = json.loads(st.path_for(w.doc.series.study_uid).read_text())["series"][w.doc.series.key]["items"][0]
        assert item["sop_instance_uid"] == sop
        os.remove(vol.headers[0].path)
        w.open_path(str(folder))
        assert pump_until(lambda: w.load_state == "done" and w.doc.volume is not vol
                          and len(w.doc.measurements) == 1, 30), w.last_error
        (back,) = w.doc.measurements
        assert back.index == K - 1 and _sop(w.doc.volume, K - 1) == sop
        assert back.result["mean"] == pytest.approx(mean)
    finally:
        w.close()


# ------------------------------------------------------------------ 2. and 3.: two viewports
@pytest.fixture(scope="module")
def two(qapp, tmp_path_factory, store):  # noqa: F811
    """A window on a folder of two series (the slab, and a copy with its own UIDs)."""
    import pydicom
    from pydicom.uid import generate_uid

    root = tmp_path_factory.mktemp("two")
    _copy_slab(root / "a")
    (root / "b").mkdir()
    ser = generate_uid()
    for f in sorted(need(SLAB).glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = ser, 99, "copy"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(root / "b" / f.name)
    w = open_window(tmp_path_factory, str(root))
    yield w
    w.close()


def _viewport2(w, key):
    from imaging_assist_ui.radiology.annotation_tools import annotations_for

    w.set_layout("1x2")
    cell = w.reading.grid.cells[1]
    assert pump_until(lambda: w.reading.loading_done(), 30)
    if cell.doc.series is None or cell.doc.series.key != key:
        w.reading.load_into(1, key)
    assert pump_until(lambda: cell.doc.volume is not None and cell.doc.series.key == key
                      and w.reading.loading_done(), 30)
    pump_until(lambda: False, 0.3)  # the saved measurements come in after the volume
    for doc in (w.doc, cell.doc):
        annotations_for(doc).clear()
    return cell


def test_one_series_in_two_viewports_is_one_set_of_measurements(two, store):  # noqa: F811
    from imaging_assist_ui.radiology.annotation_tools import annotations_for

    w = two
    cell = _viewport2(w, w.current_key)
    main, other = annotations_for(w.doc), annotations_for(cell.doc)
    main.add(Measurement("ruler", [(100, 100), (200, 100)], 0, 5))
    other.add(Measurement("ruler", [(50, 50), (50, 150)], 0, 8))  # drawn in viewport 2
    main.add(Measurement("ellipse", [(200, 200), (260, 240)], 0, 5))
    study, series, stack = main.study_key()
    want = [("ruler", 5), ("ruler", 8), ("ellipse", 5)]
    for doc in (w.doc, cell.doc):
        assert [(m.kind, m.index) for m in doc.measurements] == want
    assert [(m.kind, m.index) for m in store.load(study, series, stack)[0]] == want
    other.undo()  # one history: the last change to the series, made in the other viewport
    assert [(m.kind, m.index) for m in store.load(study, series, stack)[0]] == want[:2]
    assert [(m.kind, m.index) for m in w.doc.measurements] == want[:2]
    # viewport 2 showing another series and back: the same measurements again, nothing doubled
    w.reading.load_into(1, next(s.key for s in w.loading.index.image_series() if s.key != w.current_key))
    assert pump_until(lambda: cell.doc.series.key != w.current_key and w.reading.loading_done(), 30)
    main.remove(w.doc.measurements[0])
    w.reading.load_into(1, w.current_key)
    assert pump_until(lambda: cell.doc.series.key == w.current_key and w.reading.loading_done(), 30)
    assert pump_until(lambda: cell.doc.measurements is w.doc.measurements, 5)
    assert [(m.kind, m.index) for m in cell.doc.measurements] == [("ruler", 8)]
    # the main viewport goes to the other series and back: what the series loader kept for it
    # is older than viewport 2's (the ruler deleted there meanwhile must not come back)
    key_a = w.current_key
    key_b = next(s.key for s in w.loading.index.image_series() if s.key != key_a)
    w.reading.load_into(0, key_b)
    assert pump_until(lambda: w.load_state == "done" and w.doc.series.key == key_b, 30)
    other.remove(cell.doc.measurements[0])
    w.reading.load_into(0, key_a)
    assert pump_until(lambda: w.load_state == "done" and w.doc.series.key == key_a, 30)
    assert pump_until(lambda: cell.doc.measurements is w.doc.measurements, 5)
    assert w.doc.measurements == [] and store.load(study, series, stack)[0] == []


def test_delete_acts_on_the_active_viewports_selection(two, store):  # noqa: F811
    w = two
    key_b = next(s.key for s in w.loading.index.image_series() if s.key != w.current_key)
    cell = _viewport2(w, key_b)
    v1, v2 = w.reading.grid.cells[0].view, cell.view
    d1, d2 = v1.doc, v2.doc
    w.set_tool("ruler")
    drag(v1, sp(v1, 100, 300), sp(v1, 300, 300))
    drag(v2, sp(v2, 100, 100), sp(v2, 100, 250))
    w.set_tool("navigate")
    QTest.mouseClick(v2, Qt.LeftButton, Qt.NoModifier, sp(v2, 100, 175))  # select viewport 2's ruler
    assert len(d1.measurements) == len(d2.measurements) == 1 and d2.selected is d2.measurements[0]
    assert d1.selected is d1.measurements[0] and w.active_view() is v2
    r1, r2 = d1.measurements[0], d2.measurements[0]
    QTest.keyClick(v2, Qt.Key_Delete)
    assert d1.measurements == [r1] and d2.measurements == []
    QTest.keyClick(v2, Qt.Key_Z, Qt.ControlModifier)
    assert d1.measurements == [r1] and d2.measurements == [r2]
    # from the Measurements list (the main viewport's), Del deletes what is selected there
    w.measure_dock.show()
    w.activateWindow()
    w.measure_panel.tree.setFocus()
    assert pump_until(lambda: w.measure_panel.tree.hasFocus(), 5)
    d1.select(r1)
    w.a_delete.trigger()
    assert d1.measurements == [] and d2.measurements == [r2]
    w.set_layout("single")
