"""A MONAI bundle's file transforms (s24): ``models show`` and the trust prompt list the code in
a plainly named ``LoadImaged`` / ``SaveImaged`` node as never run, so its arguments (a ``$``
reader, a nested ``_target_``, an ``@`` reference to code, a ``$import``) must never be
evaluated -- not when the bundle runs without trust (pruned config) and not when it is trusted
(the config as written, less those nodes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import test_bundle_fixes_s22 as s22
from test_bundle_fixes_s22 import META, NET, _png
from test_models_security import _own_config_dir, _write_md5  # noqa: F401

import torch


def _touch(marker: Path) -> str:
    return f"$__import__('pathlib').Path({str(marker)!r}).touch()"


def _bundle(folder: Path, load: dict, save: dict | None = None, other_code: bool = True,
            extra: dict | None = None) -> Path:
    """The s22 tiny 2D bundle with ``load`` as its LoadImaged node, ``save`` (a SaveImaged
    node) in its postprocessing, and (``other_code``) one expression that runs, so that it
    needs trust."""
    from monai.networks.nets import UNet

    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    pre = [load, {"_target_": "EnsureChannelFirstd", "keys": "image"},
           {"_target_": "ScaleIntensityd", "keys": "image",
            **({"minv": "$float(0)"} if other_code else {})}]
    post = [{"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}] + ([save] if save else [])
    cfg = {"network_def": NET, "preprocessing": {"_target_": "Compose", "transforms": pre},
           "inferer": {"_target_": "SimpleInferer"},
           "postprocessing": {"_target_": "Compose", "transforms": post}, **(extra or {})}
    (folder / "configs" / "inference.json").write_text(json.dumps(cfg, indent=1))
    (folder / "configs" / "metadata.json").write_text(json.dumps(META, indent=1))
    torch.manual_seed(0)
    net = UNet(**{k: v for k, v in NET.items() if k != "_target_"})
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    _write_md5(folder)
    return folder


def _hostile(tmp_path: Path):
    """(LoadImaged node, SaveImaged node, extra top-level items, markers): code in every kind of
    argument of a plainly named file transform."""
    m = {n: tmp_path / f"ran_{n}" for n in ("reader", "image_only", "nested", "listed", "ref", "save")}
    load = {"_target_": "LoadImaged", "keys": "image",
            "reader": _touch(m["reader"]),
            "image_only": _touch(m["image_only"]) + " or True",
            "meta_keys": {"_target_": _touch(m["nested"]) + " or dict", "x": 1},
            "dtype": [1, {"y": _touch(m["listed"])}],
            "ensure_channel_first": "@evil_ref",
            "allow_missing_keys": "$import this"}
    save = {"_target_": "monai.transforms.SaveImaged", "keys": "pred",
            "output_dir": _touch(m["save"]) + " or '/tmp'"}
    extra = {"evil_ref": _touch(m["ref"])}  # only a file transform refers to it
    return load, save, extra, m


def _file_transform_items(folder: Path) -> list:
    from imaging_assist.models.bundle_code import bundle_code

    return [i for i in bundle_code(folder)
            if i.key.startswith(("preprocessing::transforms::0::", "postprocessing::transforms::2::",
                                 "evil_ref"))]


# =========================================================================== trusted
def test_a_trusted_bundle_never_evaluates_the_arguments_of_its_file_transforms(tmp_path):
    from imaging_assist.models import trust as tr
    from imaging_assist.models.bundle import derive_card
    from imaging_assist.models.bundle_code import run_plan
    from imaging_assist.models.loaders import load_model

    load, save, extra, markers = _hostile(tmp_path)
    b = _bundle(tmp_path / "evil", load, save, other_code=True, extra=extra)
    assert "this" not in sys.modules  # `$import this` prints the Zen of Python when it runs
    tr.trust(b)
    try:
        lm = load_model(derive_card(b))
    except Exception as e:  # noqa: BLE001 - what ran is asserted first
        lm = e
    assert [n for n, p in markers.items() if p.exists()] == []
    assert "this" not in sys.modules
    assert lm.kind == "bundle"
    assert any("left out file transforms" in n and "LoadImaged" in n and "SaveImaged" in n
               for n in lm.notes), lm.notes
    # listed (models show --all), and all as never run -- the $import inside one too
    items = _file_transform_items(b)
    assert {"preprocessing::transforms::0::reader", "preprocessing::transforms::0::allow_missing_keys",
            "postprocessing::transforms::2::output_dir", "evil_ref"} <= {i.key for i in items}
    assert [str(i) for i in items if i.runs] == []
    plan = run_plan(b)
    assert [i.key for i in plan.code] == ["preprocessing::transforms::2::minv"]
    # what a trusted bundle hands ConfigParser: the file transforms replaced whole
    assert plan.config["preprocessing"]["transforms"][0] is None
    assert plan.config["postprocessing"]["transforms"][2] is None


def test_trusted_file_transform_code_stays_unrun_through_the_cli(tmp_path, capsys):
    from imaging_assist.cli.main import main

    load, save, extra, markers = _hostile(tmp_path)
    b = _bundle(tmp_path / "lib" / "evil_io", load, save, other_code=True, extra=extra)
    png = _png(tmp_path)
    assert main(["models", "add", str(b)]) == 0
    capsys.readouterr()
    # the trust prompt: what runs is the one expression; the file transform code is not in it
    assert main(["models", "trust", "evil_io", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "preprocessing::transforms::2::minv" in out
    assert "ran_reader" not in out and "trusted evil_io" in out
    rc = main(["analyze", "--model", "evil_io", "--out", str(tmp_path / "out"),
               "--research-override", str(png)])
    err = capsys.readouterr().err
    assert [n for n, p in markers.items() if p.exists()] == []
    assert rc == 0, err
    # models show --all: every item of the file transforms says never run
    assert main(["models", "show", "evil_io", "--all"]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if "json: preprocessing::transforms::0::" in ln
             or "json: postprocessing::transforms::2::" in ln or "json: evil_ref" in ln]
    assert len(lines) >= 7 and all(ln.endswith("(never run by imaging-assist)") for ln in lines), lines


# =========================================================================== not trusted
def test_an_untrusted_bundle_with_code_only_in_file_transforms_runs_without_it(tmp_path, capsys):
    from imaging_assist.cli.main import main
    from imaging_assist.models.bundle import derive_card
    from imaging_assist.models.bundle_code import run_plan
    from imaging_assist.models.loaders import load_model
    from imaging_assist.models.registry import bundle_contains_code

    load, save, extra, markers = _hostile(tmp_path)
    b = _bundle(tmp_path / "lib" / "io_only", load, save, other_code=False, extra=extra)
    plan = run_plan(b)
    assert plan.code == [] and bundle_contains_code(b) is False
    assert plan.pruned["preprocessing"]["transforms"][0] is None
    assert plan.pruned["postprocessing"]["transforms"][2] is None and "evil_ref" not in plan.pruned
    assert load_model(derive_card(b)).kind == "bundle"
    png = _png(tmp_path)
    assert main(["models", "add", str(b)]) == 0
    capsys.readouterr()
    rc = main(["analyze", "--model", "io_only", "--out", str(tmp_path / "out"),
               "--research-override", str(png)])
    assert rc == 0, capsys.readouterr().err
    assert [n for n, p in markers.items() if p.exists()] == []


def test_the_s22_tiny_bundle_still_runs_trusted(tmp_path):
    """A trusted bundle whose code is elsewhere still loads: its plain LoadImaged is left out."""
    from imaging_assist.models import trust as tr
    from imaging_assist.models.bundle import derive_card
    from imaging_assist.models.loaders import load_model

    marker = tmp_path / "ran"
    b = s22._tiny(tmp_path / "t", [{"_target_": "ScaleIntensityd", "keys": "image",
                                    "minv": _touch(marker) + " or 0.0"}])
    tr.trust(b)
    lm = load_model(derive_card(b))
    assert lm.kind == "bundle" and marker.exists()  # trusted code that runs does run
