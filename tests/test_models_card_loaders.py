"""Model cards (schema validation), weight formats, sha256 refusal and safe loading."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from conftest import SHARED, need

from imaging_assist.errors import UserError
from imaging_assist.models.architectures import ArchitectureError
from imaging_assist.models.build import save_model_folder
from imaging_assist.models.card import ModelCardError, load_card, validate_card
from imaging_assist.models.loaders import ModelLoadError, WeightsMismatchError, load_model, verify


def base_card(**over) -> dict:
    d = {
        "id": "tiny-unet2d", "name": "Tiny UNet", "version": "0.1.0", "task": "segmentation",
        "modality": ["CR", "DX"], "body_part": "CHEST", "spatial_dims": 2,
        "labels": ["background", "lung"],
        "input": {"channels": 1, "roi_size": [32, 32], "intensity": [{"type": "minmax"}]},
        "architecture": {"library": "monai", "name": "UNet",
                         "kwargs": {"spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                                    "channels": [4, 8], "strides": [2]}},
        "thresholds": {"lung": {"threshold": 0.5, "sensitivity": 0.9, "specificity": 0.8}},
        "metrics": [{"name": "dice", "label": "lung", "value": 0.9, "ci95": [0.88, 0.92]}],
        "license": "CC-BY-4.0", "intended_use": "research", "not_for_clinical_use": True,
        "data": {"training": "synthetic", "validation": "synthetic"},
        "gradcam_layer": "model.1.submodule",
    }
    d.update(over)
    return d


def tiny_unet():
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(2, 1, 2, (4, 8), (2,)).eval()


def test_valid_card_round_trip(tmp_path):
    save_model_folder(tmp_path / "m", base_card(), tiny_unet())
    card = load_card(tmp_path / "m")
    assert card.id == "tiny-unet2d" and card.task == "segmentation" and card.spatial_dims == 2
    assert card.modality == ["CR", "DX"] and card.body_part == "CHEST"
    assert card.thresholds["lung"].sensitivity == 0.9
    assert len(card.weights[0].sha256) == 64


def test_invalid_card_lists_every_problem_in_one_line(tmp_path):
    bad = base_card(task="detection", spatial_dims=4, not_for_clinical_use=False,
                    thresholds={"liver": 0.5},
                    metrics=[{"name": "auc", "value": 0.95, "ci95": [0.7, 0.9]}])
    bad["input"]["channels"] = 4
    bad["weights"] = [{"file": "../escape.safetensors"}]
    bad["format"] = "safetensors"
    with pytest.raises(ModelCardError) as ei:
        validate_card(bad, tmp_path)
    msg = str(ei.value)
    assert isinstance(ei.value, UserError) and "\n" not in msg
    for needle in ("task: must be one of", "spatial_dims: must be 2 or 3",
                   "not_for_clinical_use: must be true", "thresholds.liver",
                   "does not contain the value 0.95", "input.channels", "weights[0].file"):
        assert needle in msg, needle


@pytest.mark.parametrize("name", ["liver\\tumour", "lung\x07", "a\nb"])
def test_a_label_that_cannot_name_a_dicom_segment_is_refused(tmp_path, name):
    """A label becomes a SEG segment label (LO): a backslash or control character made the
    DICOM export end in an internal error; the card check says so first, in one line."""
    bad = base_card(labels=["background", name])
    with pytest.raises(ModelCardError) as ei:
        validate_card(bad, tmp_path)
    assert "labels: names must be printable text without a backslash" in str(ei.value)
    assert "\n" not in str(ei.value)


def test_bundle_channel_names_are_made_dicom_safe():
    from imaging_assist.models.bundle import _channel_names

    spec = {"channel_def": {"1": "liver\\tumour", "0": "back\tground", "2": "  kidney  "}}
    assert _channel_names(spec) == ["back ground", "liver/tumour", "kidney"]


def test_missing_sha256_and_bad_json(tmp_path):
    d = base_card(format="safetensors", weights=[{"file": "model.safetensors"}])
    with pytest.raises(ModelCardError, match=r"weights\[0\]\.sha256: is required"):
        validate_card(d, tmp_path)
    (tmp_path / "model.json").write_text('{"id": "x",\n "name": }')
    with pytest.raises(ModelCardError, match=r"not valid JSON \(line 2"):
        load_card(tmp_path)


def test_safetensors_weights_load_exactly(tmp_path):
    net = tiny_unet()
    save_model_folder(tmp_path / "m", base_card(), net)
    m = load_model(load_card(tmp_path / "m"))
    assert m.kind == "state_dict" and not m.network.training
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m.network(x), net(x))


def test_torchvision_architecture_and_torchscript(tmp_path):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=2).eval()
    card = base_card(id="tiny-cls", task="classification", labels=["normal", "abnormal"],
                     input={"channels": 3, "size": [32, 32]}, thresholds={},
                     metrics=[], gradcam_layer="layer4",
                     architecture={"library": "torchvision", "name": "resnet18",
                                   "kwargs": {"num_classes": 2}})
    save_model_folder(tmp_path / "tv", card, net)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_model(load_card(tmp_path / "tv")).network(x), net(x))
        card_ts = dict(card, id="tiny-cls-ts")
        card_ts.pop("architecture")
        save_model_folder(tmp_path / "ts", card_ts, net, fmt="torchscript", example_input=x)
        m = load_model(load_card(tmp_path / "ts"))
        assert m.kind == "torchscript" and not m.supports_hooks
        torch.testing.assert_close(m.network(x), net(x))


def test_sha256_mismatch_refuses_before_deserialising(tmp_path, monkeypatch):
    save_model_folder(tmp_path / "m", base_card(), tiny_unet())
    w = tmp_path / "m" / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in a weight
    w.write_bytes(bytes(data))
    card = load_card(tmp_path / "m")
    assert verify(card)[0].ok is False
    called = []
    import safetensors.torch as st

    monkeypatch.setattr(st, "load", lambda *a, **k: called.append(1))
    with pytest.raises(WeightsMismatchError) as ei:
        load_model(card)
    assert not called, "weights were deserialised although the sha256 did not match"
    msg = str(ei.value)
    assert "\n" not in msg and "sha256" in msg and "not loaded" in msg


def test_corrupt_file_with_matching_hash_is_a_clear_error(tmp_path):
    from imaging_assist.models.loaders import sha256_file

    save_model_folder(tmp_path / "m", base_card(), tiny_unet())
    w = tmp_path / "m" / "model.safetensors"
    w.write_bytes(b"this is not a safetensors file at all")
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    card["weights"][0]["sha256"] = sha256_file(w)
    (tmp_path / "m" / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="not a valid safetensors file") as ei:
        load_model(load_card(tmp_path / "m"))
    assert "\n" not in str(ei.value)


def test_state_dict_that_does_not_fit_the_architecture(tmp_path):
    save_model_folder(tmp_path / "m", base_card(), tiny_unet())
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    card["architecture"]["kwargs"]["channels"] = [8, 16]
    (tmp_path / "m" / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="does not fit the network") as ei:
        load_model(load_card(tmp_path / "m"))
    assert "\n" not in str(ei.value)


def test_pretrained_download_flag_is_refused(tmp_path):
    import torchvision

    card = base_card(id="x", task="classification", labels=["a", "b"], input={"size": [32, 32]},
                     thresholds={}, architecture={"library": "torchvision", "name": "resnet18",
                                                  "kwargs": {"num_classes": 2, "weights": "DEFAULT"}})
    save_model_folder(tmp_path / "m", dict(card, architecture={"library": "torchvision",
                                                               "name": "resnet18",
                                                               "kwargs": {"num_classes": 2}}),
                      torchvision.models.resnet18(num_classes=2))
    (tmp_path / "m" / "model.json").write_text(json.dumps(
        dict(json.loads((tmp_path / "m" / "model.json").read_text()),
             architecture=card["architecture"])))
    with pytest.raises(ArchitectureError, match="never downloads"):
        load_model(load_card(tmp_path / "m"))


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path(_Evil.target),))


def test_pickled_code_in_bundle_weights_never_runs(tmp_path, monkeypatch):
    """A bundle model.pt with a pickled payload: weights_only=True refuses it, nothing runs."""
    import hashlib
    import shutil

    src = need(SHARED / "monai_bundles" / "spleen_ct_segmentation")
    b = tmp_path / "spleen"
    shutil.copytree(src, b)
    (b / "models").mkdir()
    _Evil.target = str(tmp_path / "pwned")
    with open(b / "models" / "model.pt", "wb") as f:
        pickle.dump({"model": _Evil()}, f)
    md5 = hashlib.md5((b / "models" / "model.pt").read_bytes()).hexdigest()
    (b / "large_files.yml").write_text(f'large_files:\n- path: "models/model.pt"\n  hash_val: "{md5}"\n'
                                       '  hash_type: "md5"\n')
    calls = []
    real = torch.load

    def spy(*a, **k):
        calls.append(k.get("weights_only"))
        return real(*a, **k)

    monkeypatch.setattr(torch, "load", spy)
    from imaging_assist.models.bundle import derive_card

    with pytest.raises(ModelLoadError, match="weights_only=True") as ei:
        load_model(derive_card(b))
    assert "\n" not in str(ei.value)
    assert calls == [True]
    assert not (tmp_path / "pwned").exists()


def test_registry_sources_add_list_and_shadowing(tmp_path, monkeypatch, capsys):
    from imaging_assist.cli import main

    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "cfg"))
    lib = tmp_path / "lib"
    save_model_folder(lib / "a", base_card(id="model-a"), tiny_unet())
    save_model_folder(lib / "b", base_card(id="model-b", version="2.0"), tiny_unet())
    user = tmp_path / "cfg" / "models"
    save_model_folder(user / "a-old", base_card(id="model-a", version="0.0.1"), tiny_unet())
    # corrupt model-b's weights after packaging
    wb = lib / "b" / "model.safetensors"
    wb.write_bytes(wb.read_bytes()[:-4] + b"XXXX")
    assert main(["models", "add", str(lib)]) == 0
    got = capsys.readouterr()
    assert "added model-a" in got.out
    # the id is also a user model: said at once, with which one `--model model-a` now runs
    assert "model id model-a is also user model 0.0.1" in got.err and "runs the one just added" in got.err
    assert main(["models", "list", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {(m["id"], m["source"]): m for m in out["models"]}
    assert rows[("model-a", "added")]["verified"] is True
    assert rows[("model-a", "added")]["shadowed_by"] is None
    assert rows[("model-a", "user")]["shadowed_by"] == str(lib / "a")
    assert rows[("model-b", "added")]["verified"] is False
    assert rows[("model-b", "added")]["task"] == "segmentation"
    assert main(["models", "verify", "model-b"]) == 1
    assert "FAILED" in capsys.readouterr().out
    assert main(["models", "list"]) == 0
    text = capsys.readouterr()
    assert "model-a" in text.out and "NO" in text.out and "do not match" in text.err
    # unknown id: one line, lists what exists
    rc = main(["analyze", str(tmp_path), "--model", "nope", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown model 'nope'" in err and "model-a" in err


@pytest.mark.parametrize("step,where", [({"type": "minmax", "min": "zero"}, "input.intensity[0].min"),
                                        ({"type": "minmax", "max": float("nan")}, "input.intensity[0].max"),
                                        ({"type": "minmax", "min": None}, "input.intensity[0].min"),
                                        ({"type": "scale_range", "a_min": 0, "a_max": 1, "b_max": "1"},
                                         "input.intensity[0].b_max"),
                                        ({"type": "percentile", "clip": "yes"}, "input.intensity[0].clip")])
def test_intensity_output_bounds_are_checked_with_the_card(tmp_path, step, where):
    """A string, null or NaN output bound passed the card check and failed at run time as an
    internal error (or NaN outputs): the card check names it."""
    bad = base_card()
    bad["input"]["intensity"] = [step]
    with pytest.raises(ModelCardError) as ei:
        validate_card(bad, tmp_path)
    assert where in str(ei.value) and "\n" not in str(ei.value)
