"""Feedback engine (issue 18), no Qt: verdicts and implied labels, their checks, label-map
edits (brush / eraser / fill / undo / redo), corrections linked to a run, and the local files
found again from the log's keyed pseudonyms for `finetune --from-feedback`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imaging_assist.errors import UserError
from imaging_assist.monitoring import feedback
from imaging_assist.monitoring import log as plog
from imaging_assist.monitoring.edit import LabelEdit


@pytest.fixture()
def lg(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "config"))
    yield plog.open_log()
    plog.close_all()


def _run(lg, positive, probs=None, **kw):
    from imaging_assist.monitoring.log import RUN_COLUMNS

    probs = probs or {"normal": 0.2, "pneumonia": 0.8}
    r = dict.fromkeys(RUN_COLUMNS)
    r.update({"time_utc": "2026-12-04T00:00:00", "time_unix": 1.0, "model_id": "cxr-pneumonia",
              "model_version": "1.0.0", "probabilities": json.dumps(probs), "top_label": max(probs, key=probs.get),
              "decisions": json.dumps({"normal": None, "pneumonia": None if positive is None else
                                       {"threshold": 0.5, "positive": positive}}),
              "slices": 1, "rows": 8, "cols": 8, **kw})
    return lg.add_run(r)


def test_verdicts_imply_the_correct_label_and_are_checked(lg):
    pos = _run(lg, True)
    neg = _run(lg, False, {"normal": 0.7, "pneumonia": 0.3})
    withheld = _run(lg, None)
    feedback.add_feedback(pos, "pneumonia", "agree")
    feedback.add_feedback(neg, "pneumonia", "disagree")
    feedback.add_feedback(withheld, "pneumonia", "unsure")
    assert feedback.latest_feedback(pos)["pneumonia"]["correct_label"] == "pneumonia"
    assert feedback.latest_feedback(neg)["pneumonia"]["correct_label"] == "pneumonia"
    assert feedback.latest_feedback(withheld)["pneumonia"]["correct_label"] is None
    with pytest.raises(UserError, match="verdict must be"):
        feedback.add_feedback(pos, "pneumonia", "maybe")
    with pytest.raises(UserError, match="not a label"):
        feedback.add_feedback(pos, "effusion", "agree")
    with pytest.raises(UserError, match="means the image shows"):
        feedback.add_feedback(pos, "pneumonia", "agree", correct_label="normal")
    with pytest.raises(UserError, match="not in the prediction log"):
        feedback.add_feedback(10_000, "pneumonia", "agree")
    three = _run(lg, None, {"a": 0.5, "b": 0.3, "c": 0.2})
    with pytest.raises(UserError, match="needs the correct label"):
        feedback.add_feedback(three, "a", "disagree")
    feedback.add_feedback(three, "a", "disagree", correct_label="c")


def test_label_edits_and_undo_redo():
    lm = np.zeros((1, 20, 20), np.uint8)
    lm[0, 5:10, 5:10] = 1
    e = LabelEdit(lm, 3)
    assert e.brush(0, 15, 15, 2, 2) > 0 and e.array[0, 15, 15] == 2
    e.brush(0, 15, 17, 2, 2, new_stroke=False)  # the same stroke
    assert e.erase(0, 7, 7, 1) > 0 and e.array[0, 7, 7] == 0
    n = e.changed
    assert e.fill(0, 0, 0, 1) > 300 and e.array[0, 0, 0] == 1 and e.array[0, 15, 15] == 2
    assert e.undo() and e.changed == n
    assert e.undo() and e.array[0, 7, 7] == 1
    assert e.undo() and e.changed == 0 and not e.undo()
    assert e.redo() and e.array[0, 15, 17] == 2  # the whole stroke came back
    with pytest.raises(ValueError):
        e.brush(0, 1, 1, 1, 7)


def test_correction_is_saved_and_linked(lg):
    rid = _run(lg, None, {"x": 1.0})
    pred = np.zeros((1, 8, 8), np.uint8)
    pred[0, 2:6, 2:6] = 1
    fixed = pred.copy()
    fixed[0, 2, 2:6] = 0
    d = feedback.save_correction(rid, fixed, ["background", "lung"], predicted=pred)
    assert d["changed_voxels"] == 4 and 0.8 < d["dice_vs_prediction"] < 1
    assert "not a DICOM image" in d["warnings"][0]
    got = np.load(d["label_map_file"])
    assert np.array_equal(got["label_map"], fixed) and int(got["run_id"]) == rid
    assert feedback.corrections(run_id=rid)[0]["changed_voxels"] == 4
    with pytest.raises(UserError, match="shape"):
        feedback.save_correction(rid, np.zeros((1, 4, 4), np.uint8), ["background", "lung"])
    with pytest.raises(UserError, match="outside"):
        feedback.save_correction(rid, fixed * 5, ["background", "lung"])


def test_feedback_cases_are_found_again_by_pseudonym(lg, tmp_path):
    from imaging_assist.monitoring.finetune import cases_from_feedback
    from imaging_assist.privacy.sitekey import pseudonym

    d = tmp_path / "films"
    d.mkdir()
    files = []
    for i in range(3):
        f = d / f"f{i}.png"
        f.write_bytes(b"x")
        files.append(f)
    ids = [_run(lg, True, input_key=pseudonym(str(f.resolve()), "file"), patient_key=f"p{i}")
           for i, f in enumerate(files)]
    feedback.add_feedback(ids[0], "pneumonia", "agree")
    feedback.add_feedback(ids[1], "pneumonia", "disagree")
    feedback.add_feedback(ids[2], "pneumonia", "unsure")  # not a confirmed label
    cases = cases_from_feedback("cxr-pneumonia", d, ["normal", "pneumonia"])
    assert {(c["path"].name, c["label"], c["patient"]) for c in cases} == {("f0.png", "pneumonia", "p0"),
                                                                          ("f1.png", "normal", "p1")}
