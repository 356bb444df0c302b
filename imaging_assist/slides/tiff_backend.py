"""tifffile backend: pyramidal OME-TIFF, generic tiled TIFF (pyramid in the main IFD chain or
in SubIFDs) and plain striped TIFF.

tifffile parses the structure (series, pyramid levels, OME/Aperio metadata) and decodes each
strip/tile with imagecodecs.  Region reads are assembled here from the segments they touch,
instead of through ``TiffPage.asarray`` (which decodes the whole level) or tifffile's zarr
store (which would add the zarr dependency and read tile by tile): one batched file read per
region (``FileHandle.read_segments``), decoding in a small thread pool (imagecodecs releases
the GIL), and an LRU cache of decoded segments so neighbouring reads (row-block tiling,
panning) do not decode the same tile twice.
"""

from __future__ import annotations

import math
import os
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .base import (BackendDeclined, Slide, SlideBackend, SlideReadError, canonical_associated_name,
                   is_tiff_head, to_rgb)
from .threads import map_grouped


class TiffUnsupported(BackendDeclined):
    """The TIFF's layout or codec is not handled by this backend (another may read it)."""


#: Largest decoded strip/tile this backend will decode (a region read decodes whole segments).
#: Real slides use tiles of 256-1024 px; a one-strip 100,000 px image or a damaged TileWidth
#: would need gigabytes for a 10 px read, so such pages are refused when the slide is opened.
MAX_SEGMENT_BYTES = 256 << 20
#: Associated images (label, macro, thumbnail) are decoded whole; real ones are a few Mpx.
MAX_ASSOCIATED_PIXELS = 64 << 20


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2)),
                                       thread_name_prefix="tiff-decode")
        return _POOL


_SPARSE = object()  # marker of a segment the file never wrote (offset and byte count 0)


