#!/usr/bin/env python
"""Whole-slide benchmark: tiled inference throughput vs a naive loop, and time to first view.

1. Builds a 50,000 x 50,000 px pyramid (tiled JPEG TIFF, 256 px tiles, levels in the IFD
   chain, MPP 0.25) in a temporary folder, chunk-wise: the content is H&E texture (a crop
   of the CMU-1 SVS in ../shared/data, mirrored into a seamless 2048 px period) inside tissue
   blobs drawn on a 256 px cell grid, white glass elsewhere.  Each level is the exact 2x2
   box average of the one below, so levels agree.  Identical tiles (same texture phase and
   cell pattern) are JPEG-encoded once and their bytes reused, which keeps the build under a
   minute without holding any level in memory.
2. Tiled inference at 0.5 µm/px (``--mpp``), 224 px tiles, batch 32, torch.inference_mode, on
   the first ``--tiles`` tissue tiles, with a small CNN stand-in (random weights) or the shipped
   ``path-lung-tissue`` model (``--model``): ours (:func:`imaging_assist.slides.run_tiles`:
   per-batch parallel decode of the stored tiles, row-run reads, reused float buffers, a
   bounded read-ahead queue, batched forward) against a naive loop (``read_region`` per tile,
   resized when the level is not at the tile's µm/px, one tile per forward pass) on the same
   tiles, same reader, caches cleared before each.  Outputs are compared.  ``--repeat``
   alternates the two loops; figures are medians and ``*_runs`` lists every run.
3. Reading alone: ``read_tiles_per_s`` (ours with a no-op model that takes uint8 tiles, as
   the shipped model and the tiny stand-in do: reading, resampling, copy into the batch
   buffer, hand-off), ``read_float_tiles_per_s`` (the same for a model that wants float 0..1:
   plus one vectorised conversion per batch) and ``naive_reads_only_tiles_per_s`` (the naive
   loop's reads, uint8, no model).  ``--profile`` splits both into CPU ms per tile (all
   threads): JPEG decoding, resampling, the rest.
4. Time to first view: open + overview thumbnail + the first screen (1600 x 1000 viewport at
   fit-to-window zoom, read as 256 px viewer tiles from the best level and scaled), in this
   process (after imports) and again in a fresh interpreter (wall time incl. start-up and
   imports).  The file was just written, so the OS page cache is warm in both.

The machine's 1-minute load average is recorded at the start and the end.  The last line
printed is a JSON object (``tiles_per_s``, ``speedup_vs_naive``, ``read_tiles_per_s``,
``naive_reads_only_tiles_per_s``, ``first_view_s``, ``pan_fps`` = null: panning is measured by
the viewer's benchmark).  To compare with another version of the code, copy this script into
that checkout's ``scripts/`` and run it there (it imports the package beside it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SVS = ROOT.parent / "shared" / "data" / "pathology" / "wsi_aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"

TILE = 256
PERIOD = 2048


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- build


def texture() -> tuple[np.ndarray, str]:
    """Seamless (PERIOD, PERIOD, 3) H&E texture."""
    half = PERIOD // 2
    if SVS.exists():
        from imaging_assist.slides import open_slide
        with open_slide(SVS) as s:
            crop = s.read_region((700, 1150), 0, (half, half))
        src = "CMU-1-Small-Region.svs crop (700,1150) 1024 px, mirrored"
    else:  # synthetic fallback: pink/purple noise blobs
        rng = np.random.default_rng(1)
        t = rng.random((half // 8, half // 8)).repeat(8, 0).repeat(8, 1)[..., None]
        crop = (np.array([225, 140, 180]) * (1 - 0.6 * t) + np.array([120, 70, 160]) * 0.6 * t).astype(np.uint8)
        src = "synthetic (CMU-1 SVS not found)"
    top = np.concatenate([crop, crop[:, ::-1]], axis=1)
    return np.ascontiguousarray(np.concatenate([top, top[::-1]], axis=0)), src


def cell_mask(n: int, seed: int = 0) -> np.ndarray:
    """(n, n) bool: tissue blobs on a grid of 256 px cells (about 35 % tissue)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    m = np.zeros((n, n), bool)
    for cy, cx, ry, rx, a in [(0.3, 0.3, 0.18, 0.25, 0.4), (0.65, 0.62, 0.22, 0.2, -0.3),
                              (0.75, 0.2, 0.1, 0.12, 0.0), (0.25, 0.75, 0.12, 0.08, 1.0)]:
        u = ((xx - cx) * math.cos(a) + (yy - cy) * math.sin(a)) / rx
        v = (-(xx - cx) * math.sin(a) + (yy - cy) * math.cos(a)) / ry
        m |= u * u + v * v <= 1
    m &= rng.random((n, n)) > 0.02  # a few glass holes
    return m


