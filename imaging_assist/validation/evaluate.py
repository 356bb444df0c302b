"""Local validation: measure a model on a site's own labelled images (``imaging-assist evaluate``).

Every number comes from :mod:`imaging_assist.evaluation`, the same code that made the shipped
cards' metrics (AUC, sensitivity/specificity with their intervals, ECE, Dice/HD95 and the
cluster bootstrap), so a site's figures and the card's are comparable.  Predictions come from
:func:`imaging_assist.inference.pipelines.run_model`, the app's own pipeline (same
preprocessing, input checks and out-of-distribution result ``ood`` where the pipeline gives one).

Statistics, and why not a library for all of it: scikit-learn gives the precision-recall curve
and average precision (``evaluation.pr_curve``); scipy the ranks behind AUC.  fairlearn's
``MetricFrame`` is not used: it computes per-group point values, but neither clustered
(patient) bootstrap intervals nor "undefined" for a one-class group (it would need our own
code for both anyway), so it would add a dependency without removing code.

Rules that keep the numbers honest:

* a metric that cannot be computed (AUC or sensitivity in a group without positives, PPV with
  nothing called positive) is ``null`` with ``note: "undefined: ..."``, never 0;
* groups under :data:`MIN_GROUP` cases are flagged ``too_small``;
* intervals resample whole patients when patient ids are given (else studies when the CSV is
  keyed by Study Instance UID, else images);
* the threshold chosen for the target sensitivity is chosen on the same data: its figures are
  optimistic and the report says so.
"""

from __future__ import annotations

import csv
import datetime as _dt
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import evaluation as E
from ..errors import UserError

MIN_GROUP = 30  # cases; smaller groups are reported but flagged as too small
MAX_CSV_BYTES = 64 * 2 ** 20
MAX_ROWS = 1_000_000
DICOM_GROUPS = {  # --group-by name -> DICOM attribute (age_band from PatientAge)
    "sex": "PatientSex", "manufacturer": "Manufacturer", "view_position": "ViewPosition",
    "institution": "InstitutionName", "age_band": "PatientAge",
}
AGE_BANDS = ((0, 2, "<2"), (2, 6, "2-5"), (6, 18, "6-17"), (18, 40, "18-39"), (40, 65, "40-64"),
             (65, 200, ">=65"))
_KEY_COLS = ("file", "filename", "file_name", "path", "image")
_SOP_COLS = ("sop_instance_uid", "sopinstanceuid", "sop_uid")
_STUDY_COLS = ("study_instance_uid", "studyinstanceuid", "study_uid")
_LABEL_COLS = ("label", "reference", "truth", "ground_truth", "y")
_PATIENT_COLS = ("patient_id", "patientid", "patient")
_MASK_COLS = ("mask", "mask_file", "reference_mask")
_POSITIVE_WORDS = {"1", "true", "yes", "positive", "pos"}
_NEGATIVE_WORDS = {"0", "false", "no", "negative", "neg"}


class EvaluateError(UserError):
    pass


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(name).strip().lower()).strip("_")


# =========================================================================== labels
@dataclass
class LabelTable:
    rows: list[dict]
    key_col: str  # the column the rows are matched by
    key_kind: str  # "file", "sop" or "study"
    label_col: str | None
    patient_col: str | None
    mask_col: str | None
    columns: list[str]
    folder: Path


