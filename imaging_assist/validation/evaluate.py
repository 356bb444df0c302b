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
READ_AHEAD = 4  # decoded images waiting for the model at most (each can be a 3000x3000 film or more)
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


_FACT_KEYS = ("SOPInstanceUID", "StudyInstanceUID", "PatientID", "PatientSex", "PatientAge",
              "PatientBirthDate", "StudyDate", "Manufacturer", "ViewPosition", "InstitutionName")


def _dicom_facts(path: Path) -> tuple[dict | None, str | None]:
    """(header facts, None) of a DICOM file, or (None, the one-line reason it is not one).

    Whether a file is DICOM is decided by the app's own header reader
    (:func:`imaging_assist.dicom.read_record`, the one the index and loader use), so a file the
    viewer and ``analyze`` open (a valid DICOM without the 128-byte preamble, as the Fuji CR of
    the test data) is never refused here."""
    from ..dicom.header import HeaderError, read_record

    try:
        rec = read_record(str(path))
    except HeaderError as e:
        return None, str(e)
    except Exception as e:  # noqa: BLE001 - the index treats any reader failure as a problem too
        return None, f"unreadable: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"
    facts = {k: str(rec.get(k, "") or "").strip() for k in _FACT_KEYS}
    import pydicom  # InstitutionName is not among the reader's attributes (header.WANTED)

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True,
                             specific_tags=["InstitutionName"])
        facts["InstitutionName"] = str(ds.get("InstitutionName", "") or "").strip()
    except Exception:  # noqa: BLE001 - the reader read the file: a missing name is "unknown"
        pass
    return facts, None


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


MAX_NAMED = 10  # files or rows named in one note; the rest are counted


