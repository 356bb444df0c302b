#!/usr/bin/env python3
"""Benchmark: writing the results that leave the workstation (issue 13).

On the 140-slice CT phantom with a two-label map (bone, brain) and one heat map, and on one
chest X-ray.  Prints a few human lines, then one JSON object as the last line:
  pdf_s           the PDF report of the CT as analyze makes it (capture: key views from the
                  in-memory result; build_report; write_report_pdf), median of --repeat runs;
                  target < 1 s on 2 cores
  pdf_kb          its size
  pdf_pages       its pages
  reportlab_s / reportlab_kb   (--compare) the same report content laid out with reportlab
                  (paragraphs, tables, the same lossless images, the same TrueType font), to
                  justify the library choice (docs/report.md)
E2's DICOM writers add ``seg_s``, ``pm_s``, ``sr_s`` (CT) and ``cxr_all_s`` (the whole CXR
export, four objects) through BENCHES below: each entry takes the shared context and returns
its keys.
Usage: scripts/bench_export.py [--repeat N] [--compare]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("IMAGING_ASSIST_SHARED", ROOT.parent / "shared" / "data"))
CT = SHARED / "dicom" / "ct_head_phantom_philips" / "series202_STD_BRAIN_1MM_iDose"
CXR = SHARED / "dicom" / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm"


def median_time(fn, repeat: int) -> float:
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def ct_context(tmp: Path) -> dict:
    """Load the CT; a two-label map and a heat map on it, written as analyze writes them."""
    import numpy as np

    from imaging_assist.dicom import load_series, scan
    from imaging_assist.inference.results import (HeatMap, SegmentationResult, write_item_files,
                                                  write_results_json)

    vol = load_series(scan(str(CT)).image_series()[0])
    a = vol.array
    lm = np.zeros(a.shape, np.uint8)
    lm[(a > 20) & (a < 80)] = 2
    lm[a > 300] = 1
    k, j, i = np.indices(a.shape, dtype=np.float32)
    heat = np.exp(-(((k - 70) / 20) ** 2 + ((j - 256) / 60) ** 2 + ((i - 256) / 60) ** 2)).astype(np.float32)
    vox_ml = float(abs(np.linalg.det(vol.affine[:3, :3]))) / 1000
    res = SegmentationResult(
        model_id="bench-seg", model_version="0.1", task="segmentation", labels=["background", "bone", "brain"],
        shape=a.shape, spacing=vol.spacing, affine=vol.affine, has_geometry=True, series_uid=vol.series_uid,
        description=vol.description, label_map=lm,
        voxel_counts={"bone": int((lm == 1).sum()), "brain": int((lm == 2).sum())},
        volume_ml={"bone": float((lm == 1).sum()) * vox_ml, "brain": float((lm == 2).sum()) * vox_ml},
        spacing_source=vol.spacing_source, heatmaps=[HeatMap("brain", "gradcam", heat, target="predicted_region")])
    res.source = str(CT)
    out = tmp / "ct"
    item = write_item_files(res, vol, out, "ct")
    doc = json.loads(write_results_json([item], out, None, {"input": str(CT)}).read_text())
    return {"ct_volume": vol, "ct_result": res, "ct_doc": doc, "ct_out": out, "tmp": tmp}


def bench_pdf(ctx: dict, repeat: int, compare: bool) -> dict:
    from imaging_assist.export.report_pdf import build_report, capture, write_report_pdf

    vol, doc, out = ctx["ct_volume"], ctx["ct_doc"], ctx["ct_out"]
    pdf = ctx["tmp"] / "report.pdf"

    def run():  # what analyze does: key views from the in-memory result, then the report
        cap = {0: capture(doc["items"][0], vol, out, ctx["ct_result"])}
        write_report_pdf(build_report(doc, captured=cap, base_dir=out, load_missing=False), pdf)

    run()  # imports, font parsing and the registry once
    r = {"pdf_s": round(median_time(run, repeat), 4), "pdf_kb": round(pdf.stat().st_size / 1024, 1)}
    import subprocess
    try:
        info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
        r["pdf_pages"] = int(next(ln.split()[-1] for ln in info.splitlines() if ln.startswith("Pages")))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        r["pdf_pages"] = None
    if compare:
        rep = build_report(doc, captured={0: capture(doc["items"][0], vol, out, ctx["ct_result"])},
                           base_dir=out, load_missing=False)
        rl = ctx["tmp"] / "report_reportlab.pdf"
        reportlab_same(rep, rl)
        r["reportlab_s"] = round(median_time(lambda: (reportlab_same(rep, rl)), repeat), 4)
        r["reportlab_kb"] = round(rl.stat().st_size / 1024, 1)
        r["fpdf2_write_s"] = round(median_time(lambda: write_report_pdf(rep, pdf), repeat), 4)
    return r


def reportlab_same(rep: dict, path: Path) -> None:
    """The same content with reportlab's platypus (for the library comparison only)."""
    import io

    from PIL import Image as PILImage
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont
    from reportlab.platypus import Image, Paragraph, SimpleDocTemplate, Spacer, Table

    from imaging_assist.export.report_pdf import NOT_FOR_CLINICAL_USE, _font_files

    reg, bold = _font_files()
    if "DejaVu" not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(TTFont("DejaVu", reg))
        pdfmetrics.registerFont(TTFont("DejaVuB", bold))
    st = getSampleStyleSheet()
    body = st["BodyText"].clone("b", fontName="DejaVu", fontSize=9)
    head = st["Heading2"].clone("h", fontName="DejaVuB")
    flow = [Paragraph(rep["title"], head), Paragraph(NOT_FOR_CLINICAL_USE, head)]
    for s in rep["studies"]:
        flow.append(Table([[k, str(v)] for k, v in s["header"].items()]))
        for e in s["items"]:
            flow.append(Paragraph(f"{e['model']} {e['model_version']} {e['series']}", head))
            if e["sizes"]:
                flow.append(Table([[k, f"{v:.1f}"] for k, v in e["sizes"]["values"].items()]))
            for v in e["views"]:
                flow.append(Paragraph(v["title"], body))
                row = []
                for a in (v["plain"], v["overlay"]):
                    if a is None:
                        continue
                    b = io.BytesIO()
                    PILImage.fromarray(a).save(b, "PNG")  # lossless
                    b.seek(0)
                    row.append(Image(b, 85 * mm, 85 * mm))
                flow.append(Table([row]))
            for w in e["explanation"] + e["warnings"]:
                flow.append(Paragraph(w, body))
    for c in rep["cards"]:
        flow += [Paragraph(c["intended_use"], body)] + [Paragraph(x, body) for x in c["limitations"]]
    flow.append(Spacer(1, 5))

    def page(canvas, _doc):
        canvas.setFont("DejaVuB", 9)
        canvas.drawString(14 * mm, A4[1] - 10 * mm, NOT_FOR_CLINICAL_USE)

    SimpleDocTemplate(str(path), pagesize=A4).build(flow, onFirstPage=page, onLaterPages=page)


# E2 extends this: name -> function(ctx, repeat) -> {key: value}
BENCHES: dict = {}
from _bench_export_dicom import bench as _bench_dicom  # noqa: E402  (E2: seg_s, pm_s, sr_s, cxr_all_s)

BENCHES["DICOM objects"] = _bench_dicom


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--compare", action="store_true", help="also lay the report out with reportlab")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        t0 = time.perf_counter()
        ctx = ct_context(Path(td))
        ctx["cxr_path"] = CXR
        print(f"CT context (load + label/heat-map files): {time.perf_counter() - t0:.1f} s")
        result = {}
        r = bench_pdf(ctx, args.repeat, args.compare)
        print(f"PDF report of the CT: {r['pdf_s']:.3f} s, {r['pdf_kb']} kB, {r['pdf_pages']} page(s)"
              + (f"; reportlab {r['reportlab_s']:.3f} s, {r['reportlab_kb']} kB (fpdf2 write only "
                 f"{r['fpdf2_write_s']:.3f} s)" if args.compare else ""))
        result.update(r)
        for name, fn in BENCHES.items():
            got = fn(ctx, args.repeat)
            print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in got.items()))
            result.update(got)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
