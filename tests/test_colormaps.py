"""Heat-map colours (issue 17): matplotlib's perceptual colormap by default, opacity that fades
to 0 at the threshold, contour mode, heat maps under the label maps, and flagged explanations."""

from __future__ import annotations

import numpy as np
import pytest

from imaging_assist import colormaps
from imaging_assist.layers import (HeatmapLayer, LabelLayer, LayerStack, Plane, argb32_to_rgba,
                                   colormap_rgb)


def test_default_is_inferno_from_matplotlib():
    from matplotlib import colormaps as mpl

    assert colormaps.DEFAULT_HEAT_COLORMAP == "inferno"
    want = np.round(mpl["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).astype(int)
    assert np.abs(colormap_rgb("inferno").astype(int) - want).max() <= 1
    # perceptual: lightness rises monotonically from black to pale yellow (jet does not)
    lum = colormap_rgb("inferno").astype(float) @ [0.2126, 0.7152, 0.0722]
    assert np.all(np.diff(lum) > -1.0) and lum[0] < 5 and lum[-1] > 230
    with pytest.raises(ValueError):
        colormap_rgb("nope")


def test_fade_alpha_is_zero_below_threshold_and_ramps_above():
    v = np.array([0.0, 0.1, 0.2, 0.4, 0.6, 1.0, np.nan], np.float32)
    a = colormaps.fade_alpha(v, threshold=0.2, opacity=0.8)
    assert list(a[:3]) == [0.0, 0.0, 0.0] and a[-1] == 0.0
    assert a[3] == pytest.approx(0.2) and a[4] == pytest.approx(0.4) and a[5] == pytest.approx(0.8)
    assert np.all(np.diff(a[:6]) >= 0)


def test_heatmap_layer_fades_to_transparent():
    h = np.linspace(0.0, 1.0, 101, dtype=np.float32)[None, None]
    layer = HeatmapLayer("cam", h, vmin=0.0, vmax=1.0, threshold=0.2, opacity=0.7)
    rgba = argb32_to_rgba(layer.render_argb32(Plane.native(), 0))[0]
    assert layer.colormap == "inferno" and layer.fade
    assert np.all(rgba[:20, 3] == 0)                      # below the threshold: nothing drawn
    assert rgba[21, 3] <= 5                               # just above: almost transparent
    assert rgba[100, 3] == round(0.7 * 255)               # the maximum: full opacity
    assert np.all(np.diff(rgba[20:, 3].astype(int)) >= 0)  # rising with the value
    assert np.abs(rgba[100, :3].astype(int) - colormap_rgb("inferno")[255]).max() <= 1  # premultiplied rounding


def test_contour_mode_draws_only_iso_lines():
    yy, xx = np.mgrid[0:64, 0:64]
    h = np.exp(-((yy - 32) ** 2 + (xx - 32) ** 2) / (2 * 10.0 ** 2)).astype(np.float32)[None]
    layer = HeatmapLayer("cam", h, vmin=0.0, vmax=1.0, threshold=0.2, mode="contour", opacity=1.0)
    rgba = argb32_to_rgba(layer.render_argb32(Plane.native(), 0))
    drawn = rgba[..., 3] > 0
    assert drawn.sum() < 0.1 * drawn.size and not drawn[32, 32]  # lines, not a filled blob
    # three closed rings (50, 75, 90 % of the range) in the colormap's colour at each level
    row = drawn[32]
    assert np.count_nonzero(np.diff(row.astype(int)) == 1) == 6
    for f in colormaps.CONTOUR_LEVELS:
        assert any(tuple(c) == tuple(colormap_rgb("inferno")[int(round(f * 255))]) for c in rgba[drawn][:, :3])
    # every line pixel lies at (just inside) its level
    lev = np.searchsorted(layer.contour_levels(), h[0], side="right")
    assert np.all(lev[drawn] > 0)
    with pytest.raises(ValueError):
        HeatmapLayer("x", h, mode="dots")


def test_heat_maps_go_under_the_label_maps():
    st = LayerStack()
    lab = st.add(LabelLayer("Lungs", np.ones((1, 4, 4), np.uint8), mode="outline"))
    heat = st.add(HeatmapLayer("Grad-CAM: pneumonia", np.ones((1, 4, 4), np.float32)))
    assert st.layers == [heat, lab]
    other = st.add(HeatmapLayer("Saliency", np.ones((1, 4, 4), np.float32)))
    assert st.layers == [heat, other, lab]
    st.move(lab, 0)  # the reader can still choose
    assert st.layers[0] is lab


def test_legend_title_names_the_method_or_units():
    h = np.ones((1, 2, 2), np.float32)
    assert HeatmapLayer("g", h, method="Grad-CAM").legend_title() == "relative attribution, Grad-CAM"
    assert HeatmapLayer("p", h, units="mm²/s").legend_title() == "mm²/s"


class _HM:
    def __init__(self, label="pneumonia", method="gradcam", faith=None):
        self.label, self.method = label, method
        self.faithfulness = None if faith is None else {"faithfulness": faith}


class _Res:
    def __init__(self, inside=None):
        self.explanation_region = None if inside is None else {
            "name": "lungs", "heatmap": "pneumonia", "fraction_inside": inside,
            "fraction_inside_by_heatmap": {"pneumonia": inside}, "region_fraction_of_image": 0.3}


def test_flags_sanity_faithfulness_and_region():
    from imaging_assist.explain.flags import heatmap_flags

    ok = {"gradcam": {"passed": True, "final_spearman": 0.1}}
    assert heatmap_flags(_HM(faith=0.3), _Res(0.9), sanity=ok) == []
    bad = {"gradcam": {"passed": False, "final_spearman": 0.81, "threshold": 0.5}}
    (why,) = heatmap_flags(_HM(), _Res(0.9), sanity=bad)
    assert "sanity check" in why and "0.81" in why
    (why,) = heatmap_flags(_HM(faith=-0.12), _Res(0.9), sanity=ok)
    assert "negative faithfulness (-0.12)" in why
    (why,) = heatmap_flags(_HM(), _Res(0.31), sanity=ok)
    assert "mostly outside the lungs: 31%" in why
    assert len(heatmap_flags(_HM(faith=-0.2), _Res(0.1), sanity=bad)) == 3


def test_shipped_sanity_record_flags_failed_methods():
    """The shipped cxr-pneumonia record: Grad-CAM passed (not flagged), and a method that failed is."""
    from imaging_assist.explain.flags import heatmap_flags
    from imaging_assist.explain.sanity import recorded_sanity
    from imaging_assist.models.card import load_card
    from conftest import ROOT

    card = load_card(ROOT / "weights" / "cxr-pneumonia")
    rec = recorded_sanity(card)
    assert rec["gradcam"]["passed"] and heatmap_flags(_HM(method="gradcam"), None, card) == []
    failed = [m for m, r in rec.items() if not r["passed"]]
    for m in failed:
        assert "sanity check" in heatmap_flags(_HM(method=m), None, card)[0]


def test_flagged_layer_starts_hidden_and_can_be_shown():
    layer = HeatmapLayer("cam", np.ones((1, 2, 2), np.float32))
    layer.set_flags(["negative faithfulness (-0.10)"])
    assert layer.flagged and not layer.visible and layer.render_argb32(Plane.native(), 0) is None
    layer.visible = True  # deliberately shown
    assert layer.render_argb32(Plane.native(), 0) is not None and layer.flagged


def test_key_image_uses_the_viewer_colormap_and_fade():
    from imaging_assist.inference.results import overlay_rgb

    base = np.full((8, 32), 100.0, np.float32)
    heat = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (8, 1))
    out = overlay_rgb(base, heat_slice=heat).astype(int)
    grey = overlay_rgb(base).astype(int)
    low = heat[0] < colormaps.DEFAULT_HEAT_THRESHOLD
    assert np.array_equal(out[:, low], grey[:, low])  # image untouched where attribution is low
    assert np.abs(out[0, -1] - grey[0, -1]).max() > 50  # strongly coloured at the maximum
