"""Batch throughput: a plain single-process loop over ``analyze``'s functions, ``batch --engine
local`` and ``batch --engine ray`` (started by the command, and joining a running Ray), in the
same run, on the same inputs.

Inputs: N pneumonia chest films (default 1000, shared/data/cxr/pneumonia_kermany, linked into a
temporary folder: the sources are only read) through ``cxr-pneumonia``, and the SVS slide
(shared/data/pathology/wsi_aperio_cmu1_small_region) through ``path-lung-tissue``.

Every figure is end to end for one call, the way a user meets it, each in a fresh interpreter
timed from before ``import imaging_assist`` (torch and MONAI imports, model loading, the folder
walk, for the engines hashing every input and the results table, for Ray its start and shutdown);
the engines run as the ``imaging-assist batch ... --json`` command (since session 17; before,
``run_batch`` was called directly, which left out the command's own imports).
The loop does what ``analyze`` does per item (read_image, match_card on the loaded image,
run_model, write_item_files, analyze's trust checks) and one results.json at the end.  Ray runs
twice: started by the command itself (``ray_*``), and joining a Ray head already running on
this machine through ``RAY_ADDRESS`` (``ray_joined_*``; the head is started before and stopped
after that run, untimed), as a workstation that keeps Ray running would use it.  The slide runs
(one item) are timed in this process.  A large synthetic slide (``--big-slide-px``) runs in
one process and spread over the workers (:func:`big_slide`).  Per-item costs (decode, model, writing; medians over the
local run's rows) are printed too.

Last stdout line: one JSON object with loop_images_per_s, local_images_per_s,
ray_images_per_s, ray_joined_images_per_s, ray_vs_loop, local_vs_loop, ray_vs_local,
ray_joined_vs_local, the slide seconds and the per-item costs.  ``loop_1thread_*``: the same
loop with one torch thread (the engines' workers use one each), to show how much of the gain is
that setting alone.  ``local_unbatched_*``: the local engine with ``--batch-size 1`` (one film
per forward pass, as before the card's ``inference.batch_size``), and
``local_batched_vs_unbatched``.  ``python scripts/bench_batch.py [--n 1000] [--skip-slide]``

``--ray-start``: only Ray's start-up, per ``ray.init`` variant (defaults; the engine's options:
no dashboard, no log_to_driver, no logging configuration; plus num_cpus=1; plus no worker
prestart; with ``engines.START_CONFIG``, stopped by ``engines.stop_ray`` (session 9); the engine
as ``batch`` runs it: ``engines.init_ray``, which also leaves out the dashboard head process, and
``engines.stop_ray``), each in a fresh interpreter, twice, interleaved: import, init, first task,
an actor importing torch, shutdown (seconds).
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # a --child run is timed from here: before torch and imaging_assist

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
SHARED = Path(os.environ.get("IMAGING_ASSIST_SHARED", ROOT.parent / "shared" / "data"))
PNEUMONIA = SHARED / "cxr" / "pneumonia_kermany"
SLIDE = SHARED / "pathology" / "wsi_aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"


def films(n: int) -> list[Path]:
    rows = (PNEUMONIA / "labels.csv").read_text().splitlines()[1:]
    files = [PNEUMONIA / r.split(",")[0] for r in rows]
    if len(files) < n:
        sys.exit(f"only {len(files)} films in {PNEUMONIA}")
    return files[:n]


def plain_loop(folder: Path, model_id: str, out: Path) -> float:
    """analyze's per-item steps in one plain loop (cli/analyze.py cmd_analyze); seconds."""
    from imaging_assist.inference.checks import apply_trust_checks
    from imaging_assist.inference.images import find_images, read_image
    from imaging_assist.inference.pipelines import RunOptions, run_model
    from imaging_assist.inference.results import write_item_files, write_results_json
    from imaging_assist.models.loaders import load_model
    from imaging_assist.models.matching import match_card, series_facts
    from imaging_assist.models.registry import Registry

    t0 = time.perf_counter()
    card = Registry().get(model_id).card
    model = load_model(card, "cpu")
    opts = RunOptions()
    items = []
    for p in find_images(folder):
        vol = read_image(p)
        m = match_card(card, series_facts(vol, None))
        res = run_model(model, vol, opts)
        res.source = str(p)
        d = write_item_files(res, vol, out, p.stem)
        d["source"] = res.source
        apply_trust_checks(d, res, card, [] if m.ok else list(m.reasons))
        items.append(d)
    summary = card.summary()
    summary["sha256"] = dict(model.hashes)
    write_results_json(items, out, summary, {"notes": [], "input": str(folder)})
    return time.perf_counter() - t0


