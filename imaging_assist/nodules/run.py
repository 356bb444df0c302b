"""The nodule workflow on DICOM CT series or NIfTI volumes, for ``imaging-assist analyze PATH
--model ct-nodule-malignancy|ct-nodule-seg [--at X,Y,Z | --points CSV] --out DIR`` (the command
itself: :mod:`imaging_assist.cli.analyze_nodules`) and the viewer.

Points are patient coordinates in mm, LPS (DICOM's frame: x to the patient's left, y to the
back, z to the head).  A NIfTI volume with no point is taken as a crop centred on its nodule
(the LIDC crops are): the centre of its voxel grid is used, and a warning says so.  A DICOM
series needs a point (these models characterise a nodule the reader points at; they do not
detect).  Each point goes through :func:`imaging_assist.nodules.analysis.analyze_at`.

One results.json item per volume (docs/results_schema.md, "CT nodules"): ``nodules`` (one
entry per point), ``label_map`` (NIfTI on the input grid, value n = the n-th nodule found,
``labels`` names them), ``heatmaps`` (the malignancy model's Grad-CAM per nodule), key images.
The engine objects the exporters need (label map, heat maps) are kept in :class:`NoduleRun`.
"""

from __future__ import annotations

import csv
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from .analysis import MALIGNANCY_MODEL, SEG_MODEL, NoduleResult, analyze_at

NODULE_MODELS = (SEG_MODEL, MALIGNANCY_MODEL)
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nodule_model(card_or_id) -> bool:
    cid = getattr(card_or_id, "id", card_or_id)
    return str(cid) in NODULE_MODELS


@dataclass
class NoduleRun:
    """The arrays of one analysed volume (duck-types an InferenceResult for the exporters)."""
    nodules: list[NoduleResult]
    label_map: np.ndarray | None = None  # uint8 [k, j, i]: n = the n-th found nodule
    heatmaps: list = field(default_factory=list)  # inference.results.HeatMap, one per nodule
    region_map: None = None


# ------------------------------------------------------------------ points
def parse_point(text: str) -> list[float]:
    parts = [p for p in str(text).replace(";", ",").split(",") if p.strip()]
    try:
        xyz = [float(p) for p in parts]
    except ValueError:
        xyz = []
    if len(xyz) != 3 or not all(math.isfinite(v) for v in xyz):
        raise UserError(f"--at {text!r}: give three numbers X,Y,Z in mm (patient LPS)")
    return xyz


#: A points file is a few lines per nodule; the limits keep a wrong file (an image, a log) from
#: being read whole or run point by point for hours.
MAX_POINTS_BYTES = 1 << 20
MAX_POINTS = 1000
#: An id names the nodule in the SEG (Segment Label, LO) and the SR (tracking identifier): at most
#: 64 characters (LO), printable, no backslash (DICOM's value separator).
MAX_ID_CHARS = 64


def read_regular(path: str | Path, limit: int, what: str) -> bytes:
    """At most ``limit`` + 1 bytes of the regular file ``path`` (one more than the limit tells the
    caller it is too long, whatever its stat says).  Anything else is refused at once with a
    UserError "``what``: not a regular file": a named pipe would block until a writer comes, a
    device (/dev/zero) never ends.  OSError when it cannot be opened or read."""
    from ..dicom.header import file_kind

    # non-blocking: opening a pipe nobody writes to returns at once (and is then refused)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{what}: not a regular file ({file_kind(st.st_mode)})")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        return f.read(limit + 1)


