"""Fixes of the reader-feedback / monitor / fine-tune audit (s21): an agreement with a negative
decision among three labels still counts for the monitor (and is said to be left out of a
fine-tune), a stale "correct label" choice is never saved with a later Agree, correction files
are never overwritten (a new log numbers its runs from 1 again), a fine-tune leaves out the
model's own test images, a busy or damaged log is one line in the GUI, a slice change ends a
brush stroke, a damaged correction file is one line.  Everything small (one 1-epoch fine-tune on 16 films)."""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, SHARED, need
from imaging_assist.errors import UserError
from imaging_assist.monitoring import feedback as FB
from imaging_assist.monitoring import log as plog
from test_feedback_engine import lg  # noqa: F401

BREAST = ["benign", "malignant", "normal"]
BUSI = SHARED / "ultrasound" / "breast_busi"
JSRT = SHARED / "cxr" / "lung_masks_jsrt"


def _breast_run(lg, positive: bool, i: int = 0, **kw) -> int:  # noqa: F811
    """A logged us-breast run: the card decides on 'malignant'."""
    p = 0.95 if positive else 0.01
    probs = {"benign": (1 - p) * 0.7, "malignant": p, "normal": (1 - p) * 0.3}
    r = dict.fromkeys(plog.RUN_COLUMNS)
    r.update({"time_utc": f"2026-12-07T00:00:{i:02d}", "time_unix": 1_800_000_000.0 + i, "model_id": "us-breast",
              "model_version": "1.0.0", "task": "classification", "probabilities": json.dumps(probs),
              "top_label": max(probs, key=probs.get), "score": p, "positive": int(positive),
              "decisions": json.dumps({"malignant": {"threshold": 0.1346, "positive": positive}}),
              "patient_key": f"patient{i}", "input_key": f"input{i}", "slices": 1, "rows": 8, "cols": 8, **kw})
    return lg.add_run(r)


# --------------------------------------------------------------------------- 1. 3+ labels, agree with a negative
def test_agree_with_a_negative_among_three_labels_counts_for_the_monitor(lg):  # noqa: F811
    from imaging_assist.monitoring.drift import monitor

    for i in range(12):
        rid = _breast_run(lg, positive=i % 2 == 0, i=i)
        FB.add_feedback(rid, "malignant", "agree")
    # stored without a class label (benign or normal), as before ...
    assert lg.query("SELECT COUNT(*) FROM feedback WHERE correct_label IS NULL")[0][0] == 6
    rep = monitor("us-breast", window="100", log=lg, record_alerts=False)
    rc = rep["models"][0]["windows"][0]["readers"]["reader_confirmed"]
    # ... but the reader confirmed the negative decision: 12 cases, 6 positive, specificity 1 (was n 6, spec 0)
    assert (rc["n"], rc["n_positive"]) == (12, 6), rc
    assert rc["specificity"]["value"] == 1.0 and rc["auc"]["value"] == 1.0


def test_finetune_from_feedback_says_how_many_verdicts_name_no_class_label(lg, tmp_path):  # noqa: F811
    from imaging_assist.monitoring.finetune import cases_from_feedback
    from imaging_assist.privacy.sitekey import pseudonym

    data = tmp_path / "films"
    data.mkdir()
    for i in range(4):
        f = data / f"film{i}.png"
        Image.fromarray(np.full((8, 8), i * 40, np.uint8)).save(f)
        rid = _breast_run(lg, positive=i < 2, i=i, input_key=pseudonym(str(f.resolve()), "file"))
        FB.add_feedback(rid, "malignant", "agree")
    msgs: list = []
    cases = cases_from_feedback("us-breast", data, BREAST, log=msgs.append)
    assert sorted((c["path"].name, c["label"]) for c in cases) == [("film0.png", "malignant"),
                                                                    ("film1.png", "malignant")]
    assert len(msgs) == 1 and msgs[0].startswith("2 reader-confirmed files left out") and "no class label" in msgs[0]


