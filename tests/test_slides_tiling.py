"""Tiled inference plumbing: tiles land where they belong, tissue filtering, batching,
progress/cancel, areas, top tiles, missing MPP, heat-map files."""

import threading

import numpy as np
import pytest
from PIL import Image

from imaging_assist.slides import (MissingMPPWarning, SlideError, TissueMask, open_slide, plan_tiles,
                                   read_heatmaps, run_tiles, write_heatmaps)
from imaging_assist.slides.synth import make_levels, write_pyramid_tiff
from imaging_assist.slides.tiling import read_tiles

MPP0 = 0.25
TILE = 32          # tile px at 0.5 µm/px -> 64 level-0 px per tile
ROWS, COLS = 11, 14
W0, H0 = COLS * 64 - 20, ROWS * 64 - 30   # last row/column of tiles hangs over the edge


def cell_image():
    """Level 0 whose 64 px cells are flat colours encoding (row, col)."""
    img = np.zeros((H0, W0, 3), np.uint8)
    for r in range(ROWS):
        for c in range(COLS):
            img[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64] = (r * 20, c * 15, 77)
    return img


def ramp_image():
    """Level 0 = linear ramps: R encodes x, G encodes y (resampling keeps ramps)."""
    y, x = np.mgrid[0:H0, 0:W0].astype(np.float64)
    return np.stack([x / W0 * 255, y / H0 * 255, np.full_like(x, 128)], -1).round().astype(np.uint8)


@pytest.fixture(scope="module")
def cells_slide(tmp_path_factory):
    p = write_pyramid_tiff(tmp_path_factory.mktemp("t") / "cells.tif", make_levels(cell_image(), 64),
                           mpp=MPP0, tile=64)
    with open_slide(p) as s:
        yield s


@pytest.fixture(scope="module")
def ramp_slide(tmp_path_factory):
    p = write_pyramid_tiff(tmp_path_factory.mktemp("t") / "ramp.tif", make_levels(ramp_image(), 64),
                           mpp=MPP0, tile=64)
    with open_slide(p) as s:
        yield s


def decode_model(x):
    """Stand-in: reads the flat colour of each tile back into (row, col) scores."""
    x = np.asarray(x)
    r = x[:, 0].mean(axis=(1, 2)) * 255 / 20
    c = x[:, 1].mean(axis=(1, 2)) * 255 / 15
    return np.stack([r / 100, c / 100, 1 - (r + c) / 200], axis=1)


def test_every_tile_lands_in_its_cell(cells_slide):
    res = run_tiles(cells_slide, decode_model, TILE, 0.5, batch_size=5, tissue_mask=None)
    assert res.plan.level == 1 and res.plan.downsample == pytest.approx((2.0, 2.0))  # 0.5 µm level read as is
    assert res.heatmaps.shape == (3, ROWS, COLS)
    assert res.downsample == pytest.approx((64.0, 64.0)) and res.origin == (0.0, 0.0)
    rr, cc = np.mgrid[0:ROWS, 0:COLS]
    # Full cells decode exactly; edge tiles are part white, so only check the inner ones.
    inner = (rr < ROWS - 1) & (cc < COLS - 1)
    np.testing.assert_allclose(res.heatmaps[0][inner], rr[inner] / 100, atol=1e-6)
    np.testing.assert_allclose(res.heatmaps[1][inner], cc[inner] / 100, atol=1e-6)
    assert not np.isnan(res.heatmaps).any() and res.n_tiles == ROWS * COLS
    # coordinates are level-0 (x, y) of each tile
    np.testing.assert_array_equal(res.coords, np.stack([res.cells[:, 1] * 64, res.cells[:, 0] * 64], 1))


