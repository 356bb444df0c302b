#!/usr/bin/env python
"""Viewer performance: scrolling frame rate and time to the first image.

* ``scroll_fps``: the 140-slice CT (512x512) is shown in the real main window (1920x1080,
  Qt offscreen platform unless DISPLAY is set) with a label overlay and a heat map on;
  every slice is set and the slice view is repainted synchronously (``repaint()``: numpy
  windowing + overlay colouring + QPainter scaling/blending + annotations), twice through
  the stack.  The first pass sees every slice for the first time (no cache can help);
  ``scroll_fps`` is that pass, ``scroll_fps_second_pass`` the next one; ``mip_10mm_scroll_fps``
  the same scroll shown as a 10 mm MIP (every frame projects 11 slices).
* ``first_image_s``: wall time from starting ``imaging-assist view PATH`` (a new Python
  process: interpreter start, imports, window, header scan, first slice) to the first
  slice painted in the window; the median of ``--runs`` new processes (after one warm-up
  run, so the OS file cache and Python bytecode are warm, as on a user's machine).
  ``first_image_gui_s`` is the same through ``imaging_assist_ui.app.run_gui`` alone,
  without whatever the CLI module imports before it hands over.
* ``grid_scroll_fps``: the 2x2 layout with a prior and linked scrolling (see ``grid_bench``).
  ``--scroll-only`` skips the first-image runs.  ``load_avg_1min`` (before, after) says how
  busy the machine was.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / "shared" / "data" / "dicom" / "ct_head_phantom_philips" / "series202_STD_BRAIN_1MM_iDose"


ENTRIES = {
    # what a user runs: the project CLI
    "cli": lambda path: [sys.executable, "-m", "imaging_assist_ui", "view", path],
    # the viewer alone (imaging_assist_ui.app.run_gui), without the CLI's own imports
    "gui": lambda path: [sys.executable, "-c",
                         "import sys; from imaging_assist_ui.app import run_gui; sys.exit(run_gui(sys.argv[1]))",
                         path],
}


def first_image_runs(path: str, runs: int, entry: str = "cli") -> list[float]:
    env = dict(os.environ)
    env["IMAGING_ASSIST_EXIT_AFTER_FIRST_IMAGE"] = "1"
    env.setdefault("QT_QPA_PLATFORM", "offscreen" if not env.get("DISPLAY") else "xcb")
    env["IMAGING_ASSIST_SETTINGS"] = str(Path("/tmp") / "imaging_assist_bench_settings.ini")
    # An installed app has its bytecode compiled; let this one cache it too (one warm-up run).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    cmd = ENTRIES[entry](path)
    subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    out = []
    for _ in range(runs):
        t0 = time.time()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("first_image_at")), None)
        if line is None:
            raise SystemExit(f"no first image reported (rc {p.returncode}):\n{p.stdout}\n{p.stderr}")
        out.append(float(line.split()[1]) - t0)
    return out


def scroll_bench(path: str, passes: int = 2) -> dict:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen" if not os.environ.get("DISPLAY") else "xcb")
    import numpy as np
    from PySide6.QtCore import QEventLoop, QSettings, QTimer

    from imaging_assist.layers import HeatmapLayer, LabelLayer
    from imaging_assist_ui.app import make_app
    from imaging_assist_ui.main_window import MainWindow

    app = make_app()
    win = MainWindow(settings=QSettings("/tmp/imaging_assist_bench_settings.ini", QSettings.IniFormat))
    win.resize(1920, 1080)
    win.show()
    loop = QEventLoop()
    win.loadFinished.connect(lambda ok: loop.quit())
    QTimer.singleShot(60000, loop.quit)
    t0 = time.perf_counter()
    win.open_path(path)
    loop.exec()
    load_s = time.perf_counter() - t0
    vol = win.doc.volume
    if vol is None or not vol.loaded.all():
        raise SystemExit(f"could not load {path}: {win.last_error}")
    a = vol.array
    labels = np.zeros(a.shape, np.uint8)
    labels[(a > 60) & (a < 150)] = 1
    labels[a > 500] = 2
    win.add_layer(LabelLayer("labels", labels, names={1: "soft", 2: "dense"}, opacity=0.4))
    k, j, i = np.ogrid[:a.shape[0], :a.shape[1], :a.shape[2]]
    heat = np.exp(-(((j - 256) / 90.0) ** 2 + ((i - 256) / 90.0) ** 2 + ((k - 70) / 50.0) ** 2)).astype(np.float32)
    win.add_layer(HeatmapLayer("heat", heat, opacity=0.4, threshold=0.1))
    win.set_layout("single")
    view = win.view_area.single
    for _ in range(3):
        app.processEvents()
    n = vol.n_slices
    results = {}
    for p in range(passes):
        t = time.perf_counter()
        for kk in range(n):
            win.doc.set_index(0, kk)
            view.repaint()
        dt = time.perf_counter() - t
        results[p] = n / dt
    # the same scroll as a 10 mm MIP (11 slices of 1 mm projected for every frame)
    from imaging_assist.slab import Slab
    view.set_slab(Slab("mip", 10.0))
    t = time.perf_counter()
    for kk in range(n):
        win.doc.set_index(0, kk)
        view.repaint()
    mip_fps = n / (time.perf_counter() - t)
    view.set_slab(None)
    # MPR: scroll the axial view with the coronal/sagittal views and crosshair linked
    win.set_layout("mpr")
    for _ in range(3):
        app.processEvents()
    t = time.perf_counter()
    for kk in range(n):
        win.doc.set_index(0, kk)
        for v in win.view_area.views():
            v.repaint()
    mpr_fps = n / (time.perf_counter() - t)
    grid = grid_bench(win, app, vol)
    return {**grid, "scroll_fps": round(results[0], 1),
            "scroll_fps_second_pass": round(results.get(1, results[0]), 1),
            "mpr_scroll_fps": round(mpr_fps, 1), "mip_10mm_scroll_fps": round(mip_fps, 1),
            "view_px": [view.width(), view.height()],
            "zoom": round(view.zoom_factor(), 2),
            "slices": n, "shape": list(a.shape), "load_s": round(load_s, 3),
            "platform": os.environ.get("QT_QPA_PLATFORM")}


def _sagittal(vol):
    """The volume resampled (transposed) into sagittal slices in the same patient space (an
    identity-oriented axial stack, as the phantom is): a non-parallel viewport, so reference
    lines are drawn while scrolling."""
    import numpy as np

    from imaging_assist.volume import Volume
    a = vol.array
    nk, nj, ni = a.shape
    sag = np.ascontiguousarray(a[::-1, :, ::-1].transpose(2, 0, 1))
    dx, dy, dz = vol.spacing
    out = Volume(sag, spacing=(dy, dz, dx), origin=tuple(vol.index_to_lps(ni - 1, 0, nk - 1)),
                 direction=np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float), modality=vol.modality,
                 units=vol.units, description="sagittal (resampled)")
    out.slice_positions = np.array([float(np.asarray(out.origin) @ out.normal) + s * dx for s in range(ni)])
    out.headers = [vol.headers[0]] * ni  # same FrameOfReferenceUID
    return out


def _subset(vol, start, step, desc):
    """A 'prior': every step-th slice from start (other spacing and offset, same frame of reference)."""
    import numpy as np

    from imaging_assist.volume import Volume
    sl = slice(start, None, step)
    out = Volume(np.ascontiguousarray(vol.array[sl]), spacing=(vol.spacing[0], vol.spacing[1], vol.spacing[2] * step),
                 origin=tuple(vol.index_to_lps(0, 0, start)), direction=vol.direction, modality=vol.modality,
                 units=vol.units, description=desc, window_presets=list(vol.window_presets))
    out.slice_positions = np.asarray(vol.slice_positions)[sl].copy()
    out.headers = list(vol.headers[sl])
    return out


def grid_bench(win, app, vol) -> dict:
    """``grid_scroll_fps``: the 2x2 layout - the current CT with its overlays (label map and heat
    map), a prior (every 3rd slice, 2 mm offset), the same CT every 2nd slice, and a sagittal
    reformat - scrolled through the current series; every step moves the linked viewports to
    the same mm (viewing.linked_index), draws the reference line in the sagittal viewport and
    repaints the grid synchronously (each view once, as one frame of the event loop would)."""
    win.set_layout("2x2")
    g = win.view_area.grid
    for _ in range(3):
        app.processEvents()
    for job in list(win.reading._jobs.values()):  # no auto-filled series from the folder: ours below
        job.cancel()
    win.reading._jobs.clear()
    g.cells[1].doc.set_volume(_subset(vol, 2, 3, "prior (every 3rd slice)"))
    g.cells[2].doc.set_volume(_subset(vol, 1, 2, "every 2nd slice"))
    g.cells[3].doc.set_volume(_sagittal(vol))
    g._on_activated(g.cells[0].view)
    for _ in range(3):
        app.processEvents()
    n = vol.n_slices
    views = g.views()
    lines = 0
    t = time.perf_counter()
    for kk in range(n):
        win.doc.set_index(0, kk)
        g.repaint()  # one synchronous paint of the grid: each of the four views painted once
        lines += len(g.reference_segments(views[3]))
    fps = n / (time.perf_counter() - t)
    return {"grid_scroll_fps": round(fps, 1), "grid_view_px": [views[0].width(), views[0].height()],
            "grid_reference_lines_drawn": lines,
            "grid_prior_slice": g.cells[1].doc.position[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", nargs="?", default=str(DEFAULT))
    ap.add_argument("--runs", type=int, default=5, help="new processes for first_image_s")
    ap.add_argument("--scroll-only", action="store_true",
                    help="skip the first-image runs (scrolling and grid_scroll_fps only)")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    if args.scroll_only:
        res = scroll_bench(args.path)
        print(f"grid 2x2 with a prior: {res['grid_scroll_fps']} fps, view {res['grid_view_px']} px; "
              f"10 mm MIP {res['mip_10mm_scroll_fps']} fps", flush=True)
        print(json.dumps({**res, "load_avg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
                          "cpus": os.cpu_count(), "path": args.path,
                          "targets": {"scroll_fps": 60, "grid_scroll_fps": 60}}))
        return 0
    runs = first_image_runs(args.path, args.runs, "cli")
    print(f"first image via `imaging-assist view` (s), {len(runs)} processes: "
          f"{', '.join(f'{r:.3f}' for r in runs)}", flush=True)
    gui_runs = first_image_runs(args.path, args.runs, "gui")
    print(f"first image via run_gui (s), {len(gui_runs)} processes: "
          f"{', '.join(f'{r:.3f}' for r in gui_runs)}", flush=True)
    res = scroll_bench(args.path)
    print(f"scroll: {res['scroll_fps']} fps first pass, {res['scroll_fps_second_pass']} fps second pass, "
          f"MPR {res['mpr_scroll_fps']} fps, view {res['view_px']} px at {res['zoom']}x", flush=True)
    out = {"scroll_fps": res["scroll_fps"], "first_image_s": round(statistics.median(runs), 3),
           "first_image_runs_s": [round(r, 3) for r in runs],
           "first_image_gui_s": round(statistics.median(gui_runs), 3),
           "first_image_gui_runs_s": [round(r, 3) for r in gui_runs],
           **{k: v for k, v in res.items() if k != "scroll_fps"},
           "load_avg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)], "cpus": os.cpu_count(),
           "path": args.path, "targets": {"scroll_fps": 60, "first_image_s": 1.0, "grid_scroll_fps": 60}}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
