"""Model security (issue #12): MONAI bundle code is listed without running it and runs only
when the user trusted that exact bundle (configs + weights, by hash); card size limits are
checked before anything is built; hashes come before building; the models package has its
own errors module and no import cycle; YAML is read with PyYAML ``safe_load``."""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import pickle
import random
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import SHARED, need

from imaging_assist.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = SHARED / "monai_bundles"
MODELS_PKG = ROOT / "imaging_assist" / "models"
# Shared test data must be there: a missing folder fails (never a silent skip).
need_bundles = pytest.mark.usefixtures("_bundles_present")


@pytest.fixture
def _bundles_present():
    need(BUNDLES)


@pytest.fixture(autouse=True)
def _own_config_dir(tmp_path, monkeypatch):
    """Every test gets its own (empty) user config folder: no trust leaks between tests."""
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "cfg"))


def _write_md5(bundle: Path, rel: str = "models/model.pt") -> None:
    md5 = hashlib.md5((bundle / rel).read_bytes()).hexdigest()
    (bundle / "large_files.yml").write_text(
        f'large_files:\n- path: "{rel}"\n  url: "https://example.invalid/model.pt"\n'
        f'  hash_val: "{md5}"\n  hash_type: "md5"\n')


def _spleen(tmp_path: Path, name: str = "spleen") -> Path:
    """The real spleen bundle configs with small random weights written by the test (the
    network is built here directly with MONAI, not from the config)."""
    from monai.networks.nets import UNet

    dst = tmp_path / name
    shutil.copytree(BUNDLES / "spleen_ct_segmentation", dst)
    torch.manual_seed(0)
    net = UNet(3, 1, 2, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2, norm="batch")
    (dst / "models").mkdir()
    torch.save(net.state_dict(), dst / "models" / "model.pt")
    _write_md5(dst)
    return dst


def _edit_config(bundle: Path, fn) -> None:
    p = bundle / "configs" / "inference.json"
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d, indent=1))


# =========================================================================== bundle code
def test_bundle_code_lists_every_kind_of_code_without_running_it(tmp_path):
    from imaging_assist.models.bundle_code import bundle_code

    marker = tmp_path / "ran"
    b = tmp_path / "b"
    (b / "configs").mkdir(parents=True)
    (b / "configs" / "metadata.json").write_text(json.dumps({"name": "x", "version": "1"}))
    cfg = {
        "imports": ["$import os"],
        "network_def": {"_target_": "UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                        "channels": [4, 8], "strides": [2],
                        "_requires_": f"$__import__('pathlib').Path({str(marker)!r}).touch()"},
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "os.system", "command": f"touch {marker}"},
            {"_target_": "ScaleIntensityd", "keys": "image", "_mode_": "debug"},
            {"_target_": "monai.transforms.Lambdad", "keys": "image", "func": "@fn"},
        ]},
        "fn": "%other.json::fn",
        "unused": "$print('never')",
    }
    (b / "configs" / "inference.json").write_text(json.dumps(cfg))
    (b / "configs" / "evaluate.yaml").write_text("run: $os.remove('x')\n")
    items = bundle_code(b)
    assert not marker.exists()
    by = {(i.file, i.key): i for i in items}
    assert by[("configs/inference.json", "imports::0")].kind == "import"
    assert by[("configs/inference.json", "network_def::_requires_")].runs is True
    assert by[("configs/inference.json", "preprocessing::transforms::0::_target_")].text == "os.system"
    assert by[("configs/inference.json", "preprocessing::transforms::1::_mode_")].runs is True
    assert by[("configs/inference.json", "preprocessing::transforms::2::_target_")].runs is True
    assert by[("configs/inference.json", "fn")].kind == "macro"
    assert by[("configs/inference.json", "fn")].runs is True  # referenced by the Lambdad
    assert by[("configs/inference.json", "unused")].runs is False
    assert by[("configs/evaluate.yaml", "run")].runs is False
    # the plain MONAI building blocks are not code
    assert ("configs/inference.json", "network_def::_target_") not in by
    assert ("configs/inference.json", "preprocessing::_target_") not in by
    for i in items:
        assert "\n" not in str(i) and i.text


@need_bundles
def test_real_zoo_bundles_run_without_code(tmp_path):
    """The Model Zoo bundles have expressions (datalists, evaluators, handlers) and
    breast_density a target in its scripts/ module, but none in what imaging-assist runs --
    except endoscopic_tool_segmentation's postprocessing, a Lambdad with a lambda."""
    from imaging_assist.models.bundle_code import bundle_code

    for name in ("spleen_ct_segmentation", "breast_density_classification"):
        items = bundle_code(BUNDLES / name)
        assert items, name
        assert not [i for i in items if i.runs], (name, [str(i) for i in items if i.runs])
    bd = bundle_code(BUNDLES / "breast_density_classification")
    assert any(i.text == "scripts.createList.CreateImageLabelList" and not i.runs for i in bd)
    endo = [i for i in bundle_code(BUNDLES / "endoscopic_tool_segmentation") if i.runs]
    # its code needs trust, and trusted, its config is parsed as written: ConfigParser then
    # runs the top-level "$import"s too (listed as running)
    imports = [i for i in endo if i.kind == "import"]
    assert imports and all(i.key.startswith("imports::") for i in imports), [str(i) for i in imports]
    assert sorted((i.key, i.kind) for i in endo if i.kind != "import") == [
        ("postprocessing::transforms::2::_target_", "target"),
        ("postprocessing::transforms::2::func", "expression")], [str(i) for i in endo]
    assert [i.text for i in endo if i.kind == "expression"] == ["$lambda x : x[1:]"]


