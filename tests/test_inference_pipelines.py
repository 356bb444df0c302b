"""Pipelines: geometry round trips (results land on the input's voxels), 2D axis orders,
per-slice classification, thresholds, input checks, cancellation, progress, CPU fallback."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn as nn

from imaging_assist.explain.methods import ExplainConfig
from imaging_assist.inference.device import GpuFallbackWarning
from imaging_assist.inference.jobs import Cancelled, submit
from imaging_assist.inference.pipelines import InputError, RunOptions, run_model
from imaging_assist.models.build import save_model_folder
from imaging_assist.models.card import load_card
from imaging_assist.models.loaders import load_model
from imaging_assist.volume import Volume

COMMON = {"version": "1.0", "license": "MIT", "intended_use": "tests",
          "not_for_clinical_use": True, "data": {"training": "none", "validation": "none"}}


class Threshold(nn.Module):
    """Pointwise segmenter: foreground logit k*(x - t), background the negative."""

    def __init__(self, nd: int, k: float = 20.0, t: float = 0.5, out: int = 2):
        super().__init__()
        conv = (nn.Conv2d if nd == 2 else nn.Conv3d)(1, out, 1)
        with torch.no_grad():
            w = torch.tensor([-k, k][-out:]).reshape((out, 1) + (1,) * nd)
            conv.weight.copy_(w)
            conv.bias.copy_(torch.tensor([k * t, -k * t][-out:]))
        self.conv = conv

    def forward(self, x):
        return self.conv(x)


class MeanClassifier(nn.Module):
    """logits (0, k*(mean(x) - 0.5)): 'abnormal' when the image is bright."""

    def __init__(self, k: float = 10.0):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.0, k]).reshape(2, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, -k * 0.5]))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.conv(x)).flatten(1)


def _ts_model(tmp_path, name, card, net, example):
    save_model_folder(tmp_path / name, dict(COMMON, id=name, name=name, **card), net,
                      fmt="torchscript", example_input=example)
    return load_model(load_card(tmp_path / name))


def dice(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


@pytest.fixture(scope="module")
def ct_box():
    """Coronal CT-like volume (i=+x, j=-z, k=+y), anisotropic voxels, a 300 HU box."""
    rng = np.random.default_rng(0)
    arr = rng.normal(0, 5, (20, 30, 40)).astype(np.float32)
    box = np.zeros(arr.shape, bool)
    box[5:15, 8:22, 10:30] = True
    arr[box] += 300
    direction = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])  # columns i, j, k
    vol = Volume(arr, spacing=(0.7, 1.3, 2.5), origin=(-10.0, 40.0, 25.0), direction=direction,
                 modality="CT", units="HU", slice_positions=np.arange(20) * 2.5)
    return vol, box


@pytest.fixture(scope="module")
def seg3d(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seg3d")
    card = {"task": "segmentation", "modality": "CT", "spatial_dims": 3,
            "labels": ["background", "box"],
            "input": {"channels": 1, "roi_size": [32, 32, 32], "spacing": [1.5, 1.5, 1.5],
                      "orientation": "RAS", "units": "HU",
                      "intensity": {"type": "window", "center": 150, "width": 300}},
            "inference": {"roi_multiple": 8, "overlap": 0.25}}
    return _ts_model(tmp, "thresh3d", card, Threshold(3), torch.zeros(1, 1, 8, 8, 8))


def test_3d_resample_orient_and_back_lands_on_the_same_voxels(seg3d, ct_box):
    vol, box = ct_box
    res = run_model(seg3d, vol, RunOptions(device="cpu", explain=ExplainConfig("saliency")))
    assert res.label_map.shape == vol.array.shape
    assert dice(res.label_map == 1, box) > 0.93
    # volume in mL from the voxel size
    n = int((res.label_map == 1).sum())
    assert res.volume_ml["box"] == pytest.approx(n * 0.7 * 1.3 * 2.5 / 1000, rel=1e-6)
    assert res.volume_ml["box"] == pytest.approx(box.sum() * 0.7 * 1.3 * 2.5 / 1000, rel=0.1)
    # the enlarged ROI covers the whole (resampled) volume in one window
    assert res.sliding_window["roi"] != [32, 32, 32]
    # the heat map (saliency of the region score) is on the box, not beside it
    heat = res.heatmaps[0].array
    assert heat.shape == vol.array.shape and res.heatmaps[0].target == "predicted_region"
    inner = np.zeros_like(box)
    inner[7:13, 10:20, 12:28] = True
    far = np.ones_like(box)
    far[3:17, 5:25, 7:33] = False
    assert heat[inner].mean() > 20 * max(heat[far].mean(), 1e-6)
    f = res.heatmaps[0].faithfulness
    assert f["deletion_auc"] < f["random_deletion_auc"] and f["faithfulness"] > 0


def test_roi_enlargement_gives_the_same_labels(seg3d, ct_box):
    vol, _ = ct_box
    a = run_model(seg3d, vol, RunOptions(device="cpu"))
    b = run_model(seg3d, vol, RunOptions(device="cpu", enlarge_roi=False))
    assert b.sliding_window["roi"] == [32, 32, 32]
    assert (a.label_map == b.label_map).mean() > 0.999


def test_2d_axis_orders_and_resize_keep_pixels_in_place(tmp_path):
    from PIL import Image

    from imaging_assist.inference.images import read_image

    img = np.full((50, 70), 20, np.uint8)
    img[10:20, 40:65] = 230  # rows 10-19, columns 40-64: clearly not symmetric
    f = tmp_path / "x.png"
    Image.fromarray(img).save(f)
    vol = read_image(f)
    expected = img > 128
    maps = []
    for order in ("row_col", "col_row"):
        card = {"task": "segmentation", "modality": ["OT"], "spatial_dims": 2,
                "labels": ["background", "bright"],
                "input": {"channels": 1, "size": [64, 64], "axis_order": order,
                          "intensity": {"type": "scale_range", "a_min": 0, "a_max": 255}}}
        m = _ts_model(tmp_path, f"t2d-{order.replace('_', '')}", card, Threshold(2),
                      torch.zeros(1, 1, 8, 8))
        res = run_model(m, vol, RunOptions(device="cpu"))
        assert res.label_map.shape == (1, 50, 70)
        assert dice(res.label_map[0] == 1, expected) > 0.95
        assert res.area_px is not None and res.area_mm2 is None and not res.has_geometry
        assert any("plain image" in w for w in res.warnings)
        maps.append(res.label_map)
    assert (maps[0] == maps[1]).mean() > 0.995


def test_area_in_mm2_for_a_dicom_like_2d_image(tmp_path):
    card = {"task": "segmentation", "modality": ["CR"], "spatial_dims": 2,
            "labels": ["background", "bright"],
            "input": {"channels": 1, "roi_size": [32, 32],
                      "intensity": {"type": "scale_range", "a_min": 0, "a_max": 1000}},
            "inference": {"roi_multiple": 8}}
    m = _ts_model(tmp_path, "cr2d", card, Threshold(2), torch.zeros(1, 1, 8, 8))
    arr = np.zeros((1, 40, 60), np.float32)
    arr[0, 5:15, 10:30] = 900
    vol = Volume(arr, spacing=(0.2, 0.25, 1.0), modality="CR", has_geometry=True)
    res = run_model(m, vol, RunOptions(device="cpu"))
    assert res.area_mm2["bright"] == pytest.approx(200 * 0.2 * 0.25, rel=1e-6)
    assert res.volume_ml is None


def test_per_slice_classification_thresholds_and_aggregation(tmp_path):
    card = {"task": "classification", "modality": ["CT"], "spatial_dims": 2,
            "labels": ["normal", "abnormal"],
            "thresholds": {"abnormal": {"threshold": 0.8, "sensitivity": 0.91, "specificity": 0.7}},
            "input": {"channels": 1, "size": [16, 16],
                      "intensity": {"type": "scale_range", "a_min": 0, "a_max": 100}}}
    m = _ts_model(tmp_path, "meancls", card, MeanClassifier(), torch.zeros(1, 1, 16, 16))
    means = np.array([10, 30, 50, 70, 60], np.float32)
    arr = np.broadcast_to(means[:, None, None], (5, 24, 20)).copy()
    vol = Volume(arr, spacing=(1, 1, 3), modality="CT", units="HU", slice_positions=np.arange(5) * 3.0)
    res = run_model(m, vol, RunOptions(device="cpu"))
    p = [s["abnormal"] for s in res.per_slice]
    expected = 1 / (1 + np.exp(-10 * (means / 100 - 0.5)))
    np.testing.assert_allclose(p, expected, atol=1e-5)
    assert res.aggregation == "max_over_slices"
    assert res.probabilities["abnormal"] == pytest.approx(expected.max(), abs=1e-5)
    d = res.decisions["abnormal"]
    assert d["positive"] is True and d["threshold"] == 0.8 and d["sensitivity"] == 0.91
    assert res.decisions["normal"] is None  # no operating point in the card: no decision


def test_sigmoid_segmentation_uses_card_threshold(tmp_path):
    card = {"task": "segmentation", "modality": ["OT"], "spatial_dims": 2,
            "labels": ["background", "lesion"], "output": {"activation": "sigmoid"},
            "thresholds": {"lesion": {"threshold": 0.9}},
            "input": {"channels": 1, "roi_size": [16, 16]}}
    m = _ts_model(tmp_path, "sig", card, Threshold(2, k=10, t=0.5, out=1), torch.zeros(1, 1, 8, 8))
    x = np.linspace(0, 1, 32, dtype=np.float32)
    vol = Volume(np.broadcast_to(x, (1, 16, 32)).copy(), has_geometry=False)
    res = run_model(m, vol, RunOptions(device="cpu"))
    p = 1 / (1 + np.exp(-10 * (x - 0.5)))
    np.testing.assert_array_equal(res.label_map[0, 0], (p >= 0.9).astype(np.uint8))


def test_input_checks_are_one_line_user_errors(tmp_path, seg3d, ct_box):
    vol, _ = ct_box
    plain = Volume(np.arange(400, dtype=np.float32).reshape(1, 20, 20), has_geometry=False)
    with pytest.raises(InputError, match="expects pixel values in HU"):
        run_model(seg3d, plain)
    no_units = Volume(vol.array, spacing=vol.spacing, modality="CT", units="HU",
                      slice_positions=np.r_[0, 2.5, 5, 12, 14.5, 17][:6].tolist() + [0] * 0)
    no_units.array = vol.array[:6]
    with pytest.raises(InputError, match="unevenly spaced") as ei:
        run_model(seg3d, no_units)
    assert "\n" not in str(ei.value)
    one = Volume(vol.array[:1], spacing=vol.spacing, modality="CT", units="HU")
    with pytest.raises(InputError, match="needs a series of several slices"):
        run_model(seg3d, one)
    card = {"task": "segmentation", "modality": ["OT"], "spatial_dims": 2,
            "labels": ["background", "a", "b"], "input": {"channels": 1, "roi_size": [16, 16]}}
    m = _ts_model(tmp_path, "wrongch", card, Threshold(2), torch.zeros(1, 1, 8, 8))
    with pytest.raises(InputError, match="outputs 2 channels but its card lists 3 labels"):
        run_model(m, plain)


def test_progress_and_cancel(seg3d, ct_box):
    vol, _ = ct_box
    seen = []
    job = submit(run_model, seg3d, vol, RunOptions(device="cpu", enlarge_roi=False, overlap=0.5),
                 on_progress=lambda f, m: seen.append(f))
    res = job.result(timeout=120)
    assert job.status == "done" and res.label_map is not None
    assert seen[-1] == 1.0 and all(b >= a - 1e-9 for a, b in zip(seen, seen[1:]))
    assert len(seen) > 3  # window-by-window updates

    gate = threading.Event()
    release = threading.Event()

    def slow_progress(f, m):
        if "window" in m:
            gate.set()
            release.wait(5)

    job = submit(run_model, seg3d, vol, RunOptions(device="cpu", enlarge_roi=False, overlap=0.5),
                 on_progress=slow_progress)
    assert gate.wait(30)
    job.cancel()
    release.set()
    with pytest.raises(Cancelled):
        job.result(timeout=60)
    assert job.status == "cancelled"


def test_gpu_out_of_memory_falls_back_to_cpu_with_a_warning(seg3d, ct_box, monkeypatch):
    import imaging_assist.inference.pipelines as pl

    vol, box = ct_box
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = pl._run_on
    tried = []

    def fake_run_on(model, volume, opts, device, prog):
        tried.append(device.type)
        if device.type == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, volume, opts, device, prog)

    monkeypatch.setattr(pl, "_run_on", fake_run_on)
    messages = []
    with pytest.warns(GpuFallbackWarning, match="ran out of memory"):
        res = run_model(seg3d, vol, RunOptions(device="cuda"), progress=lambda f, m: messages.append(m))
    assert tried == ["cuda", "cpu"]
    assert res.device == "cpu" and "CPU instead" in res.warnings[0]
    assert any("out of memory" in m for m in messages)
    assert dice(res.label_map == 1, box) > 0.93
    # other errors are not swallowed
    monkeypatch.setattr(pl, "_run_on", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        run_model(seg3d, vol, RunOptions(device="cuda"))


def test_explicit_cuda_without_gpu_is_a_user_error(seg3d, ct_box, monkeypatch):
    from imaging_assist.inference.device import DeviceError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        run_model(seg3d, ct_box[0], RunOptions(device="cuda"))


def test_user_region_is_explained_where_selected(tmp_path):
    card = {"task": "segmentation", "modality": ["OT"], "spatial_dims": 2,
            "labels": ["background", "bright"],
            "input": {"channels": 1, "roi_size": [16, 16], "size": [24, 24]}}
    m = _ts_model(tmp_path, "reg2d", card, Threshold(2), torch.zeros(1, 1, 8, 8))
    arr = np.zeros((1, 30, 40), np.float32)
    arr[0, 5:25, 5:35] = 1.0
    region = np.zeros(arr.shape, bool)
    region[0, 8:16, 25:33] = True  # the user selects the right part of the object
    res = run_model(m, Volume(arr, has_geometry=False),
                    RunOptions(device="cpu", region=region, explain=ExplainConfig("saliency")))
    hm = res.heatmaps[0]
    assert hm.target == "user_region"
    h = hm.array[0]
    assert h[9:15, 26:32].mean() > 10 * max(h[5:25, 5:18].mean(), 1e-9)
    with pytest.raises(InputError, match="region is empty"):
        run_model(m, Volume(arr, has_geometry=False),
                  RunOptions(device="cpu", region=np.zeros(arr.shape, bool), explain=ExplainConfig()))


def test_monochrome1_is_inverted_with_one_range_for_all_slices(tmp_path):
    card = {"task": "classification", "modality": ["CR"], "spatial_dims": 2,
            "labels": ["normal", "abnormal"],
            "input": {"channels": 1, "size": [8, 8],
                      "intensity": {"type": "scale_range", "a_min": 0, "a_max": 100}}}
    m = _ts_model(tmp_path, "m1", card, MeanClassifier(), torch.zeros(1, 1, 8, 8))
    arr = np.stack([np.full((8, 8), 20.0), np.full((8, 8), 80.0)]).astype(np.float32)
    arr[0, 0, 0] = 0.0
    arr[1, 0, 0] = 100.0  # the series spans 0..100
    vol = Volume(arr, modality="CR", photometric="MONOCHROME1", has_geometry=False)
    res = run_model(m, vol, RunOptions(device="cpu"))
    assert any("MONOCHROME1" in w for w in res.warnings)
    # inverted: 20 -> 80 (bright), 80 -> 20 (dark), with the same 0..100 range on both slices
    means = [(100 - arr[k]).mean() / 100 for k in range(2)]
    expected = [1 / (1 + np.exp(-10 * (v - 0.5))) for v in means]
    np.testing.assert_allclose([s["abnormal"] for s in res.per_slice], expected, atol=1e-4)


def test_auto_precision_is_fp32_on_cpu_even_with_native_bf16(seg3d, ct_box, monkeypatch):
    """Results must not depend on the CPU: "auto" never picks bf16 on a CPU (even one with
    native bf16); bf16 only when asked for.  The precision used is in the result."""
    import imaging_assist.inference.device as dev

    monkeypatch.setattr(dev, "native_cpu_bf16", lambda: True)
    cpu = torch.device("cpu")
    for task, sd in (("segmentation", 3), ("segmentation", 2), ("classification", 2)):
        assert dev.fast_path(cpu, task, sd, "auto").precision == "fp32"
        # a card that allows bf16 does not change that on a CPU
        assert dev.fast_path(cpu, task, sd, "auto", card_precision="bf16").precision == "fp32"
        assert dev.fast_path(cpu, task, sd, "bf16").precision == "bf16"
    vol, _ = ct_box
    res = run_model(seg3d, vol, RunOptions(device="cpu"))
    assert res.precision == "fp32" and res.to_dict()["precision"] == "fp32"
    res = run_model(seg3d, vol, RunOptions(device="cpu", precision="bf16"))
    assert res.precision == "bf16" and res.to_dict()["precision"] == "bf16"


def test_auto_precision_on_cuda_follows_the_card(monkeypatch):
    import imaging_assist.inference.device as dev

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    gpu = torch.device("cuda")
    assert dev.fast_path(gpu, "segmentation", 3, "auto").precision == "fp32"
    assert dev.fast_path(gpu, "segmentation", 3, "auto", card_precision="bf16").precision == "bf16"
    assert dev.fast_path(gpu, "segmentation", 3, "auto", card_precision="fp32").precision == "fp32"
    with pytest.raises(dev.DeviceError):
        dev.fast_path(gpu, "segmentation", 3, "fp8")


def _set_spacing_source(vol, source):
    """Volume.spacing_source / spacing_known (H2's) — or plain attributes before they exist."""
    vol.spacing_source = source
    if not isinstance(getattr(type(vol), "spacing_known", None), property):
        vol.spacing_known = source != "none"
    return vol


@pytest.mark.parametrize("n_slices", [1, 3])
def test_sizes_follow_the_volumes_spacing_source_not_its_warnings(tmp_path, n_slices):
    """Whether sizes are in mm²/mL or pixels comes from ``Volume.spacing_known`` (never from
    warning texts or ``has_geometry`` alone), and ``spacing_source`` stands next to them."""
    card = {"task": "segmentation", "modality": ["CR"], "spatial_dims": 2,
            "labels": ["background", "bright"], "input": {"channels": 1}, "inference": {"roi_multiple": 8}}
    m = _ts_model(tmp_path, "src2d", card, Threshold(2), torch.zeros(1, 1, 8, 8))
    arr = np.zeros((n_slices, 16, 16), np.float32)
    arr[:, 4:12, 4:8] = 1.0  # 32 px per slice
    geo = dict(spacing=(0.5, 0.25, 2.0), modality="CR", slice_positions=np.arange(n_slices) * 2.0)
    # geometry, but the pixel spacing is unknown (e.g. an absurd PixelSpacing was refused)
    vol = _set_spacing_source(Volume(arr.copy(), **geo), "none")
    res = run_model(m, vol, RunOptions(device="cpu"))
    d = res.to_dict()
    assert res.area_mm2 is None and res.volume_ml is None and d["spacing_mm"] is None
    assert res.area_px == {"bright": 32 * n_slices} and d["spacing_source"] == "none"
    # a radiograph with ImagerPixelSpacing/ERMF: mm², and the source says which spacing
    vol = _set_spacing_source(Volume(arr.copy(), **geo), "ImagerPixelSpacing/ERMF")
    d = run_model(m, vol, RunOptions(device="cpu")).to_dict()
    assert d["spacing_source"] == "ImagerPixelSpacing/ERMF"
    if n_slices == 1:
        assert d["area_mm2"] == {"bright": pytest.approx(32 * 0.5 * 0.25)}
    else:
        assert d["volume_ml"] == {"bright": pytest.approx(32 * n_slices * 0.5 * 0.25 * 2.0 / 1000)}
    # no geometry and no DICOM: pixels, whatever the warnings say
    vol = _set_spacing_source(Volume(arr[:1].copy(), has_geometry=False, warnings=["x"]), "none")
    d = run_model(m, vol, RunOptions(device="cpu")).to_dict()
    assert d["area_px"] == {"bright": 32} and d["area_mm2"] is None and d["spacing_source"] == "none"


# =========================================================================== fuzzed inputs
def _cr_volume():
    from conftest import DICOM, need

    from imaging_assist.dicom import load_series, scan

    (series,) = scan(str(need(DICOM / "cr_chest_monochrome1_fuji"))).image_series()
    return load_series(series)


@pytest.fixture(scope="module")
def cls2d(tmp_path_factory):
    card = {"task": "classification", "modality": ["CR"], "spatial_dims": 2,
            "labels": ["normal", "abnormal"], "thresholds": {"abnormal": {"threshold": 0.5}},
            "input": {"channels": 1, "size": [8, 8],
                      "intensity": [{"type": "percentile", "lower": 0.5, "upper": 99.5}]}}
    return _ts_model(tmp_path_factory.mktemp("c"), "fuzzcls", card, MeanClassifier(), torch.zeros(1, 1, 8, 8))


@pytest.fixture(scope="module")
def seg2d(tmp_path_factory):
    card = {"task": "segmentation", "modality": ["CR"], "spatial_dims": 2,
            "labels": ["background", "bright"], "inference": {"roi_multiple": 8},
            "input": {"channels": 1, "intensity": [{"type": "percentile", "lower": 0.5, "upper": 99.5}]}}
    return _ts_model(tmp_path_factory.mktemp("s"), "fuzzseg", card, Threshold(2), torch.zeros(1, 1, 8, 8))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_are_refused_not_scored(cls2d, seg2d, bad):
    """A real CR with a few NaN/inf pixels: percentile scaling would turn the whole image into
    NaN and the threshold decision into a silent "negative".  One-line InputError instead."""
    vol = _cr_volume()
    vol.array = vol.array.astype(np.float32)
    vol.array[0, 100:103, 200] = bad
    for m in (cls2d, seg2d):
        with pytest.raises(InputError, match="NaN or infinite") as e:
            run_model(m, vol, RunOptions(device="cpu"))
        assert "\n" not in str(e.value)


class NaNNet(nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0], 2), float("nan")) + x.mean() * 0


