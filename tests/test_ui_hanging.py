"""Hanging protocols and remembered positions in the viewer (offscreen).

Studies written from real files: a CR chest of patient P1 now (2024) with two priors (2019 and
2015, the 2019 one a different picture), and 4 CT series built from the CT phantom (study of
patient P2).  Checked: a CR chest study opens 1×2 with the most recent prior beside it (pixels
of both viewports); the CT opens in axial + MPR; saving the current layout as the CT protocol
stores JSON in the config folder and the next opening follows it; protocols are listed and
removed in the dialog; a malformed file is one warning line and the built-in rules; a series
opens where the reader left it (same session and in a new window), a new one on its first
image."""

import json
import os

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QSettings  # noqa: E402
from PySide6.QtGui import QImage  # noqa: E402

from _qt import pump_until  # noqa: E402
from conftest import CT_PHANTOM, DICOM, need  # noqa: E402
from imaging_assist import hanging, positions  # noqa: E402

pytestmark = pytest.mark.gui

CR = DICOM / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm"


def _write(root):
    import pydicom
    from pydicom.uid import generate_uid
    uids = {}
    for name, date, flip in (("now", "20240301", False), ("p2019", "20190101", True), ("p2015", "20150101", False)):
        ds = pydicom.dcmread(need(CR), force=True)
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
            ds.file_meta = pydicom.dataset.FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        ds.PatientID, ds.PatientName, ds.BodyPartExamined, ds.Modality = "P1", "CHEST^ONE", "CHEST", "CR"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
        ds.StudyDate, ds.SeriesDescription = date, f"PA {name}"
        if flip:  # the 2019 prior is another picture: its pixels must show in viewport 2
            ds.PixelData = np.ascontiguousarray(ds.pixel_array[::-1]).tobytes()
        d = root / f"cr_{name}"
        d.mkdir()
        ds.save_as(d / "a.dcm", implicit_vr=True, little_endian=True)
        uids[name] = ds.SeriesInstanceUID
    files = sorted(need(CT_PHANTOM).glob("*.dcm"), key=lambda p: int(p.stem[1:]))[:24]
    study = generate_uid()
    for s in range(4):
        d = root / f"ct{s}"
        d.mkdir()
        series = generate_uid()
        for n, f in enumerate(files[s::4] if s else files):
            ds = pydicom.dcmread(f)
            ds.PatientID, ds.PatientName, ds.BodyPartExamined = "P2", "CT^TWO", "HEAD"
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = s + 1, f"CT {s}", n + 1
            ds.save_as(d / f"{n:03d}.dcm")
        uids[f"ct{s}"] = series
    return uids


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Own config / data folders (protocols, positions) for this module."""
    root = tmp_path_factory.mktemp("hang")
    data = root / "studies"
    data.mkdir()
    uids = _write(data)
    old = {k: os.environ.get(k) for k in ("IMAGING_ASSIST_CONFIG_DIR", "IMAGING_ASSIST_DATA_DIR")}
    os.environ["IMAGING_ASSIST_CONFIG_DIR"] = str(root / "cfg")
    os.environ["IMAGING_ASSIST_DATA_DIR"] = str(root / "data")
    yield root, data, uids
    for k, v in old.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    positions.activate(None)


def _window(tmp_path_factory, path=None, size=(1920, 1080)):
    from imaging_assist_ui.app import make_app
    from imaging_assist_ui.main_window import MainWindow
    make_app()
    w = MainWindow(settings=QSettings(str(tmp_path_factory.mktemp("s") / "s.ini"), QSettings.IniFormat))
    w.resize(*size)
    w.show()
    if path is not None:
        _open(w, path)
    return w


def _open(w, path, series=None):
    w.open_path(str(path), series)
    assert pump_until(lambda: w.load_state == "done" and w.doc.volume is not None and w.doc.volume.loaded.all(), 60), \
        w.last_error
    pump_until(lambda: False, 0.05)  # the protocol is applied on the next turn of the event loop
    assert pump_until(lambda: w.reading.loading_done() and all(
        c.doc.volume is not None and c.doc.volume.loaded.all() for c in w.view_area.grid.visible_cells())
        if w.view_area.layout_mode in ("1x2", "2x2") else True, 60)


def grab(view) -> np.ndarray:
    view.repaint()
    img = view.grab().toImage().convertToFormat(QImage.Format_Grayscale8)
    w, h = img.width(), img.height()
    return np.frombuffer(img.constBits(), np.uint8, count=img.bytesPerLine() * h).reshape(h, img.bytesPerLine())[:, :w].copy()


def test_cr_chest_opens_beside_the_most_recent_prior(env, tmp_path_factory):
    root, data, uids = env
    w = _window(tmp_path_factory)
    try:
        w.open_path([str(data / "cr_now"), str(data / "cr_p2019"), str(data / "cr_p2015")], uids["now"])
        assert pump_until(lambda: w.load_state == "done" and w.doc.volume is not None, 60), w.last_error
        assert pump_until(lambda: w.view_area.layout_mode == "1x2" and w.reading.loading_done()
                          and w.view_area.grid.cells[1].doc.volume is not None, 60)
        g = w.view_area.grid
        assert g.cells[0].doc.series.uid == uids["now"] and g.cells[1].doc.series.uid == uids["p2019"]
        assert w.hanging.applied.protocol.builtin and "prior" in w.hanging.applied.protocol.name
        assert "Hanging protocol: Chest radiograph" in w.statusBar().currentMessage()
        assert w.reading.layout_button.text() == "Layout 1×2"
        assert g.cells[1].link_note == ""  # two radiographs: no "not linked" note over the prior
        w.a_annot.setChecked(False)  # pixels of the images only
        crops = []
        for c in g.visible_cells()[:2]:
            r = c.view.image_rect()
            img = grab(c.view)
            top, bot = int(r.top()) + 2, int(r.bottom()) - 2
            left, right = int(r.left() + r.width() * 0.25), int(r.right() - r.width() * 0.25)
            crops.append(img[top:bot, left:right].astype(float))
        a, b = crops
        assert a.shape == b.shape and a.std() > 5 and b.std() > 5
        # viewport 2 shows the 2019 prior, which is the picture upside down
        same = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        flipped = np.corrcoef(a.ravel(), b[::-1].ravel())[0, 1]
        assert flipped > 0.9 and flipped > same + 0.2, (same, flipped)
        w.a_annot.setChecked(True)
        assert "2019" in " ".join(g.cells[1].view.annotation_text()["tl"])
    finally:
        w.close()


def test_a_folder_of_one_patients_films_opens_on_the_most_recent(env, tmp_path_factory):
    """Opened without a series, the most recent study is the current one and the older its
    prior (the oldest was opened first, by folder order, and the newer hung as its "prior")."""
    root, data, uids = env
    w = _window(tmp_path_factory)
    try:
        w.open_path([str(data / "cr_p2015"), str(data / "cr_p2019")])
        assert pump_until(lambda: w.load_state == "done" and w.doc.volume is not None, 60), w.last_error
        assert pump_until(lambda: w.view_area.layout_mode == "1x2" and w.reading.loading_done()
                          and w.view_area.grid.cells[1].doc.volume is not None, 60)
        g = w.view_area.grid
        assert g.cells[0].doc.series.uid == uids["p2019"] and g.cells[1].doc.series.uid == uids["p2015"]
    finally:
        w.close()


def _ct_window(env, tmp_path_factory):
    """A window on the head CT study's first series (hung by its protocol) and the protocols file."""
    root, data, uids = env
    w = _window(tmp_path_factory, data)
    if w.doc.series.uid != uids["ct0"]:
        _open(w, data, uids["ct0"])
    return w, root / "cfg" / hanging.FILE_NAME, data, uids


