#!/usr/bin/env python3
"""Benchmark: index + load the 140-slice CT phantom, against SimpleITK (GDCM) in the same run.

Prints a few human lines, then one JSON object as the last line:
  ours_s              path -> volume: header index + pixel load (median of --repeat runs)
  index_s / load_s    the two parts of ours_s
  simpleitk_s         SimpleITK ImageSeriesReader: GetGDCMSeriesFileNames + Execute (median)
  ratio_vs_simpleitk  ours_s / simpleitk_s (target <= 0.4)
  first_slice_s       from "load this indexed series" to its middle slice in memory (what the
                      viewer waits for after the study browser has indexed the folder)
  first_slice_cold_s  the same from nothing: index + first slice
  peak_rss_mb         peak RSS of a fresh process that imports the engine and loads the series
  volume_mb           the volume's bytes
  compressed          the same series re-encoded to JPEG 2000 lossless (made in a temp folder):
                      our load with 1 worker and with the pool, and SimpleITK
  header_walk_s       the hand-written header walk (dicom/header.py read_record) over every file
                      of the series, one thread (median)
  pydicom_header_s    pydicom.dcmread(stop_before_pixels=True, specific_tags=<the index's tags>)
                      over the same files (median)
  header_walk_variety_s / pydicom_header_variety_s   the same for the 9-syntax variety folder
  header_walk_gain    (pydicom_header_s - header_walk_s) / index_s: the share of the scan time
                      the hand walk saves; it is kept while this is >= 0.25 (issue 12)
Files are in the page cache for every contender (a warm-up read precedes the timings).
Usage: scripts/bench_load.py [SERIES_DIR] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(ROOT, "..", "shared", "data", "dicom", "ct_head_phantom_philips",
                       "series202_STD_BRAIN_1MM_iDose")


def time_ours(path: str, workers: int | None = None):
    from imaging_assist.dicom import SeriesLoader, scan
    t0 = time.perf_counter()
    index = scan(path)
    t1 = time.perf_counter()
    loader = SeriesLoader(index.image_series()[0], workers=workers)
    vol = loader.run()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, loader.first_slice_s, vol


VARIETY = os.path.join(ROOT, "..", "shared", "data", "variety", "dcm_qa_ts_same_image_9_syntaxes")


def time_headers(folder: str, repeat: int) -> tuple[float, float, int]:
    """Median seconds for the hand walk and for pydicom over every file below folder."""
    import pydicom

    from imaging_assist.dicom.header import KEYWORDS, HeaderError, read_record
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs
                   if not f.startswith(".") and not f.upper().startswith("LICENSE"))
    tags = [k for k in KEYWORDS if k not in ("MediaStorageSOPClassUID", "TransferSyntaxUID")]

    def walk():
        for f in files:
            try:
                read_record(f)
            except HeaderError:
                pass

    def pyd():
        for f in files:
            try:
                pydicom.dcmread(f, stop_before_pixels=True, specific_tags=tags, force=True)
            except Exception:
                pass

    out = []
    for fn in (walk, pyd):
        fn()  # warm-up
        ts = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        out.append(statistics.median(ts))
    return out[0], out[1], len(files)


def time_sitk(path: str):
    import SimpleITK as sitk
    t0 = time.perf_counter()
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(path))
    img = r.Execute()
    return time.perf_counter() - t0, img


# VmHWM (peak resident set) of the child itself: ru_maxrss would include the parent's
# peak inherited through fork on Linux.
RSS_CHILD = r"""
import sys, json
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
from imaging_assist.dicom import scan, load_series
base = hwm()
vol = load_series(scan(sys.argv[1]).image_series()[0])
print(json.dumps({"base_mb": base, "peak_mb": hwm(), "volume_mb": vol.array.nbytes / 1024**2}))
"""


def make_j2k_copy(src: str, dst: str) -> None:
    import glob

    import pydicom
    from pydicom.uid import JPEG2000Lossless
    for f in sorted(glob.glob(os.path.join(src, "*.dcm"))):
        ds = pydicom.dcmread(f)
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
        ds.save_as(os.path.join(dst, os.path.basename(f)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("series", nargs="?", default=DEFAULT)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--no-compressed", action="store_true")
    args = ap.parse_args()
    path = os.path.abspath(args.series)
    import numpy as np

    # warm-up: page cache and imports for both
    _, _, _, vol = time_ours(path)
    _, img = time_sitk(path)
    import SimpleITK as sitk
    same = bool(np.array_equal(vol.array.astype(np.int32), sitk.GetArrayViewFromImage(img).astype(np.int32)))

    idx_t, load_t, first_t, sitk_t = [], [], [], []
    for _ in range(args.repeat):  # interleaved so both see the same machine state
        a, b, f, _ = time_ours(path)
        idx_t.append(a)
        load_t.append(b)
        first_t.append(f)
        sitk_t.append(time_sitk(path)[0])
    ours = [a + b for a, b in zip(idx_t, load_t)]
    med = statistics.median
    child = subprocess.run([sys.executable, "-c", RSS_CHILD, path], capture_output=True, text=True, check=True)
    rss = json.loads(child.stdout.strip().splitlines()[-1])

    result = {
        "series": path,
        "slices": int(vol.n_slices),
        "ours_s": round(med(ours), 4),
        "index_s": round(med(idx_t), 4),
        "load_s": round(med(load_t), 4),
        "simpleitk_s": round(med(sitk_t), 4),
        "ratio_vs_simpleitk": round(med(ours) / med(sitk_t), 3),
        "first_slice_s": round(med(first_t), 4),
        "first_slice_cold_s": round(med(idx_t) + med(first_t), 4),
        "peak_rss_mb": round(rss["peak_mb"], 1),
        "baseline_rss_mb": round(rss["base_mb"], 1),
        "volume_mb": round(rss["volume_mb"], 1),
        "pixels_identical_to_simpleitk": same,
        "repeat": args.repeat,
        "cpu_count": os.cpu_count(),
    }
    walk_s, pyd_s, n = time_headers(path, args.repeat)
    result["header_walk_s"] = round(walk_s, 4)
    result["pydicom_header_s"] = round(pyd_s, 4)
    result["header_walk_gain"] = round((pyd_s - walk_s) / med(idx_t), 2)
    if os.path.isdir(VARIETY):
        walk_v, pyd_v, nv = time_headers(VARIETY, args.repeat)
        result["header_walk_variety_s"] = round(walk_v, 4)
        result["pydicom_header_variety_s"] = round(pyd_v, 4)
        result["variety_files"] = nv
    print(f"headers of {n} files: hand walk {walk_s * 1000:.1f} ms, pydicom {pyd_s * 1000:.1f} ms "
          f"(the walk saves {result['header_walk_gain']:.0%} of the scan time {med(idx_t) * 1000:.1f} ms)")
    if not args.no_compressed:
        with tempfile.TemporaryDirectory() as tmp:
            make_j2k_copy(path, tmp)
            time_ours(tmp)
            time_sitk(tmp)
            one, pool, sk = [], [], []
            for _ in range(max(3, args.repeat // 2)):
                a, b, _, _ = time_ours(tmp, workers=1)
                one.append(a + b)
                a, b, _, cvol = time_ours(tmp)
                pool.append(a + b)
                sk.append(time_sitk(tmp)[0])
            result["compressed"] = {
                "transfer_syntax": "JPEG 2000 Lossless",
                "ours_1_worker_s": round(med(one), 4),
                "ours_pool_s": round(med(pool), 4),
                "simpleitk_s": round(med(sk), 4),
                "identical_to_uncompressed": bool(np.array_equal(cvol.array, vol.array)),
            }
    print(f"ours {result['ours_s']:.3f} s (index {result['index_s']:.3f} + load {result['load_s']:.3f}), "
          f"SimpleITK {result['simpleitk_s']:.3f} s, ratio {result['ratio_vs_simpleitk']:.2f}; "
          f"first slice {result['first_slice_s'] * 1000:.1f} ms; peak RSS {result['peak_rss_mb']} MB "
          f"for a {result['volume_mb']} MB volume")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
