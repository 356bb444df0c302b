#!/usr/bin/env python
"""Benchmark of the prediction log and the drift monitor (issue 18), CPU, in a temporary user folder.

1. Logging overhead per prediction: one real cxr-pneumonia run on a Kermany film, then the
   engine's hook (``monitoring.log.record_safely``: input statistics, keyed pseudonyms, one
   SQLite insert in WAL mode) timed ``--reps`` times, side by side with the run itself
   (``run_model`` with the log paused), so the overhead is read against what it adds to.
2. ``monitor`` over 100,000 logged predictions: synthetic rows (values drawn from the model's
   own monitor reference; the second half shifted), spread over 90 days, plus 2,000 reader
   verdicts; ``drift.monitor`` with the default 7-day windows, timed end to end (SQLite read,
   KS/PSI/binomial tests, reader AUC with a 1,000-resample bootstrap per window).

Last line: one JSON object with log_overhead_ms (median), log_overhead_p95_ms, run_model_ms
(median of the same run without the log), monitor_s_100k (wall), monitor_cpu_s_100k (CPU
seconds of the monitor call: with the machine shared, wall alone says little), n_rows, n_windows, n_alerts,
process_cpu_s, load_avg_1min, cpu_count.  Targets: log_overhead_ms < 2, monitor_s_100k < 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("IMAGING_ASSIST_SHARED", ROOT.parent / "shared" / "data"))


def synthetic_rows(ref: dict, card, n: int, days: float, seed: int = 0) -> list[dict]:
    import numpy as np

    from imaging_assist.monitoring.log import RUN_COLUMNS

    rng = np.random.default_rng(seed)
    t0 = time.time() - days * 86400
    t = np.sort(t0 + rng.uniform(0, days * 86400, n))
    vals = {k: np.asarray(v, float) for k, v in ref["values"].items()}
    idx = rng.integers(0, len(vals["score"]), n)
    shift = np.arange(n) >= n // 2  # second half: another scanner (brighter, OOD scores up)
    rows = []
    thr = card.ood["threshold"]
    pthr = card.thresholds["pneumonia"].threshold
    for i in range(n):
        j = idx[i]
        ood = vals["ood_score"][j] * (1.6 if shift[i] else 1.0)
        score = float(vals["score"][j])
        r = dict.fromkeys(RUN_COLUMNS)
        r.update({"time_utc": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t[i])), "time_unix": float(t[i]),
                  "model_id": card.id, "model_version": card.version, "task": card.task,
                  "input_key": f"{rng.integers(1 << 62):032x}", "patient_key": f"{rng.integers(n // 2):032x}",
                  "kind": "image", "rows": 224, "cols": 224, "slices": 1, "channels": 1,
                  "int_mean": float(vals["int_mean"][j]) + (25.0 if shift[i] else 0.0),
                  "int_std": float(vals["int_std"][j]), "int_p50": float(vals["int_p50"][j]),
                  "ood_score": float(ood), "ood_threshold": thr, "ood_flagged": int(ood > thr),
                  "score": score, "positive": None if ood > thr else int(score >= pthr),
                  "top_label": "pneumonia" if score >= 0.5 else "normal",
                  "probabilities": json.dumps({"normal": 1 - score, "pneumonia": score}),
                  "run_s": 0.01, "device": "cpu", "precision": "fp32", "n_warnings": 0, "app_version": "bench"})
        rows.append(r)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--rows", type=int, default=100_000)
    a = ap.parse_args()
    import numpy as np

    c0 = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["IMAGING_ASSIST_DATA_DIR"] = str(Path(tmp) / "data")
        os.environ["IMAGING_ASSIST_CONFIG_DIR"] = str(Path(tmp) / "config")
        from imaging_assist.inference import RunOptions, read_image, run_model
        from imaging_assist.models.registry import Registry
        from imaging_assist.monitoring import drift, feedback
        from imaging_assist.monitoring import log as plog
        from imaging_assist.monitoring.reference import load_reference

        reg = Registry()
        model = reg.load("cxr-pneumonia")
        img = sorted((SHARED / "cxr" / "pneumonia_kermany" / "test" / "NORMAL").glob("*.jpeg"))[0]
        vol = read_image(img)
        opts = RunOptions(device="cpu")
        res = run_model(model, vol, opts)  # warm-up (and the first, logged, run: creates the file)
        run_ms = []
        with plog.paused():
            for _ in range(20):
                t = time.perf_counter()
                run_model(model, vol, opts)
                run_ms.append((time.perf_counter() - t) * 1e3)
        hook_ms = []
        for _ in range(a.reps):
            t = time.perf_counter()
            rid = plog.record_safely(model, vol, res)
            hook_ms.append((time.perf_counter() - t) * 1e3)
        assert rid is not None, "the hook did not log"

        ref = load_reference(model.card)
        rows = synthetic_rows(ref, model.card, a.rows, 90.0)
        lg = plog.open_log()
        lg.add_runs(rows)
        rids = [r[0] for r in lg.query("SELECT id FROM runs WHERE app_version = 'bench' ORDER BY id")]
        rng = np.random.default_rng(1)
        for rid in rng.choice(rids, 2000, replace=False):
            feedback.add_feedback(int(rid), "pneumonia", str(rng.choice(["agree", "agree", "agree", "disagree"])),
                                  log=lg)
        t = time.perf_counter()
        import scipy.stats  # noqa: F401 - a one-off per process, reported on its own (scipy_import_s)

        imp_s = time.perf_counter() - t
        t, c = time.perf_counter(), time.process_time()
        rep = drift.monitor("cxr-pneumonia", registry=reg, record_alerts=False)
        mon_s, mon_cpu = time.perf_counter() - t, time.process_time() - c
        m = rep["models"][0]
        out = {"log_overhead_ms": round(float(np.median(hook_ms)), 3),
               "log_overhead_p95_ms": round(float(np.percentile(hook_ms, 95)), 3),
               "run_model_ms": round(float(np.median(run_ms)), 2),
               "monitor_s_100k": round(mon_s, 3), "monitor_cpu_s_100k": round(mon_cpu, 3), "scipy_import_s": round(imp_s, 3), "n_rows": m["n_runs"], "n_windows": len(m["windows"]),
               "n_alerts": len(rep["alerts"]), "process_cpu_s": round(time.process_time() - c0, 2),
               "load_avg_1min": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count()}
        plog.close_all()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
