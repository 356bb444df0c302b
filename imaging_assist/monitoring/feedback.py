"""Reader feedback on a logged run (no Qt): a verdict per finding and label-map corrections.

* :func:`add_feedback` — agree / disagree / unsure on one finding (a label of the run) with
  the correct label (implied for a binary decision, required for a disagreement among more
  than two labels).  The latest verdict per finding counts; earlier ones stay in the log.
* :func:`save_correction` — a reader's corrected label map, linked to the run: saved as a
  compressed ``.npz`` in ``data_dir()/corrections/`` and, when the input was a DICOM image,
  as a DICOM SEG through :mod:`imaging_assist.export.seg` (segment algorithm type
  SEMIAUTOMATIC: a person edited a model's output).  Nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path

import numpy as np

from ..errors import UserError
from .log import RUN_REF_KEYS, now_utc, open_log

VERDICTS = ("agree", "disagree", "unsure")


def _run(lg, run_id: int, expect: dict | None = None) -> dict:
    """Run ``run_id`` of the log; with ``expect`` (a result's ``prediction_log_ref``) only when it
    is still that run: a log moved aside and started again numbers its runs from 1 anew."""
    r = lg.run(int(run_id))
    if r is None:
        raise UserError(f"run {run_id} is not in the prediction log")
    if expect and any(r.get(k) != expect.get(k) for k in RUN_REF_KEYS if k in expect):
        raise UserError(f"run {run_id} of the prediction log is another run now (the log was moved aside or "
                        "replaced since this result was made): run the model again to give feedback")
    return r


def run_matches(run_id: int, expect: dict | None, log=None) -> bool:
    """Run ``run_id`` is in the log and is the run ``expect`` names (see :func:`_run`)."""
    try:
        _run(log or open_log(), run_id, expect)
        return True
    except UserError:
        return False


def run_labels(run: dict) -> list[str]:
    probs = json.loads(run.get("probabilities") or "null") or {}
    if probs:
        return list(probs)
    areas = json.loads(run.get("areas") or "null") or {}
    return list((areas.get("voxel_counts") or {}).keys())


def finding_present(run: dict, finding: str, verdict: str) -> bool | None:
    """Whether the reader's verdict says the image shows ``finding`` (the monitor's binary
    truth: the decision on it right or wrong), or None (unsure, or no classifier finding).

    The finding is the label the card decides on (its decision positive or negative); without
    a decision the finding is the top label."""
    labels = run_labels(run)
    if not run.get("probabilities") or finding not in labels or verdict not in ("agree", "disagree"):
        return None
    decs = json.loads(run.get("decisions") or "null") or {}
    d = decs.get(finding)
    if isinstance(d, dict) and d.get("positive") is not None:
        said_present = bool(d["positive"])
    else:
        said_present = finding == run.get("top_label")
    return said_present if verdict == "agree" else not said_present


def implied_label(run: dict, finding: str, verdict: str) -> str | None:
    """The correct label a verdict implies for a classifier's finding, or None.

    With two labels agreeing with "positive" means the finding is right, disagreeing means the
    other label is.  With three or more labels a finding that is absent leaves two or more
    candidates: no class label (the binary truth stays, :func:`finding_present`)."""
    present = finding_present(run, finding, verdict)
    if present is None:
        return None
    if present:
        return finding
    others = [lab for lab in run_labels(run) if lab != finding]
    return others[0] if len(others) == 1 else None


def add_feedback(run_id: int, finding: str, verdict: str, correct_label: str | None = None,
                 reader: str | None = None, note: str | None = None, log=None, expect: dict | None = None) -> int:
    lg = log or open_log()
    if verdict not in VERDICTS:
        raise UserError(f"verdict must be one of {', '.join(VERDICTS)} (got {verdict!r})")
    run = _run(lg, run_id, expect)
    labels = run_labels(run)
    if labels and finding not in labels:
        raise UserError(f"finding {finding!r} is not a label of run {run_id} ({', '.join(labels)})")
    if correct_label is not None and labels and correct_label not in labels:
        raise UserError(f"correct label {correct_label!r} is not one of {', '.join(labels)}")
    implied = implied_label(run, finding, verdict)
    present = finding_present(run, finding, verdict)
    if correct_label is None:
        correct_label = implied
        if verdict == "disagree" and correct_label is None and run.get("probabilities"):
            raise UserError("with more than two labels, a disagreement needs the correct label")
    elif (implied is not None and correct_label != implied) or (present is False and correct_label == finding):
        # any number of labels: a label the verdict rules out is never stored with it (a stale
        # choice would otherwise train the film as that label)
        shows = f"shows {implied!r}" if implied is not None else f"does not show {finding!r}"
        raise UserError(f"{verdict} with {finding!r} means the image {shows}, not {correct_label!r}")
    t, tu = now_utc()
    with lg.writing() as conn:
        cur = conn.execute(
            "INSERT INTO feedback (run_id, time_utc, time_unix, finding, verdict, correct_label, reader, note) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (int(run_id), t, tu, finding, verdict, correct_label, reader, note))
        return int(cur.lastrowid)


def latest_feedback(run_id: int, log=None) -> dict[str, dict]:
    """finding -> {verdict, correct_label, time_utc} (the latest per finding)."""
    lg = log or open_log()
    rows = lg.query("SELECT finding, verdict, correct_label, time_utc FROM feedback WHERE run_id = ? "
                    "ORDER BY id", (int(run_id),))
    return {r[0]: {"verdict": r[1], "correct_label": r[2], "time_utc": r[3]} for r in rows}


def corrections_dir() -> Path:
    from ..userdirs import data_dir

    return data_dir() / "corrections"


def save_correction(run_id: int, label_map: np.ndarray, labels, predicted: np.ndarray | None = None,
                    volume=None, reader: str | None = None, log=None, write_dicom: bool = True,
                    expect: dict | None = None) -> dict:
    """Save a corrected label map ([k, j, i] on the input grid) linked to run ``run_id``.

    Returns ``{"id", "label_map_file", "seg_file", "dice_vs_prediction", "changed_voxels", "warnings"}``
    (``dice_vs_prediction``: the mean per-label Dice over the foreground labels).
    The SEG is written only for a DICOM input (its source headers are needed); a plain image
    keeps the ``.npz`` and says why there is no SEG."""
    from ..evaluation import dice

    lg = log or open_log()
    run = _run(lg, run_id, expect)
    lm = np.asarray(label_map)
    if lm.ndim == 2:
        lm = lm[None]
    names = [str(x) for x in (labels.values() if isinstance(labels, dict) else labels)]
    if lm.size == 0 or lm.min() < 0 or int(lm.max()) >= len(names):
        raise UserError(f"the corrected label map holds values outside 0..{len(names) - 1}")
    if (run.get("slices"), run.get("rows"), run.get("cols")) != tuple(lm.shape):
        raise UserError(f"the corrected label map has shape {lm.shape}, the run's image "
                        f"{(run.get('slices'), run.get('rows'), run.get('cols'))}")
    lm = lm.astype(np.uint8 if len(names) < 256 else np.uint16)
    d = None
    changed = None
    if predicted is not None:
        pr = np.asarray(predicted).reshape(lm.shape)
        changed = int(np.count_nonzero(pr != lm))
        # mean over the foreground labels of each label's Dice (a label absent from both: 1), as
        # finetune_seg.dice_per_image measures; foreground-only Dice scored a left/right swap 1.0
        d = float(np.mean([float(dice(pr == k, lm == k)) if (pr == k).any() or (lm == k).any() else 1.0
                           for k in range(1, len(names))])) if len(names) > 1 else 1.0
    out = corrections_dir()
    out.mkdir(parents=True, exist_ok=True, mode=0o700)  # the user's own record
    t, tu = now_utc()
    # A name of its own, created exclusively: run numbers start at 1 again in a new log (after
    # the old one was moved aside), so a name from the run number alone overwrote the old log's file.
    f, fh = _new_file(out, f"run{int(run_id)}", ".npz")
    seg_path = f.with_suffix(".seg.dcm")
    written = [f]
    try:
        sha, sops = _source_identity(volume)
        with fh:
            # the source's content (sha256 of each file; DICOM: the SOP Instance UIDs too): a
            # fine-tune pairs the correction with a file found by its path / Series UID and must
            # not train on another film that has since taken its place
            np.savez_compressed(fh, label_map=lm, labels=np.array(names), run_id=np.array(int(run_id)),
                                predicted=(np.asarray(predicted).reshape(lm.shape).astype(lm.dtype)
                                           if predicted is not None else np.zeros((0,), lm.dtype)),
                                source_sha256=np.array(sha, dtype=str), source_sop_uids=np.array(sops, dtype=str))
        seg_file, warns = None, []
        if write_dicom and volume is not None and getattr(volume, "headers", None):
            seg_file = str(_write_correction_seg(volume, lm, names, run, seg_path, warns, written))
        elif write_dicom:
            warns.append("no DICOM SEG: the input was not a DICOM image (the correction is kept as .npz)")
        with lg.writing() as conn:
            cur = conn.execute(
                "INSERT INTO corrections (run_id, time_utc, time_unix, label_map_file, seg_file, labels, "
                "dice_vs_prediction, changed_voxels, reader) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (int(run_id), t, tu, str(f), seg_file, json.dumps(names), d, changed, reader))
            cid = int(cur.lastrowid)
    except BaseException:
        for p in written:  # no file the log does not list (the row failed, or the file did)
            p.unlink(missing_ok=True)
        raise
    return {"id": cid, "label_map_file": str(f), "seg_file": seg_file, "dice_vs_prediction": d,
            "changed_voxels": changed, "warnings": warns}


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def _source_identity(volume) -> tuple[list[str], list[str]]:
    """(sha256 of each source file, SOP Instance UIDs) of the image a correction was drawn on
    (empty lists when the volume or its files are not at hand)."""
    try:
        sha = sorted(file_sha256(p) for p in (getattr(volume, "source_paths", None) or []) if p)
    except OSError:  # the file is gone already: nothing to check against later
        sha = []
    sops = [str((h.get("SOPInstanceUID") if hasattr(h, "get") else getattr(h, "SOPInstanceUID", None)) or "")
            for h in (getattr(volume, "headers", None) or [])]
    return sha, [u for u in sops if u]


def _exclusive(path: Path):
    """``path`` opened for writing only when it did not exist (O_EXCL; never overwrites)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600), "wb")


