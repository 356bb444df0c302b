"""Rotate and flip a view (View menu, Ctrl+R, Ctrl+Shift+R, H, Shift+H): the pixels move exactly (a bright voxel is
drawn where ``uv_to_screen`` says, in all eight orientations), a flip is a mirror of what is on
the screen whatever the turn, the orientation letters travel with the pixels, clicks and
measurements keep their voxels, the MPR crosshair lines turn with the image, and Reset view
undoes it all."""

import numpy as np
import pytest
from PySide6.QtGui import QColor

from test_ui_annotations import grab
from test_ui_slab import open_slab

from imaging_assist.measure import Measurement
from imaging_assist.volume import Volume, WindowPreset

STATES = [(t, m) for m in (False, True) for t in range(4)]


@pytest.fixture(scope="module")
def win(tmp_path_factory):
    w = open_slab(tmp_path_factory, "single")
    yield w
    w.close()


@pytest.fixture()
def spot(win):
    """A grid viewport showing a 40 x 60 image, black but for one bright voxel at (u, v) = (10, 5)."""
    arr = np.zeros((1, 40, 60), np.int16)
    arr[0, 5, 10] = 1000
    vol = Volume(array=arr, spacing=(0.8, 0.5, 1.0), modality="CT", units="HU",
                 window_presets=[WindowPreset("w", 500, 1000)])
    view = win.view_area.grid.cells[1].view
    view.doc.set_volume(vol)
    view.doc.apply_preset(vol.window_presets[0])
    view.doc.smooth = False
    view.doc.show_annotations = False
    view.resize(600, 500)
    view.fit()
    yield view
    view.set_orientation(0, False)


def _bright_centre(view):
    img = grab(view).astype(int).sum(axis=2)
    ys, xs = np.nonzero(img > 700)
    return xs.mean() + 0.5, ys.mean() + 0.5


@pytest.mark.parametrize("turns,mirror", STATES)
def test_the_bright_voxel_is_drawn_where_the_mapping_says(spot, turns, mirror):
    spot.set_orientation(turns, mirror)
    spot.fit()
    x, y = _bright_centre(spot)
    p = spot.uv_to_screen(10, 5)
    assert abs(x - p.x()) < 1.0 and abs(y - p.y()) < 1.0, (turns, mirror, (x, y), (p.x(), p.y()))
    for u, v in ((0, 0), (59, 39), (10.3, 5.7), (-0.5, 39.5)):  # mapping round trip
        q = spot.screen_to_uv(spot.uv_to_screen(u, v))
        assert np.allclose(q, (u, v), atol=1e-9)
    r = spot.image_rect()  # a quarter turn lays the 48 x 20 mm image on its side
    w_mm, h_mm = (20.0, 48.0) if turns % 2 else (48.0, 20.0)
    assert abs(r.width() / r.height() - w_mm / h_mm) < 1e-6


def test_flip_mirrors_what_is_on_the_screen_whatever_the_turn(spot):
    spot.set_orientation(0, False)
    spot.rotate(1)
    spot.fit()
    x0, y0 = _bright_centre(spot)
    r = spot.image_rect()
    spot.flip(True)  # left-right as shown
    x1, y1 = _bright_centre(spot)
    assert abs((x0 - r.left()) - (r.right() - x1)) <= 1.5 and abs(y1 - y0) <= 1.5  # a voxel is ~12 px
    spot.flip(True)
    assert (spot.turns, spot.mirror) == (1, False)
    spot.flip(False)  # top-bottom as shown
    x2, y2 = _bright_centre(spot)
    assert abs((y0 - r.top()) - (r.bottom() - y2)) <= 1.5 and abs(x2 - x0) <= 1.5
    spot.set_orientation(1, False)
    for _ in range(3):
        spot.rotate(1)
    assert (spot.turns, spot.mirror) == (0, False)
    spot.rotate(-1)
    assert spot.turns == 3


