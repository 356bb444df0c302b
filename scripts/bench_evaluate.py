#!/usr/bin/env python
"""Benchmark of ``imaging-assist evaluate``: cxr-pneumonia on 1,000 Kermany chest films
(../shared/data/cxr/pneumonia_kermany, original test split first, then training films; labels
from the folder names; each image its own cluster) with 1,000 bootstrap resamples, CPU.

Last line: one JSON object with images_per_s (inference incl. reading), total_s (labels to
written JSON + PDF), inference_s, statistics_s, process_cpu_s (CPU seconds of this process:
with the machine shared, total_s alone says little), load_avg_1min, n_images, n_boot, cpu_count.
Target (issue 14): total under 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("IMAGING_ASSIST_SHARED", ROOT.parent / "shared" / "data"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--bootstrap", type=int, default=1000)
    a = ap.parse_args()
    base = SHARED / "cxr" / "pneumonia_kermany"
    files = []
    for split in ("test", "train"):
        for cls in ("NORMAL", "PNEUMONIA"):
            files += [(p, cls) for p in sorted((base / split / cls).glob("*.jpeg"))]
    files = sorted(files[: a.n], key=lambda t: t[0].name)
    if len(files) < a.n:
        print(f"only {len(files)} images found under {base}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        data.mkdir()
        with open(tmp / "labels.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "label"])
            for p, cls in files:
                name = f"{p.parent.parent.name}_{cls}_{p.name}"
                os.symlink(p, data / name)
                w.writerow([name, cls.lower()])
        os.environ["IMAGING_ASSIST_CONFIG_DIR"] = str(tmp / "config")
        from imaging_assist.validation.evaluate import evaluate
        from imaging_assist.validation.evaluate_report import write_json, write_pdf

        t0, c0 = time.perf_counter(), time.process_time()
        rep = evaluate(data, "cxr-pneumonia", tmp / "labels.csv", n_boot=a.bootstrap)
        out = tmp / "out"
        out.mkdir()
        write_json(rep, out)
        write_pdf(rep, out)
        total = time.perf_counter() - t0
        cpu = time.process_time() - c0
    ov = rep["operating_points"]["card"]["overall"]
    inf = rep["timings_s"]["inference"]
    res = {"n_images": len(files), "n_boot": a.bootstrap, "images_per_s": rep["images_per_s"],
           "inference_s": inf, "statistics_s": round(total - inf, 2), "total_s": round(total, 2),
           "process_cpu_s": round(cpu, 2), "load_avg_1min": round(os.getloadavg()[0], 2),
           "cpu_count": os.cpu_count(), "auc": ov["AUC"]["value"],
           "n_analysed": rep["data"]["n_analysed"]}
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
