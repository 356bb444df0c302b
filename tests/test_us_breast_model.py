"""The shipped ``us-breast`` model (benign / malignant / normal on BUSI breast ultrasound).

Loaded through the registry with its sha256 verified; run by the app's own pipeline on BUSI
test-split images (it must reproduce the probabilities stored by training); every number of
the card and its group-clustered 95% CI is recomputed from ``predictions.csv``; the split is
checked for leaks: no near-duplicate group (``near_duplicate_groups.csv``) spans two splits.
Shipped weights are in the repository: a missing model FAILS, never skips.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import SHARED, need
from imaging_assist import evaluation as E
from imaging_assist.models.registry import project_weights_dir

MODEL_ID = "us-breast"
FOLDER = project_weights_dir() / MODEL_ID
LABELS = ["benign", "malignant", "normal"]
BUSI = SHARED / "ultrasound" / "breast_busi"

GROUPS = FOLDER / "near_duplicate_groups.csv"
PROB_TOL = 0.03  # stored vs today's probability on any machine, bf16 included (test_shipped_models.PROB_TOL)
CARD_TOL = 6e-5  # card values have 4 decimals


def test_shipped():
    assert (FOLDER / "model.json").is_file(), "us-breast is shipped in weights/: missing is a failure"


def _card() -> dict:
    return json.loads((FOLDER / "model.json").read_text())


def _predictions(split: str | None = None) -> list[dict]:
    with (FOLDER / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return [r for r in rows if split is None or r["split"] == split]


def _arrays(rows):
    y = np.array([LABELS.index(r["label"]) for r in rows])
    p = np.array([[float(r[f"p_{lab}"]) for lab in LABELS] for r in rows])
    return y, p


def _metric(card, name, split, label=None):
    found = [m for m in card["metrics"] if m["name"] == name and m.get("label") == label
             and m["data"].startswith(split)]
    assert len(found) == 1, (name, split, label, found)
    return found[0]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    from imaging_assist.models.loaders import sha256_file
    from imaging_assist.models.registry import Registry

    with pytest.MonkeyPatch.context() as mp:  # never the user's model folders
        mp.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path_factory.mktemp("cfg")))
        reg = Registry()
        entry = reg.get(MODEL_ID)
        assert entry.source == "project" and entry.folder == FOLDER
        reg.verify_entry(entry)
        assert entry.verified, [v.to_dict() for v in entry.verify]
        model = reg.load(MODEL_ID)
    card = _card()
    (w,) = card["weights"]
    assert model.hashes[w["file"]] == w["sha256"] == sha256_file(FOLDER / w["file"])
    return model


def test_card_describes_the_model(loaded):
    card = loaded.card
    raw = _card()
    assert card.task == "classification" and list(card.labels) == LABELS
    assert card.modality == ["US"] and card.spatial_dims == 2
    assert raw["input"]["channels"] == 1 and raw["input"]["size"] == [224, 224]
    assert raw["architecture"]["library"] == "monai" and raw["architecture"]["name"] == "ResNet"
    assert raw["gradcam_layer"] in dict(loaded.network.named_modules())
    assert raw["not_for_clinical_use"] is True
    assert "patient" in raw["data"]["split_rule"] and "optimistic" in raw["data"]["split_rule"]
    assert any("patient" in t for t in raw["limitations"])
    assert (FOLDER / "model.safetensors").stat().st_size < 50 * 2 ** 20


def test_runs_on_busi_test_images_and_reproduces_stored_probabilities(loaded):
    from imaging_assist.inference.images import read_image
    from imaging_assist.inference.pipelines import RunOptions, run_model

    rows = _predictions("test")
    picks = [next(r for r in rows if r["label"] == lab) for lab in LABELS] + [rows[-1]]
    thr = _card()["thresholds"]["malignant"]["threshold"]
    for r in picks:
        vol = read_image(need(BUSI / r["file"]))
        res = run_model(loaded, vol, RunOptions(device="cpu"))
        assert res.shape == vol.array.shape[:3] and res.shape[0] == 1
        p = res.probabilities
        assert list(p) == LABELS
        assert all(0.0 <= v <= 1.0 for v in p.values())
        assert sum(p.values()) == pytest.approx(1.0, abs=1e-5)
        for lab in LABELS:  # the app's preprocessing is the training preprocessing
            assert p[lab] == pytest.approx(float(r[f"p_{lab}"]), abs=PROB_TOL), (r["file"], lab)
        assert res.decisions["benign"] is None and res.decisions["normal"] is None
        assert res.decisions["malignant"]["positive"] == (p["malignant"] >= thr)


def test_metrics_json_matches_the_card():
    card = _card()
    mj = json.loads((FOLDER / "metrics.json").read_text())
    assert mj["metrics"] == card["metrics"]
    assert mj["threshold"] == card["thresholds"]["malignant"]
    n_test = len(_predictions("test"))
    for name, label in [("macro AUC", None), ("accuracy", None), ("ECE", None)] + \
            [("AUC", lab) for lab in LABELS]:
        m = _metric(card, name, "test", label)
        assert m["n"] == n_test
        assert m["ci95"][1] - m["ci95"][0] > 0  # a real bootstrap interval
    assert mj["details"]["test"]["macro_auc"] == pytest.approx(_metric(card, "macro AUC", "test")["value"], abs=6e-5)
    assert "cluster bootstrap" in card["metrics_ci"] and "group" in card["metrics_ci"]


def test_test_cis_are_group_clustered_bootstraps_recomputed_from_predictions():
    """The card's test intervals are the cluster bootstrap over near-duplicate groups with the
    script's seeds (scripts/train_us_breast.py), recomputed here from predictions.csv."""
    card = _card()
    rows = _predictions("test")
    y, p = _arrays(rows)
    g = np.array([r["group"] for r in rows])
    assert len(set(g)) < len(g)  # there are groups of several images in the test split
    thr = card["thresholds"]["malignant"]["threshold"]

    def acc(a, b):
        return float((b.argmax(1) == a).mean())

    expect = {("macro AUC", None): E.bootstrap_ci(lambda a, b: E.macro_auc(a, b)[0], y, p, clusters=g, strata=y,
                                                  seed=1),
              ("accuracy", None): E.bootstrap_ci(acc, y, p, clusters=g, strata=y, seed=2),
              ("ECE", None): E.bootstrap_ci(lambda a, b: E.top_label_ece(a, b).ece, y, p, clusters=g, seed=3,
                                            n_boot=500)}
    for c, lab in enumerate(LABELS):
        expect[("AUC", lab)] = E.bootstrap_ci(E.roc_auc, y == c, p[:, c], clusters=g, strata=y, seed=10 + c)
    se_ci, sp_ci, how = E.sens_spec_ci(y == 1, p[:, 1], thr, clusters=g, seed=4)
    expect[("sensitivity", "malignant")], expect[("specificity", "malignant")] = se_ci, sp_ci
    for (name, lab), ci in expect.items():
        m = _metric(card, name, "test", lab)
        # 2e-4: probabilities are stored to 6 decimals, the script bootstrapped unrounded ones
        assert ci == pytest.approx(tuple(m["ci95"]), abs=2e-4), (name, lab, ci, m)