# --------------------------------------------------------------------------- 2. stale correct label
def test_a_correct_label_the_verdict_rules_out_is_refused_for_any_number_of_labels(lg):  # noqa: F811
    rid = _breast_run(lg, positive=True)
    with pytest.raises(UserError, match="means the image shows 'malignant', not 'benign'"):
        FB.add_feedback(rid, "malignant", "agree", correct_label="benign")
    with pytest.raises(UserError, match="does not show 'malignant'"):
        FB.add_feedback(rid, "malignant", "disagree", correct_label="malignant")
    neg = _breast_run(lg, positive=False, i=1)
    with pytest.raises(UserError, match="does not show 'malignant'"):
        FB.add_feedback(neg, "malignant", "agree", correct_label="malignant")
    FB.add_feedback(neg, "malignant", "agree", correct_label="normal")  # the reader names which one: kept
    assert FB.latest_feedback(neg)["malignant"]["correct_label"] == "normal"
    assert not lg.query("SELECT 1 FROM feedback WHERE run_id = ?", (rid,))


class _Res:  # the attributes the feedback box reads from a result
    label_map = None

    def __init__(self, rid, probs, decisions):
        self.prediction_log_id, self.prediction_log_ref = rid, None
        self.probabilities, self.decisions, self.labels = probs, decisions, list(probs)


def _breast_res(lg, positive=True):  # noqa: F811
    rid = _breast_run(lg, positive=positive)
    run = lg.run(rid)
    return _Res(rid, json.loads(run["probabilities"]), json.loads(run["decisions"]))


def test_feedback_box_agree_after_a_disagreement_does_not_save_the_old_choice(qapp, lg):  # noqa: F811
    from imaging_assist_ui.monitor.feedback_box import FeedbackBox

    res = _breast_res(lg)
    box = FeedbackBox()
    box.set_result(res)
    row = box.rows["malignant"]
    row["combo"].setCurrentIndex(row["combo"].findData("benign"))
    assert box.give("malignant", "disagree")
    assert FB.latest_feedback(res.prediction_log_id)["malignant"]["correct_label"] == "benign"
    row["buttons"]["agree"].click()  # the reader changes their mind; the combo untouched
    fb = FB.latest_feedback(res.prediction_log_id)["malignant"]
    assert (fb["verdict"], fb["correct_label"]) == ("agree", "malignant"), fb
    assert row["combo"].currentData() is None  # the old choice is gone from the combo too
    # a later disagreement without a new choice asks for one (never the agreed label)
    assert not box.give("malignant", "disagree") and "needs the correct label" in box.note.text()


# --------------------------------------------------------------------------- 3. correction files
def _seg_run(key: str) -> int:
    return plog.open_log().add_run({"time_utc": "2026-12-07T00:00:00", "time_unix": 1.0, "model_id": "cxr-lung-seg",
                                    "model_version": "1.0.0", "input_key": key, "patient_key": key, "slices": 1,
                                    "rows": 8, "cols": 8, "task": "segmentation"})


def test_a_correction_after_the_log_was_moved_aside_keeps_the_old_file(lg, tmp_path):  # noqa: F811
    labels = ["background", "right_lung", "left_lung"]
    pred = np.zeros((1, 8, 8), np.uint8)
    a_map, b_map = pred.copy(), pred.copy()
    a_map[0, :4], b_map[0, 4:] = 1, 2
    rid = _seg_run("film-A")
    a = FB.save_correction(rid, a_map, labels, predicted=pred, write_dicom=False)
    plog.close_all()
    plog.db_path().rename(plog.db_path().with_name("old_predictions.sqlite"))  # as the docs say
    rid2 = _seg_run("film-B")
    assert rid2 == rid  # the new log numbers its runs from 1 again
    b = FB.save_correction(rid2, b_map, labels, predicted=pred, write_dicom=False)
    assert a["label_map_file"] != b["label_map_file"]
    old = plog.open_log(plog.db_path().with_name("old_predictions.sqlite"))
    f = FB.corrections(run_id=rid, log=old)[0]["label_map_file"]
    assert np.array_equal(np.load(f)["label_map"], a_map)  # film A's map is still there
    assert np.array_equal(np.load(b["label_map_file"])["label_map"], b_map)


# --------------------------------------------------------------------------- 4. the model's own test split
def _test_rows(model: str, col: str, value: str) -> list[dict]:
    return [r for r in csv.DictReader(need(ROOT / "weights" / model / "predictions.csv").open()) if r.get(col) == value]


def test_drop_test_split_matches_the_path_and_the_content():
    from imaging_assist.monitoring.finetune import drop_test_split

    test = [need(BUSI / r["file"]) for r in _test_rows("us-breast", "split", "test")[:3]]
    other = need(BUSI / _test_rows("us-breast", "split", "validation")[0]["file"])
    msgs: list = []
    kept, n = drop_test_split([{"path": test[0]}, {"path": other}], test, msgs.append)
    assert [c["path"] for c in kept] == [other] and n == 1 and msgs[0].startswith("1 local cases left out")
    with pytest.raises(UserError, match="all 1 local cases are images of the model's original test split"):
        drop_test_split([{"path": test[1]}], test, msgs.append)


