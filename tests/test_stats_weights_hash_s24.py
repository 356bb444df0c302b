"""Session 24: the OOD statistics and sanity.json name the weights they were computed from.

Before, a model folder's ``ood.safetensors`` replaced by another model's self-consistent file of
the same feature width (us-breast's 448 values for cxr-pneumonia), with the card's sha256 updated
to match, passed ``models verify`` and scored every image on the wrong statistics; and a
retrained model showed the old weights' explanation sanity verdicts.  Now the statistics'
safetensors metadata and sanity.json carry ``weights_sha256`` (loaders.sha256_file of the weights):
other weights are refused (OOD) or shown as "not checked for these weights" (sanity); a file
without the field (older) is used as before and ``models verify`` says it has none.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from conftest import ROOT
from test_ood import W, _copy, _one_line, _rehash
from test_ood_fixes_s21 import _normal_films
from imaging_assist.models.card import load_card
from imaging_assist.models.loaders import load_model, sha256_file, verify
from imaging_assist.validation import ood as O

KEY = "weights_sha256"  # the field's name in the statistics' metadata and in sanity.json


@pytest.fixture(autouse=True)
def _own_config_dir(tmp_path, monkeypatch):
    """An empty user config folder: `models verify` of a copied folder sees no registry state."""
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "cfg"))


def _weights_hash(model_id: str) -> str:
    card = load_card(W / model_id)
    return sha256_file(card.folder / card.weights[0].file)


def _stamped(model_id: str, weights_sha256: str | None) -> bytes:
    """``model_id``'s OOD statistics re-saved with ``weights_sha256`` in their metadata (None: none)."""
    from safetensors.torch import load as st_load, save as st_save

    t = st_load((W / model_id / O.STATS_FILE).read_bytes())
    return st_save(t, metadata=None if weights_sha256 is None else {KEY: weights_sha256})


def _meta(folder: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(folder / O.STATS_FILE), "pt") as f:
        return f.metadata() or {}


def _by_file(card) -> dict:
    return {r.file: r for r in verify(card)}


# --------------------------------------------------------------------------- 1. OOD statistics
def test_another_models_statistics_of_the_same_width_are_refused_on_load_verify_and_analyze(tmp_path, capsys):
    from imaging_assist.cli.main import main
    from imaging_assist.inference.images import read_image
    from imaging_assist.inference.pipelines import run_model

    folder = _copy("cxr-pneumonia", tmp_path)
    # us-breast's own statistics (its weights' hash inside), 448 features like cxr-pneumonia's
    _rehash(folder, _stamped("us-breast", _weights_hash("us-breast")))
    card = load_card(folder)
    with pytest.raises(O.OODStatsError) as e:
        O.load_stats(card)
    msg = _one_line(e.value)
    assert "fitted for other weights" in msg and "not used" in msg
    r = _by_file(card)[O.STATS_FILE]
    assert not r.ok and "other weights" in r.message
    assert main(["models", "verify", str(folder)]) == 1
    line = next(ln for ln in capsys.readouterr().out.splitlines() if O.STATS_FILE in ln)
    assert "FAILED" in line and "fitted for other weights" in line
    # analyze: the OOD check is not applied and the result says so (flagged, decision withheld)
    Image.fromarray(_normal_films(1)[0]).save(tmp_path / "film.png")
    res = run_model(load_model(card), read_image(tmp_path / "film.png"))
    assert res.ood["flagged"] and res.ood["score"] is None
    assert "fitted for other weights" in res.ood["reasons"][0]
    assert all(v is None or v["positive"] is None for v in res.decisions.values())


def test_statistics_with_the_models_own_weights_hash_load_and_verify_ok(tmp_path):
    folder = _copy("cxr-pneumonia", tmp_path)
    own = _weights_hash("cxr-pneumonia")
    _rehash(folder, _stamped("cxr-pneumonia", own))
    card = load_card(folder)
    O.load_stats(card)
    r = _by_file(card)[O.STATS_FILE]
    assert r.ok and r.message == "ok"
    # the same card after its weights were retrained in place: the cached statistics are re-checked
    O.stats_for(card)
    card.weights[0].sha256 = "0" * 64
    with pytest.raises(O.OODStatsError, match="fitted for other weights"):
        O.stats_for(card)


