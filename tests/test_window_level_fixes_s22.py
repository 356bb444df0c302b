"""Window/level fixes (session 22): windows narrower than 1 on fractional modality values, the
W/L drag on a VOI LUT, the presets of a grid viewport that loads another series, Invert and
Reset view on the active viewport.

One window over a folder of small synthetic series (one patient): an MR of fractions
(RescaleSlope 0.0001, values 0..0.5), a CR shown through a 4096-entry ramp VOI LUT, a CT in HU
with a LUNG file window and an MR with a T2 file window."""

import math
import os

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QPoint, QPointF, Qt  # noqa: E402

from _qt import open_window, pump_until  # noqa: E402
from _synth import write_ct_series  # noqa: E402
from imaging_assist import display  # noqa: E402

pytestmark = pytest.mark.gui


def _series(root, name, stored, modality, n=1, **tags):
    """``n`` slices of ``stored`` (uint16) in folder ``name``; ``tags`` set on every file."""
    paths = write_ct_series(root / name, [(0, 0, z) for z in range(n)], rows=64, cols=64,
                            extra={"SeriesDescription": name.upper()})
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.Modality = modality
        ds.PatientID, ds.PatientName = "WLS22", "Window^Level"
        ds.BitsStored, ds.HighBit = 16, 15
        ds.PixelData = np.ascontiguousarray(stored, np.uint16).tobytes()
        for k, v in tags.items():
            setattr(ds, k, v)
        ds.save_as(p)
    return str(pydicom.dcmread(paths[0]).SeriesInstanceUID)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("wl")
    ramp = lambda top: np.tile(np.linspace(0, top, 64).astype(np.uint16), (64, 1))  # noqa: E731
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 12]
    lut.LUTData = list(range(4096))
    lut["LUTData"].VR = "US"
    lut.LUTExplanation = "RAMP"
    return {
        "fraction": _series(root, "fraction", ramp(5000), "MR", RescaleSlope="0.0001", RescaleIntercept="0"),
        "voilut": _series(root, "voilut", ramp(4095), "CR", RescaleSlope="1", RescaleIntercept="0",
                          BitsStored=12, HighBit=11, VOILUTSequence=Sequence([lut])),
        "ct": _series(root, "ct", ramp(2000), "CT", n=3, WindowCenter="-600", WindowWidth="1500",
                      WindowCenterWidthExplanation="LUNG PRIOR"),
        "mr": _series(root, "mr", ramp(900), "MR", n=3, RescaleSlope="1", RescaleIntercept="0",
                      WindowCenter="300", WindowWidth="500", WindowCenterWidthExplanation="T2 PRIOR"),
        "root": str(root),
    }


@pytest.fixture(scope="module")
def win(qapp, tmp_path_factory, keys):
    w = open_window(tmp_path_factory, keys["root"])
    yield w
    w.close()


def _show(win, key):
    win.set_layout("single")
    if win.doc.series is None or win.doc.series.uid != key:
        win.load_series(key)
    assert pump_until(lambda: win.load_state == "done" and win.doc.series.uid == key
                      and win.doc.volume.loaded.all(), 30)
    v = win.view_area.single
    v.repaint()
    return v


def _rdrag(view, dx, dy):
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication
    c = view.rect().center()
    QTest.mousePress(view, Qt.RightButton, Qt.NoModifier, c)
    t = QPoint(c.x() + dx, c.y() + dy)
    QApplication.sendEvent(view, QMouseEvent(QMouseEvent.MouseMove, QPointF(t), QPointF(t), Qt.NoButton,
                                             Qt.RightButton, Qt.NoModifier))
    QTest.mouseRelease(view, Qt.RightButton, Qt.NoModifier, t)


# ---------------------------------------------------------------- 1: fractional values
def test_window_narrower_than_1_on_fractional_values_is_a_ramp(win, keys):
    v = _show(win, keys["fraction"])
    vol, w = win.doc.volume, win.doc.window
    assert vol.array.dtype.kind == "f" and float(vol.array.max()) == pytest.approx(0.5)
    assert w.source == "auto" and w.width == pytest.approx(0.5) and w.function == "LINEAR_EXACT"
    row = vol.array[0, 32, [0, 16, 32, 48, 63]]
    got = win.doc.renderer.render(vol.array[0], w)[32, [0, 16, 32, 48, 63]]
    assert np.abs(got.astype(int) - [0, 65, 129, 194, 255]).max() <= 2, (row, got)  # was 0/255/255/255/255
    # a file's LINEAR window narrower than 1 is not a threshold at c - 0.5 either
    assert np.abs(display.window_to_uint8(row, 0.25, 0.5, "LINEAR").astype(int) - got).max() <= 1
    assert "W 0.5  L 0.25" in v.annotation_text()["br"][0]  # was "L 0.2"
    # right-drag left narrows the window below 1; down moves the centre by the window's scale
    _rdrag(v, -100, 30)
    w2 = win.doc.window
    assert w2.width == pytest.approx(0.5 * math.exp(-100 / 250.0), rel=1e-3)  # was floored at 1
    assert w2.center == pytest.approx(0.25 + 30 * 0.5 / 300.0, rel=1e-3)  # was 0.25 + 2
    img = win.doc.renderer.render(vol.array[0], w2)
    assert 0 < img[32, 32] < 255 and img[32, 0] == 0 and img[32, 63] == 255
    assert "Custom  W 0.3352 L 0.3" == win.preset_combo.currentText()  # was "W 0 L 0"


