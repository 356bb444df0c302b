"""Fine-tune a classifier on a site's reader-confirmed cases -> a candidate version (2D segmenters:
:mod:`.finetune_seg`, dispatched from :func:`finetune`).

One code path with the training scripts: the inputs, the training loop, augmentation,
temperature scaling and the grouped split are :mod:`imaging_assist.training`'s functions, the
same ones ``scripts/train_*.py`` call through ``scripts/_training.py`` (``preprocess_all``
through the engine's ``model_input``, ``fit``, ``random_affine`` / ``random_intensity``,
``fit_temperature`` / ``fold_temperature``, ``grouped_split``); the candidate folder is written by the engine's
``models.build.save_model_folder`` like a shipped model.

Steps: local cases (``--data DIR --labels CSV`` and/or the log's reader-confirmed labels,
matched to files in DIR by their keyed pseudonym) -> patient-disjoint split 60/20/20 (train /
validation for the epoch and the temperature / local hold-out) -> fine-tune from the current
weights (default: every layer, max learning rate 2e-3, one-cycle; ``train="head"``: the
classification head only, backbone frozen including its batch-norm statistics, which could
not undo an inverted-film shift in tests/test_monitor_finetune.py's set: hold-out AUC 0.63 ->
0.62), optionally with a replay sample of the model's own validation images so the
original task is not forgotten -> metrics with 95% cluster-bootstrap intervals by patient of
the base and the candidate on the local hold-out and on the model's original test split, and
the paired AUC difference (non-inferiority, margin stated) -> OOD statistics refitted on the
candidate's features (Mahalanobis, same layers; conformal threshold) -> candidate folder with
its own card (``X+site.N``), ``metrics.json``, ``holdout.csv`` -> registered as a candidate.
"""

from __future__ import annotations

import copy
import csv
import json
import re
from pathlib import Path

import numpy as np

from ..errors import UserError

# Where each shipped classifier's training data live under the shared data folder (the
# training scripts' DATA); predictions.csv files are relative to it.
DATASETS = {"cxr-pneumonia": "cxr/pneumonia_kermany", "us-breast": "ultrasound/breast_busi",
            "path-lung-tissue": "pathology/lc25000_lung_subset"}


def training_module():
    """The one training code path: :mod:`imaging_assist.training` (what the training scripts
    import through ``scripts/_training.py``)."""
    from .. import training

    return training


# --------------------------------------------------------------------------- local cases
def cases_from_csv(data: Path, labels_csv: Path, labels: list[str]) -> list[dict]:
    if not Path(labels_csv).is_file():
        raise UserError(f"labels CSV {labels_csv} not found")
    out = []
    with open(labels_csv, newline="", encoding="utf-8") as f:
        r = csv.DictReader(f)
        if not r.fieldnames or "file" not in r.fieldnames or "label" not in r.fieldnames:
            raise UserError(f"{labels_csv} needs the columns file and label (and patient_id)")
        for i, row in enumerate(r, start=2):
            lab = (row.get("label") or "").strip().lower()
            if lab not in labels:
                raise UserError(f"{labels_csv} line {i}: label {row.get('label')!r} is not one of {', '.join(labels)}")
            p = Path(data) / row["file"]
            if not p.is_file():
                raise UserError(f"{labels_csv} line {i}: {p} not found")
            out.append({"path": p, "label": lab, **csv_patient(row)})
    return out


def csv_patient(row: dict) -> dict:
    """A CSV case's patient: its ``patient_id`` column, else the file (its own patient until
    :func:`gather_cases` finds its DICOM Patient ID)."""
    pid = (row.get("patient_id") or "").strip()
    return {"patient": pid or f"file:{row['file']}", "patient_id": pid}


def cases_from_feedback(model_id: str, data: Path, labels: list[str], log=None) -> list[dict]:
    """Reader-confirmed labels of logged runs, matched to the files of ``data`` by the keyed
    pseudonym the log stores (the log holds no paths or pixels).  One film analysed several
    times has several runs: the NEWEST verdict on any of them (by time, then feedback id) is the
    label; when that newest verdict is 'unsure' or names no label, the film is not used (a
    reader who has since doubted an earlier label is not overruled by it).  An agreement with a
    negative decision among three or more labels names no label (the film is one of the other
    two): such films are counted and said through ``log``."""
    from .log import open_log

    rows = open_log().query(
        "SELECT r.input_key, r.patient_key, f.correct_label, f.verdict FROM feedback f "
        "CROSS JOIN runs r ON r.id = f.run_id WHERE r.model_id = ? AND r.input_key IS NOT NULL "
        "ORDER BY f.time_unix, f.id", (model_id,))
    newest: dict = {}
    for key, pkey, lab, verdict in rows:  # ascending: the last one per input is the newest
        newest[key] = (pkey, lab, verdict)
    want = {k: (v[0], v[1]) for k, v in newest.items() if k and v[2] != "unsure" and v[1] is not None}
    no_label = {k for k, v in newest.items() if k and v[2] != "unsure" and v[1] is None}
    out = []
    n_no_label = 0
    for k, ps in files_by_key(data, set(want) | no_label).items():
        if k in no_label:
            n_no_label += len(ps)
        elif want[k][1] in labels:
            out += [{"path": p, "label": want[k][1], "patient": want[k][0] or k} for p in ps]
    if n_no_label and log is not None:
        log(f"{n_no_label} reader-confirmed files left out: their newest verdict names no class label "
            f"(an agreement with a negative decision among {len(labels)} labels leaves more than one)")
    return out