def test_non_finite_model_outputs_give_no_result(tmp_path):
    from imaging_assist.inference.pipelines import ModelOutputError

    card = {"task": "classification", "modality": ["CR"], "spatial_dims": 2,
            "labels": ["normal", "abnormal"], "thresholds": {"abnormal": {"threshold": 0.5}},
            "input": {"channels": 1, "size": [8, 8]}}
    m = _ts_model(tmp_path, "nan", card, NaNNet(), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ModelOutputError, match="NaN"):
        run_model(m, Volume(np.arange(64, dtype=np.float32).reshape(1, 8, 8), has_geometry=False),
                  RunOptions(device="cpu"))
    seg = {"task": "segmentation", "modality": ["CR"], "spatial_dims": 2, "labels": ["background", "x"],
           "inference": {"roi_multiple": 8}, "input": {"channels": 1}}

    class NaNSeg(nn.Module):
        def forward(self, x):
            return torch.cat([x, x], 1) * float("nan")

    m = _ts_model(tmp_path, "nanseg", seg, NaNSeg(), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ModelOutputError, match="NaN"):
        run_model(m, Volume(np.arange(256, dtype=np.float32).reshape(1, 16, 16), has_geometry=False),
                  RunOptions(device="cpu"))


@pytest.mark.parametrize("spacing", [(np.nan, 0.2, 1.0), (0.0, 0.2, 1.0), (-0.2, 0.2, 1.0), (np.inf, 0.2, 1.0)])
def test_absurd_spacing_never_gives_nan_or_negative_sizes(seg2d, spacing):
    """A real CR whose pixel spacing is NaN/0/negative/inf (whatever the loader let through):
    sizes fall back to pixels with a warning, never NaN, 0 or negative mm²."""
    vol = _cr_volume()
    vol.spacing = spacing
    vol.has_geometry = True
    _set_spacing_source(vol, "PixelSpacing")
    res = run_model(seg2d, vol, RunOptions(device="cpu"))
    d = res.to_dict()
    assert d["area_mm2"] is None and d["spacing_mm"] is None and d["spacing_source"] == "none"
    assert sum(d["area_px"].values()) > 0
    assert any("pixel spacing" in w and "pixels" in w for w in res.warnings), res.warnings


