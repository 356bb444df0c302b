"""Write / read tiled-inference heat maps.

* ``.tif``/``.tiff``: a pyramidal TIFF (tifffile): float32 planes ``(C, rows, cols)``, 256 px
  tiles, zlib, reduced levels in SubIFDs down to <= 256 px, X/YResolution in pixels per cm
  when the slide has MPP (ResolutionUnit NONE otherwise), and a JSON description with class
  names, level-0 downsample, origin and slide size so the map can be put back on the slide.
* ``.npz``: the same arrays and metadata with NumPy.
* :func:`write_overview_png`: slide thumbnail with the most probable class coloured in,
  brightness by probability (a quick look; not for measurement).
"""

from __future__ import annotations

import json
import os

import numpy as np

from .reader import SlideError

FORMAT_TAG = "imaging-assist-heatmap"
FORMAT_VERSION = 1


def _meta(result) -> dict:
    return {"format": FORMAT_TAG, "version": FORMAT_VERSION, "class_names": list(result.class_names),
            "downsample": [float(v) for v in result.downsample], "origin": [float(v) for v in result.origin],
            "slide_dimensions": [int(v) for v in result.slide_dimensions],
            "slide_mpp": [float(v) for v in result.slide_mpp] if result.slide_mpp else None,
            "tile_mpp": result.mpp, "tile_px": result.plan.tile_px,
            "area_unit": result.area_unit, "areas": result.areas,
            "top_tiles": {k: [t.to_dict() for t in v] for k, v in result.top_tiles.items()},
            "cancelled": bool(result.cancelled), "warnings": list(result.warnings)}


def write_heatmaps(result, path: str | os.PathLike, *, overview_png: bool | str = False, slide=None) -> list[str]:
    """Write ``result`` (a :class:`~imaging_assist.slides.tiling.TileResult`) to ``path``.

    The format follows the extension (``.tif``/``.tiff`` or ``.npz``).  With ``overview_png``
    (True, or a path) a PNG overview is written too (needs ``slide`` for the background).
    Returns the paths written.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    meta = _meta(result)
    heat = np.ascontiguousarray(result.heatmaps, dtype=np.float32)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if ext in (".tif", ".tiff"):
        _write_tiff(path, heat, meta, result.heatmap_mpp())
    elif ext == ".npz":
        np.savez_compressed(path, heatmaps=heat, coords=result.coords, cells=result.cells,
                            probs=result.probs, tissue_fraction=result.tissue_fraction,
                            metadata=np.array(json.dumps(meta)))
    else:
        raise SlideError(f"{path}: heat maps are written as .tif/.tiff or .npz, not {ext or 'no extension'}")
    written = [path]
    if overview_png:
        png = overview_png if isinstance(overview_png, str) else os.path.splitext(path)[0] + "_overview.png"
        written.append(write_overview_png(result, png, slide=slide))
    return written


def _write_tiff(path: str, heat: np.ndarray, meta: dict, mpp_hm) -> None:
    import tifffile
    from PIL import Image

    c, h, w = heat.shape
    levels = [heat]
    while max(levels[-1].shape[1:]) > 256:
        prev = levels[-1]
        nh, nw = max(1, prev.shape[1] // 2), max(1, prev.shape[2] // 2)
        # Pillow's float 'F' mode resize (box) per plane; NaN-aware: average the finite ones.
        planes = []
        for p in prev:
            finite = np.isfinite(p)
            num = np.asarray(Image.fromarray(np.where(finite, p, 0).astype(np.float32)).resize(
                (nw, nh), Image.Resampling.BOX))
            den = np.asarray(Image.fromarray(finite.astype(np.float32)).resize((nw, nh), Image.Resampling.BOX))
            with np.errstate(invalid="ignore", divide="ignore"):
                planes.append(np.where(den > 0, num / np.maximum(den, 1e-12), np.nan).astype(np.float32))
        levels.append(np.stack(planes))
    if mpp_hm is not None:
        res = (1e4 / mpp_hm[0], 1e4 / mpp_hm[1])  # pixels per cm
        unit = "CENTIMETER"
    else:
        res, unit = (1.0, 1.0), "NONE"
    tile = (256, 256) if min(h, w) >= 16 else None
    with tifffile.TiffWriter(path, bigtiff=heat.nbytes > 2**31) as tw:
        for i, lev in enumerate(levels):
            f = 2 ** i
            kw = dict(photometric="minisblack", planarconfig="separate", compression="zlib",
                      resolution=(res[0] / f, res[1] / f), resolutionunit=unit,
                      tile=tile if min(lev.shape[1:]) >= 16 else None)
            if i == 0:
                tw.write(lev, subifds=len(levels) - 1, description=json.dumps(meta), metadata=None,
                         software="imaging-assist", **kw)
            else:
                tw.write(lev, subfiletype=1, metadata=None, **kw)


def read_heatmaps(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """(heatmaps (C, rows, cols) float32, metadata dict) from a file written by :func:`write_heatmaps`."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return z["heatmaps"], json.loads(str(z["metadata"]))
    import tifffile
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        try:
            meta = json.loads(page.description)
        except (TypeError, ValueError):
            raise SlideError(f"{path}: not an imaging-assist heat-map TIFF") from None
        if meta.get("format") != FORMAT_TAG:
            raise SlideError(f"{path}: not an imaging-assist heat-map TIFF")
        arr = page.asarray()
    if arr.ndim == 2:
        arr = arr[None]
    return arr.astype(np.float32), meta


def write_overview_png(result, path: str | os.PathLike, *, slide=None, max_size: int = 1024,
                       opacity: float = 0.55) -> str:
    """PNG: thumbnail (if ``slide``) with the argmax class colour, alpha by its probability."""
    from PIL import Image

    from ..colormaps import label_color

    path = os.fspath(path)
    heat = result.heatmaps
    c, rows, cols = heat.shape
    w0, h0 = result.slide_dimensions
    scale = min(max_size / w0, max_size / h0, 1.0)
    tw, th = max(1, round(w0 * scale)), max(1, round(h0 * scale))
    if slide is not None:
        base = Image.fromarray(slide.get_thumbnail((tw, th))).resize((tw, th)).convert("RGB")
    else:
        base = Image.new("RGB", (tw, th), (255, 255, 255))
    finite = np.isfinite(heat).any(axis=0)
    filled = np.where(np.isfinite(heat), heat, -np.inf)
    arg = filled.argmax(axis=0)
    best = np.where(finite, filled.max(axis=0), 0.0)
    palette = np.array([label_color(i + 1) for i in range(c)], np.uint8)
    rgba = np.zeros((rows, cols, 4), np.uint8)
    rgba[..., :3] = palette[arg]
    rgba[..., 3] = np.where(finite, np.clip(best, 0, 1) * 255 * opacity, 0).astype(np.uint8)
    # Place the grid on the thumbnail: heat-map pixel = downsample level-0 px from origin.
    dx, dy = result.downsample
    ox, oy = result.origin
    gw, gh = cols * dx * scale, rows * dy * scale
    over = Image.fromarray(rgba, "RGBA").resize((max(1, round(gw)), max(1, round(gh))), Image.Resampling.NEAREST)
    layer = Image.new("RGBA", (tw, th), (0, 0, 0, 0))
    layer.paste(over, (round(ox * scale), round(oy * scale)))
    out = Image.alpha_composite(base.convert("RGBA"), layer).convert("RGB")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    out.save(path)
    return path
