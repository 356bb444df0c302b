"""Model card (``model.json``): schema, validation and the parsed :class:`ModelCard`.

The schema is documented in ``docs/model_card.md``; keep the two in step.  Validation is
written by hand (no jsonschema dependency) so that every problem is reported as one short,
field-named phrase, and all problems of a card are reported together in one line.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelCardError

__all__ = ["ModelCard", "ModelCardError", "load_card", "validate_card", "CARD_FILE"]

SCHEMA_VERSION = 1
CARD_FILE = "model.json"
TASKS = ("classification", "segmentation")
FORMATS = ("safetensors", "torchscript", "monai_bundle")
ACTIVATIONS = ("softmax", "sigmoid")
AXIS_ORDERS_2D = ("row_col", "col_row")
INTENSITY_TYPES = ("window", "scale_range", "zscore", "minmax", "percentile", "normalize")
RESIZE_MODES = ("auto", "area", "linear", "nearest", "bicubic")
EXPLAIN_METHODS = ("gradcam", "integrated_gradients", "saliency", "occlusion")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")
_AXCODES_RE = re.compile(r"^(?=.*[LR])(?=.*[AP])(?=.*[SI])[LRAPSI]{3}$")

# Size limits, checked before anything is built or allocated (docs/model_card.md, "Limits").
# They are far above what the shipped models use (224x224, 1-3 channels, <= 3 labels) and
# keep a hostile or mistyped card from asking for gigabytes.
MAX_CARD_BYTES = 1 << 20  # model.json is read only when smaller than this
MAX_SIDE = {2: 4096, 3: 512}  # input.size / roi_size per spatial dimension
MAX_INPUT_VOXELS = 1 << 24  # product of input.size (or roi_size): 4096x4096 or 256^3
MAX_CHANNELS = 16
MAX_LABELS = 1000
MAX_LABEL_CHARS = 128
MAX_TEXT_CHARS = 20_000  # any other string of the card
MAX_LIST_ITEMS = 1000  # metrics, thresholds
MAX_INTENSITY_STEPS = 16
SPACING_RANGE = (1e-4, 1e4)  # mm
# architecture.kwargs: JSON values with these bounds (the parameter count is estimated
# afterwards on the meta device, see architectures.check_network_size)
MAX_KWARG_INT = 1 << 16
MAX_KWARG_FLOAT = 1e6
MAX_KWARG_STR = 256
MAX_KWARG_ITEMS = 64
MAX_KWARG_DEPTH = 4


@dataclass
class WeightsFile:
    file: str
    sha256: str | None = None
    # Only for MONAI Model Zoo bundles without a model.json: the hash published in the
    # bundle's large_files.yml ("md5" or "sha256"), see docs/model_card.md.
    md5: str | None = None
    hash_source: str = "model.json"


@dataclass
class Threshold:
    threshold: float
    sensitivity: float | None = None
    specificity: float | None = None
    data: str = ""

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "sensitivity": self.sensitivity,
                "specificity": self.specificity, "data": self.data}


@dataclass
class ExplanationRegion:
    """A classifier's heat map is judged against a segmenter's structures: the fraction of
    its positive attribution that falls inside ``labels`` of model ``model``."""

    model: str
    labels: list[str]
    name: str = "region"

    def to_dict(self) -> dict:
        return {"model": self.model, "labels": list(self.labels), "name": self.name}


@dataclass
class InputSpec:
    channels: int = 1
    size: list[int] | None = None  # classification: resize the whole image to this
    roi_size: list[int] | None = None  # segmentation: sliding-window ROI (None: whole image)
    spacing: list[float] | None = None  # target spacing in mm, axis order of the array
    orientation: str | None = None  # 3D only, MONAI axcodes such as "RAS"
    axis_order: str = "row_col"  # 2D: "row_col" (PIL/torchvision) or "col_row" (MONAI LoadImage)
    intensity: list[dict] = field(default_factory=list)
    units: str | None = None  # e.g. "HU": refuse inputs in other units
    invert_monochrome1: bool = True
    resize_mode: str = "auto"  # auto: "area" when shrinking every axis, else (bi/tri)linear
    # DICOM input: "modality" = stored values after rescale (default); "display" = first through
    # the file's window / VOI LUT / MONOCHROME1 to 8 bits, as JPEG/PNG exports are (radiographs)
    dicom_values: str = "modality"


@dataclass
class ModelCard:
    id: str
    name: str
    version: str
    task: str
    modality: list[str]
    body_part: str | None
    spatial_dims: int
    format: str
    weights: list[WeightsFile]
    labels: list[str]
    input: InputSpec
    activation: str
    license: str
    intended_use: str
    not_for_clinical_use: bool
    training_data: str
    validation_data: str
    architecture: dict | None = None
    thresholds: dict[str, Threshold] = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    gradcam_layer: str | None = None
    inference: dict = field(default_factory=dict)
    explanation_region: "ExplanationRegion | None" = None
    population: "Population | None" = None  # models/population.py: who/what it was trained on
    quality_checks: "QualityChecks | None" = None  # segmenters: plausible-result checks
    ood: dict | None = None  # validation/ood.py: OOD statistics file, sha256, threshold, AUROCs
    description: str = ""
    folder: Path | None = None
    derived_from: str = CARD_FILE  # "model.json" or "configs/metadata.json" (bundle)
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def is_bundle(self) -> bool:
        return self.format == "monai_bundle"

    @property
    def foreground_labels(self) -> list[tuple[int, str]]:
        """(index, name) of segmentation labels except the background (index 0)."""
        return [(i, n) for i, n in enumerate(self.labels) if i > 0]

    def summary(self) -> dict:
        return {"id": self.id, "name": self.name, "version": self.version, "task": self.task,
                "modality": self.modality, "body_part": self.body_part,
                "spatial_dims": self.spatial_dims, "format": self.format,
                "labels": self.labels}


# --------------------------------------------------------------------------- validation
def _short(v, n: int = 60) -> str:
    """repr of a value for an error message, cut so that a huge value stays one short line."""
    r = repr(v)
    return r if len(r) <= n else r[:n] + f"... ({len(r)} characters)"


def _check_kwargs(c: "_Checker", v, where: str, depth: int = 0) -> None:
    """architecture.kwargs: plain JSON values within bounds (no huge ints, strings, lists)."""
    if depth > MAX_KWARG_DEPTH:
        c.add(where, f"is nested deeper than {MAX_KWARG_DEPTH} levels")
    elif v is None or isinstance(v, bool):
        return
    elif isinstance(v, int):
        if abs(v) > MAX_KWARG_INT:
            c.add(where, f"must be at most {MAX_KWARG_INT} in size (got {_short(v)})")
    elif isinstance(v, float):
        if not math.isfinite(v) or abs(v) > MAX_KWARG_FLOAT:
            c.add(where, f"must be a finite number of at most {MAX_KWARG_FLOAT:g} (got {_short(v)})")
    elif isinstance(v, str):
        if len(v) > MAX_KWARG_STR:
            c.add(where, f"is longer than {MAX_KWARG_STR} characters")
    elif isinstance(v, list):
        if len(v) > MAX_KWARG_ITEMS:
            c.add(where, f"has more than {MAX_KWARG_ITEMS} items ({len(v)})")
            return
        for i, x in enumerate(v):
            _check_kwargs(c, x, f"{where}[{i}]", depth + 1)
    elif isinstance(v, dict):
        if len(v) > MAX_KWARG_ITEMS:
            c.add(where, f"has more than {MAX_KWARG_ITEMS} keys ({len(v)})")
            return
        for k, x in v.items():
            if len(k) > MAX_KWARG_STR:
                c.add(where, f"has a key longer than {MAX_KWARG_STR} characters")
                continue
            _check_kwargs(c, x, f"{where}.{k}", depth + 1)
    else:
        c.add(where, f"must be a JSON value (got {type(v).__name__})")


class _Checker:
    """Collects field-named problems so that one error lists all of them."""

    def __init__(self):
        self.problems: list[str] = []

    def add(self, where: str, msg: str) -> None:
        self.problems.append(f"{where}: {msg}")

    def req(self, d: dict, key: str, where: str = "") -> Any:
        if key not in d or d[key] is None:
            self.add(where + key, "is required")
            return None
        return d[key]

    def string(self, v, where, allow_empty=False, max_len=MAX_TEXT_CHARS):
        if v is None:
            return None
        if not isinstance(v, str) or (not allow_empty and not v.strip()):
            self.add(where, f"must be a non-empty string (got {_short(v)})")
            return None
        if len(v) > max_len:
            self.add(where, f"is longer than {max_len} characters ({len(v)})")
            return None
        return v

    def number(self, v, where, lo=-math.inf, hi=math.inf):
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            self.add(where, f"must be a number (got {_short(v)})")
            return None
        if not lo <= v <= hi:
            self.add(where, f"must be between {lo} and {hi} (got {v})")
            return None
        return float(v)

    def int_list(self, v, where, n=None, lo=1, hi=None, max_product=None):
        if v is None:
            return None
        if (not isinstance(v, list) or not v or len(v) > 3
                or not all(isinstance(x, int) and not isinstance(x, bool) and x >= lo for x in v)):
            self.add(where, f"must be a list of integers >= {lo} (got {_short(v)})")
            return None
        if n is not None and len(v) != n:
            self.add(where, f"must have {n} values, one per spatial dimension (got {len(v)})")
            return None
        if hi is not None and max(v) > hi:
            self.add(where, f"must be at most {hi} per dimension (got {_short(v)})")
            return None
        if max_product is not None and math.prod(v) > max_product:
            self.add(where, f"asks for {math.prod(v)} pixels/voxels, more than the limit "
                            f"{max_product}")
            return None
        return list(v)

    def float_list(self, v, where, n=None, positive=True, lo=-math.inf, hi=math.inf):
        if v is None:
            return None
        ok = isinstance(v, list) and v and len(v) <= 16 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            and (x > 0 or not positive) and lo <= x <= hi for x in v)
        if not ok:
            rng = f" between {lo} and {hi}" if math.isfinite(lo) or math.isfinite(hi) else ""
            self.add(where, f"must be a list of {'positive ' if positive else ''}numbers{rng} "
                            f"(got {_short(v)})")
            return None
        if n is not None and len(v) != n:
            self.add(where, f"must have {n} values (got {len(v)})")
            return None
        return [float(x) for x in v]


def _check_intensity(c: _Checker, steps, channels: int) -> list[dict]:
    if steps is None:
        return []
    if isinstance(steps, dict):
        steps = [steps]
    if not isinstance(steps, list):
        c.add("input.intensity", "must be an object or a list of objects")
        return []
    if len(steps) > MAX_INTENSITY_STEPS:
        c.add("input.intensity", f"has more than {MAX_INTENSITY_STEPS} steps ({len(steps)})")
        return []
    out = []
    for n, s in enumerate(steps):
        w = f"input.intensity[{n}]"
        if not isinstance(s, dict) or s.get("type") not in INTENSITY_TYPES:
            c.add(w + ".type", f"must be one of {', '.join(INTENSITY_TYPES)} "
                               f"(got {_short(s.get('type') if isinstance(s, dict) else s)})")
            continue
        t = s["type"]
        # optional output bounds of the steps that have them: numbers (a string or NaN passed
        # validation and ended as an internal error or NaN outputs at run time)
        for k in {"scale_range": ("b_min", "b_max"), "percentile": ("b_min", "b_max"),
                  "minmax": ("min", "max")}.get(t, ()):
            if k in s:
                if s[k] is None:
                    c.add(f"{w}.{k}", "must be a number (got null)")
                else:
                    c.number(s[k], f"{w}.{k}")
        for k in {"scale_range": ("clip",), "percentile": ("clip", "channel_wise"),
                  "zscore": ("nonzero", "channel_wise")}.get(t, ()):
            if k in s and not isinstance(s[k], bool):
                c.add(f"{w}.{k}", f"must be true or false (got {_short(s[k])})")
        if t == "window":
            c.number(c.req(s, "center", w + "."), w + ".center")
            c.number(c.req(s, "width", w + "."), w + ".width", lo=1e-6)
        elif t == "scale_range":
            lo = c.number(c.req(s, "a_min", w + "."), w + ".a_min")
            hi = c.number(c.req(s, "a_max", w + "."), w + ".a_max")
            if lo is not None and hi is not None and hi <= lo:
                c.add(w, "a_max must be greater than a_min")
        elif t == "percentile":
            lo = c.number(s.get("lower", 0.5), w + ".lower", 0, 100)
            hi = c.number(s.get("upper", 99.5), w + ".upper", 0, 100)
            if lo is not None and hi is not None and hi <= lo:
                c.add(w, "upper must be greater than lower")
        elif t == "normalize":
            c.float_list(c.req(s, "mean", w + "."), w + ".mean", n=channels, positive=False)
            c.float_list(c.req(s, "std", w + "."), w + ".std", n=channels)
        out.append(dict(s))
    return out


def _check_explanation_region(c: _Checker, er, task, mid) -> ExplanationRegion | None:
    """``explanation_region``: {"model": segmenter id, "labels": [its structures], "name"}."""
    if er is None:
        return None
    w = "explanation_region"
    if not isinstance(er, dict):
        c.add(w, "must be an object {\"model\": segmenter id, \"labels\": [...], \"name\": ...}")
        return None
    if task is not None and task != "classification":
        c.add(w, "is only used by classifiers (their heat maps are measured against the region)")
    model = c.string(c.req(er, "model", w + "."), w + ".model")
    if model is not None and not _ID_RE.match(model):
        c.add(w + ".model", f"must be a model id (got {_short(model)})")
        model = None
    if model is not None and model == mid:
        c.add(w + ".model", "must name another model (a segmenter), not this one")
        model = None
    labels = c.req(er, "labels", w + ".")
    if labels is not None and (not isinstance(labels, list) or not labels
                               or not all(isinstance(x, str) and x for x in labels)
                               or len(set(labels)) != len(labels)):
        c.add(w + ".labels", f"must be a non-empty list of distinct label names of the segmenter (got {_short(labels)})")
        labels = None
    elif labels is not None and "background" in labels:
        c.add(w + ".labels", "must name structures, not the background")
        labels = None
    name = er.get("name", "region")
    name = c.string(name, w + ".name")
    unknown = sorted(set(er) - {"model", "labels", "name"})
    if unknown:
        c.add(w, f"unknown key(s) {', '.join(unknown)} (allowed: model, labels, name)")
    if model is None or labels is None or name is None:
        return None
    return ExplanationRegion(model, list(labels), name)


def card_limitations(card) -> list[str]:
    """The card's known limitations as a list of lines (the card may give one string)."""
    lims = (getattr(card, "raw", None) or {}).get("limitations")
    if isinstance(lims, str):
        return [lims] if lims.strip() else []
    return [x for x in lims if isinstance(x, str)] if isinstance(lims, list) else []


