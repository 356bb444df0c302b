"""A heat map's edge tiles are cut at the slide's edge in the viewer.  A tile at the right or
bottom edge runs when half or more of it is on the slide, and its cell was drawn whole: up to
294 level-0 px of colour over the empty background past the slide (the real CMU-1 grid: 10 x 8
cells of 314.2 px on 2220 x 2967), where the overview PNG stops at the edge."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from _qt import settle  # noqa: E402
from conftest import SHARED, need  # noqa: E402


@pytest.mark.parametrize("smooth", [False, True])
def test_nothing_is_drawn_past_the_slides_edge(qapp, smooth):
    from imaging_assist.layers import HeatmapLayer, LayerStack
    from imaging_assist.slides import open_slide
    from imaging_assist_ui.slides.slide_layers import slide_layer
    from imaging_assist_ui.slides.slide_tiles import qimage_to_rgb
    from imaging_assist_ui.slides.slide_view import SlideView

    s = open_slide(str(need(SHARED / "pathology" / "wsi_aperio_cmu1_small_region" / "CMU-1-Small-Region.svs")))
    w0, h0 = s.dimensions
    ds = 0.7 / 0.499 * 224  # the lung model's cell, level-0 px
    stack = LayerStack()
    v = SlideView(stack, cache_mb=64)
    try:
        v.resize(600, 500)
        v.show()
        v.show_hud = False
        v.smooth_heat = smooth
        v.set_slide(s)
        layer = HeatmapLayer("t", np.ones((10, 8), np.float32), vmin=0, vmax=1, threshold=0.3, opacity=0.8)
        slide_layer(layer, (ds, ds), (0, 0))
        stack.add(layer)
        v.set_scale(1.0)
        v.center_on(w0 - 100, h0 - 100)  # the bottom-right corner
        v.set_show_overlays(False)
        settle(v)
        plain = qimage_to_rgb(v.grab().toImage()).astype(int)
        v.set_show_overlays(True)
        settle(v)
        img = qimage_to_rgb(v.grab().toImage()).astype(int)
        tint = np.abs(img - plain).max(axis=2) > 8
        yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
        x, y = v.screen_to_slide((xx + 0.5, yy + 0.5))
        outside = (x >= w0 + 1) | (y >= h0 + 1)
        inside = (x < w0 - 1) & (y < h0 - 1)
        assert outside.sum() > 1000 and (tint & inside).sum() > 1000  # the view shows both
        assert int((tint & outside).sum()) == 0
    finally:
        v.close_slide()
        v.close()
