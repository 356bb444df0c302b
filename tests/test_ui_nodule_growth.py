"""Nodule growth in the viewer: the reader analyses the nodule of the LIDC-IDRI-0001 slab in a
prior study (the slab copied with StudyDate 1999-07-01 and new UIDs) and in the current one,
then links them with "Compare with prior…": the entry, the report's run item and the status
line give the volume change and interval; a nodule with no older study says so in one line."""

from __future__ import annotations

import numpy as np
import pytest

from _qt import open_window, wait_until
from conftest import SHARED, dated_copy, need

SLAB = SHARED / "ct" / "lidc_idri_0001_slab"
CENTRE = (56.21, 86.34, -115.87)  # the nodule (labels.csv, LPS mm)


@pytest.fixture(scope="module")
def win(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_studies")
    (root / "current").mkdir()
    for f in sorted(need(SLAB).glob("*.dcm")):
        (root / "current" / f.name).symlink_to(f)
    series = dated_copy(SLAB, root / "prior", "19990701")
    w = open_window(tmp_path_factory, str(root), size=(1600, 1000))
    w.prior_uid = series
    yield w
    w.close()


def _show(w, uid):
    s = next(x for x in w.loading.index.image_series() if x.uid == uid)
    if w.doc.series is None or w.doc.series.uid != uid:
        w.load_series(s.key)
    assert wait_until(lambda: w.load_state == "done" and w.doc.series is not None and w.doc.series.uid == uid
                      and w.doc.volume.loaded.all(), 60), w.last_error


def _analyse(w):
    n0 = len(w.nodules.history)
    assert w.nodules.analyse_at(CENTRE)
    assert wait_until(lambda: not w.nodules.busy, 120)
    assert len(w.nodules.history) == n0 + 1, w.nodules.last_line
    return w.nodules.history[-1]


def test_compare_with_prior_gives_the_growth_in_the_entry_and_the_report(win):
    _show(win, win.prior_uid)
    prior = _analyse(win)
    assert prior.facts["study_date"] == "1999-07-01" and prior.facts["patient_id"] == "LIDC-IDRI-0001"
    # the prior has nothing older: one line, no menu
    win.nodules._select(prior)
    win.nodules.compare_menu()
    assert "no prior to compare with" in win.nodules.last_line and "older study" in win.nodules.last_line
    current_uid = next(x.uid for x in win.loading.index.image_series() if x.uid != win.prior_uid)
    _show(win, current_uid)
    cur = _analyse(win)
    assert cur.facts["study_date"] == "2000-01-01" and cur.facts["slice_thickness_mm"] == 2.5
    assert win.nodules.priors_of(cur) == [prior]
    win.nodules._select(cur)
    assert win.nodules.panel.compare_btn.isEnabled()
    win.nodules.compare_menu()
    acts = win.nodules._menu.actions()
    assert len(acts) == 1 and acts[0].text().startswith("N1 · 1999-07-01 · ")
    acts[0].trigger()
    want = ("vs N1 of 1999-07-01: no verdict, no VDT: +0% in 184 days (prior size a lower bound; current size a "
            "lower bound), mean diameter +0.0 mm")
    assert want in win.nodules.entry_lines()
    assert cur.result.growth["interval_days"] == 184 and cur.result.growth["verdict"] == "withheld"
    assert np.isclose(cur.result.growth["prior"]["volume_mm3"], prior.result.volume_mm3, atol=0.01)
    assert cur.result.growth["prior"]["series_uid"] == win.prior_uid
    assert win.nodules.last_line.startswith("N1 vs N1 of 1999-07-01: no verdict")
    # the report and the DICOM export read the session's run of this series
    from imaging_assist_ui.ai.session_runs import session_runs
    from imaging_assist.nodules.analysis import MALIGNANCY_MODEL
    from imaging_assist_ui.radiology.nodule_results import series_key

    run = session_runs(win).runs[(series_key(win.doc.volume), MALIGNANCY_MODEL)]
    (nd,) = [x for x in run.item["nodules"] if x.get("found")]
    assert nd["growth"]["text"].startswith("no verdict, no VDT: +0% in 184 days")
    from imaging_assist.export.report_pdf import _nodule_rows
    assert _nodule_rows(run.item)[0]["growth"].startswith("vs N1 of 1999-07-01 (")
    # analysing the current nodule again keeps the link, with the new numbers
    again = _analyse(win)
    assert again.linked_prior is prior and again.result.growth["verdict"] == "withheld"
    assert want in win.nodules.entry_lines()


def test_the_pdf_report_says_the_growth(win, tmp_path):
    import subprocess

    cur = win.nodules.nodules()[0]
    assert cur.result.growth, "run after the comparison test (module order)"
    out = win.report_exporter.export(str(tmp_path / "r.pdf"), open_after=False)
    text = subprocess.run(["pdftotext", "-layout", str(out), "-"], capture_output=True, text=True,
                          check=True).stdout
    flat = " ".join(text.split())
    assert "Growth of N1 vs N1 of 1999-07-01 (" in flat and "no verdict, no VDT: +0% in 184 days" in flat
    assert "volume doubling time = interval x ln 2" in flat
    # de-identified (File > Export report (de-identified)): no date of either study, the interval stays
    rep = win.report_exporter.build(deidentify=True)
    rows = [r for st in rep["studies"] for e in st["items"] for r in e.get("nodules") or []]
    assert rows and rows[0]["growth"].startswith("vs N1 of the prior study (") and "184 days" in rows[0]["growth"]
    assert "1999" not in rows[0]["growth"] and "2000" not in rows[0]["growth"]


def test_the_dicom_sr_carries_the_growth(win, tmp_path):
    """File > Export results as DICOM: the linked nodule's measurement group has the growth."""
    import pydicom

    from test_cli_nodule_growth import _sr_content
    from test_export_dicom import dciodvfy_errors

    cur = win.nodules.nodules()[0]
    assert cur.result.growth, "run after the comparison test (module order)"
    written = win.dicom_exporter.export(str(tmp_path / "dicom"), confirm=False)
    assert written, win.dicom_exporter.last_error
    (sr,) = [w.path for w in written if w.kind == "SR"]
    assert dciodvfy_errors(sr) == []
    c = _sr_content(pydicom.dcmread(sr))
    assert c["Interval since the prior study"] == (184.0, "d")
    assert c["Volume change since the prior study"] == (0.0, "%")
    assert "Growth since the prior study (+-25% volumetry variability)" not in c
    assert "Volume doubling time" not in c  # stable: no VDT