def test_test_metrics_recomputed_from_predictions():
    card = _card()
    mj = json.loads((FOLDER / "metrics.json").read_text())
    y, p = _arrays(_predictions("test"))
    assert np.allclose(p.sum(1), 1.0, atol=1e-5)
    mauc, per = E.macro_auc(y, p)
    assert mauc == pytest.approx(_metric(card, "macro AUC", "test")["value"], abs=6e-5)
    assert mauc == pytest.approx(np.mean(per), abs=1e-12)
    for k, lab in enumerate(LABELS):
        assert per[k] == pytest.approx(_metric(card, "AUC", "test", lab)["value"], abs=6e-5)
    acc = float((p.argmax(1) == y).mean())
    assert acc == pytest.approx(_metric(card, "accuracy", "test")["value"], abs=CARD_TOL)
    ece = E.top_label_ece(y, p).ece
    assert ece == pytest.approx(_metric(card, "ECE", "test")["value"], abs=6e-5)
    cm = E.confusion_matrix(y, p.argmax(1), 3)
    assert cm == mj["details"]["test"]["confusion_matrix"]["rows_true_cols_predicted_argmax"]
    assert np.trace(np.array(cm)) == round(acc * len(y))
    thr = card["thresholds"]["malignant"]["threshold"]
    se, sp = E.sens_spec(y == 1, p[:, 1], thr)
    assert se == pytest.approx(_metric(card, "sensitivity", "test", "malignant")["value"], abs=6e-5)
    assert sp == pytest.approx(_metric(card, "specificity", "test", "malignant")["value"], abs=6e-5)


