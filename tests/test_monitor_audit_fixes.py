"""Fixes of the model-monitoring / fine-tuning audit: monitoring after promote, the rollback
stack, the bounded temperature, the original split of a fine-tune from a promoted version,
promoted versions tied to what was measured, the newest reader verdict, the content-keyed
preprocessing cache, two processes creating one new prediction log.  Fine-tunes here are tiny
(24 films, 1 epoch)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from _monitor_stream import ROOT, in_distribution, shifted_local_set
from imaging_assist.errors import UserError
from imaging_assist.monitoring import log as plog

SHIPPED = ROOT / "weights" / "cxr-pneumonia"
MODEL = "cxr-pneumonia"


@pytest.fixture
def home(tmp_path, monkeypatch):
    import imaging_assist.training.core as C

    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setattr(C, "cache_dir", lambda: tmp_path / "cache")
    yield tmp_path
    plog.close_all()


def _candidate(folder, version, with_reference=False):
    """A candidate folder as finetune writes one (the shipped weights under a site version,
    a passing metrics.json, no predictions.csv, no monitor reference unless asked)."""
    folder.mkdir(parents=True)
    for n in ("model.safetensors", "ood.safetensors") + (("monitor_reference.json",) if with_reference else ()):
        shutil.copy(SHIPPED / n, folder / n)
    card = json.loads((SHIPPED / "model.json").read_text())
    card["version"] = version
    card["training"] = {"base_version": "1.0.0"}
    (folder / "model.json").write_text(json.dumps(card))
    (folder / "metrics.json").write_text(json.dumps({"non_inferiority": {
        "metric": "AUC", "margin": 0.05, "comparisons": {"local_holdout": {"diff": 0.0, "diff_ci95": [-0.01, 0.01]}}}}))
    return folder


def _register(home, *versions_):
    from imaging_assist.monitoring import versions as V

    for v in versions_:
        V.register_candidate(MODEL, v, _candidate(home / v, v), "1.0.0", {})


# --------------------------------------------------------------------------- 2. rollback
def test_rollback_pops_a_stack_and_repromoting_the_active_version_changes_nothing(home):
    from imaging_assist.monitoring import versions as V

    _register(home, "1.0.0+site.1", "1.0.0+site.2")
    V.promote(MODEL, "1.0.0+site.1")
    r = V.promote(MODEL, "1.0.0+site.1")  # the command re-run
    assert r.get("unchanged") and "already the active version" in r["message"]
    V.rollback(MODEL)
    assert V.status(MODEL)["active"] is None  # was stuck on site.1 for ever
    with pytest.raises(UserError):
        V.rollback(MODEL)

    for v in ("1.0.0+site.1", "1.0.0+site.2", "1.0.0+site.1"):
        V.promote(MODEL, v)
    seen = []
    for _ in range(3):
        seen.append(V.rollback(MODEL)["active"])
    assert seen == ["1.0.0+site.2", "1.0.0+site.1", None]  # was a cycle 2, 1, 2, 1...


def test_a_state_file_without_a_stack_is_still_read_and_rolled_back(home):
    from imaging_assist.monitoring import versions as V

    _register(home, "1.0.0+site.1", "1.0.0+site.2")
    st = V.load_state()
    m = st[MODEL]
    m["history"] += [{"action": "promote", "version": "1.0.0+site.1", "previous": None},
                     {"action": "promote", "version": "1.0.0+site.1", "previous": "1.0.0+site.1"},
                     {"action": "promote", "version": "1.0.0+site.2", "previous": "1.0.0+site.1"}]
    m["active"] = "1.0.0+site.2"
    m.pop("stack", None)
    V.save_state(st)
    assert V.rollback(MODEL)["active"] == "1.0.0+site.1"
    assert V.rollback(MODEL)["active"] is None


# --------------------------------------------------------------------------- 5. tampering
def test_a_promoted_version_whose_files_changed_or_vanished_is_refused_in_one_line(home):
    from imaging_assist.models.registry import Registry
    from imaging_assist.monitoring import versions as V

    _register(home, "1.0.0+site.1")
    V.promote(MODEL, "1.0.0+site.1")
    assert Registry().get(MODEL).card.version == "1.0.0+site.1"
    cand = home / "1.0.0+site.1"
    # weights replaced AND the card's sha256 updated to match (the card alone cannot tell)
    w = cand / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-8] + b"\0" * 8)
    card = json.loads((cand / "model.json").read_text())
    card["weights"][0]["sha256"] = hashlib.sha256(w.read_bytes()).hexdigest()
    (cand / "model.json").write_text(json.dumps(card))
    with pytest.raises(UserError) as e:
        Registry().get(MODEL)
    assert "changed since it was measured" in str(e.value) and "\n" not in str(e.value)
    # only that model is refused: the others run, and the list says why this one does not
    reg = Registry()
    assert reg.get("us-breast").card.id == "us-breast"
    mine = [x for x in reg.entries() if x.card is not None and x.card.id == MODEL]
    assert mine and all(x.error and not x.runnable_without_prompt for x in mine)
    shutil.rmtree(cand)  # gone: not silently the shipped model under the promoted state
    with pytest.raises(UserError) as e:
        Registry().get(MODEL)
    assert "is missing" in str(e.value) and "rollback" in str(e.value)
    V.rollback(MODEL)
    assert Registry().get(MODEL).card.version == "1.0.0"


# --------------------------------------------------------------------------- 3. temperature
def test_fit_temperature_is_bounded_and_says_when_clamped():
    from imaging_assist import training as T

    lo = torch.tensor([[2., -1.], [1.5, -0.5], [-1., 1.], [-0.3, 2.]])
    info: dict = {}
    t = T.fit_temperature(lo, torch.tensor([0, 0, 1, 1]), info=info)
    assert t == 0.25 and info["clamped"] and info["fitted"] < 0.25 and info["bounds"] == [0.25, 10.0]
    info = {}
    rng = np.random.default_rng(0)
    y = torch.from_numpy(rng.integers(0, 2, 200))
    noisy = torch.from_numpy(rng.normal(size=(200, 2))).float() + torch.nn.functional.one_hot(y, 2) * 1.0
    t = T.fit_temperature(noisy, y, info=info)
    assert 0.25 < t < 10 and not info["clamped"]


# --------------------------------------------------------------------------- 7. cache
def test_preprocess_cache_reads_files_replaced_under_the_same_name(home):
    from imaging_assist import training as T
    from imaging_assist.models.registry import Registry

    card = Registry().get(MODEL).card
    films = [p for p, _ in in_distribution(4)]
    d = home / "local"
    d.mkdir()
    paths = [d / f"case{i}.png" for i in range(2)]
    for p, s in zip(paths, films[:2]):
        Image.open(s).convert("L").save(p)
    x1 = T.preprocess_all(card, paths, "t", cache=home / "c")
    for p, s in zip(paths, films[2:]):  # other films, inverted, saved under the same names
        Image.fromarray(255 - np.asarray(Image.open(s).convert("L"))).save(p)
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    x2 = T.preprocess_all(card, paths, "t", cache=home / "c")
    assert not torch.equal(x1, x2)
    assert torch.equal(x2, T.preprocess_all(card, paths, "t2", cache=home / "c2"))


# --------------------------------------------------------------------------- 6. feedback
def test_finetune_from_feedback_takes_the_newest_verdict_of_a_film(home):
    from imaging_assist.inference import RunOptions, read_image, run_model
    from imaging_assist.models.registry import Registry
    from imaging_assist.monitoring import feedback as FB
    from imaging_assist.monitoring.finetune import cases_from_feedback

    data = home / "films"
    data.mkdir()
    src = next(p for p, lab in in_distribution(20) if lab == "pneumonia")
    shutil.copy(src, data / "film.jpeg")
    m = Registry().load(MODEL)
    r1, r2 = (run_model(m, read_image(str(data / "film.jpeg")), RunOptions(device="cpu")).prediction_log_id
              for _ in range(2))
    FB.add_feedback(r2, "pneumonia", "agree")     # first: pneumonia (on the later run)
    FB.add_feedback(r1, "pneumonia", "disagree")  # later: normal (on the earlier run)
    assert [c["label"] for c in cases_from_feedback(MODEL, data, ["normal", "pneumonia"])] == ["normal"]
    FB.add_feedback(r2, "pneumonia", "unsure")    # newest: the reader is no longer sure
    assert cases_from_feedback(MODEL, data, ["normal", "pneumonia"]) == []


# --------------------------------------------------------------------------- 8. new log race
def _open_new_log(path, barrier, q):
    from imaging_assist.monitoring.log import PredictionLog

    barrier.wait()
    try:
        q.put(("ok", PredictionLog(path).schema_version))
    except Exception as e:  # noqa: BLE001
        q.put(("FAIL", f"{type(e).__name__}: {e}"))


def test_processes_creating_one_new_log_at_once_all_open_it(tmp_path):
    ctx = mp.get_context("spawn" if os.name == "nt" else "fork")
    bad = []
    for t in range(12):
        path = str(tmp_path / f"log{t}" / "predictions.sqlite")
        b, q = ctx.Barrier(3), ctx.Queue()
        ps = [ctx.Process(target=_open_new_log, args=(path, b, q)) for _ in range(3)]
        [p.start() for p in ps]
        res = [q.get(timeout=60) for _ in ps]
        [p.join() for p in ps]
        bad += [r for r in res if r[0] != "ok"]
    assert not bad, bad[:3]


# --------------------------------------------------------------------------- 1. monitor after promote
def test_monitor_after_promote_of_a_candidate_without_reference_still_alerts_and_says_why(home):
    from imaging_assist.inference import RunOptions, read_image, run_model
    from imaging_assist.models.registry import Registry
    from imaging_assist.monitoring import versions as V
    from imaging_assist.monitoring.drift import monitor
    from imaging_assist.monitoring.log import RUN_COLUMNS, open_log

    rid = run_model(Registry().load(MODEL), read_image(str(in_distribution(1)[0][0])),
                    RunOptions(device="cpu")).prediction_log_id
    row = open_log().run(rid)
    rows = []
    for i in range(40):  # clearly shifted inputs
        r = {k: row.get(k) for k in RUN_COLUMNS}
        r.update(time_unix=row["time_unix"] + 1 + i, ood_score=6 + i / 20, ood_flagged=1, int_mean=200.0 + i,
                 input_key=f"k{i}", patient_key=f"p{i}")
        rows.append(r)
    open_log().add_runs(rows)
    assert monitor(MODEL, window="41", record_alerts=False)["alerts"]
    _register(home, "1.0.0+site.1")
    V.promote(MODEL, "1.0.0+site.1")
    # runs of the promoted version (session 23: each version is compared with its own
    # reference; the 1.0.0 runs above are counted, not compared)
    open_log().add_runs([dict(r, model_version="1.0.0+site.1", time_unix=r["time_unix"] + 100) for r in rows])
    rep = monitor(MODEL, window="41", record_alerts=False)
    assert rep["alerts"], "no alerts after promote"
    notes = " ".join(rep["models"][0]["notes"])
    assert "no monitor reference of its own" in notes and "version 1.0.0" in notes
    assert rep["models"][0]["reference"]["own"] is False


# --------------------------------------------------------------------------- tiny real fine-tunes
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two tiny fine-tunes (24 inverted films of 24 patients, 1 epoch): the first from the
    shipped model, the second while the first is promoted."""
    import imaging_assist.training.core as C
    from imaging_assist.monitoring import versions as V
    from imaging_assist.monitoring.finetune import finetune

    home = tmp_path_factory.mktemp("tiny_finetune")
    mp_ = pytest.MonkeyPatch()
    mp_.setenv("IMAGING_ASSIST_DATA_DIR", str(home / "data"))
    mp_.setenv("IMAGING_ASSIST_CONFIG_DIR", str(home / "config"))
    mp_.setattr(C, "cache_dir", lambda: home / "cache")
    data, labels = shifted_local_set(home / "local", n=24)
    kw = dict(data=data, labels_csv=labels, epochs=1, replay=4, original_test_max=10)
    msgs1, msgs2 = [], []
    r1 = finetune(MODEL, home / "c1", log=msgs1.append, **kw)
    V.promote(MODEL, r1["version"], force_reason="test: fine-tune again from a promoted version")
    r2 = finetune(MODEL, home / "c2", log=msgs2.append, **kw)
    yield {"home": home, "r1": r1, "r2": r2, "msgs1": msgs1, "msgs2": msgs2}
    plog.close_all()
    mp_.undo()


