"""Slide viewer fixes, offscreen: an annotation drawn before the slide's identity is known is
kept and saved; a top-tile marker is found in its own layer (hidden or not, whatever other
layer has a marker at the same row and column); a slide run stops with the window (and is
reported once when a slide switch stops it), nothing logged; the last pixel column and row of
the view are painted; clicks outside the slide add nothing."""

import json
import os
import threading
import time

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import imaging_assist_ui  # noqa: E402,F401
from PySide6.QtCore import QPoint, QRect, QSettings, Qt  # noqa: E402
from PySide6.QtGui import QRegion  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402

from _qt import pump_until as wait, settle  # noqa: E402
from conftest import SHARED, need  # noqa: E402

pytestmark = pytest.mark.gui

SVS = SHARED / "pathology" / "wsi_aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    d = tmp_path_factory.mktemp("data")
    mp.setenv("IMAGING_ASSIST_DATA_DIR", str(d))
    mp.delenv("IMAGING_ASSIST_PREDICTION_LOG", raising=False)
    yield d
    from imaging_assist.monitoring import log as plog
    plog.close_all()
    mp.undo()


@pytest.fixture(scope="module")
def win(qapp, data_dir, tmp_path_factory):
    from imaging_assist_ui.app import make_app
    from imaging_assist_ui.main_window import MainWindow
    make_app()
    w = MainWindow(settings=QSettings(str(tmp_path_factory.mktemp("cfg") / "s.ini"), QSettings.IniFormat))
    w.resize(1600, 1000)
    w.show()
    w.open_path(str(need(SVS)))
    assert wait(lambda: w.load_state == "done" and w.slide_page is not None and w.slide_page.tools.key, 60), \
        w.last_error
    yield w
    w.close()


from test_ui_slide_tools import _panel_ready  # noqa: E402 - the model panel shown, its catalogue read


def _slow_model(monkeypatch):
    """Each batch of the slide model takes 0.3 s more: a run is surely still going when the test acts."""
    from imaging_assist_ui.slides import slide_ai
    real = slide_ai._CancelGuard.__call__

    def slow(self, x):
        if not self.job.cancelled():
            time.sleep(0.3)
        return real(self, x)
    monkeypatch.setattr(slide_ai._CancelGuard, "__call__", slow)


def _log_rows():
    from imaging_assist.monitoring import log as plog
    return plog.open_log().query("SELECT kind FROM runs")


# --------------------------------------------------------------------------- 1: early annotations
def test_annotations_drawn_before_the_identity_arrives_are_kept_and_saved(qapp, tmp_path, monkeypatch):
    import imaging_assist.slides.annotations as ann
    from imaging_assist.layers import LayerStack
    from imaging_assist_ui.app import make_app
    from imaging_assist_ui.slides.slide_page import SlidePage

    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path))
    key = ann.slide_key(need(SVS))
    saved = [ann.Annotation("rectangle", [(100, 100), (400, 100), (400, 300), (100, 300)]),
             ann.Annotation("points", [(50.0, 60.0), (70.0, 80.0)], "Tumor")]
    ann.save_for_slide(key, saved)
    go = threading.Event()
    real = ann.slide_key

    def held_key(path):  # a slow share: the identity comes only after the user has drawn
        go.wait(20)
        return real(path)
    monkeypatch.setattr(ann, "slide_key", held_key)

    make_app()
    page = SlidePage(layers=LayerStack())
    page.resize(1200, 800)
    page.show()
    try:
        page.open(str(SVS))
        assert wait(lambda: page.slide is not None, 30)
        settle(page.view)
        v, tools = page.view, page.tools
        tools.current_class = "Tumor"
        page.tool_actions["points"].trigger()
        QTest.mouseClick(v, Qt.LeftButton, Qt.NoModifier, v.slide_to_screen(1000, 1200).toPoint())
        page.tool_actions["ruler"].trigger()
        a, b = v.slide_to_screen(800, 1000).toPoint(), v.slide_to_screen(1600, 2000).toPoint()
        QTest.mousePress(v, Qt.LeftButton, Qt.NoModifier, a)
        QTest.mouseMove(v, b)
        QTest.mouseRelease(v, Qt.LeftButton, Qt.NoModifier, b)
        assert tools.key is None and [x.kind for x in tools.annotations] == ["points", "ruler"]
        go.set()
        assert wait(lambda: tools.key is not None, 30)
        kinds = sorted(x.kind for x in tools.annotations)
        assert kinds == ["points", "rectangle", "ruler"], tools.annotations
        assert tools.counts() == {"Tumor": 3}
        assert "added to its saved annotations" in page.tissue_status.text()
        back, _ = ann.load_for_slide(key)
        assert sorted(x.kind for x in back) == kinds
        pts = next(x for x in back if x.kind == "points").points
        assert len(pts) == 3 and abs(pts[-1][0] - 1000) < 2 and abs(pts[-1][1] - 1200) < 2
    finally:
        go.set()
        page.close_slide()
        page.close()