def read_labels(path) -> LabelTable:
    """Read the reference CSV (UTF-8, header row).  One-line errors for what is missing."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise EvaluateError(f"{path}: no such labels file")
    if path.stat().st_size > MAX_CSV_BYTES:
        raise EvaluateError(f"{path}: labels file larger than {MAX_CSV_BYTES >> 20} MiB")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            rows = []
            for i, r in enumerate(reader):
                if i >= MAX_ROWS:
                    raise EvaluateError(f"{path}: more than {MAX_ROWS:,} rows")
                rows.append({_norm(k): (v or "").strip() for k, v in r.items() if k is not None})
    except UnicodeDecodeError:
        raise EvaluateError(f"{path}: not a UTF-8 CSV file") from None
    except csv.Error as e:
        raise EvaluateError(f"{path}: not a readable CSV file ({e})") from None
    cols = [_norm(h) for h in header]
    if not cols or not rows:
        raise EvaluateError(f"{path}: no header row or no rows")

    def first(cands):
        return next((c for c in cands if c in cols), None)

    for kind, cands in (("file", _KEY_COLS), ("sop", _SOP_COLS), ("study", _STUDY_COLS)):
        key = first(cands)
        if key:
            break
    else:
        raise EvaluateError(f"{path}: no key column (one of file, sop_instance_uid, "
                            f"study_instance_uid; found {', '.join(cols[:8])})")
    return LabelTable(rows, key, kind, first(_LABEL_COLS), first(_PATIENT_COLS), first(_MASK_COLS),
                      cols, path.parent)


# =========================================================================== inputs
@dataclass
class Case:
    path: Path
    key: str
    row: dict
    label: int | None = None  # 1 positive, 0 negative (classifiers)
    cluster: str = ""
    groups: dict = field(default_factory=dict)
    result: dict | None = None
    error: str | None = None
    dicom: dict = field(default_factory=dict)


def _dicom_facts(path: Path) -> dict | None:
    """Header facts of a DICOM file (None when not DICOM)."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=False,
                             specific_tags=["SOPInstanceUID", "StudyInstanceUID", "PatientID",
                                            "PatientSex", "PatientAge", "PatientBirthDate",
                                            "StudyDate", "Manufacturer", "ViewPosition",
                                            "InstitutionName"])
    except Exception:  # noqa: BLE001 - not DICOM (or unreadable: the loader will say why)
        return None
    return {k: str(ds.get(k, "") or "").strip() for k in
            ("SOPInstanceUID", "StudyInstanceUID", "PatientID", "PatientSex", "PatientAge",
             "PatientBirthDate", "StudyDate", "Manufacturer", "ViewPosition", "InstitutionName")}


def age_years(text: str) -> float | None:
    """DICOM AS ('047Y', '018M', '003W', '010D') or a plain number of years; None if unusable."""
    t = str(text or "").strip().upper()
    m = re.fullmatch(r"(\d{1,3})\s*([DWMY]?)", t)
    if not m:
        try:
            v = float(t)
        except ValueError:
            return None
        return v if 0 <= v < 150 else None
    n, unit = int(m.group(1)), m.group(2) or "Y"
    a = {"D": n / 365.25, "W": n * 7 / 365.25, "M": n / 12, "Y": float(n)}[unit]
    return a if a < 150 else None  # an impossible age is unknown, never the oldest band


def age_band(text: str) -> str | None:
    a = age_years(text)
    if a is None:
        return None
    return next(name for lo, hi, name in AGE_BANDS if lo <= a < hi)


def find_inputs(data: Path) -> list[Path]:
    """Plain images and other (possibly DICOM) files under ``data``, sorted; hidden files and
    obvious non-images left out."""
    from ..inference.images import is_plain_image

    if data.is_file():
        return [data]
    if not data.is_dir():
        raise EvaluateError(f"{data}: no such file or folder")
    skip = {".csv", ".txt", ".json", ".md", ".pdf", ".xml", ".yml", ".yaml", ".py", ".zip", ".npy"}
    out = []
    for p in sorted(data.rglob("*")):
        rel = p.relative_to(data)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        if is_plain_image(p) or p.suffix.lower() not in skip:
            out.append(p)
    return out


def match_cases(data: Path, table: LabelTable, paths: list[Path]) -> tuple[list[Case], list[str]]:
    """Pair files with CSV rows.  Files without a row and rows without a file are counted in
    the notes (never guessed)."""
    from ..inference.images import is_plain_image

    notes: list[str] = []
    by_key: dict[str, dict] = {}
    for r in table.rows:
        k = r.get(table.key_col, "")
        if not k:
            continue
        kk = k.replace("\\", "/").lower() if table.key_kind == "file" else k
        if kk in by_key:
            raise EvaluateError(f"{table.key_col} {k!r} appears twice in the labels file")
        by_key[kk] = r
    base_count: dict[str, int] = {}
    for p in paths:
        base_count[p.name.lower()] = base_count.get(p.name.lower(), 0) + 1
    cases: list[Case] = []
    used: set[str] = set()
    not_dicom = 0
    for p in paths:
        facts = None if is_plain_image(p) else _dicom_facts(p)
        if facts is None and not is_plain_image(p):
            not_dicom += 1
            continue
        row = key = None
        if table.key_kind == "file":
            rel = str(p.relative_to(data) if p != data else p.name).replace(os.sep, "/").lower()
            for cand in (rel, f"{data.name.lower()}/{rel}", p.name.lower(), p.stem.lower()):
                if cand in by_key and (cand == rel or base_count[p.name.lower()] == 1):
                    row, key = by_key[cand], cand
                    break
            if row is None:  # the CSV may hold paths relative to its own folder
                try:
                    rel2 = str(p.resolve().relative_to(table.folder.resolve())).replace(os.sep, "/").lower()
                    if rel2 in by_key:
                        row, key = by_key[rel2], rel2
                except ValueError:
                    pass
        elif facts is not None:
            key = facts["SOPInstanceUID"] if table.key_kind == "sop" else facts["StudyInstanceUID"]
            row = by_key.get(key)
        if row is None:
            continue
        used.add(key)
        cases.append(Case(path=p, key=key, row=row, dicom=facts or {}))
    if not_dicom:
        notes.append(f"{not_dicom} file(s) are neither a plain image nor DICOM: left out")
    unmatched_files = len(paths) - not_dicom - len(cases)
    if unmatched_files:
        notes.append(f"{unmatched_files} image(s) have no row in the labels file: left out")
    missing = len(by_key) - len(used)
    if missing and table.key_kind != "study":
        notes.append(f"{missing} row(s) of the labels file have no image in the data: left out")
    if not cases:
        raise EvaluateError(f"no image in {data} matches a row of the labels file "
                            f"(matched by {table.key_col})")
    return cases, notes


