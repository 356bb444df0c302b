"""The real viewer widgets, offscreen: open the CT phantom, scroll, window, measure, overlay.

Assertions are on rendered pixels (grabbed from the widget) and on the values shown.
"""

import math
import os

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QPoint, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QImage  # noqa: E402

from _qt import open_window, wait_until as _wait  # noqa: E402
from conftest import CT_PHANTOM, need  # noqa: E402
from imaging_assist import display  # noqa: E402
from imaging_assist.layers import HeatmapLayer, LabelLayer, Marker, MarkerLayer  # noqa: E402
from imaging_assist.measure import roi_stats  # noqa: E402

pytestmark = pytest.mark.gui

PS = 0.451171875  # the phantom's PixelSpacing


@pytest.fixture(scope="module")
def win(qapp, tmp_path_factory):
    w = open_window(tmp_path_factory, str(need(CT_PHANTOM)))
    assert _wait(lambda: w.first_image_at is not None)
    yield w
    w.close()


@pytest.fixture
def view(win):
    win.set_layout("single")
    win.set_tool("navigate")
    win.doc.layers.clear()
    win.doc.clear_measurements()
    win.reset_view()
    win.doc.set_index(0, 70)
    v = win.view_area.single
    v.repaint()
    return v


def grab(view) -> np.ndarray:
    """The view as painted: (h, w, 3) uint8."""
    img = view.grab().toImage().convertToFormat(QImage.Format_RGB888)
    w, h = img.width(), img.height()
    arr = np.frombuffer(img.constBits(), np.uint8, count=img.bytesPerLine() * h).reshape(h, img.bytesPerLine())
    return arr[:, :w * 3].reshape(h, w, 3).copy()


def screen_px(view, u, v) -> tuple[int, int]:
    p = view.uv_to_screen(u, v)
    return int(round(p.x())), int(round(p.y()))


def pixel(view, u, v) -> np.ndarray:
    x, y = screen_px(view, u, v)
    return grab(view)[y, x].astype(int)


# (column, row) inside the uniform square insert of slice 70 (about 98 HU)
INSERT_UV = (286, 195)


def test_opens_ct_and_shows_annotations(win, view):
    vol = win.doc.volume
    assert vol.shape == (140, 512, 512) and vol.loaded.all()
    ann = view.annotation_text()
    assert ann["tl"][0] == "HEAD"
    assert any("STD BRAIN 1MM" in s for s in ann["tr"])
    assert "Im 71 / 140" in ann["tr"]
    assert any(s.startswith("W 80  L 40") for s in ann["br"])  # the file's window
    assert view.plane.orientation_labels(vol.direction) == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert win.slice_label.text() == "Image 71 / 140"
    # the series is in the browser, with no problems
    assert win.browser.series_keys() == [vol.series_uid]
    assert not win.browser.problem_items


def test_aspect_ratio_from_pixel_spacing(view):
    r = view.image_rect()
    assert r.width() == pytest.approx(r.height(), rel=1e-6)  # 512 x 0.45 both ways
    view.actual_size()
    assert view.zoom_factor() == pytest.approx(1.0)
    assert view.image_rect().width() == pytest.approx(512, abs=0.5)
    view.fit()


def test_scroll_wheel_keys_and_slider(win, view):
    from PySide6.QtTest import QTest
    QTest.keyClick(view, Qt.Key_Down)
    assert win.doc.position[0] == 71
    QTest.keyClick(view, Qt.Key_PageDown)
    assert win.doc.position[0] == 81
    QTest.keyClick(view, Qt.Key_Home)
    assert win.doc.position[0] == 0
    win.slider.setValue(100)
    assert win.doc.position[0] == 100 and view.annotation_text()["tr"][-1] == "Im 101 / 140"
    view.scroll_by(-1)
    assert win.slider.value() == 99
    # the pixels follow the slice: slice 0 and slice 70 differ
    win.doc.set_index(0, 70)
    a = grab(view)
    win.doc.set_index(0, 5)
    assert np.abs(grab(view).astype(int) - a).mean() > 1


