"""Two fine-tunes of one model run at once both took "1.0.0+site.1" at their start; the second
registration replaced the first (its folder lost from the state, "site.1" now the other model).
The later one is renumbered under the state's lock, in its card, metrics and monitor reference,
and both stay registered, each tied to its own files."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import ROOT

SHIPPED = ROOT / "weights" / "cxr-pneumonia"
MODEL = "cxr-pneumonia"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path


def _candidate(folder, version, mark):
    """A candidate folder as ``finish_candidate`` leaves it before registering (``mark`` tells
    the two apart)."""
    folder.mkdir(parents=True)
    for n in ("model.safetensors", "ood.safetensors"):
        shutil.copy(SHIPPED / n, folder / n)
    card = json.loads((SHIPPED / "model.json").read_text())
    card.update(version=version, name=f"{card['name']} — site fine-tune {version}",
                training={"base_version": "1.0.0", "mark": mark},
                data={**card.get("data", {}), "fine_tuning": mark,
                      "fine_tuning_history": [{"version": version, "base_version": "1.0.0", "description": mark}]})
    (folder / "model.json").write_text(json.dumps(card))
    (folder / "metrics.json").write_text(json.dumps({"model_id": MODEL, "version": version, "mark": mark,
                                                     "non_inferiority": {
        "metric": "AUC", "margin": 0.05, "comparisons": {"local_holdout": {"diff": 0.0, "diff_ci95": [-0.01, 0.01]}}}}))
    (folder / "monitor_reference.json").write_text(json.dumps({"model_id": MODEL, "model_version": version}))
    return folder


def test_two_fine_tunes_that_took_the_same_version_both_stay_registered(home):
    from imaging_assist.models.registry import Registry
    from imaging_assist.monitoring import versions as V

    v = V.next_version(MODEL, "1.0.0")
    assert v == "1.0.0+site.1"
    a = _candidate(home / "a", v, "first")
    b = _candidate(home / "b", v, "second")  # started before `a` was registered: the same number
    assert V.register_candidate(MODEL, v, a, "1.0.0", {}) == v
    got = V.register_candidate(MODEL, v, b, "1.0.0", {})
    assert got == "1.0.0+site.2"
    cands = V.load_state()[MODEL]["candidates"]
    assert cands[v]["folder"] == str(a.resolve()) and cands[got]["folder"] == str(b.resolve())
    card_b = json.loads((b / "model.json").read_text())
    assert card_b["version"] == got and card_b["name"].endswith(f"site fine-tune {got}")
    assert card_b["data"]["fine_tuning_history"][-1]["version"] == got
    assert json.loads((b / "metrics.json").read_text())["version"] == got
    assert json.loads((b / "monitor_reference.json").read_text())["model_version"] == got
    assert json.loads((a / "model.json").read_text())["version"] == v  # the first left as it was
    # each is tied to its own files: promoting either runs that one, under its own version
    for version, folder, mark in ((v, a, "first"), (got, b, "second")):
        V.check_candidate(MODEL, version, cands[version])
        V.promote(MODEL, version)
        e = Registry().get(MODEL)
        assert e.folder == folder.resolve() and e.card.version == version
        assert json.loads((e.folder / "metrics.json").read_text())["mark"] == mark
    # registering a folder again under its own version is not a collision
    assert V.register_candidate(MODEL, v, a, "1.0.0", {}) == v