def files_by_key(data: Path, keys: set) -> dict:
    """{keyed pseudonym: [files]} for the files of ``data`` whose pseudonym (of the resolved path,
    else of the DICOM series UID, as the log computes it) is one of ``keys`` (a DICOM series'
    files share one key)."""
    from ..privacy.sitekey import pseudonym

    out: dict = {}
    if not keys:
        return out
    for p in sorted(Path(data).rglob("*")):
        if not p.is_file():
            continue
        k = pseudonym(str(p.resolve()), "file")
        if k not in keys:
            uid = _series_uid(p)
            k = pseudonym(uid, "uid") if uid else None
        if k in keys:
            out.setdefault(k, []).append(p)
    return out


def _series_uid(p: Path) -> str | None:
    try:
        import pydicom

        ds = pydicom.dcmread(str(p), stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        return str(ds.get("SeriesInstanceUID", "") or "") or None
    except Exception:  # noqa: BLE001 - not DICOM
        return None


# --------------------------------------------------------------------------- network parts
def _head(net):
    import torch

    lin = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    if not lin:
        raise UserError("this network has no linear classification head to fine-tune")
    return lin[-1]


def _head_only(net):
    """A wrapper whose backbone stays frozen and in eval mode (batch-norm statistics too)
    while ``fit`` switches the model to training mode."""
    import torch

    head = _head(net)
    for p in net.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)

    class HeadOnly(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def train(self, mode: bool = True):
            super().train(mode)
            self.inner.eval()
            head.train(mode)
            return self

        def forward(self, x):
            return self.inner(x)

    return HeadOnly(net)


def _probs(T, net, x, pos: int):
    """The positive class's probability in float64 (softmax of float64 logits), so that no
    comparison ranks by float32 probabilities saturated to exactly 0 / 1 (ties)."""
    import torch

    return torch.softmax(T.predict(net, x, torch.device("cpu")).double(), 1)[:, pos].numpy()


def _compare(y, p_base, p_cand, groups, thr, what: str, classes: tuple = ("negative", "positive")) -> dict:
    from .. import evaluation as E
    from .drift import fast_auc

    def one(p):
        auc = E.roc_auc(y, p)
        ci = E.bootstrap_ci(fast_auc, y, p, clusters=groups, strata=y, seed=1)
        se, sp = E.sens_spec(y, p, thr)
        se_ci, sp_ci, how = E.sens_spec_ci(y, p, thr, clusters=groups, seed=2)
        return {"auc": round(auc, 4), "auc_ci95": [round(ci[0], 4), round(ci[1], 4)],
                "sensitivity": round(se, 4), "sensitivity_ci95": [round(v, 4) for v in se_ci],
                "specificity": round(sp, 4), "specificity_ci95": [round(v, 4) for v in sp_ci],
                "sens_spec_ci": how}

    d = E.roc_auc(y, p_cand) - E.roc_auc(y, p_base)
    dci = E.bootstrap_ci(lambda yy, a, b: fast_auc(yy, a) - fast_auc(yy, b), y, p_cand, p_base,
                         clusters=groups, strata=y, seed=3)
    y, groups = np.asarray(y), np.asarray(groups, dtype=object)
    per_class = {classes[k]: int(len(set(groups[y == k].tolist()))) for k in (0, 1)}  # versions.too_few_patients
    return {"data": what, "n": int(len(y)), "patients": int(len(set(groups.tolist()))),
            "patients_per_class": per_class, "threshold": thr,
            "base": one(p_base), "candidate": one(p_cand), "diff": round(d, 4),
            "diff_ci95": [round(dci[0], 4), round(dci[1], 4)],
            "ci_method": "percentile cluster bootstrap by patient, stratified by label, 2,000 resamples "
                         "(paired: the same resample for both models)"}


def refit_ood(net, card, fit_x, fit_y, val_x, out: Path, fitted_on: str) -> dict | None:
    """OOD statistics of the candidate's own features (the card's method and layers), fitted on
    ``fit_x`` (``fit_y``: classes, None for segmenters), conformal threshold on ``val_x``;
    written to ``out``; the card's ``ood`` block (None when the card has no OOD layers)."""
    from safetensors.torch import save_file

    from ..models.loaders import sha256_file
    from ..validation import ood as O

    spec = O.ood_spec(card) or {}
    if not spec.get("layers"):
        return None
    stats = O.fit_mahalanobis(O.extract_features(net, fit_x, spec["layers"]), fit_y)
    vs = O.score(stats, O.extract_features(net, val_x, spec["layers"]), "mahalanobis")
    othr, oinfo = O.conformal_threshold(vs)
    f = Path(out) / O.STATS_FILE
    save_file({k: v.contiguous() for k, v in stats.items()}, str(f),
              metadata={"method": "mahalanobis", "layers": json.dumps(spec["layers"])})
    return {"method": "mahalanobis", "layers": spec["layers"], "file": O.STATS_FILE, "sha256": sha256_file(f),
            "threshold": round(othr, 6), "threshold_rule": O.threshold_rule_text(oinfo), "threshold_info": oinfo,
            "features": spec.get("features", "per channel spatial mean and standard deviation of each layer's activations"),
            "fitted_on": f"{fitted_on}, candidate weights, engine preprocessing; AUROCs against other modalities "
                         "NOT re-measured for this candidate"}


def gather_cases(data, labels_csv, from_feedback: bool, from_csv, from_log, what: str, log) -> list[dict]:
    """Local cases of a fine-tune: ``from_csv(data, csv)`` and/or ``from_log(data)`` (the log's
    reader feedback), a file given twice counted once (the CSV wins)."""
    cases = []
    if labels_csv is not None:
        if data is None:
            raise UserError("--labels needs --data (the folder the CSV's files are relative to)")
        cases += from_csv(Path(data), Path(labels_csv))
    if from_feedback:
        if data is None:
            raise UserError("--from-feedback needs --data: the log keeps no paths, the images are found "
                            "in DIR by their keyed pseudonym")
        fb = from_log(Path(data))
        log(f"{len(fb)} {what} found in {data}")
        cases += fb
    if not cases:
        raise UserError("no local cases: give --data DIR --labels CSV and/or --from-feedback")
    seen, uniq = set(), []
    for c in cases:
        k = str(Path(c["path"]).resolve())
        if k not in seen:
            seen.add(k)
            uniq.append(c)
    keys = [case_keys(c) for c in uniq]
    for c, k, name in zip(uniq, keys, patient_groups(uniq, Path(data), keys)):
        c["patient"], c["patient_keys"] = name, k
    return uniq


def drop_test_split(cases: list[dict], test_files: list, log=print) -> tuple[list[dict], int]:
    """``cases`` without the images of the model's own test split (the same resolved path, or
    the same bytes under another name): the candidate is measured on that split, so training
    on it would make the "original test" comparison meaningless.  (kept cases, number left
    out); said through ``log``; a one-line UserError when nothing is left."""
    import hashlib

    def sha(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    paths, by_size = set(), {}
    for f in map(Path, test_files):
        try:
            paths.add(str(f.resolve()))
            by_size.setdefault(f.stat().st_size, []).append(f)
        except OSError:  # a test row whose file is not there cannot be among the cases
            continue
    hashes: dict = {}  # size -> sha256 of the test files of that size (only sizes a case has)
    keep = []
    for c in cases:
        p = Path(c["path"])
        if str(p.resolve()) not in paths:
            size = p.stat().st_size
            if size not in by_size:
                keep.append(c)
                continue
            if size not in hashes:
                hashes[size] = {sha(f) for f in by_size[size]}
            if sha(p) not in hashes[size]:
                keep.append(c)
    n = len(cases) - len(keep)
    if n and not keep:
        raise UserError(f"all {n} local cases are images of the model's original test split (same file or same "
                        "content): nothing is left to fine-tune on")
    if n:
        log(f"{n} local cases left out: images of the model's original test split (same file or same content), "
            "on which the candidate is measured")
    return keep, n


def patient_groups(cases: list[dict], data: Path, keys: list | None = None) -> list[str]:
    """One patient name per case, shared by every case of one patient however it came in, and
    the same with any site key (so the split is).

    A case has every patient key it can be known by (:func:`case_keys`: its CSV ``patient_id``,
    its DICOM Patient ID, its series, the patient pseudonym the log stored for a feedback case),
    each as the keyed pseudonym the log computes; cases sharing ANY key are one patient (union
    of the keys), so a labels-CSV id (a site MRN...) and the header's Patient ID of the same film
    join, and a patient given in the CSV and met again in the feedback is one patient.  The group
    is named by what does not depend on the key: its smallest CSV patient id, else its first file
    (relative to ``data``).  Before, a case had one key only (a CSV id replaced the header's), so
    one patient's films could land in both parts of the split.  ``keys``: :func:`case_keys` of
    each case when already computed."""
    keys = [case_keys(c) for c in cases] if keys is None else keys
    parent = list(range(len(cases)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict = {}
    for i, ks in enumerate(keys):
        for k in ks:
            j = owner.setdefault(k, i)
            ri, rj = root(i), root(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    names: dict = {}
    for i, c in enumerate(cases):
        try:
            rel = Path(c["path"]).resolve().relative_to(Path(data).resolve()).as_posix()
        except ValueError:
            rel = str(Path(c["path"]).resolve())
        name = (0, c["patient_id"]) if c.get("patient_id") else (1, f"file:{rel}")
        r = root(i)
        names[r] = min(names.get(r, name), name)
    return [names[root(i)][1] for i in range(len(cases))]


def case_keys(c: dict) -> set[str]:
    """Every keyed patient pseudonym case ``c`` can be known by: its CSV ``patient_id``, the
    patient key the log stored (a feedback case), its DICOM Patient ID and series UID, and
    (a plain image, its own patient) its file, each computed as ``monitoring.log._pseudonyms``
    computes it."""
    from ..privacy.sitekey import pseudonym

    p = Path(c["path"])
    keys = {pseudonym(str(p.resolve()), "file")}
    if "patient_id" not in c:  # from the log: its patient pseudonym
        keys.add(c["patient"])
    elif c["patient_id"]:
        keys.add(pseudonym(c["patient_id"], "patient-id"))
    pid, uid = _dicom_ids(p)
    if pid:
        keys.add(pseudonym(pid, "patient-id"))
    if uid:
        keys.add(pseudonym(uid, "uid"))
    return keys


def _dicom_ids(p: Path) -> tuple[str, str]:
    """(Patient ID, series UID) of a DICOM file ("" each when not DICOM or absent)."""
    try:
        import pydicom

        with open(p, "rb") as fh:
            head = fh.read(132)
        # a DICOM file without its preamble (a raw data set, as the viewer's scanner reads it with
        # force=True) starts with a group 0008 (or 0002) element; anything else is not forced
        force = head[128:132] != b"DICM" and head[:2] in (b"\x08\x00", b"\x02\x00")
        ds = pydicom.dcmread(str(p), stop_before_pixels=True, specific_tags=["PatientID", "SeriesInstanceUID"],
                             force=force)
        return (str(ds.get("PatientID", "") or "").strip(), str(ds.get("SeriesInstanceUID", "") or "").strip())
    except Exception:  # noqa: BLE001 - not DICOM
        return "", ""


def drop_test_patients(cases: list[dict], patients: list, log=print) -> tuple[list[bool], int, int]:
    """Which rows of the model's original test split to keep: a row whose patient (its
    ``predictions.csv`` patient, compared as the training script compares persons: the same id)
    is a patient of the local cases (:func:`case_keys`) is dropped, so the "original test"
    comparison is not measured on patients the candidate was fine-tuned on.  (keep mask, rows
    dropped, patients dropped); said through ``log``."""
    from ..privacy.sitekey import pseudonym

    local = set()
    for c in cases:
        local |= c.get("patient_keys") or case_keys(c)
    keep, hit = [], set()
    for q in patients:
        q = str(q or "").strip()
        seen = bool(q) and pseudonym(q, "patient-id") in local
        keep.append(not seen)
        if seen:
            hit.add(q)
    n = len(keep) - sum(keep)
    if n:
        log(f"{n} images of the model's original test split left out of the original-test comparison: their "
            f"{len(hit)} patients are also patients of the local cases")
    return keep, n, len(hit)


# a limitation that quotes figures measured on the model (a metric, a percentage, test results)
_MEASURED = re.compile(r"\b(AUC|sensitivity|specificity|Dice|HD95|accuracy|PPV|NPV|test)\b|\d\s*%", re.I)
BASE_MEASURED = "Measured on the base model"


def inherited_limitations(card) -> list[str]:
    """The base card's limitations for a fine-tuned version: those quoting figures measured on
    the base model (AUC, sensitivity, a percentage, test results...) are marked as the base's,
    since none was re-measured on the candidate (its own figures are its ``metrics``)."""
    from ..models.card import card_limitations

    out = []
    for t in card_limitations(card):
        if not t.startswith(BASE_MEASURED) and re.search(r"\d", t) and _MEASURED.search(t):
            t = f"{BASE_MEASURED} {card.id} {card.version} (not re-measured on this version): {t}"
        out.append(t)
    return out


def _stamp_ood_weights(out: Path, raw: dict) -> dict:
    """Record the candidate's weights sha256 in its OOD statistics (fitted by :func:`refit_ood`
    before the weights were written) and the statistics' new sha256 in the written card; the
    card as written.  Without it a candidate's statistics could not be told from another
    model's (``models verify``: "made without a weights hash")."""
    from safetensors.torch import load as st_load, save as st_save

    from ..models.card import CARD_FILE
    from ..models.loaders import sha256_file
    from ..validation import ood as O

    card = json.loads((out / CARD_FILE).read_text(encoding="utf-8"))
    f = out / card["ood"]["file"]
    data = f.read_bytes()
    meta = {**O._metadata(data), O.WEIGHTS_KEY: card["weights"][0]["sha256"]}
    f.write_bytes(st_save(st_load(data), metadata=meta))
    card["ood"]["sha256"] = sha256_file(f)
    (out / CARD_FILE).write_text(json.dumps(card, indent=2), encoding="utf-8")
    return card


def finish_candidate(card, out: Path, card_update: dict, net, comps: dict, ni: dict, ood_block: dict | None,
                     n_cases: int, holdout_header: list[str], holdout_rows: list[list], extra: dict | None = None,
                     drop: tuple = (), reference_images: list | None = None, reference_labels: list | None = None,
                     reference_text: str = "", log=print) -> dict:
    """Write the candidate folder (its card: the base card + ``card_update`` with its own version,
    weights, ``holdout.csv``, ``metrics.json`` with the non-inferiority verdict, and the drift
    monitor's ``monitor_reference.json`` fitted like the shipped ones, :func:`.reference.fit`,
    on ``reference_images`` through the candidate) and register it; the fine-tune's result."""
    from ..models.build import save_model_folder
    from ..safe_text import csv_cell
    from . import versions

    version = versions.next_version(card.id, card.version)
    raw = copy.deepcopy(card.raw)
    for k in ("format", "weights", "ood", "files", *drop):
        raw.pop(k, None)
    # the base's operating thresholds are kept, but their sensitivity/specificity were measured on
    # the base model, never on this version: the values only, said to be inherited
    th = raw.get("thresholds")
    if isinstance(th, dict):
        raw["thresholds"] = {lab: {"threshold": t.get("threshold") if isinstance(t, dict) else t,
                                   "data": f"inherited from {card.id} {card.version}; not re-measured on this version"}
                             for lab, t in th.items()}
    data_update = card_update.get("data")
    if isinstance(data_update, dict) and isinstance(data_update.get("fine_tuning"), str):
        # every fine-tune of the line, oldest first (a fine-tune of a promoted version keeps the earlier ones)
        base_data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
        hist = base_data.get("fine_tuning_history")
        if not isinstance(hist, list):
            hist = [{"version": card.version, "description": base_data["fine_tuning"]}] \
                if isinstance(base_data.get("fine_tuning"), str) else []
        card_update = {**card_update, "data": {**data_update, "fine_tuning_history": list(hist) + [
            {"version": version, "base_version": card.version, "description": data_update["fine_tuning"]}]}}
    raw.update({"version": version, "name": f"{card.name} — site fine-tune {version}", **card_update,
                "files": {"metrics": "metrics.json", "training_log": "training_log.csv", "holdout": "holdout.csv"},
                "not_for_clinical_use": True})
    if ood_block:
        raw["ood"] = ood_block
    save_model_folder(out, raw, net)
    if ood_block:  # the statistics name the weights they were fitted through (validation.ood.WEIGHTS_KEY)
        raw = _stamp_ood_weights(out, raw)
        ood_block = raw["ood"]
    with (out / "holdout.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(holdout_header)
        # the patient ids come from the site's labels CSV: no cell a spreadsheet takes for a formula
        w.writerows([csv_cell(c) for c in r] for r in holdout_rows)
    # the patient counts: versions.non_inferiority gives no verdict on too few (MIN_PATIENTS_PER_CLASS)
    ni = {**ni, "comparisons": {k: {"diff": v["diff"], "diff_ci95": v["diff_ci95"],
                                    **{c: v[c] for c in ("patients", "patients_per_class") if c in v}}
                                for k, v in comps.items()}}
    res = {"model_id": card.id, "version": raw["version"], "base_version": card.version,
           "folder": str(out.resolve()), **(extra or {}), "comparisons": comps, "non_inferiority": ni,
           "training": raw["training"],
           "ood": {k: ood_block[k] for k in ("threshold", "threshold_rule", "fitted_on")} if ood_block else None,
           "not_for_clinical_use": True}
    ok, why = versions.non_inferiority(res)
    res["non_inferiority"]["passes"] = ok
    res["non_inferiority"]["reasons"] = why
    res["monitor_reference"] = write_candidate_reference(out, reference_images, reference_labels, reference_text, log)
    (out / "metrics.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    metric = ni["metric"].lower()
    # renumbered when another fine-tune of this model registered the same version meanwhile
    res["version"] = versions.register_candidate(
        card.id, raw["version"], out, card.version,
        {"folder_path": str(out.resolve()), "n_cases": n_cases, "non_inferior": ok,
         **{f"{k}_{metric}_diff": v["diff"] for k, v in comps.items()}})
    return res


def original_predictions_csv(card) -> tuple[Path | None, str | None]:
    """The model's own split list (``predictions.csv`` of the training scripts): the card's
    folder's, else (a fine-tuned version, which has none) the shipped model's, from the
    registry's sources other than the promoted one.  (path, None), or (None, why not)."""
    from ..models.registry import Registry

    own = Path(card.folder) / "predictions.csv" if card.folder is not None else None
    if own is not None and own.is_file():
        return own, None
    try:
        reg = Registry()
        shipped = Registry([s for s in reg.sources() if s[1] != "promoted"]).get(card.id).card
    except Exception as e:  # noqa: BLE001 - said in the message
        return None, (f"{card.id} {card.version} has no predictions.csv and the shipped model cannot be found "
                      f"({' '.join(str(e).split())[:160]})")
    f = Path(shipped.folder) / "predictions.csv" if shipped.folder is not None else None
    if f is None or not f.is_file():
        return None, f"the shipped model's split list {f} was not found (it names the original split)"
    return f, None


def write_candidate_reference(out: Path, images: list | None, labels: list | None, text: str, log) -> dict:
    """The candidate's own drift reference (``monitor_reference.json``), fitted the way the
    shipped references are (:func:`.reference.fit`: ``run_model`` + ``log.row_from_result``, not
    logged) on ``images`` (the local parts the candidate was not trained on).  A failure does
    not lose the candidate: it is said, and the monitor then compares with the base version's
    reference (and says so)."""
    from ..models.loaders import load_model
    from ..models.registry import read_card
    from . import reference as R

    if not images:
        log("no monitor reference written for the candidate (no local images outside its training part): "
            "the monitor will compare its runs with the base version's reference and say so")
        return {"written": False, "reason": "no local images outside the training part"}
    try:
        model = load_model(read_card(Path(out)))
        ref = R.fit(model, [Path(p) for p in images], text, labels)
        (Path(out) / R.REFERENCE_FILE).write_text(json.dumps(ref, indent=1) + "\n", encoding="utf-8")
    except Exception as e:  # noqa: BLE001 - the candidate is kept; the monitor falls back (and says so)
        why = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        log(f"no monitor reference written for the candidate ({why}): the monitor will compare its runs with "
            "the base version's reference and say so")
        return {"written": False, "reason": why}
    small = ref["n"] < 30
    log(f"monitor reference of the candidate: {ref['n']} images ({text})"
        + ("; fewer than 30: its distributions are rough" if small else ""))
    return {"written": True, "file": R.REFERENCE_FILE, "n": ref["n"], "data": text}


# --------------------------------------------------------------------------- the run
def check_out_folder(out: Path) -> None:
    """A one-line UserError when ``out`` lies in a folder the registry reads models from (the
    user's models folder, the project's weights, the folders of ``models add``): a candidate
    there would be run without being promoted (the user folder comes before the shipped one),
    and ``models rollback`` could not take it away."""
    from ..models.registry import Registry
    from ..userdirs import data_dir

    o = Path(out).expanduser().resolve()
    for folder, kind in Registry().sources():
        if kind == "promoted":
            continue
        try:
            f = Path(folder).expanduser().resolve()
        except (OSError, RuntimeError):
            continue
        if o == f or f in o.parents:
            raise UserError(f"--out {out} is inside {f}, a folder the model registry reads ({kind} models): a "
                            f"candidate there would run without being promoted; give a folder outside it, e.g. "
                            f"under {data_dir()}")


def finetune(model_id: str, out: Path, data: Path | None = None, labels_csv: Path | None = None,
             from_feedback: bool = False, epochs: int = 6, train: str = "all", replay: int = 200,
             original_test_max: int | None = None, original_data: Path | None = None, lr: float | None = None,
             batch_size: int | None = None, seed: int = 0, margin: float | None = None, log=print) -> dict:
    import torch
    import torch.nn.functional as F

    from .. import evaluation as E
    from ..models.loaders import load_model
    from ..models.registry import Registry
    from . import versions

    T = training_module()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder: give a new folder for the candidate")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty: give a new folder for the candidate")
    check_out_folder(out)
    entry = Registry().get(model_id)
    card = entry.card
    if card.task == "segmentation" and not card.is_bundle and card.spatial_dims == 2:
        from .finetune_seg import finetune_segmenter

        if train == "head":
            raise UserError("--train head is for classifiers: a segmenter is fine-tuned in every layer")

        return finetune_segmenter(card, out, data=data, labels_csv=labels_csv, from_feedback=from_feedback,
                                  epochs=epochs, replay=replay, original_test_max=original_test_max,
                                  original_data=original_data, lr=lr, batch_size=batch_size or 8, seed=seed,
                                  margin=margin, log=log)
    if card.task != "classification" or card.is_bundle:
        raise UserError(f"finetune handles the project's 2D classifiers and 2D segmenters; {model_id} is a "
                        f"{card.spatial_dims}D {card.task}{' bundle' if card.is_bundle else ''}")
    margin = versions.margin_for("AUC") if margin is None else float(margin)
    batch_size = batch_size or 32
    labels = [lab.lower() for lab in card.labels]
    pos_label = next(iter(card.thresholds), None) or labels[-1]
    pos = labels.index(pos_label)
    thr = float(card.thresholds[pos_label].threshold) if pos_label in card.thresholds else 0.5

    cases = gather_cases(data, labels_csv, from_feedback,
                         lambda d, f: cases_from_csv(d, f, labels),
                         lambda d: cases_from_feedback(card.id, d, labels, log), "reader-confirmed cases", log)
    # the model's own data (replay: validation rows; the original test split), read first: the
    # local cases must not hold the test images the candidate is measured on
    odata = Path(original_data) if original_data else (T.data_root() / DATASETS.get(card.id, "")) if card.id in DATASETS else None
    pred_csv, why_not = original_predictions_csv(card)
    rows = None
    if pred_csv is not None and odata is not None and odata.is_dir():
        rows = list(csv.DictReader(pred_csv.open()))
    cases, n_test_overlap = drop_test_split(cases, [odata / r["file"] for r in rows or [] if r.get("split") == "test"],
                                            log)
    y = np.array([labels.index(c["label"]) for c in cases])
    groups = np.array([str(c["patient"]) for c in cases], dtype=object)
    split = T.grouped_split(groups, y, (0.6, 0.2, 0.2), seed=seed)
    for k, name in ((0, "training"), (1, "validation"), (2, "hold-out")):
        ys = set(y[split == k].tolist())
        if len(ys) < 2:
            raise UserError(f"too few local cases: the patient-disjoint {name} part has "
                            f"{int((split == k).sum())} images and not every label ({len(cases)} cases, "
                            f"{len(set(groups.tolist()))} patients)")
    for k in range(3):
        assert not (set(groups[split == k]) & set(groups[split != k])), "patient in two parts"
    log(f"local cases: {len(cases)} ({len(set(groups.tolist()))} patients): train {int((split == 0).sum())}, "
        f"validation {int((split == 1).sum())}, hold-out {int((split == 2).sum())}")

    paths = [Path(c["path"]) for c in cases]
    x = T.preprocess_all(card, paths, f"finetune_{card.id}")
    yt = torch.from_numpy(y)

    # the model's own data: replay (validation rows) and the original test split
    rep_x = rep_y = None
    orig = None
    n_test_patients = n_test_patient_ids = 0
    if pred_csv is None:
        log(f"{why_not}: no replay and no original-test comparison")
    elif rows is None:
        log(f"original data not found ({odata}): no replay and no original-test comparison")
    else:
        rng = np.random.default_rng(seed)
        val = [r for r in rows if r.get("split") == "validation" and (r.get("label") or "").lower() in labels]
        test = [r for r in rows if r.get("split") == "test" and (r.get("label") or "").lower() in labels]
        if replay and val:
            pick = sorted(rng.choice(len(val), min(replay, len(val)), replace=False).tolist())
            rep_x = T.preprocess_all(card, [odata / val[i]["file"] for i in pick], f"replay_{card.id}")
            rep_y = torch.tensor([labels.index(val[i]["label"].lower()) for i in pick])
        keep, n_test_patients, n_test_patient_ids = drop_test_patients(
            cases, [r.get("patient") or r.get("group") or "" for r in test], log)
        test = [r for r, k in zip(test, keep) if k]
        if test:
            if original_test_max and len(test) > original_test_max:
                test = [test[i] for i in sorted(rng.choice(len(test), original_test_max, replace=False).tolist())]
            orig = {"x": T.preprocess_all(card, [odata / r["file"] for r in test], f"origtest_{card.id}"),
                    "y": np.array([labels.index(r["label"].lower()) for r in test]),
                    "g": np.array([r.get("patient") or r.get("group") or r["file"] for r in test], dtype=object)}

    base = load_model(card).network.eval()
    net = copy.deepcopy(base)
    itr, iva, iho = (np.nonzero(split == k)[0] for k in range(3))
    x_tr, y_tr = x[itr], yt[itr]
    if rep_x is not None:
        x_tr, y_tr = torch.cat([x_tr, rep_x]), torch.cat([y_tr, rep_y])
    if train != "head":
        for p in net.parameters():  # the loaded network is frozen for inference
            p.requires_grad_(True)
    model = _head_only(net) if train == "head" else net
    lr = lr if lr is not None else (1e-2 if train == "head" else 2e-3)

    def augment(xb, yb, g):
        xb = T.random_affine(xb, g, rot_deg=10, scale=(0.9, 1.12), shift=0.06)
        return T.random_intensity(xb, g, contrast=0.2, brightness=0.2), yb

    def evaluate(n):
        lo = T.predict(n, x[iva], torch.device("cpu"))
        p = torch.softmax(lo.double(), 1)[:, pos].numpy()
        loss = float(F.cross_entropy(lo, yt[iva]))
        auc = E.roc_auc((y[iva] == pos).astype(int), p)
        return {"val_loss": loss, "val_auc": auc, "score": auc - 0.01 * loss}

    out.mkdir(parents=True, exist_ok=True)
    tlog = T.Log(out / "training_log.csv")
    T.set_seed(seed)
    info = T.fit(model, x_tr, y_tr, loss_fn=F.cross_entropy, augment=augment, evaluate=evaluate, epochs=epochs,
                 batch_size=batch_size, lr=lr, weight_decay=1e-4, device=torch.device("cpu"), log=tlog, seed=seed)
    net.eval()
    tinfo: dict = {}
    temp = T.fit_temperature(T.predict(net, x[iva], torch.device("cpu")), yt[iva], info=tinfo)
    T.fold_temperature(_head(net), temp)
    t_note = None
    if tinfo.get("clamped"):
        t_note = (f"temperature clamped to {temp:g} (the validation part's optimum {tinfo['fitted']:.4g} is outside "
                  f"{tinfo['bounds'][0]:g}-{tinfo['bounds'][1]:g}: too few or perfectly separated validation images; "
                  "the probabilities are less well calibrated than a fit on more cases would give)")
    log(f"trained {info['epochs_run']} epochs (best {info['best_epoch']}), temperature {temp:.3f}"
        + (f"; {t_note}" if t_note else ""))

    yb = (y == pos).astype(int)
    classes = (labels[1 - pos] if len(labels) == 2 else f"not {pos_label}", pos_label)
    comps = {"local_holdout": _compare(yb[iho], _probs(T, base, x[iho], pos), _probs(T, net, x[iho], pos),
                                       groups[iho], thr, f"local hold-out: {len(iho)} images, patient-disjoint "
                                                          "from the fine-tuning data", classes)}
    if orig is not None:
        yo = (orig["y"] == pos).astype(int)
        comps["original_test"] = _compare(yo, _probs(T, base, orig["x"], pos), _probs(T, net, orig["x"], pos),
                                          orig["g"], thr, f"the model's original test split "
                                                          f"({len(yo)} images of {pred_csv.name} split 'test'"
                                                          + (f"; {n_test_patients} images of {n_test_patient_ids} "
                                                             "patients of the local cases left out"
                                                             if n_test_patients else "") + ")", classes)

    # OOD statistics refitted on the candidate's own features (same method and layers)
    val_x = x[iva].float() if rep_x is None else torch.cat([x[iva].float(), rep_x[: max(1, len(rep_x) // 4)].float()])
    ood_block = refit_ood(net, card, x_tr.float(), y_tr.numpy(), val_x, out,
                          f"the candidate's fine-tuning data ({len(x_tr)} images: local training part"
                          f"{' + replay of the original validation images' if rep_x is not None else ''})")

    ref_idx = sorted(np.concatenate([iva, iho]).tolist())
    h = comps["local_holdout"]["candidate"]
    metrics = [E.metric("AUC", h["auc"], h["auc_ci95"], comps["local_holdout"]["n"], comps["local_holdout"]["data"], pos_label)]
    if "original_test" in comps:
        o = comps["original_test"]["candidate"]
        metrics.append(E.metric("AUC", o["auc"], o["auc_ci95"], comps["original_test"]["n"],
                                comps["original_test"]["data"], pos_label))
    card_update = {
        "metrics": metrics,
        "metrics_ci": "percentile cluster bootstrap by patient, stratified by label, 2,000 resamples",
        "data": {**(card.raw.get("data") or {}),
                 "fine_tuning": f"{len(cases)} local reader-confirmed/labelled images of {len(set(groups.tolist()))} "
                                f"patients, split by patient 60/20/20 (train / validation / hold-out), seed {seed}"
                                + (f"; {n_test_overlap} more local images left out: images of the model's original "
                                   "test split" if n_test_overlap else "")
                                + (f"; {n_test_patients} images of the original test split left out of its "
                                   f"comparison: their {n_test_patient_ids} patients are local cases"
                                   if n_test_patients else "")},
        "limitations": inherited_limitations(card) + [
            f"Site fine-tune of {card.id} {card.version} on {len(cases)} local images; the operating threshold "
            f"{thr} is the base model's, not re-chosen (too few local cases); the OOD statistics were refitted "
            "but their AUROC against other modalities was not re-measured."],
        "training": {"code": "imaging-assist finetune -> imaging_assist.training fit / fit_temperature (the "
                             "training scripts' code)", "base_version": card.version, "trained": train,
                     "epochs": info["epochs_run"], "best_epoch": info["best_epoch"], "max_lr": lr,
                     "batch_size": batch_size, "replay_images": 0 if rep_x is None else int(len(rep_x)),
                     "temperature": round(temp, 4), "temperature_fitted": round(tinfo.get("fitted", temp), 6),
                     "temperature_bounds": tinfo.get("bounds"), "temperature_clamped": bool(tinfo.get("clamped")),
                     "train_seconds": info["train_seconds"], "seed": seed},
    }
    if t_note:
        card_update["limitations"].append("The " + t_note + ".")
    ni = {"metric": "AUC", "margin": margin,
          "rule": f"promote only when the lower 95% bound of AUC(candidate) - AUC(base) is above -{margin} "
                  "on every comparison (local hold-out and original test split)"}
    return finish_candidate(card, out, card_update, net, comps, ni, ood_block, len(cases),
                            ["file", "label", "patient_id"],
                            [[str(Path(cases[i]["path"]).resolve()), cases[i]["label"], groups[i]] for i in iho],
                            drop=("population",), reference_images=[paths[i] for i in ref_idx],
                            reference_labels=[int(yb[i]) for i in ref_idx],
                            reference_text=f"the fine-tune's local validation and hold-out parts ({len(ref_idx)} "
                                           "images the candidate was not trained on), run through the candidate",
                            extra={"left_out_original_test": n_test_overlap,
                                   "original_test_left_out_local_patients": n_test_patients}, log=log)


# --------------------------------------------------------------------------- compare
def version_card(model_id: str, version: str):
    """The card of one version: a registered candidate, or the installed (not promoted) model."""
    from ..models.registry import Registry, read_card
    from . import versions

    st = versions.status(model_id)
    if version in (st.get("candidates") or {}):
        return read_card(versions.candidate_folder(model_id, version))
    reg = Registry()
    srcs = [s for s in reg.sources() if s[1] != "promoted"]
    e = Registry(srcs).get(model_id)
    if e.card.version != version:
        known = [e.card.version] + sorted(st.get("candidates") or {})
        raise UserError(f"{model_id} has no version {version!r}; known: {', '.join(known)}")
    return e.card


MAX_HOLDOUT_BYTES = 64 << 20
MAX_HOLDOUT_ROWS = 100_000


def read_holdout(path: Path, labels: list[str] | None = None, need_mask: bool = False) -> list[dict]:
    """The hold-out CSV of ``models compare`` (``file,label,patient_id``; segmenters
    ``file,mask,patient_id``), checked before any model runs: one-line UserError naming the
    line for a missing column, a label that is not one of the model's (a typo would otherwise
    count as the other class), a file that is not there, or a classifier hold-out without both
    classes.  Relative paths are taken from the CSV's folder (as ``evaluate`` does).
    Returns ``[{"file": Path, "label": str | None, "mask": Path | None, "patient": str}]``."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_HOLDOUT_BYTES:
            raise UserError(f"hold-out {path} is larger than {MAX_HOLDOUT_BYTES >> 20} MiB")
        with open(path, newline="", encoding="utf-8-sig") as fh:
            r = csv.DictReader(fh)
            need = ["file", "mask" if need_mask else "label"]
            if not r.fieldnames or any(c not in r.fieldnames for c in need):
                raise UserError(f"hold-out {path} needs the columns {', '.join(need)} (and patient_id)"
                                f"{' for a segmenter' if need_mask else ''}")
            wanted = {lab.lower() for lab in labels or []}
            out = []
            for i, row in enumerate(r, start=2):
                if i > MAX_HOLDOUT_ROWS + 1:
                    raise UserError(f"hold-out {path} has more than {MAX_HOLDOUT_ROWS:,} rows")

                def here(col: str) -> Path:
                    v = (row.get(col) or "").strip()
                    f = Path(v) if Path(v).is_absolute() else path.parent / v
                    if not v or not f.is_file():
                        raise UserError(f"hold-out {path} line {i}: {col} {v[:120]!r} not found")
                    return f
                lab = None
                if not need_mask:
                    lab = (row.get("label") or "").strip().lower()
                    if lab not in wanted:
                        raise UserError(f"hold-out {path} line {i}: label {lab[:40]!r} is not one of "
                                        f"{', '.join(sorted(wanted))}")
                f = here("file")
                out.append({"file": f, "label": lab, "mask": here("mask") if need_mask else None,
                            "patient": (row.get("patient_id") or "").strip() or f"file:{row.get('file')}"})
    except OSError as e:
        raise UserError(f"cannot read hold-out {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UserError(f"hold-out {path} is not a UTF-8 CSV file") from None
    except csv.Error as e:
        raise UserError(f"hold-out {path} is not a readable CSV file ({e})") from None
    if not out:
        raise UserError(f"hold-out {path} has no rows")
    if not need_mask and len({r["label"] for r in out}) < 2:
        raise UserError(f"hold-out {path} holds only {out[0]['label']!r} cases: an AUC needs both classes")
    return out


def compare(model_id: str, a: str, b: str, holdout: Path | None = None) -> dict:
    """Both versions through the engine (``run_model``, not logged) on the same local hold-out:
    ``holdout``, else the ``holdout.csv`` of B (the version named second, the one being
    assessed), else A's."""
    from ..inference import RunOptions, read_image, run_model
    from ..models.loaders import load_model
    from .log import paused

    ca, cb = version_card(model_id, a), version_card(model_id, b)
    if holdout is None:
        for c in (cb, ca):
            f = Path(c.folder) / "holdout.csv"
            if f.is_file():
                holdout = f
                break
    if holdout is None or not Path(holdout).is_file():
        raise UserError("no local hold-out to compare on: neither version is a fine-tuned candidate; give --holdout CSV")
    if ca.task == "segmentation":
        from .finetune_seg import compare_segmenters

        with paused():
            return compare_segmenters(model_id, ca, cb, Path(holdout), a, b)
    labels = [lab.lower() for lab in ca.labels]
    rows = read_holdout(Path(holdout), labels)
    pos_label = next(iter(ca.thresholds), None) or labels[-1]
    y = np.array([int(r["label"] == pos_label) for r in rows])
    g = np.array([r["patient"] for r in rows], dtype=object)
    ps = []
    with paused():
        for c in (ca, cb):
            m = load_model(c)
            p = []
            for r in rows:
                res = run_model(m, read_image(str(r["file"])), RunOptions(device="cpu"))
                p.append(float(res.probabilities[pos_label]))
            ps.append(np.array(p))
    thr = float(ca.thresholds[pos_label].threshold) if pos_label in ca.thresholds else 0.5
    c = _compare(y, ps[0], ps[1], g, thr, f"local hold-out {holdout} ({len(rows)} images)")
    c["base"]["version"], c["candidate"]["version"] = a, b
    return {"model_id": model_id, "a": a, "b": b, "comparison": c, "not_for_clinical_use": True}