def test_window_change_follows_dicom_formula(win, view):
    vol = win.doc.volume
    hu = float(vol.array[70, INSERT_UV[1], INSERT_UV[0]])
    assert 80 < hu < 120
    assert win.apply_preset_name("Bone")  # W 2500 L 480
    view.repaint()
    expected = display.window_to_uint8(np.array([hu]), 480, 2500)[0]
    got = pixel(view, *INSERT_UV)
    assert abs(got[0] - int(expected)) <= 3 and got[0] == got[1] == got[2]
    win.apply_preset_name("Brain")  # W 80 L 40: the insert is white
    view.repaint()
    assert pixel(view, *INSERT_UV)[0] == 255
    win.a_invert.setChecked(True)
    view.repaint()
    assert pixel(view, *INSERT_UV)[0] == 0
    win.a_invert.setChecked(False)


def test_right_drag_changes_window(win, view):
    from PySide6.QtTest import QTest
    win.apply_preset_name("Bone")
    before = pixel(view, *INSERT_UV)[0]
    c = view.rect().center()
    QTest.mousePress(view, Qt.RightButton, Qt.NoModifier, c)
    ev_target = QPoint(c.x() + 120, c.y() + 0)
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtWidgets import QApplication
    move = QMouseEvent(QMouseEvent.MouseMove, QPointF(ev_target), QPointF(ev_target),
                       Qt.NoButton, Qt.RightButton, Qt.NoModifier)
    QApplication.sendEvent(view, move)
    QTest.mouseRelease(view, Qt.RightButton, Qt.NoModifier, ev_target)
    w = win.doc.window
    assert w.width == pytest.approx(2500 * math.exp(120 / 250.0), rel=1e-3)
    assert w.center == pytest.approx(480)
    view.repaint()
    expected = display.window_to_uint8(np.array([float(win.doc.volume.array[70, INSERT_UV[1], INSERT_UV[0]])]),
                                       w.center, w.width)[0]
    after = pixel(view, *INSERT_UV)[0]
    assert after > before and abs(after - int(expected)) <= 3  # wider window: 98 HU < L comes up
    assert any(f"W {w.width:.0f}" in s for s in view.annotation_text()["br"])


