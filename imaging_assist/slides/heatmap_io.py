"""Write / read tiled-inference heat maps.

* ``.tif``/``.tiff``: a pyramidal TIFF (tifffile): float32 planes ``(C, rows, cols)`` (one plane,
  of a one-label model: a 2-D page, read back as ``(1, rows, cols)``), 256 px tiles, zlib,
  reduced levels in SubIFDs down to <= 256 px, X/YResolution in pixels per cm when the slide
  has MPP (ResolutionUnit NONE otherwise), and a JSON description with class names, level-0
  downsample, origin and slide size so the map can be put back on the slide.
* ``.npz``: the same arrays and metadata with NumPy.
* Both are written beside the target and renamed when complete: a failed write leaves no file.
* :func:`write_overview_png`: slide thumbnail with the most probable class coloured in,
  brightness by probability (a quick look; not for measurement).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tokenize
import zipfile
import zlib

import numpy as np

from ..jsonvalues import is_number, is_whole
from .base import HEATMAP_FORMAT_TAG as FORMAT_TAG
from .base import MAX_SIDE, SlideError

FORMAT_VERSION = 2  # 2: grid_shape, slide_key and content_sha256 (required); 1 is still read


def _meta(result) -> dict:
    return {"format": FORMAT_TAG, "version": FORMAT_VERSION, "class_names": list(result.class_names),
            "downsample": [float(v) for v in result.downsample], "origin": [float(v) for v in result.origin],
            "slide_dimensions": [int(v) for v in result.slide_dimensions],
            "grid_shape": [int(v) for v in np.shape(result.heatmaps)[-2:]],
            "slide_mpp": [float(v) for v in result.slide_mpp] if result.slide_mpp else None,
            "tile_mpp": result.mpp, "tile_px": result.plan.tile_px,
            "area_unit": result.area_unit, "areas": result.areas,
            "top_tiles": {k: [t.to_dict() for t in v] for k, v in result.top_tiles.items()},
            "cancelled": bool(result.cancelled), "warnings": list(result.warnings)}


def write_heatmaps(result, path: str | os.PathLike, *, overview_png: bool | str = False, slide=None) -> list[str]:
    """Write ``result`` (a :class:`~imaging_assist.slides.tiling.TileResult`) to ``path``.

    The format follows the extension (``.tif``/``.tiff`` or ``.npz``).  With ``overview_png``
    (True, or a path) a PNG overview is written too (needs ``slide`` for the background).
    With ``slide`` the file records the slide's identity (:func:`~.annotations.slide_key`).
    Returns the paths written.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    meta = _meta(result)
    if slide is not None and getattr(slide, "path", None):
        from .annotations import slide_key
        # the slide's identity, so that the map is only ever put back on this slide (read_heatmaps)
        meta["slide_key"] = slide_key(slide.path)
    heat = np.ascontiguousarray(result.heatmaps, dtype=np.float32)
    meta["content_sha256"] = _digest(heat, meta)
    if ext not in (".tif", ".tiff", ".npz"):
        raise SlideError(f"{path}: heat maps are written as .tif/.tiff or .npz, not {ext or 'no extension'}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # written beside it and renamed when complete (outputs.written_beside): a failure never leaves
    # a broken heat-map file, and a link planted under the name is replaced, never written through
    from ..outputs import written_beside

    with written_beside(path) as tmp:
        if ext == ".npz":
            with open(tmp, "wb") as f:  # a file object: numpy adds no ".npz" to the name
                np.savez_compressed(f, heatmaps=heat, coords=result.coords, cells=result.cells,
                                    probs=result.probs, tissue_fraction=result.tissue_fraction,
                                    metadata=np.array(json.dumps(meta)))
        else:
            _write_tiff(str(tmp), heat, meta, result.heatmap_mpp())
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
            kw = dict(photometric="minisblack", compression="zlib",
                      resolution=(res[0] / f, res[1] / f), resolutionunit=unit,
                      tile=tile if min(lev.shape[1:]) >= 16 else None)
            if c == 1:  # one plane (a one-label model): a 2-D page, read back as (1, rows, cols)
                lev = lev[0]
            else:
                kw["planarconfig"] = "separate"
            if i == 0:
                tw.write(lev, subifds=len(levels) - 1, description=json.dumps(meta), metadata=None,
                         software="imaging-assist", **kw)
            else:
                tw.write(lev, subfiletype=1, metadata=None, **kw)


def read_heatmaps(path: str | os.PathLike, *, slide_dimensions=None, slide_key: str | None = None
                  ) -> tuple[np.ndarray, dict]:
    """(heatmaps (C, rows, cols) float32, metadata dict) from a file written by :func:`write_heatmaps`.

    Everything that places the map on a slide is checked before it is used, so a damaged or
    edited file is refused in one line (:class:`SlideError`) rather than drawn on the wrong
    pixels: the declared array size (before anything is decoded), class names one per plane,
    downsample, origin and grid inside the slide, probabilities in 0..1 (NaN: no tile), top
    tiles inside the grid.  With ``slide_dimensions`` (and ``slide_key``, :func:`slide_key` of
    the open slide) the map must have been made for that slide.  ``meta["load_warnings"]``
    lists what the reader should know (a file that does not record its slide's identity)."""
    path = os.fspath(path)
    name = os.path.basename(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npz", ".tif", ".tiff"):
        raise SlideError(f"{name}: heat maps are read from .tif/.tiff or .npz files, not {ext or 'no extension'}")
    try:
        if ext == ".npz":
            heat, meta = _read_npz(path, name)
        else:
            heat, meta = _read_tiff(path, name)
    except SlideError:
        raise
    except MemoryError:
        raise SlideError(f"{name}: not enough memory to read the heat map") from None
    except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, struct.error, zipfile.BadZipFile,
            zlib.error, RecursionError, RuntimeError, SyntaxError, tokenize.TokenError, ArithmeticError) as e:
        # what numpy (its .npy header is a Python literal), zipfile, tifffile and imagecodecs raise
        # on damaged bytes (found by flipping bytes of real files: tests/test_heatmap_file.py)
        kind = "zlib" if isinstance(e, zlib.error) else type(e).__name__
        raise SlideError(f"{name}: not a readable heat-map file ({kind}: {_first_line(e)})") from None
    heat = _check(heat, meta, name)
    meta["load_warnings"] = _check_slide(meta, name, slide_dimensions, slide_key)
    return heat, meta


def describe_heatmap(path: str | os.PathLike, slide_dimensions=None, slide_key: str | None = None) -> dict:
    """What ``info HEATMAP [--slide SLIDE]`` prints: the checked file's classes, grid, the slide it
    was made for and per-class value ranges; given a slide's dimensions and key, whether it fits
    that slide (SlideError, as the viewer's Load heat map, when it does not)."""
    dims, key = slide_dimensions, slide_key
    heat, meta = read_heatmaps(path, slide_dimensions=dims, slide_key=key)
    c, rows, cols = heat.shape
    classes = []
    for name, plane in zip(meta["class_names"], heat):
        fin = plane[np.isfinite(plane)]
        classes.append({"name": name, "cells_with_a_tile": int(fin.size),
                        "min": float(fin.min()) if fin.size else None,
                        "max": float(fin.max()) if fin.size else None,
                        "mean": float(fin.mean()) if fin.size else None})
    return {"file": os.fspath(path), "format_version": meta["version"],
            "checksum": "verified" if meta.get("content_sha256") else "none (format 1)",
            "grid": [rows, cols], "cell_level0_px": meta["downsample"], "origin_level0_px": meta["origin"],
            "tile_mpp": meta.get("tile_mpp"), "slide_dimensions": meta["slide_dimensions"],
            "slide_mpp": meta.get("slide_mpp"), "slide_key": meta.get("slide_key"),
            "classes": classes, "cancelled": bool(meta.get("cancelled")),
            "warnings": [str(w) for w in meta.get("warnings") or []],
            "fits_slide": None if dims is None else True, "load_warnings": meta["load_warnings"]}


# ------------------------------------------------------------------ reading and checking
MAX_HEATMAP_BYTES = 1 << 30        # float32 planes: 268 M cells (a 40x slide at 224 px tiles has ~0.1 M)
MAX_META_CHARS = 16 << 20          # the JSON description (top tiles, warnings)
MAX_CLASSES = 1000
PROB_TOLERANCE = 1e-4              # float32 rounding of probabilities near 0 and 1


def _digest(heat: np.ndarray, meta: dict) -> str:
    """sha256 over the metadata (canonical JSON, without this digest) and the float32 planes:
    any damaged or edited byte that still decodes is caught, not drawn."""
    h = hashlib.sha256(b"imaging-assist heatmap v1\0")
    h.update(json.dumps({k: v for k, v in meta.items() if k not in ("content_sha256", "load_warnings")},
                        sort_keys=True, separators=(",", ":")).encode("utf-8"))
    h.update(np.ascontiguousarray(heat, dtype="<f4").tobytes())
    return h.hexdigest()


def _first_line(e) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else "")[:160]


