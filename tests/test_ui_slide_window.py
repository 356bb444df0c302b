"""Slides in the main window, offscreen: opening the CMU-1 SVS (path, drop, CLI screenshot)
shows the slide page instead of the radiology view; tissue detection and heat maps become
layers of the Overlays panel; going back to DICOM restores the radiology view."""

import os
import subprocess
import sys


import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import imaging_assist_ui  # noqa: E402,F401
from PySide6.QtCore import QMimeData, QPointF, QSettings, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QDropEvent  # noqa: E402

from _qt import pump_until as wait, settle  # noqa: E402
from conftest import ROOT, SHARED, need  # noqa: E402

pytestmark = pytest.mark.gui

SVS = SHARED / "pathology" / "wsi_aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"
DEMO = ROOT / "imaging_assist" / "data" / "demo" / "ct_head_phantom"




def grab(view):
    from imaging_assist_ui.slides.slide_tiles import qimage_to_rgb
    return qimage_to_rgb(view.grab().toImage())


@pytest.fixture(scope="module")
def win(qapp, tmp_path_factory):
    from imaging_assist_ui.app import make_app
    from imaging_assist_ui.main_window import MainWindow
    make_app()
    w = MainWindow(settings=QSettings(str(tmp_path_factory.mktemp("cfg") / "s.ini"), QSettings.IniFormat))
    w.resize(1600, 1000)
    w.show()
    w.open_path(str(need(SVS)))
    assert wait(lambda: w.load_state == "done"), w.last_error
    yield w
    w.close()


@pytest.fixture
def page(win):
    if win.pages.currentWidget() is not win.slide_page or win.slide_page.slide is None:
        win.open_path(str(SVS))
        assert wait(lambda: win.load_state == "done" and win.slide_page.slide is not None), win.last_error
    win.doc.layers.clear()
    win.slide_page.view.fit()
    settle(win.slide_page.view)
    return win.slide_page


def test_svs_opens_in_the_slide_view(win, page):
    from imaging_assist.slides import open_slide
    v = page.view
    assert win.pages.currentWidget() is page and v.isVisible()
    assert v.slide.dimensions == (2220, 2967) and v.slide.mpp == pytest.approx((0.499, 0.499))
    assert "CMU-1-Small-Region.svs" in win.windowTitle()
    assert win.first_image_at is not None
    # radiology-only parts are out of the way, the overlays panel is there
    assert win.toolbar.isHidden() and win.browser_dock.isHidden() and win.measure_dock.isHidden()
    assert not win.layers_dock.isHidden() and not page.toolbar.isHidden()
    # label and macro images in the info panel; MPP and levels in its text
    assert wait(lambda: set(page.associated) == {"label", "macro"})
    assert not page.info_scroll.isVisible()  # hidden at first: the view takes the width
    page.a_info.setChecked(True)  # "Slide info" shows it
    assert page.label_img.isVisible() and page.macro_img.isVisible()
    page.a_info.setChecked(False)
    assert page.associated["label"].width() == 387 and page.associated["macro"].width() == 1280
    txt = page.info_text.text()
    assert "0.499" in txt and "2,220 × 2,967" in txt and "20×" in txt
    # the overview (thumbnail) is up
    assert wait(lambda: v.thumb is not None) and v.overview.isVisible()
    # pixels at full resolution are the slide's
    v.set_level_zoom(0)
    v.center_on(1100, 1500)
    settle(v)
    img = grab(v)
    rx, ry = v.world_origin()
    with open_slide(SVS) as s:
        exp = s.read_level(0, rx, ry, v.width(), v.height())
    sl = (slice(150, v.height() - 120), slice(300, v.width() - 280))
    assert np.array_equal(img[sl], exp[sl])
    # µm scale bar from the file's MPP
    sb = v.scale_bar()
    assert sb["mpp_known"] and sb["length_px"] == pytest.approx(sb["value"] / 0.499 * v.scale)


def test_keys_reach_the_slide_view(win, page):
    from PySide6.QtTest import QTest
    v = page.view
    v.setFocus()
    fit = v.scale
    QTest.keyClick(v, Qt.Key_Plus)
    assert v.scale == pytest.approx(fit * 1.25)
    QTest.keyClick(v, Qt.Key_F)
    assert v.scale == pytest.approx(fit)
    r = v.world_origin()
    QTest.keyClick(v, Qt.Key_Left)
    assert v.world_origin() == (r[0] - 100, r[1])
    # the main window's "show overlays" (O) reaches the slide view
    win.a_overlays.setChecked(False)
    assert not v.show_overlays
    win.a_overlays.setChecked(True)
    assert v.show_overlays


