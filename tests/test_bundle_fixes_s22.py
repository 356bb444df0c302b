"""MONAI bundle fixes (s22): code in a disabled or file-transform ``_target_``, ``pretrained``
left at a default of True, a metadata.json that breaks the registry, a resampling far finer
than the image, ``models add`` that recorded a broken bundle, and a folder changed after
``models add``."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from test_models_security import _own_config_dir, _write_md5  # noqa: F401

PRE = [{"_target_": "LoadImaged", "keys": "image"},
       {"_target_": "EnsureChannelFirstd", "keys": "image"},
       {"_target_": "ScaleIntensityd", "keys": "image"}]
NET = {"_target_": "UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
       "channels": [4, 8], "strides": [2], "num_res_units": 0}
META = {"version": "0.1", "name": "tiny", "network_data_format": {
    "inputs": {"image": {"modality": "regular", "num_channels": 1, "spatial_shape": [64, 64]}},
    "outputs": {"pred": {"format": "segmentation", "num_channels": 2,
                         "channel_def": {"0": "background", "1": "thing"}}}}}


def _tiny(folder: Path, extra_pre=(), meta=META, seed=0, net=None, net_obj=None) -> Path:
    """A small 2D bundle (UNet with random weights, md5 in large_files.yml)."""
    from monai.networks.nets import UNet

    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    net = net or NET
    cfg = {"imports": ["$import os"], "network_def": net,
           "preprocessing": {"_target_": "Compose", "transforms": PRE + list(extra_pre)},
           "inferer": {"_target_": "SimpleInferer"},
           "postprocessing": {"_target_": "Compose", "transforms": [
               {"_target_": "Activationsd", "keys": "pred", "softmax": True},
               {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]}}
    (folder / "configs" / "inference.json").write_text(json.dumps(cfg, indent=1))
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta, indent=1))
    torch.manual_seed(seed)
    if net_obj is None:
        net_obj = UNet(**{k: v for k, v in NET.items() if k != "_target_"})
    torch.save(net_obj.state_dict(), folder / "models" / "model.pt")
    _write_md5(folder)
    return folder


def _png(tmp_path: Path) -> Path:
    from PIL import Image

    p = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(p)
    return p


def _evil(marker: Path) -> list[tuple[str, dict]]:
    cmd = f"$__import__('pathlib').Path({str(marker)!r}).touch()"
    return [("disabled", {"_target_": cmd, "_disabled_": True}),
            ("io", {"_target_": cmd + " or monai.transforms.LoadImaged", "keys": "image"})]


# =========================================================================== 1: code in targets
def test_code_in_a_disabled_or_file_transform_target_is_code_and_never_runs(tmp_path):
    from imaging_assist.models.bundle import derive_card
    from imaging_assist.models.bundle_code import bundle_code, run_plan
    from imaging_assist.models.errors import ModelTrustError
    from imaging_assist.models.loaders import load_model
    from imaging_assist.models.registry import bundle_contains_code

    marker = tmp_path / "ran"
    for name, node in _evil(marker):
        b = _tiny(tmp_path / name, [node])
        runs = [i for i in bundle_code(b) if i.runs]
        assert ("preprocessing::transforms::3::_target_", "target") in [(i.key, i.kind) for i in runs], name
        assert bundle_contains_code(b) is True
        with pytest.raises(ModelTrustError) as e:
            load_model(derive_card(b))
        assert "\n" not in str(e.value)
        assert not marker.exists(), name
    # a code-free bundle: disabled and file-transform nodes are left out whole (no _target_ of
    # theirs reaches ConfigParser), and it still loads without asking
    b = _tiny(tmp_path / "plain", [{"_target_": "ScaleIntensityd", "keys": "image", "_disabled_": True}])
    plan = run_plan(b)
    assert not plan.code
    assert plan.pruned["preprocessing"]["transforms"][0] is None
    assert plan.pruned["preprocessing"]["transforms"][3] is None
    assert load_model(derive_card(b)).kind == "bundle"


def test_code_in_targets_is_refused_by_the_cli_too(tmp_path, capsys):
    from imaging_assist.cli.main import main

    marker = tmp_path / "ran"
    png = _png(tmp_path)
    for name, node in _evil(marker):
        b = _tiny(tmp_path / "lib" / f"evil_{name}", [node])
        assert main(["models", "add", str(b)]) == 0
        out = capsys.readouterr().out
        assert "contains code" in out and "preprocessing::transforms::3::_target_" in out
        assert main(["models", "show", f"evil_{name}"]) == 0
        out = capsys.readouterr().out
        assert "code        none" not in out and "will not run until trusted" in out
        assert main(["models", "list", "--json", "--no-verify"]) == 0
        row = next(m for m in json.loads(capsys.readouterr().out)["models"] if m["id"] == f"evil_{name}")
        assert row["contains_code"] is True and row["runnable_without_prompt"] is False
        rc = main(["analyze", "--model", f"evil_{name}", "--out", str(tmp_path / f"out_{name}"),
                   "--research-override", str(png)])
        err = capsys.readouterr().err
        assert rc != 0 and "contains code" in err
        assert not marker.exists(), name


# =========================================================================== 2: pretrained default
def test_pretrained_left_at_a_default_of_true_downloads_nothing(tmp_path, monkeypatch):
    from monai.networks.nets import EfficientNetBN

    from imaging_assist.models.bundle import derive_card
    from imaging_assist.models.loaders import load_model

    attempts = []

    def connect(self, addr):
        attempts.append(addr)
        raise OSError("network blocked by the test")

    def getaddrinfo(host, *a, **k):
        attempts.append(host)
        raise socket.gaierror("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    net = {"_target_": "EfficientNetBN", "model_name": "efficientnet-b0", "spatial_dims": 2,
           "in_channels": 1, "num_classes": 2}  # `pretrained` not written: its default is True
    torch.manual_seed(0)
    b = _tiny(tmp_path / "effnet", net=net, net_obj=EfficientNetBN(
        "efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=1, num_classes=2))
    m = load_model(derive_card(b))
    assert attempts == []
    assert not home.exists() or not any(home.rglob("*"))
    assert any("pretrained switched off" in n for n in m.notes)


# =========================================================================== 3: registry
def test_a_metadata_integer_too_long_to_convert_is_that_folders_one_line_problem(tmp_path, monkeypatch):
    from test_models_card_loaders import base_card, tiny_unet

    from imaging_assist.models import registry as R
    from imaging_assist.models.build import save_model_folder
    from imaging_assist.models.card import read_json_limited
    from imaging_assist.models.errors import ModelCardError

    lib = tmp_path / "lib"
    bad = _tiny(lib / "bigint")
    (bad / "configs" / "metadata.json").write_text('{"version": ' + "9" * 5000 + "}")
    with pytest.raises(ModelCardError) as e:
        read_json_limited(bad / "configs" / "metadata.json", "bundle metadata")
    assert "\n" not in str(e.value)
    save_model_folder(lib / "good", base_card(id="good-model"), tiny_unet())
    _tiny(lib / "other")
    # any unexpected failure of one folder stays that folder's problem too
    real = R.read_card
    monkeypatch.setattr(R, "read_card", lambda f: (_ for _ in ()).throw(RuntimeError("boom\nmore"))
                        if f.name == "other" else real(f))
    entries = {e.folder.name: e for e in R.Registry([(lib, "added")]).entries()}
    assert entries["good"].card is not None and entries["good"].error is None
    for name, word in (("bigint", "digits"), ("other", "RuntimeError: boom")):
        assert entries[name].card is None and word in entries[name].error
        assert "\n" not in entries[name].error


# =========================================================================== 4: runaway resampling
def test_a_bundle_spacing_far_finer_than_the_image_is_refused_before_resampling(tmp_path, monkeypatch):
    import monai.transforms as mt

    from imaging_assist.inference.images import read_image
    from imaging_assist.inference.options import InputError, RunOptions
    from imaging_assist.inference.pipelines import run_model
    from imaging_assist.models.bundle import derive_card
    from imaging_assist.models.loaders import load_model

    def never(self, *a, **k):  # the 32,000^2 resampling (4 GB) must not even start
        raise AssertionError("Spacing ran")

    monkeypatch.setattr(mt.Spacing, "__call__", never)
    b = _tiny(tmp_path / "fine", [{"_target_": "Spacingd", "keys": "image", "pixdim": [0.002, 0.002]}])
    m = load_model(derive_card(b))
    with pytest.raises(InputError) as e:
        run_model(m, read_image(_png(tmp_path)), RunOptions(device="cpu"))
    assert "would make" in str(e.value) and "32000x32000" in str(e.value) and "\n" not in str(e.value)


# =========================================================================== 5: models add
def test_models_add_of_a_bundle_whose_config_cannot_be_read_records_nothing(tmp_path, capsys):
    import yaml

    from imaging_assist.cli.main import main
    from imaging_assist.models.registry import FOLDERS_FILE, config_dir

    b = _tiny(tmp_path / "yaml_tag")
    cfg = json.loads((b / "configs" / "inference.json").read_text())
    (b / "configs" / "inference.json").unlink()
    (b / "configs" / "inference.yaml").write_text(
        yaml.safe_dump(cfg) + "evil: !!python/object/apply:os.system ['true']\n")
    assert main(["models", "add", str(b)]) == 2
    got = capsys.readouterr()
    assert "added" not in got.out and "cannot read bundle config" in got.err
    assert not (config_dir() / FOLDERS_FILE).exists()
    # `models show` says the same in one line, without half a summary before it
    assert main(["models", "show", str(b)]) == 2
    got = capsys.readouterr()
    assert got.out == "" and got.err.count("\n") == 1


# =========================================================================== 6: changed after add
def test_models_verify_reports_a_folder_changed_after_models_add(tmp_path, capsys):
    from imaging_assist.cli.main import main
    from imaging_assist.inference.images import read_image
    from imaging_assist.inference.options import RunOptions
    from imaging_assist.inference.pipelines import run_model
    from imaging_assist.models.registry import Registry

    b = _tiny(tmp_path / "tiny_v")
    assert main(["models", "add", str(b)]) == 0
    assert main(["models", "verify", "tiny_v"]) == 0
    capsys.readouterr()
    # the source folder changes: a label renamed, other weights with their own md5
    meta = json.loads(json.dumps(META))
    meta["network_data_format"]["outputs"]["pred"]["channel_def"]["1"] = "tumour"
    other = _tiny(tmp_path / "other", meta=meta, seed=7)
    for f in ("configs/metadata.json", "models/model.pt", "large_files.yml"):
        (b / f).write_bytes((other / f).read_bytes())
    assert main(["models", "verify", "tiny_v"]) == 1
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if "changed since" in ln]
    assert len(lines) == 1 and "configs, models/model.pt" in lines[0] and "FAILED" in lines[0]
    # a run says so too
    res = run_model(Registry().load("tiny_v"), read_image(_png(tmp_path)), RunOptions(device="cpu"))
    assert any("changed since `imaging-assist models add`" in w for w in res.warnings)
    # adding it again accepts the change
    assert main(["models", "add", str(b)]) == 0
    assert main(["models", "verify", "tiny_v"]) == 0
