"""The PDF report of an analysed study (issue 13): what a clinician reads.

Two steps, both without Qt:

* :func:`build_report` turns a ``results.json`` document (``analyze``) or the demo's
  ``report.json`` into plain data: per study a header (patient, study), per model the
  findings, measurements, key images (the plain slice and the overlay, rendered by the
  viewer's display path), the explanation and its checks, every warning; then the viewer's
  measurements, the run's notes and a summary of each model card.  Nothing is guessed: what
  is missing is said as missing.
* :func:`write_report_pdf` lays that data out (vector, selectable text; images embedded
  losslessly at their own pixel size; A4 or Letter; "NOT FOR CLINICAL USE" on every page).

Library: fpdf2 2.8.9, measured against reportlab 5.1.0 on the same content (the CT report of
``scripts/bench_export.py --compare``; docs/report.md): reportlab laid it out faster (0.15-0.30 s
against 0.26-0.36 s over two runs, both far under the 1 s target), but its file was 30 % larger
(172 vs 132 kB, both with Flate-compressed images and a subset of the same TrueType font).  fpdf2 is kept: the
smaller file, a smaller API (tables, multi-cell text) that is easier to carry on, its font's
glyph table at hand (characters it cannot show are said, never dropped), and it is the one PDF
library of the project (``imaging-assist evaluate`` uses it too).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..models.operating_point import format_probability as _fmt_p

NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"
NOT_DRAWN_GREY = (215, 215, 215)  # the heat-map colour bar's part that is not drawn on the image
PAGE_SIZES = {"A4": "A4", "LETTER": "letter"}
OOD_TEXT = "Outside what this model was trained on"

# where sizes come from, in words (Volume.spacing_source)
SPACING_WORDS = {
    "PixelSpacing": "Pixel Spacing of the file",
    "ImagerPixelSpacing/ERMF": "Imager Pixel Spacing corrected by the Estimated Radiographic "
                               "Magnification Factor",
    "ImagerPixelSpacing": "Imager Pixel Spacing at the detector, uncorrected (sizes on a chest film "
                          "are ~10-15 % too large)",
    "calibrated": "a calibration (see warnings)",
    "none": "no pixel spacing known: sizes are in pixels",
}


class ReportError(UserError):
    """The report cannot be written (bad page size, unwritable path, ...)."""


def _one_line(e) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:300]


def _tool_version() -> str:
    from .. import tool_version

    return tool_version()


# =========================================================================== header
HEADER_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
               "StudyDate", "StudyTime", "StudyDescription", "AccessionNumber", "Modality",
               "StudyInstanceUID", "SeriesDescription", "SeriesNumber", "BodyPartExamined")


def _fmt_date(v) -> str:
    s = str(v or "").strip()
    if len(s) == 8 and s.isdigit():
        return f"{s[:4]}-{s[4:6]}-{s[6:]}"
    return s


def _fmt_age(v) -> str:
    s = str(v or "").strip()
    units = {"Y": "years", "M": "months", "W": "weeks", "D": "days"}
    if len(s) == 4 and s[:3].isdigit() and s[3] in units:
        return f"{int(s[:3])} {units[s[3]]}"
    return s


DOUBTFUL_NAME = " (⚠ character set: may be wrong)"


def header_from_tags(tags: dict, doubtful_name: bool = False) -> dict:
    """The report header from DICOM attribute values (keyword -> value).  ``doubtful_name``:
    the name was read without a usable character set (dicom.header.charset_doubt): said with it,
    as the viewer's corner text and browser say it."""
    g = {k: ("" if tags.get(k) is None else str(tags.get(k)).strip()) for k in HEADER_TAGS}
    name = g["PatientName"].replace("^", " ").strip()
    return {"patient_name": name + (DOUBTFUL_NAME if name and doubtful_name else ""),
            "patient_id": g["PatientID"], "birth_date": _fmt_date(g["PatientBirthDate"]),
            "sex": g["PatientSex"], "age": _fmt_age(g["PatientAge"]),
            "study_date": _fmt_date(g["StudyDate"]), "study_description": g["StudyDescription"],
            "accession": g["AccessionNumber"], "modality": g["Modality"],
            "study_uid": g["StudyInstanceUID"]}


def study_header(volume) -> dict | None:
    """Header of a loaded DICOM volume (its first instance record), None without records."""
    recs = list(getattr(volume, "headers", None) or [])
    if not recs:
        return None
    tags = {}
    for k in HEADER_TAGS:
        for r in recs[:1]:
            v = r.get(k) if hasattr(r, "get") else None
            if v is not None:
                tags[k] = v
    if not tags.get("Modality"):
        tags["Modality"] = getattr(volume, "modality", "")
    from ..dicom.header import charset_doubt
    return header_from_tags(tags, doubtful_name=charset_doubt(recs[0]) is not None)


def _header_from_file(path: str) -> dict | None:
    """Header read from one DICOM file (attributes only, never the pixels)."""
    import warnings

    import pydicom
    try:
        with warnings.catch_warnings():  # invalid values are pydicom's noise, not the user's
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True,
                                 specific_tags=list(HEADER_TAGS) + ["SpecificCharacterSet"])
            tags = {k: ds.get(k) for k in HEADER_TAGS if ds.get(k) is not None}
            cs = ds.get("SpecificCharacterSet") or []
    except Exception:  # noqa: BLE001 - not DICOM / unreadable: the caller says so
        return None
    if not tags.get("Modality") and not tags.get("PatientID") and not tags.get("StudyInstanceUID"):
        return None
    from ..dicom.header import _charset_doubt  # the index's rule (one place)
    name = str(tags.get("PatientName") or "")
    terms = [str(c).strip() for c in ([cs] if isinstance(cs, str) else cs)]
    return header_from_tags(tags, doubtful_name=not name.isascii() and _charset_doubt(terms, name) is not None)


def deidentify_header(h: dict) -> dict:
    """The printed header under the DICOM PS3.15 Basic Application Level Confidentiality Profile
    (as :mod:`imaging_assist.privacy.deid` applies it to the files): name, ID, birth date,
    accession, study date and UID, study description (X), sex (Z) and age (X) removed; the
    modality kept."""
    out = dict(h)
    for k in ("patient_name", "patient_id", "birth_date", "accession", "study_date", "study_uid",
              "study_description", "sex", "age"):
        out[k] = "removed" if h.get(k) else ""
    out["deidentified"] = True
    return out


# =========================================================================== images
def _volume_for(item: dict, volumes: dict | None):
    if not volumes:
        return None
    for key in (item.get("series_uid"), item.get("source"), item.get("_index")):
        if key is not None and key in volumes:
            return volumes[key]
    return None


def _load_volume(item: dict):
    """Load the item's input again (DICOM series by its UID, or the plain image)."""
    src = item.get("source") or ""
    if item.get("kind") == "image":
        from ..inference.images import read_image
        return read_image(src)
    from ..dicom import load_series, scan
    uid = item.get("series_uid")
    if not src or not os.path.exists(src):
        raise ReportError(f"the source {src or '(none)'} is not there any more")
    index = scan(src)
    shape = list(item.get("shape") or [])
    parts = [s for s in index.all_series() if s.uid == uid]
    if not parts:
        raise ReportError(f"series {uid} not found in {src}")
    if len(parts) > 1 and shape:
        parts = [s for s in parts if s.n_frames == shape[0]] or parts
    return load_series(parts[0])


def _read_array(base_dir: Path | None, name: str | None, kind: str):
    """A label map / heat map written by analyze, as [k, j, i] (None when not there)."""
    if not name or base_dir is None:
        return None
    p = Path(base_dir) / name
    if not p.is_file():
        return None
    if p.suffix == ".npy":
        a = np.load(p, allow_pickle=False)
        return a[None] if a.ndim == 2 else a
    if p.suffix == ".png":
        from PIL import Image
        return np.asarray(Image.open(p))[None]
    import nibabel as nib
    a = np.asarray(nib.load(str(p)).dataobj)
    if a.ndim == 2:
        a = a[:, :, None]
    return np.transpose(a, (2, 1, 0))


def _window_text(volume) -> str:
    from .. import display
    if getattr(volume, "is_color", False):
        return "colour, as stored"
    w = display.default_window(volume)
    if w.source == "voilut":
        txt = f"VOI LUT of the file ({w.name})"
    else:
        unit = f" {volume.units}" if getattr(volume, "units", "") else ""
        txt = f"window {w.center:g}/{w.width:g}{unit} ({w.name})"
    if display.shows_inverted(volume):
        txt += ", shown inverted (MONOCHROME1)" if volume.photometric == "MONOCHROME1" \
            else ", shown inverted (Presentation LUT INVERSE)"
    return txt


def _aspect(volume) -> float:
    """Height/width of a pixel as the viewer shows it (1 without a known spacing)."""
    if volume is None or not getattr(volume, "spacing_known", False):
        return 1.0
    sx, sy = float(volume.spacing[0]), float(volume.spacing[1])
    if not (math.isfinite(sx) and math.isfinite(sy) and sx > 0 and sy > 0):
        return 1.0
    return sy / sx