@need_bundles
def test_code_outside_what_runs_is_never_run_even_top_level_imports(tmp_path, monkeypatch):
    """ConfigParser runs every ``$import`` of the whole file as soon as it resolves anything;
    an untrusted bundle is handed over without the parts imaging-assist does not use."""
    from imaging_assist.models.bundle import derive_card
    from imaging_assist.models.loaders import load_model

    marker = tmp_path / "imported"
    mod = tmp_path / "pymods"
    mod.mkdir()
    (mod / "evil_bundle_mod_x1.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    monkeypatch.syspath_prepend(str(mod))
    b = _spleen(tmp_path)
    _edit_config(b, lambda d: d["imports"].append("$import evil_bundle_mod_x1"))
    m = load_model(derive_card(b))
    assert not marker.exists()
    assert m.kind == "bundle"


@need_bundles
def test_untrusted_bundle_code_is_refused_until_trusted_and_again_after_a_change(tmp_path):
    from imaging_assist.models import trust as tr
    from imaging_assist.models.bundle import derive_card
    from imaging_assist.models.errors import ModelTrustError
    from imaging_assist.models.loaders import load_model

    marker = tmp_path / "ran"
    b = _spleen(tmp_path)
    _edit_config(b, lambda d: d["network_def"].__setitem__(
        "_requires_", f"$__import__('pathlib').Path({str(marker)!r}).touch()"))
    card = derive_card(b)
    with pytest.raises(ModelTrustError) as ei:
        load_model(card)
    msg = str(ei.value)
    assert "\n" not in msg and "_requires_" in msg and f"imaging-assist models trust {card.id}" in msg
    assert not marker.exists()
    assert isinstance(ei.value, UserError)
    assert tr.is_trusted(b) is False

    h = tr.trust(b)
    assert len(h) == 64 and tr.is_trusted(b)
    store = tr.trust_file()
    assert store.parent == Path(os.environ["IMAGING_ASSIST_CONFIG_DIR"])
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    load_model(card)
    assert marker.exists()  # trusted: the bundle runs as written
    marker.unlink()

    # any config file changed after trust (even one imaging-assist does not read) -> refused
    ev = b / "configs" / "evaluate.json"
    ev.write_text(ev.read_text() + " ")
    assert tr.is_trusted(b) is False
    with pytest.raises(ModelTrustError):
        load_model(derive_card(b))
    assert not marker.exists()
    tr.trust(b)
    assert tr.is_trusted(b)
    # new weights with a matching hash in the bundle's own large_files.yml -> refused
    sd = torch.load(b / "models" / "model.pt", weights_only=True)
    next(iter(sd.values())).add_(1)
    torch.save(sd, b / "models" / "model.pt")
    _write_md5(b)
    assert tr.is_trusted(b) is False
    with pytest.raises(ModelTrustError):
        load_model(derive_card(b))
    assert not marker.exists()
    tr.trust(b)
    assert tr.untrust(b) is True and tr.is_trusted(b) is False


@need_bundles
def test_config_hash_covers_configs_metadata_and_scripts(tmp_path):
    from imaging_assist.models.trust import config_hash

    b = _spleen(tmp_path)
    h0 = config_hash(b)
    assert len(h0) == 64 and config_hash(b) == h0
    for rel in ("configs/metadata.json", "configs/logging.conf"):
        p = b / rel
        old = p.read_bytes()
        p.write_bytes(old + b"\n")
        assert config_hash(b) != h0, rel
        p.write_bytes(old)
    assert config_hash(b) == h0
    (b / "scripts").mkdir()
    (b / "scripts" / "x.py").write_text("print(1)\n")
    assert config_hash(b) != h0
    (b / "configs" / "extra.json").write_text("{}")
    h1 = config_hash(b)
    (b / "configs" / "extra.json").unlink()
    assert config_hash(b) != h1


@pytest.mark.parametrize("where", ["configs/linked", "scripts", "configs/linked.json"])
def test_linked_files_or_folders_in_a_bundle_are_refused_not_skipped(tmp_path, where):
    """A link would let the verified hash stay the same while the code it points at changes."""
    from imaging_assist.models.errors import ModelLoadError
    from imaging_assist.models.trust import config_hash

    b = _spleen(tmp_path / "lib")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.py").write_text("import os\n")
    (outside / "evil.json").write_text("{}")
    link = b / where
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(outside / "evil.json" if where.endswith(".json") else outside)
    with pytest.raises(ModelLoadError, match="symbolic link"):
        config_hash(b)


@need_bundles
def test_registry_reports_code_and_trust_and_load_refuses(tmp_path):
    from imaging_assist.models import trust as tr
    from imaging_assist.models.errors import ModelTrustError
    from imaging_assist.models.registry import Registry

    lib = tmp_path / "lib"
    plain = _spleen(lib, "plain")
    coded = _spleen(lib, "coded")
    _edit_config(coded, lambda d: d.__setitem__("network", "$@network_def.to(@device)") or
                 d["inferer"].__setitem__("roi_size", "$[96, 96, 96]"))
    meta = coded / "configs" / "metadata.json"
    m = json.loads(meta.read_text())
    m["name"] = "Spleen with code"
    meta.write_text(json.dumps(m))
    reg = Registry([(lib, "added")])
    entries = {e.folder.name: reg.verify_entry(e) for e in reg.entries()}
    p, c = entries["plain"], entries["coded"]
    assert p.verified is True and p.contains_code is False and p.runnable_without_prompt is True
    assert c.verified is True and c.contains_code is True and c.trusted is False
    assert c.runnable_without_prompt is False
    d = c.to_dict()
    assert d["contains_code"] is True and d["trusted"] is False
    with pytest.raises(ModelTrustError):
        reg.load(str(coded))
    tr.trust(coded)
    c2 = reg.verify_entry(next(e for e in reg.entries() if e.folder.name == "coded"))
    assert c2.trusted is True and c2.runnable_without_prompt is True
    assert reg.load(str(coded)).kind == "bundle"


def test_non_bundle_models_have_no_code(tmp_path):
    from imaging_assist.models.registry import Registry

    reg = Registry()
    from imaging_assist.models.registry import project_weights_dir

    need(project_weights_dir() / "cxr-pneumonia" / "model.json")  # shipped: missing fails
    e = reg.verify_entry(reg.get("cxr-pneumonia"))
    assert e.contains_code is False and e.runnable_without_prompt is True
    assert e.to_dict()["contains_code"] is False


@need_bundles
def test_bundle_weights_hash_checked_before_any_config_is_parsed(tmp_path, monkeypatch):
    import monai.bundle

    from imaging_assist.models.bundle import derive_card
    from imaging_assist.models.errors import WeightsMismatchError
    from imaging_assist.models.loaders import load_model

    b = _spleen(tmp_path)
    card = derive_card(b)
    w = b / "models" / "model.pt"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    made = []
    real_init = monai.bundle.ConfigParser.__init__

    def spy(self, *a, **k):
        made.append(1)
        real_init(self, *a, **k)

    monkeypatch.setattr(monai.bundle.ConfigParser, "__init__", spy)
    with pytest.raises(WeightsMismatchError):
        load_model(card)
    assert not made


# =========================================================================== weights files
@need_bundles
def test_pickle_with_os_system_reduce_never_runs(tmp_path):
    from imaging_assist.models.bundle import derive_card
    from imaging_assist.models.errors import ModelLoadError
    from imaging_assist.models.loaders import load_model

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    b = _spleen(tmp_path)
    with open(b / "models" / "model.pt", "wb") as f:
        pickle.dump({"model": Evil()}, f)
    _write_md5(b)
    with pytest.raises(ModelLoadError, match="weights_only=True") as ei:
        load_model(derive_card(b))
    assert "\n" not in str(ei.value)
    assert not marker.exists()


@need_bundles
def test_torchscript_file_as_state_dict_weights_is_a_one_line_error(tmp_path):
    from imaging_assist.models.bundle import derive_card
    from imaging_assist.models.errors import ModelLoadError
    from imaging_assist.models.loaders import load_model

    b = _spleen(tmp_path)
    ts = torch.jit.script(torch.nn.Linear(2, 2))
    ts.save(str(b / "models" / "model.pt"))
    _write_md5(b)
    with pytest.raises(ModelLoadError) as ei:
        load_model(derive_card(b))
    assert "\n" not in str(ei.value)


def test_torchscript_file_as_safetensors_weights_is_a_one_line_error(tmp_path):
    from imaging_assist.models.build import save_model_folder
    from imaging_assist.models.card import load_card
    from imaging_assist.models.errors import ModelLoadError
    from imaging_assist.models.loaders import load_model, sha256_file

    from test_models_card_loaders import base_card, tiny_unet

    f = save_model_folder(tmp_path / "m", base_card(), tiny_unet())
    w = f / "model.safetensors"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(w))
    d = json.loads((f / "model.json").read_text())
    d["weights"][0]["sha256"] = sha256_file(w)
    (f / "model.json").write_text(json.dumps(d))
    with pytest.raises(ModelLoadError, match="safetensors") as ei:
        load_model(load_card(f))
    assert "\n" not in str(ei.value)


