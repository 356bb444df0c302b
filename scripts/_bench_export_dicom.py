"""DICOM part of scripts/bench_export.py (issue 13): time to build and write each object.

CT: the 140-slice head phantom with a two-label map and one float32 heat map -> seg_s, pm_s,
sr_s (each: build + write, source headers already read, highdicom warm); src_headers_s (re-
reading the 140 source headers, once per export); cold_first_seg_s (first SEG in a fresh
process: highdicom loads its copy of the standard).  CXR: one chest X-ray (the Fuji CR), the
whole export as the CLI writes it (headers, SEG, Parametric Map, two SRs, Encapsulated PDF of
the report) -> cxr_all_s.  Times are the best of ``repeat`` runs.
Run alone it prints one JSON object as its last line.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CT = ROOT.parent / "shared" / "data" / "dicom" / "ct_head_phantom_philips" / "series202_STD_BRAIN_1MM_iDose"
CXR = ROOT.parent / "shared" / "data" / "dicom" / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm"
MINI_PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"


def _maps(vol):
    n, r, c = vol.shape[:3]
    lm = np.zeros((n, r, c), np.uint8)
    lm[30:110, 150:300, 120:260] = 1
    lm[30:110, 150:300, 260:400] = 2
    heat = np.random.default_rng(0).random((n, r, c), dtype=np.float32)
    return lm, heat


CPU: dict = {}  # key -> best process CPU time (s): the wall time on a shared, loaded machine overstates


def _best(f, repeat=3, key=None):
    ts, cs = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        f()
        ts.append(time.perf_counter() - t)
        cs.append(time.process_time() - c)
    if key:
        CPU[key] = round(min(cs), 3)
    return min(ts)


def bench(ctx: dict | None = None, repeat: int = 3) -> dict:
    """scripts/bench_export.py's BENCHES entry: ``ctx`` has E1's ``ct_volume`` and
    ``ct_result`` (two-label map and one heat map on the CT) and ``cxr_path``; without it
    (run alone) the same kind of inputs are made here."""
    from imaging_assist.dicom import load_series, scan
    from imaging_assist.export import dicom_common as dc
    from imaging_assist.export.dicom import write_dicom_results
    from imaging_assist.export.parametric_map import build_parametric_map
    from imaging_assist.export.seg import build_seg
    from imaging_assist.export.sr import build_sr
    from imaging_assist.inference.results import ClassificationResult, HeatMap, SegmentationResult

    warnings.simplefilter("ignore")
    ctx = ctx or {}
    out = {}
    vol = ctx.get("ct_volume") or load_series(scan(str(CT)).image_series()[0])
    if ctx.get("ct_result") is not None and ctx["ct_result"].heatmaps:
        res = ctx["ct_result"]
        lm, heat, labels = res.label_map, res.heatmaps[0].array, list(res.labels)
    else:
        (lm, heat), labels = _maps(vol), ["background", "right lung", "left lung"]
    tmp = Path(tempfile.mkdtemp(prefix="bench_export_"))
    t = time.perf_counter()
    ds = dc.source_datasets(vol)
    out["src_headers_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    build_seg(vol, lm, labels, model_id="m", model_version="1", datasets=ds).save_as(tmp / "cold.dcm")
    out["cold_first_seg_s"] = round(time.perf_counter() - t, 3)
    segs = {}

    def seg():
        s = build_seg(vol, lm, labels, model_id="m", model_version="1", datasets=ds)
        s.save_as(tmp / "seg.dcm")
        segs[0] = s

    pms = []

    def pm():
        p = build_parametric_map(vol, heat, label="x", method="gradcam", model_id="m", model_version="1",
                                 datasets=ds)
        p.save_as(tmp / "pm.dcm")
        pms[:] = [p]

    out["seg_s"] = round(_best(seg, repeat, "seg_cpu_s"), 3)
    out["pm_s"] = round(_best(pm, repeat, "pm_cpu_s"), 3)
    counts = {lab: int((lm == i).sum()) for i, lab in enumerate(labels) if i}
    item = {"model": "m", "model_version": "1", "labels": {str(i): n for i, n in enumerate(labels)},
            "voxel_counts": counts, "volume_ml": {k: v * 2e-4 for k, v in counts.items()}}
    out["sr_s"] = round(_best(lambda: build_sr(vol, [item], segs={0: segs[0]}, pms=pms, datasets=ds)
                              .save_as(tmp / "sr.dcm"), repeat, "sr_cpu_s"), 3)
    cxr_path = ctx.get("cxr_path") or CXR
    cx = load_series(scan(str(cxr_path)).image_series()[0])
    n, r, c = cx.shape[:3]
    clm = np.zeros((n, r, c), np.uint8)
    clm[:, r // 5: 4 * r // 5, c // 8: c // 2 - 5] = 1
    clm[:, r // 5: 4 * r // 5, c // 2 + 5: 7 * c // 8] = 2
    sres = SegmentationResult("cxr-lung-seg", "1", "segmentation", ["background", "right lung", "left lung"],
                              label_map=clm, voxel_counts={"right lung": 1, "left lung": 1},
                              area_px={"right lung": 1, "left lung": 1})
    cres = ClassificationResult("cxr-pneumonia", "1", "classification", ["normal", "pneumonia"],
                                probabilities={"normal": 0.3, "pneumonia": 0.7},
                                decisions={"normal": None, "pneumonia": {"threshold": 0.5, "positive": True}},
                                heatmaps=[HeatMap("pneumonia", "gradcam", np.random.default_rng(1).random(
                                    (n, r, c), dtype=np.float32))])
    pdf = ctx["tmp"] / "report.pdf" if ctx.get("tmp") and (ctx["tmp"] / "report.pdf").is_file() else tmp / "r.pdf"
    if not pdf.is_file():
        pdf.write_bytes(MINI_PDF)
    k = iter(range(1000))
    # the whole CXR export as the CLI does it: headers re-read, SEG, PM, SR (both models), PDF
    out["cxr_all_s"] = round(_best(lambda: write_dicom_results(
        cx, [sres, cres], tmp / f"cxr{next(k)}", report_pdf=pdf), repeat, "cxr_all_cpu_s"), 3)
    out["cxr_objects"] = len(write_dicom_results(cx, [sres, cres], tmp / "cxr_count", report_pdf=pdf))
    out["ct_slices"] = vol.n_slices
    out.update(CPU)
    out["load_average_1min"] = round(__import__("os").getloadavg()[0], 1)
    return out


if __name__ == "__main__":
    print(json.dumps(bench()))