def item_views(item: dict, volume, base_dir=None, result=None) -> list[dict]:
    """Key views of one results.json item: per label map / heat map the key slice as the
    viewer shows it (``plain``) and with the overlay (``overlay``), both RGB uint8 at the
    image's own pixel size; ``legend`` (label map) or ``colorbar`` (heat map).

    Arrays come from ``result`` (the in-memory InferenceResult) when given, else from the
    files the item names under ``base_dir``."""
    from ..colormaps import label_color
    from ..inference.results import overlay_rgb
    from .. import display

    base = Path(base_dir) if base_dir is not None else None
    views: list[dict] = []
    n = volume.n_slices
    window = _window_text(volume)
    if getattr(volume, "has_geometry", False):  # the viewer's edge letters, said in words
        o = volume.orientation_labels()
        if all(o.get(k) for k in ("left", "right", "top", "bottom")):
            window += f"; image left {o['left']}, right {o['right']}, top {o['top']}, bottom {o['bottom']}"
    aspect = _aspect(volume)
    lm = getattr(result, "label_map", None) if result is not None else None
    if lm is None and item.get("task") in ("segmentation", "nodule"):
        lm = _read_array(base, item.get("label_map"), "labels")
    # CT nodules: one key view per nodule, on its slice of largest area; else the label map's
    key_slices = [(int(x["key_slice"]), f"Nodule {x.get('id')}") for x in item.get("nodules") or []
                  if x.get("found") and x.get("key_slice") is not None] if item.get("task") == "nodule" else []
    if lm is not None and lm.shape[0] == n:
        counts = (lm > 0).reshape(n, -1).sum(1)
        k = int(np.argmax(counts)) if counts.max(initial=0) > 0 else n // 2
        labels = item.get("labels") or {}
        names = labels if isinstance(labels, dict) else {str(i): x for i, x in enumerate(labels)}
    nodules = {f"Nodule {x.get('id')}": x for x in item.get("nodules") or [] if x.get("found")}
    for k, title in ((key_slices or [(k, "")]) if lm is not None and lm.shape[0] == n else []):
        if not 0 <= k < n:
            continue
        present = sorted(int(v) for v in np.unique(lm[k]) if v > 0)
        nd = nodules.get(title)
        zoom = _nodule_zoom(volume, k, lm[k], nd) if nd is not None else None
        if zoom is not None:  # a nodule: where it is (the slice with the overlay), and its calipers
            views.append({
                "kind": "labels", "slice": k, "n_slices": n, "window": window, "aspect": aspect,
                "plain": overlay_rgb(volume.array[k], label_slice=lm[k], volume=volume, k=k),
                "overlay": zoom["rgb"], "overlay_aspect": 1.0,
                "captions": ["with the overlay", zoom["caption"]],
                "legend": [{"value": v, "name": names.get(str(v), f"label {v}"), "color": label_color(v)}
                           for v in present],
                "title": f"{title}, slice {k + 1} of {n}"})
            continue
        views.append({
            "kind": "labels", "slice": k, "n_slices": n, "window": window, "aspect": aspect,
            "plain": _rgb(display.render_slice(volume, k)),
            "overlay": overlay_rgb(volume.array[k], label_slice=lm[k], volume=volume, k=k),
            "legend": [{"value": v, "name": names.get(str(v), f"label {v}"), "color": label_color(v)}
                       for v in present],
            "title": (f"{title}, " if title else "Label map, ") + f"slice {k + 1} of {n}" if n > 1 else "Label map"})
    hms = list(item.get("heatmaps") or [])
    res_hms = list(getattr(result, "heatmaps", None) or []) if result is not None else []
    for i, h in enumerate(hms):
        arr = res_hms[i].array if i < len(res_hms) else _read_array(base, h.get("file"), "heat")
        if arr is None or arr.shape[0] != n:
            continue
        k = h.get("key_slice")
        if k is None or not (0 <= int(k) < n):
            k = int(np.argmax(np.nan_to_num(arr, nan=-np.inf).reshape(n, -1).max(1))) if n > 1 else 0
        k = int(k)
        hs = np.nan_to_num(arr[k].astype(np.float32), nan=0.0)
        vmax = float(np.clip(hs, 0, None).max(initial=0.0))
        views.append({
            "kind": "heatmap", "slice": k, "n_slices": n, "window": window, "aspect": aspect,
            "plain": _rgb(display.render_slice(volume, k)),
            "overlay": overlay_rgb(volume.array[k], heat_slice=arr[k], volume=volume, k=k),
            "colorbar": {"colormap": _heat_colormap_name(), "max": vmax, "label": h.get("label"),
                         "method": h.get("method"), **_heat_fade()},
            "title": (f"{_method_name(h.get('method'))} heat map of {h.get('label')}"
                      + (f", slice {k + 1} of {n}" if n > 1 else ""))})
    if not views and item.get("task") == "classification" and "probabilities" in item:
        per = item.get("per_slice_probabilities")
        k = n // 2
        if per and item.get("probabilities"):
            top = max(item["probabilities"], key=item["probabilities"].get)
            k = int(np.argmax([p.get(top, 0.0) for p in per]))
        views.append({"kind": "image", "slice": k, "n_slices": n, "window": window, "aspect": aspect,
                      "plain": _rgb(display.render_slice(volume, k)), "overlay": None,
                      "title": f"Image, slice {k + 1} of {n}" if n > 1 else "Image"})
    return views


ZOOM_PX = 320  # the zoomed nodule view's side in pixels (the PDF shows it as wide as the slice)
ZOOM_MIN_FIELD_MM = 40.0


