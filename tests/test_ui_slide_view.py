"""The slide view widget, offscreen, on synthetic pyramids with a known pixel pattern:
level choice, exact pixels at 1:1, pan / zoom / keys, the lower-resolution stand-in while
tiles load (never blocking the GUI thread), overlays placed by their level-0 geometry,
scale bar, no-MPP notice, overview navigation, the tile cache."""

import math
import os
import threading
import time

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import imaging_assist_ui  # noqa: E402,F401
from PySide6.QtCore import QPoint, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QColor, QMouseEvent, QWheelEvent  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from _qt import pump_until as wait, settle  # noqa: E402
from imaging_assist.layers import HeatmapLayer, LayerStack, Marker, MarkerLayer  # noqa: E402
from imaging_assist.slides import open_slide, synth  # noqa: E402

pytestmark = pytest.mark.gui

W, H = 1200, 800
MPP = 0.5
# a window of the view that no HUD element covers (info top-left, overview top-right,
# legend right, scale bar bottom-left, zoom text bottom-right)
INNER = (slice(130, H - 110), slice(260, W - 280))


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pattern_slide(tmp_path_factory):
    """4096 x 3072 lossless pyramid of synth.pattern_rgb: levels 4096, 2048, 1024, 512, 256."""
    d = tmp_path_factory.mktemp("slides")
    base = synth.pattern_rgb(3072, 4096)
    levels = synth.make_levels(base, 256)
    path = synth.write_pyramid_tiff(d / "pattern.tif", levels, tile=256, compression="zlib", mpp=MPP)
    return path, levels


@pytest.fixture(scope="module")
def nompp_slide(tmp_path_factory):
    d = tmp_path_factory.mktemp("nompp")
    levels = synth.make_levels(synth.pattern_rgb(768, 1024, smooth=True), 256)
    return synth.write_pyramid_tiff(d / "nompp.tif", levels, tile=256, compression="zlib", mpp=None)


@pytest.fixture
def view(qapp):
    from imaging_assist_ui.app import make_app
    from imaging_assist_ui.slides.slide_view import SlideView
    make_app()
    v = SlideView(LayerStack(), cache_mb=128)
    v.resize(W, H)
    v.show()
    QApplication.processEvents()
    yield v
    v.close_slide()
    v.close()




def grab(view) -> np.ndarray:
    from imaging_assist_ui.slides.slide_tiles import qimage_to_rgb
    return qimage_to_rgb(view.grab().toImage())


def open_in(view, path):
    s = open_slide(path)
    view.set_slide(s)
    settle(view)
    return s


# --------------------------------------------------------------------------- levels and pixels
def test_level_follows_zoom(view, pattern_slide):
    s = open_in(view, pattern_slide[0])
    assert s.level_count == 5
    # fit: 800/3072 x 0.95 = 0.247 screen px per level-0 px -> downsample 4.04 -> level 2 (4)
    assert view.scale == pytest.approx(min(W / 4096, H / 3072) * 0.95)
    assert view.level == 2 and view.last_paint["level"] == 2
    for scale, want in [(2.0, 0), (1.0, 0), (0.75, 0), (0.5, 1), (0.4, 1), (0.25, 2), (0.2, 2),
                        (0.125, 3)]:
        view.set_scale(scale)
        assert view.level == want == s.get_best_level_for_downsample(1 / scale), scale
        settle(view)
        assert view.last_paint["level"] == want and view.last_paint["missing"] == 0
        # only the tiles in view are requested and kept for this level
        lw, lh = s.level_dimensions[want]
        k = scale * 4096 / lw  # screen px per level px (same in y)
        n_cols = math.ceil(min(W, lw * k) / (256 * k)) + 1
        n_rows = math.ceil(min(H, lh * k) / (256 * k)) + 1
        assert view.last_paint["tiles"] <= n_cols * n_rows
        assert all(key[1] == want for key in view.tile_screen_rects())
    view.set_scale(1e-4)  # zooming out stops at half the fit-to-window size
    assert view.scale == pytest.approx(view.fit_scale() * 0.5)
    assert view.level == s.get_best_level_for_downsample(1 / view.scale) == 3