def build_pyramid(path: str, size: int, mpp: float, quality: int) -> dict:
    import imagecodecs
    import tifffile
    from PIL import Image

    t0 = time.perf_counter()
    tex, tex_src = texture()
    ncell = math.ceil(size / TILE)
    cells = cell_mask(ncell)
    white = np.full((TILE, TILE, 3), 255, np.uint8)
    levels = []
    k = 0
    while True:
        w = size >> k
        levels.append(w)
        if w <= 512:
            break
        k += 1
    n_encoded = 0
    n_tiles = 0

    def encode(a: np.ndarray) -> bytes:
        return imagecodecs.jpeg_encode(a, level=quality, colorspace="RGB", outcolorspace="YCBCR",
                                       subsampling="420")

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for k, w in enumerate(levels):
            f = 1 << k
            tex_k = tex if k == 0 else np.asarray(Image.fromarray(tex).reduce(f))
            pk = tex_k.shape[0]
            reps = math.ceil((TILE + pk) / pk)
            tex_big = np.tile(tex_k, (reps, reps, 1))
            ck = TILE >> k if k <= 8 else 1  # level-k pixels per cell
            cpt = TILE // ck                # cells per tile side
            cache: dict = {}
            ntx = math.ceil(w / TILE)

            def tiles():
                nonlocal n_encoded, n_tiles
                for ty in range(ntx):
                    for tx in range(ntx):
                        blk = cells[ty * cpt:(ty + 1) * cpt, tx * cpt:(tx + 1) * cpt]
                        if blk.shape != (cpt, cpt):
                            blk = np.pad(blk, ((0, cpt - blk.shape[0]), (0, cpt - blk.shape[1])))
                        n_tiles += 1
                        if not blk.any():
                            key = "white"
                        else:
                            px, py = (tx * TILE) % pk, (ty * TILE) % pk
                            key = (px, py, np.packbits(blk).tobytes())
                        data = cache.get(key)
                        if data is None:
                            if key == "white":
                                a = white
                            else:
                                pm = np.kron(blk, np.ones((ck, ck), bool))[:TILE, :TILE]
                                a = np.where(pm[..., None], tex_big[py:py + TILE, px:px + TILE], 255)
                                a = np.ascontiguousarray(a, np.uint8)
                            data = encode(a)
                            cache[key] = data
                            n_encoded += 1
                        yield data

            res = 1e4 / (mpp * f)
            tw.write(tiles(), shape=(w, w, 3), dtype=np.uint8, tile=(TILE, TILE), compression="jpeg",
                     photometric="rgb", subsampling=(2, 2), subfiletype=1 if k else 0,
                     resolution=(res, res), resolutionunit="CENTIMETER", metadata=None,
                     description=None if k else f"imaging-assist bench pyramid {size}x{size}")
    return {"build_s": round(time.perf_counter() - t0, 2), "file_mb": round(os.path.getsize(path) / 2**20, 1),
            "levels": len(levels), "tiles_written": n_tiles, "tiles_encoded": n_encoded,
            "tissue_cell_fraction": round(float(cells.mean()), 3), "texture": tex_src}


# --------------------------------------------------------------------------- models