def test_ruler_measures_known_distance(win, view):
    from PySide6.QtTest import QTest
    win.set_tool("ruler")
    p0 = QPoint(*screen_px(view, 100, 256))
    p1 = QPoint(*screen_px(view, 200, 256))
    u0, _ = view.screen_to_uv(QPointF(p0))
    u1, _ = view.screen_to_uv(QPointF(p1))
    QTest.mousePress(view, Qt.LeftButton, Qt.NoModifier, p0)
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtWidgets import QApplication
    QApplication.sendEvent(view, QMouseEvent(QMouseEvent.MouseMove, QPointF(p1), QPointF(p1), Qt.NoButton,
                                             Qt.LeftButton, Qt.NoModifier))
    QTest.mouseRelease(view, Qt.LeftButton, Qt.NoModifier, p1)
    assert len(win.doc.measurements) == 1
    m = win.doc.measurements[0]
    expected = (u1 - u0) * PS
    assert m.result["length"] == pytest.approx(expected, abs=1e-6)
    assert abs(m.result["length"] - 100 * PS) < 0.3  # 100 pixels = 45.1 mm
    rows = win.measure_panel.rows()
    assert rows == [("1. Ruler", f"{expected:.1f} mm (PixelSpacing)", "Im 71")]
    # the ruler is drawn: the pixel under its middle has the (selected: amber) colour, not grey
    view.repaint()
    mid = grab(view)[p0.y(), (p0.x() + p1.x()) // 2].astype(int)
    assert mid[0] > 200 and mid[0] - mid[2] > 100
    # drag its end handle 50 pixels further: the length follows
    p2 = QPoint(*screen_px(view, 250, 256))
    win.set_tool("navigate")
    QTest.mousePress(view, Qt.LeftButton, Qt.NoModifier, p1)
    QApplication.sendEvent(view, QMouseEvent(QMouseEvent.MouseMove, QPointF(p2), QPointF(p2), Qt.NoButton,
                                             Qt.LeftButton, Qt.NoModifier))
    QTest.mouseRelease(view, Qt.LeftButton, Qt.NoModifier, p2)
    assert m.result["length"] == pytest.approx((view.screen_to_uv(QPointF(p2))[0] - u0) * PS, abs=1e-6)
    assert abs(m.result["length"] - 150 * PS) < 0.3
    # delete it from the panel
    win.measure_panel.delete_selected()
    assert win.doc.measurements == [] and win.measure_panel.rows() == []


def test_ellipse_roi_statistics_in_hu(win, view):
    from PySide6.QtTest import QTest
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtWidgets import QApplication
    win.set_tool("ellipse")
    p0 = QPoint(*screen_px(view, INSERT_UV[0] - 15, INSERT_UV[1] - 15))
    p1 = QPoint(*screen_px(view, INSERT_UV[0] + 15, INSERT_UV[1] + 15))
    QTest.mousePress(view, Qt.LeftButton, Qt.NoModifier, p0)
    QApplication.sendEvent(view, QMouseEvent(QMouseEvent.MouseMove, QPointF(p1), QPointF(p1), Qt.NoButton,
                                             Qt.LeftButton, Qt.NoModifier))
    QTest.mouseRelease(view, Qt.LeftButton, Qt.NoModifier, p1)
    m = win.doc.measurements[-1]
    img = win.doc.volume.array[70]
    st = roi_stats(img, "ellipse", m.points[0], m.points[1], (PS, PS))
    assert m.result["mean"] == pytest.approx(st.mean)
    assert 80 < m.result["mean"] < 120 and m.result["sd"] < 20  # HU of the insert, not display values
    assert m.result["area_mm2"] == pytest.approx(math.pi * (15 * PS) ** 2, rel=0.1)
    assert m.result["text"][0].startswith(f"Mean {st.mean:.1f} HU")
    assert win.measure_panel.rows()[-1][0].endswith("Ellipse")
    assert win.measure_panel.rows()[-1][1] == f"{st.mean:.1f} ± {st.sd:.1f} HU, {st.area_mm2:.0f} mm² (PixelSpacing)"


def test_angle_tool(win, view):
    from PySide6.QtTest import QTest
    win.set_tool("angle")
    pts = [QPoint(*screen_px(view, u, v)) for u, v in ((300, 100), (200, 100), (200, 0))]
    for p in pts:  # three clicks
        QTest.mouseClick(view, Qt.LeftButton, Qt.NoModifier, p)
    m = win.doc.measurements[-1]
    assert m.kind == "angle" and m.result["angle"] == pytest.approx(90.0, abs=0.5)


def test_overlay_toggle_changes_pixels(win, view):
    vol = win.doc.volume
    lab = np.zeros(vol.shape, np.uint8)
    lab[60:80, 300:420, 200:300] = 1
    layer = win.add_layer(LabelLayer("Test mask", lab, names={1: "box"}, colors={1: (255, 0, 0)}, opacity=0.6))
    view.repaint()
    on = pixel(view, 250, 360)
    assert on[0] > on[1] + 80  # tinted red
    # the layers panel lists it; unticking it hides the overlay
    panel = win.layers_panel
    item = panel.tree.topLevelItem(0)
    assert item.text(0) == "Test mask   (labels)" and item.child(0).text(0) == "box"
    item.setCheckState(0, Qt.Unchecked)
    assert layer.visible is False
    view.repaint()
    off = pixel(view, 250, 360)
    assert off[0] == off[1] == off[2]
    item.setCheckState(0, Qt.Checked)
    layer.mode = "outline"
    view.repaint()
    inner = pixel(view, 250, 360)
    assert inner[0] == inner[1]  # outline mode leaves the inside untinted
    # heat map with legend and a marker
    heat = np.zeros(vol.shape, np.float32)
    heat[70, 100:150, 100:150] = 1.0
    win.add_layer(HeatmapLayer("cam", heat, colormap="hot", opacity=1.0, threshold=0.5, vmin=0.0, vmax=2.0,
                               fade=False))  # a flat tint (the fade: test_ui_heatmap.py)
    win.add_layer(MarkerLayer("findings", [Marker((70, 125, 125), "nodule", score=0.9)]))
    view.repaint()
    hot = pixel(view, 140, 140)
    assert hot[0] > 200 and hot[2] < 100
    win.a_overlays.setChecked(False)  # O: all overlays off
    view.repaint()
    g = pixel(view, 140, 140)
    assert g[0] == g[1] == g[2]
    win.a_overlays.setChecked(True)


def test_hu_under_cursor(win, view):
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtWidgets import QApplication
    x, y = screen_px(view, *INSERT_UV)
    QApplication.sendEvent(view, QMouseEvent(QMouseEvent.MouseMove, QPointF(x, y), QPointF(x, y),
                                             Qt.NoButton, Qt.NoButton, Qt.NoModifier))
    (k, j, i), val = view.value_at(*view.screen_to_uv(QPointF(x, y)))
    assert (k, j, i) == (70, INSERT_UV[1], INSERT_UV[0])
    assert f"value {int(val)} HU" in win.cursor_label.text()
    assert view.annotation_text()["bl"][-1] == f"({i}, {j})  {int(val)} HU"


def test_mpr_views_aspect_orientation_and_crosshair(win, view):
    from PySide6.QtTest import QTest
    assert win.set_layout("mpr") == "mpr"
    ax, co, sa = win.view_area.views()
    for v in (ax, co, sa):
        v.repaint()
    assert [v.plane.name for v in (ax, co, sa)] == ["axial", "coronal", "sagittal"]
    d = win.doc.volume.direction
    assert co.plane.orientation_labels(d) == {"left": "R", "right": "L", "top": "S", "bottom": "I"}
    assert sa.plane.orientation_labels(d) == {"left": "A", "right": "P", "top": "S", "bottom": "I"}
    r = co.image_rect()
    assert r.height() / r.width() == pytest.approx((140 * 1.0) / (512 * PS), rel=1e-6)
    # clicking in the axial view moves the crosshair; the other views follow
    win.set_tool("navigate")
    p = QPoint(*screen_px(ax, 300, 200))
    QTest.mouseClick(ax, Qt.LeftButton, Qt.NoModifier, p)
    k, j, i = win.doc.position
    assert (k, j, i) == (70, 200, 300)
    assert co.index == 200 and sa.index == 300
    # a slice of the coronal view is the volume's row j, flipped so superior is up
    co.repaint()
    s = co.plane.extract(win.doc.volume.array, co.index)
    assert s.shape == (140, 512) and np.array_equal(s[0], win.doc.volume.array[139, 200])
    co.scroll_by(5)
    assert win.doc.position[1] == 205
    win.set_layout("single")


def test_cine_plays_frames(win, view):
    win.fps.setValue(100)
    start = win.doc.position[0]
    win.play_btn.setChecked(True)
    assert _wait(lambda: win.doc.position[0] != start, 5)
    win.play_btn.setChecked(False)
    assert not win.cine_timer.isActive()


def test_enhanced_mr_corner_gives_the_frames_slice_thickness(win):
    """An enhanced MR keeps SliceThickness per frame (Pixel Measures functional group), not in its
    header: the corner shows it as for a classic series (it showed none before)."""
    import pydicom

    from conftest import DICOM

    folder = need(DICOM / "mr_enhanced_siemens_series_jpeg2000_lossless_derived")
    win.open_path(str(folder))
    assert _wait(lambda: win.load_state == "done" and win.doc.volume is not None
                 and win.doc.volume.modality == "MR" and win.doc.volume.loaded.all(), 60), win.last_error
    win.set_layout("single")
    v = win.view_area.single
    ds = pydicom.dcmread(win.doc.volume.source_paths[0], stop_before_pixels=True)
    want = float(ds.PerFrameFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness)
    assert "SliceThickness" not in ds and want == 3.0
    assert f"Thick {want:.2g} mm" in v.annotation_text()["bl"]
    # 3 mm thick, 3.3 mm apart: the gap is said, as for a classic series
    assert any("3 mm thick but 3.30 mm apart" in w for w in win.doc.volume.warnings)