def validate_card(d: dict, folder: Path | None = None, source: str = CARD_FILE) -> ModelCard:
    """Check a parsed model.json; raise :class:`ModelCardError` listing every problem."""
    where_file = str(folder / source) if folder else source
    if not isinstance(d, dict):
        raise ModelCardError(f"invalid model card {where_file}: the top level must be a JSON object")
    c = _Checker()
    sv = d.get("schema_version", SCHEMA_VERSION)
    if sv != SCHEMA_VERSION:
        c.add("schema_version", f"must be {SCHEMA_VERSION} (got {_short(sv)}); this version of "
                                "imaging-assist cannot read it")
    mid = c.string(c.req(d, "id"), "id")
    if mid is not None and not _ID_RE.match(mid):
        c.add("id", f"must be 1-64 characters of a-z, 0-9, '.', '_' or '-' (got {_short(mid)})")
    name = c.string(c.req(d, "name"), "name")
    version = c.string(c.req(d, "version"), "version")
    task = c.req(d, "task")
    if task is not None and task not in TASKS:
        c.add("task", f"must be one of {', '.join(TASKS)} (got {_short(task)})")
    fmt = c.req(d, "format")
    if fmt is not None and fmt not in FORMATS:
        c.add("format", f"must be one of {', '.join(FORMATS)} (got {_short(fmt)})")

    modality = c.req(d, "modality")
    if isinstance(modality, str):
        modality = [modality]
    if modality is not None and (not isinstance(modality, list) or not modality or len(modality) > 32
                                 or not all(isinstance(m, str) and 0 < len(m) <= 16 for m in modality)):
        c.add("modality", f"must be a DICOM modality or a list of them, e.g. \"CT\" (got {_short(modality)})")
        modality = None
    body_part = d.get("body_part")
    if body_part is not None:
        body_part = c.string(body_part, "body_part")

    sd = c.req(d, "spatial_dims")
    if sd is not None and sd not in (2, 3):
        c.add("spatial_dims", f"must be 2 or 3 (got {_short(sd)})")
        sd = None

    # weights
    weights: list[WeightsFile] = []
    wl = c.req(d, "weights")
    if wl is not None:
        if not isinstance(wl, list) or not wl or len(wl) > 64:
            c.add("weights", "must be a non-empty list of {\"file\": ..., \"sha256\": ...}")
        else:
            for n, w in enumerate(wl):
                wh = f"weights[{n}]"
                if not isinstance(w, dict):
                    c.add(wh, "must be an object with file and sha256")
                    continue
                f = c.string(c.req(w, "file", wh + "."), wh + ".file")
                if f is not None and (Path(f).is_absolute() or ".." in Path(f).parts):
                    c.add(wh + ".file", f"must be a path inside the model folder (got {_short(f)})")
                    f = None
                sha = w.get("sha256")
                md5 = w.get("md5") if source != CARD_FILE else None
                if sha is not None and (not isinstance(sha, str) or not _SHA_RE.match(sha.lower())):
                    c.add(wh + ".sha256", "must be 64 hexadecimal characters")
                    sha = None
                if md5 is not None and (not isinstance(md5, str) or not _MD5_RE.match(md5.lower())):
                    md5 = None
                if sha is None and md5 is None and source == CARD_FILE:
                    c.add(wh + ".sha256", "is required (weights are loaded only after their sha256 "
                                          "matches)")
                if f is not None:
                    weights.append(WeightsFile(f, sha.lower() if sha else None,
                                               md5.lower() if md5 else None,
                                               w.get("hash_source", source)))

    labels = c.req(d, "labels")
    if labels is not None:
        if (not isinstance(labels, list) or not labels
                or not all(isinstance(x, str) and x for x in labels)):
            c.add("labels", "must be a non-empty list of label names")
            labels = None
        elif len(labels) > MAX_LABELS:
            c.add("labels", f"has more than {MAX_LABELS} names ({len(labels)})")
            labels = None
        elif max(len(x) for x in labels) > MAX_LABEL_CHARS:
            c.add("labels", f"has a name longer than {MAX_LABEL_CHARS} characters")
            labels = None
        elif not all(x.isprintable() and "\\" not in x for x in labels):
            # a name becomes a DICOM SEG segment label (LO: no backslash, no control characters)
            c.add("labels", "names must be printable text without a backslash")
            labels = None
        elif len(set(labels)) != len(labels):
            c.add("labels", "must not repeat a name")
        elif task == "segmentation" and len(labels) < 2:
            c.add("labels", "a segmentation model needs the background (index 0) and at least one "
                            "structure")

    # input
    inp = d.get("input", {} if fmt == "monai_bundle" else None)
    spec = InputSpec()
    if inp is None:
        c.add("input", "is required")
    elif not isinstance(inp, dict):
        c.add("input", "must be an object")
    else:
        ch = inp.get("channels", 1)
        ok_int = isinstance(ch, int) and not isinstance(ch, bool)
        if not ok_int or (ch not in (1, 3) and not (fmt != "safetensors" and 1 <= ch <= MAX_CHANNELS)):
            c.add("input.channels", f"must be 1 or 3 (or up to {MAX_CHANNELS} for TorchScript "
                                    f"and bundles) (got {_short(ch)})")
            ch = 1
        spec.channels = int(ch)
        side = MAX_SIDE.get(sd, MAX_SIDE[2])
        spec.size = c.int_list(inp.get("size"), "input.size", n=sd, hi=side,
                               max_product=MAX_INPUT_VOXELS)
        spec.roi_size = c.int_list(inp.get("roi_size"), "input.roi_size", n=sd, hi=side,
                                   max_product=MAX_INPUT_VOXELS)
        spec.spacing = c.float_list(inp.get("spacing"), "input.spacing", n=sd,
                                    lo=SPACING_RANGE[0], hi=SPACING_RANGE[1])
        o = inp.get("orientation")
        if o is not None:
            if sd != 3:
                c.add("input.orientation", "is only used by 3D models (spatial_dims 3)")
            elif not isinstance(o, str) or not _AXCODES_RE.match(o.upper()):
                c.add("input.orientation", f"must be 3 axis codes such as \"RAS\" or \"LPS\" (got {_short(o)})")
            else:
                spec.orientation = o.upper()
        ao = inp.get("axis_order", "row_col")
        if ao not in AXIS_ORDERS_2D:
            c.add("input.axis_order", f"must be one of {', '.join(AXIS_ORDERS_2D)} (got {_short(ao)})")
        spec.axis_order = ao
        spec.intensity = _check_intensity(c, inp.get("intensity"), spec.channels)
        u = inp.get("units")
        spec.units = c.string(u, "input.units", max_len=32) if u is not None else None
        im = inp.get("invert_monochrome1", True)
        if not isinstance(im, bool):
            c.add("input.invert_monochrome1", "must be true or false")
        spec.invert_monochrome1 = bool(im)
        rm = inp.get("resize_mode", "auto")
        if rm not in RESIZE_MODES:
            c.add("input.resize_mode", f"must be one of {', '.join(RESIZE_MODES)} (got {_short(rm)})")
        spec.resize_mode = rm
        dv = inp.get("dicom_values", "modality")
        if dv not in ("modality", "display"):
            c.add("input.dicom_values", f"must be \"modality\" or \"display\" (got {_short(dv)})")
        spec.dicom_values = dv if dv in ("modality", "display") else "modality"
        if task == "classification" and fmt != "monai_bundle" and spec.size is None:
            c.add("input.size", "is required for classifiers (the image is resized to it)")

    out = d.get("output", {}) or {}
    if not isinstance(out, dict):
        c.add("output", "must be an object")
        out = {}
    act = out.get("activation", "softmax")
    if act not in ACTIVATIONS:
        c.add("output.activation", f"must be one of {', '.join(ACTIVATIONS)} (got {_short(act)})")

    arch = d.get("architecture")
    if fmt == "safetensors":
        if not isinstance(arch, dict):
            c.add("architecture", "is required for safetensors weights: "
                                  "{\"library\": \"torchvision\"|\"monai\", \"name\": ..., \"kwargs\": {...}}")
        else:
            if arch.get("library") not in ("torchvision", "monai"):
                c.add("architecture.library",
                      f"must be torchvision or monai (got {_short(arch.get('library'))})")
            c.string(c.req(arch, "name", "architecture."), "architecture.name", max_len=128)
            kw = arch.get("kwargs", {})
            if not isinstance(kw, dict):
                c.add("architecture.kwargs", "must be an object")
            else:
                _check_kwargs(c, kw, "architecture.kwargs")
            unknown = sorted(set(arch) - {"library", "name", "kwargs"})
            if unknown:
                c.add("architecture", f"unknown key(s) {_short(', '.join(unknown))} "
                                      "(allowed: library, name, kwargs)")

    thresholds: dict[str, Threshold] = {}
    th = d.get("thresholds") or {}
    if not isinstance(th, dict) or len(th) > MAX_LIST_ITEMS:
        c.add("thresholds", "must be an object {label: {threshold, sensitivity, specificity}}")
    else:
        for lab, t in th.items():
            w = f"thresholds.{lab}"
            if labels and lab not in labels:
                c.add(w, f"names a label that is not in labels ({', '.join(labels)})")
                continue
            if isinstance(t, (int, float)) and not isinstance(t, bool):
                t = {"threshold": t}
            if not isinstance(t, dict):
                c.add(w, "must be an object with threshold, sensitivity and specificity")
                continue
            v = c.number(c.req(t, "threshold", w + "."), w + ".threshold", 0, 1)
            se = c.number(t.get("sensitivity"), w + ".sensitivity", 0, 1)
            sp = c.number(t.get("specificity"), w + ".specificity", 0, 1)
            if v is not None:
                thresholds[lab] = Threshold(v, se, sp, str(t.get("data", "")))

    metrics = d.get("metrics") or []
    if not isinstance(metrics, list) or len(metrics) > MAX_LIST_ITEMS:
        c.add("metrics", f"must be a list of at most {MAX_LIST_ITEMS} "
                         "{name, value, ci95: [low, high]}")
        metrics = []
    for n, m in enumerate(metrics):
        w = f"metrics[{n}]"
        if not isinstance(m, dict):
            c.add(w, "must be an object")
            continue
        c.string(c.req(m, "name", w + "."), w + ".name")
        v = c.number(c.req(m, "value", w + "."), w + ".value")
        ci = m.get("ci95")
        if ci is not None:
            ci = c.float_list(ci, w + ".ci95", n=2, positive=False)
            if ci and v is not None and not ci[0] <= v <= ci[1]:
                c.add(w + ".ci95", f"[{ci[0]}, {ci[1]}] does not contain the value {v}")

    lic = c.string(c.req(d, "license"), "license")
    use = c.string(c.req(d, "intended_use"), "intended_use")
    lims = d.get("limitations")
    if lims is not None and not (isinstance(lims, str) or (isinstance(lims, list) and all(isinstance(x, str) for x in lims))):
        c.add("limitations", f"must be a string or a list of strings (got {_short(lims)})")
    elif lims is not None and sum(len(x) for x in ([lims] if isinstance(lims, str) else lims)) > MAX_TEXT_CHARS:
        c.add("limitations", f"are longer than {MAX_TEXT_CHARS} characters in all")
    nfc = d.get("not_for_clinical_use")
    if nfc is not True:
        c.add("not_for_clinical_use", "must be true: imaging-assist runs research models only")
    data = d.get("data") or {}
    if not isinstance(data, dict):
        c.add("data", "must be an object with training and validation descriptions")
        data = {}
    training = c.string(data.get("training", ""), "data.training", allow_empty=True) or ""
    validation = c.string(data.get("validation", ""), "data.validation", allow_empty=True) or ""
    if source == CARD_FILE:
        if not training:
            c.add("data.training", "is required (describe the training data)")
        if not validation:
            c.add("data.validation", "is required (describe the validation data)")

    gl = d.get("gradcam_layer")
    if gl is not None:
        gl = c.string(gl, "gradcam_layer")
    inf = d.get("inference") or {}
    if not isinstance(inf, dict):
        c.add("inference", "must be an object")
        inf = {}
    if "overlap" in inf:
        c.number(inf["overlap"], "inference.overlap", 0, 0.95)
    if "sw_batch_size" in inf and not (_is_int(inf["sw_batch_size"]) and 1 <= inf["sw_batch_size"] <= 256):
        c.add("inference.sw_batch_size", "must be an integer from 1 to 256")
    if "batch_size" in inf and not (_is_int(inf["batch_size"]) and 1 <= inf["batch_size"] <= 256):
        c.add("inference.batch_size", "must be an integer from 1 to 256")
    if inf.get("blend", "gaussian") not in ("gaussian", "constant"):
        c.add("inference.blend", "must be gaussian or constant")
    if inf.get("precision", "auto") not in ("auto", "fp32", "bf16"):
        c.add("inference.precision", "must be auto, fp32 or bf16")
    if "roi_multiple" in inf and not (_is_int(inf["roi_multiple"]) and 1 <= inf["roi_multiple"] <= 1024):
        c.add("inference.roi_multiple", "must be an integer from 1 to 1024 (the network's size divisor)")
    if "max_roi_voxels" in inf and not (_is_int(inf["max_roi_voxels"])
                                        and 1 <= inf["max_roi_voxels"] <= MAX_INPUT_VOXELS):
        c.add("inference.max_roi_voxels", f"must be a positive integer of at most {MAX_INPUT_VOXELS}")
    if inf.get("slice_aggregation", "max") not in ("max", "mean"):
        c.add("inference.slice_aggregation", "must be max or mean")

    er = _check_explanation_region(c, d.get("explanation_region"), task, mid)
    from .population import check_population, check_quality_checks

    population = check_population(c, d.get("population"))
    quality = check_quality_checks(c, d.get("quality_checks"), task, labels if isinstance(labels, list) else [])
    desc = d.get("description", "")
    if desc is not None:
        c.string(desc, "description", allow_empty=True)
    ood = d.get("ood")
    if ood is not None:
        from ..validation.ood_spec import check_spec

        for prob in check_spec(ood):
            c.problems.append(prob)

    if c.problems:
        raise ModelCardError(f"invalid model card {where_file}: " + "; ".join(c.problems))

    return ModelCard(
        id=mid, name=name, version=version, task=task, modality=[m.upper() for m in modality],
        body_part=body_part.upper() if body_part else None, spatial_dims=int(sd), format=fmt,
        weights=weights, labels=list(labels), input=spec, activation=act, license=lic,
        intended_use=use, not_for_clinical_use=True, training_data=training,
        validation_data=validation, architecture=arch if isinstance(arch, dict) else None,
        thresholds=thresholds, metrics=list(metrics), gradcam_layer=gl, inference=dict(inf),
        explanation_region=er, population=population, quality_checks=quality,
        ood=dict(ood) if isinstance(ood, dict) else None,
        description=str(desc or ""), folder=folder, derived_from=source, raw=d)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_json_limited(p: Path, what: str, limit: int = MAX_CARD_BYTES):
    """Parse a small JSON file (a card, bundle metadata): refused before reading when it is
    larger than ``limit``; any problem is one :class:`ModelCardError` line."""
    try:
        with open(p, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise ModelCardError(f"no {what}: {p} does not exist") from None
    except OSError as e:
        raise ModelCardError(f"cannot read {what} {p}: {e.strerror or e}") from None
    if len(data) > limit:
        raise ModelCardError(f"{what} {p} is too big (more than {limit // 1024} KiB)")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ModelCardError(f"invalid {what} {p}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ModelCardError(f"invalid {what} {p}: not valid JSON (line {e.lineno}, "
                             f"column {e.colno}: {e.msg})") from None
    except RecursionError:
        raise ModelCardError(f"invalid {what} {p}: nested too deeply") from None
    except ValueError as e:  # an integer of more than 4300 digits (int_max_str_digits)...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelCardError(f"invalid {what} {p}: {first}") from None


def load_card(folder: str | Path) -> ModelCard:
    """Read and validate ``folder/model.json``."""
    folder = Path(folder)
    p = folder / CARD_FILE
    d = read_json_limited(p, "model card")
    return validate_card(d, folder)