def plain_slide(model_id: str, out: Path) -> float:
    from imaging_assist.models.loaders import load_model
    from imaging_assist.models.registry import Registry
    from imaging_assist.slides.analysis import analyze_slide

    t0 = time.perf_counter()
    card = Registry().get(model_id).card
    model = load_model(card, "cpu")
    analyze_slide(str(SLIDE), model, out, SLIDE.stem, device="cpu", batch_size=32, top_k=3)
    return time.perf_counter() - t0


def big_slide(work: Path, px: int) -> dict:
    """One large slide through ``path-lung-tissue``, each run in a fresh interpreter: ``batch
    --engine local`` in one process (``analyze_slide``: tiles read on threads while one torch
    thread runs the model), ``--processes 2`` (the slide's tiles spread over two worker
    processes) and ``--engine ray`` (spread over one actor per CPU).  The slide is the
    synthetic pyramid of scripts/bench_wsi.py (CMU-1 texture, JPEG q80, 0.5 µm/px)."""
    from bench_wsi import build_pyramid

    path = work / f"big_{px}.tif"
    build_pyramid(str(path), px, 0.5, 80)
    out: dict = {"big_slide_px": px, "big_slide_mb": round(path.stat().st_size / 2**20, 1)}
    for name, kw in (("local_1process", dict(engine="local", processes=1)),
                     ("local_spread", dict(engine="local", processes=2)),
                     ("ray_spread", dict(engine="ray"))):
        t, _ = fresh("engine", sources=[str(path)], model="path-lung-tissue", out=str(work / f"big_{name}"), **kw)
        (rj,) = (work / f"big_{name}" / "path-lung-tissue").glob("*/results.json")
        it = json.loads(rj.read_text())["items"][0]
        out["big_slide_tiles"] = it["tiling"]["n_tiles_run"]
        out[f"big_slide_{name}_s"] = round(t, 2)
        out[f"big_slide_{name}_tiles_s"] = it["timings_s"]["tiles_s"]
        out[f"big_slide_{name}_workers"] = it["tiling"]["workers"]
        print(f"big slide, {name}: {t:.1f} s, tiles {it['timings_s']['tiles_s']} s on "
              f"{it['tiling']['workers']} worker(s)", file=sys.stderr)
    for name in ("local_spread", "ray_spread"):
        out[f"big_slide_{name}_vs_1process"] = round(out["big_slide_local_1process_s"] / out[f"big_slide_{name}_s"], 3)
    return out


def engine(sources: list[str], model_id: str, out: Path, name: str, processes: int = 0) -> tuple[float, dict]:
    from imaging_assist.batch.item import Settings
    from imaging_assist.batch.run import run_batch

    t0 = time.perf_counter()
    r = run_batch(sources, [model_id], Settings(out_dir=str(out)), engine=name, progress=False,
                  echo=lambda m: print(m, file=sys.stderr), processes=processes)
    dt = time.perf_counter() - t0
    if r["failed"] or r["state"] != "finished":
        sys.exit(f"{name}: {r}")
    return dt, r


