"""Several inputs through one forward pass (issue 19, "batches from the card"):
``run_model_many`` gives each input ``run_model``'s own result, the batch engines use it, and
their audit events are appended once per chunk (``audit.grouped``)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import DICOM, SHARED, need

from imaging_assist.explain.methods import ExplainConfig
from imaging_assist.inference.images import read_image
from imaging_assist.inference.options import InputError
from imaging_assist.inference.pipelines import RunOptions, run_model, run_model_many
from imaging_assist.models.loaders import load_model
from imaging_assist.models.registry import Registry
from imaging_assist.privacy import audit

PNEUMONIA = SHARED / "cxr" / "pneumonia_kermany"


def _films(n: int) -> list[Path]:
    rows = need(PNEUMONIA / "labels.csv").read_text().splitlines()[1:]
    return [PNEUMONIA / r.split(",")[0] for r in rows[:n]]


@pytest.fixture(scope="module")
def model():
    return load_model(Registry().get("cxr-pneumonia").card, "cpu")


def _nan_volume():
    v = read_image(_films(1)[0])
    v.array = v.array.astype(np.float32)
    v.array[0, 5, 5] = np.nan
    return v


def _count_passes(net):
    calls = []
    h = net.register_forward_hook(lambda m, i, o: calls.append(int(i[0].shape[0])))
    return calls, h


def test_each_result_equals_its_own_run_and_a_bad_input_keeps_its_error(model, tmp_path):
    from PIL import Image

    from imaging_assist.dicom import load_series, scan

    Image.open(_films(7)[6]).resize((300, 260)).save(tmp_path / "bigger.png")
    films = [read_image(f) for f in _films(5)] + [read_image(tmp_path / "bigger.png")]
    assert len({v.array.shape for v in films}) > 1  # films of different sizes share one pass
    idx = scan(need(DICOM / "cr_chest_monochrome1_fuji"))
    cr = load_series([s for p in idx.patients for st in p.studies for s in st.series][0])
    vols = films[:3] + [_nan_volume(), cr] + films[3:]
    opts = RunOptions(device="cpu")
    alone = [run_model(model, v, opts) if k != 3 else None for k, v in enumerate(vols)]
    calls, h = _count_passes(model.network)
    try:
        many = run_model_many(model, vols, opts, batch=4)
    finally:
        h.remove()
    assert calls == [4, 3], calls  # 7 good images, 4 at a time
    assert isinstance(many[3], InputError) and "NaN" in str(many[3])
    for k, (a, b) in enumerate(zip(alone, many)):
        if k == 3:
            continue
        assert b.batched == 4 if k < 5 else b.batched == 3
        for lab in a.probabilities:
            assert abs(a.probabilities[lab] - b.probabilities[lab]) < 1e-5, (k, lab)
        assert {lab: d and d.get("positive") for lab, d in a.decisions.items()} == \
            {lab: d and d.get("positive") for lab, d in b.decisions.items()}
        assert a.ood["flagged"] == b.ood["flagged"]
        assert b.ood["score"] == pytest.approx(a.ood["score"], rel=1e-4, abs=1e-4)
        assert a.warnings == b.warnings and a.source == b.source and a.shape == b.shape
        da, db = a.to_dict(), b.to_dict()
        assert "batched" not in da and db["batched"] == b.batched
    # the card's batch size when none is given; one volume runs alone
    calls, h = _count_passes(model.network)
    try:
        res = run_model_many(model, films, opts)
        one = run_model_many(model, films[:1], opts)
    finally:
        h.remove()
    assert model.card.inference["batch_size"] == 16 and calls == [6, 1], calls
    assert [r.batched for r in res] == [6] * 6 and one[0].batched == 0


def test_explanations_of_a_shared_pass_equal_their_own(model):
    films = [read_image(f) for f in _films(2)]
    opts = RunOptions(device="cpu", explain=ExplainConfig("gradcam", faithfulness=False))
    alone = [run_model(model, v, opts) for v in films]
    many = run_model_many(model, films, opts)
    for a, b in zip(alone, many):
        assert [h.label for h in a.heatmaps] == [h.label for h in b.heatmaps]
        for ha, hb in zip(a.heatmaps, b.heatmaps):
            np.testing.assert_allclose(ha.array, hb.array, atol=1e-5)


def test_each_run_of_a_shared_pass_is_logged_and_audited(model, tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    films = [read_image(f) for f in _films(3)]
    before = len(audit.read_entries()) if audit.log_path().exists() else 0
    run_model_many(model, films, RunOptions(device="cpu"))
    runs = [e for e in audit.read_entries()[before:] if e and e["event"] == "model.run"]
    assert len(runs) == 3 and audit.verify()[0]


# --------------------------------------------------------------------------- audit.grouped
def test_grouped_events_are_one_append_in_order_with_their_own_times(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    appends = []
    real = audit._append
    monkeypatch.setattr(audit, "_append", lambda evs: (appends.append(len(evs)), real(evs)))
    with audit.grouped():
        for i in range(5):
            assert audit.record("test.event", i=i, patient_id=f"P{i}")
        t = threading.Thread(target=audit.record, args=("test.thread",), kwargs={"i": 99})
        t.start()
        t.join()
        with audit.grouped():  # inside another: adds to the outer block
            audit.record("test.inner", i=6)
        assert appends == [] and not audit.log_path().exists()
    assert appends == [7]
    entries = audit.read_entries()
    assert [e["fields"].get("i") for e in entries] == [0, 1, 2, 3, 4, 99, 6]
    times = [e["time"] for e in entries]
    assert times == sorted(times) and len(set(times)) == 7  # when each happened, not one time
    assert "P0" not in audit.log_path().read_text()  # pseudonymised as ever
    assert audit.verify()[0]
    audit.record("test.after")  # outside a block: written at once
    assert appends == [7, 1]


def test_a_group_that_cannot_be_written_is_one_warning_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))

    def full(_evs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audit, "_append", full)
    audit._warned.clear()
    with caplog.at_level("WARNING", logger="imaging_assist.audit"):
        with audit.grouped():
            audit.record("model.run", i=1)
            audit.record("study.open", i=2)
    msgs = [r.getMessage() for r in caplog.records if r.name == "imaging_assist.audit"]
    assert len(msgs) == 1 and "'model.run', 'study.open' not recorded" in msgs[0], msgs
    assert "No space left" in msgs[0] and "\n" not in msgs[0]


def _hold_events_then_wait(home: str, ready) -> None:
    """A batch worker inside a chunk: events held by audit.grouped, then stopped."""
    import os
    import time

    os.environ["IMAGING_ASSIST_DATA_DIR"] = home + "/data"
    os.environ["IMAGING_ASSIST_CONFIG_DIR"] = home + "/config"
    from imaging_assist.batch.engines import flush_audit_on_sigterm

    flush_audit_on_sigterm()
    with audit.grouped():
        for i in range(3):
            audit.record("model.run", i=i)
        ready.set()
        time.sleep(120)


def _announce_hold_then_wait(home: str, ready) -> None:
    """A batch worker that named its chunk's inputs ahead, then holds the chunk's events."""
    import os
    import time

    os.environ["IMAGING_ASSIST_DATA_DIR"] = home + "/data"
    os.environ["IMAGING_ASSIST_CONFIG_DIR"] = home + "/config"
    with audit.grouped():
        audit.record_ahead("batch.chunk", [{"paths": ["/data/a.png", "/data/b.png"], "items": 2}])
        audit.record("study.open", path="/data/a.png")
        ready.set()
        time.sleep(120)


def _stop_worker(target, tmp_path, monkeypatch, how: str, held: bool = False) -> int:
    """Start ``target`` in a spawned process on this test's data and config folders (the site
    key), wait until it holds its events, stop it with ``how`` (terminate / kill): exit code."""
    import multiprocessing as mp

    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "config"))
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=target, args=(str(tmp_path), ready))
    p.start()
    try:
        assert ready.wait(120)
        if held:
            assert not audit.log_path().exists()  # held, not written yet
        getattr(p, how)()
        p.join(30)
    finally:
        if p.is_alive():
            p.kill()
    return p.exitcode


def test_a_worker_killed_outright_mid_chunk_leaves_the_chunks_inputs_in_the_trail(tmp_path, monkeypatch):
    """SIGKILL (or a power loss) mid-chunk loses the held events, not the line written ahead
    that names what the chunk read."""
    assert _stop_worker(_announce_hold_then_wait, tmp_path, monkeypatch, "kill") == -9
    entries = audit.read_entries()
    assert [e["event"] for e in entries] == ["batch.chunk"], entries
    assert entries[0]["fields"]["paths"] == [audit.pseudonym(x, "path") for x in ("/data/a.png", "/data/b.png")]
    assert audit.verify()[0], audit.verify()


def test_a_worker_stopped_inside_a_chunk_still_appends_its_held_events(tmp_path, monkeypatch):
    """The local engine stops its workers with SIGTERM on Ctrl-C: the chunk's held events are
    appended first, and the worker exits as SIGTERM would have (143)."""
    assert _stop_worker(_hold_events_then_wait, tmp_path, monkeypatch, "terminate", held=True) == 143
    entries = audit.read_entries()
    assert [e["fields"]["i"] for e in entries] == [0, 1, 2]
    assert audit.verify()[0], audit.verify()


def test_a_batch_chunk_is_batched_and_its_rows_follow_its_audit_lines(tmp_path, monkeypatch):
    """The engines' chunk (Pipeline.run_units, what a worker process or actor runs): the
    films share forward passes, and the audit lines are written before the rows return."""
    import shutil

    from imaging_assist.batch.engines import Pipeline
    from imaging_assist.batch.item import Settings
    from imaging_assist.batch.sources import collect

    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    src = tmp_path / "films"
    src.mkdir()
    for f in _films(5):
        shutil.copy(f, src / f.name)
    (src / "zz_broken.jpeg").write_bytes(_films(1)[0].read_bytes()[:300])
    card = Registry().get("cxr-pneumonia").card
    cands = collect([str(src)], [card])[0]
    pipe = Pipeline(["cxr-pneumonia"], Settings(out_dir=str(tmp_path / "out"), torch_threads=1,
                                                batch_size=4))
    appended = []
    real = audit._append
    monkeypatch.setattr(audit, "_append", lambda evs: (appended.append([e[0] for e in evs]), real(evs)))
    try:
        rows = pipe.run_units([(c, ["cxr-pneumonia"]) for c in cands])
    finally:
        pipe.close()
    assert sorted(r["status"] for r in rows) == ["failed"] + ["ok"] * 5
    assert [r["stem"] for r in rows] == [c.stem for c in cands]  # in order
    batched = [json.loads(Path(r["results_json"]).read_text())["items"][0].get("batched")
               for r in rows if r["status"] == "ok"]
    # 4 films in one pass; the fifth and the broken file make the last group: the film alone
    assert [r["stem"] for r in rows][-1] == "zz_broken" and batched == [4, 4, 4, 4, None], batched
    # the chunk's inputs first, written at once; then the chunk's own events in one append
    assert len(appended) == 2 and appended[0] == ["batch.chunk"], appended
    assert appended[1].count("model.run") == 5, appended
    (chunk,) = [e for e in audit.read_entries() if e["event"] == "batch.chunk"]
    f = chunk["fields"]
    assert f["items"] == 6 and f["models"] == ["cxr-pneumonia"] and f["series_uids"] == []
    assert f["paths"] == [audit.pseudonym(str(c.payload), "path") for c in cands], f


def test_a_group_of_items_is_cut_short_by_the_bytes_of_its_pixels(tmp_path, monkeypatch):
    """Full-size radiographs must not multiply a worker's memory by the batch size: the group
    waiting for a shared pass stops at GROUP_MAX_BYTES of decoded pixels."""
    import shutil

    from imaging_assist.batch import engines
    from imaging_assist.batch.engines import Pipeline
    from imaging_assist.batch.item import Settings
    from imaging_assist.batch.sources import collect

    src = tmp_path / "films"
    src.mkdir()
    for f in _films(7):
        shutil.copy(f, src / f.name)
    one = read_image(_films(1)[0]).array.nbytes
    monkeypatch.setattr(engines, "GROUP_MAX_BYTES", 3 * one)  # 224-px films: 3 to a group
    cands = collect([str(src)], [Registry().get("cxr-pneumonia").card])[0]
    pipe = Pipeline(["cxr-pneumonia"], Settings(out_dir=str(tmp_path / "out"), torch_threads=1))
    try:
        rows = pipe.run_units([(c, ["cxr-pneumonia"]) for c in cands])
    finally:
        pipe.close()
    batched = [json.loads(Path(r["results_json"]).read_text())["items"][0].get("batched") for r in rows]
    assert pipe.group == 16 and batched == [3, 3, 3, 3, 3, 3, None], batched