# =========================================================================== card limits
def _tiny_folder(tmp_path):
    from imaging_assist.models.build import save_model_folder

    from test_models_card_loaders import base_card, tiny_unet

    return save_model_folder(tmp_path / "m", base_card(), tiny_unet())


def test_card_weights_hash_checked_before_the_network_is_built(tmp_path, monkeypatch):
    from imaging_assist.models import architectures
    from imaging_assist.models.card import load_card
    from imaging_assist.models.errors import WeightsMismatchError
    from imaging_assist.models.loaders import load_model

    f = _tiny_folder(tmp_path)
    w = f / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    built = []
    real = architectures.build_network
    monkeypatch.setattr(architectures, "build_network", lambda *a, **k: built.append(1) or real(*a, **k))
    with pytest.raises(WeightsMismatchError):
        load_model(load_card(f))
    assert not built


@pytest.mark.parametrize("path,value,field", [
    ("input.size", [100000, 100000], "input.size"),
    ("input.size", [4097, 16], "input.size"),
    ("input.roi_size", [5000, 5000], "input.roi_size"),
    ("input.channels", True, "input.channels"),
    ("input.spacing", [1e300, 1.0], "input.spacing"),
    ("labels", [f"l{i}" for i in range(5000)], "labels"),
    ("labels", ["background", "x" * 100000], "labels"),
    ("name", "n" * 1_000_000, "name"),
    ("architecture.kwargs.channels", [4, 2 ** 40], "architecture.kwargs.channels"),
    ("architecture.kwargs.channels", [4, float("nan")], "architecture.kwargs.channels"),
    ("architecture.kwargs.strides", list(range(10000)), "architecture.kwargs.strides"),
    ("architecture.name", "U" * 5000, "architecture.name"),
    ("inference.sw_batch_size", 10 ** 9, "inference.sw_batch_size"),
    ("inference.batch_size", 10 ** 9, "inference.batch_size"),
    ("inference.batch_size", 0, "inference.batch_size"),
    ("inference.batch_size", 2.5, "inference.batch_size"),
    ("input.intensity", [{"type": "minmax"}] * 1000, "input.intensity"),
])
def test_absurd_card_fields_are_one_line_card_errors(tmp_path, path, value, field):
    from imaging_assist.models.card import load_card
    from imaging_assist.models.errors import ModelCardError

    f = _tiny_folder(tmp_path)
    d = json.loads((f / "model.json").read_text())
    cur = d
    parts = path.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    (f / "model.json").write_text(json.dumps(d))
    with pytest.raises(ModelCardError) as ei:
        load_card(f)
    msg = str(ei.value)
    assert "\n" not in msg and field in msg and len(msg) < 2000


def test_network_over_the_size_limit_is_refused_before_allocation(tmp_path, monkeypatch):
    """The parameter count is estimated on the meta device; nothing real is allocated."""
    from imaging_assist.models import architectures
    from imaging_assist.models.card import load_card
    from imaging_assist.models.errors import ModelCardError
    from imaging_assist.models.loaders import load_model

    f = _tiny_folder(tmp_path)
    monkeypatch.setattr(architectures, "MAX_PARAMETERS", 100)
    with pytest.raises(ModelCardError, match="architecture") as ei:
        load_model(load_card(f))
    assert "\n" not in str(ei.value) and "parameters" in str(ei.value)