@pytest.mark.parametrize("level", [0, 2])
def test_pixels_at_one_to_one_equal_the_level(view, pattern_slide, level):
    path, levels = pattern_slide
    s = open_in(view, path)
    view.set_level_zoom(level)
    view.center_on(1234.0, 987.0)
    settle(view)
    rx, ry = view.world_origin()  # screen (0, 0) shows level pixel (rx, ry)
    img = grab(view)
    lv = levels[level]
    exp = np.full((H, W, 3), 0, np.uint8)
    y0, x0 = max(0, ry), max(0, rx)
    y1, x1 = min(lv.shape[0], ry + H), min(lv.shape[1], rx + W)
    exp[y0 - ry:y1 - ry, x0 - rx:x1 - rx] = lv[y0:y1, x0:x1]
    a, b = img[INNER], exp[INNER]
    inside = np.zeros((H, W), bool)
    inside[y0 - ry:y1 - ry, x0 - rx:x1 - rx] = True
    m = inside[INNER]
    assert m.sum() > 100_000
    assert np.array_equal(a[m], b[m])
    if level == 0:  # and that is the synthetic pattern itself: pixel (x, y) = f(x, y)
        x, y = 700, 400
        assert img[y, x].tolist() == synth.pattern_rgb(1, 1, x0=rx + x, y0=ry + y)[0, 0].tolist()
    # the level-0 coordinates under a screen point
    sx, sy = view.screen_to_slide(QPointF(700.5, 400.5))
    ds = s.level_downsamples[level]
    assert (math.floor(sx / ds), math.floor(sy / ds)) == (rx + 700, ry + 400)


def test_zoomed_in_pixels_are_the_slide_pixels(view, pattern_slide):
    """2x magnification beyond level 0: each slide pixel is a 2x2 block of the same colour."""
    path, levels = pattern_slide
    open_in(view, path)
    view.set_scale(2.0)
    view.center_on(2000.0, 1500.0)
    settle(view)
    img = grab(view)
    rx, ry = view.world_origin()
    for sx, sy in [(400, 300), (401, 301), (650, 420), (811, 555)]:
        x0, y0 = (sx + rx) // 2, (sy + ry) // 2
        assert img[sy, sx].tolist() == levels[0][y0, x0].tolist()


# --------------------------------------------------------------------------- interaction
def _drag(view, p0: QPoint, p1: QPoint):
    from PySide6.QtTest import QTest
    QTest.mousePress(view, Qt.LeftButton, Qt.NoModifier, p0)
    for t in (0.25, 0.5, 1.0):
        p = QPointF(p0.x() + (p1.x() - p0.x()) * t, p0.y() + (p1.y() - p0.y()) * t)
        QApplication.sendEvent(view, QMouseEvent(QMouseEvent.MouseMove, p, p, Qt.NoButton, Qt.LeftButton,
                                                 Qt.NoModifier))
    QTest.mouseRelease(view, Qt.LeftButton, Qt.NoModifier, p1)


def test_drag_pans_by_whole_pixels(view, pattern_slide):
    open_in(view, pattern_slide[0])
    view.set_level_zoom(1)
    view.center_on(2048, 1536)
    settle(view)
    before = grab(view)
    r0 = view.world_origin()
    _drag(view, QPoint(600, 400), QPoint(600 - 130, 400 + 70))
    settle(view)
    assert view.world_origin() == (r0[0] + 130, r0[1] - 70)
    after = grab(view)
    # content moved 130 px left and 70 px down
    a = after[200:600, 300:800]
    b = before[200 - 70:600 - 70, 300 + 130:800 + 130]
    assert np.array_equal(a, b)


def test_wheel_zooms_around_the_cursor(view, pattern_slide):
    open_in(view, pattern_slide[0])
    view.set_scale(0.3)
    pos = QPointF(300.0, 500.0)
    before = view.screen_to_slide(pos)
    ev = QWheelEvent(pos, view.mapToGlobal(pos), QPoint(0, 0), QPoint(0, 240), Qt.NoButton, Qt.NoModifier,
                     Qt.NoScrollPhase, False)
    QApplication.sendEvent(view, ev)
    assert view.scale == pytest.approx(0.3 * 1.25 ** 2)
    after = view.screen_to_slide(pos)
    assert after[0] == pytest.approx(before[0], abs=1.0 / view.scale) and \
        after[1] == pytest.approx(before[1], abs=1.0 / view.scale)
    assert view.level == 1  # 0.469 screen px per level-0 px: downsample 2.13 -> level 1 (2)


