"""DICOM part of scripts/bench_export.py (issue 13): time to build and write each object.

CT: the 140-slice head phantom with a two-label map and one float32 heat map -> seg_s, pm_s,
sr_s (each: build + write, source headers already read, highdicom warm); src_headers_s (re-
reading the 140 source headers, once per export); cold_first_export_s (first SEG in a fresh
process: highdicom loads its copy of the standard).  CXR: one demo chest X-ray, the whole
export (SEG, Parametric Map, SR, Encapsulated PDF of a report) -> cxr_all_s.
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
CXR = ROOT / "imaging_assist" / "data" / "demo" / "chest_xray" / "cxr_03_pa.dcm"
MINI_PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"


def _maps(vol):
    n, r, c = vol.shape[:3]
    lm = np.zeros((n, r, c), np.uint8)
    lm[30:110, 150:300, 120:260] = 1
    lm[30:110, 150:300, 260:400] = 2
    heat = np.random.default_rng(0).random((n, r, c), dtype=np.float32)
    return lm, heat


def _best(f, repeat=3):
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return min(ts)


def bench_dicom(repeat: int = 3) -> dict:
    from imaging_assist.dicom import load_series, scan
    from imaging_assist.export import dicom_common as dc
    from imaging_assist.export.dicom import write_dicom_results
    from imaging_assist.export.parametric_map import build_parametric_map
    from imaging_assist.export.seg import build_seg
    from imaging_assist.export.sr import build_sr
    from imaging_assist.inference.results import ClassificationResult, HeatMap, SegmentationResult

    warnings.simplefilter("ignore")
    out = {}
    vol = load_series(scan(str(CT)).image_series()[0])
    lm, heat = _maps(vol)
    labels = ["background", "right lung", "left lung"]
    tmp = Path(tempfile.mkdtemp(prefix="bench_export_"))
    t = time.perf_counter()
    ds = dc.source_datasets(vol)
    out["src_headers_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    build_seg(vol, lm, labels, model_id="m", model_version="1", datasets=ds).save_as(tmp / "cold.dcm")
    out["cold_first_export_s"] = round(time.perf_counter() - t, 3)
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

    out["seg_s"] = round(_best(seg, repeat), 3)
    out["pm_s"] = round(_best(pm, repeat), 3)
    counts = {lab: int((lm == i).sum()) for i, lab in enumerate(labels) if i}
    item = {"model": "m", "model_version": "1", "labels": {str(i): n for i, n in enumerate(labels)},
            "voxel_counts": counts, "volume_ml": {k: v * 2e-4 for k, v in counts.items()}}
    out["sr_s"] = round(_best(lambda: build_sr(vol, [item], segs={0: segs[0]}, pms=pms, datasets=ds)
                              .save_as(tmp / "sr.dcm"), repeat), 3)
    cx = load_series(scan(str(CXR)).image_series()[0])
    n, r, c = cx.shape[:3]
    clm = np.zeros((n, r, c), np.uint8)
    clm[:, 40:180, 30:100] = 1
    clm[:, 40:180, 120:190] = 2
    sres = SegmentationResult("cxr-lung-seg", "1", "segmentation", labels, label_map=clm,
                              voxel_counts={"right lung": 1, "left lung": 1}, area_px={"right lung": 1, "left lung": 1})
    cres = ClassificationResult("cxr-pneumonia", "1", "classification", ["normal", "pneumonia"],
                                probabilities={"normal": 0.3, "pneumonia": 0.7},
                                decisions={"normal": None, "pneumonia": {"threshold": 0.5, "positive": True}},
                                heatmaps=[HeatMap("pneumonia", "gradcam", np.random.default_rng(1).random(
                                    (n, r, c), dtype=np.float32))])
    pdf = tmp / "report.pdf"
    pdf.write_bytes(MINI_PDF)
    k = iter(range(100))
    out["cxr_all_s"] = round(_best(lambda: write_dicom_results(
        cx, [sres, cres], tmp / f"cxr{next(k)}", report_pdf=pdf), repeat), 3)
    out["cxr_objects"] = len(write_dicom_results(cx, [sres, cres], tmp / "cxr_count", report_pdf=pdf))
    out["ct_slices"] = vol.n_slices
    return out


if __name__ == "__main__":
    print(json.dumps(bench_dicom()))