def test_a_fine_tune_writes_the_candidates_own_monitor_reference_and_records_hashes(tiny):
    from imaging_assist.monitoring import versions as V

    r1 = tiny["r1"]
    ref = json.loads((tiny["home"] / "c1" / "monitor_reference.json").read_text())
    assert ref["model_version"] == r1["version"] and ref["n"] >= 4 and "validation and hold-out" in ref["data"]
    assert r1["monitor_reference"]["written"]
    sha = V.status(MODEL)["candidates"][r1["version"]]["sha256"]
    assert {"model.json", "metrics.json", "model.safetensors", "ood.safetensors"} <= set(sha)


def test_a_fine_tune_states_its_temperature_bounds(tiny):
    for r in (tiny["r1"], tiny["r2"]):
        t = r["training"]
        assert t["temperature_bounds"] == [0.25, 10.0] and 0.25 <= t["temperature"] <= 10
        if t["temperature_clamped"]:
            assert any("temperature clamped" in m for m in tiny["msgs1"] + tiny["msgs2"])


def test_a_fine_tune_from_a_promoted_version_keeps_the_original_test_and_replay(tiny):
    r2 = tiny["r2"]
    assert r2["base_version"] == tiny["r1"]["version"]
    assert "original_test" in r2["comparisons"], tiny["msgs2"]
    assert r2["training"]["replay_images"] == 4
    assert not any("not found" in m for m in tiny["msgs2"])