def test_huge_network_in_a_card_is_refused_fast_without_allocating(tmp_path):
    """~40 G parameters (160 GB) in a ResNet that passes every per-value check: the estimate
    on the meta device refuses it.  Run in a child process to measure its peak memory."""
    code = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[2])
from test_models_card_loaders import base_card, tiny_unet
from imaging_assist.models.build import save_model_folder
from imaging_assist.models.card import load_card
from imaging_assist.models.errors import ModelCardError
from imaging_assist.models.loaders import load_model
from pathlib import Path
f = save_model_folder(Path(sys.argv[1]) / "m", base_card(), tiny_unet())
d = json.loads((f / "model.json").read_text())
d["architecture"] = {"library": "monai", "name": "ResNet", "kwargs": {
    "block": "basic", "layers": [8, 8, 8, 8], "block_inplanes": [16384, 16384, 16384, 16384],
    "spatial_dims": 2, "n_input_channels": 1, "num_classes": 2}}
d["task"] = "classification"; d["labels"] = ["a", "b"]; d["thresholds"] = {}
d["input"] = {"channels": 1, "size": [32, 32]}
(f / "model.json").write_text(json.dumps(d))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.time()
try:
    load_model(load_card(f))
    print("LOADED")
except ModelCardError as e:
    print("CARDERR", str(e).count("\n"), "parameters" in str(e))
print("MB", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, "S", time.time() - t)
"""
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(ROOT / "tests")],
                       capture_output=True, text=True, timeout=300)
    out = r.stdout.split()
    assert r.returncode == 0, r.stderr[-2000:]
    assert out[:3] == ["CARDERR", "0", "True"], r.stdout
    mb, secs = float(out[out.index("MB") + 1]), float(out[out.index("S") + 1])
    assert mb < 300 and secs < 60, (mb, secs)


SHIPPED = sorted((ROOT / "weights").glob("*/model.json"))


def _mutations(card: dict, rng: random.Random):
    """(description, mutated card) pairs: absurd numbers, wrong types, NaN, huge strings,
    missing keys, on every top-level field and the size-bearing nested ones."""
    bad_values = [None, True, -1, 0, 2 ** 31, 2 ** 63, 1e308, float("nan"), float("inf"), "x" * 200_000,
                  [], {}, [float("nan")], [2 ** 40, 2 ** 40], ["a"] * 10_000, {"a": {"b": {"c": [1e300]}}}]
    for k in list(card):
        c = dict(card)
        del c[k]
        yield f"missing {k}", c
        for v in rng.sample(bad_values, 5):
            c = json.loads(json.dumps(card))
            c[k] = v
            yield f"{k}={str(v)[:30]}", c
    nested = [("input", "size"), ("input", "channels"), ("input", "spacing"), ("input", "intensity"),
              ("input", "roi_size")]
    kw = card.get("architecture", {}).get("kwargs", {})
    nested += [("architecture", "kwargs", k) for k in kw] + [("architecture", "name"),
                                                            ("architecture", "library")]
    for path in nested:
        for v in rng.sample(bad_values, 7):
            c = json.loads(json.dumps(card))
            cur = c
            for p in path[:-1]:
                cur = cur[p]
            cur[path[-1]] = v
            yield f"{'.'.join(path)}={str(v)[:30]}", c


def test_fuzzed_shipped_cards_fail_with_one_line_errors_only(tmp_path):
    """Mutated shipped cards: load_card + load_model end in a one-line UserError (a card
    problem) or a model that loaded; never another exception, fast, bounded memory.
    (A failure to fit the weights is a ModelLoadError; size and type problems ModelCardError.)"""
    import resource
    import time

    from imaging_assist.models.card import load_card
    from imaging_assist.models.errors import ModelCardError, ModelLoadError
    from imaging_assist.models.loaders import load_model

    rng = random.Random(12)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n = 0
    for cj in SHIPPED:
        card = json.loads(cj.read_text())
        f = tmp_path / cj.parent.name
        f.mkdir()
        for w in card["weights"]:
            os.symlink(cj.parent / w["file"], f / w["file"])
        for what, c in _mutations(card, rng):
            (f / "model.json").write_text(json.dumps(c))
            t = time.time()
            try:
                load_model(load_card(f))
            except (ModelCardError, ModelLoadError) as e:
                assert "\n" not in str(e) and len(str(e)) < 3000, (cj.parent.name, what, str(e)[:300])
            except Exception as e:  # noqa: BLE001
                pytest.fail(f"{cj.parent.name} {what}: {type(e).__name__}: {str(e)[:300]}")
            assert time.time() - t < 20, (cj.parent.name, what)
            n += 1
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert n > 200 and grown < 500, (n, grown)


def test_size_fields_of_shipped_cards_are_card_errors(tmp_path):
    from imaging_assist.models.card import load_card
    from imaging_assist.models.errors import ModelCardError

    assert SHIPPED, "shipped cards missing from weights/"
    cj = SHIPPED[0]
    f = tmp_path / "m"
    f.mkdir()
    for field, v in [("size", [10 ** 6, 10 ** 6]), ("size", [float("nan"), 1]), ("channels", 10 ** 9)]:
        c = json.loads(cj.read_text())
        c["input"][field] = v
        (f / "model.json").write_text(json.dumps(c))
        with pytest.raises(ModelCardError, match=f"input.{field}"):
            load_card(f)


def test_model_json_that_is_too_big_is_refused_before_parsing(tmp_path):
    from imaging_assist.models.card import load_card
    from imaging_assist.models.errors import ModelCardError

    f = tmp_path / "m"
    f.mkdir()
    (f / "model.json").write_text('{"description": "' + "x" * (5 << 20) + '"}')
    with pytest.raises(ModelCardError, match="too big"):
        load_card(f)


# =========================================================================== YAML
@need_bundles
def test_large_files_yaml_is_read_with_pyyaml(tmp_path):
    from imaging_assist.models.bundle import derive_card

    b = _spleen(tmp_path)
    md5 = hashlib.md5((b / "models" / "model.pt").read_bytes()).hexdigest()
    # a trailing comment and flow style: valid YAML the old line reader got wrong
    (b / "large_files.yml").write_text(
        "# published hashes\nlarge_files: [{path: models/model.pt, hash_type: md5, "
        f"hash_val: '{md5}'}}]  # end\n")
    assert derive_card(b).weights[0].md5 == md5
    (b / "large_files.yml").write_text(
        f'large_files:\n- path: "models/model.pt"  # the weights\n  hash_val: "{md5}"  # md5\n'
        '  hash_type: md5\n')
    assert derive_card(b).weights[0].md5 == md5


@need_bundles
def test_yaml_with_python_tags_is_never_constructed(tmp_path):
    from imaging_assist.models.bundle import derive_card
    from imaging_assist.models.bundle_code import bundle_code
    from imaging_assist.models.errors import ModelCardError

    marker = tmp_path / "ran"
    b = _spleen(tmp_path)
    (b / "large_files.yml").write_text(
        f"large_files: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ModelCardError) as ei:
        derive_card(b)
    assert "\n" not in str(ei.value) and "large_files.yml" in str(ei.value)
    _write_md5(b)
    (b / "configs" / "evaluate.yaml").write_text(
        f"x: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ModelCardError, match="evaluate.yaml"):
        bundle_code(b)
    assert not marker.exists()


@need_bundles
def test_yaml_inference_config_gives_spatial_dims(tmp_path):
    import yaml

    from imaging_assist.models.bundle import derive_card

    b = _spleen(tmp_path)
    cfg = json.loads((b / "configs" / "inference.json").read_text())
    (b / "configs" / "inference.json").unlink()
    (b / "configs" / "inference.yaml").write_text(yaml.safe_dump(cfg))
    meta = json.loads((b / "configs" / "metadata.json").read_text())
    meta["network_data_format"]["inputs"]["image"].pop("spatial_shape", None)
    (b / "configs" / "metadata.json").write_text(json.dumps(meta))
    assert derive_card(b).spatial_dims == 3


# =========================================================================== package structure
def _imports(path: Path, module_level_only: bool) -> set[str]:
    """Sibling modules of imaging_assist.models that ``path`` imports."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    out = set()
    for n in nodes:
        if isinstance(n, ast.ImportFrom) and n.level == 1:
            if n.module:
                out.add(n.module.split(".")[0])
            else:
                out.update(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom) and (n.module or "").startswith("imaging_assist.models."):
            out.add(n.module.split(".")[2])
    return out