def _named(items: list[str]) -> str:
    """``a, b, c`` (at most :data:`MAX_NAMED`, then ``and N more``)."""
    s = ", ".join(items[:MAX_NAMED])
    return s + (f" and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else "")


def match_cases(data: Path, table: LabelTable, paths: list[Path]) -> tuple[list[Case], list[str]]:
    """Pair files with CSV rows.  Files without a row and rows without a file are counted in
    the notes (never guessed); files refused as neither a plain image nor DICOM and rows that
    match more than one file are named and left out."""
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
    stem_count: dict[str, int] = {}
    for p in paths:
        base_count[p.name.lower()] = base_count.get(p.name.lower(), 0) + 1
        stem_count[p.stem.lower()] = stem_count.get(p.stem.lower(), 0) + 1

    def show(p: Path) -> str:
        return str(p.relative_to(data)) if p != data and data in p.parents else p.name

    def file_key(p: Path) -> tuple[str | None, str | None]:
        """(the row key this file matches, None) or (None, a key it matches only ambiguously:
        a bare file name or stem shared by several files of the data)."""
        rel = str(p.relative_to(data) if p != data else p.name).replace(os.sep, "/").lower()
        ambiguous = None
        for cand, count in ((rel, 1), (f"{data.name.lower()}/{rel}", 1),
                            (p.name.lower(), base_count[p.name.lower()]),
                            (p.stem.lower(), stem_count[p.stem.lower()])):
            if cand in by_key:
                if count == 1:
                    return cand, None
                ambiguous = ambiguous or cand
        try:  # the CSV may hold paths relative to its own folder
            rel2 = str(p.resolve().relative_to(table.folder.resolve())).replace(os.sep, "/").lower()
            if rel2 in by_key:
                return rel2, None
        except ValueError:
            pass
        return None, ambiguous

    found: list[tuple[Path, str, dict | None]] = []  # (file, row key, DICOM facts)
    refused: list[tuple[Path, str, str | None]] = []  # (file, reason, row key or None)
    ambiguous: dict[str, set[str]] = {}
    amb_files: list[str] = []
    for p in paths:
        facts = why = None
        if not is_plain_image(p):
            facts, why = _dicom_facts(p)
        key = amb = None
        if table.key_kind == "file":
            key, amb = file_key(p)
        elif facts is not None:
            key = facts["SOPInstanceUID"] if table.key_kind == "sop" else facts["StudyInstanceUID"]
            key = key if key in by_key else None
        if why is not None:
            refused.append((p, why, key or amb))
            continue
        if amb is not None:
            ambiguous.setdefault(amb, set()).add(show(p))
            amb_files.append(amb)
        if key is not None:
            found.append((p, key, facts))
    files_of: dict[str, list[str]] = {}
    for p, key, _ in found:
        files_of.setdefault(key, []).append(show(p))
    if table.key_kind != "study":  # one file per row (a study row is meant for all its images)
        for key, names in files_of.items():
            if len(names) > 1:
                ambiguous.setdefault(key, set()).update(names)
    for key in [k for k in ambiguous if k in files_of and len(files_of[k]) == 1]:
        del ambiguous[key]  # matched by its full name or path: not ambiguous
    cases = [Case(path=p, key=key, row=by_key[key], dicom=facts or {}) for p, key, facts in found
             if key not in ambiguous]
    used = {c.key for c in cases}
    with_row = [(p, why) for p, why, key in refused if key is not None]
    why_none = []
    if with_row:
        why_none.append(len(notes))
        notes.append(f"{len(with_row)} file(s) with a row in the labels file are neither a plain image "
                     f"nor DICOM: left out: {_named([f'{show(p)} ({why})' for p, why in with_row])}")
    no_row = [(p, why) for p, why, key in refused if key is None]
    if no_row:
        notes.append(f"{len(no_row)} other file(s) are neither a plain image nor DICOM: left out: "
                     f"{_named([f'{show(p)} ({why})' for p, why in no_row])}")
    if ambiguous:
        why_none.append(len(notes))
        notes.append(f"{len(ambiguous)} row(s) of the labels file match more than one file: left out "
                     "(name the file with its extension or path): "
                     + _named([f"{by_key[k][table.key_col]!r} ({', '.join(sorted(v))})"
                               for k, v in sorted(ambiguous.items())]))
    unmatched_files = len(paths) - len(refused) - len(found) - sum(k in ambiguous for k in amb_files)
    if unmatched_files:
        notes.append(f"{unmatched_files} image(s) have no row in the labels file: left out")
    accounted = used | set(ambiguous) | {key for _, _, key in refused if key is not None}
    missing = len(set(by_key) - accounted)
    if missing and table.key_kind != "study":
        notes.append(f"{missing} row(s) of the labels file have no image in the data: left out")
    if not cases:
        raise EvaluateError(f"no image in {data} matches a row of the labels file "
                            f"(matched by {table.key_col})"
                            + "".join(f"; {notes[i]}" for i in why_none))
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


def _unit(clusters) -> str:
    """What a cluster id stands for: evaluate() writes ``patient:``, ``study:`` or ``image:``."""
    if clusters is None:  # one image per patient (evaluate() passes None then)
        return "patient"
    ids = [str(c) for c in np.asarray(clusters).tolist()]
    for unit in ("study", "image"):
        if ids and all(i.startswith(unit + ":") for i in ids):
            return unit
    return "patient"


def _too_few_clusters(metric: str, parts, clusters, cl) -> str | None:
    """The one-line note when a stratum the bootstrap resamples (the cases of one label, or
    those called positive / negative) comes from fewer than 2 clusters, else None.  Such a
    stratum is the same in every resample, so the percentile "interval" collapses to (or
    towards) the point estimate: reported as none, never as a 95% CI."""
    thin = [what for what, m in parts if np.any(m) and len(set(cl[m].tolist())) < 2]
    if not thin:
        return None
    if clusters is None:  # every case its own cluster
        return f"no interval for {metric}: " + " and ".join(f"only one {w}" for w in thin)
    return f"no interval for {metric}: " + " and ".join(f"every {w} is from one {_unit(clusters)}"
                                                       for w in thin)


def _boot(metric: str, notes: list, parts, stat, *arrays, clusters=None, cl=None, strata=None,
          n_boot=1000, seed=0):
    """The cluster-bootstrap interval of ``stat``, or None with a one-line note in ``notes``
    when too few clusters make it a point (:func:`_too_few_clusters`) or when every resample
    gave the same value (a collapsed bootstrap is not certainty)."""
    why = _too_few_clusters(metric, parts, clusters, cl)
    if why:
        notes.append(why)
        return None
    ci = _ci(stat, *arrays, clusters=clusters, strata=strata, n_boot=n_boot, seed=seed)
    if ci is not None and ci[1] - ci[0] <= 1e-12:
        notes.append(f"no interval for {metric}: every bootstrap resample gave the same value "
                     f"({len(set(cl.tolist()))} {_unit(clusters) if clusters is not None else 'case'}(s))")
        return None
    return ci


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
    by_label = [("positive case", y == 1), ("negative case", y == 0)]
    ci_notes: list[str] = []
    auc_ci = None
    if not one_class and auc in (0.0, 1.0):
        # every resample gives the same perfect ranking: [1, 1] would claim certainty
        ci_notes.append(f"no interval for AUC {auc:g}: a bootstrap cannot widen a "
                        "perfect ranking, which is not certainty")
    elif not one_class:
        auc_ci = _boot("AUC", ci_notes, by_label, E.roc_auc, y, p, clusters=clusters, cl=cl,
                       strata=strata, n_boot=n_boot, seed=seed)
    out["AUC"] = _val(auc, one_class, auc_ci)
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
                ci_notes.append(
                    f"no interval for {'sensitivity' if cls else 'specificity'}: every {name} case "
                    f"is from one {_unit(clusters)}")
    for name, ci in (("sensitivity", se_ci), ("specificity", sp_ci)):
        if ci is not None and np.all(np.isfinite(ci)) and ci[1] - ci[0] <= 1e-12:
            # a cluster bootstrap of a few patients with the same rate: a point, not an interval
            ci_notes.append(f"no interval for {name}: every bootstrap resample gave the same value")
            se_ci, sp_ci = (None, sp_ci) if name == "sensitivity" else (se_ci, None)
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
            rows = called if which == 0 else ~called
            k = len(set(cl[rows].tolist()))
            few = _too_few_clusters(name, [(f"case called {('positive', 'negative')[which]}", rows)],
                                    clusters, cl) if clusters is not None else None
            if few:  # as for sensitivity/specificity: one patient is not a sample of patients
                ci_notes.append(few)
            else:
                ci = E.wilson_ci(int(round(v * k)), k)
        elif np.isfinite(v):
            # not stratified by label: the data are a sample of a population whose prevalence
            # varies too (a label-stratified resample holds it fixed and narrows the interval)
            ci = _boot(name, ci_notes, [(f"case called {('positive', 'negative')[which]}",
                                         called if which == 0 else ~called)],
                       lambda a, b, _w=which: E.predictive_values(a, b, threshold)[_w], y, p,
                       clusters=clusters, cl=cl, strata=None, n_boot=n_boot, seed=seed + 2 + which)
        out[name] = _val(v, why, ci)
    rel = E.reliability(y, p)
    out["ECE"] = _val(rel.ece, "undefined: no cases",
                      _boot("ECE", ci_notes, by_label if strata is not None else [("case", y >= 0)],
                            lambda a, b: E.reliability(a, b).ece, y, p, clusters=clusters, cl=cl,
                            strata=strata, n_boot=n_boot, seed=seed + 4) if n else None)
    if ci_notes:
        out["ci_notes"] = ci_notes
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
    if len(sens) == 2:  # the pair is not chosen from the data: its interval holds
        pos = y == 1
        if clusters is not None:
            c = np.asarray(clusters)
            thin = [k for k in (hi, lo) if len(set(c[pos & (g == k)].tolist())) < 2]
            if thin:
                out["note"] = (f"no interval: every positive case of group {thin[0]!r} is from one "
                               f"{_unit(clusters)}")
                return out
        edge = any(sens[k] in (0.0, 1.0) for k in (hi, lo))
        ci = None
        if not edge:

            def stat(a, b, c):
                s1 = E.sens_spec(a[c == hi], b[c == hi], threshold)[0]
                s2 = E.sens_spec(a[c == lo], b[c == lo], threshold)[0]
                return s1 - s2

            strata = np.char.add(g, y.astype(str))  # keeps each group's positives in every resample
            ci = _ci(stat, y, p, g, clusters=clusters, strata=strata, n_boot=n_boot, seed=seed)
            out["ci_method"] = "percentile bootstrap"
        if ci is None or ci[1] - ci[0] <= 1e-12:
            # a sensitivity of 0 or 1 is the same in every resample, so a percentile bootstrap
            # collapses (both 1: [0, 0], certainty of equal sensitivity): Newcombe instead
            ci = _newcombe_gap(y, p, g, hi, lo, sens, threshold, clusters, n_boot, seed)
            out["ci_method"] = ("Newcombe hybrid score (the two sensitivities' intervals as in the cards, "
                                "square-and-add; groups taken as independent)")
            if ci[1] - ci[0] <= 1e-12:
                ci = None
                out["note"] = "no interval: every resample of both groups gave the same sensitivity"
        out["ci95"] = [round(ci[0], 4), round(ci[1], 4)] if ci else None
        return out
    # More groups: the highest and lowest are picked after seeing the data, so an interval of
    # their difference would exclude 0 far more often than 5% of the time when every group has
    # the same sensitivity (an audit measured 38% with 6 equal groups).  Instead, a permutation
    # test of "every group has the same sensitivity", the largest gap recomputed each time:
    # * each patient's positive images all in one group: the patients' group labels shuffled
    #   (whole patients are the exchangeable units);
    # * a patient with images in several groups (e.g. --group-by view_position, an AP and a
    #   lateral film): the group labels shuffled among each patient's own positive images (a
    #   permutation within blocks: valid under "no group effect" without assuming images of one
    #   patient independent; patients in one group only are held as they are).
    # The observed gap is always the reported one, from each image's own group.
    pos = y == 1
    keep = pos & np.isin(g, list(sens))
    cl = np.asarray(clusters)[keep] if clusters is not None else np.arange(int(keep.sum()))
    gp, pp = g[keep], p[keep] >= threshold
    units, first, unit_of = np.unique(cl, return_index=True, return_inverse=True)
    unit_of = unit_of.ravel()
    one_group = len(set(zip(unit_of.tolist(), gp.tolist()))) == len(units)

    def gap_of(groups_of_rows):
        rates = [pp[groups_of_rows == k].mean() for k in sens if (groups_of_rows == k).any()]
        return max(rates) - min(rates) if len(rates) > 1 else 0.0

    obs = gap_of(gp)
    rng = np.random.default_rng(seed)
    if one_group:
        unit_group = gp[first]

        def shuffled():
            return rng.permutation(unit_group)[unit_of]

        how = f"the positive {_unit(clusters)}s' groups shuffled"
    else:
        by_unit = np.argsort(unit_of, kind="stable")  # rows grouped by patient, in row order

        def shuffled():
            within = np.lexsort((rng.random(len(gp)), unit_of))  # grouped by patient, random order
            out_g = np.empty_like(gp)
            out_g[by_unit] = gp[within]
            return out_g

        how = (f"groups shuffled among each positive {_unit(clusters)}'s own images, as some "
               f"{_unit(clusters)}s have images in several groups")
    more = sum(gap_of(shuffled()) >= obs - 1e-12 for _ in range(n_boot))
    out["p_value_equal_sensitivity"] = round(float((1 + more) / (1 + n_boot)), 4)
    out["note"] = (f"the largest of the gaps between {len(sens)} groups, picked after seeing the data: no "
                   f"interval; p_value_equal_sensitivity is a permutation test ({how}) that every group "
                   "has the same sensitivity")
    return out


def _newcombe_gap(y, p, g, hi, lo, sens, threshold, clusters, n_boot, seed) -> tuple[float, float]:
    """95% interval of sens[hi] - sens[lo] by Newcombe's hybrid score method (Newcombe 1998,
    method 10): each sensitivity's Wilson interval combined by square-and-add.  Hand-written:
    statsmodels (``confint_proportions_2indep(method="newcomb")``) is not a dependency, and it
    takes counts only, while a group with several images per patient needs the cards' own
    interval of its sensitivity (``evaluation.sens_spec_ci``: Wilson on the images when each
    patient has one, on the patients at 0 or 1, else the cluster bootstrap), combined by the same
    square-and-add rule (the MOVER of Zou & Donner 2008, of which Newcombe's is the Wilson case)."""
    iv = {}
    for k in (hi, lo):
        m = (g == k) & (y == 1)
        c = None if clusters is None else np.asarray(clusters)[m]
        iv[k] = E.sens_spec_ci(y[m], p[m], threshold, clusters=c, seed=seed, n_boot=n_boot)[0]
    p1, p2 = sens[hi], sens[lo]
    (l1, u1), (l2, u2) = iv[hi], iv[lo]
    d = p1 - p2
    return (float(d - math.sqrt(max(0.0, p1 - l1) ** 2 + max(0.0, u2 - p2) ** 2)),
            float(d + math.sqrt(max(0.0, u1 - p1) ** 2 + max(0.0, p2 - l2) ** 2)))


def segmentation_metrics(dice_values, hd_values, clusters=None, n_boot=1000, seed=0,
                         hd_unit="mm") -> dict:
    """Mean Dice and mean HD95 over cases, each with a cluster-bootstrap 95% interval (none,
    with a note in ``ci_notes``, when the cases come from one patient).  HD95 is undefined for a
    case with an empty predicted or reference mask: such cases are left out of the mean HD95
    (Dice counts them), ``n_empty`` says how many and the HD95 entry carries a note."""
    d = np.asarray(dice_values, np.float64)
    h = np.asarray(hd_values, np.float64)
    n = len(d)
    out = {"n": n, "too_small": n < MIN_GROUP}
    cl = np.asarray(clusters) if clusters is not None else np.arange(n)
    notes: list[str] = []
    mean = lambda a: float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")  # noqa: E731
    out["Dice"] = _val(mean(d), "undefined: no cases",
                       _boot("Dice", notes, [("case", np.ones(n, bool))], mean, d, clusters=clusters,
                             cl=cl, n_boot=n_boot, seed=seed) if n else None)
    fin = np.isfinite(h)
    key = f"HD95_{hd_unit}"
    out[key] = _val(mean(h), "undefined: empty masks",
                    _boot("HD95", notes, [("case with a defined HD95", fin)], mean, h, clusters=clusters,
                          cl=cl, n_boot=n_boot, seed=seed + 1) if fin.any() else None)
    out["n_empty"] = int((~fin).sum())
    if out["n_empty"] and fin.any():
        out[key]["note"] = (f"mean of {int(fin.sum())} of {n} cases: {out['n_empty']} with an empty "
                            "predicted or reference mask left out (HD95 undefined; Dice counts them)")
    if notes:
        out["ci_notes"] = notes
    return out


# =========================================================================== running
def _predict(model, cases: list[Case], progress=None) -> None:
    """Run the app's pipeline on every case (images read ahead on a thread, at most
    :data:`READ_AHEAD` decoded images waiting for the model at a time)."""
    from collections import deque
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
    # Bounded look-ahead: Executor.map would submit every case at once, and with a model slower
    # than decoding every decoded image would pile up in memory ahead of it.
    with ThreadPoolExecutor(max_workers=2) as pool, paused():
        todo = iter(cases)
        ahead: deque = deque()
        for c in todo:
            ahead.append(pool.submit(load, c))
            if len(ahead) >= READ_AHEAD:
                break
        for i, c in enumerate(cases):
            vol, err = ahead.popleft().result()
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
            vol = None  # scored: its volume is let go before the next one is decoded
            nxt = next(todo, None)
            if nxt is not None:
                ahead.append(pool.submit(load, nxt))
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
    one = {"patients": "patient", "studies": "study", "images": "image"}[kind]
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
                      f"AUC of 0 or 1); sensitivity/specificity as in the cards (Wilson when each {one} "
                      f"has one image); no interval, said in ci_notes, where a label's cases (or those "
                      f"called positive or negative) come from one {one} or every resample gives the same "
                      "value") if clustered else
                     (f"percentile bootstrap, {n_boot:,} resamples of images (one image per "
                      f"{one}); sensitivity/specificity: Wilson score interval; no interval, said in "
                      "ci_notes, where a label has one case or every resample gives the same value"),
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