def test_detect_tissue_layer_toggled_from_the_panel(win, page):
    v = page.view
    plain = grab(v)
    page.a_tissue.trigger()
    assert not page.a_tissue.isEnabled()  # running on a worker thread; the window stays live
    assert wait(lambda: len(win.doc.layers) == 1, 60)
    layer = win.doc.layers[0]
    assert layer.name == "Tissue" and layer.kind == "label" and layer.mode == "outline"
    assert layer.downsample[0] == pytest.approx(2220 / layer.array.shape[2])
    assert "mm²" in page.tissue_status.text() and page.a_tissue.isEnabled()
    settle(v)
    with_layer = grab(v)
    changed = np.any(with_layer != plain, axis=2)
    assert changed.sum() > 1000
    # the outline is drawn in the tissue colour
    from imaging_assist_ui.slides.slide_page import TISSUE_COLOR
    assert (np.abs(with_layer[changed].astype(int) - TISSUE_COLOR).sum(1) < 60).mean() > 0.5
    # untick it in the Overlays panel: the pixels go back
    item = win.layers_panel.tree.topLevelItem(0)
    assert item.text(0).startswith("Tissue")
    item.setCheckState(0, Qt.Unchecked)
    assert layer.visible is False
    settle(v)
    assert np.array_equal(grab(v), plain)
    item.setCheckState(0, Qt.Checked)
    settle(v)
    assert np.array_equal(grab(v), with_layer)


def test_tile_result_heatmaps_and_file(win, page, tmp_path, monkeypatch):
    from imaging_assist.layers import HeatmapLayer, MarkerLayer
    from imaging_assist.slides import open_slide, run_tiles, write_heatmaps

    def model(x):  # "eosin-ness": red minus green, in 0..1
        p = np.clip((x[:, 0] - x[:, 1]).mean(axis=(1, 2)) * 4, 0, 1)
        return np.stack([p, 1 - p], 1).astype(np.float32)

    with open_slide(SVS) as s:
        res = run_tiles(s, model, tile_px=64, mpp=1.0, tissue_mask=None, class_names=["pink", "other"])
    assert res.heatmaps.shape[0] == 2 and min(res.heatmaps.shape[1:]) > 10
    out = write_heatmaps(res, tmp_path / "heat.npz")[0]
    added = page.load_heatmap(out)
    # written without its slide, the file cannot say which slide it belongs to: the reader is told
    assert "does not record which slide it was made for" in page.tissue_status.text()
    heat = [l for l in added if isinstance(l, HeatmapLayer)]
    assert [l.name for l in heat] == ["pink", "other"] and heat[0].visible and not heat[1].visible
    assert heat[0].downsample == pytest.approx(res.downsample) and heat[0].origin == pytest.approx(res.origin)
    assert any(isinstance(l, MarkerLayer) for l in added)
    v = page.view
    v.smooth_heat = False  # tile blocks: one colour per cell (smoothing: test_ui_slide_tools.py)
    v.set_show_overlays(False)
    settle(v)
    plain = grab(v)
    v.set_show_overlays(True)
    settle(v)
    img = grab(v)
    # the cell with the highest score is coloured (the app's heat colours and fade) at its level-0 place
    r, c = np.unravel_index(np.nanargmax(res.heatmaps[0]), res.heatmaps[0].shape)
    x0 = res.origin[0] + (c + 0.5) * res.downsample[0]
    y0 = res.origin[1] + (r + 0.5) * res.downsample[1]
    p = v.slide_to_screen(x0 + res.downsample[0] * 0.25, y0 + res.downsample[1] * 0.25)
    got, before = img[int(p.y()), int(p.x())].astype(int), plain[int(p.y()), int(p.x())].astype(int)
    from imaging_assist.colormaps import DEFAULT_HEAT_COLORMAP
    assert heat[0].colormap == DEFAULT_HEAT_COLORMAP
    word = int(heat[0].lut()[heat[0].indices(np.array([res.heatmaps[0][r, c]], np.float32))][0])
    a = (word >> 24) / 255.0
    premul = np.array([(word >> 16) & 255, (word >> 8) & 255, word & 255], float)
    want = premul + before * (1 - a)
    assert a > 0.3 and np.abs(got - want).max() <= 3
    assert np.any(img != plain)
    # a heat map of another slide (one pixel wider: its grid fits it too) is refused
    res.slide_dimensions = (res.slide_dimensions[0] + 1, res.slide_dimensions[1])
    bad = write_heatmaps(res, tmp_path / "other.npz")[0]
    from imaging_assist.slides import SlideError
    with pytest.raises(SlideError, match="2220"):
        page.load_heatmap(bad)
    # through the menu: the engine's one line in a message box, nothing added
    import imaging_assist_ui.slides.slide_page as sp
    shown, n_layers = [], len(win.doc.layers)
    monkeypatch.setattr(sp.QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (str(bad), "")))
    monkeypatch.setattr(sp.QMessageBox, "warning", staticmethod(lambda _w, title, text: shown.append((title, text))))
    page.load_heatmap_dialog()
    assert shown == [("Load heat map", f"Not loaded: other.npz: the heat map was made for a "
                                       f"{res.slide_dimensions[0]} × {res.slide_dimensions[1]} slide; this one is "
                                       f"{page.slide.dimensions[0]} × {page.slide.dimensions[1]}")]
    assert len(win.doc.layers) == n_layers
    win.doc.layers.clear()


