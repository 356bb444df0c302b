"""Annotation tools in the real viewer, offscreen: a polygon drawn with the mouse shows its
area, a deleted measurement comes back with Ctrl+Z, text and arrow notes are drawn, freehand
outlines close on release, and everything is back when the study is opened again."""

import math
import os

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QPoint, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QImage, QMouseEvent  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication, QLineEdit  # noqa: E402

from _qt import open_window, pump_until  # noqa: E402
from conftest import CT_PHANTOM, need  # noqa: E402
from imaging_assist.annotations import AnnotationStore  # noqa: E402
from imaging_assist.measure import polygon_stats  # noqa: E402

pytestmark = pytest.mark.gui

PS = 0.451171875  # the phantom's PixelSpacing
K = 70


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from imaging_assist_ui.radiology.annotation_tools import AnnotationController
    old = AnnotationController.store
    AnnotationController.store = AnnotationStore(tmp_path_factory.mktemp("annotations"))
    yield AnnotationController.store
    AnnotationController.store = old


@pytest.fixture(scope="module")
def win(qapp, tmp_path_factory, store):
    w = open_window(tmp_path_factory, str(need(CT_PHANTOM)))
    yield w
    w.close()


@pytest.fixture
def view(win):
    win.set_layout("single")
    win.set_tool("navigate")
    win.doc.set_index(0, K)
    v = win.view_area.single
    v.setFocus()
    v.repaint()
    return v


def grab(view) -> np.ndarray:
    img = view.grab().toImage().convertToFormat(QImage.Format_RGB888)
    w, h = img.width(), img.height()
    arr = np.frombuffer(img.constBits(), np.uint8, count=img.bytesPerLine() * h).reshape(h, img.bytesPerLine())
    return arr[:, :w * 3].reshape(h, w, 3).copy()


def sp(view, u, v) -> QPoint:
    p = view.uv_to_screen(u, v)
    return QPoint(int(round(p.x())), int(round(p.y())))


def move(view, p: QPoint, buttons=Qt.LeftButton):
    QApplication.sendEvent(view, QMouseEvent(QMouseEvent.MouseMove, QPointF(p), QPointF(p), Qt.NoButton,
                                             buttons, Qt.NoModifier))


