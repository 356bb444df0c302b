"""``imaging-assist analyze PATH --model ct-nodule-malignancy|ct-nodule-seg [--at X,Y,Z |
--points CSV] --out DIR``: the nodule workflow on DICOM CT series or NIfTI volumes.

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
import sys
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


def read_points_csv(path: str | Path) -> list[tuple[str | None, list[float]]]:
    """A CSV with columns x, y, z (mm, LPS) and optionally id; a header row is required."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--points {p}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise UserError(f"--points {p}: no rows (a header x,y,z[,id] and one row per point)")
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
        for v, r in enumerate(found, 1):
            if (lm[r.mask] > 0).any():
                other = found[int(np.bincount(lm[r.mask][lm[r.mask] > 0]).argmax()) - 1].id
                r.warnings.append(f"overlaps nodule {other} (the same nodule clicked twice?): "
                                  f"its voxels are labelled {r.id} in the label map")
            lm[r.mask] = v
        run.label_map = lm
        for r in found:
            if r.heatmap is not None:
                run.heatmaps.append(HeatMap(label=f"malignant {r.id}", method="gradcam", array=r.heatmap,
                                            params={"model": MALIGNANCY_MODEL, "nodule": r.id}))
    return run


def item_dict(run: NoduleRun, volume, out_dir: Path, stem: str, card, source: str,
              kind: str) -> dict:
    """The results.json item of one volume, with its files written into ``out_dir``."""
    from ..inference.results import _stem, overlay_png, save_nifti

    stem = _stem(stem)
    found = [r for r in run.nodules if r.found]
    d = {"source": source, "kind": kind, "model": card.id, "model_version": card.version,
         "task": "nodule", "series_uid": volume.series_uid or None, "description": volume.description,
         "has_geometry": bool(volume.has_geometry), "shape": list(volume.shape),
         "spacing_mm": [float(s) for s in volume.spacing],
         "labels": {"0": "background", **{str(n): f"nodule {r.id}" for n, r in enumerate(found, 1)}},
         "nodules": [], "heatmaps": [], "key_images": [],
         "warnings": list(dict.fromkeys(volume.warnings))}
    for r in run.nodules:
        nd = r.to_dict()
        if r.found:
            nd["label_value"] = found.index(r) + 1
            nd["tracking_uid"] = tracking_uid(volume.series_uid, r.id, r.center_lps)
        d["nodules"].append(nd)
    aff = np.asarray(volume.affine, float)
    if run.label_map is not None:
        f = f"{stem}_nodules.nii.gz"
        save_nifti(run.label_map, aff, out_dir / f)
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
        save_nifti(hm.array.astype(np.float32), aff, out_dir / f)
        k = int(np.argmax(hm.array.reshape(hm.array.shape[0], -1).max(1)))
        kf = f"{stem}_heat_{_stem(hm.label)}_key.png"
        overlay_png(volume.array[k], out_dir / kf, heat_slice=hm.array[k], volume=volume, k=k)
        h = hm.to_dict()
        h.update(file=f, key_image=kf, key_slice=k, nodule=hm.params.get("nodule"))
        d["heatmaps"].append(h)
        d["key_images"].append(kf)
    return d


def summary_lines(d: dict) -> list[str]:
    return [NoduleResult(**{k: v for k, v in nd.items() if k in ("id", "point_lps", "found", "reason",
                                                                  "volume_mm3", "long_axis_mm",
                                                                  "short_axis_mm", "mean_hu", "density",
                                                                  "p_malignant", "threshold", "decision")}).text
            for nd in d.get("nodules") or []]


# ------------------------------------------------------------------ the command
def _inputs(path: Path, card):
    """[(kind, loader, source, stem)]: NIfTI files and DICOM CT series under ``path``."""
    from ..models.matching import SeriesFacts, match_card

    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    nifti = [p for p in files if p.name.lower().endswith(NIFTI_SUFFIXES)]
    others = [p for p in files if p not in nifti and not p.name.startswith(".")
              and p.suffix.lower() not in (".csv", ".txt", ".json", ".md", ".xml", ".png", ".jpg")]
    items, notes = [], []
    for p in nifti:
        from .window import volume_from_nifti

        stem = p.name[:-7] if p.name.lower().endswith(".nii.gz") else p.stem
        items.append(("nifti", (lambda p=p: volume_from_nifti(p)), str(p), stem))
    if others:
        from ..dicom import load_series, scan

        index = scan(str(path))
        for n, s in enumerate(index.all_series()):
            if getattr(s, "result_kind", None):
                notes.append(f"series {s.key} skipped: a result object, not an image")
                continue
            m = match_card(card, SeriesFacts.from_series(s))
            if not m.ok:
                notes.append(f"series {s.key} ({s.modality} {s.description}) skipped: {m.reason}")
                continue
            num = s.number if getattr(s, "number", None) is not None else n + 1
            tag = s.key.split(".")[-1][-8:].replace(":", "-part")
            items.append(("series", (lambda s=s: load_series(s)), f"{path} (series {s.uid})",
                          f"series_{num}_{tag}"))
    return items, notes