def positive_label(card, positive: str | None = None) -> str:
    """The label the binary metrics are about: ``positive``, else the one label with a card
    threshold, else the last label of a two-label model."""
    if positive:
        if positive not in card.labels:
            raise EvaluateError(f"--positive {positive!r} is not a label of {card.id} "
                                f"({', '.join(card.labels)})")
        return positive
    with_thr = [lab for lab in card.labels if lab in card.thresholds]
    if len(with_thr) == 1:
        return with_thr[0]
    if len(card.labels) == 2:
        return card.labels[1]
    raise EvaluateError(f"model {card.id} has labels {', '.join(card.labels)}: say which one is "
                        "evaluated with --positive LABEL")


def parse_label(text: str, labels: list[str], pos: str) -> int:
    t = str(text).strip().lower()
    if t == pos.lower() or t in _POSITIVE_WORDS:
        return 1
    if t in {lab.lower() for lab in labels} or t in _NEGATIVE_WORDS:
        return 0
    raise EvaluateError(f"reference label {text!r} is neither {pos!r} nor another label of the "
                        f"model ({', '.join(labels)}) nor 0/1")


def assign_groups(cases: list[Case], group_by: list[str], table: LabelTable) -> None:
    """Subgroup values per case: a CSV column, else the DICOM attribute (sex, age_band,
    manufacturer, view_position, institution).  ``age_band`` is made from a CSV ``age``
    column when there is one.  A missing value is the group "unknown"."""
    for g in group_by:
        n = _norm(g)
        if n not in table.columns and n not in DICOM_GROUPS:
            raise EvaluateError(f"--group-by {g!r}: no such column in the labels file and not one "
                                f"of {', '.join(DICOM_GROUPS)}")
    for c in cases:
        for g in group_by:
            n = _norm(g)
            v = None
            if n in table.columns:
                v = c.row.get(n) or None
            elif n == "age_band":
                if "age" in table.columns and c.row.get("age"):
                    v = age_band(c.row["age"])
                elif c.dicom.get("PatientAge"):
                    v = age_band(c.dicom["PatientAge"])
            elif n == "sex" and "gender" in table.columns:
                v = c.row.get("gender") or None
            else:
                v = c.dicom.get(DICOM_GROUPS[n]) or None
            c.groups[n] = str(v) if v else "unknown"


# =========================================================================== metrics
def _val(v, note=None, ci=None, digits=4) -> dict:
    ok = v is not None and np.isfinite(v)
    d = {"value": round(float(v), digits) if ok else None}
    if ok and ci is not None and all(np.isfinite(ci)):
        d["ci95"] = [round(float(ci[0]), digits), round(float(ci[1]), digits)]
    if not ok:
        d["note"] = note or "undefined"
    return d


def _ci(stat, *arrays, clusters=None, strata=None, n_boot=1000, seed=0):
    """bootstrap_ci, or None when every resample is undefined."""
    try:
        return E.bootstrap_ci(stat, *arrays, clusters=clusters, strata=strata, n_boot=n_boot, seed=seed)
    except (IndexError, ValueError):
        return None