def test_back_to_dicom_and_drop_a_slide(win, page):
    win.open_path(str(need(DEMO)))
    assert wait(lambda: win.load_state == "done" and win.doc.volume is not None), win.last_error
    assert win.pages.currentIndex() == 1  # the radiology viewer page
    assert page.slide is None and page.view.loader is None  # file closed, threads stopped
    assert not win.toolbar.isHidden() and not win.browser_dock.isHidden()
    # drop the SVS on the window: back to the slide view
    md = QMimeData()
    md.setUrls([QUrl.fromLocalFile(str(SVS))])
    ev = QDropEvent(QPointF(400, 400), Qt.CopyAction, md, Qt.LeftButton, Qt.NoModifier)
    win.dropEvent(ev)
    assert wait(lambda: win.load_state == "done" and page.slide is not None), win.last_error
    assert win.pages.currentWidget() is page and win.doc.volume is None


def test_unreadable_slide_reports_an_error(win, tmp_path):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"II*\x00" + os.urandom(2000))
    got = []
    win.loadFinished.connect(got.append)
    try:
        win.open_path(str(bad))
        assert wait(lambda: got)
    finally:
        win.loadFinished.disconnect(got.append)
    assert got == [False] and win.load_state == "error"
    page = win.slide_page
    assert win.pages.currentWidget() is page and page.banner.isVisible()
    assert "broken.svs" in page.banner.text() and win.last_error in page.banner.text()
    assert page.slide is None
    # a heat-map TIFF written by analyze is a TIFF too: the banner says what it is and where it goes
    from imaging_assist.slides import open_slide, run_tiles, write_heatmaps
    with open_slide(need(SVS)) as s:
        res = run_tiles(s, lambda x: np.full((len(x), 2), 0.5, np.float32), tile_px=256, mpp=4.0,
                        tissue_mask=None, class_names=["a", "b"])
    heat = write_heatmaps(res, tmp_path / "heat.tif")[0]
    got.clear()
    win.loadFinished.connect(got.append)
    try:
        win.open_path(heat)
        assert wait(lambda: got)
    finally:
        win.loadFinished.disconnect(got.append)
    assert got == [False] and "an imaging-assist heat map, not a slide: open the slide it was made for" \
        in page.banner.text() and page.slide is None


def test_cli_screenshot_of_a_slide(tmp_path):
    out = tmp_path / "slide.png"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", IMAGING_ASSIST_SETTINGS=str(tmp_path / "s.ini"),
               PYTHONFAULTHANDLER="1")  # a crash prints where it happened
    p = subprocess.run([sys.executable, "-m", "imaging_assist_ui", "view", str(need(SVS)), "--screenshot", str(out)],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    from PIL import Image
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (1080, 1920, 3)
    # the middle of the slide view shows the slide (bright glass / pink tissue), not an empty view
    # (the view takes the free width; its docks are one column at the side: slide x ~ 400..1100)
    mid = img[300:800, 450:950].astype(int)
    assert mid.mean() > 150 and (mid[..., 0] - mid[..., 1]).mean() > 5


def test_no_worker_thread_outlives_the_app(tmp_path):
    """After the event loop, run_gui lets the worker threads end (model catalogue importing
    torch, drift monitor, slide tile readers) before Python shuts down: one of them inside a C
    extension during finalisation crashed a slide screenshot at exit (SIGSEGV) once in a test run."""
    code = ("import threading, sys\n"
            "from imaging_assist_ui.app import run_gui\n"
            f"rc = run_gui({str(need(SVS))!r}, {str(tmp_path / 'x.png')!r})\n"
            "from imaging_assist_ui.shared.workers import running\n"
            "print('left', sorted(t.name for t in running()))\n"
            "print('tiles', [t.name for t in threading.enumerate() if t.name.startswith('slide-tiles')])\n"
            "print('catalogue', 'torch' in sys.modules)\n"
            "sys.exit(rc)\n")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", IMAGING_ASSIST_SETTINGS=str(tmp_path / "s.ini"),
               PYTHONFAULTHANDLER="1")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "left []" in p.stdout and "tiles []" in p.stdout, p.stdout
    assert "catalogue True" in p.stdout  # the catalogue thread did run (and was waited for)

