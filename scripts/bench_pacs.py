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
With the GUI (default; ``--no-gui`` skips it): the main window (Qt offscreen) retrieves the study
from its PACS window; gui_first_on_screen_s is when the viewer holds the first slice of the
retrieved series, gui_transfer_s when the transfer has ended (first < transfer: the first image
is on screen before the whole series has arrived).
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
    ap.add_argument("--no-gui", action="store_true", help="skip the first-image-on-screen run")
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
            gui = {} if a.no_gui else gui_first_on_screen(o, work)
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
           **gui, "rounds": times, "n_instances": 140, "mb": round(mb, 1),
           "load_avg_1min": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count()}
    print(json.dumps(out))
    return 0


def gui_first_on_screen(o, work: Path) -> dict:
    """The main window retrieves the study from its PACS window (Qt offscreen)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    cfg = work / "gui-config"
    cfg.mkdir()
    os.environ["IMAGING_ASSIST_CONFIG_DIR"] = str(cfg)
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from imaging_assist.pacs.nodes import save_settings
    from imaging_assist_ui.app import make_app
    from imaging_assist_ui.main_window import MainWindow
    s = o.settings()
    s.nodes = {"orthanc": o.dimse_node("orthanc")}
    save_settings(s)
    make_app()

    def pump(cond, timeout):
        end = time.perf_counter() + timeout
        while not cond() and time.perf_counter() < end:
            QApplication.processEvents()
            time.sleep(0.001)
        return cond()

    mw = MainWindow(settings=QSettings(str(work / "gui.ini"), QSettings.IniFormat))
    mw.resize(1400, 900)
    mw.show()
    mw.a_pacs.trigger()
    pw = mw._pacs_window
    pw.out_dir = str(work / "gui-retrieved")
    pw.node_box.setCurrentIndex(pw.node_box.findData("orthanc"))
    pw.b_search.click()
    assert pump(lambda: pw.tree.topLevelItemCount() == 1, 60), pw.status.text()
    pw.tree.topLevelItem(0).setSelected(True)
    t0 = time.perf_counter()
    pw.b_retrieve.click()
    first = end = None
    while time.perf_counter() - t0 < 300:
        QApplication.processEvents()
        now = time.perf_counter()
        if first is None and mw.doc.volume is not None:
            first = now - t0
        if end is None and pw.transfer is None:
            end = now - t0
        if first is not None and end is not None:
            break
        time.sleep(0.001)
    assert first is not None and end is not None, (pw.status.text(), mw.last_error)
    pw.close()
    mw.close()
    return {"gui_first_on_screen_s": round(first, 3), "gui_transfer_s": round(end, 3)}


if __name__ == "__main__":
    sys.exit(main())