def classification_metrics(y, p, threshold: float, clusters=None, n_boot: int = 1000,
                           seed: int = 0, curves: bool = False) -> dict:
    """AUC, sensitivity, specificity, PPV, NPV (at the prevalence of ``y``), ECE and the
    confusion matrix at ``threshold``, each with a 95% interval (cluster bootstrap; Wilson for
    sensitivity/specificity as in the cards).  Undefined values are null with a note."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, np.float64)
    n, n_pos = len(y), int(y.sum())
    n_neg = n - n_pos
    n_cl = len(set(clusters)) if clusters is not None else n
    strata = y if (n_pos and n_neg) else None
    cl = np.asarray(clusters) if clusters is not None else np.arange(n)
    out: dict = {"n": n, "n_positive": n_pos, "n_negative": n_neg, "n_clusters": n_cl,
                 "n_positive_clusters": len(set(cl[y == 1].tolist())),
                 "prevalence": round(n_pos / n, 4) if n else None, "threshold": round(float(threshold), 6),
                 "too_small": n < MIN_GROUP}
    no_pos = "undefined: no positive case"
    no_neg = "undefined: no negative case"
    one_class = "undefined: only one class" if (n_pos == 0 or n_neg == 0) else None
    auc = E.roc_auc(y, p) if not one_class else float("nan")
    out["AUC"] = _val(auc, one_class, None if one_class else
                      _ci(E.roc_auc, y, p, clusters=clusters, strata=strata, n_boot=n_boot, seed=seed))
    if not one_class and auc in (0.0, 1.0):
        # every resample gives the same perfect ranking: [1, 1] would claim certainty
        out["AUC"].pop("ci95", None)
        out.setdefault("ci_notes", []).append(f"no interval for AUC {auc:g}: a bootstrap cannot widen a "
                                              "perfect ranking, which is not certainty")
    se, sp = E.sens_spec(y, p, threshold)
    if n_pos or n_neg:
        se_ci, sp_ci, how = E.sens_spec_ci(y, p, threshold, clusters=clusters, seed=seed, n_boot=n_boot)
    else:
        se_ci = sp_ci = None
        how = ""
    if clusters is not None:  # resampling a single patient gives a point, not an interval
        c = np.asarray(clusters)
        for cls, name in ((1, "positive"), (0, "negative")):
            if 0 < (y == cls).sum() and len(set(c[y == cls].tolist())) < 2:
                if cls:
                    se_ci = None
                else:
                    sp_ci = None
                out.setdefault("ci_notes", []).append(
                    f"no interval for {'sensitivity' if cls else 'specificity'}: every {name} case "
                    "is from one patient")
    out["sensitivity"] = _val(se, no_pos, se_ci)
    out["specificity"] = _val(sp, no_neg, sp_ci)
    out["sens_spec_ci_method"] = how
    ppv, npv = E.predictive_values(y, p, threshold)
    called = p >= threshold
    for name, v, which, why in (("PPV", ppv, 0, "undefined: nothing called positive"),
                                ("NPV", npv, 1, "undefined: nothing called negative")):
        ci = None
        if np.isfinite(v) and v in (0.0, 1.0):
            # 0/n or n/n: the bootstrap collapses to a point; Wilson on the patients called
            # positive (PPV) / negative (NPV), as for sensitivity and specificity
            k = len(set(cl[called if which == 0 else ~called].tolist()))
            ci = E.wilson_ci(int(round(v * k)), k)
        elif np.isfinite(v):
            # not stratified by label: the data are a sample of a population whose prevalence
            # varies too (a label-stratified resample holds it fixed and narrows the interval)
            ci = _ci(lambda a, b, _w=which: E.predictive_values(a, b, threshold)[_w], y, p,
                     clusters=clusters, strata=None, n_boot=n_boot, seed=seed + 2 + which)
        out[name] = _val(v, why, ci)
    rel = E.reliability(y, p)
    out["ECE"] = _val(rel.ece, "undefined: no cases", _ci(lambda a, b: E.reliability(a, b).ece, y, p,
                                                         clusters=clusters, strata=strata,
                                                         n_boot=n_boot, seed=seed + 4) if n else None)
    pred = (p >= threshold).astype(int)
    out["confusion_matrix"] = {"rows": "reference (negative, positive)",
                               "columns": "model (negative, positive)",
                               "counts": E.confusion_matrix(y, pred, 2)}
    if curves:
        out["average_precision"] = _val(E.average_precision(y, p) if n_pos else float("nan"), no_pos)
        out["reliability"] = {"bin_edges": rel.bin_edges, "confidence": rel.confidence,
                              "observed": rel.accuracy, "count": rel.count}
        if not one_class:
            fpr, tpr, thr = E.roc_curve(y, p)
            prec, rec, _ = E.pr_curve(y, p)
            out["roc_curve"] = _thin({"fpr": fpr, "tpr": tpr})
            out["pr_curve"] = _thin({"recall": rec[::-1], "precision": prec[::-1]})
    return out


def _thin(curve: dict, max_points: int = 400) -> dict:
    """A curve with at most ``max_points`` points (evenly picked, ends kept), rounded."""
    n = len(next(iter(curve.values())))
    idx = np.unique(np.r_[np.linspace(0, n - 1, min(n, max_points)).round().astype(int), n - 1])
    return {k: [round(float(v), 5) for v in np.asarray(a)[idx]] for k, a in curve.items()}


def sensitivity_gap(y, p, groups, threshold: float, clusters=None, n_boot: int = 1000,
                    seed: int = 0, min_group: int = 1) -> dict | None:
    """The largest difference in sensitivity between two groups (highest minus lowest among
    groups with at least one positive and ``min_group`` cases) and its bootstrap interval
    (the same two groups in every resample; clusters resampled within label strata)."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, np.float64)
    g = np.asarray(groups).astype(str)
    sens = {}
    for k in sorted(set(g.tolist())):
        m = g == k
        if y[m].sum() > 0 and m.sum() >= min_group and k != "unknown":
            sens[k] = E.sens_spec(y[m], p[m], threshold)[0]
    if len(sens) < 2:
        return None
    order = sorted(sens, key=lambda k: (sens[k], k))
    lo, hi = order[0], order[-1]  # two different groups even when all sensitivities are equal
    out = {"groups": [hi, lo], "value": round(sens[hi] - sens[lo], 4), "ci95": None,
           "sensitivity": {hi: round(sens[hi], 4), lo: round(sens[lo], 4)}}
    if len(sens) == 2:  # the pair is not chosen from the data: its bootstrap interval holds

        def stat(a, b, c):
            s1 = E.sens_spec(a[c == hi], b[c == hi], threshold)[0]
            s2 = E.sens_spec(a[c == lo], b[c == lo], threshold)[0]
            return s1 - s2

        strata = np.char.add(g, y.astype(str))  # keeps each group's positives in every resample
        ci = _ci(stat, y, p, g, clusters=clusters, strata=strata, n_boot=n_boot, seed=seed)
        out["ci95"] = [round(ci[0], 4), round(ci[1], 4)] if ci else None
        return out
    # More groups: the highest and lowest are picked after seeing the data, so an interval of
    # their difference would exclude 0 far more often than 5% of the time when every group has
    # the same sensitivity (an audit measured 38% with 6 equal groups).  Instead, a permutation
    # test of "every group has the same sensitivity": the positive patients' group labels
    # shuffled, the largest gap recomputed.
    pos = y == 1
    keep = pos & np.isin(g, list(sens))
    cl = np.asarray(clusters)[keep] if clusters is not None else np.arange(int(keep.sum()))
    gp, pp = g[keep], p[keep] >= threshold
    units, first = np.unique(cl, return_index=True)
    unit_of = np.searchsorted(units, cl)
    unit_group = gp[first]

    def gap_of(groups_of_rows):
        rates = [pp[groups_of_rows == k].mean() for k in sens if (groups_of_rows == k).any()]
        return max(rates) - min(rates) if len(rates) > 1 else 0.0

    obs = gap_of(unit_group[unit_of])
    rng = np.random.default_rng(seed)
    more = sum(gap_of(rng.permutation(unit_group)[unit_of]) >= obs - 1e-12 for _ in range(n_boot))
    out["p_value_equal_sensitivity"] = round((1 + more) / (1 + n_boot), 4)
    out["note"] = (f"the largest of the gaps between {len(sens)} groups, picked after seeing the data: no "
                   "interval; p_value_equal_sensitivity is a permutation test (positive patients' groups "
                   "shuffled) that every group has the same sensitivity")
    return out