def read_points_csv(path: str | Path) -> list[tuple[str | None, list[float]]]:
    """A CSV with columns x, y, z (mm, LPS) and optionally id; a header row is required."""
    p = Path(path).expanduser()
    try:
        data = read_regular(p, MAX_POINTS_BYTES, f"--points {p}")
        if len(data) > MAX_POINTS_BYTES:
            raise UserError(f"--points {p}: more than {MAX_POINTS_BYTES:,} bytes, more than a points file "
                            "holds: is it the right file?")
        text = data.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--points {p}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    try:
        rows = list(csv.DictReader(text.splitlines()))
    except csv.Error as e:  # e.g. a field over the csv module's limit (128 kB): not a points file
        raise UserError(f"--points {p}: not a readable CSV ({e})") from None
    if not rows:
        raise UserError(f"--points {p}: no rows (a header x,y,z[,id] and one row per point)")
    if len(rows) > MAX_POINTS:
        raise UserError(f"--points {p}: {len(rows):,} points, more than {MAX_POINTS:,} per run: split the file")
    keys = {k.strip().lower(): k for k in rows[0] if k}
    if not all(c in keys for c in "xyz"):
        raise UserError(f"--points {p}: the header must name columns x, y and z (mm, LPS); it has "
                        f"{', '.join(keys) or 'none'}")
    out = []
    for n, r in enumerate(rows, 2):
        try:
            xyz = [float(r[keys[c]]) for c in "xyz"]
        except (TypeError, ValueError):
            raise UserError(f"--points {p}, line {n}: x, y, z must be numbers") from None
        if not all(math.isfinite(v) for v in xyz):
            raise UserError(f"--points {p}, line {n}: x, y, z must be finite")
        nid = (r.get(keys["id"]) or "").strip() if "id" in keys else ""
        if len(nid) > MAX_ID_CHARS or "\\" in nid or not nid.isprintable():
            raise UserError(f"--points {p}, line {n}: the id must be at most {MAX_ID_CHARS} printable characters "
                            "without a backslash (it names the nodule in the DICOM SEG and SR)")
        out.append((nid or None, xyz))
    return out


def volume_centre(volume) -> list[float]:
    n = volume.shape
    return [float(v) for v in volume.index_to_lps((n[2] - 1) / 2, (n[1] - 1) / 2, (n[0] - 1) / 2)]


def tracking_uid(series_uid: str, nodule_id: str, center) -> str:
    """The nodule's Tracking UID (SEG segment, SR measurement group): the same series, id and
    centre give the same UID, so a re-run does not invent a new nodule."""
    from pydicom.uid import generate_uid

    c = ",".join(f"{float(v):.1f}" for v in (center or []))
    return generate_uid(entropy_srcs=["imaging-assist-nodule", str(series_uid), str(nodule_id), c])


def paint_labels(lm: np.ndarray, nodules) -> list[list[str]]:
    """Paint ``nodules`` [(id, box, mask on the box)] into the label map ``lm`` as values 1, 2, ...
    in order (where masks overlap, the later nodule's value wins); what each must say about it, in
    order.  Shared with the viewer's exports (``imaging_assist_ui.radiology.nodule_results``)."""
    said: list[list[str]] = [[] for _ in nodules]
    for v, (nid, box, mask) in enumerate(nodules, 1):
        sub = lm[box]
        hit = sub[mask]
        if (hit > 0).any():
            f = int(np.bincount(hit[hit > 0]).argmax()) - 1
            first = nodules[f][0]
            said[v - 1].append(f"overlaps nodule {first} (the same nodule clicked twice?): "
                               f"its voxels are labelled {nid} in the label map")
            # said on the first nodule too: its label map and SEG segment lose those voxels
            said[f].append(f"overlaps nodule {nid} (the same nodule clicked twice?): the shared "
                           f"voxels are labelled {nid} in the label map and the SEG; this nodule's "
                           "measurements are of its whole mask")
        sub[mask] = v
    return said


# ------------------------------------------------------------------ one volume
def analyze_points(volume, points, explain: bool = True) -> NoduleRun:
    """``points``: [(id or None, [x, y, z])].  Ids default to N1, N2, ..."""
    from ..inference.results import HeatMap

    results = []
    used = set()
    for n, (nid, xyz) in enumerate(points, 1):
        nid = nid or f"N{n}"
        base, k = nid, 2
        while nid in used:
            nid, k = f"{base}_{k}", k + 1
        used.add(nid)
        results.append(analyze_at(volume, xyz, nid, explain=explain))
    found = [r for r in results if r.found]
    run = NoduleRun(results)
    if found:
        lm = np.zeros(volume.shape[:3], np.uint8)
        whole = (slice(None),) * 3
        for r, said in zip(found, paint_labels(lm, [(r.id, whole, r.mask) for r in found])):
            r.warnings += said
        run.label_map = lm
        for r in found:
            if r.heatmap is not None:
                run.heatmaps.append(HeatMap(label=f"malignant {r.id}", method="gradcam", array=r.heatmap,
                                            params={"model": MALIGNANCY_MODEL, "nodule": r.id}))
    return run


