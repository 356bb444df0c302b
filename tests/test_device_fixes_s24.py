"""Session 24, device and determinism fixes (no GPU needed: flags, code paths, monkeypatched
devices).

* fp32 on CUDA is IEEE fp32, not TF32: the fast path and the slide tiles switch TF32 off.
* results.json says how it was computed (``environment``: libraries, machine, GPU, TF32 flags).
* the CT nodule models say which of --device/--precision/--explain they ignore and record
  device "cpu" / precision "fp32" in each item; slide models say they ignore --precision.
* ``batch --engine local`` on a GPU runs one worker process, and says so.
* TileModel moves a shared model under the model's lock.
"""

from __future__ import annotations

import json
import threading
import types

import pytest
import torch

from conftest import SHARED, need

NODULE_VOI = SHARED / "ct" / "lidc_nodule_vois" / "images" / "LIDC-IDRI-0001_R_1.nii.gz"


def _flags() -> dict:
    b = torch.backends
    return {"conv": b.cudnn.conv.fp32_precision, "matmul": b.cuda.matmul.fp32_precision}


@pytest.fixture
def tf32_default():
    """torch's defaults (cuDNN convolutions in TF32), restored afterwards: the flags are
    process-wide."""
    b = torch.backends
    before = (b.cudnn.conv.fp32_precision, b.cuda.matmul.fp32_precision)
    b.cudnn.conv.fp32_precision = "tf32"
    b.cuda.matmul.fp32_precision = "tf32"
    yield
    b.cudnn.conv.fp32_precision, b.cuda.matmul.fp32_precision = before


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_fp32_on_cuda_switches_tf32_off(tf32_default, precision):
    from imaging_assist.inference.device import fast_path

    assert _flags() == {"conv": "tf32", "matmul": "tf32"}
    fp = fast_path(torch.device("cuda"), "classification", 2, precision)
    assert fp.precision == "fp32"
    assert _flags() == {"conv": "ieee", "matmul": "ieee"}


def test_cpu_runs_leave_the_flags_alone(tf32_default):
    from imaging_assist.inference.device import fast_path

    fast_path(torch.device("cpu"), "classification", 2, "auto")
    assert _flags() == {"conv": "tf32", "matmul": "tf32"}


def test_slide_tiles_on_cuda_without_tf32_and_the_shared_model_moved_under_its_lock(tf32_default):
    """TileModel (analyze, batch and the viewer's slide AI) on "cuda": TF32 off, and the shared
    model moved to the device with its lock held (the viewer's cache hands one model to
    several threads)."""
    from imaging_assist.models.registry import Registry
    from imaging_assist.slides.analysis import TileModel

    card = Registry().get("path-lung-tissue").card
    lock = threading.RLock()
    moved = []

    def to(device):  # no CUDA here: the move is recorded, with whether the lock was held
        moved.append((str(device), lock._is_owned()))
        return model

    model = types.SimpleNamespace(card=card, network=torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3)),
                                  lock=lock, to=to)
    TileModel(model, "cuda")
    assert moved == [("cuda", True)]
    assert _flags() == {"conv": "ieee", "matmul": "ieee"}


def test_results_json_records_the_environment(tmp_path, monkeypatch, tf32_default):
    from imaging_assist.inference.results import write_results_json

    p = write_results_json([], tmp_path / "cpu", {"id": "m"})
    env = json.loads(p.read_text())["environment"]
    assert env["torch"] == torch.__version__ and env["numpy"]
    assert {"monai", "pydicom", "torch_cuda_build", "machine", "processor", "python"} <= set(env)
    assert env["cuda"] is None  # this process never used a GPU
    # a process that ran on CUDA (faked): the card, cuDNN and the TF32 flags as the run left them
    from imaging_assist.inference.device import fast_path

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)
    fast_path(torch.device("cuda"), "segmentation", 3, "auto")
    env = json.loads(write_results_json([], tmp_path / "cuda", {"id": "m"}).read_text())["environment"]
    assert env["cuda"] == {"device": "NVIDIA H100 80GB HBM3", "cudnn": 91002,
                           "tf32": {"cudnn_conv_fp32_precision": "ieee", "cuda_matmul_fp32_precision": "ieee"}}