def segmentation_metrics(dice_values, hd_values, clusters=None, n_boot=1000, seed=0,
                         hd_unit="mm") -> dict:
    """Mean Dice and mean HD95 over cases, each with a cluster-bootstrap 95% interval."""
    d = np.asarray(dice_values, np.float64)
    h = np.asarray(hd_values, np.float64)
    n = len(d)
    out = {"n": n, "too_small": n < MIN_GROUP}
    mean = lambda a: float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")  # noqa: E731
    out["Dice"] = _val(mean(d), "undefined: no cases",
                       _ci(mean, d, clusters=clusters, n_boot=n_boot, seed=seed) if n else None)
    out[f"HD95_{hd_unit}"] = _val(mean(h), "undefined: empty masks",
                                  _ci(mean, h, clusters=clusters, n_boot=n_boot, seed=seed + 1)
                                  if np.isfinite(h).any() else None)
    out["n_empty"] = int((~np.isfinite(h)).sum())
    return out


# =========================================================================== running
def _predict(model, cases: list[Case], progress=None) -> None:
    """Run the app's pipeline on every case (images read ahead on a thread)."""
    from concurrent.futures import ThreadPoolExecutor

    from ..inference.images import read_image
    from ..inference.pipelines import RunOptions, run_model

    from ..models.matching import match_card, series_facts

    def load(c: Case):
        """(volume, None) or (None, reason): the same fit rules as analyze and the viewer
        (an image the app would refuse is not silently scored here)."""
        try:
            series = None
            if c.dicom:
                from ..dicom import load_series, scan

                idx = scan(str(c.path))
                found = idx.all_series()
                if not found:
                    raise EvaluateError(f"{c.path}: no loadable image "
                                        f"({idx.problems[0].reason if idx.problems else 'unknown'})")
                series = found[0]
                vol = load_series(series)
            else:
                vol = read_image(c.path)
            m = match_card(model.card, series_facts(vol, series))
            if not m.ok:
                return None, f"{c.path.name}: {m.reason}"
            return vol, None
        except UserError as e:
            return None, str(e)

    from ..monitoring.log import paused

    opts = RunOptions(device="cpu")
    # Re-running labelled local data is a measurement, not reading: kept out of the prediction
    # log so the drift monitor's windows hold each real run once (run_model runs on this thread).
    with ThreadPoolExecutor(max_workers=2) as pool, paused():
        for i, (c, (vol, err)) in enumerate(zip(cases, pool.map(load, cases))):
            if err is None:
                try:
                    res = run_model(model, vol, opts)
                    d = res.to_dict()
                    d["_label_map"] = getattr(res, "label_map", None)
                    d["_spacing"] = getattr(res, "spacing", None)
                    c.result = d
                except UserError as e:
                    err = str(e)
            c.error = err
            if progress:
                progress(i + 1, len(cases))