@pytest.mark.parametrize("spacing", [(np.nan, 0.2, 1.0), (0.0, 0.2, 1.0)])
def test_label_map_files_never_get_a_nan_or_singular_affine(seg2d, spacing, tmp_path):
    import nibabel as nib

    from imaging_assist.inference.results import write_item_files

    vol = _cr_volume()
    vol.spacing = spacing
    vol.has_geometry = True
    _set_spacing_source(vol, "PixelSpacing")
    res = run_model(seg2d, vol, RunOptions(device="cpu"))
    item = write_item_files(res, vol, tmp_path, "x")
    aff = nib.load(tmp_path / item["label_map"]).affine
    assert np.all(np.isfinite(aff)) and abs(np.linalg.det(aff[:3, :3])) > 0
    assert any("geometry" in w and "pixel grid" in w for w in item["warnings"]), item["warnings"]


def test_3d_models_refuse_a_degenerate_affine(seg3d, ct_box):
    vol, _ = ct_box
    bad = Volume(vol.array, spacing=(0.7, np.nan, 2.5), origin=vol.origin, direction=vol.direction,
                 modality="CT", units="HU", slice_positions=vol.slice_positions)
    with pytest.raises(InputError, match="geometry"):
        run_model(seg3d, bad, RunOptions(device="cpu"))
    flat = Volume(vol.array, spacing=vol.spacing, origin=vol.origin, direction=np.zeros((3, 3)),
                  modality="CT", units="HU", slice_positions=vol.slice_positions)
    with pytest.raises(InputError, match="geometry"):
        run_model(seg3d, flat, RunOptions(device="cpu"))