@pytest.mark.parametrize("module_level_only", [True, False])
def test_models_package_has_no_import_cycle(module_level_only):
    mods = {p.stem: p for p in MODELS_PKG.glob("*.py") if p.stem != "__init__"}
    graph = {m: _imports(p, module_level_only) & set(mods) for m, p in mods.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack + [m, d]))
            if not state.get(d):
                visit(d, stack + [m])
        state[m] = 2

    for m in graph:
        if not state.get(m):
            visit(m, [])


def test_each_models_module_imports_alone_in_a_fresh_interpreter():
    mods = sorted(p.stem for p in MODELS_PKG.glob("*.py") if p.stem != "__init__")
    assert {"errors", "trust", "bundle_code"} <= set(mods)
    code = ("import importlib, sys\n"
            f"for m in {mods!r}:\n"
            "    for k in [k for k in sys.modules if k.startswith('imaging_assist')]:\n"
            "        del sys.modules[k]\n"
            "    importlib.import_module('imaging_assist.models.' + m)\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


def test_errors_live_in_models_errors_and_are_user_errors():
    from imaging_assist.models import architectures, card, errors, loaders

    assert card.ModelCardError is errors.ModelCardError
    assert loaders.ModelLoadError is errors.ModelLoadError
    assert loaders.WeightsMismatchError is errors.WeightsMismatchError
    assert architectures.ArchitectureError is errors.ArchitectureError
    for name in ("ModelCardError", "ModelLoadError", "WeightsMismatchError", "ModelTrustError",
                 "ArchitectureError"):
        assert issubclass(getattr(errors, name), UserError)
    assert issubclass(errors.ModelTrustError, errors.ModelLoadError)  # existing catchers see it


def test_models_package_imports_no_inference_explain_slides_or_ui():
    for p in MODELS_PKG.glob("*.py"):
        for n in ast.walk(ast.parse(p.read_text())):
            names = []
            if isinstance(n, ast.ImportFrom):
                names = [("." * n.level) + (n.module or "")]
            elif isinstance(n, ast.Import):
                names = [a.name for a in n.names]
            for name in names:
                bad = any(name.startswith(x) for x in (
                    "..inference", "..explain", "..slides", "..cli", "imaging_assist.inference",
                    "imaging_assist.explain", "imaging_assist.slides", "imaging_assist.cli",
                    "PySide6", "imaging_assist_ui"))
                assert not bad, f"{p.name}:{n.lineno} imports {name}"
    assert math.isfinite(1.0)


@need_bundles
def test_fuzzed_real_bundle_fails_with_one_line_errors_only(tmp_path):
    """The real spleen bundle with mutated metadata and inference config (absurd numbers,
    wrong types, expressions, garbage transforms, flipped bytes, truncation): derive_card +
    load_model end in a one-line UserError or a loaded model; no other exception, nothing
    of the bundle's code runs, fast."""
    import time

    from imaging_assist.models.bundle import derive_card
    from imaging_assist.models.loaders import load_model

    marker = tmp_path / "ran"
    expr = f"$__import__('pathlib').Path({str(marker)!r}).touch()"
    b = _spleen(tmp_path)
    cfg_p, meta_p = b / "configs" / "inference.json", b / "configs" / "metadata.json"
    cfg0, meta0 = cfg_p.read_bytes(), meta_p.read_bytes()
    rng = random.Random(7)
    bad = [None, True, -1, 0, 2 ** 31, 1e308, float("nan"), "x" * 100_000, [], {}, [2 ** 16] * 5,
           {"_target_": "os.system", "command": f"touch {marker}"}, expr, "@nowhere", "%x.json::a",
           {"_target_": 5}, [{"_target_": "Compose"}]]

    def json_mut(data: bytes, paths):
        d = json.loads(data)
        for path in paths:
            cur = d
            for p in path[:-1]:
                cur = cur[p] if isinstance(cur, dict) else cur[int(p)]
            last = int(path[-1]) if isinstance(cur, list) else path[-1]
            if rng.random() < 0.15:
                del cur[last]
            else:
                cur[last] = rng.choice(bad)
        return json.dumps(d).encode()

    cfg = json.loads(cfg0)
    meta = json.loads(meta0)
    cfg_paths = [("network_def", k) for k in cfg["network_def"]] + [
        ("preprocessing", "transforms", str(i)) for i in range(len(cfg["preprocessing"]["transforms"]))] + [
        ("postprocessing", "transforms", str(i)) for i in range(len(cfg["postprocessing"]["transforms"]))] + [
        ("inferer", k) for k in cfg["inferer"]] + [(k,) for k in cfg]
    img = meta["network_data_format"]["inputs"]["image"]
    meta_paths = [(k,) for k in meta] + [("network_data_format", "inputs", "image", k) for k in img] + [
        ("network_data_format", "outputs", "pred", k) for k in meta["network_data_format"]["outputs"]["pred"]]
    cases = []
    for p in cfg_paths:
        cases += [(json_mut(cfg0, [p]), meta0) for _ in range(3)]
    for p in meta_paths:
        cases += [(cfg0, json_mut(meta0, [p])) for _ in range(3)]
    for _ in range(30):
        for src, is_cfg in ((cfg0, True), (meta0, False)):
            data = bytearray(src)
            if rng.random() < 0.5:
                for _ in range(rng.randint(1, 5)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
            else:
                data = data[:rng.randrange(len(data))]
            cases.append((bytes(data), meta0) if is_cfg else (cfg0, bytes(data)))
    rng.shuffle(cases)
    outcomes = []
    for c, m in cases[:60]:
        cfg_p.write_bytes(c)
        meta_p.write_bytes(m)
        t = time.time()
        try:
            load_model(derive_card(b))
            outcomes.append("loaded")
        except UserError as e:
            assert "\n" not in str(e) and len(str(e)) < 3000, str(e)[:500]
            outcomes.append(type(e).__name__)
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"{type(e).__name__}: {str(e)[:300]}\nconfig: {c[:300]!r}\nmeta: {m[:200]!r}")
        assert time.time() - t < 30
        assert not marker.exists(), c[:500]
    assert {"loaded", "ModelTrustError", "ModelCardError", "ModelLoadError"} <= set(outcomes), outcomes


def test_plain_targets_with_file_arguments_are_code(tmp_path):
    """A building block pointed at files/URLs (``pretrained_path``, ``output_dir``) can read
    or write outside the bundle: listed as code; plain arguments are not."""
    from imaging_assist.models.bundle_code import bundle_code

    b = tmp_path / "b"
    (b / "configs").mkdir(parents=True)
    (b / "configs" / "metadata.json").write_text("{}")
    (b / "configs" / "inference.json").write_text(json.dumps({
        "network_def": {"_target_": "SwinUNETR", "in_channels": 1, "out_channels": 2,
                        "pretrained_path": "/etc/passwd"},
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "DataStatsd", "keys": "image", "output_dir": "/tmp/x"}]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [8, 8, 8],
                    "cache_roi_weight_map": True}}))
    runs = sorted((i.key, i.kind) for i in bundle_code(b) if i.runs)
    assert runs == [("network_def::pretrained_path", "file argument"),
                    ("preprocessing::transforms::1::output_dir", "file argument")]