def test_ct_axial_mpr_then_a_saved_protocol(env, tmp_path_factory):
    w, cfg, data, uids = _ct_window(env, tmp_path_factory)
    try:
        assert w.doc.series.modality == "CT" and w.view_area.layout_mode == "mpr"  # built-in: axial + MPR
        assert w.a_hang_save.text() == "Save layout as protocol for CT / HEAD"
        # the reader prefers a 2×2 of the study's series for head CT: save it
        w.set_layout("2x2")
        assert pump_until(lambda: w.reading.loading_done() and all(
            c.doc.volume is not None for c in w.view_area.grid.visible_cells()), 60)
        p = w.hanging.save_current()
        assert p.layout == "2x2" and p.viewports == ["current", "next", "next", "next"]
        saved = json.loads(cfg.read_text())
        assert saved["protocols"][0]["modality"] == "CT" and saved["protocols"][0]["body_part"] == "HEAD"
        assert "Saved" in w.statusBar().currentMessage()
        # the dialog lists it above the built-in rules
        dlg = hanging_dialog(w)
        texts = [dlg.list.item(i).text() for i in range(dlg.list.count())]
        assert texts[0].startswith("CT / HEAD: 2×2") and any("[built-in]" in t for t in texts)
        dlg.list.setCurrentRow(len(texts) - 1)
        assert not dlg.remove_btn.isEnabled()  # built-in rules cannot be removed
        dlg.close()
    finally:
        w.close()
    # a new window (new session) opening the study follows the saved protocol
    w = _window(tmp_path_factory)
    try:
        _open(w, data, uids["ct0"])
        assert w.view_area.layout_mode == "2x2"
        shown = [c.doc.series.uid for c in w.view_area.grid.visible_cells()]
        assert shown[0] == uids["ct0"] and sorted(shown[1:]) == sorted([uids["ct1"], uids["ct2"], uids["ct3"]])
        pix = [grab(c.view) for c in w.view_area.grid.visible_cells()]
        assert all(p.std() > 5 for p in pix)  # four images on screen
        dlg = hanging_dialog(w)
        dlg.list.setCurrentRow(0)
        assert dlg.remove_btn.isEnabled() and dlg.remove_selected()
        assert json.loads(cfg.read_text())["protocols"] == []
        dlg.close()
        # the explicit layout of `view --layout` wins over the protocol
        w.open_path(str(data), uids["ct0"], "single")
        assert pump_until(lambda: w.load_state == "done" and w.doc.volume is not None, 60)
        pump_until(lambda: False, 0.1)
        assert w.view_area.layout_mode == "single"
    finally:
        w.close()