def make_model(kind: str):
    import torch
    from torch import nn

    _ToUnit = _to_unit
    torch.manual_seed(0)
    if kind == "path-lung-tissue":  # the shipped model, with its card's preprocessing
        from imaging_assist.models.registry import Registry
        from imaging_assist.slides.analysis import TileModel

        return TileModel(Registry().load(kind), "cpu")
    if kind == "resnet18":
        import torchvision
        net = torchvision.models.resnet18(weights=None, num_classes=3)
    else:
        net = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 3))
    net = nn.Sequential(_ToUnit(), net, nn.Softmax(dim=1)).eval()
    net.accepts_uint8 = True   # run_tiles hands it the uint8 tiles; its first layer converts
    return net


def _to_unit():
    from torch import nn

    class ToUnit(nn.Module):
        """First layer: uint8 0..255 tiles -> float 0..1 (float input passes unchanged)."""

        def forward(self, x):
            return x.float().mul_(1.0 / 255.0) if not x.is_floating_point() else x

    return ToUnit()


# --------------------------------------------------------------------------- runs


def run_ours(slide, plan, model, batch: int, model_batch: int | None = None) -> tuple[float, np.ndarray, dict]:
    from imaging_assist.slides import run_tiles
    slide.clear_cache()
    c0, t0 = time.process_time(), time.perf_counter()
    res = run_tiles(slide, model, batch_size=batch, plan=plan, prefetch=2, model_batch=model_batch)
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return dt, res.probs, {"read_s": round(res.read_s, 3), "model_s": round(res.model_s, 3),
                           "cpu_ms_per_tile": round(cpu / len(plan) * 1e3, 3)}


def naive_tile(slide, plan, x: float, y: float) -> np.ndarray:
    """What a user would write with OpenSlide's API: ``read_region`` of the tile's field of view
    at the pipeline's level, resized to the tile size when the level is not exactly at the
    tile's µm/px (Pillow bilinear, as the pipeline)."""
    from PIL import Image

    t = plan.tile_px
    f = plan.downsample[0] / plan.level_scale[0]        # level px per tile px
    side = int(round(t * f))
    tile = slide.read_region((int(round(x)), int(round(y))), plan.level, (side, side))
    if side != t:
        tile = np.asarray(Image.fromarray(tile).resize((t, t), Image.Resampling.BILINEAR))
    return tile


def run_naive(slide, plan, model) -> tuple[float, np.ndarray]:
    import torch
    slide.clear_cache()
    rects = plan.rects0()
    out = np.empty((len(rects), 3), np.float32)
    c0, t0 = time.process_time(), time.perf_counter()
    with torch.inference_mode():
        for i, (x, y, _, _) in enumerate(rects):
            tile = naive_tile(slide, plan, x, y)
            xb = torch.from_numpy(np.ascontiguousarray(tile.transpose(2, 0, 1), np.float32) / 255.0)[None]
            out[i] = model(xb).numpy()[0]
    run_naive.cpu_ms_per_tile = round((time.process_time() - c0) / max(1, len(rects)) * 1e3, 3)
    return time.perf_counter() - t0, out


def first_view(path: str, viewport=(1600, 1000)) -> dict:
    from PIL import Image

    from imaging_assist.slides import open_slide
    t0 = time.perf_counter()
    s = open_slide(path)
    t_open = time.perf_counter()
    overview = s.get_thumbnail(512)
    t_thumb = time.perf_counter()
    w0, h0 = s.dimensions
    zoom = min(viewport[0] / w0, viewport[1] / h0)
    lvl = s.get_best_level_for_downsample(1 / zoom)
    lw, lh = s.level_dimensions[lvl]
    canvas = np.empty((lh, lw, 3), np.uint8)
    n = 0
    for ty in range(math.ceil(lh / TILE)):          # viewer-style 256 px tile requests
        for tx in range(math.ceil(lw / TILE)):
            tw, th = min(TILE, lw - tx * TILE), min(TILE, lh - ty * TILE)
            canvas[ty * TILE:ty * TILE + th, tx * TILE:tx * TILE + tw] = s.read_level(lvl, tx * TILE, ty * TILE, tw, th)
            n += 1
    screen = Image.fromarray(canvas).resize((max(1, round(w0 * zoom)), max(1, round(h0 * zoom))),
                                            Image.Resampling.BILINEAR)
    t_end = time.perf_counter()
    s.close()
    return {"first_view_s": round(t_end - t0, 4), "open_s": round(t_open - t0, 4),
            "overview_s": round(t_thumb - t_open, 4), "first_screen_s": round(t_end - t_thumb, 4),
            "first_screen_level": lvl, "first_screen_tiles": n, "screen_px": list(screen.size),
            "overview_px": [int(overview.shape[1]), int(overview.shape[0])]}