def _check_declared(shape, dtype, name: str) -> None:
    """The declared array, before a byte of it is decoded (a header cannot make us allocate)."""
    shape = tuple(int(v) for v in shape)
    if len(shape) == 2:
        shape = (1,) + shape
    if len(shape) != 3 or min(shape) < 1:
        raise SlideError(f"{name}: the heat map has shape {shape}, not (classes, rows, columns)")
    if np.dtype(dtype).kind != "f":
        raise SlideError(f"{name}: the heat map holds {np.dtype(dtype)} values, not probabilities")
    n = shape[0] * shape[1] * shape[2] * 4
    if n > MAX_HEATMAP_BYTES:
        raise SlideError(f"{name}: the heat map declares {shape[0]} x {shape[1]} x {shape[2]} values "
                         f"({n / 2**30:.1f} GiB as float32; at most {MAX_HEATMAP_BYTES >> 30} GiB): damaged file?")


def _read_npz(path: str, name: str) -> tuple[np.ndarray, dict]:
    # zipfile + numpy's own header reader: the shape is known before the array is inflated
    with zipfile.ZipFile(path) as zf:
        members = set(zf.namelist())
        if not {"heatmaps.npy", "metadata.npy"} <= members:
            raise SlideError(f"{name}: not an imaging-assist heat-map file (no heatmaps / metadata arrays)")
        for member in ("heatmaps.npy", "metadata.npy"):
            with zf.open(member) as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _fortran, dtype = read_header(f)
            if member == "heatmaps.npy":
                _check_declared(shape, dtype, name)
            elif dtype.kind != "U" or shape != () or dtype.itemsize > MAX_META_CHARS * 4:
                raise SlideError(f"{name}: its metadata is not one JSON text")
    with np.load(path, allow_pickle=False) as z:
        heat = z["heatmaps"]
        text = str(z["metadata"])
    return heat, _meta_from_text(text, name)