def test_letters_travel_with_the_pixels_and_the_corner_says_it(win):
    view = win.view_area.single
    win.view_area._on_activated(view)
    view.set_orientation(0, False)
    view.repaint()
    assert view._orientation_labels == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    win.a_rot_cw.trigger()  # Ctrl+R
    view.repaint()
    assert view._orientation_labels == {"top": "R", "right": "A", "bottom": "L", "left": "P"}
    assert "Rotated 90°" in view.annotation_text()["br"]
    win.a_rot_cw.trigger()
    win.a_rot_cw.trigger()
    win.a_rot_cw.trigger()
    win.a_flip_h.trigger()  # H
    view.repaint()
    assert view._orientation_labels == {"left": "L", "right": "R", "top": "A", "bottom": "P"}
    assert "Flipped" in view.annotation_text()["br"]
    win.a_flip_v.trigger()  # Shift+H: now upside down as well
    view.repaint()
    assert view._orientation_labels == {"left": "L", "right": "R", "top": "P", "bottom": "A"}
    assert view.orientation_text() == "Rotated 180°"
    win.a_reset.trigger()
    assert (view.turns, view.mirror) == (0, False) and view.orientation_text() == ""
    view.rotate(1)
    win.doc.volumeChanged.emit()  # another series in the view: shown as stored again
    assert (view.turns, view.mirror) == (0, False)
    # the keys (the cine keeps [ and ] for its rate)
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest
    view.setFocus()
    QTest.keyClick(view, Qt.Key_R, Qt.ControlModifier)
    QTest.keyClick(view, Qt.Key_H)
    assert (view.turns, view.mirror) == (3, True)  # a flip of the turned image: turned back, mirrored
    QTest.keyClick(view, Qt.Key_R, Qt.ControlModifier | Qt.ShiftModifier)
    QTest.keyClick(view, Qt.Key_H, Qt.ShiftModifier)
    assert (view.turns, view.mirror) == (0, False)  # ccw then flip upside down: (2-2, not mirrored)


def test_clicks_and_measurements_keep_their_voxels(win):
    view = win.view_area.single
    win.view_area._on_activated(view)
    win.doc.set_index(0, 8)
    m = Measurement("ruler", [(100.0, 200.0), (160.0, 200.0)], 0, 8)
    win.doc.add_measurement(m)
    length = win.doc.compute_measurement(m)["display_text"]
    for turns, mirror in STATES:
        view.set_orientation(turns, mirror)
        kji = view.point_kji(view.uv_to_screen(120.0, 210.0))
        assert np.allclose(kji, (8, 210.0, 120.0)), (turns, mirror, kji)
        assert m.points == [(100.0, 200.0), (160.0, 200.0)]
        assert win.doc.compute_measurement(m)["display_text"] == length
    view.set_orientation(0, False)
    win.doc.measurements.remove(m)


def test_mpr_crosshair_lines_turn_with_the_image(win):
    from imaging_assist_ui.shared.theme import PLANE_COLORS

    win.set_layout("mpr")
    ax = next(v for v in win.view_area.mpr_views if v.plane.name == "axial")
    win.doc.set_position((8, 300, 200))
    yellow = QColor(PLANE_COLORS["sagittal"])  # the sagittal plane: fixed column i

    def sagittal_line(view):
        img = grab(view).astype(int)
        hit = (abs(img[..., 0] - yellow.red()) < 45) & (abs(img[..., 1] - yellow.green()) < 45) & (
            abs(img[..., 2] - yellow.blue()) < 60)
        cols, rows = hit.sum(axis=0), hit.sum(axis=1)
        return ("vertical", int(np.argmax(cols))) if cols.max() > rows.max() else ("horizontal", int(np.argmax(rows)))

    ax.set_orientation(0, False)
    kind, at = sagittal_line(ax)
    assert kind == "vertical" and abs(at - ax.uv_to_screen(200, 300).x()) <= 2
    ax.set_orientation(1, False)
    kind, at = sagittal_line(ax)
    assert kind == "horizontal" and abs(at - ax.uv_to_screen(200, 300).y()) <= 2
    ax.set_orientation(0, False)
    win.set_layout("single")
