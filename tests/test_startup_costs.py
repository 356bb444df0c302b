"""What a process pays before its first image (issue 19: batch worker start-up).

Measured with ``python -X importtime`` and cProfile (docs/scaling.md): torch's import 1.1 s,
MONAI's 3.0 s of which torchvision 1.3 s, and 1.1 s of torch._dynamo imported by the random
initialisers of a network built on the meta device.  These tests fail if any of that creeps
back, and check that the shortcuts change no result.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _py(code: str) -> dict:
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_reading_model_cards_does_not_import_torch():
    """The batch driver and `imaging-assist models` read cards (with their OOD block) only."""
    d = _py("import json, sys\n"
            "from imaging_assist.models.registry import Registry\n"
            "cards = [e.card for e in Registry().entries()]\n"
            "print(json.dumps({'n': len(cards), 'ood': sum(c.ood is not None for c in cards),\n"
            "                  'torch': 'torch' in sys.modules}))")
    assert d["n"] >= 6 and d["ood"] >= 5
    assert d["torch"] is False


def test_a_network_is_sized_on_meta_without_torch_dynamo_and_sized_the_same():
    from imaging_assist.models.architectures import _maker, check_network_size, network_size
    from imaging_assist.models.registry import Registry

    d = _py("import json, sys\n"
            "sys.modules['torchvision'] = None  # as in a batch worker (lean_imports)\n"
            "from imaging_assist.models.registry import Registry\n"
            "from imaging_assist.models.loaders import load_model\n"
            "for m in ('cxr-pneumonia', 'cxr-lung-seg', 'ct-nodule-seg', 'ct-nodule-malignancy'):\n"
            "    load_model(Registry().get(m).card)\n"
            "print(json.dumps({'dynamo': 'torch._dynamo' in sys.modules}))")
    assert d["dynamo"] is False
    for m in ("cxr-pneumonia", "ct-nodule-seg"):
        card = Registry().get(m).card
        make = _maker(card.architecture, m)
        assert check_network_size(make, m) == network_size(make())  # meta size == real size


def test_meta_build_skips_only_initialisers_of_meta_tensors():
    from imaging_assist.models.architectures import _NoRandomInit

    with _NoRandomInit():
        t = torch.zeros(1000)
        t.normal_()  # a real tensor is still initialised
    assert float(t.abs().sum()) > 0


def test_batch_workers_leave_torchvision_out_only_when_no_network_needs_it(tmp_path):
    """lean_imports in a fresh process: MONAI models -> torchvision marked absent, the model
    still loads and gives analyze's probability; a torchvision model or a torchvision import
    already done -> nothing changed."""
    code = ("import json, sys\n"
            "from imaging_assist.models.lean import lean_imports\n"
            "lean = lean_imports(['cxr-pneumonia', 'ct-nodule-seg'], explain=True)\n"
            "from imaging_assist.models.registry import Registry\n"
            "from imaging_assist.models.loaders import load_model\n"
            "from imaging_assist.inference.images import read_image\n"
            "from imaging_assist.inference.pipelines import run_model\n"
            f"v = read_image({str(_film())!r})\n"
            "r = run_model(load_model(Registry().get('cxr-pneumonia').card), v)\n"
            "print(json.dumps({'lean': lean, 'absent': [sys.modules.get(m, 'x') is None for m in\n"
            "                  ('torchvision', 'scipy.signal')],\n"
            "                  'p': r.probabilities}))")
    d = _py(code)
    assert d["lean"] is True and d["absent"] == [True, True]
    from imaging_assist.inference.images import read_image
    from imaging_assist.inference.pipelines import run_model
    from imaging_assist.models.loaders import load_model
    from imaging_assist.models.registry import Registry

    ref = run_model(load_model(Registry().get("cxr-pneumonia").card), read_image(_film()))
    assert d["p"].keys() == ref.probabilities.keys()
    np.testing.assert_allclose([d["p"][k] for k in ref.probabilities], list(ref.probabilities.values()), atol=1e-6)
    # torchvision already imported (this test process): left alone
    import torchvision  # noqa: F401

    from imaging_assist.models.lean import lean_imports

    assert lean_imports(["cxr-pneumonia"]) is False
    assert sys.modules["torchvision"] is not None


def test_lean_imports_refuses_a_torchvision_network_or_a_bundle(monkeypatch):
    from imaging_assist.models import lean
    from imaging_assist.models.registry import Registry

    real = Registry().get("cxr-pneumonia")

    class _Card:
        format = "safetensors"
        architecture = {"library": "torchvision", "name": "resnet18"}
        explanation_region = None

    class _Reg:
        def get(self, m):
            return type("E", (), {"card": _Card() if m == "other" else real.card})()

    monkeypatch.setattr("imaging_assist.models.registry.Registry", _Reg)
    names = ("monai",) + lean.LEAN_ABSENT
    saved = {m: sys.modules.pop(m) for m in names if m in sys.modules}  # as in a fresh worker
    try:
        assert lean.lean_imports(["cxr-pneumonia", "other"]) is False  # a torchvision network
        monkeypatch.setattr(_Card, "architecture", {"library": "monai", "name": "UNet"})
        monkeypatch.setattr(_Card, "format", "monai_bundle")
        assert lean.lean_imports(["other"]) is False  # a bundle
        assert not any(m in sys.modules for m in names)  # nothing marked
        monkeypatch.setattr(_Card, "format", "safetensors")
        assert lean.lean_imports(["cxr-pneumonia", "other"]) is True  # all MONAI networks
        assert all(sys.modules[m] is None for m in lean.LEAN_ABSENT)
    finally:
        for m in names:
            sys.modules.pop(m, None)
        sys.modules.update(saved)


def test_lean_imports_never_raises_and_leaves_everything_for_a_model_it_cannot_read(tmp_path):
    """An unknown id or a folder that is not a model: False, nothing marked (the command's own
    use of the model says what is wrong, in one line)."""
    d = _py("import json, sys\n"
            "from imaging_assist.models.lean import LEAN_ABSENT, lean_imports\n"
            f"r = [lean_imports(['no-such-model']), lean_imports([{str(tmp_path)!r}], explain=True), lean_imports([])]\n"
            "print(json.dumps({'r': r, 'marked': [sys.modules.get(m, 'x') is None for m in LEAN_ABSENT]}))")
    assert d == {"r": [False, False, False], "marked": [False, False]}


def test_weights_are_put_in_the_inputs_memory_format_once(monkeypatch):
    from imaging_assist.inference.images import read_image
    from imaging_assist.inference.pipelines import run_model
    from imaging_assist.models.loaders import load_model
    from imaging_assist.models.registry import Registry

    model = load_model(Registry().get("cxr-pneumonia").card)
    v = read_image(_film())
    first = run_model(model, v)
    assert model.memory_format is not None
    calls = []
    real_to = model.network.to

    def spy(*a, **k):
        calls.append(k.get("memory_format"))
        return real_to(*a, **k)

    monkeypatch.setattr(model.network, "to", spy)
    second = run_model(model, v)
    assert calls == []  # same format: not converted again
    assert first.probabilities == second.probabilities
    model.memory_format = torch.channels_last if model.memory_format is torch.contiguous_format \
        else torch.contiguous_format  # as if something else had converted it
    third = run_model(model, v)
    assert len(calls) == 1
    np.testing.assert_allclose(list(first.probabilities.values()), list(third.probabilities.values()), atol=1e-6)


def _film() -> Path:
    from conftest import SHARED, need

    d = need(SHARED / "cxr" / "pneumonia_kermany")
    first = (d / "labels.csv").read_text().splitlines()[1].split(",")[0]
    return d / first


def test_what_a_batch_worker_may_import_works_without_the_lean_modules():
    """Every engine module, and the libraries they import inside functions (Captum, highdicom,
    scikit-image, scipy.ndimage, matplotlib's colormaps, pynetdicom), import in a process where
    lean_imports marked LEAN_ABSENT absent: a worker never meets a missing module."""
    d = _py("import importlib, json, pkgutil, sys\n"
            "from imaging_assist.models import lean\n"
            "for m in lean.LEAN_ABSENT:\n"
            "    sys.modules[m] = None\n"
            "import imaging_assist\n"
            "bad = []\n"
            "names = [m.name for m in pkgutil.walk_packages(imaging_assist.__path__, 'imaging_assist.')]\n"
            "names += ['captum.attr', 'highdicom', 'highdicom.seg', 'highdicom.sr', 'skimage.measure',\n"
            "          'skimage.morphology', 'skimage.filters', 'skimage.draw', 'scipy.ndimage', 'scipy.stats',\n"
            "          'scipy.spatial', 'matplotlib.colormaps', 'pynetdicom', 'monai.networks.nets',\n"
            "          'monai.transforms', 'monai.inferers', 'monai.bundle']\n"
            "for n in names:\n"
            "    if '.training' in n or n.endswith('__main__'):  # training plots; the entry point\n"
            "        continue\n"
            "    try:\n"
            "        importlib.import_module(n)\n"
            "    except ModuleNotFoundError as e:\n"
            "        if any(m in str(e) for m in lean.LEAN_ABSENT):\n"
            "            bad.append(f'{n}: {e}')\n"
            "print(json.dumps({'n': len(names), 'bad': bad}))")
    assert d["n"] > 100
    assert d["bad"] == []


def test_the_tool_version_is_looked_up_once_and_recorded(tmp_path, monkeypatch):
    """results.json (one per item in a batch), reports and DICOM objects record the installed
    version; importlib.metadata parses the package metadata on each call (1 ms), so once."""
    import importlib.metadata

    import imaging_assist
    from imaging_assist.export.dicom_common import software_version
    from imaging_assist.inference.results import write_results_json

    calls = []
    real = importlib.metadata.version

    def spy(name):
        calls.append(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", spy)
    monkeypatch.setattr(imaging_assist, "_TOOL_VERSION", None)
    want = real("imaging-assist")
    for i in range(3):
        p = write_results_json([], tmp_path / str(i), {"id": "m"})
        assert json.loads(p.read_text())["tool_version"] == want
    assert software_version() == want and imaging_assist.tool_version() == want
    assert calls == ["imaging-assist"]


def _same(a, b, where="") -> list[str]:
    """Differences between two results.json trees (numbers to 1e-5; times, dates and output
    paths aside)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(a.keys() ^ b.keys())}"]
        return [d for k in a if k != "created" and not k.endswith("_s")
                for d in _same(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} != {len(b)} entries"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _same(x, y, f"{where}[{i}]")]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return [] if abs(a - b) <= 1e-5 else [f"{where}: {a} != {b}"]
    if isinstance(a, str) and isinstance(b, str) and ("/lean/" in a or "/ref/" in a):
        a, b = a.replace("/lean/", "/"), b.replace("/ref/", "/")
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def test_analyze_in_its_own_process_leaves_torchvision_out_with_the_same_results(tmp_path):
    """`imaging-assist analyze` (its own process: argv from the command line) marks
    torchvision and scipy.signal absent when only MONAI networks run (7.3 -> 5.1 s for one film
    here), and writes what an analyze that has them writes: a film with its explanation (and
    the lung-region model it uses), the CT nodule pair with the DICOM exports."""
    import nibabel as nib

    from conftest import SHARED, need
    from imaging_assist.cli.main import main

    slab = need(SHARED / "ct" / "lidc_idri_0001_slab")
    runs = {"film": [str(_film()), "--model", "cxr-pneumonia", "--explain", "gradcam"],
            "nodule": [str(slab), "--model", "ct-nodule-malignancy", "--at", "56.21,86.34,-115.87", "--dicom"]}
    for name, args in runs.items():
        lean, ref = tmp_path / name / "lean", tmp_path / name / "ref"
        argv = ["imaging-assist", "analyze", *args, "--out", str(lean)]
        d = _py("import json, sys\n"
                f"sys.argv = {argv!r}\n"
                "from imaging_assist.cli.main import main\n"
                "rc = main()\n"
                "print(json.dumps({'rc': rc, 'absent': [sys.modules.get(m, 'x') is None for m in\n"
                "                  ('torchvision', 'scipy.signal')], 'dynamo': 'torch._dynamo' in sys.modules}))")
        assert d == {"rc": 0, "absent": [True, True], "dynamo": False}, name
        assert main(["analyze", *args, "--out", str(ref)]) == 0  # this process: torchvision importable
        assert sys.modules.get("torchvision", "x") is not None
        a, b = (json.loads((p / "results.json").read_text()) for p in (lean, ref))
        assert _same(a, b) == [], name
        files = sorted(p.relative_to(lean) for p in lean.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(ref) for p in ref.rglob("*") if p.is_file())
        for f in files:
            if f.suffix == ".npy":
                np.testing.assert_allclose(np.load(lean / f), np.load(ref / f), atol=1e-5)
            elif f.name.endswith(".nii.gz"):
                np.testing.assert_allclose(nib.load(lean / f).get_fdata(), nib.load(ref / f).get_fdata(), atol=1e-5)
        if name == "nodule":
            assert {f.name.rsplit("_", 1)[-1] for f in files if f.parent.name == "dicom"} == \
                {"SR.dcm", "gradcam.dcm", "SEG.dcm", "PDF.dcm"}


def test_analyze_called_from_python_keeps_every_module_importable(tmp_path):
    """main(list) (tests, the viewer, another program) may load any model later: nothing is
    marked absent, even in a fresh process."""
    d = _py("import json, sys\n"
            "from imaging_assist.cli.main import main\n"
            f"rc = main(['analyze', {str(_film())!r}, '--model', 'cxr-pneumonia', '--out', {str(tmp_path / 'o')!r}])\n"
            "print(json.dumps({'rc': rc, 'tv': sys.modules.get('torchvision', 'x') is not None}))")
    assert d == {"rc": 0, "tv": True}


def test_the_batch_command_checks_explain_without_torch():
    """`imaging-assist batch --explain ig` names its method before any model loads; a driver
    that only schedules (--engine ray, or local with worker processes) never imports torch
    (1.5 s of every batch command before: canonical_method lived beside the Captum code)."""
    d = _py("import json, sys\n"
            "import imaging_assist.cli.batch, imaging_assist.batch.run\n"
            "from imaging_assist.explain.names import canonical_method\n"
            "import imaging_assist.explain as ex\n"
            "m = canonical_method('ig')\n"
            "print(json.dumps({'m': m, 'torch': 'torch' in sys.modules, 'same': ex.canonical_method is canonical_method}))")
    assert d == {"m": "integrated_gradients", "torch": False, "same": True}


def test_a_small_local_batch_in_its_own_process_leaves_torchvision_out(tmp_path):
    """`imaging-assist batch` with the local engine runs a small batch in its own process: the
    same lean imports as analyze, the same probabilities as analyze called from Python."""
    import shutil

    src = tmp_path / "films"
    src.mkdir()
    shutil.copy(_film(), src / _film().name)
    out = tmp_path / "b"
    argv = ["imaging-assist", "batch", str(src), "--model", "cxr-pneumonia", "--out", str(out)]
    d = _py("import json, sys\n"
            f"sys.argv = {argv!r}\n"
            "from imaging_assist.cli.main import main\n"
            "rc = main()\n"
            "print(json.dumps({'rc': rc, 'absent': sys.modules.get('torchvision', 'x') is None}))")
    assert d == {"rc": 0, "absent": True}
    from imaging_assist.cli.main import main

    assert main(["analyze", str(src), "--model", "cxr-pneumonia", "--out", str(tmp_path / "a")]) == 0
    a = json.loads((tmp_path / "a" / "results.json").read_text())["items"][0]["probabilities"]
    (b_json,) = out.rglob("results.json")
    b = json.loads(b_json.read_text())["items"][0]["probabilities"]
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in a)


def test_the_headless_demo_in_its_own_process_leaves_torchvision_out_with_the_same_report(tmp_path):
    """`imaging-assist demo --headless` (the offline clinic demo) runs the registry's MONAI
    networks and ends: the lean imports as analyze (14.3 -> 9.5 s here), and the same
    report.json as a demo called from Python (numbers to 1e-5)."""
    from imaging_assist.cli.main import main

    lean, ref = tmp_path / "lean", tmp_path / "ref"
    argv = ["imaging-assist", "demo", "--headless", "--device", "cpu", "--out", str(lean)]
    d = _py("import contextlib, io, json, sys\n"
            f"sys.argv = {argv!r}\n"
            "from imaging_assist.cli.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    rc = main()\n"
            "print(json.dumps({'rc': rc, 'absent': sys.modules.get('torchvision', 'x') is None}))")
    assert d == {"rc": 0, "absent": True}
    assert main(["demo", "--headless", "--device", "cpu", "--out", str(ref)]) == 0
    a, b = (json.loads((p / "report.json").read_text()) for p in (lean, ref))
    assert sum(len(s["analyses"]) for s in a["series"]) >= 3
    assert a.pop("out") == str(lean) and b.pop("out") == str(ref)
    assert _same(a, b) == []