def _flagged(c: Case) -> bool:
    ood = (c.result or {}).get("ood") or {}
    return bool(ood.get("flagged"))


def evaluate(data, model_id: str, labels_csv, group_by=(), target_sensitivity: float = 0.95,
             n_boot: int = 1000, positive: str | None = None, progress=None, seed: int = 0) -> dict:
    """The whole evaluation; returns the ``evaluation.json`` dict (plus ``_arrays`` for the
    report, removed before writing)."""
    from ..models.loaders import load_model
    from ..models.registry import Registry

    t0 = time.perf_counter()
    if not 0 < target_sensitivity < 1:
        raise EvaluateError(f"--target-sensitivity must lie between 0 and 1 (got {target_sensitivity})")
    data = Path(data).expanduser()
    entry = Registry().get(model_id)
    card = entry.card
    table = read_labels(labels_csv)
    seg = card.task != "classification"
    if seg and not table.mask_col:
        raise EvaluateError(f"model {card.id} is a segmenter: the labels file needs a 'mask' column "
                            "(reference mask image per row, relative to the labels file)")
    if not seg and not table.label_col:
        raise EvaluateError("the labels file needs a 'label' column (the reference label)")
    cases, notes = match_cases(data, table, find_inputs(data))
    pos = None if seg else positive_label(card, positive)
    for c in cases:
        if not seg:
            c.label = parse_label(c.row.get(table.label_col, ""), card.labels, pos)
        if table.patient_col and c.row.get(table.patient_col):
            c.cluster = f"patient:{c.row[table.patient_col]}"
        elif c.dicom.get("PatientID"):
            c.cluster = f"patient:{c.dicom['PatientID']}"
        elif table.key_kind == "study":
            c.cluster = f"study:{c.key}"
        else:
            c.cluster = f"image:{c.path}"
    group_by = [_norm(g) for g in group_by]
    assign_groups(cases, group_by, table)
    model = load_model(card, "cpu")
    t_inf = time.perf_counter()
    _predict(model, cases, progress)
    t_inf = time.perf_counter() - t_inf
    failed = [c for c in cases if c.error]
    for c in failed[:20]:
        notes.append(f"not analysed: {c.error}")
    if len(failed) > 20:
        notes.append(f"... and {len(failed) - 20} more not analysed")
    ok = [c for c in cases if not c.error]
    if not ok:
        raise EvaluateError(f"none of the {len(cases)} matched image(s) could be analysed: "
                            f"{failed[0].error}")
    ids = [c.cluster for c in ok]
    kind = ("patients" if all(i.startswith("patient:") for i in ids) else
            "studies" if all(i.startswith("study:") for i in ids) else "images")
    clusters = np.array(ids)
    clustered = len(set(ids)) < len(ids)
    report: dict = {
        "schema_version": 1,
        "kind": "evaluation",
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "model": {"id": card.id, "version": card.version, "task": card.task,
                  "sha256": dict(model.hashes)},
        "data": {"input": str(data), "labels": str(Path(labels_csv).expanduser()),
                 "matched_by": table.key_col, "n_matched": len(cases), "n_analysed": len(ok),
                 "n_failed": len(failed), "n_clusters": len(set(ids)), "cluster_unit": kind},
        "ci_method": (f"percentile bootstrap, {n_boot:,} resamples of whole {kind} (stratified by "
                      f"label; PPV/NPV not stratified, Wilson on the {kind} when 0 or 1; no interval for an "
                      f"AUC of 0 or 1); sensitivity/specificity as in the cards (Wilson when each {kind[:-1]} "
                      "has one image)") if clustered else
                     (f"percentile bootstrap, {n_boot:,} resamples of images (one image per "
                      f"{kind[:-1]}); sensitivity/specificity: Wilson score interval"),
        "group_by": group_by, "min_group_size": MIN_GROUP, "notes": notes,
    }
    cl = clusters if clustered else None
    flagged = np.array([_flagged(c) for c in ok])
    has_ood = any((c.result or {}).get("ood") is not None for c in ok)
    if seg:
        report.update(_segmentation_part(card, ok, table, group_by, cl, n_boot, seed, flagged, has_ood))
    else:
        report.update(_classification_part(card, ok, pos, group_by, cl, n_boot, seed, flagged,
                                           has_ood, target_sensitivity))
    report["timings_s"] = {"inference": round(t_inf, 2), "total": round(time.perf_counter() - t0, 2)}
    report["images_per_s"] = round(len(cases) / t_inf, 2) if t_inf > 0 else None
    return report


