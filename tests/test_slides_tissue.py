"""Tissue detection: blobs on glass with a hole and specks; tile tissue fractions."""

import numpy as np
import pytest

from conftest import SHARED, need
from imaging_assist.slides import MissingMPPWarning, TissueMask, detect_tissue, open_slide
from imaging_assist.slides.synth import make_levels, tissue_phantom, write_pyramid_tiff


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


@pytest.fixture(scope="module")
def phantom():
    return tissue_phantom(900, 1200, seed=3)


def test_mask_matches_truth_fills_holes_drops_specks(phantom):
    rgb, truth, info = phantom
    tm = detect_tissue(rgb)  # an array: mask on its own grid (downsample 1)
    assert tm.mask.shape == truth.shape and tm.downsample == (1.0, 1.0)
    assert iou(tm.mask, truth) > 0.9
    assert tm.mask[info["hole"]].mean() > 0.95          # the glass hole inside tissue is filled
    assert info["specks"].sum() > 50
    assert tm.mask[info["specks"]].mean() < 0.02        # stain specks on glass are removed
    assert 0.04 <= tm.threshold <= 0.2


def test_mask_on_slide_with_mpp_has_its_downsample(phantom, tmp_path):
    rgb, truth, info = phantom
    path = write_pyramid_tiff(tmp_path / "ph.tif", make_levels(rgb, 128), mpp=2.0, tile=128)
    with open_slide(path) as s:
        tm = detect_tissue(s, mask_um=8.0)   # 1200 px * 2 µm / 8 µm = 300 px -> at least min_size 512
        assert max(tm.mask.shape) == 512
        dx, dy = tm.downsample
        assert dx == pytest.approx(1200 / tm.mask.shape[1]) and dy == pytest.approx(900 / tm.mask.shape[0])
        # compare with the truth sampled at mask pixel centres
        yy = ((np.arange(tm.mask.shape[0]) + 0.5) * dy).astype(int)
        xx = ((np.arange(tm.mask.shape[1]) + 0.5) * dx).astype(int)
        assert iou(tm.mask, truth[np.ix_(yy, xx)]) > 0.9
        assert tm.area_mm2 == pytest.approx(truth.sum() * 4e-6, rel=0.08)  # 2 µm pixels
        assert tm.to_dict()["area_mm2"] == tm.area_mm2


def test_no_mpp_warns_and_reports_pixels(phantom, tmp_path):
    from PIL import Image
    rgb, truth, _ = phantom
    p = tmp_path / "ph.png"
    Image.fromarray(rgb).save(p)
    with open_slide(p) as s:
        with pytest.warns(MissingMPPWarning):
            tm = detect_tissue(s)
    assert tm.area_mm2 is None and tm.area_px == pytest.approx(truth.sum(), rel=0.08)
    assert any("no microns-per-pixel" in w for w in tm.warnings)


def test_all_glass_gives_empty_mask():
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(240, 3, (300, 400, 3)), 0, 255).astype(np.uint8)
    assert detect_tissue(glass).mask.sum() == 0


def test_real_svs_mask_is_plausible():
    with open_slide(need(SHARED / "pathology" / "wsi_aperio_cmu1_small_region" / "CMU-1-Small-Region.svs")) as s:
        tm = detect_tissue(s)
    # The region is a strip of squamous epithelium and stroma with glass either side.
    assert 0.25 < tm.fraction < 0.6
    assert 0.4 < tm.area_mm2 < 1.0


def test_fraction_in_rects_is_exact_area_overlap():
    rng = np.random.default_rng(1)
    m = rng.random((40, 50)) > 0.5
    tm = TissueMask(mask=m, downsample=(4.0, 4.0), slide_dimensions=(200, 160), mpp=None, threshold=0.1)
    up = np.kron(m, np.ones((4, 4), bool))            # level-0 truth
    for x, y, w, h in [(0, 0, 200, 160), (3, 5, 17, 9), (10, 7, 40, 33), (190, 150, 20, 20)]:
        want = up[y:y + h, x:x + w].sum() / (w * h)   # outside the slide counts as glass
        assert tm.fraction_in(x, y, w, h) == pytest.approx(want, abs=1e-9)
    # fractional rectangles: compare with a 4x finer brute force
    fine = np.kron(up, np.ones((4, 4), bool))
    x, y, w, h = 10.25, 3.5, 21.75, 12.25
    want = fine[int(y * 4):int((y + h) * 4), int(x * 4):int((x + w) * 4)].mean()
    assert tm.fraction_in(x, y, w, h) == pytest.approx(want, abs=1e-9)


def test_mask_becomes_a_label_layer(phantom):
    tm = detect_tissue(phantom[0][::4, ::4], downsample=4)
    layer = tm.to_layer()
    assert layer.array.shape[-2:] == tm.mask.shape and 1 in layer.labels
    assert tm.downsample == (4.0, 4.0)