def test_resampled_tiles_keep_position(ramp_slide):
    """0.7 µm/px: no level matches, tiles come from level 1 resampled by 1.4."""
    def centre_model(x):
        x = np.asarray(x)
        return np.stack([x[:, 0].mean(axis=(1, 2)), x[:, 1].mean(axis=(1, 2))], axis=1)

    res = run_tiles(ramp_slide, centre_model, TILE, 0.7, batch_size=8, tissue_mask=None)
    assert res.plan.level == 1 and res.plan.downsample == pytest.approx((2.8, 2.8))
    sx, sy = res.downsample
    rows, cols = res.heatmaps.shape[1:]
    cx = (np.arange(cols) + 0.5) * sx / W0
    cy = (np.arange(rows) + 0.5) * sy / H0
    # away from the slide border (where the resampler also sees the white outside)
    ir, ic = slice(1, rows - 1), slice(1, cols - 1)
    np.testing.assert_allclose(res.heatmaps[0][ir, ic], np.broadcast_to(cx[None, ic], (rows - 2, cols - 2)), atol=0.004)
    np.testing.assert_allclose(res.heatmaps[1][ir, ic], np.broadcast_to(cy[ir, None], (rows - 2, cols - 2)), atol=0.004)
    assert sx / W0 > 0.09  # neighbouring tiles differ by far more than the tolerance


