"""The CT nodule branch of ``imaging-assist analyze PATH --model ct-nodule-malignancy|ct-nodule-seg
[--at X,Y,Z | --points CSV] --out DIR`` (the engine is :mod:`imaging_assist.nodules.run`: points,
analysis, the results.json item)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UserError
from ..nodules.analysis import MALIGNANCY_MODEL
from ..nodules.run import (NIFTI_SUFFIXES, NODULE_MODELS, analyze_points, item_dict, parse_point,
                           read_points_csv, summary_lines, volume_centre)
from ..safe_text import printable
from .common import finish_run, item_failure, out_folder, print_item_error


def _inputs(path: Path, card):
    """[(kind, loader, source, stem)]: NIfTI files and DICOM CT series under ``path``."""
    from ..dicom import load_series
    from ..inference.inputs import collect_inputs
    from ..models.matching import SeriesFacts, match_card
    from ..nodules.window import volume_from_nifti

    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    nifti = [p for p in files if p.name.lower().endswith(NIFTI_SUFFIXES)]
    items, notes = [], []
    for p in nifti:
        stem = p.name[:-7] if p.name.lower().endswith(".nii.gz") else p.stem
        items.append(("nifti", (lambda p=p: volume_from_nifti(p)), str(p), stem))
    found = collect_inputs(path, exclude=nifti)  # the DICOM series, as analyze finds them
    notes += [f"series {s.key} skipped: a result object, not an image" for s in found.results]
    for s, stem in found.series:
        m = match_card(card, SeriesFacts.from_series(s))
        if not m.ok:
            notes.append(f"series {s.key} ({s.modality} {s.description}) skipped: {m.reason}")
            continue
        items.append(("series", (lambda s=s: load_series(s)), f"{path} (series {s.uid})", stem))
    return items, notes


def _prior_nodules(path: str) -> tuple[str, dict]:
    """(name, {id: [(nodule entry, its item), ...]}) of the found nodules of a prior analysis
    (an id is per series: a results.json of several series may hold N1 more than once)."""
    from .nodule_growth import read_results

    out: dict[str, list] = {}
    for it in read_results(path)["items"]:
        if isinstance(it, dict) and it.get("task") == "nodule":
            for n in it.get("nodules") if isinstance(it.get("nodules"), list) else []:
                if isinstance(n, dict) and n.get("found") and n.get("id") is not None:
                    out.setdefault(str(n["id"]), []).append((n, it))
    if not out:
        raise UserError(f"--prior {path}: no nodule found in this results.json")
    return Path(path).name, out


def add_growth(d: dict, run, name: str, prior: dict) -> list[str]:
    """Each found nodule of the item ``d`` linked to the prior nodule of the same id (the reader
    names them alike, e.g. in --points): ``growth`` in its results.json entry and on its
    NoduleResult (report, SR).  The warnings of the nodules that could not be compared."""
    from ..nodules.growth import compare

    warnings = []
    for r, nd in zip(run.nodules, d["nodules"]):
        if not nd.get("found"):
            continue
        if str(nd.get("id")) not in prior:
            warnings.append(f"nodule {nd.get('id')}: no nodule of that id in the prior analysis ({name}): "
                            f"no growth (prior ids: {', '.join(list(prior)[:8])})")
            continue
        # the current series itself is no prior (a results.json of both studies given as --prior)
        found = [(pn, pit) for pn, pit in prior[str(nd["id"])] if pit.get("series_uid") != d.get("series_uid")] \
            or prior[str(nd["id"])]
        if len(found) > 1:  # never the first one silently
            warnings.append(f"nodule {nd.get('id')}: not compared with the prior: {name} holds a nodule {nd.get('id')} "
                            f"in {len(found)} series ({', '.join(str(it.get('series_uid')) for _, it in found[:4])}): "
                            "give the results.json of one series, or use nodule-growth --prior-series")
            continue
        pn, pit = found[0]
        try:
            nd["growth"] = r.growth = compare(pn, pit, nd, d)
        except ValueError as e:
            warnings.append(f"nodule {nd.get('id')}: not compared with the prior ({e})")
    return warnings


def ignored_options(args) -> list[str]:
    """One line per option asked for that the CT nodule models do not honour (said, never
    dropped silently): they run in fp32 on the CPU and explain with Grad-CAM
    (imaging_assist/nodules/models.py), on any machine."""
    from ..explain.names import canonical_method

    why = "the CT nodule models run fp32 on the CPU with Grad-CAM"
    out = []
    device, precision = getattr(args, "device", None), getattr(args, "precision", None)
    if (device or "auto").lower() not in ("auto", "cpu"):
        out.append(f"{why}: --device {device} ignored")
    if (precision or "auto").lower() not in ("auto", "fp32"):
        out.append(f"{why}: --precision {precision} ignored")
    if args.explain is not None and canonical_method(args.explain) != "gradcam":
        out.append(f"{why}: --explain {args.explain} ignored")
    return out


def cmd_analyze_nodules(args, card, path: Path) -> int:
    """The nodule branch of ``imaging-assist analyze`` (see the module doc)."""
    from ..demo import series_source
    from ..export.report_pdf import capture
    from ..nodules import models as nm

    points: list[tuple[str | None, list[float]]] = [(None, parse_point(a)) for a in (args.at or [])]
    if getattr(args, "points", None):
        points += read_points_csv(args.points)
    items, notes = _inputs(path, card)
    notes = ignored_options(args) + notes  # results.json's notes; printed at the end of the run
    if not items:
        raise UserError(f"nothing in {path} matches model {card.id} (3D CT in HU, DICOM or NIfTI)"
                        + (f": {'; '.join(notes[:3])}" if notes else ""))
    if not points and any(k == "series" for k, *_ in items):
        raise UserError(f"{card.id} characterises a nodule you point at (it does not detect): give "
                        "--at X,Y,Z (mm, patient LPS) or --points CSV for a DICOM series")
    prior = _prior_nodules(args.prior) if getattr(args, "prior", None) else None
    out_dir = out_folder(args.out)  # checked against the input by cmd_analyze (refuse_inside)
    explain = card.id == MALIGNANCY_MODEL or args.explain is not None
    dicom_run = None
    if getattr(args, "dicom", False):
        from ..export.dicom import DicomRun

        dicom_run = DicomRun(out_dir, echo=lambda m: print(m, file=sys.stderr))
    results, captured, failed, used, said_nifti = [], {}, 0, set(), False
    from ..outputs import unique_stem

    for kind, load, src, stem in items:
        stem = unique_stem(stem, used)
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
            growth_lines = []
            if prior is not None:
                said = add_growth(d, run, *prior)
                d["warnings"] += said
                # on the console too: --prior was asked for, and whether it compared anything was
                # said only in results.json and the report (an older version's prior refused silently)
                growth_lines = [f"growth: {nd['growth']['text']}" for nd in d["nodules"]
                                if isinstance(nd.get("growth"), dict) and nd["growth"].get("text")]
                growth_lines += [f"warning: {w}" for w in said]
            captured[len(results)] = capture(d, vol, out_dir, run)
            results.append(d)
            if dicom_run is not None and kind == "series":
                dicom_run.add(kind, vol, run, d, stem)
            elif dicom_run is not None and not said_nifti:
                print("note: DICOM result objects are not written for NIfTI input (no DICOM source to "
                      "reference): the NIfTI label map and the PDF report only", file=sys.stderr)
                said_nifti = True
            name = Path(src).name if kind == 'nifti' else stem
            for line in summary_lines(d) + growth_lines:
                print(printable(f"{name}: {line}"), file=sys.stderr)  # a file's name may hold anything
            # what qualifies a nodule's numbers (a volume that is a lower bound at the window's edge,
            # outside the training population, a withheld decision's cause) was in results.json only
            for nd in d["nodules"]:
                for w in nd.get("warnings") or []:
                    print(printable(f"warning: {name}: {nd['id']}: {w}"), file=sys.stderr)
        except Exception as e:  # noqa: BLE001 - one failed item, the rest goes on (a defect only this file hits too)
            msg = item_failure(e, args)
            failed += 1
            results.append({"source": src, "model": card.id, "model_version": card.version, "error": msg})
            print_item_error(src, msg)
    summary = card.summary()
    summary["intended_use"] = card.intended_use
    if any(n.get("models") for it in results for n in it.get("nodules") or []):  # they ran: checked hashes
        summary["sha256"] = dict(nm.load(card.id).hashes)
        summary["workflow_models"] = {mid: {"version": nm.load(mid).card.version, "sha256": dict(nm.load(mid).hashes)}
                                      for mid in NODULE_MODELS}
    return finish_run(args, path, out_dir, results, summary, notes, captured, dicom_run, failed)