def _read_tiff(path: str, name: str) -> tuple[np.ndarray, dict]:
    import tifffile
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        desc = page.description
        if not isinstance(desc, str) or len(desc) > MAX_META_CHARS:
            raise SlideError(f"{name}: not an imaging-assist heat-map TIFF")
        meta = _meta_from_text(desc, name)
        _check_declared(page.shape, page.dtype, name)
        heat = page.asarray()
        if heat.shape != tuple(page.shape):
            raise SlideError(f"{name}: the heat map decodes to {heat.shape}, not the declared {page.shape}: damaged file")
    return heat, meta


def _meta_from_text(text: str, name: str) -> dict:
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_TAG:
        raise SlideError(f"{name}: not an imaging-assist heat-map file")
    v = meta.get("version")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise SlideError(f"{name}: the heat-map file has no format version")
    if v > FORMAT_VERSION:
        raise SlideError(f"{name}: written by a newer version of imaging-assist (heat-map format {v}; "
                         f"this one reads {FORMAT_VERSION})")
    return meta


def _pair(meta: dict, key: str, name: str, *, positive: bool, integer: bool = False) -> tuple:
    v = meta.get(key)
    ok = isinstance(v, (list, tuple)) and len(v) == 2 and all(
        (is_whole if integer else is_number)(x, 0) and (x > 0 or not positive) for x in v)
    if not ok:
        raise SlideError(f"{name}: {key.replace('_', ' ')} {str(v)[:60]} is not two "
                         f"{'positive' if positive else 'non-negative'} {'integers' if integer else 'numbers'}")
    return (int(v[0]), int(v[1])) if integer else (float(v[0]), float(v[1]))


