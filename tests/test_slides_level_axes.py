"""A pyramid level whose x and y factors differ is not read for a scale it does not reach on
both axes, and an OME-TIFF that gives only PhysicalSizeX says it assumed y (an audit of the
slide readers)."""

import numpy as np
import tifffile

from imaging_assist.slides import open_slide
from imaging_assist.slides.tiling import plan_tiles


def _write(path, levels, ome_meta=None, resolution_mpp=None):
    common = dict(tile=(64, 64), compression="zlib", photometric="rgb")
    w0, h0 = levels[0].shape[1], levels[0].shape[0]
    with tifffile.TiffWriter(path, ome=ome_meta is not None) as tw:
        meta = dict({"axes": "YXS"}, **ome_meta) if ome_meta is not None else None
        res = {}
        if resolution_mpp:
            res = dict(resolution=(1e4 / resolution_mpp, 1e4 / resolution_mpp), resolutionunit="CENTIMETER")
        tw.write(levels[0], subifds=len(levels) - 1, metadata=meta, **res, **common)
        for a in levels[1:]:
            r = {}
            if resolution_mpp:
                r = dict(resolution=(1e4 / (resolution_mpp * w0 / a.shape[1]), 1e4 / (resolution_mpp * h0 / a.shape[0])),
                         resolutionunit="CENTIMETER")
            tw.write(a, subfiletype=1, metadata=None, **r, **common)
    return path


def _rgb(h, w):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_a_level_reduced_more_in_y_is_not_read_for_a_scale_it_does_not_reach(tmp_path):
    """Level 1 is 2x narrower but 3x shorter: for 2.8x tiles its rows would be upsampled
    (0.75 µm/px rows for 0.7 µm/px tiles); the mean factor (2.5) chose it."""
    base = _rgb(960, 1024)
    lv1 = base[::3, ::2].copy()
    path = _write(tmp_path / "s.ome.tif", [base, lv1], ome_meta={"PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
    slide = open_slide(path)
    assert slide.level_scale(1) == (2.0, 3.0)
    plan = plan_tiles(slide, tile_px=64, mpp=0.7, tissue_mask=None)
    assert plan.level == 0
    plan = plan_tiles(slide, tile_px=64, mpp=0.75, tissue_mask=None)  # 3x: level 1 reaches it on both axes
    assert plan.level == 1


def test_ome_physical_size_x_alone_is_said(tmp_path):
    base = _rgb(256, 256)
    path = _write(tmp_path / "x.ome.tif", [base, base[::2, ::2].copy()], ome_meta={"PhysicalSizeX": 0.25})
    slide = open_slide(path)
    assert slide.mpp == (0.25, 0.25)
    assert any("PhysicalSizeY missing" in w for w in slide.warnings), slide.warnings