def test_operating_threshold_reproduced_on_validation():
    t = _card()["thresholds"]["malignant"]
    y, p = _arrays(_predictions("validation"))
    se, sp = E.sens_spec(y == 1, p[:, 1], t["threshold"])
    assert se >= 0.90
    assert se == pytest.approx(t["sensitivity"], abs=6e-5)
    assert sp == pytest.approx(t["specificity"], abs=6e-5)


def test_split_is_stratified_and_disjoint():
    card = _card()
    splits = card["data"]["splits"]
    with (need(BUSI / "labels.csv")).open() as fh:
        data = {r["file"]: r["label"] for r in csv.DictReader(fh)}
    rows = _predictions()
    files = [r["file"] for r in rows]
    assert len(files) == len(set(files))  # no image in both validation and test
    assert all(data[r["file"]] == r["label"] for r in rows)
    assert sum(s["images"] for s in splits.values()) == len(data)
    for name in ("validation", "test"):
        got = [r["label"] for r in rows if r["split"] == name]
        assert len(got) == splits[name]["images"]
        for lab in LABELS:
            assert got.count(lab) == splits[name][lab]
    for lab in LABELS:  # 70/15/15 per class (whole groups move: a few % off)
        total = sum(1 for v in data.values() if v == lab)
        assert abs(splits["train"][lab] / total - 0.70) < 0.05
        assert abs(splits["test"][lab] / total - 0.15) < 0.03


def test_no_near_duplicate_group_spans_two_splits():
    """Split by near-duplicate group: the cached grouping covers every BUSI image, the
    predictions carry each image's group, and no group is in two splits (training = the
    images not in predictions.csv)."""
    card = _card()
    with (need(BUSI / "labels.csv")).open() as fh:
        data = [r["file"] for r in csv.DictReader(fh)]
    grp = {r["file"]: r["group"] for r in csv.DictReader(GROUPS.open())}
    assert list(grp) == data
    split = {f: "train" for f in data}
    for r in _predictions():
        assert r["group"] == grp[r["file"]]
        split[r["file"]] = r["split"]
    by_group: dict[str, set] = {}
    for f, gname in grp.items():
        by_group.setdefault(gname, set()).add(split[f])
    assert all(len(s) == 1 for s in by_group.values()), {k: v for k, v in by_group.items() if len(v) > 1}
    nd = card["data"]["near_duplicates"]
    assert nd["groups"] == len(by_group) and nd["images"] == len(data)
    assert nd["groups_with_more_than_one_image"] == sum(
        1 for gname in by_group if sum(1 for v in grp.values() if v == gname) > 1)
    assert f"{nd['groups']} near-duplicate groups" in card["data"]["split_rule"]
    for name in ("train", "validation", "test"):
        assert card["data"]["splits"][name]["groups"] == sum(1 for s in by_group.values() if s == {name})


def test_cached_grouping_is_what_the_grouper_finds():
    """A few cached pairs and single images regrouped with the script's parameters give the
    same partition (the full grouping takes minutes and is cached in the model folder)."""
    import sys
    from collections import Counter

    from PIL import Image

    from imaging_assist.near_duplicates import group_near_duplicates

    sys.path.insert(0, str(FOLDER.parents[1] / "scripts"))
    from train_us_breast import GROUPING

    grp = {r["file"]: r["group"] for r in csv.DictReader(GROUPS.open())}
    size = Counter(grp.values())
    pairs = sorted(g for g, n in size.items() if n == 2)[:3]
    singles = sorted(g for g, n in size.items() if n == 1)[:4]
    files = [f for f, g in grp.items() if g in pairs or g in singles]
    ims = [np.asarray(Image.open(need(BUSI / f)).convert("L").resize((224, 224), Image.BILINEAR), np.float32)
           for f in files]
    got = group_near_duplicates(ims, None, **GROUPING).groups
    want = [grp[f] for f in files]
    for i in range(len(files)):
        for j in range(len(files)):
            assert (got[i] == got[j]) == (want[i] == want[j]), (files[i], files[j])