def _new_file(folder: Path, stem: str, suffix: str):
    """(path, open file) of a new file ``{stem}_{time}_{random}{suffix}`` in ``folder``."""
    for _ in range(20):
        f = folder / f"{stem}_{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}_{uuid.uuid4().hex[:12]}{suffix}"
        if f.with_suffix(".seg.dcm").exists():  # its SEG will take that name
            continue
        try:
            return f, _exclusive(f)
        except FileExistsError:
            continue
    raise UserError(f"cannot make a new correction file name in {folder}")


def _write_correction_seg(volume, lm, names, run, path: Path, warns: list, written: list | None = None) -> Path:
    """The export layer's SEG, marked as a reader's correction of the model's output."""
    from ..export.seg import build_seg
    from ..privacy.audit import record_export

    seg = build_seg(volume, lm, names, model_id=run["model_id"], model_version=run["model_version"] or "",
                    series_number=9902, warnings=warns)
    for item in seg.SegmentSequence:
        item.SegmentAlgorithmType = "SEMIAUTOMATIC"  # the model's labels, edited by a reader
    seg.ContentLabel = "READER_EDIT"  # CS: at most 16 characters
    seg.SeriesDescription = f"AI {run['model_id']} SEG corrected by reader"[:64]
    with _exclusive(path) as fh:  # never over another file
        if written is not None:
            written.append(path)
        seg.save_as(fh)
    record_export("SEG", path, volume)
    return path


def corrections(run_id: int | None = None, model_id: str | None = None, log=None) -> list[dict]:
    lg = log or open_log()
    sql = ("SELECT c.id, c.run_id, c.time_utc, c.label_map_file, c.seg_file, c.labels, c.dice_vs_prediction, "
           "c.changed_voxels, r.model_id FROM corrections c JOIN runs r ON r.id = c.run_id WHERE 1=1")
    p: list = []
    if run_id is not None:
        sql += " AND c.run_id = ?"
        p.append(int(run_id))
    if model_id is not None:
        sql += " AND r.model_id = ?"
        p.append(model_id)
    keys = ("id", "run_id", "time_utc", "label_map_file", "seg_file", "labels", "dice_vs_prediction",
            "changed_voxels", "model_id")
    return [dict(zip(keys, r)) for r in lg.query(sql + " ORDER BY c.id", p)]
