"""High-DPI screens (device pixel ratio 2): the slide view draws the pyramid level the device
pixels need, Save view as PNG keeps the device pixels and says their resolution, the
``--screenshot --size WxH`` PNG is WxH, series thumbnails have device-pixel detail.

QT_SCALE_FACTOR must be set before the QApplication exists: the ratio-2 checks run in one
subprocess (``_DPR2``, its results shared by the tests below); the ratio-1 checks run here and
show that nothing changed there."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import imaging_assist_ui  # noqa: E402,F401
from PySide6.QtCore import QPointF, QSize  # noqa: E402
from PySide6.QtGui import QImage  # noqa: E402
from PySide6.QtWidgets import QFileDialog  # noqa: E402

from _qt import settle  # noqa: E402
from conftest import DICOM, need  # noqa: E402
from imaging_assist.slides import open_slide, synth  # noqa: E402
from test_ui_slide_view import pattern_slide, view  # noqa: E402,F401

pytestmark = pytest.mark.gui

CR = DICOM / "cr_chest_monochrome1_fuji"
DPM_96 = round(96 / 0.0254)  # dots per metre of 96 dpi

# Run with QT_SCALE_FACTOR=2: prints one JSON line of what it found.
_DPR2 = r'''
import json, math, sys
import numpy as np
from PySide6.QtCore import QPointF, QSize
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QApplication, QFileDialog
sys.path.insert(0, sys.argv[3])
from _qt import settle
from imaging_assist_ui.app import make_app
app = make_app()
from imaging_assist.layers import LayerStack
from imaging_assist.slides import open_slide, synth
from imaging_assist_ui.slides.slide_view import SlideView
from imaging_assist_ui.slides.slide_tiles import TILE, qimage_to_rgb
from imaging_assist_ui.main_window import screenshots
from imaging_assist_ui.radiology.browser import icon_from_array
out = {}
v = SlideView(LayerStack(), cache_mb=32)
v.show_hud = False
v.resize(600, 400)
v.show()
QApplication.processEvents()
s = open_slide(sys.argv[1])
v.set_slide(s)
settle(v)
dpr = v.devicePixelRatioF()
out["dpr"] = dpr
out["fit"] = [v.level, s.get_best_level_for_downsample(1 / (v.scale * dpr))]
v.set_scale(0.5)  # one device pixel per level-0 pixel
v.center_on(1234.0, 987.0)
settle(v)
out["half"] = [v.level, s.get_best_level_for_downsample(1 / (v.scale * dpr))]
img = qimage_to_rgb(v.grab().toImage())
rx, ry = v.world_origin()
X0, Y0 = 2 * rx, 2 * ry  # device pixel (X, Y) shows level-0 pixel (X0 + X, Y0 + Y)
exp = synth.pattern_rgb(img.shape[0], img.shape[1], x0=X0, y0=Y0)
out["grab"] = list(img.shape[:2])
out["same"] = float((img == exp).all(axis=2).mean())
out["runs"] = int((np.diff(img[img.shape[0] // 2, :, 0].astype(int)) != 0).sum()) + 1
# the mapping clicks and tools use is unchanged: logical points, level-0 pixels
bad = 0
for Y in range(5, img.shape[0] - 5, 37):
    for X in range(5, img.shape[1] - 5, 41):
        x, y = v.screen_to_slide(QPointF((X + 0.5) / dpr, (Y + 0.5) / dpr))
        bad += (math.floor(x), math.floor(y)) != (X0 + X, Y0 + Y)
out["mapping_wrong"] = bad
# a bigger view on the small cache still completes: the resized-tile cache holds a screen of
# device-size tiles
v.resize(1400, 900)
v.fit()
settle(v)
out["floor"] = [v._scaled.max_bytes, (2800 + 4 * TILE) * (1800 + 4 * TILE) * 4]
v.resize(600, 400)
QApplication.processEvents()
# File > Save view as PNG and the whole-window screenshot, on a stand-in window around the view
win = type("Win", (), {})()
win.view_area = v
win.grab = v.grab
QFileDialog.getSaveFileName = staticmethod(lambda *a, **k: (sys.argv[2] + "/view.png", ""))
screenshots.save_view_dialog(win)
q = QImage(sys.argv[2] + "/view.png")
out["view_png"] = [q.width(), q.height(), q.dotsPerMeterX(), q.dotsPerMeterY()]
screenshots.save_screenshot(win, sys.argv[2] + "/window.png")
q = QImage(sys.argv[2] + "/window.png")
out["window_png"] = [q.width(), q.height()]
# a series thumbnail: 1-pixel stripes survive in the 64-point icon at 128 device pixels
stripes = np.zeros((128, 128), np.uint8)
stripes[:, ::2] = 255
pm = icon_from_array(stripes).pixmap(QSize(64, 64), dpr)
a = qimage_to_rgb(pm.toImage())[:, :, 0].astype(int)
out["icon"] = [pm.width(), pm.height(), pm.devicePixelRatio(), float(np.abs(np.diff(a, axis=1)).mean())]
v.close_slide()
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def dpr2(pattern_slide, tmp_path_factory):  # noqa: F811
    d = tmp_path_factory.mktemp("dpr2")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QT_SCALE_FACTOR="2")
    p = subprocess.run([sys.executable, "-c", _DPR2, str(pattern_slide[0]), str(d), str(Path(__file__).parent)],
                       env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    line = [s for s in p.stdout.splitlines() if s.startswith("RESULT ")]
    assert line, p.stdout[-2000:] + p.stderr[-2000:]
    out = json.loads(line[-1][7:])
    assert out["dpr"] == 2.0
    return out


# --------------------------------------------------------------------------- 1. slide view
def test_slide_view_at_dpr_2_draws_the_level_the_device_pixels_need(dpr2):
    """OpenSlide's rule on device pixels: at zoom 0.5 a ratio-2 screen shows one level-0 pixel
    per device pixel (level 0, not level 1 stretched 2x), every device pixel the slide's own."""
    assert dpr2["fit"][0] == dpr2["fit"][1]
    assert dpr2["half"] == [0, 0]
    assert dpr2["grab"] == [800, 1200]
    assert dpr2["same"] == 1.0
    assert dpr2["runs"] == 1200  # the red channel (x % 251) changes at every device pixel
    assert dpr2["mapping_wrong"] == 0
    assert dpr2["floor"][0] >= dpr2["floor"][1]