def _check(heat: np.ndarray, meta: dict, name: str) -> np.ndarray:
    """``heat`` as (C, rows, cols) float32, after checking it and ``meta`` against each other;
    SlideError naming the first problem."""
    heat = np.asarray(heat[None] if heat.ndim == 2 else heat, np.float32)
    if heat.ndim != 3 or not heat.size:
        raise SlideError(f"{name}: the heat map has shape {heat.shape}, not (classes, rows, columns)")
    c, rows, cols = heat.shape
    digest = meta.get("content_sha256")  # first: a damaged file is called that, whatever it broke
    if digest is None and meta["version"] >= 2:
        raise SlideError(f"{name}: the checksum written with it is missing: damaged or edited file")
    if digest is not None and digest != _digest(heat, meta):
        raise SlideError(f"{name}: its content does not match the checksum written with it: damaged or edited file")
    names = meta.get("class_names")
    if (not isinstance(names, list) or not all(isinstance(n, str) and n.strip() and len(n) <= 200 for n in names)
            or len(set(names)) != len(names)):
        raise SlideError(f"{name}: the class names are not a list of distinct names")
    if len(names) != c or c > MAX_CLASSES:
        raise SlideError(f"{name}: {len(names)} class names for {c} heat-map planes")
    ds = _pair(meta, "downsample", name, positive=True)
    ox, oy = _pair(meta, "origin", name, positive=False)
    w0, h0 = _pair(meta, "slide_dimensions", name, positive=True, integer=True)
    if max(w0, h0) > MAX_SIDE:
        raise SlideError(f"{name}: slide dimensions {w0} x {h0} are beyond any slide")
    # the grid as plan_tiles makes it: its first and last cells start inside the slide
    if not (ox < w0 and oy < h0 and ox + (cols - 1) * ds[0] < w0 * (1 + 1e-9)
            and oy + (rows - 1) * ds[1] < h0 * (1 + 1e-9)):
        raise SlideError(f"{name}: its {cols} x {rows} grid of {ds[0]:g} x {ds[1]:g} px cells from "
                         f"({ox:g}, {oy:g}) does not lie on its {w0} x {h0} slide")
    if meta.get("slide_mpp") is not None:
        _pair(meta, "slide_mpp", name, positive=True)
    grid = meta.get("grid_shape")
    if grid is not None and grid != [rows, cols]:
        raise SlideError(f"{name}: its heat map is {rows} x {cols} cells, its metadata says {str(grid)[:40]}: damaged file")
    if np.isinf(heat).any():
        raise SlideError(f"{name}: the heat map holds infinite values, not probabilities")
    finite = heat[np.isfinite(heat)]
    if finite.size and (finite.min() < -PROB_TOLERANCE or finite.max() > 1 + PROB_TOLERANCE):
        raise SlideError(f"{name}: the heat map holds values from {finite.min():.4g} to {finite.max():.4g}, "
                         "not probabilities (0 to 1)")
    top = meta.get("top_tiles")
    if top is None:
        top = {}
    if not isinstance(top, dict):
        raise SlideError(f"{name}: its top tiles are not a table by class")
    for cls, tiles in top.items():
        if cls not in names or not isinstance(tiles, list):
            raise SlideError(f"{name}: top tiles of {str(cls)[:40]!r}, which is not one of its classes")
        for t in tiles:
            ok = isinstance(t, dict) and all(
                isinstance(t.get(k), int) and not isinstance(t.get(k), bool) for k in ("row", "col"))
            sc = t.get("score") if isinstance(t, dict) else None
            if not (ok and 0 <= t["row"] < rows and 0 <= t["col"] < cols
                    and is_number(sc)):
                raise SlideError(f"{name}: a top tile of {cls!r} is not a cell of its {rows} x {cols} grid "
                                 "with a score")
    meta["downsample"], meta["origin"] = list(ds), [ox, oy]
    return heat


def _check_slide(meta: dict, name: str, dims, key: str | None) -> list[str]:
    warns = []
    if dims is not None:
        w0, h0 = meta["slide_dimensions"]
        if (int(w0), int(h0)) != (int(dims[0]), int(dims[1])):
            raise SlideError(f"{name}: the heat map was made for a {w0} × {h0} slide; this one is "
                             f"{dims[0]} × {dims[1]}")
    if key is not None:
        made_for = meta.get("slide_key")
        if isinstance(made_for, str) and made_for:
            if made_for != key:
                raise SlideError(f"{name}: the heat map was made for another slide of the same size "
                                 "(the slide files' contents differ)")
        else:
            warns.append(f"{name} does not record which slide it was made for: placed by the slide's size only")
    return warns


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
    from ..outputs import written_beside

    with written_beside(path) as tmp:  # never through a link planted under the name
        out.save(tmp, format="PNG")
    return path