def fresh(kind: str, **kw) -> tuple[float, dict]:
    """One timed run in a fresh interpreter, the way a user meets it (it pays its own torch and
    MONAI imports, as do the local engine's worker processes and Ray's actors): ``kind`` is
    ``loop`` (:func:`plain_loop`; ``threads``: torch threads, 0 = torch's default) or ``engine``
    (:func:`run_batch`; ``engine``, ``processes``, ``address``).  Timed inside the child from
    before ``import imaging_assist`` (``T0``) to its last row.  Returns (seconds, details)."""
    import subprocess

    env = dict(os.environ)
    if kw.get("address"):
        env["RAY_ADDRESS"] = kw.pop("address")
        env.update(kw.pop("auth", {}))
    p = subprocess.run([sys.executable, __file__, "--child", json.dumps(dict(kw, kind=kind))],
                       capture_output=True, text=True, env=env)
    sys.stderr.write(p.stderr)
    if p.returncode != 0:
        sys.exit(f"{kind} {kw} failed: {p.stderr.strip().splitlines()[-1:]}")
    d = json.loads(p.stdout.strip().splitlines()[-1])
    return d["s"], d.get("r", {})


def child(spec: dict) -> None:
    """The body of a :func:`fresh` run; prints {"s": seconds since T0, "r": details}."""
    import warnings

    warnings.filterwarnings("ignore")
    if spec["kind"] == "loop":
        if spec.get("threads"):
            import torch

            torch.set_num_threads(spec["threads"])
        plain_loop(Path(spec["src"]), spec["model"], Path(spec["out"]))
        r: dict = {}
    else:  # the command a user types (its argument checks and imports included), --json for the counts
        import contextlib
        import io

        from imaging_assist.cli.main import main

        sys.argv = ["imaging-assist", "batch", *spec["sources"], "--model", spec["model"], "--out", spec["out"],
                    "--engine", spec["engine"], "--json"]
        if spec.get("processes"):
            sys.argv += ["--processes", str(spec["processes"])]
        if spec.get("batch_size"):
            sys.argv += ["--batch-size", str(spec["batch_size"])]
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = main()
        r = json.loads(buf.getvalue().strip().splitlines()[-1])
        if rc or r["failed"] or r["state"] != "finished":
            sys.exit(f"{spec['engine']}: rc {rc} {r}")
    print(json.dumps({"s": time.perf_counter() - T0, "r": r}))


class RayHead:
    """``ray start --head`` on 127.0.0.1 (free port, token authentication, no dashboard, its own
    temporary folder) for the "joined" runs: a workstation that keeps Ray running and passes
    ``--address`` / ``RAY_ADDRESS`` to each batch.  Started before, and stopped after, the timed
    run (not timed)."""

    def __enter__(self):
        from _ray_local import start_head

        self.tmp = tempfile.mkdtemp(prefix="iab-", dir="/tmp")  # short: Ray's socket paths must fit
        try:
            self.address, self.auth, _ = start_head(self.tmp, ["--num-cpus", str(os.cpu_count())])
        except RuntimeError as e:
            sys.exit(str(e).strip().splitlines()[-1])
        return self

    def __exit__(self, *exc):
        from _ray_local import stop  # this head only: `ray stop` would stop every Ray here

        stop(self.tmp)
        shutil.rmtree(self.tmp, ignore_errors=True)


