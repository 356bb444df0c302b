#!/usr/bin/env python
"""Inference benchmark: our pipeline vs plain MONAI, per model and device.

    .venv/bin/python scripts/bench_infer.py [--device cpu|cuda|auto] [--threads N] [--quick]
        [--precision auto|fp32|bf16]

Models (weights are random or briefly trained here, never downloaded):

* ``cls2d_resnet18_224``: torchvision ResNet-18, a real chest X-ray JPEG from the shared data
  (synthetic if absent) resized to 224x224; inference, Grad-CAM (layer4) and Integrated
  Gradients (32 steps) through ``run_model``.
* ``seg3d_unet_256x256x128``: the MONAI UNet of the spleen bundle (16-256 channels, 2 residual
  units, batch norm), briefly trained on synthetic spheres so that its outputs are confident,
  on a 256x256x128 volume.  The reference is the *same network and weights* through
  ``monai.inferers.sliding_window_inference(x, (96, 96, 96), 1, net)`` with default settings
  (overlap 0.25, constant blending) in fp32 under ``torch.no_grad``.  Ours is the whole
  ``run_model`` call (preprocessing, inference, softmax, inversion, label map, volumes),
  so the comparison is conservative.  Outputs are compared (Dice of the label maps,
  max |Δ| of the softmax probabilities).

Each model runs in its own subprocess so that ``peak_rss_mb`` (ru_maxrss) is per model.
Timings are the best of ``--reps`` runs after one warm-up run (the 2 CPU cores of the
development machine are shared, so best-of is the least noisy estimate; medians are
reported too).  The last line of stdout is one JSON object: {model: {infer_s, gradcam_s,
ig_s, peak_rss_mb, speedup_vs_monai (3D), ...}}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CXR = ROOT.parent / "shared" / "data" / "cxr" / "lung_masks_covid_generalblockchain" / "images"
COMMON = {"version": "bench", "license": "none (benchmark weights)", "intended_use": "benchmark only",
          "not_for_clinical_use": True, "data": {"training": "random / synthetic", "validation": "none"}}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn, reps: int):
    fn()  # warm-up
    ts, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return min(ts), statistics.median(ts), out


# =========================================================================== 2D classifier
def worker_cls2d(args) -> dict:
    import numpy as np
    import torch
    import torchvision

    from imaging_assist.explain.methods import ExplainConfig
    from imaging_assist.inference.images import read_image
    from imaging_assist.inference.pipelines import RunOptions, run_model
    from imaging_assist.models.build import save_model_folder
    from imaging_assist.models.card import load_card
    from imaging_assist.models.loaders import load_model
    from imaging_assist.volume import Volume

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=2)
    card = dict(COMMON, id="bench-resnet18", name="ResNet-18 224", task="classification",
                modality=["DX", "CR"], spatial_dims=2, labels=["normal", "abnormal"],
                input={"channels": 3, "size": [224, 224],
                       "intensity": [{"type": "scale_range", "a_min": 0, "a_max": 255},
                                     {"type": "normalize", "mean": [0.485, 0.456, 0.406],
                                      "std": [0.229, 0.224, 0.225]}]},
                architecture={"library": "torchvision", "name": "resnet18", "kwargs": {"num_classes": 2}},
                thresholds={"abnormal": {"threshold": 0.5}}, gradcam_layer="layer4")
    tmp = Path(tempfile.mkdtemp(prefix="bench_cls_"))
    save_model_folder(tmp / "m", card, net)
    model = load_model(load_card(tmp / "m"))
    imgs = sorted(CXR.glob("*.jpg")) if CXR.is_dir() else []
    if imgs:
        vol = read_image(imgs[0])
        src = str(imgs[0])
    else:
        rng = np.random.default_rng(0)
        vol = Volume((rng.random((1, 1024, 1024)) * 255).astype(np.uint8), has_geometry=False)
        src = "synthetic 1024x1024"
    dev = args.device
    o_inf = RunOptions(device=dev, precision=args.precision)
    best_inf, med_inf, res = timed(lambda: run_model(model, vol, o_inf), args.reps)
    rss_infer = rss_mb()
    o_gc = RunOptions(device=dev, precision=args.precision, explain=ExplainConfig("gradcam", faithfulness=False))
    best_tot, med_tot, res_gc = timed(lambda: run_model(model, vol, o_gc), args.reps)
    gc_times = []
    for _ in range(args.reps):
        gc_times.append(run_model(model, vol, o_gc).timings["explain_s"])
    o_ig = RunOptions(device=dev, explain=ExplainConfig("ig", ig_steps=32, ig_internal_batch=8,
                                                        faithfulness=False))
    ig_times = [run_model(model, vol, o_ig).timings["explain_s"] for _ in range(max(1, args.reps // 2))]
    o_f = RunOptions(device=dev, explain=ExplainConfig("gradcam", faithfulness=True))
    rf = run_model(model, vol, o_f)
    return {
        "device": res.device, "input": f"{src} ({vol.array.shape[1]}x{vol.array.shape[2]}) -> 224x224",
        "infer_s": round(best_inf, 4), "infer_median_s": round(med_inf, 4),
        "gradcam_s": round(min(gc_times), 4),
        "infer_plus_gradcam_s": round(best_tot, 4), "infer_plus_gradcam_median_s": round(med_tot, 4),
        "target_infer_plus_gradcam_under_0_5_s": bool(best_tot < 0.5),
        "ig_s": round(min(ig_times), 4), "ig_params": {"n_steps": 32, "internal_batch_size": 8},
        "faithfulness_s": rf.heatmaps[0].faithfulness["time_s"],
        "faithfulness": rf.heatmaps[0].faithfulness["faithfulness"],
        "peak_rss_mb": round(rss_infer, 1), "peak_rss_with_explain_mb": round(rss_mb(), 1),
        "precision": res.precision,
    }


# =========================================================================== 3D UNet
UNET = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [16, 32, 64, 128, 256],
        "strides": [2, 2, 2, 2], "num_res_units": 2, "norm": "batch"}


def spheres(shape, n, rng, rmin=6, rmax=16):
    import numpy as np

    vol = rng.normal(0.2, 0.08, shape).astype(np.float32)
    lab = np.zeros(shape, np.int64)
    zz, yy, xx = np.indices(shape, sparse=True)
    for _ in range(n):
        r = rng.uniform(rmin, rmax)
        c = [rng.uniform(r, s - r) for s in shape]
        m = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r
        vol[m] = rng.normal(0.8, 0.08, int(m.sum()))
        lab[m] = 1
    return vol, lab


def worker_prepare3d(args) -> dict:
    """Train the UNet briefly on synthetic spheres (confident outputs) and save a model folder."""
    import numpy as np
    import torch
    from monai.networks.nets import UNet

    from imaging_assist.models.build import save_model_folder

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = UNet(**UNET)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    t = time.perf_counter()
    steps = args.train_steps
    for _ in range(steps):
        v, lab = spheres((48, 48, 48), 3, rng, 4, 10)
        x = torch.from_numpy(v)[None, None]
        y = torch.from_numpy(lab)[None]
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    card = dict(COMMON, id="bench-unet3d", name="MONAI UNet 3D (spleen architecture)",
                task="segmentation", modality=["CT"], spatial_dims=3, labels=["background", "sphere"],
                input={"channels": 1, "roi_size": [96, 96, 96]},
                architecture={"library": "monai", "name": "UNet", "kwargs": UNET},
                gradcam_layer="model.2.0",
                inference={"overlap": 0.25, "blend": "gaussian", "roi_multiple": 16,
                           "max_roi_voxels": 256 * 256 * 128})
    save_model_folder(Path(args.model_dir), card, net.eval())
    return {"train_steps": steps, "train_s": round(time.perf_counter() - t, 1),
            "final_loss": round(float(loss), 4)}


def worker_seg3d(args) -> dict:
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    from imaging_assist.explain.methods import ExplainConfig
    from imaging_assist.inference.pipelines import RunOptions, run_model
    from imaging_assist.models.card import load_card
    from imaging_assist.models.loaders import load_model
    from imaging_assist.volume import Volume

    model = load_model(load_card(args.model_dir))
    rng = np.random.default_rng(1)
    v_ijk, truth = spheres((256, 256, 128), 4, rng)  # (i, j, k) = (x, y, z)
    vol = Volume(np.ascontiguousarray(np.transpose(v_ijk, (2, 1, 0))), spacing=(1.0, 1.0, 1.0),
                 modality="CT", slice_positions=np.arange(128, dtype=float))
    dev = args.device
    opts = RunOptions(device=dev, keep_probabilities=True, precision=args.precision)
    best, med, ours = timed(lambda: run_model(model, vol, opts), args.reps)
    rss_ours = rss_mb()
    out: dict = {"device": ours.device, "volume": "256x256x128 (x, y, z), 1 mm",
                 "infer_s": round(best, 3), "infer_median_s": round(med, 3),
                 "our_settings": ours.sliding_window, "precision": ours.precision,
                 "peak_rss_mb": round(rss_ours, 1)}

    # ---- plain MONAI reference: same network and weights, default settings, fp32
    net = model.network
    device = torch.device(ours.device)
    x = torch.from_numpy(v_ijk)[None, None]

    def ref():
        with torch.no_grad():
            return sliding_window_inference(x.to(device), (96, 96, 96), 1, net)

    rbest, rmed, rlogits = timed(ref, max(1, args.ref_reps))
    rprob = torch.softmax(rlogits.float(), 1)[0].cpu().numpy()  # (C, i, j, k)
    rlab = np.argmax(rprob, 0)
    olab = np.transpose(ours.label_map, (2, 1, 0))
    oprob = np.transpose(ours.probabilities, (0, 3, 2, 1))
    def dsc(a, b):
        return round(2 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum())), 5)

    dice = dsc(rlab == 1, olab == 1)
    # Same network, our pipeline with the card's own 96^3 ROI (Gaussian blending, no
    # enlargement): separates the effect of the larger ROI from everything else.
    c_best, _, card_roi = timed(lambda: run_model(model, vol, RunOptions(device=dev, enlarge_roi=False,
                                                                      precision=args.precision)), 1)
    clab = np.transpose(card_roi.label_map, (2, 1, 0))
    out["accuracy_vs_synthetic_truth"] = {
        "dice_ours": dsc(olab == 1, truth == 1), "dice_monai_reference": dsc(rlab == 1, truth == 1),
        "dice_ours_card_roi_96": dsc(clab == 1, truth == 1)}
    out["ours_with_card_roi_96"] = {"infer_s": round(c_best, 3), "settings": card_roi.sliding_window,
                                    "dice_vs_monai": dsc(clab == 1, rlab == 1)}
    out.update({"monai_reference_s": round(rbest, 3), "monai_reference_median_s": round(rmed, 3),
                "monai_reference_settings": {"roi": [96, 96, 96], "sw_batch_size": 1, "overlap": 0.25,
                                             "mode": "constant", "precision": "fp32"},
                "speedup_vs_monai": round(rbest / best, 2),
                "speedup_vs_monai_median": round(rmed / med, 2),
                "dice_vs_monai": round(dice, 5),
                "max_abs_prob_diff_vs_monai": round(float(np.abs(rprob - oprob).max()), 5),
                "voxels_differing_vs_monai": int((rlab != olab).sum()),
                "foreground_voxels": int((olab == 1).sum())})
    del rlogits, rprob, oprob

    # ---- CPU fast-path measurements on one 96^3 window (why they are on/off by default)
    if device.type == "cpu":
        w = x[..., :96, :96, :96].contiguous()
        # no_grad, not inference_mode: converting the weights' memory format inside
        # inference_mode would turn them into inference tensors (unusable for Grad-CAM later).
        with torch.no_grad():
            t32, _, y32 = timed(lambda: net(w), 2)
            netc = net.to(memory_format=torch.channels_last_3d)
            wc = w.to(memory_format=torch.channels_last_3d)
            tcl, _, ycl = timed(lambda: netc(wc), 2)
            net.to(memory_format=torch.contiguous_format)
            if not args.quick:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    tbf, _, ybf = timed(lambda: net(w), 1)
                bf = {"bf16_window_s": round(tbf, 3),
                      "bf16_max_abs_prob_diff": round(float((torch.softmax(ybf.float(), 1)
                                                             - torch.softmax(y32, 1)).abs().max()), 4)}
            else:
                bf = {}
        out["cpu_fast_paths_96cube_window"] = {
            "fp32_s": round(t32, 3), "channels_last_3d_s": round(tcl, 3),
            "channels_last_3d_max_abs_diff": float((ycl - y32).abs().max()), **bf}

    # ---- explanations (Seg-Grad-CAM / IG of the predicted spheres, per 96^3 patch, stitched)
    if not args.no_explain:
        e = run_model(model, vol, RunOptions(device=dev, explain=ExplainConfig(
            "gradcam", faithfulness=False)))
        out["gradcam_s"] = round(e.timings["explain_s"], 3)
        steps = 8 if args.quick else 16
        e = run_model(model, vol, RunOptions(device=dev, explain=ExplainConfig(
            "ig", ig_steps=steps, ig_internal_batch=4, faithfulness=False)))
        out["ig_s"] = round(e.timings["explain_s"], 3)
        out["ig_params"] = {"n_steps": steps, "internal_batch_size": 4,
                            "patches": "96^3 windows that contain the predicted region"}
        out["peak_rss_with_explain_mb"] = round(rss_mb(), 1)
    return out


# =========================================================================== driver
def run_worker(name: str, args, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--device", args.device, "--reps", str(args.reps),
           "--precision", args.precision,
           "--ref-reps", str(args.ref_reps), "--threads", str(args.threads),
           "--train-steps", str(args.train_steps)] + extra
    if args.quick:
        cmd.append("--quick")
    if args.no_explain:
        cmd.append("--no-explain")
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-4000:])
        return {"error": (p.stderr.strip().splitlines() or ["failed"])[-1]}
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["wall_s"] = round(time.perf_counter() - t, 1)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="RunOptions.precision of our runs (auto: fp32 on CPU; the MONAI reference is fp32)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ref-reps", type=int, default=2, help="repetitions of the slow MONAI reference")
    ap.add_argument("--train-steps", type=int, default=40)
    ap.add_argument("--quick", action="store_true", help="fewer steps (smoke test of the bench)")
    ap.add_argument("--no-explain", action="store_true", help="skip 3D Grad-CAM/IG")
    ap.add_argument("--models", default="cls2d_resnet18_224,seg3d_unet_256x256x128")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker:
        import warnings

        warnings.filterwarnings("ignore")
        fn = {"cls2d": worker_cls2d, "prepare3d": worker_prepare3d, "seg3d": worker_seg3d}[args.worker]
        print(json.dumps(fn(args)))
        return 0
    import platform

    import torch

    meta = {"torch": torch.__version__, "threads": args.threads or torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine()}
    print(f"bench_infer: {json.dumps(meta)}", file=sys.stderr)
    result: dict = {}
    wanted = args.models.split(",")
    if "cls2d_resnet18_224" in wanted:
        print("cls2d_resnet18_224 ...", file=sys.stderr)
        r = run_worker("cls2d", args, [])
        r.update(meta)
        result["cls2d_resnet18_224"] = r
        print(json.dumps(r), file=sys.stderr)
    if "seg3d_unet_256x256x128" in wanted:
        with tempfile.TemporaryDirectory(prefix="bench_unet_") as d:
            print("seg3d: training the UNet briefly on synthetic spheres ...", file=sys.stderr)
            prep = run_worker("prepare3d", args, ["--model-dir", d])
            print("seg3d_unet_256x256x128 ...", file=sys.stderr)
            r = run_worker("seg3d", args, ["--model-dir", d]) if "error" not in prep else dict(prep)
            r["training"] = prep
            r.update(meta)
            result["seg3d_unet_256x256x128"] = r
            print(json.dumps(r), file=sys.stderr)
    print(json.dumps(result))
    return 0 if all("error" not in v for v in result.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