def item_dict(run: NoduleRun, volume, out_dir: Path, stem: str, card, source: str,
              kind: str) -> dict:
    """The results.json item of one volume, with its files written into ``out_dir``."""
    from ..inference.results import _stem, overlay_png, save_nifti  # both write via outputs.written_beside
    from ..outputs import replace_earlier_run
    from .models import DEVICE, PRECISION

    replace_earlier_run(out_dir)  # an earlier run's results.json must not describe these files
    stem = _stem(stem)
    found = [r for r in run.nodules if r.found]
    d = {"source": source, "kind": kind, "model": card.id, "model_version": card.version,
         "task": "nodule", "series_uid": volume.series_uid or None, "description": volume.description,
         "has_geometry": bool(volume.has_geometry), "shape": list(volume.shape),
         "spacing_mm": [float(s) for s in volume.spacing],
         "labels": {"0": "background", **{str(n): f"nodule {r.id}" for n, r in enumerate(found, 1)}},
         "nodules": [], "heatmaps": [], "key_images": [],
         "device": DEVICE, "precision": PRECISION,  # the nodule models always run so (models.py)
         "warnings": list(dict.fromkeys(volume.warnings))}
    from .growth import study_facts
    d.update(study_facts(volume))  # for a later comparison with a prior (imaging-assist nodule-growth)
    for r in run.nodules:
        nd = r.to_dict()
        if r.found:
            nd["label_value"] = found.index(r) + 1
            nd["tracking_uid"] = tracking_uid(volume.series_uid, r.id, r.center_lps)
        d["nodules"].append(nd)
    aff = np.asarray(volume.affine, float)
    if run.label_map is not None or run.heatmaps:
        from ..inference.results import nifti_geometry_warnings
        d["warnings"] += [w for w in nifti_geometry_warnings(volume, aff) if w not in d["warnings"]]
    if run.label_map is not None:
        f = f"{stem}_nodules.nii.gz"
        save_nifti(run.label_map, aff, out_dir / f, like=volume)
        d["label_map"] = f
        for r, nd in zip(run.nodules, d["nodules"]):
            if not r.found:
                continue
            k = int(r.measurements.get("largest_slice", 0))
            kf = f"{stem}_{_stem(r.id)}_key.png"
            overlay_png(volume.array[k], out_dir / kf, label_slice=run.label_map[k], volume=volume, k=k)
            nd["key_image"], nd["key_slice"] = kf, k
            d["key_images"].append(kf)
    for hm in run.heatmaps:
        f = f"{stem}_heat_{_stem(hm.label)}_gradcam.nii.gz"
        save_nifti(hm.array.astype(np.float32), aff, out_dir / f, like=volume)
        k = int(np.argmax(hm.array.reshape(hm.array.shape[0], -1).max(1)))
        kf = f"{stem}_heat_{_stem(hm.label)}_key.png"
        overlay_png(volume.array[k], out_dir / kf, heat_slice=hm.array[k], volume=volume, k=k)
        h = hm.to_dict()
        h.update(file=f, key_image=kf, key_slice=k, nodule=hm.params.get("nodule"))
        d["heatmaps"].append(h)
        d["key_images"].append(kf)
    return d


def summary_lines(d: dict) -> list[str]:
    """One line per nodule (the console, the demo): its measurements and the malignancy decision
    with the threshold's test-split figures, as an image classifier's line has them."""
    from ..models.operating_point import label_state, operating_point_text

    out = []
    for nd in d.get("nodules") or []:
        line = NoduleResult(**{k: v for k, v in nd.items() if k in ("id", "point_lps", "found", "reason",
                                                                    "volume_mm3", "long_axis_mm",
                                                                    "short_axis_mm", "mean_hu", "density",
                                                                    "p_malignant", "threshold", "decision")}).text
        x = label_state(nd.get("decision"), "malignant") if isinstance(nd.get("decision"), dict) else None
        figures = operating_point_text(x.get("operating_point") or {}) if x and x.get("state") != "withheld" else ""
        out.append(f"{line} [{figures}]" if figures else line)
    return out


__all__ = ["NoduleRun", "analyze_points", "item_dict", "is_nodule_model",
           "parse_point", "read_points_csv", "volume_centre", "NIFTI_SUFFIXES", "tracking_uid",
           "paint_labels"]