def costs() -> dict:
    """CPU seconds per item and stage (time.process_time, torch on 1 thread): robust to a busy
    machine, unlike wall time.  The figures docs/scaling.md calculates with."""
    import torch

    from imaging_assist.batch.item import ModelRunner, Settings
    from imaging_assist.batch.sources import Candidate, content_hash
    from imaging_assist.dicom import load_series, scan
    from imaging_assist.inference.images import read_image

    torch.set_num_threads(1)
    out: dict = {}
    pt = time.process_time
    fs = films(60)
    t = pt()
    for f in fs:
        content_hash(Candidate("image", f, f.stem, str(f)))
    mb = sum(f.stat().st_size for f in fs) / 1e6
    out["hash_cpu_s_per_mb"] = round((pt() - t) / mb, 5)
    t = pt()
    vols = [read_image(f) for f in fs]
    out["decode_jpeg224_cpu_s"] = round((pt() - t) / len(fs), 5)
    ct = scan(str(SHARED / "dicom" / "ct_head_phantom_philips" / "series202_STD_BRAIN_1MM_iDose")).image_series()[0]
    t = pt()
    v = load_series(ct)
    out["decode_ct512_slice_cpu_s"] = round((pt() - t) / v.array.shape[0], 5)
    cr = scan(str(SHARED / "dicom" / "cr_chest_monochrome1_fuji")).image_series()[0]
    t = pt()
    for _ in range(5):
        load_series(cr)
    out["decode_cr440_cpu_s"] = round((pt() - t) / 5, 5)
    work = Path(tempfile.mkdtemp(prefix="bench_costs_"))
    try:
        for mid in ("cxr-pneumonia", "cxr-lung-seg"):
            r = ModelRunner(mid, Settings(out_dir=str(work)))
            cands = [Candidate("image", f, f.stem, str(f), content_hash="%064d" % i) for i, f in enumerate(fs)]
            r.run(cands[0], vols[0])  # warm-up
            ti = tw = 0.0
            for c, vol in zip(cands[1:], vols[1:]):
                a = pt()
                row, job = r.infer(c, vol)
                b = pt()
                r.write(row, job)
                ti += b - a
                tw += pt() - b
            n = len(cands) - 1
            out[f"{mid}_infer_cpu_s"] = round(ti / n, 5)
            bs = int(r.card.inference.get("batch_size", 1) or 1)
            if bs > 1:  # the engines' way: items through the network together, audit per chunk
                from imaging_assist.privacy.audit import grouped

                a = pt()
                for k in range(1, len(cands), bs):
                    with grouped():
                        r.infer_many([(c, v, "", 0.0) for c, v in zip(cands[k:k + bs], vols[k:k + bs])])
                out[f"{mid}_infer_batched_cpu_s"] = round((pt() - a) / n, 5)
                out[f"{mid}_batch_size"] = bs
            x = torch.zeros((1, r.card.input.channels, *r.card.input.size))
            with torch.no_grad():
                r.model.network(x)
                a = pt()
                for _ in range(20):
                    r.model.network(x)
            out[f"{mid}_forward_only_cpu_s"] = round((pt() - a) / 20, 5)  # the part a GPU takes over
            out[f"{mid}_write_cpu_s"] = round(tw / n, 5)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


#: ray.init variants timed by --ray-start (each in a fresh interpreter)
RAY_VARIANTS = {
    "defaults": ("dict()", {}),
    "engine (no dashboard, no log_to_driver, no logging config)":
        ("dict(include_dashboard=False, log_to_driver=False, configure_logging=False)", {}),
    "engine + num_cpus=1": ("dict(include_dashboard=False, log_to_driver=False, configure_logging=False, "
                            "num_cpus=1)", {}),
    "engine + no worker prestart": ("dict(include_dashboard=False, log_to_driver=False, "
                                    "configure_logging=False)", {"RAY_enable_worker_prestart": "0"}),
    # session 9's engine: its options and engines.START_CONFIG (the raylet's 50-ms connect
    # retries), stopped by engines.stop_ray (the autoscaler monitor killed first)
    "engine + START_CONFIG, stop_ray (with the dashboard head)": (
        "dict(include_dashboard=False, log_to_driver=False, configure_logging=False, "
        "_system_config=dict(START_CONFIG))", {"IA_BENCH_STOP_RAY": "1"}),
    # the engine as batch runs it: engines.init_ray (the above without the dashboard head
    # process) and engines.stop_ray
    "engine as batch runs it (init_ray, stop_ray)": ("dict()", {"IA_BENCH_STOP_RAY": "1",
                                                                 "IA_BENCH_INIT_RAY": "1"}),
}