def test_a_saved_protocol_brings_back_the_axial_mip(env, tmp_path_factory):
    """The reader hangs head CT as MPR with a 10 mm axial MIP and saves it: the next session
    opens the study that way (coronal and sagittal plain); ``view --slab`` wins over it."""
    from imaging_assist.slab import Slab

    w, cfg, data, uids = _ct_window(env, tmp_path_factory)
    try:
        assert w.view_area.layout_mode == "mpr"
        axial = w.view_area.mpr_views[0]
        w.view_area._on_activated(axial)
        w.slab_controls.thickness.setValue(10.0)
        w.slab_controls.choose("mip")
        p = w.hanging.save_current()
        assert p.slabs == ["mip:10", None, None]
        assert json.loads(cfg.read_text())["protocols"][0]["slabs"] == ["mip:10", None, None]
    finally:
        w.close()
    w = _window(tmp_path_factory)
    try:
        _open(w, data, uids["ct0"])
        views = w.view_area.views()
        assert w.view_area.layout_mode == "mpr" and [v.slab for v in views] == [Slab("mip", 10.0), None, None]
        assert views[0].annotation_text()["bl"][0].startswith("MIP 10 mm: ")
        assert w.slab_controls.combo.currentData() == "mip"  # the active (axial) view's
    finally:
        w.close()
    w = _window(tmp_path_factory)
    try:
        w.slab_controls.apply_all(Slab("minip", 5.0), explicit=True)  # what `view --slab minip:5` does
        _open(w, data, uids["ct0"])
        assert w.view_area.layout_mode == "mpr"
        assert all(v.slab == Slab("minip", 5.0) for v in w.view_area.views())
    finally:
        w.close()
        hanging.ProtocolStore(cfg).remove(("CT", "HEAD"))


