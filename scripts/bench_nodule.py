#!/usr/bin/env python
"""Click-to-result benchmark of the CT nodule workflow on the real LIDC-IDRI-0001 slab.

    .venv/bin/python scripts/bench_nodule.py [--reps 7] [--threads N] [--slab DIR]

The click is the centre of the LIDC readers' >= 2-of-4 consensus of the nodule
(``annotations_69.xml``, imaging_assist/nodules/lidc_xml.py).  One click is the whole
:func:`imaging_assist.nodules.analysis.analyze_at` on the loaded 512x512x16 series: the window
cut, ``ct-nodule-seg``, the connected nodule, the mask back on the series grid, the
measurements, ``ct-nodule-malignancy`` with its 3D Grad-CAM on the series grid, and the OOD
score -- everything the viewer shows after a Shift+click.  Loading the models (once per
process) happens in a warm-up click that is not timed.

Side by side, in the same run, the reference: the same networks called directly on the same
window (``nodules.models.segment`` + ``malignancy(explain=True)`` + ``ood``: the forward passes,
Grad-CAM and OOD features alone, no geometry, no measurements), so ``overhead_s`` is what our
workflow adds around the networks.  Medians of ``--reps`` runs on the CPU (the 2 cores of the
development machine are shared, so the minimum and the 1-minute load average are printed too).  The last line of stdout is one
JSON object with at least ``click_to_result_s`` (median; target < 1 s on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_SLAB = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct" / "lidc_idri_0001_slab"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--slab", default=str(DEFAULT_SLAB))
    a = ap.parse_args()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from imaging_assist.dicom import load_series, scan
    from imaging_assist.nodules import lidc_xml
    from imaging_assist.nodules import models as nm
    from imaging_assist.nodules.analysis import analyze_at
    from imaging_assist.nodules.window import cut_window

    slab = Path(a.slab)
    t = time.perf_counter()
    vol = load_series(scan(str(slab)).all_series()[0])
    load_s = time.perf_counter() - t
    (nod,) = lidc_xml.load_for_volume(slab / "annotations_69.xml", vol)
    point = [float(v) for v in lidc_xml.centre_lps(lidc_xml.consensus_mask(nod), vol)]
    t = time.perf_counter()
    first = analyze_at(vol, point, "N1", explain=True)  # loads both models (sha256 checked)
    warmup_s = time.perf_counter() - t
    if not first.found:
        print(json.dumps({"error": f"no nodule at the readers' centre: {first.reason}"}))
        return 1
    ours, ref, parts = [], [], []
    for _ in range(a.reps):
        t = time.perf_counter()
        r = analyze_at(vol, point, "N1", explain=True)
        ours.append(time.perf_counter() - t)
        parts.append(r.timings)
        t = time.perf_counter()
        w = cut_window(vol, point)
        nm.segment(w)
        nm.malignancy(w, explain=True)
        nm.ood(w)
        ref.append(time.perf_counter() - t)
    med = statistics.median
    breakdown = {k: round(med([p.get(k, 0.0) for p in parts]), 4) for k in parts[0]}
    out = {"click_to_result_s": round(med(ours), 4), "click_to_result_min_s": round(min(ours), 4),
           "reference_networks_only_s": round(med(ref), 4), "overhead_s": round(med(ours) - med(ref), 4),
           "breakdown_median_s": breakdown, "reps": a.reps, "warmup_with_model_load_s": round(warmup_s, 3),
           "series_load_s": round(load_s, 3), "shape": list(vol.shape), "point_lps": [round(v, 2) for v in point],
           "volume_mm3": round(r.volume_mm3, 1), "p_malignant": round(r.p_malignant, 4),
           "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "device": "cpu",
           "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the same cores
           "target_s": 1.0}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