RAY_CHILD = r"""
import json, os, sys, tempfile, time
t0 = time.perf_counter()
import ray
t_import = time.perf_counter() - t0
sys.path.insert(0, {root!r})
from imaging_assist.batch.engines import START_CONFIG, _loopback_only, init_ray
_loopback_only()
t1 = time.perf_counter()
if os.environ.get("IA_BENCH_INIT_RAY"):
    tmp = init_ray(None)[1]
else:
    tmp = tempfile.mkdtemp(prefix="ia-ray-", dir="/tmp")
    ray.init(_node_ip_address="127.0.0.1", _temp_dir=tmp, **{kw})
t_init = time.perf_counter() - t1

@ray.remote(num_cpus=0.5)
class A:
    def __init__(self):
        import torch  # what a model actor imports first
    def ready(self):
        return True

t2 = time.perf_counter()
ray.get(ray.remote(num_cpus=0.5)(lambda: 1).remote())
t_task = time.perf_counter() - t2
t3 = time.perf_counter()
ray.get(A.remote().ready.remote())
t_actor = time.perf_counter() - t3
t4 = time.perf_counter()
if os.environ.get("IA_BENCH_STOP_RAY"):
    from imaging_assist.batch.engines import stop_ray
    stop_ray(tmp)
else:
    ray.shutdown()
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
t_down = time.perf_counter() - t4
print(json.dumps(dict(import_s=t_import, init_s=t_init, first_task_s=t_task, actor_with_torch_s=t_actor,
                      shutdown_s=t_down, total_s=time.perf_counter() - t0)))
"""