@need_bundles
def test_absurd_sizes_in_a_bundle_without_code_are_refused_before_running(tmp_path):
    """A code-free bundle can still ask for a 10^10-voxel resize or window: refused at load
    (one line naming the item) instead of a runaway allocation on the first image."""
    from imaging_assist.models.bundle import derive_card
    from imaging_assist.models.errors import ModelCardError
    from imaging_assist.models.loaders import load_model

    cases = [
        lambda d: d["inferer"].__setitem__("roi_size", [4000, 4000, 4000]),
        lambda d: d["preprocessing"]["transforms"][3].__setitem__("pixdim", [1e-6, 1e-6, 1e-6]),
        lambda d: d["inferer"].__setitem__("sw_batch_size", 10 ** 6),
        lambda d: d["preprocessing"]["transforms"].insert(
            3, {"_target_": "Resized", "keys": "image", "spatial_size": 100000}),
    ]
    for n, fn in enumerate(cases):
        b = _spleen(tmp_path, f"s{n}")
        _edit_config(b, fn)
        with pytest.raises(ModelCardError) as ei:
            load_model(derive_card(b))
        assert "\n" not in str(ei.value), str(ei.value)


def test_trust_store_writable_by_others_is_not_believed(tmp_path):
    from imaging_assist.models import trust as tr

    need(BUNDLES)
    b = _spleen(tmp_path)
    tr.trust(b)
    assert tr.is_trusted(b)
    os.chmod(tr.trust_file(), 0o666)
    assert tr.is_trusted(b) is False
    from imaging_assist.models.errors import ModelTrustError

    with pytest.raises(ModelTrustError, match="writable"):
        tr.trust(b)


