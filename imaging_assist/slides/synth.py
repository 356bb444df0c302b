"""Synthetic slides with known content, for tests and benchmarks (no real patient data).

* :func:`pattern_rgb` - a pixel pattern that is a known function of level-0 position
  (exact checks with lossless codecs; a smooth variant for JPEG tolerance checks).
* :func:`make_levels` - a dyadic pyramid by 2x2 box averaging (Pillow ``reduce``).
* :func:`write_pyramid_tiff` - tiled TIFF pyramid: levels in the main IFD chain (what
  OpenSlide's generic-tiff reads) or in SubIFDs / as OME-TIFF (what tifffile reads).
* :func:`tissue_phantom` - H&E-coloured blobs on glass, with a hole and specks, plus the
  true tissue mask (holes filled, specks excluded).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np


def pattern_rgb(h: int, w: int, x0: int = 0, y0: int = 0, smooth: bool = False) -> np.ndarray:
    """(h, w, 3) uint8: pixel at level-0 (x, y) = f(x, y)."""
    y = np.arange(y0, y0 + h, dtype=np.int64)[:, None]
    x = np.arange(x0, x0 + w, dtype=np.int64)[None, :]
    if smooth:
        r = 128 + 90 * np.sin(x / 37.0) * np.ones_like(y)
        g = 128 + 90 * np.cos(y / 29.0) * np.ones_like(x)
        b = 128 + 60 * np.sin((x + y) / 53.0)
        return np.stack([r, g, b], -1).round().astype(np.uint8)
    r = (x % 251) * np.ones_like(y)
    g = (y % 241) * np.ones_like(x)
    b = (x // 3 + 2 * y) % 256
    return np.stack([r, g, b], -1).astype(np.uint8)


def make_levels(base: np.ndarray, min_size: int = 128) -> list[np.ndarray]:
    """[base, base/2, base/4, ...] (floor sizes, 2x2 box means) while the longest side > min_size."""
    from PIL import Image
    levels = [base]
    while max(levels[-1].shape[:2]) > min_size and min(levels[-1].shape[:2]) >= 2:
        a = levels[-1]
        h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
        levels.append(np.asarray(Image.fromarray(np.ascontiguousarray(a[:h, :w])).reduce(2)))
    return levels


def write_pyramid_tiff(path: str | os.PathLike, levels: Sequence[np.ndarray], *, tile: int = 128,
                       compression: str | None = "zlib", mpp: float | None = 0.5, layout: str = "chain",
                       associated: dict[str, np.ndarray] | None = None, jpeg_quality: int = 90) -> str:
    """Write ``levels`` as a tiled TIFF pyramid.

    ``layout``: "chain" (levels as successive IFDs flagged reduced-resolution: generic
    TIFF, readable by OpenSlide and tifffile), "subifds" (levels in SubIFDs of the base
    page) or "ome" (OME-TIFF with SubIFDs, PhysicalSize in µm).
    ``associated``: extra small images ('label', 'macro') stored after the pyramid; their
    ImageDescription / OME name carries the name.
    """
    import tifffile

    path = os.fspath(path)
    comp_args = {"level": jpeg_quality} if compression == "jpeg" else None
    w0 = levels[0].shape[1]

    def res(i):
        if mpp is None:
            return None, None
        f = w0 / levels[i].shape[1]
        return (1e4 / (mpp * f), 1e4 / (mpp * f)), "CENTIMETER"

    common = dict(tile=(tile, tile), compression=compression, compressionargs=comp_args, photometric="rgb")
    with tifffile.TiffWriter(path, bigtiff=False, ome=(layout == "ome")) as tw:
        if layout == "chain":
            for i, a in enumerate(levels):
                r, u = res(i)
                tw.write(a, subfiletype=1 if i else 0, resolution=r, resolutionunit=u, metadata=None,
                         description="pyramid level" if i else None, **common)
        elif layout in ("subifds", "ome"):
            r, u = res(0)
            meta = None
            if layout == "ome":
                meta = {"axes": "YXS", "Name": "slide"}
                if mpp is not None:
                    meta.update(PhysicalSizeX=mpp, PhysicalSizeY=mpp, PhysicalSizeXUnit="µm",
                                PhysicalSizeYUnit="µm")
            tw.write(levels[0], subifds=len(levels) - 1, resolution=r, resolutionunit=u, metadata=meta,
                     **common)
            for i, a in enumerate(levels[1:], 1):
                r, u = res(i)
                tw.write(a, subfiletype=1, resolution=r, resolutionunit=u, metadata=None, **common)
        else:
            raise ValueError(f"unknown layout {layout!r}")
        for name, img in (associated or {}).items():
            if layout == "ome":
                tw.write(img, photometric="rgb", compression="zlib", metadata={"axes": "YXS", "Name": name})
            else:
                tw.write(img, photometric="rgb", compression="zlib", description=name, metadata=None,
                         subfiletype=1 if name == "label" else 9)
    return path


def _ellipse(h, w, cy, cx, ry, rx, angle=0.0):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    ca, sa = np.cos(angle), np.sin(angle)
    u = ((x - cx) * ca + (y - cy) * sa) / rx
    v = (-(x - cx) * sa + (y - cy) * ca) / ry
    return u * u + v * v <= 1.0


def tissue_phantom(h: int = 1200, w: int = 1600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """(rgb, truth_mask, info): H&E-like blobs on white glass.

    One blob has a glass hole inside (truth: filled); small specks of stain lie on the glass
    (truth: not tissue).  ``info`` holds the hole and speck masks.
    """
    rng = np.random.default_rng(seed)
    blobs = (_ellipse(h, w, 0.35 * h, 0.3 * w, 0.22 * h, 0.18 * w, 0.3)
             | _ellipse(h, w, 0.65 * h, 0.68 * w, 0.2 * h, 0.24 * w, -0.5)
             | _ellipse(h, w, 0.8 * h, 0.22 * w, 0.1 * h, 0.12 * w, 0.0))
    hole = _ellipse(h, w, 0.65 * h, 0.68 * w, 0.05 * h, 0.06 * w, 0.2)
    from scipy import ndimage as ndi
    near = ndi.distance_transform_edt(~blobs) < 12  # specks lie on open glass
    specks = np.zeros((h, w), bool)
    yy, xx = np.mgrid[-4:5, -4:5]
    for _ in range(25):
        cy, cx = int(rng.uniform(0.03, 0.97) * h), int(rng.uniform(0.03, 0.97) * w)
        r = rng.uniform(1.5, 3.5)
        disk = (yy * yy + xx * xx) <= r * r
        win = (slice(cy - 4, cy + 5), slice(cx - 4, cx + 5))
        if not near[win].any():
            specks[win] |= disk
    tissue_drawn = blobs & ~hole
    rgb = np.empty((h, w, 3), np.float32)
    rgb[:] = (242, 242, 240)  # glass
    # H&E: mix of eosin pink and haematoxylin purple with texture
    t = rng.random((h // 8 + 1, w // 8 + 1)).repeat(8, 0).repeat(8, 1)[:h, :w]
    pink = np.array([225, 140, 180], np.float32)
    purple = np.array([120, 70, 160], np.float32)
    col = pink[None, None] * (1 - t[..., None] * 0.6) + purple[None, None] * (t[..., None] * 0.6)
    rgb[tissue_drawn] = col[tissue_drawn]
    rgb[specks] = purple
    rgb += rng.normal(0, 4, rgb.shape).astype(np.float32)
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    return rgb, blobs.copy(), {"hole": hole, "specks": specks}