def test_older_statistics_without_a_weights_hash_are_used_and_verify_says_so(tmp_path, capsys):
    from imaging_assist.cli.main import main

    folder = _copy("cxr-pneumonia", tmp_path)
    _rehash(folder, _stamped("cxr-pneumonia", None))
    card = load_card(folder)
    O.load_stats(card)  # used as before
    r = _by_file(card)[O.STATS_FILE]
    assert r.ok and "made without a weights hash" in r.message
    assert main(["models", "verify", str(folder)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if O.STATS_FILE in ln)
    assert "warning: " in line and "made without a weights hash" in line


def test_fit_ood_writes_the_weights_hash_into_the_statistics(tmp_path, monkeypatch):
    """scripts/fit_ood.py's writer (also called at the end of every training script)."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    sys.modules.pop("fit_ood", None)
    import fit_ood as F
    from safetensors.torch import load as st_load

    folder = _copy("cxr-pneumonia", tmp_path)
    card = load_card(folder)
    spec = O.ood_spec(card)
    stats = st_load((folder / O.STATS_FILE).read_bytes())
    r = {"method": "mahalanobis", "layers": spec["layers"], "threshold": spec["threshold"],
         "threshold_info": spec["threshold_info"], "n": spec["n"], "auroc_other_modalities": 1.0,
         "auroc_per_set": {}, "near": {}, "flagged_id_test": 0.0, "flagged_per_test_split": {},
         "flagged_other": 1.0, "flagged_near": {}}
    F.write_stats(folder, card, r, stats, [r])
    assert _meta(folder).get(KEY) == _weights_hash("cxr-pneumonia")
    assert O.load_stats(load_card(folder)).weights_sha256 == _weights_hash("cxr-pneumonia")


# --------------------------------------------------------------------------- 2. sanity.json
class _HM(SimpleNamespace):
    method = "gradcam"
    faithfulness = None
    label = "pneumonia"


def test_shipped_sanity_files_name_their_models_weights():
    from imaging_assist.explain.sanity import SANITY_FILE, verify_sanity

    for f in sorted(W.glob(f"*/{SANITY_FILE}")):
        doc = json.loads(f.read_text())
        assert doc[KEY] == _weights_hash(f.parent.name), f
        assert verify_sanity(load_card(f.parent)) == (True, doc[KEY], doc[KEY], "ok")


def _sanity_of(folder: Path, weights_sha256: str | None, passed: bool = True) -> None:
    from imaging_assist.explain.sanity import SANITY_FILE

    doc = json.loads((folder / SANITY_FILE).read_text())
    doc.pop(KEY, None)
    if weights_sha256 is not None:
        doc[KEY] = weights_sha256
    doc["methods"]["gradcam"]["passed"] = passed
    (folder / SANITY_FILE).write_text(json.dumps(doc))


@pytest.mark.parametrize("passed", [True, False])
def test_a_sanity_verdict_of_other_weights_is_shown_as_not_checked_for_these_weights(tmp_path, capsys, passed):
    from imaging_assist.cli.main import main
    from imaging_assist.explain.flags import heatmap_flags
    from imaging_assist.explain.sanity import SANITY_FILE, recorded_sanity, sanity_warning

    folder = _copy("cxr-pneumonia", tmp_path)
    _sanity_of(folder, "ab" * 32, passed)  # a retrained model: the check was of the old weights
    card = load_card(folder)
    assert recorded_sanity(card) == {}  # neither "passed" nor "failed" for these weights
    w = sanity_warning(card, "gradcam")
    assert w is not None and "not checked for these weights" in w and "\n" not in w
    assert "failed" not in w
    (why,) = heatmap_flags(_HM(), None, card)
    assert "not checked for these weights" in why
    r = _by_file(card)[SANITY_FILE]
    assert r.ok and "other weights" in r.message  # a warning: the weights themselves are fine
    assert main(["models", "verify", str(folder)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if SANITY_FILE in ln)
    assert "warning: " in line and "not checked for these weights" in line


def test_an_older_sanity_file_without_a_weights_hash_keeps_its_verdict_and_verify_says_so(tmp_path):
    from imaging_assist.explain.sanity import SANITY_FILE, recorded_sanity, sanity_warning

    folder = _copy("cxr-pneumonia", tmp_path)
    _sanity_of(folder, None, passed=False)
    card = load_card(folder)
    assert recorded_sanity(card)["gradcam"]["passed"] is False
    assert "failed the weight-randomisation" in sanity_warning(card, "gradcam")
    r = _by_file(card)[SANITY_FILE]
    assert r.ok and "made without a weights hash" in r.message


def test_check_explanations_records_the_weights_hash(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    sys.modules.pop("check_explanations", None)
    import check_explanations as C

    monkeypatch.setattr(C, "method_results", lambda *a, **k: {})  # the cascade itself is not rerun here
    out = C.check("cxr-pneumonia", n_images=1)
    assert out[KEY] == _weights_hash("cxr-pneumonia")