def ray_start(repeat: int = 2) -> dict:
    """Seconds of each ray.init variant (import, init, first task, an actor importing torch,
    shutdown), each in a fresh interpreter, ``repeat`` times, variants interleaved."""
    import subprocess

    out: dict = {k: [] for k in RAY_VARIANTS}
    for _ in range(repeat):
        for name, (kw, env) in RAY_VARIANTS.items():
            e = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", **env)
            e.pop("RAY_ADDRESS", None)
            p = subprocess.run([sys.executable, "-c", RAY_CHILD.format(root=str(ROOT), kw=kw)],
                               capture_output=True, text=True, env=e, timeout=300)
            if p.returncode:
                out[name].append({"error": p.stderr.strip().splitlines()[-1:]})
                continue
            d = json.loads(p.stdout.strip().splitlines()[-1])
            d["loadavg_1m"] = round(os.getloadavg()[0], 2)
            out[name].append({k: round(v, 3) for k, v in d.items()})
            print(f"{name}: {out[name][-1]}", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--skip-slide", action="store_true")
    ap.add_argument("--big-slide-px", type=int, default=20_000,
                    help="side of the synthetic pyramid for the spread-slide runs (20000: ~1,150 tiles)")
    ap.add_argument("--costs-only", action="store_true", help="only the CPU seconds per item and stage")
    ap.add_argument("--ray-start", action="store_true",
                    help="only the start-up seconds of ray.init variants (fresh interpreter each)")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # one fresh() run (JSON spec)
    a = ap.parse_args()
    if a.child:
        child(json.loads(a.child))
        return
    if a.ray_start:
        print(json.dumps({"ray_start": ray_start(), "cpus": os.cpu_count()}))
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import warnings

    warnings.filterwarnings("ignore")
    if a.costs_only:
        print(json.dumps(costs()))
        return
    work = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    try:
        src = work / "films"
        src.mkdir()
        for f in films(a.n):
            (src / f"{f.parent.name}_{f.name}").symlink_to(f)
        load = os.getloadavg()
        res: dict = {"n_images": a.n, "cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load]}
        m = "cxr-pneumonia"
        # every run in a fresh interpreter, timed from before its imports (see fresh())
        res["loop_s"] = round(fresh("loop", src=str(src), model=m, out=str(work / "loop"))[0], 2)
        print(f"loop: {a.n} images in {res['loop_s']} s (torch's default threads)", file=sys.stderr)
        # the same loop with one torch thread: how much of the engines' gain is the thread setting
        res["loop_1thread_s"] = round(fresh("loop", src=str(src), model=m, out=str(work / "loop1"), threads=1)[0], 2)
        print(f"loop, 1 torch thread: {res['loop_1thread_s']} s", file=sys.stderr)
        t, r = fresh("engine", engine="local", sources=[str(src)], model=m, out=str(work / "local"))
        print(f"local: {t:.1f} s {r}", file=sys.stderr)
        res["local_s"] = round(t, 2)
        res["local_scan_hash_s"] = r["scan_s"]
        res["local_first_row_s"] = r.get("first_row_s")
        res["local_steady_images_per_s"] = r.get("steady_items_per_s")
        from imaging_assist.batch.table import ResultsTable

        tab = ResultsTable(work / "local")
        rows = tab.rows("WHERE status='ok'")
        tab.close()
        for k in ("decode_s", "infer_s", "write_s"):
            res[f"item_{k}_median"] = round(statistics.median(x[k] for x in rows if x.get(k) is not None), 5)
        # the same with one film per forward pass (--batch-size 1): what sharing passes gives
        t, r = fresh("engine", engine="local", sources=[str(src)], model=m, out=str(work / "local_b1"),
                     batch_size=1)
        print(f"local, --batch-size 1: {t:.1f} s", file=sys.stderr)
        res["local_unbatched_s"] = round(t, 2)
        # the local engine in one process (what batches under 200 items get)
        t, r = fresh("engine", engine="local", sources=[str(src)], model=m, out=str(work / "local1"), processes=1)
        print(f"local, one process: {t:.1f} s", file=sys.stderr)
        res["local_1process_s"] = round(t, 2)
        # Ray as the command starts it alone (ray.init in-process, its shutdown included) ...
        t, r = fresh("engine", engine="ray", sources=[str(src)], model=m, out=str(work / "ray"))
        print(f"ray: {t:.1f} s {r}", file=sys.stderr)
        res["ray_s"] = round(t, 2)
        res["ray_first_row_s"] = r.get("first_row_s")  # Ray start, actors, models
        res["ray_steady_images_per_s"] = r.get("steady_items_per_s")
        # ... and joining a Ray already running on this machine (--address / RAY_ADDRESS)
        with RayHead() as head:
            t, r = fresh("engine", engine="ray", sources=[str(src)], model=m, out=str(work / "ray_joined"),
                         address=head.address, auth=head.auth)
        print(f"ray, joined: {t:.1f} s {r}", file=sys.stderr)
        res["ray_joined_s"] = round(t, 2)
        res["ray_joined_first_row_s"] = r.get("first_row_s")
        res["ray_joined_steady_images_per_s"] = r.get("steady_items_per_s")
        if not a.skip_slide:
            res.update(big_slide(work, a.big_slide_px))
            res["loop_slide_s"] = round(plain_slide("path-lung-tissue", work / "loop_slide"), 2)
            res["local_slide_s"] = round(engine([str(SLIDE)], "path-lung-tissue", work / "local_slide", "local")[0], 2)
            res["ray_slide_s"] = round(engine([str(SLIDE)], "path-lung-tissue", work / "ray_slide", "ray")[0], 2)
        res["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        for k in ("loop", "loop_1thread", "local", "local_unbatched", "local_1process", "ray", "ray_joined"):
            res[f"{k}_images_per_s"] = round(a.n / res[f"{k}_s"], 2)
        res["local_vs_loop"] = round(res["local_images_per_s"] / res["loop_images_per_s"], 3)
        res["ray_vs_loop"] = round(res["ray_images_per_s"] / res["loop_images_per_s"], 3)
        res["local_vs_loop_1thread"] = round(res["local_images_per_s"] / res["loop_1thread_images_per_s"], 3)
        res["local_batched_vs_unbatched"] = round(res["local_images_per_s"] / res["local_unbatched_images_per_s"], 3)
        res["ray_vs_local"] = round(res["ray_images_per_s"] / res["local_images_per_s"], 3)
        res["ray_joined_vs_local"] = round(res["ray_joined_images_per_s"] / res["local_images_per_s"], 3)
        print(json.dumps(res))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