class _SegmentCache:
    """Thread-safe LRU of decoded segments, bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._d: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
            return v

    def put(self, key, value: np.ndarray) -> None:
        with self._lock:
            if key in self._d:
                return
            self._d[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.max_bytes and self._d:
                _, old = self._d.popitem(last=False)
                self._bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self._bytes = 0


class _Level:
    """One pyramid level backed by one TIFF page (tiles or strips)."""

    def __init__(self, page, file_size: int):
        self.page = page
        self.width = int(page.imagewidth)
        self.height = int(page.imagelength)
        if int(getattr(page, "imagedepth", 1) or 1) != 1:
            raise TiffUnsupported("volumetric (3-D) TIFF pages are not slides")
        self.spp = int(page.samplesperpixel)
        self.separate = page.planarconfig == 2 and self.spp > 1
        if self.width <= 0 or self.height <= 0:
            raise SlideReadError(f"page of {self.width}x{self.height} px has an empty side (damaged file?)")
        if page.is_tiled:
            self.seg_h, self.seg_w = int(page.tilelength), int(page.tilewidth)
            if self.seg_h <= 0 or self.seg_w <= 0:
                raise SlideReadError(f"tiles of {self.seg_w}x{self.seg_h} px (damaged file?)")
        else:
            rps = int(page.rowsperstrip or self.height) or self.height
            self.seg_h, self.seg_w = min(rps, self.height), self.width
        self.nsx = math.ceil(self.width / self.seg_w)
        self.nsy = math.ceil(self.height / self.seg_h)
        self.nseg = self.nsx * self.nsy
        self.offsets = page.dataoffsets
        self.counts = page.databytecounts
        expected = self.nseg * (self.spp if self.separate else 1)
        if len(self.offsets) != expected:
            raise TiffUnsupported(f"unexpected segment count {len(self.offsets)} (expected {expected})")
        # Every written segment must lie inside the file: a cut-off file is an error when it is
        # opened, and a damaged byte count never becomes a huge read buffer.
        offs = np.asarray(self.offsets, np.float64)
        cnts = np.asarray(self.counts, np.float64)
        bad = np.flatnonzero((cnts > 0) & (offs + cnts > file_size))
        if bad.size:
            k = int(bad[0])
            raise SlideReadError(f"{len(bad)} strip(s)/tile(s) lie beyond the end of the {file_size}-byte file "
                                 f"(first: {int(cnts[k])} bytes at offset {int(offs[k])}; truncated or damaged)")
        self.decode = page.decode  # raises on call for unsupported codecs
        self.jpegtables = page.jpegtables
        self.dtype = page.dtype
        if self.dtype is None:
            raise TiffUnsupported("unsupported sample format")
        seg_bytes = self.seg_h * self.seg_w * (1 if self.separate else self.spp) * self.dtype.itemsize
        if seg_bytes > MAX_SEGMENT_BYTES:
            kind = "tile" if page.is_tiled else "strip"
            raise SlideReadError(f"one {kind} of {self.seg_w}x{self.seg_h} px would need "
                                 f"{seg_bytes / 2**20:.0f} MiB to decode (limit {MAX_SEGMENT_BYTES >> 20} MiB); "
                                 "convert it to a tiled TIFF (e.g. vips tiffsave --tile --pyramid)")


class TiffSlide(Slide):
    backend = "tifffile"
    CACHE_BYTES = 192 << 20
    # The file handle is read under a lock, the segment cache is thread-safe and imagecodecs
    # releases the GIL while decoding.
    concurrent_reads = True

    def __init__(self, path: str):
        super().__init__(path)
        import tifffile
        try:
            self._tif = tifffile.TiffFile(self.path)
        except Exception as e:
            raise TiffUnsupported(f"{self.path}: not a readable TIFF ({_one_line(e)})") from None
        try:
            self._setup()
        except TiffUnsupported as e:
            self._tif.close()
            msg = str(e)
            raise TiffUnsupported(msg if msg.startswith(self.path) else f"{self.path}: {msg}") from None
        except SlideReadError as e:
            self._tif.close()
            msg = str(e)
            raise SlideReadError(msg if msg.startswith(self.path) else f"{self.path}: {msg}") from None
        except Exception as e:
            self._tif.close()
            raise SlideReadError(f"{self.path}: unreadable TIFF ({_one_line(e)})") from None

    # ------------------------------------------------------------------ structure
    def _setup(self) -> None:
        tif = self._tif
        self._lock = threading.RLock()
        self._cache = _SegmentCache(self.CACHE_BYTES)
        self._cache_id = id(self)
        self._mpp_stated = False
        series = list(tif.series)
        if not series:
            raise TiffUnsupported("no image series")
        assoc: dict[str, object] = {}
        main = []
        for s in series:
            cname = canonical_associated_name(s.name or "")
            if cname is None and not (s.name or "").strip():
                desc = (s.pages[0].description or "") if s.pages else ""
                first_line = desc.splitlines()[0] if desc else ""
                cname = canonical_associated_name(first_line) if len(first_line) < 80 else None
            if cname is not None and s is not series[0]:
                if _yx_area(s) > MAX_ASSOCIATED_PIXELS:  # read whole: keep it within reason
                    self.warnings.append(f"{cname} image of {_yx_area(s)} px left out (too large; damaged?)")
                    continue
                assoc.setdefault(cname, s)
            else:
                main.append(s)
        base = max(main, key=lambda s: _yx_area(s)) if main else series[0]
        file_size = os.path.getsize(self.path)
        levels = []
        for lv in base.levels:
            pages = [p for p in lv.pages if p is not None]
            if len(pages) != 1:
                raise TiffUnsupported(f"series shape {base.shape} axes {base.axes}: only single-plane "
                                      "2-D (grey or RGB) slides are supported")
            page = pages[0]
            if not hasattr(page, "dataoffsets"):
                page = page.keyframe if hasattr(page, "keyframe") else page
            levels.append(_Level(page, file_size))
        levels.sort(key=lambda L: -L.width * L.height)
        # tifffile's levels can include non-dyadic leftovers; keep strictly shrinking ones.
        kept = [levels[0]]
        for L in levels[1:]:
            if L.width < kept[-1].width and L.height < kept[-1].height:
                kept.append(L)
        self._levels = kept
        if kept[0].spp not in (1, 2, 3, 4):
            raise TiffUnsupported(f"{kept[0].spp} samples per pixel: not a brightfield slide")
        self._finish_levels([(L.width, L.height) for L in kept])
        # Fail early (and let open_slide try OpenSlide) if the codec is not decodable.
        self._read_level(self.level_count - 1, 0, 0, 1, 1)
        self._assoc = assoc
        self._associated_names = tuple(n for n in ("label", "macro", "thumbnail") if n in assoc)
        self._metadata(base)
        self._finish_mpp()

    def _metadata(self, base) -> None:
        tif = self._tif
        page0 = self._levels[0].page
        desc = page0.description or ""
        props = {"tiff.ImageWidth": str(self._levels[0].width),
                 "tiff.ImageLength": str(self._levels[0].height),
                 "tiff.Compression": str(getattr(page0.compression, "name", page0.compression)),
                 "tiff.Software": str(page0.software or "")}
        if tif.is_ome:
            self.format = "ome-tiff"
            self._ome_metadata(base, props)
        elif tif.is_svs:
            self.format = "aperio"
            self.vendor = "aperio"
            self._svs_metadata(desc, props)
        else:
            self.format = "generic-tiff" if self._levels[0].page.is_tiled else "tiff"
            if desc and len(desc) < 2000:
                props["tiff.ImageDescription"] = desc
        # Generic resolution tags only when the file states no MPP of its own (an implausible
        # Aperio MPP is not replaced by a writer's dpi).
        if self.mpp is None and not self._mpp_stated and self.format != "ome-tiff":
            self._resolution_mpp(page0)
        self.properties = {k: v for k, v in props.items() if v not in ("", "None")}

    def _resolution_mpp(self, page) -> None:
        tags = page.tags
        xr, yr, unit = tags.get("XResolution"), tags.get("YResolution"), tags.get("ResolutionUnit")
        if xr is None or yr is None:
            return
        self._set_mpp_from_resolution(xr.value, yr.value, unit.value if unit is not None else None)

    def _svs_metadata(self, desc: str, props: dict) -> None:
        # Aperio's "key = value|key = value" description; tifffile's parser for it is not
        # part of its public API, and the format is this simple.
        meta: dict[str, str] = {}
        for item in desc.split("|")[1:]:
            if "=" in item:
                k, v = item.split("=", 1)
                meta[k.strip()] = v.strip()
        for k, v in meta.items():
            props[f"aperio.{k}"] = v
        if "MPP" in meta:
            self._mpp_stated = True
            self._set_mpp(meta["MPP"], meta["MPP"], "aperio-description")
        try:
            self.objective_power = float(meta["AppMag"])
        except (KeyError, ValueError):
            pass

    def _ome_metadata(self, base, props: dict) -> None:
        xml = self._tif.ome_metadata
        if not xml:
            return
        try:
            root = ET.fromstring(xml)
        except ET.ParseError:
            self.warnings.append("OME-XML metadata is not valid XML; ignored")
            return
        ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
        images = root.findall(f"{ns}Image")
        chosen = None
        for im in images:
            if base.name and im.get("Name") == base.name:
                chosen = im
                break
        if chosen is None and images:
            idx = list(self._tif.series).index(base) if base in self._tif.series else 0
            chosen = images[min(idx, len(images) - 1)]
        if chosen is None:
            return
        pix = chosen.find(f"{ns}Pixels")
        if pix is None:
            return
        factors = {"nm": 1e-3, "µm": 1.0, "um": 1.0, "\u00b5m": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6,
                   "pm": 1e-6}

        def size(axis):
            v = pix.get(f"PhysicalSize{axis}")
            if v is None:
                return None
            self._mpp_stated = True
            f = factors.get(pix.get(f"PhysicalSize{axis}Unit", "µm"))
            if f is None:
                self.warnings.append(f"OME PhysicalSize{axis}Unit "
                                     f"{pix.get(f'PhysicalSize{axis}Unit')!r} not understood; ignored")
                return None
            try:
                return float(v) * f
            except ValueError:
                self.warnings.append(f"ignored OME PhysicalSize{axis} {v[:40]!r}: not a number")
                return None

        mx, my = size("X"), size("Y")
        if mx is not None and my is None:
            my = mx  # square pixels, as every scanner makes them; said, never silently
            self.warnings.append(f"OME PhysicalSizeY missing: assumed equal to PhysicalSizeX ({mx:g} µm)")
        if mx is not None and my is not None and not self._set_mpp(mx, my, "ome-xml"):
            self.warnings[-1] = (f"ignored OME PhysicalSizeX/Y {mx:g} x {my:g} µm: not a microscope pixel size "
                                 "(accepted: 0.01-100 µm/px)")
        inst = root.find(f"{ns}Instrument/{ns}Objective")
        if inst is not None and inst.get("NominalMagnification"):
            try:
                self.objective_power = float(inst.get("NominalMagnification"))
            except ValueError:
                pass
        if chosen.get("Name"):
            props["ome.Image.Name"] = chosen.get("Name")

    # ------------------------------------------------------------------ pixels
    def _segments(self, L: _Level, level: int, keys: list[int]) -> dict[int, np.ndarray]:
        """Decoded segments (seg_h', seg_w', spp') for the given segment indices."""
        got: dict[int, np.ndarray] = {}
        missing = []
        for k in keys:
            v = self._cache.get((level, k))
            if v is None:
                missing.append(k)
            else:
                got[k] = v
        if not missing:
            return got
        offsets = [L.offsets[k] for k in missing]
        counts = [L.counts[k] for k in missing]
        fh = self._tif.filehandle
        raw = list(fh.read_segments(offsets, counts, missing, lock=self._lock, sort=True))

        def dec(item):
            data, k = item
            if not L.counts[k]:       # sparse TIFF: a segment that was never written
                return k, None
            if data is None or len(data) < L.counts[k]:
                raise SlideReadError(f"{self.path}: level {level} tile/strip {k} is cut off "
                                     f"({0 if data is None else len(data)} of {L.counts[k]} bytes; truncated file?)")
            arr, _, shape = L.decode(data, k, jpegtables=L.jpegtables)
            a = np.asarray(arr).reshape(shape[-3], shape[-2], shape[-1])
            return k, a

        results = map_grouped(dec, raw, _pool())  # this thread decodes a share too
        for k, a in results:
            if a is None:  # sparse file: never-written segment = background, not materialised
                got[k] = _SPARSE
                continue
            self._cache.put((level, k), a)
            got[k] = a
        return got

    @staticmethod
    def _keys(L: _Level, x: int, y: int, w: int, h: int) -> list[int]:
        """Segment indices covering the level rectangle (clipped to the level)."""
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(L.width, x + w), min(L.height, y + h)
        if x1 <= x0 or y1 <= y0:
            return []
        ix0, ix1 = x0 // L.seg_w, (x1 - 1) // L.seg_w
        iy0, iy1 = y0 // L.seg_h, (y1 - 1) // L.seg_h
        planes = range(L.spp) if L.separate else range(1)
        return [s * L.nseg + iy * L.nsx + ix for s in planes
                for iy in range(iy0, iy1 + 1) for ix in range(ix0, ix1 + 1)]

    def _decoded(self, L: _Level, level: int, keys: list[int]) -> dict[int, np.ndarray]:
        try:
            return self._segments(L, level, keys)
        except SlideReadError:
            raise
        except Exception as e:
            raise SlideReadError(f"{self.path}: cannot decode level {level} "
                                 f"({type(e).__name__}: {e})") from None

    def prefetch_level(self, level, rects) -> None:
        """Decode every stored tile the rectangles touch, each once, in one parallel pass
        (tiled inference calls this per batch; the row runs then copy from the cache)."""
        self._check_level(level)
        L = self._levels[level]
        keys = sorted({k for r in rects for k in self._keys(L, *(int(v) for v in r))})
        seg_bytes = L.seg_h * L.seg_w * L.spp * L.dtype.itemsize
        # Only what fits the cache with room to spare: more would evict tiles decoded here
        # before they are used (correct, but decoded twice).
        if keys and len(keys) * seg_bytes <= self.CACHE_BYTES // 2:
            self._decoded(L, level, keys)

    direct_reads = True

    def _read_level_into(self, level, x, y, out) -> bool:
        """Copy the decoded stored tiles straight into ``out`` (a batch slot): plain
        interleaved uint8 RGB only; anything else goes through :meth:`_read_level`."""
        L = self._levels[level]
        if L.separate or L.spp != 3 or L.dtype != np.uint8:
            return False
        h, w = out.shape[:2]
        keys = self._keys(L, x, y, w, h)
        segs = self._decoded(L, level, keys)
        for k in keys:
            a = segs[k]
            iy, ix = divmod(k, L.nsx)
            sx0, sy0 = ix * L.seg_w, iy * L.seg_h
            ax0, ay0 = max(x, sx0), max(y, sy0)
            if a is _SPARSE:
                ax1, ay1 = min(x + w, sx0 + L.seg_w), min(y + h, sy0 + L.seg_h)
                out[ay0 - y:ay1 - y, ax0 - x:ax1 - x] = 255
                continue
            if a.ndim != 3 or a.shape[2] != 3:
                return False
            ax1 = min(x + w, sx0 + L.seg_w, sx0 + a.shape[1])
            ay1 = min(y + h, sy0 + L.seg_h, sy0 + a.shape[0])
            if ax1 > ax0 and ay1 > ay0:
                out[ay0 - y:ay1 - y, ax0 - x:ax1 - x] = a[ay0 - sy0:ay1 - sy0, ax0 - sx0:ax1 - sx0]
        return True

    def _read_level(self, level, x, y, w, h):
        L = self._levels[level]
        ix0, ix1 = x // L.seg_w, (x + w - 1) // L.seg_w
        iy0, iy1 = y // L.seg_h, (y + h - 1) // L.seg_h
        spp = L.spp
        planes = range(spp) if L.separate else range(1)
        keys = self._keys(L, x, y, w, h)
        segs = self._decoded(L, level, keys)
        out = np.empty((h, w, spp), L.dtype)
        white = np.iinfo(L.dtype).max if L.dtype.kind in "ui" else 1
        for s in planes:
            for iy in range(iy0, iy1 + 1):
                for ix in range(ix0, ix1 + 1):
                    a = segs[s * L.nseg + iy * L.nsx + ix]
                    sx0, sy0 = ix * L.seg_w, iy * L.seg_h
                    if a is _SPARSE:
                        ax0, ay0 = max(x, sx0), max(y, sy0)
                        ax1, ay1 = min(x + w, sx0 + L.seg_w), min(y + h, sy0 + L.seg_h)
                        out[ay0 - y:ay1 - y, ax0 - x:ax1 - x, (s if L.separate else slice(None))] = white
                        continue
                    ax0, ay0 = max(x, sx0), max(y, sy0)
                    ax1 = min(x + w, sx0 + L.seg_w, sx0 + a.shape[1])
                    ay1 = min(y + h, sy0 + L.seg_h, sy0 + a.shape[0])
                    if ax1 <= ax0 or ay1 <= ay0:
                        continue
                    src = a[ay0 - sy0:ay1 - sy0, ax0 - sx0:ax1 - sx0]
                    if L.separate:
                        out[ay0 - y:ay1 - y, ax0 - x:ax1 - x, s] = src[..., 0]
                    else:
                        out[ay0 - y:ay1 - y, ax0 - x:ax1 - x] = src
        return to_rgb(out, self.background)

    def clear_cache(self) -> None:
        self._cache.clear()

    def _read_associated(self, name):
        try:
            return np.squeeze(self._assoc[name].asarray(maxworkers=1))
        except Exception as e:
            raise SlideReadError(f"{self.path}: {name} image unreadable ({_one_line(e)})") from None

    def _close(self):
        self._cache.clear()
        self._tif.close()


def _yx_area(series) -> int:
    try:
        page = series.levels[0].pages[0]
        return int(page.imagewidth) * int(page.imagelength)
    except Exception:
        return 0


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


BACKEND = SlideBackend("tifffile", lambda path, head: is_tiff_head(head), TiffSlide, priority=60)