def _nodule_zoom(volume, k: int, labels2d: np.ndarray, nd: dict) -> dict | None:
    """The nodule on its slice of largest area, zoomed to a square field of 2.5 times its long
    axis (at least 40 mm): the slice as the viewer shows it, the nodule's outline, its long
    and short axis as lines where they were measured (the calipers of the "Long x short"
    column) and a 10 mm bar.  Square in mm (anisotropic pixels are resampled).  None when
    the nodule has no label on that slice or the series has no pixel spacing."""
    from PIL import Image, ImageDraw

    from .. import display
    from ..colormaps import label_color

    v = int(nd.get("label_value") or 0)
    mask = labels2d == v
    sx, sy = float(volume.spacing[0]), float(volume.spacing[1])
    if not v or not mask.any() or not getattr(volume, "spacing_known", True) or not (sx > 0 and sy > 0):
        return None
    long_mm = float(nd.get("long_axis_mm") or 0.0)
    field = max(ZOOM_MIN_FIELD_MM, 2.5 * long_mm)
    rr, cc = np.nonzero(mask)
    cy, cx = (rr.min() + rr.max()) / 2, (cc.min() + cc.max()) / 2
    hx, hy = field / 2 / sx, field / 2 / sy  # half the field in pixels
    x0, y0 = int(np.floor(cx - hx)), int(np.floor(cy - hy))
    x1, y1 = int(np.ceil(cx + hx)) + 1, int(np.ceil(cy + hy)) + 1
    rows, cols = mask.shape
    gray = _rgb(display.render_slice(volume, k))
    crop = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)  # black beyond the image's edge
    ys, xs = slice(max(y0, 0), min(y1, rows)), slice(max(x0, 0), min(x1, cols))
    crop[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = gray[ys, xs]
    fx, fy = ZOOM_PX / (x1 - x0), ZOOM_PX / (y1 - y0)  # screen px per image px
    img = Image.fromarray(crop).resize((ZOOM_PX, ZOOM_PX), Image.Resampling.BILINEAR)
    # the outline on the zoomed grid: the nearest-neighbour mask's boundary (the viewer's outline)
    mc = np.zeros((y1 - y0, x1 - x0), np.uint8)
    mc[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = mask[ys, xs]
    big = np.asarray(Image.fromarray(mc * 255).resize((ZOOM_PX, ZOOM_PX), Image.Resampling.NEAREST)) > 0
    edge = big & ~(np.roll(big, 1, 0) & np.roll(big, -1, 0) & np.roll(big, 1, 1) & np.roll(big, -1, 1))
    col = tuple(int(c) for c in label_color(v))
    arr = np.asarray(img).copy()
    arr[edge] = col
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    from ..nodules.measure import axis_ends_ijk

    on_slice = axis_ends_ijk(nd.get("measurements") or {}, volume, k)  # ends on another slice: no line
    for ijk in on_slice.values():
        pts = [((i - x0 + 0.5) * fx, (j - y0 + 0.5) * fy) for i, j in ijk[:, :2]]
        draw.line(pts, fill=(0, 0, 0), width=4)
        draw.line(pts, fill=(255, 214, 0), width=2)
    drawn = len(on_slice)
    bar = 10.0 / field * ZOOM_PX  # a 10 mm bar, bottom left
    draw.rectangle([10, ZOOM_PX - 16, 10 + bar, ZOOM_PX - 12], fill=(255, 255, 255), outline=(0, 0, 0))
    draw.text((14 + bar, ZOOM_PX - 22), "10 mm", fill=(255, 255, 255))
    what = "outline, long and short axis" if drawn == 2 else "outline"
    return {"rgb": np.asarray(img), "caption": f"zoomed to {field:.0f} mm: {what}"}


def _rgb(a: np.ndarray) -> np.ndarray:
    return a if a.ndim == 3 else np.stack([a] * 3, -1)


def _heat_colormap_name() -> str:
    from ..colormaps import DEFAULT_HEAT_COLORMAP
    return DEFAULT_HEAT_COLORMAP


def _heat_fade() -> dict:
    """The fade overlay_rgb draws heat maps with (colormaps.heat_rgba's defaults): nothing below
    ``threshold`` of the slice maximum, opacity rising to ``opacity`` at the maximum."""
    from ..colormaps import DEFAULT_HEAT_OPACITY, DEFAULT_HEAT_THRESHOLD
    return {"threshold": float(DEFAULT_HEAT_THRESHOLD), "opacity": float(DEFAULT_HEAT_OPACITY)}


def _method_name(m) -> str:
    return {"gradcam": "Grad-CAM", "integrated_gradients": "Integrated Gradients",
            "saliency": "Saliency", "occlusion": "Occlusion"}.get(str(m), str(m))


# Key views kept in memory between capture() and build_report(): a run over hundreds of large
# radiographs must not hold gigabytes; past this the report shows the written key PNGs instead.
CAPTURE_LIMIT_BYTES = 768 << 20
_capture_left = [CAPTURE_LIMIT_BYTES]


def capture(item: dict, volume, base_dir=None, result=None) -> dict:
    """What the report needs from a loaded volume, taken while it is in memory (``analyze``
    runs many series; keeping only these small images avoids holding every volume).  Within
    :data:`CAPTURE_LIMIT_BYTES` of views per report (reset by :func:`build_report`)."""
    out: dict = {"header": study_header(volume)}
    try:
        views = item_views(item, volume, base_dir, result)
    except Exception as e:  # noqa: BLE001 - the report says why the images are missing
        out["views_error"] = _one_line(e)
        return out
    size = sum(a.nbytes for v in views for a in (v.get("plain"), v.get("overlay")) if a is not None)
    if size > _capture_left[0]:
        out["views_error"] = (f"the report keeps at most {CAPTURE_LIMIT_BYTES >> 20} MB of key images in "
                              "memory; the written key images are shown instead")
        return out
    _capture_left[0] -= size
    out["views"] = views
    return out


# =========================================================================== cards
def _card_for(model_id: str, cards: dict | None):
    if cards and model_id in cards:
        return cards[model_id]
    try:
        from ..models.registry import Registry
        return Registry().get(model_id).card
    except Exception:  # noqa: BLE001 - the report says the card was not found
        return None


def _ci(m: dict | None) -> str:
    if not m:
        return ""
    ci = m.get("ci95")
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return f"{m['value']:.2f} ({ci[0]:.2f}-{ci[1]:.2f})"
    return f"{m['value']:.2f}"


def _threshold_metric(card, label: str, name: str, threshold: float, split: str) -> dict | None:
    """The card metric ``name`` (sensitivity/specificity) of ``label`` at ``threshold`` on the
    data whose description starts with ``split`` (e.g. "validation")."""
    if card is None:
        return None
    for m in card.metrics or []:
        data = str(m.get("data", ""))
        # the threshold's number whole: "threshold 0.74" must not match "threshold 0.7477"
        if m.get("name") == name and m.get("label") == label and data.lower().startswith(split) \
                and re.search(rf"threshold {re.escape(f'{threshold:g}')}(?![\d])", data):
            return m
    return None


def card_summary(card, sha256: dict | None = None) -> dict:
    from ..explain.sanity import not_checked_note, recorded_sanity, sanity_methods
    from ..models.card import card_limitations
    sums = dict(sha256 or {}) or {w.file: w.sha256 for w in card.weights if getattr(w, "sha256", None)}
    return {"id": card.id, "name": card.name, "version": card.version, "task": card.task,
            "intended_use": card.intended_use, "training_data": card.training_data,
            "validation_data": card.validation_data,
            "limitations": card_limitations(card),
            "license": card.license, "sha256": sums,
            "sanity": {k: bool(v.get("passed")) for k, v in recorded_sanity(card).items()},
            # verdicts on record made with other weights: "not checked for these weights"
            "sanity_other_weights": [m for m in sanity_methods(card) if not_checked_note(card, m)]}


# =========================================================================== report data
def _items_of(doc: dict) -> tuple[list[dict], list[str], dict]:
    """(items, run notes, {model id: sha256}) of a results.json or a demo report.json."""
    notes = [str(n) for n in doc.get("notes") or []]
    sums: dict = {}
    if isinstance(doc.get("model"), dict):
        sums[doc["model"].get("id")] = doc["model"].get("sha256") or {}
    if "items" in doc:
        return [dict(it) for it in doc.get("items") or [] if isinstance(it, dict)], notes, sums
    items = []
    for s in doc.get("series") or []:
        for a in s.get("analyses") or []:
            a = dict(a)
            a.setdefault("_series_warnings", list(s.get("warnings") or []))
            items.append(a)
        notes += [f"{s.get('modality', '')} {s.get('description', '')}: {n}" for n in s.get("notes") or []]
    for p in doc.get("problems") or []:
        if isinstance(p, dict):
            notes.append(f"{p.get('path')}: {p.get('reason')}")
    return items, notes, sums


def _findings(item: dict, card) -> list[dict]:
    rows = []
    decisions = item.get("decisions") or {}
    ood = item.get("ood") if isinstance(item.get("ood"), dict) else None
    withhold = bool(ood and ood.get("flagged"))
    # issue 14's decision block (models.operating_point), when the run made one: its state
    # (positive / review / negative / withheld) and the independent test-split figures
    states, tests, test_ops = {}, {}, {}
    dblock = item.get("decision") if isinstance(item.get("decision"), dict) else {}
    if dblock.get("withheld"):
        withhold = True
    for x in dblock.get("labels") or []:
        if isinstance(x, dict) and x.get("label") is not None:
            states[x["label"]] = x.get("state")
            op = x.get("operating_point") if isinstance(x.get("operating_point"), dict) else {}
            t = op.get("test") if isinstance(op.get("test"), dict) else None
            if t and isinstance(t.get("sensitivity"), dict) and isinstance(t.get("specificity"), dict):
                test_ops[x["label"]] = t
            try:
                from ..models.operating_point import operating_point_text
                tests[x["label"]] = operating_point_text(x.get("operating_point"))
            except Exception:  # noqa: BLE001 - older engine: no test line
                pass
    for lab, p in (item.get("probabilities") or {}).items():
        dec = decisions.get(lab)
        row = {"label": lab, "probability": float(p), "threshold": None, "decision": "no threshold",
               "sensitivity": "", "specificity": "", "operating_point_data": ""}
        if isinstance(dec, dict) and dec.get("threshold") is not None:
            t = float(dec["threshold"])
            row["threshold"] = t
            if withhold or dec.get("withheld") or dec.get("positive") is None:
                row["decision"] = "withheld"
            elif states.get(lab) in ("positive", "review", "negative"):
                row["decision"] = states[lab]
            else:
                row["decision"] = "positive" if dec.get("positive") else "negative"
            # the card's INDEPENDENT test split at this threshold (issue 14), else its validation
            row["figures_from"] = "validation"
            for name in ("sensitivity", "specificity"):
                m = _threshold_metric(card, lab, name, t, "validation")
                if lab in test_ops:
                    row[name] = _ci(test_ops[lab][name])
                    row["figures_from"] = str(test_ops[lab].get("data") or "independent test data")
                elif m is not None:
                    row[name] = _ci(m)
                elif dec.get(name) is not None:
                    row[name] = f"{float(dec[name]):.2f} (no CI in the card)"
                else:
                    row[name] = "not in the card"
            th = getattr(card, "thresholds", {}).get(lab) if card is not None else None
            row["operating_point_data"] = getattr(th, "data", "") or ""
            row["test"] = tests.get(lab, "")
            if dec.get("threshold_source") == "site":  # a saved site operating point: say so
                row["site"] = str(dec.get("note") or "site threshold")
                row["sensitivity"] = row["sensitivity"] if "(" in row["sensitivity"] and "no CI" not in \
                    row["sensitivity"] else "site threshold: see note"
                row["specificity"] = row["specificity"] if "(" in row["specificity"] and "no CI" not in \
                    row["specificity"] else "site threshold: see note"
        elif withhold or (isinstance(dec, dict) and dec.get("withheld")):
            row["decision"] = "withheld"
        rows.append(row)
    return rows


def _withheld_reason(item: dict) -> str:
    """Every reason a decision is withheld (outside the training data, a research override)."""
    reasons = []
    ood = item.get("ood") if isinstance(item.get("ood"), dict) else None
    if ood and ood.get("flagged"):
        reasons.append(OOD_TEXT.lower())
    d = item.get("decision") if isinstance(item.get("decision"), dict) else {}
    if d.get("withheld_reason"):
        reasons.append(str(d["withheld_reason"]))
    for v in (item.get("decisions") or {}).values():
        if isinstance(v, dict) and isinstance(v.get("withheld"), str):
            reasons.append(v["withheld"])
    return "; ".join(dict.fromkeys(reasons))


def _sizes(item: dict) -> dict | None:
    if item.get("kind") == "slide" and isinstance(item.get("areas"), dict):
        unit = {"mm2": "mm²", "px": "px²"}.get(str(item.get("area_unit")), str(item.get("area_unit") or ""))
        src = "slide MPP" if item.get("area_unit") == "mm2" else "none"
        return {"unit": unit, "values": {str(k): float(v) for k, v in item["areas"].items()},
                "spacing_source": src,
                "spacing_text": "tissue area of the analysed tiles by their most probable class; "
                                + ("the slide's microns per pixel" if src != "none" else SPACING_WORDS["none"])}
    if item.get("task") != "segmentation":
        return None
    src = item.get("spacing_source") or "none"
    for key, unit in (("volume_ml", "mL"), ("area_mm2", "mm²"), ("area_px", "px")):
        vals = item.get(key)
        if vals:
            return {"unit": unit, "values": {k: float(v) for k, v in vals.items() if k != "background"},
                    "spacing_source": src, "spacing_text": SPACING_WORDS.get(src, src)}
    return None


def _explanations(item: dict, card_sum: dict | None) -> list[str]:
    lines = []
    sanity = (card_sum or {}).get("sanity") or {}
    for h in item.get("heatmaps") or []:
        m = h.get("method")
        if m in sanity:
            status = "passed" if sanity[m] else "FAILED (the map may show image structure, not what the model learned)"
            s = f"weight-randomisation sanity check {status}"
        elif m in ((card_sum or {}).get("sanity_other_weights") or ()):
            s = ("not checked for these weights (the weight-randomisation sanity check on record was made "
                 "with other weights)")
        else:
            s = "no sanity check recorded for this method and model"
        f = (h.get("faithfulness") or {}).get("faithfulness")
        ftxt = ""
        if isinstance(f, (int, float)) and math.isfinite(f):
            ftxt = f"; deletion test {'better' if f > 0 else 'not better'} than random ({f:+.2f})"
        lines.append(f"{_method_name(m)} heat map of {h.get('label')}: {s}{ftxt}.")
        from ..explain.flags import flagged_text

        flagged = flagged_text(h)
        if flagged:
            lines.append(flagged[0].upper() + flagged[1:] + ".")
    er = item.get("explanation_region")
    if er:
        from ..explain.regions import region_text
        t = region_text(er)
        if t:
            lines.append(t[0].upper() + t[1:] + ".")
    return lines


def _report_item(n, it, volumes, captured, base, cards, card_objs, card_sums, sums, header_cache,
                 deidentify, load_missing):
    """(study key, header, report entry) of one results.json item."""
    it["_index"] = n
    mid = it.get("model") or "?"
    if mid not in card_objs:
        card_objs[mid] = _card_for(mid, cards)
        if card_objs[mid] is not None:
            card_sums[mid] = card_summary(card_objs[mid], sums.get(mid))
    card = card_objs[mid]
    cap = captured.get(n) or {}
    vol = _volume_for(it, volumes)
    notes: list[str] = []
    if vol is None and not cap and load_missing and not it.get("error") and it.get("kind") != "slide":
        try:
            import warnings
            with warnings.catch_warnings():  # library noise of damaged inputs: the note says why
                warnings.simplefilter("ignore")
                vol = _load_volume(it)
        except Exception as e:  # noqa: BLE001 - said in the report
            notes.append(f"key images from the written files only: the input could not be "
                         f"loaded again ({_one_line(e)})")
    header = cap.get("header")
    if header is None and vol is not None:
        header = study_header(vol)
    src = str(it.get("source") or "")
    if header is None and it.get("kind") != "image" and src:
        if src not in header_cache:
            f = src if os.path.isfile(src) else None
            if f is None and vol is not None and getattr(vol, "source_paths", None):
                f = vol.source_paths[0]
            header_cache[src] = _header_from_file(f) if f else None
        header = header_cache[src]
    if header is None:
        header = header_from_tags({})
        header["no_dicom"] = True
    if deidentify:
        header = deidentify_header(header)
    key = header.get("study_uid") or (f"{header.get('patient_id')}|{header.get('study_date')}"
                                      if not header.get("no_dicom") else "plain")
    views = cap.get("views")
    if cap.get("views_error"):
        notes.append(f"key images not rendered from the image: {cap['views_error']}")
    if views is None and vol is not None:
        try:
            views = item_views(it, vol, base)
        except Exception as e:  # noqa: BLE001 - said in the report
            notes.append(f"key images not rendered: {_one_line(e)}")
            views = None
    if views is None:
        keys = list(it.get("key_images") or [])
        if it.get("kind") == "slide":  # whole-slide: the overview coloured by the most probable class
            keys = [(it.get("files") or {}).get("overview_png")] if isinstance(it.get("files"), dict) else []
        views = [{"kind": "file", "title": Path(k).name, "file": str(base / k) if base else k,
                  "plain": None, "overlay": None}
                 for k in keys if isinstance(k, str) and base is not None and (base / k).is_file()]
        if it.get("kind") == "slide":
            for v in views:
                v["legend"] = _slide_legend(it)
    if it.get("kind") == "slide" and isinstance(it.get("mean_probabilities"), dict):
        notes.append("whole slide: tissue-weighted mean tile probabilities (a summary, not a slide "
                     "diagnosis): " + ", ".join(f"{k} {float(v):.3f}" for k, v in it["mean_probabilities"].items()))
    ood = it.get("ood") if isinstance(it.get("ood"), dict) else None
    warnings = list(dict.fromkeys([str(w) for w in (it.get("warnings") or [])]
                                  + [str(w) for w in (it.get("explanation_region") or {}).get("warnings", [])]
                                  + [str(w) for h in it.get("heatmaps") or [] for w in h.get("warnings") or []]
                                  + [f"{x.get('id')}: {w}" for x in it.get("nodules") or [] if isinstance(x, dict)
                                     for w in x.get("warnings") or []]))
    entry = {
        "model": str(mid), "model_version": _s(it.get("model_version")), "task": _s(it.get("task")),
        "model_name": getattr(card, "name", "") if card is not None else "",
        "series": _s(it.get("description")), "series_uid": "" if deidentify else _s(it.get("series_uid")),
        "source": "" if deidentify else src, "kind": _s(it.get("kind")),
        "shape": list(it.get("shape") or []), "error": it.get("error"),
        "ood": ood, "ood_flagged": bool(ood and ood.get("flagged")),
        "findings": _findings(it, card), "aggregation": _s(it.get("aggregation")) or None,
        "sizes": _sizes(it), "views": views,
        "explanation": _explanations(it, card_sums.get(mid)),
        "warnings": warnings, "notes": notes,
        "card_found": card is not None,
        "withheld_reason": _withheld_reason(it),
        "quality": str((it.get("quality") or {}).get("text") or "") if isinstance(it.get("quality"), dict) else "",
        "research_override": it.get("research_override"),
        "nodules": _nodule_rows(it, deidentify),
    }
    return key, header, entry


def _slide_legend(item: dict) -> list[dict]:
    """The class colours of a slide overview (slides.heatmap_io.write_overview_png: class n of
    the model's labels in label_color(n + 1))."""
    from ..colormaps import label_color
    labels = item.get("labels") if isinstance(item.get("labels"), list) else list(item.get("areas") or {})
    return [{"value": None, "name": str(lab), "color": tuple(int(c) for c in label_color(n + 1))}
            for n, lab in enumerate(labels)]


def _models_behind(item) -> list[str]:
    """Model ids an item's printed numbers come from besides its own model."""
    if not isinstance(item, dict):
        return []
    out = []
    er = item.get("explanation_region")
    if isinstance(er, dict) and isinstance(er.get("model"), str):
        out.append(er["model"])
    for x in item.get("nodules") or []:
        models = x.get("models") if isinstance(x, dict) else None
        if isinstance(models, dict):  # model id -> version of the models that ran
            out += [str(k) for k in models]
    return [m for m in dict.fromkeys(out) if m and m != item.get("model")]


def _growth_text(g, deidentify: bool = False) -> str:
    """A nodule's growth since the prior the reader linked (nodules.growth), or "".  De-identified:
    the prior's date is left out (the study date is removed too); the interval in days stays."""
    if not isinstance(g, dict) or not g.get("text"):
        return ""
    p = g.get("prior") if isinstance(g.get("prior"), dict) else {}
    warn = "; ".join(str(w) for w in g.get("warnings") or [])
    when = "the prior study" if deidentify else f"{p.get('date', '?')}"
    return (f"vs {p.get('label', '?')} of {when} ({float(p.get('volume_mm3') or 0):,.0f} mm³): "
            f"{g['text']}" + (f" (note: {warn})" if warn else ""))


def _nodule_rows(item: dict, deidentify: bool = False) -> list[dict]:
    """CT nodules (imaging_assist/nodules): one row per point analysed."""
    rows = []
    for x in item.get("nodules") or []:
        if not isinstance(x, dict):
            continue
        f = lambda v, fmt: "-" if v is None else format(float(v), fmt)  # noqa: E731
        dec = x.get("decision") if isinstance(x.get("decision"), dict) else {}
        ood = x.get("ood") if isinstance(x.get("ood"), dict) else {}
        if x.get("p_malignant") is None:
            mal = "-"
        elif dec.get("withheld"):
            mal = f"{float(x['p_malignant']):.3f} (decision withheld)"
        else:
            from ..models.operating_point import label_state

            t = x.get("threshold")
            st = label_state(dec, "malignant")  # the engine's state, from the unrounded probability
            p = float(st["probability"]) if st and st.get("probability") is not None else float(x["p_malignant"])
            state = st.get("state") if st else (None if t is None else ("positive" if p >= float(t) else "negative"))
            mal = _fmt_p(p, None if t is None else float(t)) + ("" if t is None or state is None else
                                f" {'>=' if state in ('positive', 'review') else '<'} {float(t):g}: {state}")
        c = x.get("center_lps") or x.get("point_lps") or []
        rows.append({"id": str(x.get("id")), "found": bool(x.get("found")), "reason": str(x.get("reason") or ""),
                     "where": ", ".join(f"{float(v):.1f}" for v in c),
                     "volume": f(x.get("volume_mm3"), ",.0f"),
                     "axes": "-" if x.get("long_axis_mm") is None else
                     f"{float(x['long_axis_mm']):.1f} x {float(x['short_axis_mm']):.1f}",
                     "hu": f(x.get("mean_hu"), ".0f"), "density": str(x.get("density") or "-"),
                     "malignancy": mal, "growth": _growth_text(x.get("growth"), deidentify),
                     "ood": ood if ood.get("flagged") else None,
                     "decision_text": "" if dec.get("withheld") else str(dec.get("text") or "")})
    return rows


def _s(v) -> str:
    """A text field of results.json: str, or "" for anything else (None, numbers, lists)."""
    return v if isinstance(v, str) else ""


def _broken_entry(it, reason: str) -> dict:
    g = it.get if isinstance(it, dict) else (lambda k, d=None: d)
    return {"model": str(g("model") or "?"), "model_version": str(g("model_version") or ""),
            "task": "", "model_name": "", "series": "", "series_uid": "", "source": "",
            "kind": "", "shape": [], "error": reason, "ood": None, "ood_flagged": False,
            "findings": [], "aggregation": None, "sizes": None, "views": [], "explanation": [],
            "warnings": [], "notes": [], "card_found": False, "withheld_reason": "",
            "quality": "", "research_override": None}


def build_report(results_json: dict, *, volumes: dict | None = None,
                 measurements: list | None = None, deidentify: bool = False,
                 base_dir=None, captured: dict | None = None, cards: dict | None = None,
                 load_missing: bool = True) -> dict:
    """Plain data for :func:`write_report_pdf`.

    ``results_json``: a ``results.json`` document (analyze) or the demo's ``report.json``.
    ``volumes``: loaded inputs, keyed by series UID or source path (or item index), to render
    the key slices; items without one are loaded again from their source when
    ``load_missing`` (else only the written key images are shown). ``captured``: per item
    index what :func:`capture` took while the volume was loaded. ``base_dir``: the folder the
    item file names are relative to (default: the document's ``out``). ``measurements``:
    the viewer's measurements (``Measurement`` objects or their ``to_dict()``), with
    optional ``series_uid``/``description``. ``deidentify``: header values removed as
    :func:`deidentify_header` says, source paths not printed. ``cards``: model cards by id
    (default: from the registry)."""
    if not isinstance(results_json, dict):
        raise ReportError("the results to report are not a results.json document")
    base = Path(base_dir) if base_dir is not None else (
        Path(results_json["out"]) if results_json.get("out") else None)
    items, run_notes, sums = _items_of(results_json)
    captured = captured or {}
    card_objs: dict = {}
    card_sums: dict = {}
    studies: dict = {}
    study_order: list = []
    header_cache: dict = {}
    for n, it in enumerate(items):
        try:
            key, header, entry = _report_item(n, it, volumes, captured, base, cards, card_objs,
                                              card_sums, sums, header_cache, deidentify, load_missing)
        except Exception as e:  # noqa: BLE001 - a malformed item: said in the report, never a traceback
            key, header = "unreadable", {**header_from_tags({}), "no_dicom": True}
            entry = _broken_entry(it, f"this result could not be read ({type(e).__name__}: {_one_line(e)})")
        if key not in studies:
            studies[key] = {"header": header, "items": []}
            study_order.append(key)
        studies[key]["items"].append(entry)
        # cards of the other models whose numbers this item prints (the nodule pair, the
        # explanation's region model): listed under "Models used" with their limitations
        for mid in _models_behind(it):
            if mid not in card_objs:
                card_objs[mid] = _card_for(mid, cards)
                if card_objs[mid] is not None:
                    card_sums[mid] = card_summary(card_objs[mid], sums.get(mid))
    _capture_left[0] = CAPTURE_LIMIT_BYTES  # the captured views are consumed by this report
    meas = [_measurement_row(m) for m in measurements or []]
    created = results_json.get("created")
    report = {
        "title": "Imaging Assist - analysis report",
        "studies": [studies[k] for k in study_order],
        "measurements": meas,
        "warnings": run_notes,
        "cards": [card_sums[k] for k in card_sums],
        "missing_cards": [k for k, v in card_objs.items() if v is None],
        "software": {"name": "imaging-assist", "version": results_json.get("tool_version") or _tool_version(),
                     "results_created": created or "",
                     "report_created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
        "deidentified": bool(deidentify),
    }
    if deidentify:
        _scrub(report, results_json, items)
    return report


def _scrub(report: dict, doc: dict, items: list[dict]) -> None:
    """De-identified report: no series description (PS3.15: X) and no source path or input
    folder in any printed note."""
    for study in report.get("studies") or []:
        for entry in study.get("items") or []:
            entry["series"] = ""
    for m in report.get("measurements") or []:
        m["series"] = ""
    paths = {str(doc.get("input") or ""), str(doc.get("source") or "")}
    paths |= {str(it.get("source") or "") for it in items}
    paths = sorted((p for p in paths if len(p) > 1), key=len, reverse=True)

    def clean(s: str) -> str:
        for p in paths:
            s = s.replace(p, "<input>")
        return s
    report["warnings"] = [clean(w) for w in report["warnings"]]
    for st in report["studies"]:
        for e in st["items"]:
            e["warnings"] = [clean(w) for w in e["warnings"]]
            e["notes"] = [clean(w) for w in e["notes"]]
            if e.get("error"):
                e["error"] = clean(str(e["error"]))
            for v in e["views"]:
                if v.get("kind") == "file":
                    v["title"] = "key image"


def _measurement_row(m) -> dict:
    d = m.to_dict() if hasattr(m, "to_dict") else dict(m)
    text = m.summary() if hasattr(m, "summary") else ""
    if not text:
        if "length" in d:
            text = f"{d['length']:.1f} {d.get('length_unit', 'mm')}"
        elif "angle" in d:
            text = f"{d['angle']:.1f}°"
        elif "mean" in d:
            au = "mm²" if d.get("length_unit", "mm") == "mm" else "px²"
            text = f"mean {d['mean']:.1f} ± {d.get('sd', float('nan')):.1f} {d.get('units', '')}, " \
                   f"{d.get('area_mm2', float('nan')):.0f} {au}"
    src = d.get("spacing_source")
    return {"kind": d.get("kind", ""), "slice": int(d.get("index", 0)) + 1, "text": text,
            "series": d.get("description") or d.get("series") or "",
            "spacing_source": src or "", "spacing_text": SPACING_WORDS.get(src, src or "")}


# =========================================================================== PDF
def _font_files() -> tuple[str, str] | None:
    """DejaVu Sans (regular, bold) for text beyond Latin-1 (patient names, ≥, ²): the system's,
    else matplotlib's copy (optional ``train`` extra; imported only when needed)."""
    def pair(d: Path):
        r, b = d / "DejaVuSans.ttf", d / "DejaVuSans-Bold.ttf"
        return (str(r), str(b)) if r.is_file() and b.is_file() else None

    got = pair(Path("/usr/share/fonts/truetype/dejavu"))
    if got is None:
        try:
            import matplotlib
            got = pair(Path(matplotlib.get_data_path()) / "fonts" / "ttf")
        except Exception:  # noqa: BLE001 - no font: Latin-1 core font, missing characters said
            got = None
    return got


class _Doc:
    """fpdf2 document with the report's page furniture and a few layout helpers."""

    def __init__(self, page_size: str, header_line: str):
        from fpdf import FPDF

        outer = self

        class _PDF(FPDF):
            def header(self):
                outer._page_header()

            def footer(self):
                outer._page_footer()

        self.pdf = _PDF(format=PAGE_SIZES[page_size.upper()], unit="mm")
        self.pdf.set_image_filter("FlateDecode")  # lossless
        self.pdf.set_auto_page_break(True, margin=16)
        self.pdf.set_margins(14, 14, 14)
        self.header_line = header_line
        self.unsupported: set[str] = set()
        fonts = _font_files()
        if fonts:
            self.pdf.add_font("body", "", fonts[0])
            self.pdf.add_font("body", "B", fonts[1])
            self.family, self.unicode = "body", True
            # characters the font has no glyph for (CJK names in DejaVu) are printed as "?"
            # and said at the end, never dropped silently
            self.cmap = set(self.pdf.fonts["body"].cmap) & set(self.pdf.fonts["bodyB"].cmap) \
                if "bodyB" in self.pdf.fonts else set(self.pdf.fonts["body"].cmap)
        else:
            self.family, self.unicode = "helvetica", False
        self.pdf.set_title("Imaging Assist report - NOT FOR CLINICAL USE")
        self.pdf.set_creator("imaging-assist")

    # text -------------------------------------------------------------------
    def t(self, s) -> str:
        s = str(s)
        if self.unicode:
            if all(ord(ch) in self.cmap for ch in s):
                return s
            out = []
            for ch in s:
                if ord(ch) in self.cmap or ch in "\n\r\t":
                    out.append(ch)
                else:
                    self.unsupported.add(ch)
                    out.append("?")
            return "".join(out)
        rep = {"≥": ">=", "≤": "<=", "→": "->", "±": "+/-", "–": "-", "—": "-", "…": "..."}
        out = []
        for ch in s:
            ch = rep.get(ch, ch)
            try:
                ch.encode("latin-1")
                out.append(ch)
            except UnicodeEncodeError:
                self.unsupported.add(ch)
                out.append("?")
        return "".join(out)

    def font(self, size=9.0, bold=False, color=(0, 0, 0)):
        self.pdf.set_font(self.family, "B" if bold else "", size)
        self.pdf.set_text_color(*color)

    @property
    def width(self) -> float:
        return self.pdf.w - self.pdf.l_margin - self.pdf.r_margin

    def para(self, s, size=9.0, bold=False, color=(0, 0, 0), h=None):
        self.font(size, bold, color)
        self.pdf.multi_cell(self.width, h or size * 0.5, self.t(s), new_x="LMARGIN", new_y="NEXT")

    def heading(self, s, size=12.0):
        self.need(16)
        self.pdf.ln(2)
        self.para(s, size, True, (20, 40, 90))
        y = self.pdf.get_y()
        self.pdf.set_draw_color(20, 40, 90)
        self.pdf.set_line_width(0.3)
        self.pdf.line(self.pdf.l_margin, y, self.pdf.w - self.pdf.r_margin, y)
        self.pdf.ln(1.5)

    def need(self, h: float):
        if self.pdf.get_y() + h > self.pdf.h - self.pdf.b_margin:
            self.pdf.add_page()

    def box(self, s, fill=(253, 236, 234), color=(150, 0, 0), size=9.5):
        self.font(size, True, color)
        self.pdf.set_fill_color(*fill)
        self.pdf.multi_cell(self.width, size * 0.55, self.t(s), fill=True, border=0,
                            new_x="LMARGIN", new_y="NEXT", padding=1.5)
        self.pdf.ln(1)

    def table(self, header: list[str], rows: list[list[str]], widths: list[float], size=8.5):
        from fpdf.enums import TableCellFillMode
        from fpdf.fonts import FontFace
        self.font(size)
        self.need(6 * (1 + min(len(rows), 3)))
        self.pdf.set_fill_color(255, 255, 255)
        with self.pdf.table(col_widths=widths, width=min(self.width, sum(widths)), text_align="LEFT",
                            align="LEFT", cell_fill_mode=TableCellFillMode.NONE,
                            headings_style=FontFace(emphasis="BOLD", fill_color=(230, 234, 242)),
                            line_height=size * 0.55, padding=1) as tbl:
            r = tbl.row()
            for c in header:
                r.cell(self.t(c))
            for row in rows:
                r = tbl.row()
                for c in row:
                    r.cell(self.t(c))
        self.pdf.ln(1.5)

    def bullets(self, lines, size=8.5, color=(0, 0, 0)):
        self.font(size, False, color)
        for s in lines:
            self.pdf.set_x(self.pdf.l_margin + 2)
            self.pdf.multi_cell(self.width - 2, size * 0.5, self.t(f"• {s}" if self.unicode else f"- {s}"),
                                new_x="LMARGIN", new_y="NEXT")

    # page furniture ---------------------------------------------------------------
    def _page_header(self):
        p = self.pdf
        p.set_y(6)
        self.font(9, True, (180, 0, 0))
        banner = p.get_string_width(NOT_FOR_CLINICAL_USE) + 2 * p.c_margin
        p.cell(banner, 5, NOT_FOR_CLINICAL_USE, new_x="RIGHT", new_y="TOP")
        self.font(8, False, (60, 60, 60))
        line = self.t(self.header_line)
        room = self.width - banner - 4
        rule = 11.5
        if p.get_string_width(line) + 2 * p.c_margin <= room:  # fits beside the banner
            p.set_x(p.w - p.r_margin - room)
            p.cell(room, 5, line, align="R", new_x="LMARGIN", new_y="NEXT")
        else:
            # too long beside the banner (64-character names and IDs): a full-width row of its
            # own under it, at most two lines; the patient block prints every value whole
            self.font(7, False, (60, 60, 60))
            lines = p.multi_cell(self.width, 3.2, line, dry_run=True, output="LINES")
            if len(lines) > 2:
                ell = "…" if self.unicode else "..."
                cut = " ".join(lines[:2])
                while cut and len(p.multi_cell(self.width, 3.2, cut + ell, dry_run=True,
                                               output="LINES")) > 2:
                    cut = cut[:-1]
                line = cut.rstrip() + ell
            p.set_xy(p.l_margin, 11)
            p.multi_cell(self.width, 3.2, line, align="R", new_x="LMARGIN", new_y="NEXT")
            rule = p.get_y() + 0.5
        p.set_draw_color(180, 0, 0)
        p.set_line_width(0.4)
        p.line(p.l_margin, rule, p.w - p.r_margin, rule)
        p.set_y(rule + 2.5)

    def _page_footer(self):
        p = self.pdf
        p.set_y(-11)
        self.font(7.5, False, (90, 90, 90))
        p.cell(p.w - p.l_margin - p.r_margin, 4,
               self.t(f"{NOT_FOR_CLINICAL_USE} · research software, not a diagnosis · "
                      f"page {p.page_no()}/{{nb}}"), align="C")


def _fmt_size(v: float) -> str:
    """A volume or area: 1 decimal from 100 up, else 3 significant digits, so that a small
    non-zero size never reads as 0 (0.0246 mm², not "0.0"); exactly 0 as "0"."""
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else str(v)
    d = max(1, 2 - math.floor(math.log10(abs(v))))
    return f"{v:,.{d}f}"


def _colorbar(name: str, n: int = 256, threshold: float = 0.0) -> np.ndarray:
    """The colour bar, 0 at the left; the part below ``threshold`` (not drawn on the image)
    light grey."""
    from ..colormaps import colormap_rgb
    row = colormap_rgb(name, n)[None, :, :].copy()
    row[0, np.linspace(0.0, 1.0, n) < threshold] = NOT_DRAWN_GREY
    return np.repeat(row, 12, axis=0)


def _draw_views(doc: _Doc, views: list[dict]):
    from PIL import Image
    p = doc.pdf
    gap = 4.0
    for v in views:
        if v.get("kind") == "file":
            doc.need(60)
            doc.para(v["title"] + " (written key image)", 8.5, True)
            try:
                with Image.open(v["file"]) as im:
                    w, h = im.size
                    im = im.convert("RGB")
                    wd = min(doc.width / 2 - gap / 2, 85.0)
                    hd = wd * h / max(w, 1)
                    doc.need(hd + 4)
                    p.image(im, x=p.l_margin, y=p.get_y(), w=wd, h=hd)
                    p.set_y(p.get_y() + hd + 2)
            except Exception as e:  # noqa: BLE001
                doc.para(f"key image unreadable: {_one_line(e)}", 8)
                continue
            if v.get("legend"):  # a slide overview: which colour is which class
                doc.need(12)
                doc.para("Each analysed tile in the colour of its most probable class, stronger where "
                         "that class is more probable; uncoloured: no tissue analysed.", 7.5, False, (70, 70, 70))
                _legend(doc, v["legend"], p.l_margin)
            continue
        plain, over = v.get("plain"), v.get("overlay")
        rows, cols = plain.shape[:2]
        wd = (doc.width - gap) / 2 if over is not None else doc.width / 2
        hd = wd * rows * float(v.get("aspect", 1.0)) / cols
        maxh = 95.0
        if hd > maxh:
            wd, hd = wd * maxh / hd, maxh
        # the second image's own height at the same width (a zoomed nodule is square in mm)
        ho = hd if over is None or "overlay_aspect" not in v else \
            wd * over.shape[0] * float(v["overlay_aspect"]) / over.shape[1]
        doc.need(max(hd, ho) + 26)
        doc.para(v["title"], 9, True)
        doc.para(f"{cols} × {rows} pixels as the viewer shows them: {v['window']}", 7.5, False, (70, 70, 70))
        y = p.get_y() + 1
        x0 = p.l_margin
        p.image(Image.fromarray(plain), x=x0, y=y, w=wd, h=hd)
        if over is not None:
            p.image(Image.fromarray(over), x=x0 + wd + gap, y=y, w=wd, h=ho)
        captions = v.get("captions") or ["image", "with the overlay"]
        doc.font(7, False, (70, 70, 70))
        p.set_xy(x0, y + hd + 0.5)
        p.cell(wd, 3.5, doc.t(captions[0]), align="C")
        if over is not None:
            p.set_xy(x0 + wd + gap, y + ho + 0.5)
            p.cell(wd, 3.5, doc.t(captions[1]), align="C")
        hd = max(hd, ho)
        p.set_y(y + hd + 5)
        if v.get("kind") == "heatmap":
            cb = {**_heat_fade(), **v["colorbar"]}  # reports built before the fade was recorded
            thr, opa = float(cb["threshold"]), float(cb["opacity"])
            bw = min(60.0, doc.width / 2)
            y = p.get_y()
            p.image(Image.fromarray(_colorbar(cb["colormap"], threshold=thr)), x=x0, y=y, w=bw, h=3)
            doc.font(7, False, (40, 40, 40))
            p.set_xy(x0, y + 3.3)
            p.cell(bw / 2, 3, "0", align="L")
            p.cell(bw / 2, 3, doc.t(f"max {cb['max']:.3g}"), align="R")
            p.set_xy(x0 + bw + 3, y - 0.3)
            # said from the fade the overlay was drawn with, never a fixed number
            p.multi_cell(doc.width - bw - 3, 3.2,
                         doc.t(f"{_method_name(cb.get('method'))} attribution for {cb.get('label')} "
                               f"({cb['colormap']} colour map), relative to this slice's maximum; "
                               f"below {thr * 100:.0f} % of it not drawn (grey in the bar), opacity "
                               f"rising to {opa * 100:.0f} % at the maximum"),
                         new_x="LMARGIN", new_y="NEXT")
            p.set_y(max(p.get_y(), y + 7))
        elif v.get("kind") == "labels" and v.get("legend"):
            _legend(doc, v["legend"], x0)
        p.ln(1)


def _legend(doc: _Doc, entries: list[dict], x0: float):
    """Colour squares with their names (a label map's values, a slide overview's classes)."""
    p = doc.pdf
    y = p.get_y()
    x = x0
    doc.font(7.5)
    for e in entries:
        name = str(e["name"]).replace("_", " ")
        label = doc.t(name if e.get("value") is None else f"{e['value']} {name}")
        w = p.get_string_width(label) + 7
        if x + w > p.w - p.r_margin:
            x, y = x0, y + 4.5
        p.set_fill_color(*e["color"])
        p.rect(x, y + 0.5, 3, 3, style="F")
        p.set_xy(x + 4, y)
        p.cell(w - 4, 4, label)
        x += w + 2
    p.set_y(y + 6)


def _header_block(doc: _Doc, h: dict, deid: bool):
    if h.get("no_dicom"):
        doc.para("Plain image(s) without a DICOM header: no patient or study information.", 9)
        return
    rows = [("Patient", h.get("patient_name") or "not given"), ("Patient ID", h.get("patient_id") or "not given"),
            ("Birth date", h.get("birth_date") or "not given"),
            ("Sex / age", f"{h.get('sex') or 'not given'} / {h.get('age') or 'not given'}"),
            ("Study date", h.get("study_date") or "not given"),
            ("Study", h.get("study_description") or "not given"),
            ("Accession", h.get("accession") or "not given"), ("Modality", h.get("modality") or "not given")]
    p = doc.pdf
    half = doc.width / 2
    lab, gap = 24, 2  # label width; space between the left value and the right column
    # two columns of four rows; a value wraps within its column (64-character names, IDs and
    # descriptions are valid DICOM), never cut and never over the other column; each row is
    # as high as its taller value
    for r in range(4):
        pair = (rows[r], rows[r + 4])
        n_lines = []
        for k, v in pair:
            doc.font(9.5, k in ("Patient", "Patient ID"))
            n_lines.append(len(p.multi_cell(half - lab - gap, 5, doc.t(v), dry_run=True, output="LINES")))
        doc.need(5 * max(n_lines))
        y = p.get_y()
        for col, (k, v) in enumerate(pair):
            x = p.l_margin + col * half
            p.set_xy(x, y)
            doc.font(8.5, False, (90, 90, 90))
            p.cell(lab, 5, doc.t(k))
            doc.font(9.5, k in ("Patient", "Patient ID"))
            p.set_xy(x + lab, y)
            p.multi_cell(half - lab - gap, 5, doc.t(v), align="L")
        p.set_y(y + 5 * max(n_lines))
    p.set_y(p.get_y() + 1.5)
    if deid:
        doc.para("De-identified: name, ID, birth date, sex, age, accession, study date and study "
                 "description removed (DICOM PS3.15 basic profile subset); source paths, series "
                 "UIDs and series descriptions not printed.", 7.5, False, (90, 90, 90))


def _reasons_sentence(reasons) -> str:
    """ " Reason: x." / " Reasons: x; y." after a sentence, or "": the reasons are lowercase
    phrases (the OOD detector's words, kept as they are) and must not start a sentence."""
    rs = [str(r).strip().rstrip(".") for r in reasons or [] if str(r).strip()]
    return f" Reason{'s' if len(rs) > 1 else ''}: {'; '.join(rs)}." if rs else ""


def _item_block(doc: _Doc, e: dict, seen: set | None = None):
    title = f"{e['model']} {e['model_version']}".strip()
    doc.heading(title + (f" — {e['series']}" if e.get("series") else ""), 11)
    if e.get("model_name"):
        doc.para(e["model_name"], 8, False, (70, 70, 70))
    if e.get("source"):
        doc.para(f"Input: {e['source']}", 7.5, False, (90, 90, 90))
    if e.get("error"):
        doc.box(f"Not analysed: {e['error']}")
        doc.bullets(e["notes"] + e["warnings"], 8)
        return
    if e.get("ood_flagged"):
        ood = e["ood"] or {}
        reasons = _reasons_sentence(ood.get("reasons"))
        score = ood.get("score")
        thr = ood.get("threshold")
        extra = f" (score {score:.3g}, limit {thr:.3g})" if isinstance(score, (int, float)) and \
            isinstance(thr, (int, float)) else ""
        doc.box(f"{OOD_TEXT}{extra}: no decision is given." + reasons)
    if e.get("research_override"):
        ro = e["research_override"]
        doc.box("Research override: the model card does not fit this input ("
                + "; ".join(str(r) for r in (ro.get("reasons") or [])) + "): no decision is given.")
    if e["findings"]:
        doc.need(8 + 6 * (1 + len(e["findings"])))
        doc.para("Findings", 9.5, True)
        rows = [[f["label"].replace("_", " "), _fmt_p(f["probability"], f["threshold"]),
                 "-" if f["threshold"] is None else f"{f['threshold']:g}" + (" (site)" if f.get("site") else ""),
                 f["decision"], f["sensitivity"] or "-", f["specificity"] or "-"] for f in e["findings"]]
        doc.table(["Label", "Probability", "Threshold", "Decision", "Sensitivity (95% CI)",
                   "Specificity (95% CI)"], rows, [27, 22, 19, 22, 46, 46])
        ops = sorted({f["operating_point_data"] for f in e["findings"] if f["operating_point_data"]})
        agg = e.get("aggregation")
        foot = []
        srcs = sorted({f["figures_from"] for f in e["findings"] if f.get("figures_from")
                       and f["figures_from"] != "validation" and not f.get("site")})
        if srcs:
            foot.append("Sensitivity and specificity are those this threshold gave on the card's "
                        f"independent test data ({'; '.join(srcs)}); the threshold was chosen on "
                        f"validation data ({'; '.join(ops) or 'see the card'}).")
        elif ops:
            foot.append("Sensitivity and specificity are those the threshold gave on the card's "
                        f"validation data ({'; '.join(ops)}).")
        foot += [f"{f['label']}: {f['site']}." for f in e["findings"] if f.get("site")]
        tests = [f"{f['label']}: {f['test']}" for f in e["findings"] if f.get("test")]
        if tests:
            foot.append("Independent test data at the same threshold: " + "; ".join(tests) + ".")
        if any(f["decision"] == "review" for f in e["findings"]):
            foot.append("review: above a rule-out threshold but not the most likely label.")
        if agg and agg != "whole_image":
            foot.append(f"Probabilities of the series: {agg.replace('_', ' ')}.")
        if any(f["decision"] == "withheld" for f in e["findings"]):
            foot.append("Decision withheld: " + (e.get("withheld_reason") or
                                                 "the input is outside what this model was trained on") + ".")
        if foot:
            doc.para(" ".join(foot), 7.5, False, (70, 70, 70))
    if e.get("nodules"):
        doc.need(8 + 6 * (1 + len(e["nodules"])))
        doc.para("Nodules", 9.5, True)
        doc.table(["Nodule", "Centre (LPS mm)", "Volume (mm³)", "Long x short (mm)", "Mean HU", "Density",
                   "Malignant (threshold)"],
                  [[r["id"], r["where"], r["volume"], r["axes"], r["hu"], r["density"], r["malignancy"]]
                   if r["found"] else [r["id"], r["where"], "not found", "", "", "", r["reason"]]
                   for r in e["nodules"]], [28, 32, 18, 24, 14, 18, 48])  # ids like "LIDC-IDRI-0001 N1" whole
        for r in e["nodules"]:
            if r.get("ood"):  # the window is unlike the training nodules: the row may not be a nodule
                o = r["ood"]
                score, thr = o.get("score"), o.get("threshold")
                extra = f" (score {score:.3g}, limit {thr:.3g})" if isinstance(score, (int, float)) and \
                    isinstance(thr, (int, float)) else ""
                doc.box(f"{r['id']}: {OOD_TEXT}{extra}: the outline and measurements may not describe a "
                        "nodule, and no decision is given." + _reasons_sentence(o.get("reasons")))
        for r in e["nodules"]:
            if r.get("decision_text"):
                doc.para(f"{r['id']}: malignancy {r['decision_text']}.", 7.5, False, (70, 70, 70))
            if r.get("growth"):
                doc.para(f"Growth of {r['id']} {r['growth']}.", 8, False)
        if any(r.get("growth") for r in e["nodules"]):
            doc.para("Growth: the reader linked the two nodules. A volume change within 25% is within "
                     "volumetry's variability (BTS 2015, NELSON); volume doubling time = interval x ln 2 / "
                     "ln(V now / V before).", 7.5, False, (70, 70, 70))
        doc.para("Diameters: longest in-plane diameter on the axial slice of largest area and the longest "
                 "perpendicular to it (Fleischner / Lung-RADS). Density: an impression from HU, not a "
                 "reader's call. Malignant: the model's likelihood that the LIDC readers' majority would "
                 "call it malignant, not pathology.", 7.5, False, (70, 70, 70))
    if e.get("sizes"):
        s = e["sizes"]
        doc.need(8 + 6 * (1 + len(s["values"])))
        doc.para("Measurements", 9.5, True)
        doc.table(["Structure", f"Size ({s['unit']})"],
                  [[k.replace("_", " "), _fmt_size(v) if s["unit"] != "px" else f"{v:,.0f}"]
                   for k, v in s["values"].items()], [60, 40])
        doc.para(f"Spacing from: {s['spacing_text']}." + (f" Segmentation {e['quality']}." if e.get("quality") else ""),
                 7.5, False, (70, 70, 70))
    if e["views"]:
        _draw_views(doc, e["views"])
    if e["explanation"]:
        doc.need(14)
        doc.para("Explanation", 9.5, True)
        doc.bullets(e["explanation"], 8.5)
    warn = e["warnings"] + e["notes"]
    key = e.get("series_uid") or e.get("source") or e.get("series")
    if seen is not None and key:  # a series' own warnings once, under its first model (less clutter)
        shown = [w for w in warn if (key, w) not in seen]
        if len(shown) < len(warn):
            shown.append(f"{len(warn) - len(shown)} more warning(s): the same as above for this series")
        seen.update((key, w) for w in warn)
        warn = shown
    if warn:
        doc.need(12)
        doc.para("Warnings", 9.5, True, (150, 70, 0))
        doc.bullets(warn, 8, (90, 50, 0))


def write_report_pdf(report: dict, out_path, *, page_size: str = "A4") -> Path:
    """Write ``report`` (from :func:`build_report`) to ``out_path`` (written to a temporary
    file first, then renamed); returns the path."""
    if str(page_size).upper() not in PAGE_SIZES:
        raise ReportError(f"page size {page_size!r}: choose A4 or Letter")
    out = Path(out_path)
    studies = report.get("studies") or []
    first = (studies[0]["header"] if studies else {}) or {}
    hl = " · ".join(x for x in (first.get("patient_name"), first.get("patient_id")) if x)
    if len(studies) > 1:
        hl = f"{len(studies)} studies"
    doc = _Doc(str(page_size), hl or "Imaging Assist report")
    p = doc.pdf
    p.add_page()
    doc.para(report.get("title", "Imaging Assist - analysis report"), 15, True, (20, 40, 90))
    sw = report.get("software") or {}
    doc.para(f"{sw.get('name', 'imaging-assist')} {sw.get('version', '')} · report {sw.get('report_created', '')}"
             + (f" · results {sw['results_created']}" if sw.get("results_created") else ""),
             8, False, (90, 90, 90))
    doc.box(f"{NOT_FOR_CLINICAL_USE}. Research models: the numbers below are what the software "
            "computed, not a diagnosis. Read the images yourself.", fill=(255, 244, 229),
            color=(140, 60, 0), size=8.5)
    for n, st in enumerate(studies):
        h = st["header"]
        doc.header_line = " · ".join(x for x in (h.get("patient_name"), h.get("patient_id"),
                                                  h.get("study_date")) if x) or "Imaging Assist report"
        if n:
            p.add_page()
        doc.heading("Patient and study" if not st["header"].get("no_dicom") else "Images", 12)
        _header_block(doc, st["header"], report.get("deidentified", False))
        seen: set = set()
        for e in st["items"]:
            try:
                _item_block(doc, e, seen)
            except Exception as ex:  # noqa: BLE001 - a malformed item: said, never a traceback
                doc.box(f"{e.get('model', '?')}: this result could not be laid out "
                        f"({type(ex).__name__}: {_one_line(ex)})")
    if not studies:
        doc.para("Nothing was analysed.", 10, True)
    if len(studies) > 1 and (report.get("measurements") or report.get("warnings") or report.get("cards")
                             or report.get("missing_cards")):
        # what follows belongs to the whole run: on pages of their own, headed as page 1, never
        # under the last study's patient (a reader would file those pages with that patient)
        doc.header_line = hl or "Imaging Assist report"
        p.add_page()
    if report.get("measurements"):
        doc.heading("Measurements in the viewer")
        doc.table(["Kind", "Series", "Slice", "Value", "Spacing from"],
                  [[m["kind"], m["series"] or "-", str(m["slice"]), m["text"], m["spacing_text"] or "-"]
                   for m in report["measurements"]], [18, 40, 12, 55, 57])
    if report.get("warnings"):
        doc.heading("Notes of the run")
        doc.bullets(report["warnings"], 8)
    if report.get("cards") or report.get("missing_cards"):
        doc.heading("Models used (summary of the model cards)")
        for c in report.get("cards") or []:
            doc.need(30)
            doc.para(f"{c['id']} {c['version']} — {c['name']}", 9.5, True)
            doc.bullets([f"Intended use: {c['intended_use']}", f"Training data: {c['training_data']}",
                         f"Validation data: {c['validation_data']}"], 8)
            if c.get("limitations"):
                doc.para("Limitations", 8.5, True)
                doc.bullets(c["limitations"], 8)
            doc.font(7, False, (60, 60, 60))
            for f, h in (c.get("sha256") or {}).items():
                p.multi_cell(doc.width, 3.5, doc.t(f"weights {f} sha256 {h}"), new_x="LMARGIN", new_y="NEXT")
            p.ln(1.5)
        for mid in report.get("missing_cards") or []:
            doc.para(f"{mid}: model card not found in the registry (no summary).", 8.5)
    if doc.unsupported:
        doc.box(f"{len(doc.unsupported)} character(s) could not be shown by the report's font "
                f"(U+{', U+'.join(f'{ord(c):04X}' for c in sorted(doc.unsupported)[:12])}) and are "
                "printed as '?': compare names and texts with the source.", size=8)
    from ..outputs import written_beside  # a new temporary file (never a planted link), removed on any error

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with written_beside(out) as tmp:
            p.output(str(tmp))
    except OSError as e:
        raise ReportError(f"cannot write the report {out}: {e.strerror or e}") from None
    from ..privacy.audit import record_export  # the audit trail (never raises)
    record_export("report-pdf", out, patient_ids=[(s.get("header") or {}).get("patient_id") for s in studies],
                  deidentified=bool(report.get("deidentified")))
    return out