# --------------------------------------------------------------------------- 9. smaller items
def test_a_left_right_swap_correction_is_not_scored_as_untouched(home):
    from imaging_assist.monitoring import feedback as FB
    from imaging_assist.monitoring.log import open_log

    rid = open_log().add_run({"time_utc": "2026-12-07T00:00:00+00:00", "time_unix": 0.0, "model_id": "cxr-lung-seg",
                              "task": "segmentation", "slices": 1, "rows": 64, "cols": 64,
                              "areas": '{"voxel_counts":{"right lung":400,"left lung":400}}'})
    pred = np.zeros((1, 64, 64), np.uint8)
    pred[0, 10:30, 5:25], pred[0, 10:30, 35:55] = 2, 1  # sides swapped
    corr = np.zeros_like(pred)
    corr[0, 10:30, 5:25], corr[0, 10:30, 35:55] = 1, 2
    r = FB.save_correction(rid, corr, ["background", "right lung", "left lung"], predicted=pred, write_dicom=False)
    assert r["dice_vs_prediction"] == 0.0
    r = FB.save_correction(rid, pred, ["background", "right lung", "left lung"], predicted=pred, write_dicom=False)
    assert r["dice_vs_prediction"] == 1.0


def test_the_finetune_audit_event_names_the_folder_as_a_path(home, monkeypatch):
    """The event detail finish_candidate registers (audited as model_finetune): its absolute
    folder under a key the audit trail pseudonymises (``*_path``), not a plain ``folder``."""
    from imaging_assist.monitoring import finetune as FT
    from imaging_assist.monitoring import versions as V
    from imaging_assist.privacy import audit

    seen = []
    cand = _candidate(home / "c", "1.0.0+site.1")
    monkeypatch.setattr(V, "register_candidate", lambda *a: seen.append(("register", a[4])))

    class Card:  # the parts finish_candidate reads
        id, version, name = MODEL, "1.0.0", "x"
        raw = json.loads((SHIPPED / "model.json").read_text())

    monkeypatch.setattr("imaging_assist.models.build.save_model_folder", lambda out, raw, net: None)
    FT.finish_candidate(Card, cand, {"training": {}}, None, {"local_holdout": {"diff": 0.0, "diff_ci95": [-0.01, 0.01]}},
                        {"metric": "AUC", "margin": 0.05}, None, 3, ["file"], [], log=lambda s: None)
    detail = dict(seen)["register"]
    assert "folder" not in detail and audit._kind_of("folder_path") == "path"
    assert detail["folder_path"] == str(cand.resolve())
