"""Slide annotations (rulers, polygons, rectangles, counted points) as GeoJSON, the way
QuPath exports them, kept in the user data folder per slide.  No Qt.

* Geometry is in **level-0 pixel coordinates** (x right, y down), as QuPath writes it.
* Each feature: ``{"type": "Feature", "id": <uuid>, "geometry": ..., "properties":
  {"objectType": "annotation", "classification": {"name": ..., "color": [r, g, b]},
  "measurements": {...}, "kind": "ruler" | "polygon" | "rectangle" | "points"}}``.
  Lines are ``LineString``, polygons and rectangles ``Polygon`` (closed ring), counted points
  ``MultiPoint`` (one feature per class, as QuPath's point annotations).
* Measurements: ruler length in µm, polygon area in mm² and perimeter in µm (from the
  slide's MPP, anisotropic x/y allowed); without MPP the same in level-0 pixels, named so
  (``"Length px"``), never as micrometres.
* **Slide identity** (:func:`slide_key`): a content hash, sha256 over the file size and its
  first and last 4 MiB (a multi-gigabyte slide is not read whole; the head holds the TIFF/DICOM
  header and the tail the last tiles or associated images).  The same file moved or renamed
  keeps its annotations; a different file with the same name does not get them.  A folder (DICOM
  WSI) hashes the sorted names and sizes and the same head/tail of each WSI instance in it (the
  files the reader takes: other files beside them do not change the key); a file of a DICOM
  WSI has its folder's key (it opens as the same slide).
* Reading: QuPath's variants are accepted (a FeatureCollection, a list of features, one
  Feature; measurements as a dict or a list of ``{name, value}``; ``MultiPolygon``; colour as
  ``[r, g, b]`` or a packed integer, QuPath 0.2's ``classification.colorRGB`` too).  A bad file
  is one :class:`UserError` line; size (also of what is read), feature and vertex counts are
  bounded (each polygon of a MultiPolygon counts as a feature; the JSON objects are counted as
  the file is parsed, features and vertices as its geometries are read), an outline too
  tangled to measure is refused, and coordinates must be JSON numbers within ±MAX_COORD pixels
  (so measurements stay finite).  What is skipped or replaced (a class name or colour that is
  not understood, holes, empty geometries) or lies entirely off the open slide is a note (the
  first MAX_NOTES, then how many more); names are one line.  A QuPath >= 0.4 derived class
  (``classification.names``) is read as QuPath shows it, ``"Tumor: Positive"``.
* Saving (:func:`save_for_slide`) merges with the file under its lock: two windows (two app
  instances, the viewer and a script) on one slide never remove each other's annotations.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..measure import outline_area
from ..userdirs import locked

KINDS = ("ruler", "polygon", "rectangle", "points")
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_FEATURES = 100_000
MAX_VERTICES = 2_000_000
# JSON objects in a file: a QuPath feature has about 5 (feature, geometry, properties,
# classification, measurements), QuPath 0.2's measurement list one per measurement
MAX_JSON_OBJECTS = 20 * MAX_FEATURES
MAX_COORD = 1e9  # level-0 pixels: far beyond any slide (~1e5 px), and areas stay finite
MAX_NAME = 256   # characters of a class name (one line)
MAX_LABEL = 1024  # characters of a free-text name ("label", one line)
MAX_NOTES = 20   # notes on what was skipped or replaced; then one line saying how many more
HASH_CHUNK = 4 * 1024 * 1024
DEFAULT_CLASS = "Region"
_SURROGATES = re.compile("[\ud800-\udfff]")  # lone surrogates (JSON's "\ud800"; a file name not UTF-8)
DEFAULT_COLORS = {"Region": (0, 180, 255), "Tumor": (200, 0, 0), "Stroma": (150, 200, 150),
                  "Immune cells": (160, 90, 160), "Necrosis": (50, 50, 50), "Other": (255, 200, 0)}


def class_color(name: str) -> tuple[int, int, int]:
    """QuPath's colours for its default classes; others from a hash of the name."""
    if name in DEFAULT_COLORS:
        return DEFAULT_COLORS[name]
    h = hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest()  # any str, even with a lone surrogate
    return (64 + h[0] % 192, 64 + h[1] % 192, 64 + h[2] % 192)