# --------------------------------------------------------------------------- 2: marker jumps
def test_a_marker_double_clicked_in_overlays_is_centred_from_its_own_layer(win):
    from imaging_assist.layers import MarkerLayer
    from imaging_assist_ui.radiology.layers_panel import CHILD_ROLE
    from imaging_assist_ui.slides.slide_layers import layer_geometry

    page, tree = win.slide_page, win.layers_panel.tree
    win.doc.layers.clear()
    t = [{"row": 2, "col": 3, "score": 0.9}]
    heat = np.full((2, 10, 8), 0.5, np.float32)
    # the whole slide (a heat-map file; "tumor" hidden, its marker where no shown layer has one)
    # and a region run whose grid starts at its corner, with a marker at the same (row, col)
    page.add_heatmaps(heat, ["benign", "tumor"], (250.0, 250.0), (0.0, 0.0),
                      {"benign": t, "tumor": [{"row": 7, "col": 1, "score": 0.8}]})
    page.add_heatmaps(heat[:, :4, :4], ["benign", "tumor"], (100.0, 100.0), (700.0, 1300.0), {"benign": t})
    layers = [l for l in win.doc.layers if isinstance(l, MarkerLayer)]
    assert len(layers) == 3 and not all(l.visible for l in layers)
    win.layers_dock.show()
    win.layers_dock.raise_()
    wait(lambda: tree.isVisible(), 5)
    items = {}
    for n in range(tree.topLevelItemCount()):
        top = tree.topLevelItem(n)
        for c in range(top.childCount()):
            m = top.child(c).data(0, CHILD_ROLE)
            items[id(m)] = top.child(c)
    v = page.view
    try:
        for layer in layers:
            m = layer.markers[0]
            dx, dy, ox, oy = layer_geometry(layer, v.dimensions)
            _, j, i = m.position
            want = (ox + (i + 0.5) * dx, oy + (j + 0.5) * dy)
            v.center_on(100, 100)
            it = items[id(m)]
            tree.scrollToItem(it)
            at = tree.visualItemRect(it).center()
            QTest.mouseClick(tree.viewport(), Qt.LeftButton, Qt.NoModifier, at)  # (mouseDClick alone
            QTest.mouseDClick(tree.viewport(), Qt.LeftButton, Qt.NoModifier, at)  # emits no doubleClicked)
            assert tree.currentItem() is it
            got = v.center()
            assert abs(got[0] - want[0]) < 0.5 and abs(got[1] - want[1]) < 0.5, (layer.name, layer.visible, got, want)
    finally:
        win.doc.layers.clear()


# --------------------------------------------------------------------------- 4: edge tiles
def test_the_last_pixel_column_and_row_are_in_a_tile(qapp, tmp_path):
    from PySide6.QtWidgets import QApplication

    from imaging_assist.layers import LayerStack
    from imaging_assist.slides import open_slide, synth
    from imaging_assist_ui.app import make_app
    from imaging_assist_ui.slides.slide_view import SlideView

    # downsamples that are not whole numbers (3.0 and 2.998...)
    levels = [np.full((2003, 3001, 3), 200, np.uint8), np.full((668, 1000, 3), 200, np.uint8)]
    path = synth.write_pyramid_tiff(tmp_path / "odd.tif", levels, tile=256, compression="zlib", mpp=0.5)
    make_app()
    v = SlideView(LayerStack(), cache_mb=64)
    v.resize(1000, 700)
    v.show()
    QApplication.processEvents()
    s = open_slide(path)
    try:
        v.set_slide(s)
        W, H = v.width(), v.height()
        w0, h0 = s.dimensions
        bad = []
        for scale in (0.71, 0.4123, 0.2917, 1.37):
            v.set_scale(scale)
            for ox in range(0, 1500):
                v.ox, v.oy = float(ox), float(ox * 0.66)
                reg = QRegion()
                for r in v.tile_screen_rects(v.level).values():
                    reg = reg.united(QRegion(r))
                rx, ry = v.world_origin()
                x1, y1 = min(W, int(round(w0 * v.scale)) - rx), min(H, int(round(h0 * v.scale)) - ry)
                if x1 <= 0 or y1 <= 0:
                    continue
                for px, py in ((x1 - 1, 5), (5, y1 - 1), (x1 - 1, y1 - 1)):
                    if px < x1 and py < y1 and not reg.contains(QRect(px, py, 1, 1).topLeft()):
                        bad.append((scale, v.level, ox, (px, py)))
                if len(bad) > 5:
                    break
        assert not bad, bad[:5]
    finally:
        v.close_slide()
        v.close()
        s.close()


