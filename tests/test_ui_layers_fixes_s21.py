"""Overlays panel and heat-map legend fixes (session 21): the threshold box on maps with small
values, a ticked flagged map's entry, the legend's top and tick on percentile-clipped maps, the
legend bar's opacity, single-valued maps, and label colours after the palette's 20."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QImage  # noqa: E402

from imaging_assist.colormaps import LABEL_PALETTE, label_color, label_lut  # noqa: E402
from imaging_assist.layers import HeatmapLayer, LabelLayer, argb32_to_rgba  # noqa: E402
from test_ui_heatmap import image_words, view, win  # noqa: E402,F401

pytestmark = pytest.mark.gui


def pattern(shape) -> np.ndarray:
    """0..1, every value present many times, no structure a test depends on."""
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return (((i * 7 + j * 13 + k * 29) % 256) / 255.0).astype(np.float32)


def select(panel, layer):
    from imaging_assist_ui.radiology.layers_panel import LAYER_ROLE

    for i in range(panel.tree.topLevelItemCount()):
        it = panel.tree.topLevelItem(i)
        if it.data(0, LAYER_ROLE) is layer:
            panel.tree.setCurrentItem(it)
            return it
    raise AssertionError(f"{layer.name} is not in the Overlays panel")


# 1 ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("top", [0.004, 0.0004])
def test_threshold_box_steps_and_types_on_small_valued_maps(win, view, top):
    from imaging_assist_ui.ai.model_support import heat_display

    sal = pattern(win.doc.volume.array.shape[:3]) * np.float32(top)  # raw saliency is ~1e-3
    vmin, vmax, thr, _ = heat_display(sal, "saliency")
    layer = win.add_layer(HeatmapLayer("Saliency: pneumonia", sal, vmin=vmin, vmax=vmax, threshold=thr,
                                       method="Saliency"))
    panel = win.layers_panel
    select(panel, layer)
    box = panel.threshold
    assert abs(box.value() - layer.threshold) <= top / 1000, (box.text(), layer.threshold)
    seen = [layer.threshold]
    for _ in range(5):  # every ▲ step moves the threshold, by about a 50th of the range
        box.stepBy(1)
        assert layer.threshold > seen[-1], (box.text(), box.decimals(), seen)
        assert abs(layer.threshold - seen[-1] - top / 50) < top / 500
        seen.append(layer.threshold)
    typed = 0.3 * top
    box.lineEdit().setText(f"{typed:g}")  # as typed: "0.0012"
    box.interpretText()
    assert abs(layer.threshold - typed) <= top / 1000, (layer.threshold, typed)
    # maps with ordinary values keep three decimals
    other = win.add_layer(HeatmapLayer("Grad-CAM: pneumonia", pattern(sal.shape), method="Grad-CAM"))
    select(panel, other)
    assert box.decimals() == 3


# 2 ----------------------------------------------------------------------------------------------
def test_ticked_flagged_map_no_longer_reads_hidden(win, view):
    heat = HeatmapLayer("Grad-CAM: pneumonia", pattern(win.doc.volume.array.shape[:3]), vmin=0, vmax=1,
                        threshold=0.2, method="Grad-CAM")
    heat.set_flags(["negative faithfulness (-0.35)"])
    win.add_layer(heat)
    top = select(win.layers_panel, heat)
    assert top.text(0).endswith("(heat map, flagged, hidden)") and top.checkState(0) == Qt.Unchecked
    top.setCheckState(0, Qt.Checked)  # what a click on the box does
    assert heat.visible
    assert top.text(0).endswith("(heat map, flagged)"), top.text(0)
    top.setCheckState(0, Qt.Unchecked)
    assert not heat.visible and top.text(0).endswith("(heat map, flagged, hidden)"), top.text(0)


# 3 ----------------------------------------------------------------------------------------------
def test_legend_top_says_where_a_clipped_colour_range_ends():
    from imaging_assist_ui.ai.model_support import heat_display
    from imaging_assist_ui.radiology.heat_legend import _labels

    sal = np.abs(np.random.default_rng(0).normal(0, 1, (1, 200, 200))).astype(np.float32)  # heavy tail
    vmin, vmax, thr, _ = heat_display(sal, "saliency")
    assert vmax < sal.max()  # the 99.5th percentile of the positive values, not the maximum
    layer = HeatmapLayer("Saliency: pneumonia", sal, vmin=vmin, vmax=vmax, threshold=thr, method="Saliency")
    top, bottom, tick = _labels(layer)
    assert top == "99.5th pct", top
    assert (bottom, tick) == ("0", "25 %")  # the tick: a percentage of that top
    # a Grad-CAM map's range ends at its maximum: "max"
    cam = HeatmapLayer("Grad-CAM: pneumonia", sal / sal.max(), vmin=0, vmax=1, threshold=0.2, method="Grad-CAM")
    assert _labels(cam) == ("max", "0", "20 %")
    from imaging_assist_ui.radiology.heat_legend import _ordinal
    assert [_ordinal(x) for x in (99.5, 99.0, 1, 2, 3, 11, 12, 13, 21, 42)] == \
        ["99.5th", "99th", "1st", "2nd", "3rd", "11th", "12th", "13th", "21st", "42nd"]


# 4 ----------------------------------------------------------------------------------------------
def _bar(layer, n=128) -> np.ndarray:
    from imaging_assist_ui.radiology.heat_legend import legend_image

    img = legend_image(layer, n).convertToFormat(QImage.Format_RGB32)
    w = np.frombuffer(img.constBits(), np.uint32, count=n).copy()
    return np.stack([(w >> 16) & 255, (w >> 8) & 255, w & 255], -1)[::-1].astype(float)  # bottom first


def test_legend_bar_is_drawn_with_the_layers_opacity():
    from imaging_assist_ui.radiology.heat_legend import GREY

    def heat(op):
        return HeatmapLayer("Grad-CAM: x", np.linspace(0, 1, 100, dtype=np.float32)[None, None], vmin=0, vmax=1,
                            threshold=0.2, method="Grad-CAM", opacity=op)

    layer = heat(0.7)
    vals = np.linspace(0, 1, 128, dtype=np.float32)
    for op in (0.7, 0.2):
        layer.opacity = op  # a layer outside a stack: its version stays, the cache key must see it
        ref = heat(op)
        rgba = argb32_to_rgba(ref.lut()[ref.indices(vals)]).astype(float)
        a = rgba[..., 3:4] / 255
        drawn = rgba[..., :3] * a + GREY * (1 - a)  # premultiplied, over mid-grey
        assert np.abs(_bar(layer) - drawn).max() <= 3, op


# 5 ----------------------------------------------------------------------------------------------
def test_single_valued_map_says_it_has_nothing_to_show(win, view):
    shape = win.doc.volume.array.shape[:3]
    base = image_words(view.base_image()[0]).copy()
    layer = win.add_layer(HeatmapLayer("loaded overlay", np.full(shape, 0.8, np.float32)))
    assert np.array_equal(image_words(view.composite_image()), base)  # nothing drawn, as it says
    it = select(win.layers_panel, layer)
    assert it.toolTip(0) == "constant map (0.8): nothing to show", it.toolTip(0)  # not "range 0.8 … 1.8"
    kids = [it.child(c).text(0) for c in range(it.childCount())]
    assert kids == ["constant map (0.8): nothing to show"], kids
    assert layer.constant_note() == "constant map (0.8): nothing to show"
    view.set_zoom(view.zoom * 0.7)  # room beside the image
    view.repaint()
    # the legend is the map's name and the note, not a 0.8 … 1.8 colour bar (200 px tall)
    assert view.legend_rect is not None and view.legend_rect.height() < 80, view.legend_rect
    view.fit()
    # a single value given a colour range is drawn, in its one colour: no note
    shown = HeatmapLayer("p", np.full(shape, 0.8, np.float32), vmin=0, vmax=1, threshold=0.2)
    assert shown.constant_note() == ""
    assert HeatmapLayer("z", np.zeros((1, 4, 4), np.float32)).constant_note() == "constant map (0): nothing to show"


def test_labels_after_the_palette_get_colours_of_their_own():
    assert LABEL_PALETTE[:3] == [(230, 25, 75), (60, 180, 75), (255, 225, 25)] and len(LABEL_PALETTE) == 20
    assert [label_color(i) for i in range(1, 21)] == LABEL_PALETTE  # the first 20 unchanged
    cols = [label_color(i) for i in range(1, 1001)]
    assert all(c not in LABEL_PALETTE for c in cols[20:])
    assert label_color(21) != label_color(1) and label_color(41) != label_color(1)
    diff = np.abs(np.diff(np.array(cols, int), axis=0)).max(1)
    assert diff.min() >= 60  # neighbouring values tell apart
    c300 = np.array(label_color(300))
    assert c300.max() - c300.min() >= 60  # a colour, not grey
    assert np.array_equal(label_lut(1001), np.array([(0, 0, 0)] + cols, np.uint8))
    assert label_color(300) == label_color(300)  # deterministic
    # and the viewer's label layer uses them
    lab = np.zeros((1, 4, 4), np.uint16)
    lab[0, 0, :3] = (1, 21, 300)
    layer = LabelLayer("many", lab)
    assert [layer.label(v).color for v in (1, 21, 300)] == [label_color(1), label_color(21), label_color(300)]


def test_legend_top_percentile_of_a_film_sized_saliency_map():
    """np.percentile interpolates: a hair fewer than 99.5 % of the values lie under its 99.5th
    percentile; the legend still reads 99.5th."""
    from imaging_assist_ui.ai.model_support import heat_display
    from imaging_assist_ui.radiology.heat_legend import _labels

    sal = (np.abs(np.random.default_rng(0).normal(0, 1, (1, 256, 321))) * 1e-3).astype(np.float32)
    vmin, vmax, thr, _ = heat_display(sal, "saliency")
    layer = HeatmapLayer("Saliency: pneumonia", sal, vmin=vmin, vmax=vmax, threshold=thr, method="Saliency")
    assert _labels(layer)[0] == "99.5th pct"
    assert HeatmapLayer("s", sal, vmin=0, vmax=float(np.sort(sal.ravel())[-2])).top_percentile() == 99.9