def test_mutated_real_cr_bytes_load_and_score_finitely_or_fail_in_one_line(cls2d, tmp_path):
    """Flipped bytes and truncations of the real CR file: every run either gives finite
    probabilities or a one-line UserError; nothing else escapes."""
    from conftest import DICOM

    from imaging_assist.dicom import load_series, scan
    from imaging_assist.errors import UserError

    raw = (DICOM / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm").read_bytes()
    rng = np.random.default_rng(12)
    outcomes = {"ok": 0, "error": 0}
    for n in range(8):
        b = bytearray(raw)
        if n % 2:
            b = b[:int(len(b) * rng.uniform(0.5, 0.999))]
        else:
            for pos in rng.integers(0, len(b), 40):
                b[pos] ^= 0xFF
        f = tmp_path / f"m{n}" / "x.dcm"
        f.parent.mkdir()
        f.write_bytes(bytes(b))
        try:
            series = scan(str(f.parent)).image_series()
            if not series:
                outcomes["error"] += 1
                continue
            res = run_model(cls2d, load_series(series[0]), RunOptions(device="cpu"))
        except UserError as e:
            assert "\n" not in str(e)
            outcomes["error"] += 1
            continue
        assert all(np.isfinite(v) and 0 <= v <= 1 for v in res.probabilities.values())
        outcomes["ok"] += 1
    assert sum(outcomes.values()) == 8