# --------------------------------------------------------------------------- 5: clicks outside
def test_clicks_outside_the_slide_add_nothing(win, tmp_path):
    page = win.slide_page
    tools, v = page.tools, page.view
    for a in list(tools.annotations):
        tools.remove(a)
    v.fit()
    settle(v)
    w0, h0 = v.dimensions
    page.tool_actions["points"].trigger()
    try:
        left = v.slide_to_screen(0, h0 / 2)
        assert left.x() > 30  # the fitted portrait slide leaves room beside it
        QTest.mouseClick(v, Qt.LeftButton, Qt.NoModifier, QPoint(int(left.x()) - 20, int(left.y())))
        assert not tools.annotations and "outside the slide" in page.tissue_status.text()
        inside = v.slide_to_screen(w0 / 2, h0 / 2).toPoint()
        QTest.mouseClick(v, Qt.LeftButton, Qt.NoModifier, inside)
        page.tool_actions["rectangle"].trigger()
        below = v.slide_to_screen(w0 / 2, h0).toPoint() + QPoint(0, 10)
        QTest.mousePress(v, Qt.LeftButton, Qt.NoModifier, below)
        QTest.mouseMove(v, inside)
        QTest.mouseRelease(v, Qt.LeftButton, Qt.NoModifier, inside)
        assert sum(tools.counts().values()) == 1 and [a.kind for a in tools.annotations] == ["points"]
        out = tmp_path / "points.geojson"
        tools.export_geojson(out)
        xy = json.loads(out.read_text())["features"][0]["geometry"]["coordinates"]
        assert all(0 <= x < w0 and 0 <= y < h0 for x, y in xy), xy
    finally:
        page.tool_actions["navigate"].trigger()
        for a in list(tools.annotations):
            tools.remove(a)


# --------------------------------------------------------------------------- 3: runs and closing
def test_a_run_stopped_by_a_slide_switch_is_reported_once(win, monkeypatch):
    _slow_model(monkeypatch)
    page = win.slide_page
    panel = _panel_ready(win)
    page.runs.region_box.setChecked(False)
    got = []
    panel.runFinished.connect(got.append)
    try:
        assert panel.run()
        job = page.runs.job
        assert wait(lambda: "/" in panel.status.text() and not panel.status.text().startswith("0 /"), 120), \
            panel.status.text()
        win.open_path(str(SVS))  # another slide (the same file again)
        job.thread.join(30)
        assert not job.thread.is_alive()
        assert wait(lambda: win.load_state == "done" and page.slide is not None and page.tools.key, 60)
        wait(lambda: False, 0.3)
        assert got == ["cancelled"], got
        assert not panel.running and _log_rows() == []
    finally:
        panel.runFinished.disconnect()
        page.runs.region_box.setChecked(True)


def test_closing_the_window_cancels_a_slide_run_and_logs_nothing(win, monkeypatch):
    _slow_model(monkeypatch)
    page = win.slide_page
    panel = _panel_ready(win)
    page.runs.region_box.setChecked(False)
    assert panel.run()
    job = page.runs.job
    assert wait(lambda: "/" in panel.status.text() and not panel.status.text().startswith("0 /"), 120), \
        panel.status.text()
    win.close()
    assert job.event.is_set()
    job.thread.join(30)
    assert not job.thread.is_alive()
    wait(lambda: False, 0.3)
    assert _log_rows() == []
