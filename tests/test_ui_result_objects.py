"""The viewer shows a study's result objects with the series they refer to (issue 13): a SEG as
a label-map layer (one layer per segment when they overlap, said), a Parametric Map as a heat
map, an SR's findings and measurements as a list that jumps to their image; a result that does
not fit is one line, and the series still shows."""

import math
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from _qt import open_window, wait_until
from _synth import write_ct_series
from test_result_objects import _sources, _sr, hd, write_seg

from imaging_assist.dicom import load_series, scan
from imaging_assist.layers import HeatmapLayer, LabelLayer

from pydicom.sr.codedict import codes  # noqa: E402


def _oblique_positions(n=10, step=1.5):
    a = math.radians(20)
    row = (math.cos(a), math.sin(a), 0.0)
    b = 0.3
    col = (-math.sin(a) * math.cos(b), math.cos(a) * math.cos(b), -math.sin(b))  # orthogonal to row
    normal = np.cross(row, col)
    return [tuple(np.array([-20.0, 10.0, 5.0]) + k * step * normal) for k in range(n)], row + col


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    d = tmp_path_factory.mktemp("results_study")
    pos, iop = _oblique_positions()
    write_ct_series(d / "ct", pos, iop=iop, rows=32, cols=24, spacing=(0.8, 0.6),
                    extra={"FrameOfReferenceUID": generate_uid(), "PatientSex": "O",
                           "PatientBirthDate": "", "ReferringPhysicianName": "", "AccessionNumber": ""})
    vol = load_series(scan(str(d / "ct")).image_series()[0])
    assert vol.has_geometry and abs(vol.direction[1, 0]) > 0.3 and abs(vol.direction[2, 1]) > 0.2  # oblique
    src = _sources(vol)
    shape = vol.array.shape
    a = np.zeros(shape, bool)
    b = np.zeros(shape, bool)
    a[2:6, 5:20, 4:12] = True
    b[4:8, 10:25, 8:20] = True  # overlaps a
    c = np.zeros(shape, np.uint8)
    c[1:4, 2:10, 2:10] = 1
    c[6:9, 20:30, 10:20] = 2
    (d / "seg_labels.dcm").write_bytes(write_seg(src, np.stack([c == 1, c == 2], -1), ["liver", "kidney"]))
    (d / "seg_overlap.dcm").write_bytes(write_seg(src, np.stack([a, b], -1), ["a", "b"]))
    bad = pydicom.dcmread(str(d / "seg_labels.dcm"))
    bad.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = [0.5, 0.5]
    bad.SeriesDescription = "wrong spacing"
    bad.SeriesInstanceUID = generate_uid()
    bad.SOPInstanceUID = bad.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    bad.save_as(d / "seg_bad.dcm")
    orphan = pydicom.dcmread(str(d / "seg_labels.dcm"))
    orphan.ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3.999"
    orphan.SeriesDescription = "orphan"
    orphan.SeriesInstanceUID = generate_uid()
    orphan.SOPInstanceUID = orphan.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    orphan.save_as(d / "seg_orphan.dcm")
    heat = np.linspace(0, 1, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    rwvm = hd.pm.RealWorldValueMapping(lut_label="CAM", lut_explanation="cam", unit=codes.UCUM.NoUnits,
                                       value_range=(0.0, 1.0), slope=1.0, intercept=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd.pm.ParametricMap(src, heat, hd.UID(), 301, hd.UID(), 1, "T", "w", "1", "0", False, [rwvm],
                            window_center=0.5, window_width=1.0, series_description="heat").save_as(d / "pm.dcm")
        _sr(vol, src, 2).save_as(d / "sr.dcm")
    return {"dir": d, "vol": vol, "labels": c, "a": a, "b": b, "heat": heat}


@pytest.fixture(scope="module")
def win(tmp_path_factory, study):
    w = open_window(tmp_path_factory, str(study["dir"]))
    assert wait_until(lambda: len(w.doc.layers.layers) >= 4 and w.results.list.count() > 3, 20)
    yield w
    w.close()


def test_seg_and_parametric_map_are_layers_on_the_exact_voxels(win, study):
    layers = {layer.name: layer for layer in win.doc.layers.layers}
    lab = layers["test seg"]
    assert isinstance(lab, LabelLayer)
    assert np.array_equal(np.asarray(lab.array), study["labels"])
    heat = layers["heat"]
    assert isinstance(heat, HeatmapLayer)
    assert np.array_equal(np.asarray(heat.array), study["heat"])


def test_overlapping_segments_are_one_layer_each_and_said(win, study):
    over = [layer for layer in win.doc.layers.layers if layer.name.startswith("test seg: ")]
    assert [layer.name for layer in over] == ["test seg: a", "test seg: b"]
    assert np.array_equal(np.asarray(over[0].array) > 0, study["a"])
    assert np.array_equal(np.asarray(over[1].array) > 0, study["b"])
    assert any("overlap" in m for m in win.results.messages)


def test_a_result_that_does_not_fit_is_one_line_and_the_series_still_shows(win):
    bad = [m for m in win.results.messages if "wrong spacing" in m]
    assert len(bad) == 1 and "pixel spacing" in bad[0] and "\n" not in bad[0]
    assert win.load_state == "done" and win.doc.volume is not None


def test_sr_findings_list_jumps_to_their_image(win):
    from imaging_assist_ui.radiology.result_layers import SLICE_ROLE
    items = [win.results.list.item(i) for i in range(win.results.list.count())]
    area = next(it for it in items if "Area" in it.text())
    length = next(it for it in items if "Length" in it.text())
    assert area.data(SLICE_ROLE) == 2 and length.data(SLICE_ROLE) == 7
    win.doc.set_index(0, 0)
    win.results.list.itemClicked.emit(length)
    assert win.doc.position[0] == 7
    win.results.list.itemActivated.emit(area)
    assert win.doc.position[0] == 2


def test_choosing_a_result_series_shows_it_over_its_series(win, study):
    idx = win.loading.index
    seg = next(s for s in idx.all_series() if s.result_kind == "SEG")
    n_layers = len(win.doc.layers.layers)
    win.browser.seriesChosen.emit(seg.key)
    assert win.current_key == idx.image_series()[0].key
    assert len(win.doc.layers.layers) == n_layers  # already shown: not added twice
    assert "no images to show" not in win.statusBar().currentMessage()


def test_choosing_a_result_whose_series_is_missing_says_so_in_one_line(win):
    idx = win.loading.index
    orphan = next(s for s in idx.all_series() if s.description == "orphan")
    assert orphan.result_kind == "SEG" and any("not in this index" in w for w in orphan.warnings)
    shown = win.current_key
    win.browser.seriesChosen.emit(orphan.key)
    msg = win.results.messages[-1]
    assert "1.2.3.999" in msg and "not in this study" in msg and "\n" not in msg
    assert win.current_key == shown and win.load_state == "done"
    assert not any("orphan" in layer.name for layer in win.doc.layers.layers)


def test_opening_with_a_result_series_chosen_shows_its_source_with_it(tmp_path_factory, study):
    """`view PATH --series SEG_UID`: the series it refers to is loaded, the SEG over it."""
    from imaging_assist_ui.app import make_app
    from imaging_assist_ui.main_window import MainWindow
    from PySide6.QtCore import QSettings
    seg_uid = pydicom.dcmread(str(study["dir"] / "seg_labels.dcm"), stop_before_pixels=True).SeriesInstanceUID
    make_app()
    w = MainWindow(settings=QSettings(str(tmp_path_factory.mktemp("cfg2") / "s.ini"), QSettings.IniFormat))
    try:
        w.show()
        w.open_path(str(study["dir"]), series=seg_uid)
        assert wait_until(lambda: w.load_state == "done"), w.last_error
        assert w.doc.volume is not None and w.doc.volume.array.shape == study["vol"].array.shape
        assert w.current_key == w.loading.index.image_series()[0].key
        assert wait_until(lambda: any(layer.name == "test seg" for layer in w.doc.layers.layers), 10)
    finally:
        w.close()