def _load() -> float:
    return round(os.getloadavg()[0], 2)


class NoopUint8:
    """A no-op model that takes uint8 tiles (as the shipped TileModel and the tiny stand-in do)."""

    accepts_uint8 = True

    def __call__(self, x):
        return np.zeros((len(x), 3), np.float32)


def noop_float(x):
    return np.zeros((len(x), 3), np.float32)


def run_reads(slide, plan, batch: int) -> tuple[float, float, float]:
    """(ours, ours to float, naive) reading alone, tiles/s: our pipeline with a no-op model
    taking uint8 tiles (reading, resampling, copy into the batch buffer, thread hand-off:
    what the shipped model and the tiny stand-in get), the same with a no-op model taking
    float 0..1 batches (plus one vectorised conversion per batch), and the naive
    ``read_region`` loop without a model (uint8 tiles, no conversion)."""
    from imaging_assist.slides import run_tiles
    n = len(plan)
    times = []
    for model in (NoopUint8(), noop_float):
        slide.clear_cache()
        t0 = time.perf_counter()
        run_tiles(slide, model, batch_size=batch, plan=plan, prefetch=2)
        times.append(time.perf_counter() - t0)
    slide.clear_cache()
    t1 = time.perf_counter()
    for x, y, _, _ in plan.rects0():
        naive_tile(slide, plan, x, y)
    t_naive = time.perf_counter() - t1
    return n / times[0], n / times[1], n / t_naive