def test_slide_view_at_dpr_1_is_unchanged(view, pattern_slide):  # noqa: F811
    path, levels = pattern_slide
    view.show_hud = False
    s = open_slide(path)
    view.set_slide(s)
    settle(view)
    assert view.devicePixelRatioF() == 1.0
    assert view.level == s.get_best_level_for_downsample(1 / view.scale)
    view.set_scale(0.5)
    view.center_on(1234.0, 987.0)
    settle(view)
    assert view.level == 1
    from imaging_assist_ui.slides.slide_tiles import qimage_to_rgb
    img = qimage_to_rgb(view.grab().toImage())
    rx, ry = view.world_origin()
    assert np.array_equal(img, levels[1][ry:ry + img.shape[0], rx:rx + img.shape[1]])
    x, y = view.screen_to_slide(QPointF(700.5, 400.5))
    assert (math.floor(x / 2), math.floor(y / 2)) == (rx + 700, ry + 400)


# --------------------------------------------------------------------------- 2. screenshots
def test_save_view_at_dpr_2_keeps_device_pixels_and_says_192_dpi(dpr2):
    w, h, dx, dy = dpr2["view_png"]
    assert dx == dy == round(192 / 0.0254)  # prints at its size on screen
    assert w == 1200 and h > 800  # the 600 x 400 view's device pixels, with the footer below


def test_whole_window_screenshot_at_dpr_2_is_its_logical_size(dpr2):
    assert dpr2["window_png"] == [600, 400]


def test_cli_screenshot_is_the_size_asked_at_dpr_2(tmp_path):
    out = tmp_path / "shot.png"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QT_SCALE_FACTOR="2",
               IMAGING_ASSIST_SETTINGS=str(tmp_path / "s.ini"))
    p = subprocess.run([sys.executable, "-m", "imaging_assist_ui", "view", str(need(CR)), "--screenshot", str(out),
                        "--size", "1280x720"], env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    q = QImage(str(out))
    assert (q.width(), q.height()) == (1280, 720)
    assert q.dotsPerMeterX() == DPM_96


def test_save_view_at_dpr_1_is_unchanged(view, tmp_path, monkeypatch):  # noqa: F811
    from imaging_assist_ui.main_window import screenshots
    view.resize(300, 200)
    win = type("Win", (), {})()
    win.view_area = view
    win.grab = view.grab
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(tmp_path / "v.png"), "")))
    screenshots.save_view_dialog(win)
    q = QImage(str(tmp_path / "v.png"))
    assert q.width() == 300 and q.height() >= 200 and q.dotsPerMeterX() == q.dotsPerMeterY() == DPM_96
    assert screenshots.save_screenshot(win, str(tmp_path / "w.png"))
    assert QImage(str(tmp_path / "w.png")).size().toTuple() == (300, 200)


# --------------------------------------------------------------------------- 3. thumbnails
def test_thumbnail_at_dpr_2_has_device_pixel_detail(dpr2):
    w, h, ratio, detail = dpr2["icon"]
    assert (w, h, ratio) == (128, 128, 2.0)
    assert detail > 200  # neighbouring device pixels alternate 0 / 255 (64 px would be grey)


def test_thumbnail_at_dpr_1_is_unchanged(qapp):
    from imaging_assist_ui.radiology.browser import ICON, icon_from_array
    img = synth.pattern_rgb(40, 80)
    pm = icon_from_array(img, (1.0, 1.0)).pixmap(QSize(ICON, ICON))
    assert (pm.width(), pm.height(), pm.devicePixelRatio()) == (64, 64, 1.0)
    a = QImage(pm.toImage())
    assert a.pixelColor(0, 0).black() == 255  # the aspect kept: black bands above and below
    assert a.pixelColor(32, 32).red() > 0 or a.pixelColor(32, 32).green() > 0