# ---------------------------------------------------------------- 2: VOI LUT
def test_right_drag_on_a_voi_lut_starts_from_its_input_range(win, keys):
    v = _show(win, keys["voilut"])
    w = win.doc.window
    assert w.source == "voilut" and math.isnan(w.center)
    win.doc.set_window(float("nan"), float("nan"))  # refused: the current window stays
    assert win.doc.window is w
    _rdrag(v, 0, 30)
    w2 = win.doc.window
    assert w2.width == pytest.approx(4096) and w2.center == pytest.approx(2048 + 30 * 4096 / 300.0)
    img = win.doc.renderer.render(win.doc.volume.array[0], w2)
    assert img[32, 63] > 200 and img.mean() > 50  # was black (a NaN window)
    assert "W 4096" in v.annotation_text()["br"][0]


# ---------------------------------------------------------------- 3, 4: grid viewports
def _combo(win):
    return [win.preset_combo.itemText(i) for i in range(win.preset_combo.count())]


def _load_cell(win, n, key):
    c = win.view_area.grid.cells[n]
    win.reading.load_into(n, key)
    assert pump_until(lambda: c.doc.series is not None and c.doc.series.uid == key
                      and win.reading.loading_done(), 30)
    return c


def test_presets_follow_the_series_the_active_viewport_loads(win, keys):
    _show(win, keys["ct"])
    win.set_layout("1x2")
    g = win.view_area.grid
    c1 = _load_cell(win, 1, keys["ct"])
    g._on_activated(c1.view)
    assert win.presets.doc is c1.doc and any(t.startswith("Lung") for t in _combo(win))
    _load_cell(win, 1, keys["mr"])  # the active viewport loads the MR
    items = _combo(win)
    assert items[0].startswith("T2 PRIOR") and not any("Lung" in t or "LUNG" in t for t in items), items
    assert [a.text() for a in win.presets.menu.actions()] == [items[0]]
    win.preset_combo.activated.emit(0)
    assert c1.doc.window.name == "T2 PRIOR"  # was the CT's LUNG PRIOR on the MR


def test_invert_and_reset_act_on_the_active_viewport(win, keys):
    _show(win, keys["ct"])
    win.set_layout("1x2")
    g = win.view_area.grid
    c1 = _load_cell(win, 1, keys["mr"])
    g._on_activated(c1.view)
    win.a_invert.trigger()  # I
    assert c1.doc.invert and not win.doc.invert
    g._on_activated(g.cells[0].view)
    assert not win.a_invert.isChecked()  # the check mark follows the active viewport
    g._on_activated(c1.view)
    assert win.a_invert.isChecked()
    main_window = win.doc.window
    c1.doc.set_window(123, 45)
    win.reset_view()  # R
    assert c1.doc.window is c1.doc.default_window and not c1.doc.invert and not win.a_invert.isChecked()
    assert win.doc.window is main_window
    win.a_invert.trigger()
    _load_cell(win, 1, keys["ct"])  # another series in the active viewport: shown as stored
    assert not c1.doc.invert and not win.a_invert.isChecked()
    win.set_layout("single")


def test_the_corner_gives_a_large_centre_the_decimals_its_width_needs():
    """W 0.5 on values near 1000 read "L 1000" (whole numbers from 100 up)."""
    from imaging_assist.volume import WindowPreset
    from imaging_assist_ui.radiology.viewer import _fmt_window

    assert _fmt_window(WindowPreset("x", 1000.125, 0.5)) == ("0.5", "1000.125")
    assert _fmt_window(WindowPreset("x", 40.0, 400.0)) == ("400", "40")
    assert _fmt_window(WindowPreset("x", 1040.5, 400.0)) == ("400", "1040")
    assert _fmt_window(WindowPreset("x", 0.25, 0.5)) == ("0.5", "0.25")