def profile_reads(slide, plan, batch: int) -> dict:
    """Where reading time goes, per tile: process CPU (all threads) split into JPEG decoding
    (tifffile backend's decoder), resampling (Pillow) and the rest (assembly copies, float
    conversion, Python, hand-off), and wall time; ours (no-op model) and the naive loop."""
    import threading

    from PIL import Image

    from imaging_assist.slides import run_tiles

    n = len(plan)
    acc = {"decode": 0.0, "resample": 0.0, "decodes": 0}
    lock = threading.Lock()

    def wrap(fn, key):
        def timed(*a, **k):
            t = time.thread_time()
            r = fn(*a, **k)
            d = time.thread_time() - t
            with lock:
                acc[key] += d
                if key == "decode":
                    acc["decodes"] += 1
            return r
        return timed

    L = slide._levels[plan.level]  # tifffile backend (the bench pyramid)
    dec, resize, reduce = L.decode, Image.Image.resize, Image.Image.reduce
    L.decode = wrap(dec, "decode")
    Image.Image.resize, Image.Image.reduce = wrap(resize, "resample"), wrap(reduce, "resample")
    def naive():
        for x, y, _, _ in plan.rects0():
            naive_tile(slide, plan, x, y)

    out = {}
    try:
        for name, fn in (("ours", lambda: run_tiles(slide, NoopUint8(), batch_size=batch, plan=plan, prefetch=2)),
                         ("ours_float", lambda: run_tiles(slide, noop_float, batch_size=batch, plan=plan,
                                                          prefetch=2)),
                         ("naive", naive)):
            slide.clear_cache()
            acc.update(decode=0.0, resample=0.0, decodes=0)
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            ms = lambda v: round(v / n * 1e3, 3)  # noqa: E731
            out[name] = {"wall_ms_per_tile": ms(wall), "cpu_ms_per_tile": ms(cpu),
                         "decode_cpu_ms_per_tile": ms(acc["decode"]),
                         "resample_cpu_ms_per_tile": ms(acc["resample"]),
                         "other_cpu_ms_per_tile": ms(cpu - acc["decode"] - acc["resample"]),
                         "stored_tiles_decoded": acc["decodes"]}
    finally:
        L.decode, Image.Image.resize, Image.Image.reduce = dec, resize, reduce
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=50_000, help="slide width = height in px")
    ap.add_argument("--tiles", type=int, default=512, help="tissue tiles to run (both loops)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--model", choices=["tiny", "resnet18", "path-lung-tissue"], default="tiny")
    ap.add_argument("--quality", type=int, default=80, help="JPEG quality of the pyramid")
    ap.add_argument("--workdir", default=None, help="where to build (default: a temp folder, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the built pyramid")
    ap.add_argument("--reuse", action="store_true",
                    help="with --workdir: use the pyramid this script built there before (no rebuild)")
    ap.add_argument("--repeat", type=int, default=2,
                    help="alternate ours/naive this many times; figures are medians, *_runs lists each")
    ap.add_argument("--mpp", type=float, default=0.5,
                    help="tile µm/px (0.5: level 1 as stored; 0.7, the shipped model's card: resampled)")
    ap.add_argument("--profile", action="store_true",
                    help="also split reading time per tile into decode / resample / rest (CPU, all threads)")
    ap.add_argument("--no-model", action="store_true", help="reading figures only (no model runs)")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch intra-op threads for both loops (default: torch's own choice)")
    ap.add_argument("--model-batch", type=int, default=None,
                    help="tiles per forward call in our loop (run_tiles model_batch; default --batch)")
    ap.add_argument("--first-view-only", metavar="SLIDE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.first_view_only:  # child process of the cold-start measurement
        print(json.dumps(first_view(args.first_view_only)))
        return 0

    import torch

    from imaging_assist.slides import detect_tissue, open_slide, plan_tiles

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    work = args.workdir or tempfile.mkdtemp(prefix="bench_wsi_")
    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, f"bench_{args.size}.tif")
    result: dict = {"size": args.size, "tile_px": 224, "tile_mpp": args.mpp, "batch": args.batch,
                    "model_batch": args.model_batch or args.batch,
                    "model": args.model, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "code": str(ROOT), "loadavg_1m_start": _load()}
    try:
        if args.reuse and os.path.exists(path):
            result["build"] = {"reused": path, "file_mb": round(os.path.getsize(path) / 2**20, 1)}
        else:
            log(f"building {args.size}x{args.size} pyramid in {path} ...")
            result["build"] = build_pyramid(path, args.size, mpp=0.25, quality=args.quality)
        log(f"  {result['build']}")

        result.update(first_view(path))  # first: nothing of this slide decoded yet in this process
        # Same in a fresh interpreter (imports included), measured from outside.
        import subprocess
        t0 = time.perf_counter()
        child = subprocess.run([sys.executable, __file__, "--first-view-only", path], capture_output=True,
                               text=True, check=True)
        result["first_view_new_process_s"] = round(time.perf_counter() - t0, 3)
        result["first_view_new_process_inner_s"] = json.loads(child.stdout.strip().splitlines()[-1])["first_view_s"]
        log(f"first view {result['first_view_s']} s (new process: {result['first_view_new_process_s']} s "
            "including interpreter start and imports)")

        slide = open_slide(path)
        t0 = time.perf_counter()
        mask = detect_tissue(slide)
        result["tissue_s"] = round(time.perf_counter() - t0, 3)
        result["tissue_fraction"] = round(mask.fraction, 3)
        plan = plan_tiles(slide, 224, args.mpp, tissue_mask=mask)
        result["tissue_tiles_total"] = len(plan)
        n = min(args.tiles, len(plan))
        sub = dataclasses.replace(plan, cells=plan.cells[:n], tissue_fraction=plan.tissue_fraction[:n])
        result["tiles"] = n
        result["read_level"] = plan.level
        if args.profile:
            for rep in range(max(1, args.repeat)):
                result.setdefault("profile_runs", []).append(profile_reads(slide, sub, args.batch))
                log(f"  profile: {result['profile_runs'][-1]} (load {_load()})")
        model = None if args.no_model else make_model(args.model)
        if model is not None:
            with torch.inference_mode():  # warm-up (first-call allocations), not timed
                model(torch.zeros(args.batch, 3, 224, 224))
                model(torch.zeros(1, 3, 224, 224))
        runs: dict[str, list] = {k: [] for k in ("ours_s", "naive_s", "read_tiles_per_s", "read_float_tiles_per_s",
                                                  "naive_reads_only_tiles_per_s", "ours_detail")}
        diffs = []
        for rep in range(max(1, args.repeat)):
            if model is not None:
                log(f"[{rep + 1}/{args.repeat}] ours on {n} tiles ...")
                t_ours, p_ours, detail = run_ours(slide, sub, model, args.batch, args.model_batch)
                log(f"[{rep + 1}/{args.repeat}] naive on {n} tiles ...")
                t_naive, p_naive = run_naive(slide, sub, model)
                detail["naive_cpu_ms_per_tile"] = run_naive.cpu_ms_per_tile
                diffs.append(float(np.abs(p_ours - p_naive).max()))
            else:
                t_ours = t_naive = math.nan
                detail = None
            # Where the time goes: reading alone (ours with a no-op model; naive reads only).
            r_ours, r_float, r_naive = run_reads(slide, sub, args.batch)
            runs["ours_s"].append(round(t_ours, 3))
            runs["naive_s"].append(round(t_naive, 3))
            runs["ours_detail"].append(detail)
            runs["read_tiles_per_s"].append(round(r_ours, 1))
            runs["read_float_tiles_per_s"].append(round(r_float, 1))
            runs["naive_reads_only_tiles_per_s"].append(round(r_naive, 1))
            log(f"  ours {n / t_ours:.1f} tiles/s, naive {n / t_naive:.1f}; reading {r_ours:.1f} vs naive reads "
                f"{r_naive:.1f} tiles/s (load {_load()})")
        med = lambda v: float(np.median(v))  # noqa: E731
        t_ours, t_naive = med(runs["ours_s"]), med(runs["naive_s"])
        result["ours_s"] = round(t_ours, 3)
        result["ours_detail"] = runs["ours_detail"][int(np.argsort(runs["ours_s"])[len(runs["ours_s"]) // 2])]
        result["naive_s"] = round(t_naive, 3)
        result["tiles_per_s"] = round(n / t_ours, 1)
        result["naive_tiles_per_s"] = round(n / t_naive, 1)
        result["speedup_vs_naive"] = round(t_naive / t_ours, 2)
        result["speedup_vs_naive_runs"] = [round(b / a, 2) for a, b in zip(runs["ours_s"], runs["naive_s"])]
        if model is None:
            for k in ("ours_s", "ours_detail", "naive_s", "tiles_per_s", "naive_tiles_per_s", "speedup_vs_naive",
                      "speedup_vs_naive_runs"):
                result[k] = None
            runs.pop("ours_s"), runs.pop("naive_s"), runs.pop("ours_detail")
        result["max_abs_prob_diff_vs_naive"] = max(diffs) if diffs else None
        result["read_tiles_per_s"] = round(med(runs["read_tiles_per_s"]), 1)
        result["read_float_tiles_per_s"] = round(med(runs["read_float_tiles_per_s"]), 1)
        result["naive_reads_only_tiles_per_s"] = round(med(runs["naive_reads_only_tiles_per_s"]), 1)
        result["read_speedup_vs_naive_reads"] = round(result["read_tiles_per_s"] / result["naive_reads_only_tiles_per_s"], 2)
        result["read_speedup_vs_naive_reads_runs"] = [
            round(a / b, 2) for a, b in zip(runs["read_tiles_per_s"], runs["naive_reads_only_tiles_per_s"])]
        result["runs"] = runs
        result["pan_fps"] = None
        result["pan_fps_note"] = "measured by the viewer's benchmark, not here"
        result["loadavg_1m_end"] = _load()
        slide.close()
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