def hanging_dialog(w):
    from imaging_assist_ui.radiology.hanging_protocols import ProtocolsDialog
    dlg = ProtocolsDialog(w.hanging.store, w)
    dlg.show()
    return dlg


def test_malformed_protocol_file_one_warning_builtin_rules(env, tmp_path_factory):
    root, data, uids = env
    cfg = root / "cfg" / hanging.FILE_NAME
    cfg.write_text('{"protocols": [{"modality": "CT", "layout": "5x5"}]}')
    w = _window(tmp_path_factory)
    try:
        _open(w, data, uids["ct0"])
        assert w.view_area.layout_mode == "mpr"  # the built-in CT rule
        msg = w.statusBar().currentMessage()
        assert "not usable" in msg and "built-in rules used" in msg and "\n" not in msg
    finally:
        w.close()
        cfg.unlink()


def test_series_opens_where_the_reader_left_it(env, tmp_path_factory, tmp_path, monkeypatch):
    _, data, uids = env
    root = tmp_path  # positions of its own: the tests above moved these series
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(root / "data"))
    w = _window(tmp_path_factory)
    try:
        w.a_hang_on.setChecked(False)
        _open(w, data, uids["ct0"])
        assert w.view_area.layout_mode == "single"  # protocols off
        assert w.doc.position[0] == 0  # first open: InstanceNumber 1
        w.doc.set_index(0, 17)
        w.load_series(uids["ct1"])
        assert pump_until(lambda: w.load_state == "done" and w.doc.series.uid == uids["ct1"], 30)
        assert w.doc.position[0] == 0  # another series, never seen: its first image
        w.load_series(uids["ct0"])  # back to the first series in the same session
        assert pump_until(lambda: w.load_state == "done" and w.doc.series.uid == uids["ct0"], 30)
        assert w.doc.position[0] == 17
        assert "Im 18 / 24" in w.view_area.single.annotation_text()["tr"][-1]
    finally:
        w.close()  # writes the positions
    saved = json.loads((root / "data" / positions.FILE_NAME).read_text())
    assert saved["series"][uids["ct0"]]["index"] == 17
    w = _window(tmp_path_factory)  # the study reopened in a new session
    try:
        w.a_hang_on.setChecked(False)
        _open(w, data, uids["ct0"])
        assert w.doc.position[0] == 17
        w.a_remember.setChecked(False)  # switched off: first image again
        w.load_series(uids["ct2"])
        assert pump_until(lambda: w.load_state == "done" and w.doc.series.uid == uids["ct2"], 30)
        w.load_series(uids["ct0"])
        assert pump_until(lambda: w.load_state == "done" and w.doc.series.uid == uids["ct0"], 30)
        assert w.doc.position[0] == 0
    finally:
        w.a_remember.setChecked(True)
        w.a_hang_on.setChecked(True)
        w.close()


def test_studies_and_ai_models_side_by_side_and_side_bars_collapse(env, tmp_path_factory):
    from PySide6.QtCore import Qt
    root, data, uids = env
    w = _window(tmp_path_factory)
    try:
        _open(w, data, uids["ct0"])
        w.show_model_panel()
        pump_until(lambda: False, 0.1)
        # not two tabs of one dock: both visible at once, on opposite sides
        assert w.browser_dock.isVisible() and w.model_dock.isVisible()
        assert w.model_dock not in w.tabifiedDockWidgets(w.browser_dock)
        assert w.dockWidgetArea(w.browser_dock) == Qt.LeftDockWidgetArea
        assert w.dockWidgetArea(w.model_dock) == Qt.RightDockWidgetArea
        before = w.view_area.width()
        w.a_side_bars.trigger()  # Ctrl+B
        pump_until(lambda: False, 0.1)
        assert not w.browser_dock.isVisible() and not w.model_dock.isVisible()
        assert w.toolbar.isVisible() and w.view_area.width() > before + 500  # the images take the width
        w.a_side_bars.trigger()
        pump_until(lambda: False, 0.1)
        assert w.browser_dock.isVisible() and w.model_dock.isVisible()
    finally:
        w.close()