def test_keys_zoom_pan_and_fit(view, pattern_slide):
    from PySide6.QtTest import QTest
    open_in(view, pattern_slide[0])
    fit = view.scale
    QTest.keyClick(view, Qt.Key_Plus)
    assert view.scale == pytest.approx(fit * 1.25)
    QTest.keyClick(view, Qt.Key_Minus)
    QTest.keyClick(view, Qt.Key_Minus)
    assert view.scale == pytest.approx(fit * 0.8)
    r = view.world_origin()
    QTest.keyClick(view, Qt.Key_Right)
    assert view.world_origin() == (r[0] + 100, r[1])
    QTest.keyClick(view, Qt.Key_Down, Qt.ShiftModifier)
    assert view.world_origin() == (r[0] + 100, r[1] + 400)
    QTest.keyClick(view, Qt.Key_F)
    assert view.fit_mode and view.scale == pytest.approx(fit)
    cx, cy = view.center()
    assert (cx, cy) == pytest.approx((2048, 1536), abs=1.0 / fit)


# --------------------------------------------------------------------------- never blocking
class SlowSlide:
    """A slide whose tile reads of the levels in ``slow`` take ``delay`` s (a slow disk)."""

    def __init__(self, slide, slow=(0,), delay=0.25):
        self._s, self.slow, self.delay = slide, set(slow), delay
        self.reads = []
        self.read_keys = []
        self.gui_thread_reads = 0

    def __getattr__(self, name):
        return getattr(self._s, name)

    def read_level(self, level, x, y, w, h):
        if threading.current_thread() is threading.main_thread():
            self.gui_thread_reads += 1
        self.reads.append(level)
        self.read_keys.append(("t", level, x // 256, y // 256))
        if level in self.slow:
            time.sleep(self.delay)
        return self._s.read_level(level, x, y, w, h)


def test_missing_tiles_show_coarser_data_and_never_block(view, pattern_slide, nompp_slide):
    base = open_slide(nompp_slide)  # smooth pattern: upscaled coarse tiles look alike
    slow = SlowSlide(base, slow=(0,), delay=0.3)
    view.set_slide(slow)
    view.set_scale(0.5)
    settle(view)  # level 1 tiles decoded (nothing of level 0 is read yet)
    assert view.level == 1 and 0 not in slow.reads
    view.set_scale(2.0)
    view.center_on(512, 384)
    t0 = time.perf_counter()
    view.repaint()
    dt = time.perf_counter() - t0
    assert dt < 0.1, dt  # the GUI thread does not wait for the 0.3 s reads
    lp = view.last_paint
    assert lp["level"] == 0 and lp["missing"] > 0 and lp["fallback"] > 0
    img = grab(view)
    # the stand-in is the scaled-up level-1 data: close to the real level-0 pixels, not placeholder grey
    rx, ry = view.world_origin()
    exp = base.read_level(0, (rx + 300) // 2, (ry + 200) // 2, 300, 200).repeat(2, 0).repeat(2, 1)
    diff = np.abs(img[200:600, 300:900].astype(int) - exp.astype(int)).mean()
    assert diff < 12, diff
    assert slow.gui_thread_reads == 0
    settle(view)  # and the real tiles arrive
    assert view.last_paint["missing"] == 0
    img = grab(view)
    assert np.abs(img[200:600, 300:900].astype(int) - exp.astype(int)).mean() < 1.0
    assert slow.gui_thread_reads == 0


def test_tiles_that_scroll_away_are_not_read(view, pattern_slide):
    slow = SlowSlide(open_slide(pattern_slide[0]), slow=(0,), delay=0.15)
    view.set_slide(slow)
    settle(view)
    view.set_level_zoom(0)
    view.center_on(700, 1500)
    n0 = len(slow.reads)
    passed = set()
    for i in range(15):  # a fast pan across the slide while level-0 reads are slow
        view.pan_by(-160, 0)
        view.repaint()
        QApplication.processEvents()
        passed |= set(view.tile_screen_rects())
    final = set(view.tile_screen_rects())
    settle(view)
    assert all(k in view.cache for k in final)
    near = {("t", 0, c + dc, r + dr) for (_, _, c, r) in final for dc in (-2, -1, 0, 1, 2) for dr in (-1, 0, 1)}
    skipped = passed - near
    read_skipped = skipped & set(slow.read_keys[n0:])
    # the tiles the view only passed over were dropped from the queue: at most the few that
    # were already being read when the view moved on
    assert len(skipped) >= 20 and len(read_skipped) <= 6, (len(skipped), len(read_skipped))
    assert slow.gui_thread_reads == 0


# --------------------------------------------------------------------------- overlays
def _over(bg, rgb, alpha):
    return (np.asarray(rgb, float) * alpha + bg.astype(float) * (1 - alpha))


def test_heatmap_layer_aligned_and_toggled(view, pattern_slide):
    from imaging_assist.layers import colormap_rgb
    from imaging_assist_ui.slides.slide_layers import slide_layer
    path, levels = pattern_slide
    open_in(view, path)
    view.smooth_heat = False  # tile blocks: the cell edges exactly (smoothing: test_ui_slide_tools.py)
    view.set_level_zoom(0)
    view.center_on(1000, 1000)
    settle(view)
    plain = grab(view)
    # a checkerboard heat map of 100 x 100 level-0 px cells from level-0 (300, 500): 1 in
    # "black" cells, NaN (transparent) in the others
    heat = np.full((20, 30), np.nan, np.float32)
    heat[::2, ::2] = 1.0
    heat[1::2, 1::2] = 1.0
    layer = slide_layer(HeatmapLayer("tumour", heat, colormap="jet", opacity=0.5, vmin=0.0, vmax=1.0),
                        downsample=100, origin=(300, 500))
    view.layers.add(layer)
    settle(view)
    img = grab(view)
    top = colormap_rgb("jet")[255]  # value 1.0
    # the screen point of a level-0 position (1 screen px = 1 level-0 px here)
    def at(x0, y0):
        p = view.slide_to_screen(x0, y0)
        return int(p.y()), int(p.x())
    # cell (row 5, col 7): 5+7 even -> coloured; cell (5, 8) -> transparent
    y, x = at(300 + 7 * 100 + 50, 500 + 5 * 100 + 50)
    assert np.abs(img[y, x] - _over(plain[y, x], top, 0.5)).max() <= 2
    y, x = at(300 + 8 * 100 + 50, 500 + 5 * 100 + 50)
    assert img[y, x].tolist() == plain[y, x].tolist()
    # the cell edge is where the geometry says: level-0 x = 300 + 8 * 100
    y, x = at(300 + 8 * 100 - 0.5, 500 + 5 * 100 + 50)
    assert img[y, x].tolist() != plain[y, x].tolist()
    y, x = at(300 + 8 * 100 + 0.5, 500 + 5 * 100 + 50)
    assert img[y, x].tolist() == plain[y, x].tolist()
    # outside the heat map (left of the origin) nothing changes
    y, x = at(250, 700)
    assert img[y, x].tolist() == plain[y, x].tolist()
    # toggling the layer changes the rendered pixels back and forth
    view.layers.toggle(layer, False)
    settle(view)
    assert np.array_equal(grab(view)[INNER], plain[INNER])
    view.layers.toggle(layer, True)
    settle(view)
    assert np.array_equal(grab(view)[INNER], img[INNER])
    # and the legend is drawn: a jet colour bar, value 1 at its right end
    lr = view.legend_rect
    assert lr is not None and lr.right() < W
    end = img[int(lr.center().y()), int(lr.right()) - 3].astype(int)
    assert np.abs(end - top).sum() < 30
    view.set_show_overlays(False)
    settle(view)
    assert np.array_equal(grab(view)[INNER], plain[INNER])
    view.set_show_overlays(True)
    view.layers.clear()


def test_tissue_mask_layer_from_engine(view, tmp_path):
    """detect_tissue -> TissueMask.to_layer (outline) placed with mask.downsample."""
    from imaging_assist.slides import detect_tissue
    from imaging_assist_ui.slides.slide_layers import layer_geometry, slide_layer
    rgb, truth, _ = synth.tissue_phantom(1200, 1600, seed=1)
    path = synth.write_pyramid_tiff(tmp_path / "tissue.tif", synth.make_levels(rgb, 256), tile=256,
                                    compression="zlib", mpp=2.0)
    s = open_in(view, path)
    mask = detect_tissue(s)
    layer = slide_layer(mask.to_layer(opacity=1.0, mode="fill"), downsample=mask.downsample)
    assert layer_geometry(layer, s.dimensions) == (*mask.downsample, 0.0, 0.0)
    plain = grab(view)
    view.layers.add(layer)
    settle(view)
    img = grab(view)
    color = layer.labels[1].color
    # a point deep inside the first blob is tissue-coloured, glass far from the blobs is not
    for (x0, y0), tissue in [((0.3 * 1600, 0.35 * 1200), True), ((0.95 * 1600, 0.05 * 1200), False)]:
        p = view.slide_to_screen(x0, y0)
        px = img[int(p.y()), int(p.x())].tolist()
        assert (px == list(color)) == tissue, (x0, y0, px)
    layer.mode = "outline"  # the engine's default look: only the border changes
    settle(view)
    out = grab(view)
    changed = np.any(out != plain, axis=2)
    assert 0 < changed[INNER].mean() < 0.1
    layer.visible = False
    settle(view)
    assert np.array_equal(grab(view)[INNER], plain[INNER])
    view.layers.clear()


def test_markers_drawn_at_their_cells(view, pattern_slide):
    from imaging_assist_ui.slides.slide_layers import slide_layer
    open_in(view, pattern_slide[0])
    view.set_level_zoom(0)
    view.center_on(1000, 1000)
    settle(view)
    plain = grab(view)
    ml = slide_layer(MarkerLayer("Top tiles", [Marker((0, 4, 6), "tumour", score=0.93, color=(255, 0, 255))]),
                     downsample=(112, 112), origin=(200, 300))
    view.layers.add(ml)
    settle(view)
    img = grab(view)
    # the cell is level-0 [200 + 6*112, +112) x [300 + 4*112, +112): its left edge is drawn
    p = view.slide_to_screen(200 + 6 * 112, 300 + 4 * 112 + 56)
    x, y = int(round(p.x())), int(p.y())
    near = img[y, x - 1:x + 2].astype(int)
    assert (np.abs(near - [255, 0, 255]).sum(1) < 40).any()
    c = view.slide_to_screen(200 + 6.5 * 112, 300 + 4.5 * 112)
    assert img[int(c.y()), int(c.x())].tolist() == plain[int(c.y()), int(c.x())].tolist()  # hollow box
    view.layers.clear()


# --------------------------------------------------------------------------- scale bar / MPP
def _white_run(img, y, x0):
    row = img[y]
    x = x0
    while x < row.shape[0] and (row[x] >= 250).all():
        x += 1
    return x - x0


@pytest.mark.parametrize("scale", [0.3, 1.7])
def test_scale_bar_length_matches_its_label(view, pattern_slide, scale):
    from imaging_assist_ui.slides.slide_view import format_um
    open_in(view, pattern_slide[0])
    view.set_scale(scale)
    settle(view)
    sb = view.scale_bar()
    assert sb["mpp_known"] and sb["unit"] == "µm"
    # length on screen = value (µm) / MPP (µm per level-0 px) * scale (screen px per level-0 px)
    assert sb["length_px"] == pytest.approx(sb["value"] / MPP * scale)
    assert 60 <= sb["length_px"] <= 150
    assert sb["label"] == format_um(sb["value"])
    assert sb["value"] / 10 ** math.floor(math.log10(sb["value"])) in (1, 2, 5)
    img = grab(view)
    r = view._scale_bar_rect
    run = _white_run(img, int(r.center().y()), int(r.left()))
    assert abs(run - sb["length_px"]) <= 1.0
    assert format_um(2000) == "2 mm" and format_um(50) == "50 µm" and format_um(0.5) == "0.5 µm"


def test_no_mpp_shows_notice_and_pixels(view, nompp_slide):
    from imaging_assist_ui.slides.slide_view import NO_MPP_NOTICE
    from imaging_assist.slides.reader import MISSING_MPP_MESSAGE
    s = open_in(view, nompp_slide)
    assert s.mpp is None and MISSING_MPP_MESSAGE in s.warnings
    sb = view.scale_bar()
    assert not sb["mpp_known"] and sb["unit"] == "px" and "µm" not in sb["label"]
    assert sb["length_px"] == pytest.approx(sb["value"] * view.scale)
    assert NO_MPP_NOTICE == "no MPP: distances in pixels"
    img = grab(view)
    r = view.no_mpp_rect
    assert r is not None
    from imaging_assist_ui.shared.theme import WARN_BG
    bg = QColor(WARN_BG)
    px = img[int(r.top()) + 2, int(r.left()) + 3].tolist()
    assert px == [bg.red(), bg.green(), bg.blue()]
    # with MPP there is no notice
    assert "no MPP" in view.info_lines()[-1] or len(view.info_lines()) == 2


# --------------------------------------------------------------------------- overview
def test_overview_shows_view_and_navigates(view, pattern_slide):
    open_in(view, pattern_slide[0])
    assert wait(lambda: view.thumb is not None)
    ov = view.overview
    assert ov.isVisible() and ov.geometry().right() <= W
    view.set_scale(0.5)
    view.center_on(1000, 800)
    vr = ov.view_rect()
    ir = ov.image_rect()
    x, y, w, h = view.visible_rect0()
    assert vr.left() == pytest.approx(ir.left() + x / 4096 * ir.width(), abs=1e-6)
    assert vr.width() == pytest.approx(w / 4096 * ir.width(), abs=1e-6)
    # click on the overview: the view centres on that slide point
    target = QPointF(ir.left() + 0.75 * ir.width(), ir.top() + 0.25 * ir.height())
    from PySide6.QtTest import QTest
    QTest.mouseClick(ov, Qt.LeftButton, Qt.NoModifier, target.toPoint())
    cx, cy = view.center()
    tx, ty = ov.to_slide(QPointF(target.toPoint()))
    assert cx == pytest.approx(tx, abs=1) and cy == pytest.approx(ty, abs=1)
    assert tx == pytest.approx(0.75 * 4096, abs=4096 / ir.width() + 1)
    # drag on it follows
    QTest.mousePress(ov, Qt.LeftButton, Qt.NoModifier, QPoint(int(ir.left()) + 10, int(ir.top()) + 10))
    p = QPointF(ir.left() + 0.5 * ir.width(), ir.top() + 0.5 * ir.height())
    QApplication.sendEvent(ov, QMouseEvent(QMouseEvent.MouseMove, p, p, Qt.NoButton, Qt.LeftButton, Qt.NoModifier))
    QTest.mouseRelease(ov, Qt.LeftButton, Qt.NoModifier, p.toPoint())
    assert view.center() == pytest.approx((2048, 1536), abs=4096 / ir.width() + 1)
    # the rectangle is drawn in the accent colour
    from imaging_assist_ui.shared.theme import ACCENT
    from imaging_assist_ui.slides.slide_tiles import qimage_to_rgb
    oimg = qimage_to_rgb(ov.grab().toImage())
    acc = QColor(ACCENT)
    assert (np.abs(oimg.reshape(-1, 3).astype(int) - [acc.red(), acc.green(), acc.blue()]).sum(1) < 10).any()


# --------------------------------------------------------------------------- cache
def test_tile_cache_is_bounded_lru():
    from imaging_assist_ui.slides.slide_tiles import TileCache, rgb_to_qimage
    c = TileCache(max_mb=1.0)  # four 256x256 RGB32 tiles
    tiles = [rgb_to_qimage(np.full((256, 256, 3), i, np.uint8)) for i in range(6)]
    for i in range(4):
        c.put(("t", 0, i, 0), tiles[i])
    assert len(c) == 4 and c.bytes == 4 * 256 * 256 * 4
    c.get(("t", 0, 0, 0))              # refresh the oldest
    c.put(("t", 0, 4, 0), tiles[4])    # evicts tile 1 (least recently used)
    assert ("t", 0, 1, 0) not in c and ("t", 0, 0, 0) in c
    c.put(("t", 0, 5, 0), tiles[5])
    assert ("t", 0, 2, 0) not in c and c.bytes <= c.max_bytes


def test_view_cache_respects_its_budget(qapp, pattern_slide):
    """Panning over all of level 0 (192 tiles, 48 MB decoded) with a 16 MB budget."""
    from imaging_assist_ui.slides.slide_view import SlideView
    v = SlideView(LayerStack(), cache_mb=16.0)
    v.resize(800, 500)
    v.show()
    try:
        v.set_slide(open_slide(pattern_slide[0]))
        v.set_level_zoom(0)
        peak = 0
        for cx in range(400, 4096, 700):
            for cy in (250, 1500, 2800):
                v.center_on(cx, cy)
                assert wait(lambda: (v.repaint() or True) and v.is_complete(), 10)
                peak = max(peak, v.cache.bytes)
        assert v.cache.max_bytes == 16 * 1024 * 1024
        assert peak <= v.cache.max_bytes and len(v.cache) < 192
        assert v.loader.fetched >= 64  # evicted tiles are read again when needed
    finally:
        v.close_slide()
        v.close()