def test_ct_nodule_models_say_which_options_they_ignore(tmp_path, capsys):
    """The auditor's repro: --device cuda --precision bf16 --explain ig on a CUDA-less machine
    ran silently on the CPU, fp32, Grad-CAM; now one line per ignored option, and each item
    records where and how it ran."""
    from imaging_assist.cli import main

    out = tmp_path / "out"
    rc = main(["analyze", "--model", "ct-nodule-malignancy", "--device", "cuda", "--precision", "bf16",
               "--explain", "ig", str(need(NODULE_VOI)), "--out", str(out)])
    assert rc == 0
    err = capsys.readouterr().err
    doc = json.loads((out / "results.json").read_text())
    why = "the CT nodule models run fp32 on the CPU with Grad-CAM"
    said = [n for n in doc["notes"] if n.startswith(why)]
    assert said == [f"{why}: --device cuda ignored", f"{why}: --precision bf16 ignored",
                    f"{why}: --explain ig ignored"]
    assert all(f"note: {n}" in err for n in said)
    (it,) = doc["items"]
    assert it["device"] == "cpu" and it["precision"] == "fp32"


def test_ct_nodule_models_say_nothing_for_what_they_do(tmp_path):
    from types import SimpleNamespace

    from imaging_assist.cli.analyze_nodules import ignored_options

    for dev, prec, ex in [("auto", "auto", None), ("cpu", "fp32", "gradcam"), ("cpu", "auto", "grad-cam")]:
        assert ignored_options(SimpleNamespace(device=dev, precision=prec, explain=ex)) == []


def _phantom_slide(folder):
    from imaging_assist.slides.synth import make_levels, tissue_phantom, write_pyramid_tiff

    rgb, _, _ = tissue_phantom(700, 900, seed=3)
    folder.mkdir()
    return write_pyramid_tiff(folder / "phantom.tif", make_levels(rgb, 256), tile=256, mpp=0.7,
                              compression="jpeg")


def test_slide_models_say_they_ignore_precision_in_analyze(tmp_path, capsys):
    from imaging_assist.cli import main

    slide = _phantom_slide(tmp_path / "src")
    line = "slide models run their tiles in fp32 (the results record it): --precision bf16 ignored"
    out = tmp_path / "out"
    assert main(["analyze", str(slide), "--model", "path-lung-tissue", "--precision", "bf16",
                 "--top-tiles", "1", "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert line in doc["notes"] and f"note: {line}" in capsys.readouterr().err
    assert doc["items"][0]["precision"] == "fp32"
    # what they do: nothing to say; an explanation method they do not use: said too
    from imaging_assist.slides.analysis import ignored_options

    assert ignored_options("fp32", "gradcam") == ignored_options("auto", None) == []
    assert ignored_options("auto", "ig") == ["slide models explain their top tiles with Grad-CAM: --explain ig ignored"]


def test_slide_models_say_they_ignore_precision_in_batch(tmp_path):
    """batch: the slide item's own results.json (and its row) warns."""
    from imaging_assist.batch.item import Settings
    from imaging_assist.batch.run import run_batch

    _phantom_slide(tmp_path / "src")
    line = "slide models run their tiles in fp32 (the results record it): --precision bf16 ignored"
    bout = tmp_path / "batch"
    res = run_batch([str(tmp_path / "src")], ["path-lung-tissue"],
                    Settings(out_dir=str(bout), precision="bf16", top_tiles=1), echo=lambda m: None,
                    progress=False)
    assert res["ok"] == 1, res
    (rj,) = bout.rglob("results.json")
    (it,) = json.loads(rj.read_text())["items"]
    assert line in it["warnings"]


def test_batch_on_a_gpu_runs_one_worker_process_and_says_so(monkeypatch):
    import imaging_assist.inference.device as device
    from imaging_assist.batch import engines

    monkeypatch.setattr(engines.os, "cpu_count", lambda: 8)
    n = engines.PROCESS_MIN_ITEMS * 3
    monkeypatch.setattr(device, "resolve_device", lambda pref=None: torch.device("cuda"))
    assert engines.processes_for(n) == 1  # the default is "auto" (as --device)
    said = []
    assert engines.processes_for(n, 0, "auto", echo=said.append) == 1
    assert len(said) == 1 and "one worker process, not 8" in said[0] and "GPU (cuda)" in said[0]
    monkeypatch.setattr(device, "resolve_device", lambda pref=None: torch.device("mps"))
    assert engines.processes_for(n, 0, "mps", echo=said.append) == 1
    # --processes is obeyed; --device cpu and a CPU-only machine keep one process per CPU
    assert engines.processes_for(n, 4, "cuda", echo=said.append) == 4
    assert engines.processes_for(n, 0, "cpu", echo=said.append) == 8
    monkeypatch.setattr(device, "resolve_device", lambda pref=None: torch.device("cpu"))
    assert engines.processes_for(n, 0, "auto", echo=said.append) == 8
    assert engines.processes_for(10, 0, "auto", echo=said.append) == 1  # small batch: as before
    assert len(said) == 2
