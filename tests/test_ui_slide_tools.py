"""The pathologist's day on the real CMU-1 SVS in the main window at 1920x1080, offscreen:
a slide model run from the AI panel (region only; Cancel), heat maps that leave low values
transparent and are smooth at high zoom, ruler in µm and polygon in mm² drawn with the mouse,
annotations saved and reloaded, a QuPath GeoJSON imported, the viewport taking the width."""

import json
import os
import time

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import imaging_assist_ui  # noqa: E402,F401
from PySide6.QtCore import QSettings, Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402

from _qt import pump_until as wait, settle  # noqa: E402
from conftest import SHARED, need  # noqa: E402

pytestmark = pytest.mark.gui

SVS = SHARED / "pathology" / "wsi_aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"
MPP = 0.499  # the file's aperio.MPP


def grab(view):
    from imaging_assist_ui.slides.slide_tiles import qimage_to_rgb
    return qimage_to_rgb(view.grab().toImage()).astype(int)


@pytest.fixture(scope="module")
def win(qapp, tmp_path_factory):
    from imaging_assist_ui.app import make_app
    from imaging_assist_ui.main_window import MainWindow
    os.environ["IMAGING_ASSIST_DATA_DIR"] = str(tmp_path_factory.mktemp("data"))
    make_app()
    w = MainWindow(settings=QSettings(str(tmp_path_factory.mktemp("cfg") / "s.ini"), QSettings.IniFormat))
    w.resize(1920, 1080)
    w.show()
    w.open_path(str(need(SVS)))
    assert wait(lambda: w.load_state == "done" and w.slide_page is not None and w.slide_page.tools.key), \
        w.last_error
    yield w
    w.close()
    os.environ.pop("IMAGING_ASSIST_DATA_DIR", None)


@pytest.fixture
def page(win):
    p = win.slide_page
    win.doc.layers.clear()
    p.tools.set_tool("navigate")
    for a in list(p.tools.annotations):
        p.tools.remove(a)
    p.view.fit()
    settle(p.view)
    return p


def _panel_ready(win):
    panel = win.model_panel
    win.model_dock.show()
    win.model_dock.raise_()
    if not panel._catalog_loaded:
        panel.refresh()
    assert wait(lambda: panel._catalog_loaded, 60), panel.series_label.text()
    return panel


def test_viewport_takes_the_free_width(win, page):
    wait(lambda: False, 0.3)
    assert page.view.width() >= 0.75 * 1920, (page.view.width(), win.width())
    assert win.layers_dock.isVisible() or win.tabifiedDockWidgets(win.layers_dock)
    # the Overlays hint talks about slides, not HU thresholds
    assert "HU" not in win.layers_panel.empty.text()


def test_ai_panel_lists_slide_models_and_runs_inside_a_region(win, page):
    from imaging_assist.layers import HeatmapLayer, MarkerLayer
    from imaging_assist.slides.annotations import Annotation
    from imaging_assist.slides.regions import inside_fraction

    panel = _panel_ready(win)
    shown = [panel.tree.topLevelItem(i).text(0) for i in range(panel.tree.topLevelItemCount())
             if not panel.tree.topLevelItem(i).isHidden()]
    assert shown and all("path-lung-tissue" in s for s in shown), shown
    assert panel.run_btn.isEnabled(), panel.run_btn.toolTip()
    # a 1000 x 1000 px square over the epithelium: only its tiles are analysed
    region = page.tools.add(Annotation("rectangle", [(700, 1300), (1700, 1300), (1700, 2300), (700, 2300)]))
    assert page.runs.region() is region
    got = []
    panel.runFinished.connect(got.append)
    assert panel.run()
    assert wait(lambda: got, 120), panel.status.text()
    assert got == ["done"], panel.error_text()
    res = page.runs.last
    rects = np.array(page.runs.last_tiles)
    assert 0 < len(rects) == res.n_tiles < 20
    assert (inside_fraction(rects, np.array(region.points)) >= 0.5).all()
    heat = [l for l in win.doc.layers if isinstance(l, HeatmapLayer)]
    assert [l.name for l in heat] == list(panel.current_entry().card.labels) and len(heat) == 3
    assert all(getattr(l, "model_id", "") == "path-lung-tissue" for l in heat)
    marks = [m for l in win.doc.layers if isinstance(l, MarkerLayer) for m in l.markers]
    assert marks and all(" · tile r" in m.label for m in marks)
    assert "tiles" in panel.status.text() and "Done" in panel.status.text()
    text = "\n".join(panel.shown_lines())
    assert "inside the drawn rectangle" in text and "not for clinical use" in text
    # the OOD check is said once, first in the results (not repeated in the warnings box)
    flagged = bool(page.runs.last_ood.get("flagged"))
    assert ("Outside what this model was trained on" in text) == flagged
    assert not any("outside what this model" in w.lower() for w in panel.warning_texts())


