"""Retrain -> validate -> promote -> rollback (issue 18) on real films.  A fine-tune on a
deliberately shifted local set (inverted films of patients the model never saw) improves the
local hold-out and stays non-inferior on the original test split; a candidate trained on
swapped labels is worse and promote refuses it (unless forced, with a reason); the registry
then resolves the promoted version; rollback returns to the shipped one.  Shipped weights are
never written."""

from __future__ import annotations

import hashlib

import pytest

from _monitor_stream import ROOT, shifted_local_set
from imaging_assist.cli.main import main
from imaging_assist.monitoring import log as plog

SHIPPED = ROOT / "weights" / "cxr-pneumonia"
KW = dict(epochs=6, replay=60, original_test_max=150)


def _sha(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    home = tmp_path_factory.mktemp("finetune_home")
    mp = pytest.MonkeyPatch()
    mp.setenv("IMAGING_ASSIST_DATA_DIR", str(home / "data"))
    mp.setenv("IMAGING_ASSIST_CONFIG_DIR", str(home / "config"))
    before = _sha(SHIPPED)
    good = shifted_local_set(home / "local")
    bad = shifted_local_set(home / "local_swapped", n=80, flip_labels=True, invert=False)
    yield {"home": home, "good": good, "bad": bad, "before": before}
    plog.close_all()
    mp.undo()


@pytest.mark.slow
def test_finetune_improves_the_shifted_local_holdout_and_promote_refuses_a_worse_one(site, capsys):
    from imaging_assist.models.registry import Registry
    from imaging_assist.monitoring import versions
    from imaging_assist.monitoring.finetune import finetune

    home = site["home"]
    data, labels = site["good"]
    r = finetune("cxr-pneumonia", home / "cand_good", data=data, labels_csv=labels, **KW)
    assert r["version"] == "1.0.0+site.1"
    h = r["comparisons"]["local_holdout"]
    assert h["candidate"]["auc"] > h["base"]["auc"] + 0.1, h
    assert h["diff_ci95"][0] > 0  # the improvement's 95% interval excludes none
    assert h["base"]["auc_ci95"][0] <= h["base"]["auc"] <= h["base"]["auc_ci95"][1]
    assert "original_test" in r["comparisons"] and r["non_inferiority"]["passes"], r["non_inferiority"]
    # the candidate is a model folder of its own, with a card, refitted OOD statistics, metrics
    cand = Registry().get(str(home / "cand_good")).card
    assert cand.version == "1.0.0+site.1" and cand.id == "cxr-pneumonia"
    assert cand.ood["sha256"] != Registry().get("cxr-pneumonia").card.ood["sha256"]
    # its statistics name the candidate's weights (session 24): loaded without a warning
    from imaging_assist.validation import ood as O

    assert O.load_stats(cand).weights_sha256 == cand.weights[0].sha256
    assert (home / "cand_good" / "holdout.csv").is_file()

    # a candidate trained on swapped labels of ordinary films (no replay): worse on the original
    # test split, refused
    data_b, labels_b = site["bad"]
    rb = finetune("cxr-pneumonia", home / "cand_bad", data=data_b, labels_csv=labels_b, **{**KW, "replay": 0})
    assert rb["version"] == "1.0.0+site.2"
    assert not rb["non_inferiority"]["passes"]
    ob = rb["comparisons"]["original_test"]
    assert ob["diff_ci95"][0] < -0.05 and ob["candidate"]["auc"] < ob["base"]["auc"]
    capsys.readouterr()
    assert main(["models", "promote", "cxr-pneumonia", "1.0.0+site.2"]) == 2
    assert "not promoted" in capsys.readouterr().err
    assert Registry().get("cxr-pneumonia").card.version == "1.0.0"

    # the good one is promoted; every caller of the registry now gets it
    assert main(["models", "promote", "cxr-pneumonia", "1.0.0+site.1"]) == 0
    e = Registry().get("cxr-pneumonia")
    assert e.card.version == "1.0.0+site.1" and e.source == "promoted"
    # forced promotion of the worse one needs a reason, and says so
    assert main(["models", "promote", "cxr-pneumonia", "1.0.0+site.2", "--force", "test of the override"]) == 0
    assert "FORCED" in capsys.readouterr().out
    assert Registry().get("cxr-pneumonia").card.version == "1.0.0+site.2"
    # rollback: to the previous active version, then to the shipped one
    assert main(["models", "rollback", "cxr-pneumonia"]) == 0
    assert Registry().get("cxr-pneumonia").card.version == "1.0.0+site.1"
    assert main(["models", "rollback", "cxr-pneumonia"]) == 0
    assert Registry().get("cxr-pneumonia").card.version == "1.0.0"
    assert main(["models", "rollback", "cxr-pneumonia"]) == 2
    kinds = [ev["kind"] for ev in plog.open_log().events(model_id="cxr-pneumonia")]
    assert kinds.count("finetune") == 2 and "promote_refused" in kinds and kinds.count("rollback") == 2
    assert versions.status("cxr-pneumonia")["active"] is None
    assert _sha(SHIPPED) == site["before"]  # shipped weights never written


@pytest.mark.slow
def test_models_compare_on_the_same_holdout(site, capsys):
    import json

    capsys.readouterr()
    assert main(["models", "compare", "cxr-pneumonia", "1.0.0", "1.0.0+site.1", "--json"]) == 0
    c = json.loads(capsys.readouterr().out)["comparison"]
    assert c["candidate"]["auc"] > c["base"]["auc"]
    assert c["n"] == sum(1 for _ in open(site["home"] / "cand_good" / "holdout.csv")) - 1
    assert main(["models", "compare", "cxr-pneumonia", "1.0.0", "9.9.9"]) == 2