def test_finetune_on_copies_of_its_own_test_images_is_refused(lg, tmp_path, monkeypatch):  # noqa: F811
    import imaging_assist.training.core as C
    from imaging_assist.monitoring.finetune import finetune

    monkeypatch.setattr(C, "cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setenv("IMAGING_ASSIST_PREDICTION_LOG", "off")
    rows = _test_rows("us-breast", "split", "test")
    rows = [r for r in rows if r["label"] == "malignant"][:2] + [r for r in rows if r["label"] != "malignant"][:2]
    data = tmp_path / "local"
    data.mkdir()
    lines = ["file,label,patient_id"]
    for i, r in enumerate(rows):  # other names: found by their content
        shutil.copy(need(BUSI / r["file"]), data / f"site_{i}.png")
        lines.append(f"site_{i}.png,{r['label']},p{i}")
    (data / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="all 4 local cases are images of the model's original test split"):
        finetune("us-breast", tmp_path / "cand", data=data, labels_csv=data / "labels.csv", epochs=1, replay=0,
                 log=lambda m: None)


@pytest.mark.slow
def test_finetune_leaves_out_its_own_test_images_and_says_how_many(lg, tmp_path, monkeypatch):  # noqa: F811
    """A tiny real fine-tune (16 validation-split films + 2 test-split films, 1 epoch, a few seconds)."""
    import imaging_assist.training.core as C
    from imaging_assist.monitoring.finetune import finetune

    monkeypatch.setattr(C, "cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setenv("IMAGING_ASSIST_PREDICTION_LOG", "off")
    val = _test_rows("us-breast", "split", "validation")
    rows = ([r for r in val if r["label"] == "malignant"][:8] + [r for r in val if r["label"] != "malignant"][:8]
            + _test_rows("us-breast", "split", "test")[:2])
    (tmp_path / "labels.csv").write_text("\n".join(["file,label,patient_id"] + [
        f"{r['file']},{r['label']},{r['group']}" for r in rows]) + "\n")
    msgs: list = []
    r = finetune("us-breast", tmp_path / "cand", data=need(BUSI), labels_csv=tmp_path / "labels.csv", epochs=1,
                 replay=0, original_test_max=6, log=msgs.append)
    assert r["left_out_original_test"] == 2
    assert any(m.startswith("2 local cases left out: images of the model's original test split") for m in msgs)
    card = json.loads((tmp_path / "cand" / "model.json").read_text())
    told = card["data"]["fine_tuning"]
    assert told.startswith("16 local") and "2 more local images left out" in told
    assert json.loads((tmp_path / "cand" / "metrics.json").read_text())["left_out_original_test"] == 2
    test_files = {str((BUSI / t["file"]).resolve()) for t in _test_rows("us-breast", "split", "test")}
    assert not {h["file"] for h in csv.DictReader((tmp_path / "cand" / "holdout.csv").open())} & test_files


def test_segmenter_finetune_on_its_own_test_films_is_refused(lg, tmp_path, monkeypatch):  # noqa: F811
    import imaging_assist.training.core as C
    from imaging_assist.monitoring.finetune import finetune

    monkeypatch.setattr(C, "cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setenv("IMAGING_ASSIST_PREDICTION_LOG", "off")
    files = [r["file"] for r in _test_rows("cxr-lung-seg", "set", "jsrt_test")[:3]]
    lines = ["file,mask,patient_id"]
    for i, f in enumerate(files):
        with Image.open(need(JSRT / f)) as im:
            Image.new("L", im.size).save(tmp_path / f"mask{i}.png")
        lines.append(f"{JSRT / f},mask{i}.png,p{i}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="all 3 local cases are images of the model's original test split"):
        finetune("cxr-lung-seg", tmp_path / "cand", data=tmp_path, labels_csv=tmp_path / "labels.csv", epochs=1,
                 replay=0, log=lambda m: None)


# --------------------------------------------------------------------------- 5. busy / damaged log in the GUI
def _busy(lg):  # noqa: F811
    """Another connection holds the write lock; ours gives up after 0.1 s (not 5 s)."""
    lg.conn.execute("PRAGMA busy_timeout=100")
    other = sqlite3.connect(str(lg.path), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


def test_a_busy_log_is_one_line_in_the_feedback_box_and_the_label_editor(qapp, lg, monkeypatch):  # noqa: F811
    import imaging_assist_ui.monitor.label_editor as LE
    from imaging_assist_ui.monitor.feedback_box import FeedbackBox

    res = _breast_res(lg)
    rid2 = _seg_run("seg")
    box = FeedbackBox()
    box.set_result(res)
    other = _busy(lg)
    try:
        assert box.give("malignant", "agree") is False
        assert box.note.text().startswith("not saved: prediction log") and "locked" in box.note.text()
        shown = []
        monkeypatch.setattr(LE.QMessageBox, "warning", staticmethod(lambda *a: shown.append(a[2])))
        ed = LE.LabelEditorDialog(rid2, np.zeros((1, 8, 8), np.uint8), ["background", "right_lung", "left_lung"],
                                  gray=np.zeros((1, 8, 8), np.uint8))
        ed.apply_at(3, 3)
        assert ed.save() is None
        assert len(shown) == 1 and "could not be written" in shown[0] and "\n" not in shown[0]
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert not list(FB.corrections_dir().glob("*"))  # no file the log does not list
    assert lg.query("SELECT COUNT(*) FROM corrections")[0][0] == 0


def test_a_damaged_feedback_row_is_a_note_in_the_box_not_an_exception(qapp, lg):  # noqa: F811
    from imaging_assist_ui.monitor.feedback_box import FeedbackBox

    res = _breast_res(lg)
    c = sqlite3.connect(str(lg.path), isolation_level=None)
    c.execute("INSERT INTO feedback (run_id, time_utc, time_unix, finding, verdict) "
              "VALUES (?, 't', 1, CAST(X'ff70' AS TEXT), 'agree')", (res.prediction_log_id,))
    c.close()
    box = FeedbackBox()
    box.set_result(res)  # the model panel's runFinished slot
    assert "Earlier feedback cannot be shown" in box.note.text() and "damaged" in box.note.text()
    assert box.give("malignant", "agree")  # saved; reading it back fails: said
    assert "cannot be read back" in box.note.text()


# --------------------------------------------------------------------------- 6. slice change during a drag
def test_a_slice_change_during_a_drag_ends_the_stroke(qapp):
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    from imaging_assist.monitoring.edit import LabelEdit
    from imaging_assist_ui.monitor.label_editor import LabelEditorDialog

    ed = LabelEditorDialog(1, np.zeros((3, 40, 100), np.uint8), ["background", "right_lung", "left_lung"],
                           gray=np.zeros((3, 40, 100), np.uint8))
    ed.show()
    QTest.qWaitForWindowExposed(ed)
    c = ed.canvas
    a, b = c.to_widget(10, 10).toPoint(), c.to_widget(10, 40).toPoint()
    QTest.mousePress(c, Qt.LeftButton, Qt.NoModifier, a)
    QTest.keyClick(ed, Qt.Key_PageDown)
    assert ed.k == 1
    QTest.mouseMove(c, b)
    QTest.mouseRelease(c, Qt.LeftButton, Qt.NoModifier, b)
    assert ed.edit.array[0].any() and not ed.edit.array[1].any()  # the held button no longer paints
    while ed.edit.can_undo:
        ed.undo()
    assert ed.edit.changed == 0, [int((ed.edit.array[k] > 0).sum()) for k in range(3)]
    ed.close()
    # the engine too: a drag's paint on another slice is a step of its own
    e = LabelEdit(np.zeros((2, 10, 10), np.uint8), 2)
    e.brush(0, 5, 5, 2, 1)
    e.brush(1, 5, 5, 2, 1, new_stroke=False)
    assert e.undo() and e.undo() and e.changed == 0


# --------------------------------------------------------------------------- 7. damaged correction file
def test_a_damaged_correction_file_is_one_line_naming_it(tmp_path):
    from imaging_assist.monitoring.finetune_seg import read_mask

    f = tmp_path / "run1_x.npz"
    np.savez_compressed(f, label_map=np.zeros((1, 8, 8), np.uint8))
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(UserError, match="reader correction .*run1_x.npz cannot be read"):
        read_mask(f, 3)
    g = tmp_path / "other.npz"
    np.savez_compressed(g, something=np.zeros(3))
    with pytest.raises(UserError, match="other.npz cannot be read"):
        read_mask(g, 3)