@dataclass
class Annotation:
    """One annotation: ``points`` are level-0 ``(x, y)``; a polygon's ring is not closed."""

    kind: str
    points: list[tuple[float, float]]
    name: str = DEFAULT_CLASS           # the classification (QuPath's class)
    color: tuple[int, int, int] = field(default=None)  # type: ignore[assignment]
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    label: str = ""                     # optional free text (QuPath "name")
    # (number of points, area px², crosses itself): the slide view labels every polygon on each
    # paint; points are only ever appended, so the count says when to measure again
    _outline: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UserError(f"unknown annotation kind {self.kind!r}")
        self.points = [(float(x), float(y)) for x, y in self.points]
        if self.color is None:
            self.color = class_color(self.name)
        self.color = tuple(int(c) for c in self.color)[:3]

    # ------------------------------------------------------------------ measurements
    def measurements(self, mpp) -> dict:
        """QuPath-style measurement names and values (µm / mm² with ``mpp``, else px)."""
        pts = np.asarray(self.points, np.float64).reshape(-1, 2)
        mx, my = (float(mpp[0]), float(mpp[1])) if mpp else (1.0, 1.0)
        if self.kind == "points":
            return {"Num points": len(pts)}
        if self.kind == "ruler":
            d = np.diff(pts, axis=0) * [mx, my]
            length = float(np.hypot(d[:, 0], d[:, 1]).sum())
            return {"Length µm": length} if mpp else {"Length px": length}
        ring = np.vstack([pts, pts[:1]])
        d = np.diff(ring, axis=0) * [mx, my]
        perim = float(np.hypot(d[:, 0], d[:, 1]).sum())
        area_px = self._area_and_crossing()[0]
        if mpp:
            return {"Area µm^2": area_px * mx * my, "Area mm^2": area_px * mx * my / 1e6, "Perimeter µm": perim}
        return {"Area px^2": area_px, "Perimeter px": perim}

    def describe(self, mpp) -> str:
        """One line for the list: class, kind and its measurement in the right unit."""
        m = self.measurements(mpp)
        if self.kind == "points":
            return f"{self.name}: {m['Num points']} point{'s' if m['Num points'] != 1 else ''}"
        if self.kind == "ruler":
            return (f"{self.name}: ruler {m['Length µm']:.1f} µm" if mpp
                    else f"{self.name}: ruler {m['Length px']:.0f} px (no MPP)")
        crossing = ", outline crosses itself" if self.crosses_itself() else ""
        if mpp:
            return (f"{self.name}: {self.kind} {m['Area mm^2']:.4f} mm², perimeter "
                    f"{m['Perimeter µm']:.0f} µm{crossing}")
        return f"{self.name}: {self.kind} {m['Area px^2']:.0f} px² (no MPP){crossing}"

    def crosses_itself(self) -> bool:
        """A polygon whose outline crosses itself: its area is that of the even-odd filled
        parts, as drawn (:func:`imaging_assist.measure.outline_area`)."""
        return self.kind in ("polygon", "rectangle") and self._area_and_crossing()[1]

    def _area_and_crossing(self) -> tuple[float, bool]:
        if self._outline is None or self._outline[0] != len(self.points):
            self._outline = (len(self.points), *outline_area(self.points))
        return self._outline[1], self._outline[2]

    # ------------------------------------------------------------------ GeoJSON
    def to_feature(self, mpp) -> dict:
        pts = [[x, y] for x, y in self.points]
        if self.kind == "ruler":
            geom = {"type": "LineString", "coordinates": pts}
        elif self.kind == "points":
            geom = {"type": "MultiPoint", "coordinates": pts}
        else:
            geom = {"type": "Polygon", "coordinates": [pts + pts[:1]]}
        props = {"objectType": "annotation", "kind": self.kind,
                 "classification": {"name": self.name, "color": list(self.color)},
                 "measurements": {k: (round(v, 6) if isinstance(v, float) else v)
                                  for k, v in self.measurements(mpp).items()},
                 "isLocked": False}
        if self.label:
            props["name"] = self.label
        return {"type": "Feature", "id": self.id, "geometry": geom, "properties": props}


