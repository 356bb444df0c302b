#!/usr/bin/env python3
"""Benchmark: the cost of one audit-trail record, next to a model run and to plain logging.

Everything runs in temporary config/data folders (the user's own trail is never touched).
Prints a few human lines, then one JSON object as the last line:
  record_ms_median / record_ms_p95   audit.record() with typical fields (pseudonymised patient
                                     ID and UIDs): lock, tail read, seal, one write + fsync, head
  record_without_fsync_ms_median     the same with os.fsync replaced by a no-op in this process:
                                     the software's own cost, apart from the disk's flush
  logging_ms_median                  reference: Python logging FileHandler, one JSON line, no
                                     chain, no fsync (what a plain log costs)
  logging_fsync_ms_median            reference: the same plus os.fsync per line (the durability
                                     the trail buys)
  model_run_record_ms_median         audit.record_model_run() for a real cxr-pneumonia result
                                     with a Grad-CAM heat map (outputs hashed, decision computed)
  run_model_ms_median                run_model() of that model on the public CR chest image,
                                     CPU, Grad-CAM (its own audit record included)
  record_share_of_run                model_run_record_ms_median / run_model_ms_median
  verify_lines_per_s                 audit.verify() over the whole trail written here
  lines                              lines in that trail
Usage: scripts/bench_audit.py [--records N] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CR = os.path.join(ROOT, "..", "shared", "data", "dicom", "cr_chest_monochrome1_fuji", "CR-MONO1-10-chest.dcm")


def ms(xs):
    return round(statistics.median(xs) * 1e3, 3)


def p95(xs):
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(0.95 * len(xs)))] * 1e3, 3)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=300)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-audit-")
    os.environ["IMAGING_ASSIST_CONFIG_DIR"] = os.path.join(tmp, "config")
    os.environ["IMAGING_ASSIST_DATA_DIR"] = os.path.join(tmp, "data")
    from imaging_assist.privacy import audit

    fields = dict(patient_id="PID12345", study_uid="1.2.840.113619.2.55.3.1234", series_uid="1.2.840.5.6",
                  instance_uids=[f"1.2.840.5.6.{i}" for i in range(8)], modality="CT", slices=140, stack=1)
    audit.record("bench.warmup", **fields)
    rec = []
    for _ in range(args.records):
        t = time.perf_counter()
        assert audit.record("bench.record", **fields)
        rec.append(time.perf_counter() - t)
    print(f"audit.record: median {ms(rec)} ms, p95 {p95(rec)} ms over {args.records}")
    real_fsync, nosync = os.fsync, []
    os.fsync = lambda fd: None  # measurement only: what a record costs besides the disk flush
    try:
        for _ in range(args.records):
            t = time.perf_counter()
            assert audit.record("bench.record.nosync", **fields)
            nosync.append(time.perf_counter() - t)
    finally:
        os.fsync = real_fsync
    print(f"audit.record without its fsync: median {ms(nosync)} ms")

    # reference: plain logging (no chain, no seal), with and without fsync
    lg = logging.getLogger("bench.plain")
    lg.propagate = False
    h = logging.FileHandler(os.path.join(tmp, "plain.log"))
    lg.addHandler(h)
    plain, plain_sync = [], []
    for i in range(args.records):
        t = time.perf_counter()
        lg.warning(json.dumps({"event": "bench.record", "i": i, **fields}))
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        lg.warning(json.dumps({"event": "bench.record", "i": i, **fields}))
        h.flush()
        os.fsync(h.stream.fileno())
        plain_sync.append(time.perf_counter() - t)
    print(f"logging FileHandler: median {ms(plain)} ms; with fsync {ms(plain_sync)} ms")

    # a real model run and its record
    from imaging_assist.dicom import load_series, scan
    from imaging_assist.explain.methods import ExplainConfig
    from imaging_assist.inference.pipelines import RunOptions, run_model
    from imaging_assist.models.loaders import load_model
    from imaging_assist.models.registry import Registry

    vol = load_series(scan(CR).image_series()[0])
    model = load_model(Registry().get("cxr-pneumonia").card, "cpu")
    opts = RunOptions(device="cpu", explain=ExplainConfig(method="gradcam"))
    res = run_model(model, vol, opts)  # warm-up
    runs, recs = [], []
    for _ in range(args.runs):
        t = time.perf_counter()
        res = run_model(model, vol, opts)
        runs.append(time.perf_counter() - t)
    for _ in range(max(20, args.runs)):
        t = time.perf_counter()
        assert audit.record_model_run(model, vol, res)
        recs.append(time.perf_counter() - t)
    print(f"run_model cxr-pneumonia + Grad-CAM (CPU): median {ms(runs)} ms; its audit record "
          f"{ms(recs)} ms ({ms(recs) / ms(runs):.1%})")

    t = time.perf_counter()
    ok, line, reason = audit.verify()
    tv = time.perf_counter() - t
    n = len(audit.read_entries())
    assert ok, reason
    print(f"verify: {n} lines in {tv * 1e3:.1f} ms ({reason.split(';')[0]})")
    print(json.dumps({"record_ms_median": ms(rec), "record_ms_p95": p95(rec),
                      "record_without_fsync_ms_median": ms(nosync),
                      "logging_ms_median": ms(plain), "logging_fsync_ms_median": ms(plain_sync),
                      "model_run_record_ms_median": ms(recs), "run_model_ms_median": ms(runs),
                      "record_share_of_run": round(ms(recs) / ms(runs), 4),
                      "verify_lines_per_s": round(n / tv), "lines": n}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
