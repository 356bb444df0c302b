#!/usr/bin/env python
"""Benchmark of PACS retrieval: a local Orthanc (Debian orthanc + orthanc-dicomweb, started by
imaging_assist.pacs.testing, the same start-up the tests use) holds the 140-slice CT phantom
(../shared/data/dicom/ct_head_phantom_philips, 71 MB); the same study is then retrieved by our
C-GET, our C-MOVE (to our own Storage SCP), our WADO-RS, and DCMTK's ``getscu``, each into a
fresh folder, in rounds that alternate the order; the median of the rounds is reported.

Last line: one JSON object with cget_s, cmove_s, wado_s, dcmtk_getscu_s (medians, seconds),
ratio_vs_dcmtk (our best DIMSE / getscu; target <= 1.2), first_instance_s (our C-GET: the first
instance written and announced by the on_instance callback, the moment the viewer can show it)
and first_instance_fraction (first_instance_s / cget_s: < 1 means the first image is there
before the whole series), the rounds' raw times, n_instances, mb, load_avg_1min, cpu_count.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("IMAGING_ASSIST_SHARED", ROOT.parent / "shared" / "data"))
CT = SHARED / "dicom" / "ct_head_phantom_philips" / "series202_STD_BRAIN_1MM_iDose"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    files = sorted(CT.glob("*.dcm"))
    if len(files) != 140:
        print(f"expected 140 CT slices in {CT}, found {len(files)}", file=sys.stderr)
        return 2
    getscu = shutil.which("getscu")
    if getscu is None:
        print("getscu (Debian dcmtk) is missing", file=sys.stderr)
        return 2
    import pydicom

    from imaging_assist.pacs import api
    from imaging_assist.pacs.testing import Orthanc
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    mb = sum(f.stat().st_size for f in files) / 1e6
    work = Path(tempfile.mkdtemp(prefix="bench-pacs-"))
    times: dict[str, list[float]] = {"cget": [], "cmove": [], "wado": [], "dcmtk_getscu": []}
    firsts: list[float] = []
    try:
        with Orthanc(workdir=str(work / "orthanc")) as o:
            t = time.perf_counter()
            o.upload(files)
            print(f"stored {len(files)} instances ({mb:.1f} MB) in Orthanc in "
                  f"{time.perf_counter() - t:.1f} s", file=sys.stderr)
            dimse, web, s = o.dimse_node(), o.web_node(), o.settings()

            def ours(method, node):
                def run(out):
                    first = []
                    res = api.get(node, study, out, method=method, settings=s,
                                  on_instance=lambda p, _s: first or first.append(time.perf_counter()))
                    assert res.written == 140 and not res.failures, res.to_dict()
                    return res, first[0]
                return run

            def dcmtk(out):
                out.mkdir(parents=True)
                r = subprocess.run([getscu, "-S", "-aet", "DCMTK", "-aec", o.aet,
                                    "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                                    "-od", str(out), "127.0.0.1", str(o.dicom_port)],
                                   capture_output=True, text=True, timeout=600)
                n = len(list(out.iterdir()))
                assert r.returncode == 0 and n == 140, (r.returncode, n, r.stderr[-500:])
                return None, None

            runners = {"cget": ours("get", dimse), "cmove": ours("move", dimse),
                       "wado": ours("wado", web), "dcmtk_getscu": dcmtk}
            order = list(runners)
            for rnd in range(a.rounds):
                for name in (order if rnd % 2 == 0 else order[::-1]):
                    out = work / f"{name}-{rnd}"
                    t0 = time.perf_counter()
                    res, first = runners[name](out)
                    dt = time.perf_counter() - t0
                    times[name].append(round(dt, 3))
                    if name == "cget":
                        firsts.append(round(first - t0, 3))
                    shutil.rmtree(out, ignore_errors=True)
                    print(f"round {rnd + 1} {name}: {dt:.2f} s", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: round(statistics.median(v), 3) for k, v in times.items()}
    best = min(med["cget"], med["cmove"])
    first = statistics.median(firsts)
    out = {"cget_s": med["cget"], "cmove_s": med["cmove"], "wado_s": med["wado"],
           "dcmtk_getscu_s": med["dcmtk_getscu"],
           "ratio_vs_dcmtk": round(best / med["dcmtk_getscu"], 3),
           "first_instance_s": round(first, 3),
           "first_instance_fraction": round(first / med["cget"], 3),
           "rounds": times, "n_instances": 140, "mb": round(mb, 1),
           "load_avg_1min": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count()}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