def point_counts(annotations) -> dict[str, int]:
    """Counted points per class."""
    out: dict[str, int] = {}
    for a in annotations:
        if a.kind == "points":
            out[a.name] = out.get(a.name, 0) + len(a.points)
    return out


# --------------------------------------------------------------------------- files
def to_geojson(annotations, mpp=None, slide: dict | None = None) -> dict:
    fc = {"type": "FeatureCollection", "features": [a.to_feature(mpp) for a in annotations]}
    if slide:
        fc["imaging_assist"] = {"slide": slide, "coordinates": "level-0 pixels",
                                "mpp": list(mpp) if mpp else None}
    return fc


def _escaped(v):
    """``v`` with each text in it valid UTF-8: a slide whose file name is not UTF-8 (b'M\\xfcller.svs'
    from a Latin-1 system; 'M\\udcfcller.svs' in Python) is named by its bytes with the undecodable
    ones escaped (the text M\\xfcller.svs): a lone surrogate cannot be written as UTF-8."""
    if isinstance(v, str):
        try:
            v.encode("utf-8")
            return v
        except UnicodeEncodeError:
            try:  # the bytes of the name, as os.fsencode gives them
                return v.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            except UnicodeEncodeError:  # a lone surrogate that no file name holds
                return _SURROGATES.sub("\ufffd", v)
    if isinstance(v, dict):
        return {_escaped(k): _escaped(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_escaped(x) for x in v]
    return v


def write_geojson(path, annotations, mpp=None, slide: dict | None = None) -> Path:
    """Write atomically (temp file + rename): a crash never leaves half a file, and a failed
    write leaves no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        # json.dumps without indent: json's C encoder (json.dump and indent take the pure-Python
        # one, ~10 times slower; the viewer writes the file on every edit)
        text = json.dumps(to_geojson(annotations, mpp, _escaped(slide)), ensure_ascii=False)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _number(v) -> float | None:
    """A JSON number as a float (inf for an integer no float holds); None for anything else
    (a string, true/false, null, a list): GeoJSON positions are numbers."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        return float(v)
    except OverflowError:
        return math.inf


def _color(c) -> tuple[int, int, int] | None:
    """[r, g, b] (clamped to 0..255) or a packed integer; None when it is neither."""
    if isinstance(c, (list, tuple)) and len(c) >= 3:
        vals = [_number(v) for v in c[:3]]
        if any(v is None or not math.isfinite(v) for v in vals):
            return None
        return tuple(int(max(0.0, min(255.0, v))) for v in vals)
    v = _number(c)
    if v is not None and math.isfinite(v):  # QuPath <0.2 packed ARGB
        v = int(v) & 0xFFFFFF
        return ((v >> 16) & 255, (v >> 8) & 255, v & 255)
    return None


def _text(v, limit: int) -> str | None:
    """A name from the file on one line ("" when absent); None when it is not text.  A lone
    surrogate (valid JSON, "\\ud800", but no character: it cannot be written, hashed or shown)
    is replaced by U+FFFD (:func:`_has_surrogates` tells the caller to note it)."""
    if v is None:
        return ""
    if isinstance(v, str):
        return _SURROGATES.sub("\ufffd", " ".join(v.split()))[:limit]
    if isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and math.isfinite(v):
        return str(v)[:limit]
    return None


def _has_surrogates(v) -> bool:
    return isinstance(v, str) and _SURROGATES.search(v) is not None


def _kind_text(v) -> str:
    """A geometry type for a note: short, one line, never the repr of a whole structure."""
    return repr(" ".join(v.split())[:40]) if isinstance(v, str) else f"of JSON type {type(v).__name__}"


def _coords(seq, what: str, room: int) -> list[tuple[float, float]]:
    """The positions of ``seq``; ``room``: vertices the file may still hold (checked before any
    is converted)."""
    if not isinstance(seq, list):
        raise UserError(f"{what}: coordinates are not a list")
    if len(seq) > room:
        raise UserError(f"more than {MAX_VERTICES:,} vertices in the file")
    out = []
    for p in seq:
        if not isinstance(p, (list, tuple)) or len(p) < 2:
            raise UserError(f"{what}: a position is not [x, y]")
        x, y = _number(p[0]), _number(p[1])
        if x is None or y is None:
            raise UserError(f"{what}: a coordinate is not a number")
        if not (math.isfinite(x) and math.isfinite(y)):
            raise UserError(f"{what}: a coordinate is not finite")
        if abs(x) > MAX_COORD or abs(y) > MAX_COORD:
            raise UserError(f"{what}: a coordinate is out of range (beyond {MAX_COORD:.0e} pixels)")
        out.append((x, y))
    return out


def _features(doc) -> list:
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        f = doc.get("features")
        if not isinstance(f, list):
            raise UserError("the FeatureCollection has no feature list")
        return f
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        return [doc]
    raise UserError("not GeoJSON annotations (expected a FeatureCollection, a Feature or a list of features)")


def from_geojson(doc, slide_size=None) -> tuple[list[Annotation], list[str]]:
    """Annotations of a GeoJSON document; also the notes on what was skipped and why (the first
    MAX_NOTES, then how many more).  Each polygon of a MultiPolygon counts as a feature, and the
    feature and vertex counts are checked as the geometries are read, before they are kept.
    ``slide_size``: the open slide's level-0 (width, height); features with no vertex on it are
    kept and counted in a note (a file made for another slide puts everything off it)."""
    feats = _features(doc)
    if len(feats) > MAX_FEATURES:
        raise UserError(f"{len(feats):,} features (at most {MAX_FEATURES:,})")
    out: list[Annotation] = []
    notes: list[str] = []
    n_notes = 0

    def note(text: str) -> None:
        nonlocal n_notes
        n_notes += 1
        if len(notes) < MAX_NOTES:
            notes.append(text)

    n_vert = 0
    n_parts = len(feats)  # features, and each further polygon of a MultiPolygon
    unnamed: list[int] = []  # features whose classification has neither name nor names
    off_slide = 0  # features kept with no vertex on the slide

    def coords(seq, what: str) -> list[tuple[float, float]]:
        nonlocal n_vert
        pts = _coords(seq, what, MAX_VERTICES - n_vert)
        n_vert += len(pts)
        return pts

    for i, f in enumerate(feats):
        what = f"feature {i + 1}"
        if not isinstance(f, dict) or not isinstance(f.get("geometry"), dict):
            note(f"{what}: no geometry, skipped")
            continue
        props = f.get("properties") if isinstance(f.get("properties"), dict) else {}
        cls = props.get("classification")
        if isinstance(cls, str):  # a bare class name
            cls = {"name": cls}
        elif not isinstance(cls, dict):
            if cls is not None:
                note(f"{what}: classification is not understood, {DEFAULT_CLASS!r} is used")
            cls = {}
        elif cls.get("name") is None and cls.get("names") is None:
            unnamed.append(i + 1)
        raw_name = cls.get("name")
        if raw_name is None and cls.get("names") is not None:
            # QuPath >= 0.4 writes a derived class ("Tumor: Positive") as its parts, "names":
            # ["Tumor", "Positive"]; joined as QuPath shows it
            parts = cls["names"]
            raw_name = (": ".join(parts) if isinstance(parts, list) and parts
                        and all(isinstance(n, str) for n in parts) else parts)
        name = _text(raw_name, MAX_NAME)
        if name is None:
            note(f"{what}: the class name is not text, {DEFAULT_CLASS!r} is used")
        name = name or DEFAULT_CLASS
        if _has_surrogates(raw_name):
            note(f"{what}: the class name holds a lone surrogate (no character), replaced by U+FFFD")
        # QuPath >= 0.3: classification.color [r, g, b]; 0.2: classification.colorRGB (a packed
        # signed ARGB integer); older: a packed integer in properties.color
        raw_color = next((v for v in (cls.get("color"), cls.get("colorRGB"), props.get("color")) if v is not None),
                         None)
        color = _color(raw_color)
        if color is None:
            if raw_color is not None:
                note(f"{what}: colour not understood, the class colour is used")
            color = class_color(name)
        label = _text(props.get("name"), MAX_LABEL)
        if label is None:
            note(f"{what}: the name is not text, left out")
            label = ""
        elif _has_surrogates(props.get("name")):
            note(f"{what}: the name holds a lone surrogate (no character), replaced by U+FFFD")
        fid = f.get("id") if f.get("id") is not None else props.get("id")
        if (isinstance(fid, bool) or not isinstance(fid, (str, int)) or not str(fid).strip()
                or len(str(fid)) > 200 or not str(fid).isprintable()):
            fid = uuid.uuid4()  # an id is a short one-line string or a number; else a new one
        fid = str(fid)
        g = f["geometry"]
        gt = g.get("type")
        c = g.get("coordinates")
        rings: list[tuple[str, list]] = []
        if gt == "LineString":
            rings.append(("ruler", coords(c, what)))
        elif gt == "Point":
            rings.append(("points", coords([c], what)))
        elif gt == "MultiPoint":
            rings.append(("points", coords(c, what)))
        elif gt == "Polygon":
            if not isinstance(c, list) or not c:
                raise UserError(f"{what}: a Polygon without rings")
            if len(c) > 1:
                note(f"{what}: holes of the polygon left out")
            rings.append((str(props.get("kind")) if props.get("kind") == "rectangle" else "polygon",
                          coords(c[0], what)))
        elif gt == "MultiPolygon":
            if not isinstance(c, list):
                raise UserError(f"{what}: a MultiPolygon without polygons")
            n_parts += max(0, len(c) - 1)
            if n_parts > MAX_FEATURES:
                raise UserError(f"more than {MAX_FEATURES:,} features (each polygon of a MultiPolygon "
                                "counts as one)")
            for poly in c:
                if isinstance(poly, list) and poly:
                    if len(poly) > 1:
                        note(f"{what}: holes of the polygon left out")
                    rings.append(("polygon", coords(poly[0], what)))
                else:
                    note(f"{what}: a polygon of the MultiPolygon without rings, skipped")
        else:
            note(f"{what}: geometry {_kind_text(gt)} not supported, skipped")
            continue
        n_kept = len(out)
        for k, (kind, pts) in enumerate(rings):
            if kind in ("polygon", "rectangle"):
                if len(pts) > 1 and pts[0] == pts[-1]:
                    pts = pts[:-1]
                if len(set(pts)) < 3:
                    note(f"{what}: a polygon with fewer than 3 vertices, skipped")
                    continue
            elif kind == "ruler" and len(pts) < 2:
                note(f"{what}: a line with fewer than 2 points, skipped")
                continue
            elif not pts:
                note(f"{what}: no points, skipped")
                continue
            out.append(Annotation(kind, pts, name, color, fid if k == 0 else str(uuid.uuid4()), label))
            try:
                crosses = out[-1].crosses_itself()
            except UserError as e:  # an outline too tangled to measure
                raise UserError(f"{what}: {e}") from None
            if crosses:
                note(f"{what}: the outline crosses itself; its area counts the filled parts "
                     f"(even-odd, as drawn)")
        if slide_size is not None and len(out) > n_kept:
            w0, h0 = slide_size
            if not any(0 <= x <= w0 and 0 <= y <= h0 for a in out[n_kept:] for x, y in a.points):
                off_slide += 1
    if unnamed:
        note(f"{len(unnamed):,} feature{'s' if len(unnamed) != 1 else ''} (first: feature {unnamed[0]}) with a "
             f"classification without a name, {DEFAULT_CLASS!r} is used")
    if n_notes > len(notes):
        notes.append(f"and {n_notes - len(notes):,} more notes like these")
    if off_slide:  # first: the panel shows the first notes, and this one says the most
        w0, h0 = slide_size
        notes.insert(0, f"{off_slide:,} of {len(feats):,} feature{'s' if len(feats) != 1 else ''} lie entirely "
                        f"outside the slide ({w0:,} x {h0:,} px), kept: is the file made for another slide?")
    return out, notes


def _count_objects():
    """An ``object_pairs_hook`` that stops the parse (UserError) after MAX_JSON_OBJECTS objects:
    a file of small objects ('[{},{},...]') would otherwise take ~25 times its size in memory
    before the feature count is checked."""
    n = 0

    def hook(pairs):
        nonlocal n
        n += 1
        if n > MAX_JSON_OBJECTS:
            raise UserError(f"more than {MAX_JSON_OBJECTS:,} JSON objects in the file (at most "
                            f"{MAX_FEATURES:,} features)")
        return dict(pairs)
    return hook


def read_geojson(path, slide_size=None) -> tuple[list[Annotation], list[str]]:
    """Read a GeoJSON file (QuPath export or ours); one-line UserError when it cannot be used.
    ``slide_size``: as :func:`from_geojson`."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise UserError(f"cannot read {path.name}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):  # a pipe would block open() until a writer comes: a hang
        raise UserError(f"{path.name} is not a regular file (a folder, pipe or device)")
    size = st.st_size
    if size > MAX_FILE_BYTES:
        raise UserError(f"{path.name} is {size / 1e6:.0f} MB (at most {MAX_FILE_BYTES // 2**20} MiB of GeoJSON)")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)  # a device or a file growing after stat(): no further
        if len(data) > MAX_FILE_BYTES:
            mib = MAX_FILE_BYTES // 2**20
            raise UserError(f"{path.name} is more than {mib} MiB (at most {mib} MiB of GeoJSON)")
        doc = json.loads(data.decode("utf-8-sig"), object_pairs_hook=_count_objects())
    # ValueError: JSONDecodeError, and an integer of more digits than int() converts (4300)
    except (OSError, ValueError, RecursionError) as e:
        raise UserError(f"{path.name} is not readable JSON: {str(e).splitlines()[0][:120]}") from None
    return from_geojson(doc, slide_size)


# --------------------------------------------------------------------------- per slide
def _head_tail(h, path: str, size: int) -> None:
    with open(path, "rb") as f:
        h.update(f.read(HASH_CHUNK))
        if size > HASH_CHUNK:
            f.seek(max(HASH_CHUNK, size - HASH_CHUNK))
            h.update(f.read(HASH_CHUNK))


def slide_key(path) -> str:
    """Content identity of a slide file or WSI folder (see the module docstring)."""
    from .dicom_backend import find_wsi_dicom_files, is_wsi_dicom

    p = os.fspath(path)
    if not os.path.isdir(p) and is_wsi_dicom(p):  # reads 132 bytes, and the header only if DICOM
        # A DICOM WSI opens as the same slide from its folder or from any of its files (the
        # reader takes every instance of the folder): one key for both.
        p = os.path.dirname(os.path.abspath(p))
    h = hashlib.sha256(b"imaging-assist slide v1\0")
    try:
        if os.path.isdir(p):
            # The instances the DICOM WSI reader takes (sorted by name, as before): a GeoJSON,
            # heat map or note written beside them does not change the slide's identity
            names = [os.path.basename(f) for f in find_wsi_dicom_files(p)]
            if not names:  # not a DICOM WSI folder: all its files
                names = sorted(n for n in os.listdir(p)
                               if os.path.isfile(os.path.join(p, n)) and not n.startswith("."))
            for n in names[:2000]:
                full = os.path.join(p, n)
                size = os.path.getsize(full)
                h.update(n.encode("utf-8", "surrogateescape") + f"\0{size}\0".encode())  # any file name
                _head_tail(h, full, size)
        else:
            size = os.path.getsize(p)
            h.update(f"{size}\0".encode())
            _head_tail(h, p, size)
    except OSError as e:
        raise UserError(f"cannot read {os.path.basename(p)} to identify it: {e.strerror or e}") from None
    return h.hexdigest()[:32]


def store_dir() -> Path:
    from ..userdirs import data_dir

    return data_dir() / "slide_annotations"


def store_path(key: str) -> Path:
    return store_dir() / f"{key}.geojson"


class SlideAnnotations(list):
    """The annotations of one slide as :func:`load_for_slide` gives them: a list that also
    remembers what this window loaded and saved (``known``: id -> content then), so that
    :func:`save_for_slide` removes only what was deleted from it."""

    def __init__(self, items=(), key: str | None = None):
        super().__init__(items)
        self.key = key
        self.known: dict[str, str] = {}


_PLAIN_KNOWN: dict[str, dict[str, str]] = {}  # slide key -> known, for a plain list (a script): per process


def _sig(a: Annotation) -> str:
    """What an edit changes (to tell whether a window changed an annotation since it read it)."""
    return repr((a.kind, [tuple(p) for p in a.points], a.name, tuple(a.color), a.label))


def save_for_slide(key: str, annotations, mpp=None, slide: dict | None = None) -> Path:
    """Save the slide's annotations (with none left, the file is removed).

    Under the file's lock the file is read again and merged, as another window may have saved
    since: annotations this window never had stay; one it did not change since it read it keeps
    the file's version (or stays deleted, when another window deleted it); only those this window
    loaded or saved and no longer has are removed.
    A list from :func:`load_for_slide` remembers what it had (for a plain list, the process
    does); it is not changed here: the other windows' annotations show when the slide is opened
    again.  A file that cannot be read is not written over (OSError, one line)."""
    path = store_path(key)
    own = isinstance(annotations, SlideAnnotations) and annotations.key == key
    known = annotations.known if own else _PLAIN_KNOWN.setdefault(key, {})
    # no other window writes between this read and this write; one lock beside the folder for
    # all slides (saves are short), so the folder holds only the slides' files
    with locked(store_dir()):
        current: list[Annotation] = []
        if path.exists():
            try:
                current = read_geojson(path)[0]
            except UserError as e:
                raise OSError(f"the saved annotations of this slide cannot be read ({e}); "
                              f"{path.name} is not written over") from None
        in_file = {a.id: a for a in current}
        theirs = {}  # this window's annotations another window changed or deleted, and this one did not change
        for a in annotations:
            if known.get(a.id) != _sig(a):
                continue  # new or changed here: this window's version is saved
            f = in_file.get(a.id)
            if f is None or _sig(f) != _sig(a):
                theirs[a.id] = f  # changed (None: deleted) in another window only: so it stays
        mine = {a.id for a in annotations}
        others = [f for f in current if f.id not in mine and f.id not in known]
        out = [theirs.get(a.id, a) for a in annotations if theirs.get(a.id, a) is not None] + others
        if out:
            write_geojson(path, out, mpp, slide)
        else:  # nothing left, not even another window's
            path.unlink(missing_ok=True)
    # an annotation kept as the other window left it (changed or deleted there) stays theirs
    # until this window changes it
    new = {a.id: known[a.id] if a.id in theirs else _sig(a) for a in annotations}
    known.clear()
    known.update(new)
    return path


def load_for_slide(key: str) -> tuple[list[Annotation], list[str]]:
    """The slide's saved annotations (a :class:`SlideAnnotations` list) and notes."""
    path = store_path(key)
    out = SlideAnnotations(key=key)
    notes: list[str] = []
    if path.exists():
        items, notes = read_geojson(path)
        out.extend(items)
    out.known.update((a.id, _sig(a)) for a in out)
    return out, notes
