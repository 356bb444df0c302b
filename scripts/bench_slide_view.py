#!/usr/bin/env python
"""Slide view benchmark: time to first view and panning frame rate (Qt offscreen).

1. Builds a 50,000 x 50,000 px pyramid (tiled JPEG TIFF, 256 px tiles, 2x levels down to
   <= 512 px, MPP 0.25) in a temporary folder with ``bench_wsi.build_pyramid`` (the same
   slide the tiling benchmark uses: H&E texture on a grid of tissue cells, white glass
   elsewhere; identical tiles are encoded once, so the build takes seconds).
2. ``first_view_s``: :class:`imaging_assist_ui.slides.slide_view.SlideView` (1600 x 1000, offscreen),
   from ``open_slide()`` to the first paint in which every tile in view is drawn at the
   level that matches the fit-to-window zoom (no lower-resolution stand-ins).  The file was
   just written, so the OS page cache is warm.
3. ``pan_fps``: at a mid zoom (``--scale``, default 0.3 screen px per level-0 px: level 1
   tiles shown at 60 %), the view is panned ``--step`` px per frame for ``--frames``
   frames, right then back.  A frame = ``pan_by()`` (what a drag does: move, ``update()``),
   then the event loop runs until the view's paint has finished (tile deliveries are handled
   in the same loop); frames are counted only when their paint completed.
   * ``pan_fps`` / ``pan_fps_cached``: the path was visited once before (tiles decoded and in
     the view's LRU): what panning over an area already seen costs.
   * ``pan_fps_cold``: a fresh part of the slide with every cache emptied (the view's and
     the reader's): tiles are read and decoded on the worker threads while panning; frames
     never wait for them, so ``cold_complete_frames`` says how many frames had every tile in
     view at the right level (the others showed scaled-up coarser tiles for a moment), and
     ``cold_settle_s`` how long after the last frame the view was complete.

4. ``zoom_paint_ms_*``: the paint after each of 40 wheel-like zoom steps (x1.25 in, then out,
   50 ms apart), which re-samples the tiles to the new size (smooth within a 12 ms budget,
   fast beyond it and redone smoothly in the next frame).

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from bench_wsi import build_pyramid  # noqa: E402  (the same 50k pyramid as the tiling bench)
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")



def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- build
# --------------------------------------------------------------------------- measuring
def wait_until(app, cond, timeout=30.0) -> bool:
    end = time.perf_counter() + timeout
    while not cond():
        if time.perf_counter() > end:
            return False
        app.processEvents()
        time.sleep(0.0005)
    return True


def pan_run(app, view, frames: int, step: int) -> dict:
    """``frames`` pans of ``step`` px (half right, half back); per-frame timing."""
    times, complete, missing, paint_ms = [], 0, [], []
    t_all = time.perf_counter()
    for i in range(frames):
        d = -step if i < frames // 2 else step  # content moves left = view moves right
        t = time.perf_counter()
        n0 = view.paint_count
        view.pan_by(d, 0)          # what a mouse drag does: move + update()
        while view.paint_count == n0:  # the event loop paints; the frame ends when that paint has
            app.processEvents()        # finished (tile deliveries are handled in the same loop)
        times.append(time.perf_counter() - t)
        lp = view.last_paint
        paint_ms.append(lp["ms"])
        missing.append(lp["missing"])
        complete += lp["missing"] == 0
    total = time.perf_counter() - t_all
    return {"fps": round(frames / total, 1), "frame_ms_median": round(statistics.median(times) * 1000, 2),
            "frame_ms_p95": round(sorted(times)[int(0.95 * (len(times) - 1))] * 1000, 2),
            "frame_ms_max": round(max(times) * 1000, 2),
            "paint_ms_median": round(statistics.median(paint_ms), 2),
            "complete_frames": complete, "frames": frames,
            "mean_missing_tiles": round(float(np.mean(missing)), 2), "tiles_in_view": view.last_paint["tiles"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=50_000)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--step", type=int, default=40, help="pan per frame, screen px")
    ap.add_argument("--scale", type=float, default=0.3, help="screen px per level-0 px while panning")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    work = args.workdir or tempfile.mkdtemp(prefix="bench_slide_view_")
    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, f"slide_view_{args.size}.tif")
    result: dict = {"size": args.size, "viewport": [1600, 1000], "cpus": os.cpu_count(),
                    "qpa": os.environ.get("QT_QPA_PLATFORM")}
    try:
        if not os.path.exists(path):
            log(f"building {args.size}x{args.size} pyramid in {path} ...")
            result["build"] = build_pyramid(path, args.size, mpp=0.25, quality=80)
            log(f"  {result['build']}")

        import imaging_assist_ui  # noqa: F401
        from imaging_assist.slides import open_slide
        from imaging_assist_ui.app import make_app
        from imaging_assist_ui.slides.slide_view import SlideView

        app = make_app()
        view = SlideView(cache_mb=256)
        view.resize(1600, 1000)
        view.show()
        app.processEvents()

        # ---- first view
        t0 = time.perf_counter()
        slide = open_slide(path)
        t_open = time.perf_counter()
        view.set_slide(slide, t_open=t0)
        ok = wait_until(app, lambda: view.first_complete_at is not None)
        if not ok:
            raise SystemExit("first view never completed")
        result["first_view_s"] = round(view.first_complete_at - t0, 4)
        result["first_view_open_s"] = round(t_open - t0, 4)
        result["first_view_level"] = view.level
        result["first_view_tiles"] = view.last_paint["tiles"]
        result["first_view_paints"] = view.paint_count
        wait_until(app, lambda: view.thumb is not None)
        result["overview_s"] = round(time.perf_counter() - t0, 4)
        log(f"first view {result['first_view_s']} s (level {view.level}, {view.last_paint['tiles']} tiles)")

        # ---- cached pan: visit the path once, then measure it
        w0, h0 = slide.dimensions
        view.set_scale(args.scale)
        view.center_on(w0 * 0.3, h0 * 0.35)
        wait_until(app, view.is_complete)
        start = (view.ox, view.oy)
        for i in range(args.frames):  # warm-up pass: wait for every frame's tiles
            view.pan_by(-args.step if i < args.frames // 2 else args.step, 0)
            view.repaint()
            wait_until(app, view.is_complete, 10)
        view._set(view.scale, *start)
        view.repaint()
        wait_until(app, view.is_complete)
        cached = pan_run(app, view, args.frames, args.step)
        result["pan_level"] = view.level
        result["pan_scale"] = args.scale
        result["pan_step_px"] = args.step
        result["pan_fps"] = cached["fps"]
        result["pan_fps_cached"] = cached["fps"]
        result["pan_cached"] = cached
        log(f"cached pan {cached}")

        # ---- cold pan: another region, all caches empty
        view.cache.clear()
        view._scaled.clear()
        slide.clear_cache()
        view.center_on(w0 * 0.62, h0 * 0.68)
        view.repaint()
        fetched0, fs0 = view.loader.fetched, view.loader.fetch_s
        cold = pan_run(app, view, args.frames, args.step)
        t_end = time.perf_counter()
        wait_until(app, view.is_complete, 30)
        cold["settle_s"] = round(time.perf_counter() - t_end, 3)
        n_f = view.loader.fetched - fetched0
        cold["tiles_read"] = n_f
        cold["read_ms_per_tile"] = round((view.loader.fetch_s - fs0) / max(1, n_f) * 1000, 2)
        result["pan_fps_cold"] = cold["fps"]
        result["cold_complete_frames"] = f"{cold['complete_frames']}/{cold['frames']}"
        result["cold_settle_s"] = cold["settle_s"]
        result["pan_cold"] = cold
        log(f"cold pan {cold}")
        # ---- wheel zoom: 1.25x steps around a point, 20 in then 20 out, 50 ms apart (tiles
        # stream in between, as between wheel clicks); the paint after each step is timed
        zoom_ms = []
        view.center_on(w0 * 0.4, h0 * 0.4)
        view.fit()
        wait_until(app, view.is_complete)
        for i in range(40):
            n0 = view.paint_count
            view.zoom_by(1.25 if i < 20 else 0.8, (800, 500))
            while view.paint_count == n0:
                app.processEvents()
            zoom_ms.append(view.last_paint["ms"])
            t_w = time.perf_counter()
            while time.perf_counter() - t_w < 0.05:
                app.processEvents()
        result["zoom_paint_ms_median"] = round(statistics.median(zoom_ms), 1)
        result["zoom_paint_ms_p95"] = round(sorted(zoom_ms)[int(0.95 * 39)], 1)
        log(f"zoom paints: median {result['zoom_paint_ms_median']} ms, p95 {result['zoom_paint_ms_p95']} ms")
        result["targets"] = {"pan_fps>=60": result["pan_fps"] >= 60, "first_view_s<0.5": result["first_view_s"] < 0.5}
        view.close_slide()
        slide.close()
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