def test_weights_file_that_is_not_a_regular_file_or_too_big_is_refused_before_reading(
        tmp_path, monkeypatch):
    """A weights 'file' that is /dev/zero or larger than any loadable network is refused
    from its stat, before a byte is read (no endless read, no huge allocation)."""
    from imaging_assist.models import loaders
    from imaging_assist.models.card import load_card
    from imaging_assist.models.errors import ModelLoadError

    f = _tiny_folder(tmp_path)
    w = f / "model.safetensors"
    monkeypatch.setattr(loaders, "MAX_WEIGHTS_BYTES", 100)
    for fn in (lambda: loaders.load_model(load_card(f)), lambda: loaders.verify(load_card(f))):
        try:
            r = fn()
            assert not r[0].ok and "larger" in r[0].message
        except ModelLoadError as e:
            assert "larger" in str(e) and "\n" not in str(e)
    monkeypatch.undo()
    if os.path.exists("/dev/zero"):
        w.unlink()
        os.symlink("/dev/zero", w)
        with pytest.raises(ModelLoadError, match="not a regular file") as ei:
            loaders.load_model(load_card(f))
        assert "\n" not in str(ei.value)
        assert loaders.verify(load_card(f))[0].ok is False


@need_bundles
def test_bundle_license_that_is_endless_is_read_only_in_part(tmp_path):
    from imaging_assist.models.bundle import derive_card

    import resource

    b = _spleen(tmp_path)
    with open(b / "LICENSE", "r+b") as f:  # 1 GiB, sparse: costs no disk
        f.truncate(1 << 30)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert derive_card(b).license
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 200


_WRITES_A_FILE = '''
import torch


class WritesAFileWhenLoaded(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.ones(2, 1)

    def forward(self, x):
        return x.mean((2, 3)) @ self.w.t()

    @torch.jit.export
    def __getstate__(self):
        return (self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]):
        t = torch.from_file(MARKER, True, 16, dtype=torch.uint8)
        t.fill_(65)
        self.w = state[0] + t[:1].float().sum() * 0  # used, so the compiler keeps the write
        self.training = state[1]
'''