def test_cancel_stops_within_a_second_and_adds_nothing(win, page):
    panel = _panel_ready(win)
    page.runs.region_box.setChecked(False)  # the whole slide: long enough to cancel
    try:
        got = []
        panel.runFinished.connect(got.append)
        n_before = len(win.doc.layers)
        assert panel.run()
        assert wait(lambda: "tiles" in panel.status.text() and "/" in panel.status.text(), 120), panel.status.text()
        assert "tiles/s" in panel.status.text() or panel.status.text().startswith("0 /")
        t = time.perf_counter()
        panel.cancel()
        assert wait(lambda: got, 5)
        dt = time.perf_counter() - t
        print(f"cancel answered in {dt:.3f} s")
        assert dt < 1.0
        assert got[-1] == "cancelled"
        assert len(win.doc.layers) == n_before
        assert "nothing was added" in panel.status.text()
    finally:
        page.runs.region_box.setChecked(True)
        panel.runFinished.disconnect()


def test_heat_map_transparent_where_low_and_smooth_when_zoomed(win, page):
    from imaging_assist.layers import HeatmapLayer
    page.a_overview.setChecked(False)
    v = page.view
    heat = np.full((6, 6), 0.05, np.float32)  # low everywhere ...
    heat[2:4, 2:4] = 0.95                     # ... but a block of 4 tiles
    heat[0, 0] = np.nan                       # and one tile that never ran (outside the tissue)
    heat[0, 1] = 0.95                         # beside a high tile at that edge
    page.add_heatmaps(heat[None], ["tumour"], downsample=(300.0, 300.0), origin=(200.0, 400.0))
    layer = [l for l in win.doc.layers if isinstance(l, HeatmapLayer)][0]
    assert layer.threshold > 0.05
    v.set_show_overlays(False)
    settle(v)
    plain = grab(v)
    v.set_show_overlays(True)
    settle(v)
    img = grab(v)

    def at(x0, y0):
        p = v.slide_to_screen(x0, y0)
        return int(p.y()), int(p.x())
    y, x = at(200 + 0.5 * 300, 400 + 4.5 * 300)  # a low tile: H&E untouched
    assert np.abs(img[y, x] - plain[y, x]).max() <= 1
    y, x = at(200 + 3 * 300, 400 + 3 * 300)  # the centre of the high block: coloured
    assert np.abs(img[y, x] - plain[y, x]).max() > 30
    # the tile at the tissue edge keeps its whole square (the missing tile does not pull it down)
    y, x = at(200 + 1.05 * 300, 400 + 0.5 * 300)
    y1, x1 = at(200 + 1.5 * 300, 400 + 0.5 * 300)
    assert np.abs(img[y, x] - plain[y, x]).max() > 30 and np.abs(img[y1, x1] - plain[y1, x1]).max() > 30
    y, x = at(200 + 0.5 * 300, 400 + 0.5 * 300)  # the tile that never ran: untouched
    assert np.abs(img[y, x] - plain[y, x]).max() <= 1
    # the legend lies inside the view
    box = v.legend_box
    assert box is not None and box.left() >= 0 and box.top() >= 0
    assert box.right() <= v.width() and box.bottom() <= v.height()
    # zoomed in on the block's edge: the colour changes gradually, not in one step
    v.set_scale(1.0)
    v.center_on(200 + 2 * 300, 400 + 3 * 300)
    settle(v)
    v.set_show_overlays(False)
    settle(v)
    plain = grab(v)
    v.set_show_overlays(True)
    settle(v)
    img = grab(v)
    yc, xc = at(200 + 2 * 300, 400 + 3 * 300)
    diff = np.abs(img[yc, xc - 200:xc + 200] - plain[yc, xc - 200:xc + 200]).sum(axis=1)
    levels = len(np.unique(diff // 8))
    assert levels > 6, levels  # blocky would be 2-3 levels (tinted / not)
    # an opacity change re-colours the interpolated values, it does not interpolate again
    vals = v._smooth_values[id(layer)][2]
    layer.opacity = 0.3
    settle(v)
    assert v._smooth_values[id(layer)][2] is vals and np.any(grab(v) != img)
    page.a_overview.setChecked(True)
    win.doc.layers.clear()


def _drag(view, a, b):
    pa, pb = view.slide_to_screen(*a), view.slide_to_screen(*b)
    QTest.mousePress(view, Qt.LeftButton, Qt.NoModifier, pa.toPoint())
    QTest.mouseMove(view, pb.toPoint())
    QTest.mouseRelease(view, Qt.LeftButton, Qt.NoModifier, pb.toPoint())


def test_ruler_and_polygon_with_the_mouse(win, page):
    v, tools = page.view, page.tools
    v.set_scale(0.5)
    v.center_on(1100, 1500)
    settle(v)
    page.tool_actions["ruler"].trigger()
    assert tools.tool == "ruler"
    _drag(v, (800, 1200), (1400, 2000))  # 600 x 800 px at 0.5 scale = screen-pixel exact
    r = tools.annotations[-1]
    dx, dy = r.points[1][0] - r.points[0][0], r.points[1][1] - r.points[0][1]
    assert (dx, dy) == pytest.approx((600, 800), abs=2.1)  # one screen pixel = 2 level-0 px
    assert r.measurements((MPP, MPP))["Length µm"] == pytest.approx(np.hypot(dx, dy) * MPP)
    assert r.measurements(v.slide.mpp)["Length µm"] == pytest.approx(1000 * MPP, rel=0.004)
    page.tool_actions["polygon"].trigger()
    for p in [(800, 1200), (1400, 1200), (1400, 2000)]:
        q = v.slide_to_screen(*p).toPoint()
        QTest.mouseClick(v, Qt.LeftButton, Qt.NoModifier, q)
    QTest.keyClick(v, Qt.Key_Return)
    poly = tools.annotations[-1]
    assert poly.kind == "polygon" and len(poly.points) == 3
    want = 0.5 * 600 * 800 * MPP * MPP / 1e6  # right triangle, mm²
    assert poly.measurements(v.slide.mpp)["Area mm^2"] == pytest.approx(want, rel=0.01)
    assert "mm²" in page.annotations_panel.list.item(1).text()
    page.tool_actions["points"].trigger()
    page.annotations_panel.cls.setCurrentText("Tumor")
    for p in [(900, 1500), (950, 1550)]:
        QTest.mouseClick(v, Qt.LeftButton, Qt.NoModifier, v.slide_to_screen(*p).toPoint())
    assert tools.counts() == {"Tumor": 2}
    assert "Tumor 2" in page.annotations_panel.counts.text()
    # Del removes the selected annotation, Esc leaves the tool (the window's shortcuts of those keys
    # do not take them from the view)
    v.setFocus()
    tools.selected = poly
    n = len(tools.annotations)
    QTest.keyClick(v, Qt.Key_Delete)
    assert len(tools.annotations) == n - 1 and poly not in tools.annotations
    QTest.keyClick(v, Qt.Key_Escape)
    assert tools.tool == "navigate" and page.tool_actions["navigate"].isChecked()
    page.tool_actions["navigate"].trigger()
    page.annotations_panel.cls.setCurrentText("Region")


def test_annotations_saved_reloaded_and_qupath_import(win, page, tmp_path):
    from imaging_assist.slides.annotations import Annotation, store_path
    tools = page.tools
    tools.add(Annotation("polygon", [(100, 100), (600, 100), (600, 500)], "Tumor"))
    tools.add_points([(50, 60), (70, 80)], "Immune cells")
    path = store_path(tools.key)
    assert path.exists()
    before = [(a.kind, a.name, a.points) for a in tools.annotations]
    # reopen the slide: the annotations come back
    win.open_path(str(SVS))
    assert wait(lambda: win.load_state == "done" and page.slide is not None and page.tools.key, 60)
    assert wait(lambda: len(tools.annotations) == 2, 10)
    assert [(a.kind, a.name, a.points) for a in tools.annotations] == before
    # a QuPath export (FeatureCollection, level-0 px, classification {name, color})
    qp = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "q1", "geometry": {"type": "Polygon", "coordinates": [
            [[1000, 1000], [1200, 1000], [1200, 1100], [1000, 1100], [1000, 1000]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Stroma", "color": [150, 200, 150]}}}]}
    f = tmp_path / "from_qupath.geojson"
    f.write_text(json.dumps(qp))
    assert page.import_annotations(str(f)) == 1
    a = tools.annotations[-1]
    assert (a.name, a.color, a.id) == ("Stroma", (150, 200, 150), "q1")
    assert a.measurements((MPP, MPP))["Area mm^2"] == pytest.approx(200 * 100 * MPP * MPP / 1e6)
    saved = json.loads(path.read_text())
    assert [ft["properties"]["classification"]["name"] for ft in saved["features"]] == ["Tumor", "Immune cells",
                                                                                       "Stroma"]
    out = tmp_path / "export.geojson"
    tools.export_geojson(out)
    assert json.loads(out.read_text())["features"][2]["geometry"]["coordinates"][0][0] == [1000.0, 1000.0]


def test_tools_on_a_slide_without_mpp_say_pixels(qapp, tmp_path, monkeypatch):
    """No MPP in the file: choosing the ruler says so, lengths and areas are in pixels (never µm)."""
    from imaging_assist.layers import LayerStack
    from imaging_assist.slides import synth
    from imaging_assist_ui.slides.slide_page import SlidePage
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    levels = synth.make_levels(synth.pattern_rgb(768, 1024, smooth=True), 256)
    path = synth.write_pyramid_tiff(tmp_path / "nompp.tif", levels, tile=256, compression="zlib", mpp=None)
    page = SlidePage(layers=LayerStack())
    page.resize(1200, 800)
    page.show()
    try:
        page.open(str(path))
        assert wait(lambda: page.slide is not None and page.tools.key, 30)
        assert page.slide.mpp is None
        said = []
        page.tools.message.connect(said.append)
        page.tool_actions["ruler"].trigger()
        assert said and "no MPP" in said[-1] and "pixels" in said[-1]
        settle(page.view)
        _drag(page.view, (100, 100), (400, 500))
        r = page.tools.annotations[-1]
        assert "ruler" in page.annotations_panel.list.item(0).text()
        assert page.annotations_panel.list.item(0).text().endswith("px (no MPP)")
        assert set(r.measurements(page.slide.mpp)) == {"Length px"}
    finally:
        page.close_slide()
        page.close()


def test_a_damaged_annotation_file_is_reported_and_never_overwritten(qapp, tmp_path, monkeypatch):
    from imaging_assist.layers import LayerStack
    from imaging_assist.slides import synth
    from imaging_assist.slides.annotations import Annotation, slide_key, store_path
    from imaging_assist_ui.slides.slide_page import SlidePage
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    levels = synth.make_levels(synth.pattern_rgb(512, 512, smooth=True), 256)
    path = synth.write_pyramid_tiff(tmp_path / "s.tif", levels, tile=256, compression="zlib", mpp=0.5)
    bad = store_path(slide_key(path))
    bad.parent.mkdir(parents=True)
    bad.write_text('{"type": "FeatureCollection", "features": [')
    page = SlidePage(layers=LayerStack())
    page.show()
    try:
        page.open(str(path))
        assert wait(lambda: page.slide is not None and page.tools.store_error, 30)
        assert "not loaded" in page.tools.store_error and "not readable JSON" in page.tools.store_error
        assert "not loaded" in page.annotations_panel.note.text()
        page.tools.add(Annotation("ruler", [(0, 0), (10, 0)]))
        assert bad.read_text() == '{"type": "FeatureCollection", "features": ['
    finally:
        page.close_slide()
        page.close()