def test_tissue_filter_batches_and_prefetch_agree(cells_slide):
    # tissue only in the left half of the slide, as a coarse mask
    mask = np.zeros((H0 // 16 + 1, W0 // 16 + 1), bool)
    mask[:, : mask.shape[1] // 2] = True
    tm = TissueMask(mask=mask, downsample=(16.0, 16.0), slide_dimensions=(W0, H0), mpp=(MPP0, MPP0), threshold=0.1)
    runs = [run_tiles(cells_slide, decode_model, TILE, 0.5, batch_size=b, tissue_mask=tm, prefetch=p)
            for b, p in [(1, 0), (7, 2), (64, 1)]]
    ref = runs[0]
    for r in runs[1:]:
        np.testing.assert_array_equal(r.heatmaps, ref.heatmaps)
    ran = ~np.isnan(ref.heatmaps[0])
    frac = tm.fraction_in_rects(plan_tiles(cells_slide, TILE, 0.5, tissue_mask=None).rects0()).reshape(ROWS, COLS)
    np.testing.assert_array_equal(ran, frac >= 0.5)
    assert ran.any() and not ran.all()
    assert ref.n_tiles == ran.sum() and len(ref.plan) == ran.sum()


def test_reads_one_region_per_row_run(cells_slide):
    calls = []
    orig = cells_slide.read_level

    def counting(*a, **k):
        calls.append(a)
        return orig(*a, **k)

    cells_slide.read_level = counting
    try:
        plan = plan_tiles(cells_slide, TILE, 0.5, tissue_mask=None)
        tiles = read_tiles(cells_slide, plan, np.arange(len(plan)))
    finally:
        del cells_slide.read_level
    assert len(calls) == ROWS  # one read per grid row, not one per tile
    assert tiles.shape == (ROWS * COLS, TILE, TILE, 3)
    # a tile read in a row block equals the same tile read alone
    single = cells_slide.read_region((3 * 64, 2 * 64), 1, (TILE, TILE))
    np.testing.assert_array_equal(tiles[2 * COLS + 3], single)


def test_long_runs_are_split_to_bound_memory(cells_slide, monkeypatch):
    import imaging_assist.slides.tiling as tiling
    plan = plan_tiles(cells_slide, TILE, 0.5, tissue_mask=None)
    whole = read_tiles(cells_slide, plan)
    monkeypatch.setattr(tiling, "MAX_RUN_BYTES", 3 * TILE * TILE * 3)  # three tiles per read
    np.testing.assert_array_equal(read_tiles(cells_slide, plan), whole)


def test_progress_and_cancel(cells_slide):
    seen = []
    res = run_tiles(cells_slide, decode_model, TILE, 0.5, batch_size=10, tissue_mask=None,
                    progress=lambda d, n: seen.append((d, n)))
    n = ROWS * COLS
    assert seen[0] == (0, n) and seen[-1] == (n, n)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert not res.cancelled

    stop = threading.Event()

    def model_then_cancel(x):
        stop.set()
        return decode_model(x)

    res = run_tiles(cells_slide, model_then_cancel, TILE, 0.5, batch_size=10, tissue_mask=None, cancel=stop)
    assert res.cancelled and res.n_tiles == 10
    assert np.isfinite(res.heatmaps[0]).sum() == 10
    assert any("cancelled after 10" in w for w in res.warnings)
    # a callable works as well
    res = run_tiles(cells_slide, decode_model, TILE, 0.5, tissue_mask=None, cancel=lambda: True)
    assert res.cancelled and res.n_tiles == 0


def test_bad_model_output_is_a_user_error(cells_slide):
    with pytest.raises(SlideError, match="expected \\(N, C\\)"):
        run_tiles(cells_slide, lambda x: np.zeros((3, 2)), TILE, 0.5, batch_size=4, tissue_mask=None)
    with pytest.raises(SlideError, match="class names"):
        run_tiles(cells_slide, decode_model, TILE, 0.5, tissue_mask=None, class_names=["a", "b"])


def test_areas_and_top_tiles(cells_slide):
    res = run_tiles(cells_slide, decode_model, TILE, 0.5, tissue_mask=None, class_names=["row", "col", "rest"],
                    top_k=3)
    assert res.area_unit == "mm2" and res.area_mm2 is not None
    # areas cover the slide once (no mask: tiles count up to the slide edge), split by argmax
    total = sum(res.area_px.values())
    assert total == pytest.approx(W0 * H0)
    assert sum(res.area_mm2.values()) == pytest.approx(W0 * H0 * MPP0 * MPP0 * 1e-6)
    arg = np.argmax(res.probs, axis=1)
    assert res.area_px["rest"] > 0 and (arg == 2).sum() > 0
    top = res.top_tiles["row"]
    assert len(top) == 3 and top[0].score >= top[1].score >= top[2].score
    assert top[0].row == ROWS - 1 or top[0].score == pytest.approx(res.heatmaps[0][:-1].max())
    assert (top[0].x, top[0].y, top[0].w) == (top[0].col * 64, top[0].row * 64, 64)
    d = res.to_dict()
    assert d["area_unit"] == "mm2" and d["n_tiles"] == ROWS * COLS


def test_missing_mpp_warns_and_gives_pixels(tmp_path):
    p = tmp_path / "cells.png"
    Image.fromarray(cell_image()).save(p)
    with open_slide(p) as s:
        with pytest.warns(MissingMPPWarning):
            res = run_tiles(s, decode_model, 64, 0.5, tissue_mask=None)
    assert res.area_mm2 is None and res.area_unit == "px" and res.areas == res.area_px
    assert sum(res.area_px.values()) == pytest.approx(W0 * H0)
    assert res.plan.downsample == (1.0, 1.0) and res.mpp is None
    assert any("no microns-per-pixel" in w for w in res.warnings)
    assert any("requested 0.5" in w for w in res.warnings)
    rr, cc = np.mgrid[0:ROWS, 0:COLS]
    inner = (rr < ROWS - 1) & (cc < COLS - 1)
    np.testing.assert_allclose(res.heatmaps[0][inner], rr[inner] / 100, atol=1e-6)


def test_torch_module_gets_tensors(cells_slide):
    import torch

    class M(torch.nn.Module):
        def forward(self, x):
            assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape[1:] == (3, TILE, TILE)
            assert not torch.is_grad_enabled()
            return torch.softmax(x.mean(dim=(2, 3)), dim=1)

    res = run_tiles(cells_slide, M(), TILE, 0.5, batch_size=16, tissue_mask=None)
    assert res.probs.shape == (ROWS * COLS, 3)
    np.testing.assert_allclose(res.probs.sum(axis=1), 1, atol=1e-5)


def test_heatmap_files_round_trip(cells_slide, tmp_path):
    mask = np.ones((H0 // 16, W0 // 16), bool)
    mask[:10] = False
    tm = TissueMask(mask=mask, downsample=(W0 / mask.shape[1], H0 / mask.shape[0]), slide_dimensions=(W0, H0),
                    mpp=(MPP0, MPP0), threshold=0.1)
    res = run_tiles(cells_slide, decode_model, TILE, 0.5, tissue_mask=tm, class_names=["r", "c", "x"])
    assert np.isnan(res.heatmaps).any()
    written = write_heatmaps(res, tmp_path / "heat.tif", overview_png=True, slide=cells_slide)
    arr, meta = read_heatmaps(written[0])
    np.testing.assert_array_equal(np.isnan(arr), np.isnan(res.heatmaps))
    np.testing.assert_array_equal(np.nan_to_num(arr), np.nan_to_num(res.heatmaps))
    assert meta["class_names"] == ["r", "c", "x"] and meta["downsample"] == [64.0, 64.0]
    assert meta["slide_mpp"] == [MPP0, MPP0]
    import tifffile
    with tifffile.TiffFile(written[0]) as t:
        page = t.pages[0]
        assert page.tags["ResolutionUnit"].value == 3   # centimetre
        xres = page.tags["XResolution"].value
        assert xres[0] / xres[1] == pytest.approx(1e4 / (MPP0 * 64))  # px/cm of 16 µm heat-map pixels
    png = Image.open(written[1])
    assert png.size[0] <= 1024 and png.mode == "RGB"
    arr2, meta2 = read_heatmaps(write_heatmaps(res, tmp_path / "heat.npz")[0])
    np.testing.assert_array_equal(np.nan_to_num(arr2), np.nan_to_num(res.heatmaps))
    same = lambda m: {k: v for k, v in m.items() if k not in ("slide_key", "content_sha256")}  # noqa: E731
    assert same(meta2) == same(meta)
    # written with its slide, the TIFF records the slide's identity; the NPZ above was not
    assert "slide_key" in meta and "slide_key" not in meta2
    layers = res.to_layers()
    assert [l.name for l in layers] == ["r", "c", "x"] and layers[0].array.shape[-2:] == (ROWS, COLS)
    with pytest.raises(SlideError, match=".tif/.tiff or .npz"):
        write_heatmaps(res, tmp_path / "heat.jpg")


def test_large_heatmap_tiff_is_pyramidal(cells_slide, tmp_path):
    import dataclasses

    import tifffile
    res = run_tiles(cells_slide, decode_model, TILE, 0.5, tissue_mask=None)
    big = np.random.default_rng(0).random((3, 600, 700)).astype(np.float32)
    big[:, :50] = np.nan
    # a finer grid on the same slide (the file reader checks that the grid lies on its slide)
    res = dataclasses.replace(res, heatmaps=big, downsample=(W0 / 700, H0 / 600), origin=(0.0, 0.0))
    path = write_heatmaps(res, tmp_path / "big.tiff")[0]
    arr, meta = read_heatmaps(path)
    np.testing.assert_array_equal(np.isnan(arr), np.isnan(big))
    np.testing.assert_array_equal(np.nan_to_num(arr), np.nan_to_num(big))
    with tifffile.TiffFile(path) as t:
        levels = t.series[0].levels
        assert [lv.shape[-2:] for lv in levels] == [(600, 700), (300, 350), (150, 175)]
        assert levels[0].pages[0].is_tiled
        low = levels[1].asarray()
        assert np.isnan(low[:, :25]).all() and np.isfinite(low[:, 25:]).all()


def test_layers_carry_their_slide_placement():
    import imaging_assist.slides.tiling as T
    res = T.TileResult.__new__(T.TileResult)
    res.heatmaps = np.zeros((2, 3, 4), np.float32)
    res.class_names = ["a", "b"]
    res.downsample = (448.0, 448.0)
    res.origin = (100.0, 50.0)
    layers = res.to_layers()
    assert [lay.downsample for lay in layers] == [(448.0, 448.0)] * 2
    assert layers[1].origin == (100.0, 50.0)