def _scripted_file_writer(tmp_path: Path, marker: Path, name: str):
    """A scripted module whose load writes ``marker`` (its path a literal of the script's source)."""
    import importlib.util

    src = tmp_path / f"{name}.py"
    src.write_text(_WRITES_A_FILE.replace("MARKER", repr(str(marker))))
    spec = importlib.util.spec_from_file_location(name, src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return torch.jit.script(mod.WritesAFileWhenLoaded())


def test_torchscript_weights_are_a_program_and_load_only_when_trusted(tmp_path, capsys):
    """A TorchScript model copied from elsewhere runs code as it is loaded (here it writes a
    file): it counts as code, is refused in one line until `models trust`, and trust covers the
    exact bytes; a TorchScript model this program built itself is trusted as it is written."""
    from imaging_assist.cli import main
    from imaging_assist.models import trust as tr
    from imaging_assist.models.build import save_model_folder
    from imaging_assist.models.errors import ModelTrustError
    from imaging_assist.models.registry import Registry

    marker = tmp_path / "written"
    lib = tmp_path / "lib"
    folder = lib / "ts"
    folder.mkdir(parents=True)
    _scripted_file_writer(tmp_path, marker, "writer1").save(str(folder / "model.ts"))
    assert not marker.exists()
    card = {"id": "ts-demo", "name": "TorchScript from elsewhere", "version": "1", "task": "classification",
            "modality": ["CR", "DX"], "spatial_dims": 2, "format": "torchscript",
            "weights": [{"file": "model.ts", "sha256": hashlib.sha256((folder / "model.ts").read_bytes()).hexdigest()}],
            "labels": ["a", "b"], "input": {"channels": 1, "size": [8, 8]}, "license": "x", "intended_use": "x",
            "not_for_clinical_use": True, "data": {"training": "x", "validation": "x"}}
    (folder / "model.json").write_text(json.dumps(card))
    reg = Registry([(lib, "added")])
    e = reg.verify_entry(reg.get(str(folder)))
    assert e.contains_code is True and e.trusted is False and e.runnable_without_prompt is False
    with pytest.raises(ModelTrustError) as ei:
        reg.load(str(folder))
    assert "\n" not in str(ei.value) and "TorchScript" in str(ei.value) and "models trust ts-demo" in str(ei.value)
    assert not marker.exists()
    # models show lists it as code that runs
    capsys.readouterr()
    assert main(["models", "show", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "TorchScript program" in out and "never run" not in out
    # trusted: it loads (and its code runs, as the user accepted)
    assert main(["models", "trust", str(folder), "--yes"]) == 0
    assert reg.load(str(folder)).kind == "torchscript" and marker.exists()
    marker.unlink()
    # other bytes under the same card hash -> not the trusted model any more
    _scripted_file_writer(tmp_path, Path(str(marker) + "2"), "writer2").save(str(folder / "model.ts"))
    card["weights"][0]["sha256"] = hashlib.sha256((folder / "model.ts").read_bytes()).hexdigest()
    (folder / "model.json").write_text(json.dumps(card))
    assert tr.is_trusted(folder) is False
    with pytest.raises(ModelTrustError):
        reg.load(str(folder))
    assert not Path(str(marker) + "2").exists()
    # built here: trusted as written, and it loads
    own = save_model_folder(tmp_path / "own", dict(card, id="ts-own"), torch.nn.Conv2d(1, 2, 1).eval(),
                            fmt="torchscript", example_input=torch.zeros(1, 1, 8, 8))
    assert tr.is_trusted(own) and reg.load(str(own)).kind == "torchscript"


def test_trust_records_what_was_shown_not_what_the_folder_holds_later(tmp_path):
    from imaging_assist.models import trust as tr
    from imaging_assist.models.errors import ModelTrustError

    b = _spleen(tmp_path) if BUNDLES.exists() else None
    need(BUNDLES)
    shown = tr.bundle_hash(b)
    _edit_config(b, lambda d: d.__setitem__("network", "$@network_def.to(@device)"))  # swapped while asking
    with pytest.raises(ModelTrustError) as ei:
        tr.trust(b, expect=shown)
    assert "changed while you were deciding" in str(ei.value) and tr.is_trusted(b) is False
    assert len(tr.trust(b, expect=tr.bundle_hash(b))) == 64 and tr.is_trusted(b)


@need_bundles
def test_a_bundle_that_needs_trust_lists_its_top_level_imports_as_code_that_runs(tmp_path, monkeypatch):
    """Trusted, a bundle's inference config is parsed as written and ConfigParser runs every
    ``$import`` in it: the trust prompt lists them as running, and they do run."""
    from imaging_assist.models import trust as tr
    from imaging_assist.models.bundle import derive_card
    from imaging_assist.models.bundle_code import bundle_code
    from imaging_assist.models.loaders import load_model

    marker = tmp_path / "imported"
    mod = tmp_path / "pymods"
    mod.mkdir()
    (mod / "evil_bundle_mod_x2.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    monkeypatch.syspath_prepend(str(mod))
    b = _spleen(tmp_path)
    _edit_config(b, lambda d: d["imports"].append("$import evil_bundle_mod_x2")
                 or d["inferer"].__setitem__("roi_size", "$[96, 96, 96]"))
    imp = [i for i in bundle_code(b) if "evil_bundle_mod_x2" in i.text]
    assert imp and all(i.runs for i in imp)
    tr.trust(b)
    load_model(derive_card(b))
    assert marker.exists()


@need_bundles
def test_a_class_named_by_string_is_code_unless_it_is_monais_own(tmp_path):
    """PatchInferer(merger_cls="x") makes MONAI import "x" by name (pydoc.locate): any module's
    top level would run while a "code-free" bundle loads. Named classes other than MONAI's own
    mergers are code (need trust); "AvgMerger" is not."""
    from imaging_assist.models.bundle import derive_card
    from imaging_assist.models.bundle_code import bundle_code
    from imaging_assist.models.errors import ModelTrustError
    from imaging_assist.models.loaders import load_model

    b = _spleen(tmp_path)
    _edit_config(b, lambda d: d.__setitem__("inferer", {"_target_": "PatchInferer", "merger_cls": "this"}))
    items = [i for i in bundle_code(b) if i.kind == "class by name"]
    assert [(i.key, i.runs) for i in items] == [("inferer::merger_cls", True)], [str(i) for i in items]
    with pytest.raises(ModelTrustError):
        load_model(derive_card(b))
    _edit_config(b, lambda d: d["inferer"].__setitem__("merger_cls", "AvgMerger"))
    assert not [i for i in bundle_code(b) if i.kind == "class by name"]


def test_a_card_cannot_make_the_network_download_or_read_files(tmp_path):
    """MONAI's HoVerNet downloads ``pretrained_url`` in its constructor: a plain card naming it
    (or any file/URL/class-by-name argument) is refused before anything is built."""
    from imaging_assist.models.architectures import build_network
    from imaging_assist.models.errors import ArchitectureError

    arch = {"library": "monai", "name": "HoVerNet",
            "kwargs": {"pretrained_url": "http://127.0.0.1:9/w.pth", "in_channels": 3, "out_classes": 2}}
    with pytest.raises(ArchitectureError) as e:
        build_network(arch, "hover")
    assert "pretrained_url" in str(e.value) and "\n" not in str(e.value)
    for k, v in (("weights_path", "/etc/passwd"), ("output_dir", "/tmp"), ("merger_cls", "this")):
        with pytest.raises(ArchitectureError):
            build_network({"library": "monai", "name": "UNet", "kwargs": {k: v}}, "u")


def test_a_card_spacing_far_finer_than_the_image_is_refused_before_resampling(tmp_path):
    """A valid but absurd input.spacing (0.005 mm on a ~0.45-mm CT slice: 46,200^2 pixels,
    25 GB) is one line before MONAI's Spacingd allocates anything."""

    from conftest import CT_PHANTOM
    from imaging_assist.dicom import load_series, scan
    from imaging_assist.inference.options import InputError
    from imaging_assist.inference.preprocess import model_input
    from imaging_assist.models.registry import Registry, project_weights_dir

    m = tmp_path / "seg-fine"
    shutil.copytree(need(project_weights_dir() / "cxr-lung-seg"), m)
    d = json.loads((m / "model.json").read_text())
    d.update(id="seg-fine", modality=["CT"])
    for k in ("population", "body_part", "quality_checks"):
        d.pop(k, None)
    d["input"]["spacing"] = [0.005, 0.005]
    (m / "model.json").write_text(json.dumps(d))
    card = Registry().get(str(m)).card
    vol = load_series(scan(str(need(CT_PHANTOM))).image_series()[0])
    with pytest.raises(InputError) as e:
        model_input(card, vol, 70)
    assert "would make" in str(e.value) and "\n" not in str(e.value)


@need_bundles
def test_size_limits_of_a_code_free_bundle_see_through_references_and_zoom(tmp_path):
    """A size behind an "@" reference, or a Zoomd factor of 200, passed the code-free bundle's
    size check (a literal was refused): both are refused before anything runs."""
    from imaging_assist.models.bundle_code import run_plan
    from imaging_assist.models.card import ModelCardError

    b = _spleen(tmp_path)
    _edit_config(b, lambda d: (d.__setitem__("big", [100000] * 3), d["inferer"].__setitem__("roi_size", "@big")))
    with pytest.raises(ModelCardError) as e:
        run_plan(b)
    assert "roi_size" in str(e.value) and "exceeds" in str(e.value)
    b = _spleen(tmp_path, "zoom")
    _edit_config(b, lambda d: d["preprocessing"]["transforms"].insert(
        2, {"_target_": "Zoomd", "keys": "@image_key", "zoom": 200, "keep_size": False}))
    with pytest.raises(ModelCardError) as e:
        run_plan(b)
    assert "zoom" in str(e.value)
    assert not run_plan(_spleen(tmp_path, "plain")).code  # the real bundle still passes