def drag(view, a: QPoint, b: QPoint, steps=1):
    QTest.mousePress(view, Qt.LeftButton, Qt.NoModifier, a)
    for i in range(1, steps + 1):
        move(view, QPoint(a.x() + (b.x() - a.x()) * i // steps, a.y() + (b.y() - a.y()) * i // steps))
    QTest.mouseRelease(view, Qt.LeftButton, Qt.NoModifier, b)


def test_polygon_drawn_with_the_mouse_shows_its_area(win, view):
    win.set_tool("polygon")
    corners = [(250, 170), (320, 170), (320, 220), (250, 220)]
    pts = [sp(view, u, v) for u, v in corners]
    uv = [view.screen_to_uv(QPointF(p)) for p in pts]  # (the measurement dock appears after: the view refits)
    for p in pts:
        QTest.mouseClick(view, Qt.LeftButton, Qt.NoModifier, p)
        move(view, p, Qt.NoButton)
    assert view._pending is not None and not win.doc.measurements  # still open
    QTest.mouseDClick(view, Qt.LeftButton, Qt.NoModifier, pts[-1])  # closes it
    assert len(win.doc.measurements) == 1
    m = win.doc.measurements[0]
    assert m.kind == "polygon" and m.closed and len(m.points) == 4
    assert np.allclose(m.points, uv)
    st = polygon_stats(win.doc.volume.array[K], uv, (PS, PS))
    w_px, h_px = uv[1][0] - uv[0][0], uv[2][1] - uv[1][1]
    assert m.result["area_mm2"] == pytest.approx(w_px * h_px * PS * PS, rel=1e-6)
    assert m.result["mean"] == pytest.approx(st.mean) and m.result["units"] == "HU"
    row = win.measure_panel.rows()[-1]
    assert row[0] == "1. Polygon" and f"{m.result['area_mm2']:.0f} mm² (PixelSpacing)" in row[1]
    assert "HU" in row[1]
    # the outline is drawn (selected: amber) and the label says the area
    view.repaint()
    pts = [sp(view, u, v) for u, v in m.points]
    mid = grab(view)[pts[0].y(), (pts[0].x() + pts[1].x()) // 2].astype(int)
    assert mid[0] > 200 and mid[0] - mid[2] > 100
    assert any("Area" in t and "mm²" in t for t in m.result["display_text"])


def test_delete_then_ctrl_z_restores_it(win, view):
    n = len(win.doc.measurements)
    win.set_tool("ruler")
    drag(view, sp(view, 100, 300), sp(view, 200, 300))
    ruler = win.doc.measurements[-1]
    assert ruler.kind == "ruler" and len(win.doc.measurements) == n + 1
    win.doc.select(ruler)
    win.a_delete.trigger()  # Del
    assert ruler not in win.doc.measurements
    QTest.keyClick(view, Qt.Key_Z, Qt.ControlModifier)  # Ctrl+Z
    assert win.doc.measurements[-1] is ruler and ruler.result["length"] == pytest.approx(
        math.dist(*ruler.points) * PS)
    assert [r[0] for r in win.measure_panel.rows()][-1].endswith("Ruler")
    QTest.keyClick(view, Qt.Key_Y, Qt.ControlModifier)  # Ctrl+Y: deleted again
    assert ruler not in win.doc.measurements
    win.a_undo.trigger()
    assert ruler in win.doc.measurements
    # a move is undoable too
    win.set_tool("navigate")
    before = list(ruler.points)
    mid = sp(view, 150, 300)
    drag(view, mid, QPoint(mid.x() + 30, mid.y() + 20))
    assert ruler.points != before
    QTest.keyClick(view, Qt.Key_Z, Qt.ControlModifier | Qt.ShiftModifier)  # nothing to redo: no change
    assert ruler.points != before
    win.a_undo.trigger()
    assert ruler.points == before


def test_text_and_arrow_are_drawn(win, view):
    view.repaint()
    before = grab(view)
    win.set_tool("text")
    p = sp(view, 60, 60)
    QTest.mouseClick(view, Qt.LeftButton, Qt.NoModifier, p)
    ed = view.findChild(QLineEdit, "AnnotationEditor")
    assert ed is not None and ed.isVisible()
    ed.setText("see prior")
    ed.returnPressed.emit()
    t = win.doc.measurements[-1]
    assert t.kind == "text" and t.text == "see prior"
    win.set_tool("arrow")
    drag(view, sp(view, 150, 400), sp(view, 220, 460))
    a = win.doc.measurements[-1]
    assert a.kind == "arrow" and len(a.points) == 2
    view.repaint()
    after = grab(view)
    box = (slice(p.y() - 8, p.y() + 12), slice(p.x(), p.x() + 60))
    assert np.abs(after[box].astype(int) - before[box]).sum() > 1000  # the note is on the image
    tip = sp(view, *a.points[0])
    assert np.abs(after[tip.y() - 3:tip.y() + 4, tip.x() - 3:tip.x() + 4].astype(int)
                  - before[tip.y() - 3:tip.y() + 4, tip.x() - 3:tip.x() + 4]).sum() > 300  # the arrow head
    rows = win.measure_panel.rows()
    assert rows[-2][0].endswith("Text") and rows[-2][1] == "“see prior”" and rows[-1][0].endswith("Arrow")
    # double-click the note to edit it; the edit is undoable
    win.set_tool("navigate")
    QTest.mouseDClick(view, Qt.LeftButton, Qt.NoModifier, QPoint(p.x() + 10, p.y()))
    ed = view.findChild(QLineEdit, "AnnotationEditor")
    ed.setText("see prior CT")
    ed.returnPressed.emit()
    assert t.text == "see prior CT"
    win.a_undo.trigger()
    assert t.text == "see prior"


def test_freehand_closes_on_release(win, view):
    win.set_tool("freehand")
    c = (200, 256)
    pts = [sp(view, c[0] + 25 * math.cos(a), c[1] + 25 * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 40)]
    QTest.mousePress(view, Qt.LeftButton, Qt.NoModifier, pts[0])
    for q in pts[1:]:
        move(view, q)
    QTest.mouseRelease(view, Qt.LeftButton, Qt.NoModifier, pts[-1])
    m = win.doc.measurements[-1]
    assert m.kind == "freehand" and m.closed and len(m.points) > 20
    assert m.result["area_mm2"] == pytest.approx(math.pi * (25 * PS) ** 2, rel=0.05)


def test_reopened_study_has_its_annotations_and_sr_export(win, view, store, tmp_path):
    saved = [(m.kind, m.points, m.text) for m in win.doc.measurements]
    assert len(saved) >= 4
    assert store.path_for(win.doc.study.uid).exists()
    win.close_study()
    assert win.doc.measurements == []
    win.open_path(str(need(CT_PHANTOM)))
    assert pump_until(lambda: win.load_state == "done" and len(win.doc.measurements) == len(saved), 60)
    assert [(m.kind, m.points, m.text) for m in win.doc.measurements] == saved
    poly = win.doc.measurements[0]
    assert pump_until(lambda: poly.result.get("units") == "HU" and poly.result.get("n", 0) > 100, 30)
    # undo history starts empty for the reopened study (nothing to undo into the old one)
    assert not win.a_undo.isEnabled()
    from imaging_assist.export.sr_measurements import read_measurement_sr
    from imaging_assist_ui.radiology.annotation_tools import export_sr
    out, warnings = export_sr(win.doc, tmp_path / "sr.dcm")
    kinds = sorted(g["kind"] for g in read_measurement_sr(out))
    assert kinds == sorted(k for k, _, _ in saved) and warnings == []
    # File → Export measurements as presentation state (GSPS): the same items, as graphics
    from imaging_assist.dicom.presentation_state import read_presentation_state
    assert win.a_export_gsps in win.menuBar().actions()[0].menu().actions()
    out, warnings = export_sr(win.doc, tmp_path / "gsps.dcm", "gsps")
    ps = read_presentation_state(str(out), win.doc.volume)
    assert warnings == [] and ps.layer is not None and len(ps.layer.shapes) >= len(saved)


def test_malformed_saved_file_is_one_warning_and_kept(win, view, store):
    uid = win.doc.study.uid
    path = store.path_for(uid)
    win.close_study()
    path.write_text('{"schema": "imaging-assist-annotations", "version": 1, "series": ')  # cut short
    win.open_path(str(need(CT_PHANTOM)))
    assert pump_until(lambda: win.load_state == "done" and "malformed" in win.banner_text(), 60), win.banner_text()
    assert win.doc.measurements == []
    kept = list(path.parent.glob(path.stem + ".malformed-*.json"))
    assert len(kept) == 1 and kept[0].read_text().endswith('"series": ')  # nothing lost
    # drawing again writes a fresh file beside the kept one
    win.set_tool("text")
    v = win.view_area.single
    QTest.mouseClick(v, Qt.LeftButton, Qt.NoModifier, sp(v, 50, 50))
    v._annotation_editor.setText("again")
    v._annotation_editor.returnPressed.emit()
    assert store.load(uid, win.doc.series.key)[0][0].text == "again"


def test_annotation_tools_share_one_toolbar_button(win, view):
    from PySide6.QtWidgets import QToolButton
    btn = win.findChild(QToolButton, "AnnotateToolButton")
    assert [a.text() for a in btn.menu().actions()] == ["Polygon", "Freehand", "Arrow", "Text"]
    win.tool_actions["freehand"].trigger()  # D
    assert btn.defaultAction() is win.tool_actions["freehand"] and view.tool == "freehand"
    assert btn.isVisibleTo(win) and win.stack_combo is not None
    win.set_tool("navigate")


def test_polygon_on_the_coronal_plane_uses_its_spacing(win, view):
    from imaging_assist.measure import polygon_area_mm2
    assert win.set_layout("mpr") == "mpr"
    ax, co, sa = win.view_area.views()
    co.repaint()
    win.set_tool("polygon")
    uv = [(200, 60), (300, 60), (300, 90), (200, 90)]  # (column, slice) on the coronal plane
    pts = [sp(co, u, v) for u, v in uv]
    drawn = [co.screen_to_uv(QPointF(p)) for p in pts]
    for p in pts:
        QTest.mouseClick(co, Qt.LeftButton, Qt.NoModifier, p)
    QTest.keyClick(co, Qt.Key_Return)  # Enter closes it
    m = win.doc.measurements[-1]
    assert m.kind == "polygon" and m.axis == co.plane.axis == 1 and np.allclose(m.points, drawn)
    sx, sz = co.plane.spacing2d(win.doc.volume.spacing)
    assert sx == pytest.approx(PS) and sz == pytest.approx(1.0)  # not square: the plane's own spacing
    assert m.result["area_mm2"] == pytest.approx(polygon_area_mm2(drawn, (sx, sz)))
    img = co.plane.extract(win.doc.volume.array, m.index)
    assert m.result["mean"] == pytest.approx(polygon_stats(img, drawn, (sx, sz)).mean)
    win.set_layout("single")
    win.set_tool("navigate")


@pytest.mark.parametrize("source,spacing,unit,note", [
    ("none", (0.2, 0.2, 1.0), "px²", "(no pixel spacing)"),
    ("ImagerPixelSpacing", (0.2, 0.2, 1.0), "mm²", "(ImagerPixelSpacing)"),
    ("ImagerPixelSpacing/ERMF", (0.16, 0.16, 1.0), "mm²", "(ImagerPixelSpacing/ERMF)"),
])
def test_polygon_names_where_its_pixel_size_comes_from(qapp, source, spacing, unit, note):
    from imaging_assist.measure import Measurement
    from imaging_assist.volume import Volume
    from imaging_assist_ui.radiology.annotation_tools import compute
    from imaging_assist_ui.radiology.document import ViewerDocument
    doc = ViewerDocument()
    vol = Volume(array=np.full((1, 50, 60), 7, np.int16), spacing=spacing, has_geometry=False,
                 spacing_source=source)
    doc.set_volume(vol)
    m = Measurement("polygon", [(10, 10), (30, 10), (30, 20), (10, 20)])
    r = compute(doc, m)
    area_line = r["display_text"][-1]
    assert unit in area_line and area_line.endswith(note)
    px = 20 * 10
    assert r["area_mm2"] == pytest.approx(px if source == "none" else px * spacing[0] * spacing[1])
    assert r["mean"] == 7


def test_clicking_the_first_corner_closes_a_polygon(win, view):
    n = len(win.doc.measurements)
    win.set_tool("polygon")
    pts = [sp(view, u, v) for u, v in ((60, 300), (120, 300), (90, 350))]
    for p in pts + [QPoint(pts[0].x() + 2, pts[0].y() - 1)]:  # back on the first corner
        move(view, p, Qt.NoButton)
        view.repaint()  # the closing ring is drawn without error
        QTest.mouseClick(view, Qt.LeftButton, Qt.NoModifier, p)
    m = win.doc.measurements[-1]
    assert len(win.doc.measurements) == n + 1 and m.kind == "polygon" and len(m.points) == 3 and m.closed
    assert view._pending is None
    win.set_tool("navigate")


def test_freehand_figure_eight_says_it_crosses_itself(win, view):
    """A freehand outline drawn as a figure eight: the area is that of both lobes (what is
    filled and counted), and the label says the outline crosses itself, under the area line
    that names the pixel size's source."""
    win.set_tool("freehand")
    c = (200, 300)
    uv = [(c[0] + 30 * math.sin(a), c[1] + 15 * math.sin(2 * a)) for a in np.linspace(0, 2 * math.pi, 60)]
    pts = [sp(view, u, v) for u, v in uv]
    QTest.mousePress(view, Qt.LeftButton, Qt.NoModifier, pts[0])
    for q in pts[1:]:
        move(view, q)
    QTest.mouseRelease(view, Qt.LeftButton, Qt.NoModifier, pts[-1])
    m = win.doc.measurements[-1]
    assert m.kind == "freehand" and m.result["crosses_itself"]
    # the lemniscate-like curve's two lobes: 4 * 30 * 15 * 2/3 px² in all (the shoelace formula gave ~0)
    assert m.result["area_mm2"] == pytest.approx(4 * 30 * 15 * 2 / 3 * PS * PS, rel=0.08)
    assert m.result["n"] == pytest.approx(4 * 30 * 15 * 2 / 3, rel=0.15)
    lines = m.result["display_text"]
    assert lines[-2].startswith("Area ") and lines[-2].endswith("(PixelSpacing)"), lines
    assert lines[-1] == "Outline crosses itself: filled parts only", lines