def cmd_analyze_nodules(args, card, path: Path) -> int:
    """The nodule branch of ``imaging-assist analyze`` (see the module doc)."""
    from ..demo import series_source
    from ..export.report_pdf import build_report, capture, write_report_pdf
    from ..inference.results import write_results_json
    from ..outputs import out_folder

    points: list[tuple[str | None, list[float]]] = [(None, parse_point(a)) for a in (args.at or [])]
    if getattr(args, "points", None):
        points += read_points_csv(args.points)
    items, notes = _inputs(path, card)
    if not items:
        raise UserError(f"nothing in {path} matches model {card.id} (3D CT in HU, DICOM or NIfTI)"
                        + (f": {'; '.join(notes[:3])}" if notes else ""))
    if not points and any(k == "series" for k, *_ in items):
        raise UserError(f"{card.id} characterises a nodule you point at (it does not detect): give "
                        "--at X,Y,Z (mm, patient LPS) or --points CSV for a DICOM series")
    out_dir = out_folder(args.out)
    explain = card.id == MALIGNANCY_MODEL or args.explain is not None
    dicom_run = None
    if getattr(args, "dicom", False):
        from ..export.dicom import DicomRun

        dicom_run = DicomRun(out_dir, echo=lambda m: print(m, file=sys.stderr))
    results, captured, failed, used, said_nifti = [], {}, 0, set(), False
    for kind, load, src, stem in items:
        base, k = stem, 2
        while stem in used:
            stem, k = f"{base}_{k}", k + 1
        used.add(stem)
        try:
            vol = load()
            pts = points
            extra = []
            if not pts:
                pts = [(None, volume_centre(vol))]
                extra.append("no point given: the NIfTI volume is taken as a crop centred on its nodule "
                             "(its centre is used)")
            run = analyze_points(vol, pts, explain=explain)
            d = item_dict(run, vol, out_dir, stem, card,
                          series_source(vol, src) if kind == "series" else src, kind)
            d["warnings"] = extra + d["warnings"]
            captured[len(results)] = capture(d, vol, out_dir, run)
            results.append(d)
            if dicom_run is not None and kind == "series":
                dicom_run.add(kind, vol, run, d, stem)
            elif dicom_run is not None and not said_nifti:
                print("note: DICOM result objects are not written for NIfTI input (no DICOM source to "
                      "reference): the NIfTI label map and the PDF report only", file=sys.stderr)
                said_nifti = True
            for line in summary_lines(d):
                print(f"{Path(src).name if kind == 'nifti' else stem}: {line}", file=sys.stderr)
        except UserError as e:
            failed += 1
            results.append({"source": src, "model": card.id, "model_version": card.version, "error": str(e)})
            print(f"error: {src}: {e}", file=sys.stderr)
    summary = card.summary()
    summary["intended_use"] = card.intended_use
    from . import models as nm

    if any(n.get("models") for it in results for n in it.get("nodules") or []):  # they ran: checked hashes
        summary["sha256"] = dict(nm.load(card.id).hashes)
        summary["workflow_models"] = {mid: {"version": nm.load(mid).card.version, "sha256": dict(nm.load(mid).hashes)}
                                      for mid in NODULE_MODELS}
    p = write_results_json(results, out_dir, summary, {"notes": notes, "input": str(path)})
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    if args.json:
        sys.stdout.write(p.read_text())
    else:
        print(f"wrote {p} ({len(results) - failed} of {len(results)} item(s) analysed)")
    try:
        import json

        rp = write_report_pdf(build_report(json.loads(p.read_text(encoding="utf-8")), base_dir=out_dir,
                                           captured=captured, load_missing=False), out_dir / "report.pdf")
        print(f"wrote {rp}", file=sys.stderr if args.json else sys.stdout)
    except UserError as e:
        print(f"error: report.pdf not written: {e}", file=sys.stderr)
        failed += 1
    if dicom_run is not None:
        dicom_run.finish(out_dir / "report.pdf")
        failed += dicom_run.failed
    return 1 if failed else 0


__all__ = ["NoduleRun", "analyze_points", "item_dict", "cmd_analyze_nodules", "is_nodule_model",
           "parse_point", "read_points_csv", "volume_centre", "NIFTI_SUFFIXES", "tracking_uid"]