def _classification_part(card, ok, pos, group_by, cl, n_boot, seed, flagged, has_ood, target):
    y = np.array([c.label for c in ok])
    p = np.array([c.result["probabilities"][pos] for c in ok], np.float64)
    card_thr = card.thresholds[pos].threshold if pos in card.thresholds else 0.5
    card_src = "card" if pos in card.thresholds else "0.5 (the card has no threshold for this label)"
    out: dict = {"positive_label": pos}
    ops = {"card": {"threshold": card_thr, "source": card_src}}
    from ..models.site import site_thresholds

    saved = site_thresholds(card)[0].get(pos)
    if saved is not None:  # re-check the site's saved operating point on this data
        ops["site"] = {"threshold": saved.threshold, "source": saved.note}
    if y.sum() > 0:
        t = E.threshold_for_sensitivity(y, p, target)
        # rounded DOWN: the threshold is the score of the boundary positive case, and rounding up
        # would turn it negative (the target missed about half the time)
        ops["target_sensitivity"] = {"threshold": math.floor(t * 1e6) / 1e6, "target": target,
                                     "source": "chosen on this data (optimistic on this data)"}
    else:
        notes = "no positive case: no threshold for a target sensitivity"
        ops["target_sensitivity"] = {"threshold": None, "target": target, "note": notes}
    for name, op in ops.items():
        if op["threshold"] is None:
            continue
        op["overall"] = classification_metrics(y, p, op["threshold"], cl, n_boot, seed,
                                               curves=(name == "card"))
        op["subgroups"] = {}
        for g in group_by:
            gv = np.array([c.groups[g] for c in ok])
            per = {}
            for k in sorted(set(gv.tolist())):
                m = gv == k
                per[k] = classification_metrics(y[m], p[m], op["threshold"],
                                                None if cl is None else cl[m], n_boot, seed)
            op["subgroups"][g] = {"groups": per,
                                  "largest_sensitivity_gap": sensitivity_gap(
                                      y, p, gv, op["threshold"], cl, n_boot, seed)}
        if has_ood:
            m = ~flagged
            op["without_ood_flagged"] = (classification_metrics(y[m], p[m], op["threshold"],
                                                                None if cl is None else cl[m], n_boot, seed)
                                         if m.any() else None)
    out["operating_points"] = ops
    out["ood"] = ({"available": True, "n_flagged": int(flagged.sum()), "n": len(ok)} if has_ood else
                  {"available": False, "note": "the results carry no out-of-distribution score"})
    out["_arrays"] = {"y": y, "p": p}
    return out


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert("L") if im.mode not in ("L", "1", "I", "I;16") else im)
    except FileNotFoundError:
        raise EvaluateError(f"{path}: reference mask not found") from None
    except Exception as e:  # noqa: BLE001 - any unreadable mask is a one-line error for that case
        raise EvaluateError(f"{path}: not a readable mask image ({e})") from None
    return a > 0


def _segmentation_part(card, ok, table, group_by, cl, n_boot, seed, flagged, has_ood):
    """Dice of the union of the model's structures against the non-zero pixels of the
    reference mask, and HD95 (mm when the pixel spacing is known, else px)."""
    dices, hds, keep, units = [], [], [], set()
    notes = []
    for i, c in enumerate(ok):
        lm = c.result.get("_label_map")
        mp = Path(c.row.get(table.mask_col, ""))
        mp = mp if mp.is_absolute() else table.folder / mp
        try:
            ref = _read_mask(mp)
        except EvaluateError as e:
            notes.append(str(e))
            continue
        if lm is None:
            notes.append(f"{c.path}: the model gave no label map")
            continue
        pred = np.asarray(lm)[0] > 0 if np.asarray(lm).ndim == 3 else np.asarray(lm) > 0
        if pred.shape != ref.shape:
            notes.append(f"{c.path}: reference mask {ref.shape[1]}x{ref.shape[0]} differs from the "
                         f"image {pred.shape[1]}x{pred.shape[0]}: left out")
            continue
        sp = c.result.get("_spacing")
        spacing = (sp[1], sp[0]) if sp and c.result.get("has_geometry") else None
        units.add("mm" if spacing else "px")
        dices.append(E.dice(pred, ref))
        hds.append(E.hausdorff95(pred, ref, spacing=spacing))
        keep.append(i)
    if not keep:
        raise EvaluateError("no case has a usable reference mask: " + (notes[0] if notes else ""))
    if len(units) > 1:
        raise EvaluateError("some images have a pixel spacing and some do not: HD95 would mix mm "
                            "and px; evaluate them separately")
    unit = units.pop()
    keep = np.array(keep)
    d, h = np.array(dices), np.array(hds)
    ok_k = [ok[i] for i in keep]
    clk = None if cl is None else cl[keep]
    out = {"comparison": "union of the model's structures vs non-zero pixels of the reference mask",
           "hd95_unit": unit, "mask_notes": notes}
    if unit == "px":
        out["hd95_note"] = "no pixel spacing (plain images): HD95 in pixels, not mm"
    out["overall"] = segmentation_metrics(d, h, clk, n_boot, seed, unit)
    out["subgroups"] = {}
    for g in group_by:
        gv = np.array([c.groups[g] for c in ok_k])
        out["subgroups"][g] = {"groups": {k: segmentation_metrics(d[gv == k], h[gv == k],
                                                                   None if clk is None else clk[gv == k],
                                                                   n_boot, seed, unit)
                                          for k in sorted(set(gv.tolist()))}}
    fl = flagged[keep]
    out["ood"] = ({"available": True, "n_flagged": int(fl.sum()), "n": len(keep)} if has_ood else
                  {"available": False, "note": "the results carry no out-of-distribution score"})
    if has_ood:
        out["without_ood_flagged"] = (segmentation_metrics(d[~fl], h[~fl], None if clk is None else clk[~fl],
                                                           n_boot, seed, unit) if (~fl).any() else None)
    out["_arrays"] = {"dice": d, "hd95": h}
    return out


def fmt(v: dict | None, digits: int = 3) -> str:
    """``0.912 (0.870-0.944)`` or the undefined note."""
    if not v:
        return "-"
    if v.get("value") is None:
        return v.get("note", "undefined")
    s = f"{v['value']:.{digits}f}"
    if v.get("ci95"):
        s += f" ({v['ci95'][0]:.{digits}f}-{v['ci95'][1]:.{digits}f})"
    return s


def finite_or_none(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x
