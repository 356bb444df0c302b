"""The AI panel's results stay with the images they were made on (pytest-qt offscreen, one window):

1. the two parts of one SeriesInstanceUID that the index split ("uid:1", "uid:2": another pixel
   size) keep their own overlays, AI findings and DICOM objects (series_results / session_runs
   keyed by the index's series key and stack, not the UID alone);
2. the reader-feedback box follows the shown series: no verdict on the previous film's run while
   another film is shown (its Ctrl+Shift+A/D/U work window-wide), the restored run's findings
   when the reader returns;
3. a re-run of a model keeps another model's segmentation that was merged into its layer (one
   layer per structure) and takes only its own part away;
4. weights corrupted after the start-up check: the run fails and the "✓ verified" goes too;
5. a research-override run records what ``analyze --research-override`` records (the note and
   the warning line, from the engine's own trust checks).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from _qt import open_window, wait_until  # noqa: E402
from conftest import ROOT  # noqa: E402
from test_ui_model_panel import DEMO, run_and_wait  # noqa: E402

pytestmark = pytest.mark.gui

CXR = ROOT / "imaging_assist" / "data" / "demo" / "chest_xray"


from test_ui_model_panel import models  # noqa: E402,F401 - the test models, added as a user would


@pytest.fixture(scope="module")
def split_study(tmp_path_factory):
    """The demo CT with another pixel size from slice 15 on: the index splits its one
    SeriesInstanceUID into two parts of 14 slices each (keys uid:1 and uid:2)."""
    import pydicom

    study = tmp_path_factory.mktemp("split") / "ct"
    study.mkdir()
    for n, f in enumerate(sorted(DEMO.glob("*.dcm"))):
        ds = pydicom.dcmread(f)
        if n >= 14:
            ds.PixelSpacing = [float(v) * 1.25 for v in ds.PixelSpacing]
        ds.save_as(study / f.name)
    return study


@pytest.fixture(scope="module")
def win(qapp, tmp_path_factory, models, split_study):
    w = open_window(tmp_path_factory, str(split_study))
    w.opened = str(split_study)
    w.show_model_panel()
    p = w.model_panel
    # generous: the suite runs on two workers, and this window waits for every model's checksum
    assert wait_until(lambda: p._catalog_loaded, 180)
    assert wait_until(lambda: all(p.verify_state.get(str(e.folder)) for e in p.entries
                                  if e.card is not None and not e.shadowed_by), 180)
    yield w
    w.close()


def _show(w, key):
    w.load_series(key)
    assert wait_until(lambda: w.load_state == "done" and w.loading.current_key == key
                      and w.model_panel._volume_ready(), 60), w.last_error


def _open(w, path):
    if getattr(w, "opened", None) != str(path):
        w.open_path(str(path))
        assert wait_until(lambda: w.load_state == "done", 60), w.last_error
        w.opened = str(path)


def _key_of(w, file_name):
    return next(s.key for s in w.loading.index.image_series()
                if any(Path(r.display_path).name == file_name for r in s.instances))


def _run(p, model, method=None, override=False):
    assert p.select_model(model), [e.id for e in p.entries]
    p.set_method(method)
    p.override.setChecked(override)
    try:
        assert run_and_wait(p, 180) == "done", p.error_text()
    finally:
        p.override.setChecked(False)


# ============================================================================== 1. split series
def test_parts_of_a_split_series_keep_their_own_results(win, split_study):
    from imaging_assist_ui.ai.session_runs import series_key as log_key, session_runs
    from imaging_assist_ui.radiology.series_results import series_key

    p = win.model_panel
    _open(win, split_study)
    keys = sorted(s.key for s in win.loading.index.image_series())
    assert len(keys) == 2 and all(":" in k for k in keys), keys
    one, two = keys
    _show(win, one)
    vol1 = win.doc.volume
    _run(p, "demo-tissue-seg3d")
    seg = p.result_layers[0]
    assert seg in win.doc.layers.layers
    assert any(ln.startswith("SEG") for ln in win.dicom_exporter.plan())
    assert [mid for _, mid in session_runs(win).runs] == ["demo-tissue-seg3d"]
    # the other part: same SeriesInstanceUID, same image count and size, never analysed
    _show(win, two)
    assert win.doc.volume is not vol1 and win.doc.volume.series_uid == vol1.series_uid
    assert win.doc.volume.array.shape == vol1.array.shape
    assert not [la.name for la in win.doc.layers if getattr(la, "model_id", None)], "part 1's overlay on part 2"
    assert p.shown_lines() == [] and "Earlier results" not in p.status.text()
    assert p.last_result is None
    plan = win.dicom_exporter.plan()
    assert not any(ln.startswith("SEG") for ln in plan), plan  # part 1's SEG would reference part 2
    assert win.dicom_exporter._runs() == ([], [])
    # the run log, the nodules' key (from the volume alone) and the document agree per part
    assert log_key(win.doc.volume) == series_key(win.doc) != log_key(vol1)
    # back on part 1: its results are there again
    _show(win, one)
    assert seg in win.doc.layers.layers
    assert p.status.text() == "Earlier results on this series: demo-tissue-seg3d"
    assert any(ln.startswith("SEG") for ln in win.dicom_exporter.plan())


# ============================================================================== 4. weights
def test_weights_corrupted_mid_session_lose_their_check_mark(win, models, split_study):
    p = win.model_panel
    _open(win, split_study)
    assert p.select_model("demo-dense-cls")
    folder = str(p.current_entry().folder)
    assert p.verify_state[folder][0] is True and "Weights verified" in p.details.text()
    w = models / "dense" / "model.safetensors"
    good = w.read_bytes()
    try:
        data = bytearray(good)
        data[len(data) // 2] ^= 0xFF
        time.sleep(0.01)  # a new mtime: the loaded-model cache checks the file again
        w.write_bytes(bytes(data))
        p.set_method(None)
        assert run_and_wait(p) == "error"
        assert "sha256" in p.error_text()
        ok, why = p.verify_state[folder]
        assert ok is False and "sha256" in why
        assert p.tree.currentItem().text(4) == "✗"
        assert "Weights verified" not in p.details.text() and "sha256" in p.details.text()
    finally:
        w.write_bytes(good)


# ============================================================================== 2. feedback box
def test_feedback_box_follows_the_shown_series(win):
    from imaging_assist.monitoring.feedback import latest_feedback

    p = win.model_panel
    box = p.feedback_box
    _open(win, CXR)
    a, b = _key_of(win, "cxr_01_ap.dcm"), _key_of(win, "cxr_02_ap.dcm")
    _show(win, a)
    vol_a = win.doc.volume
    _run(p, "cxr-pneumonia")
    res_a, card = p.last_result, box.card
    rid = box.run_id
    assert rid is not None and list(box.rows) == ["pneumonia"]
    _show(win, b)
    # the panel's findings of film A are gone: so are the box's
    assert p.shown_lines() == []
    assert box.rows == {} and box.result is None
    assert not box.give_current("agree")  # what Ctrl+Shift+A does, anywhere in the window
    assert latest_feedback(rid) == {}
    # a box that still held A's run (stale) refuses to save while B is shown
    box.set_result(res_a, card, vol_a)
    assert "pneumonia" in box.rows
    assert not box.give("pneumonia", "agree")
    assert box.note.text().startswith("not saved") and latest_feedback(rid) == {}
    # back on A: its restored run, on the shown volume, takes the verdict
    _show(win, a)
    assert p.status.text().startswith("Earlier results on this series: cxr-pneumonia")
    assert box.run_id == rid and box.volume is win.doc.volume and list(box.rows) == ["pneumonia"]
    assert box.give_current("agree")
    assert latest_feedback(rid)["pneumonia"]["verdict"] == "agree"


# ============================================================================== 3. merged layer
def test_rerun_keeps_another_models_segmentation_merged_into_its_layer(win):
    p = win.model_panel
    _open(win, CXR)
    _show(win, _key_of(win, "cxr_01_ap.dcm"))

    def labels():
        return [la for la in win.doc.layers if la.kind == "label"]

    _run(p, "cxr-pneumonia", "gradcam")  # heat map + the lungs outline (cxr-lung-seg's region)
    assert [getattr(la, "model_id", None) for la in labels()] == ["cxr-pneumonia"]
    _run(p, "cxr-lung-seg", override=True)  # an adult model on a 4-year-old's film
    (merged,) = labels()  # the same lungs: merged into the region's layer, one layer per structure
    assert set(merged.sources) == {"cxr-pneumonia's region", "cxr-lung-seg"}
    _run(p, "cxr-pneumonia")  # again, without a heat map: its region goes, the segmentation stays
    assert labels() == [merged], "cxr-lung-seg's segmentation vanished with cxr-pneumonia's re-run"
    assert merged.model_id == "cxr-lung-seg" and merged.sources == ["cxr-lung-seg"]
    assert not [la for la in win.doc.layers if la.kind == "heatmap"]
    _run(p, "cxr-lung-seg", override=True)  # its own re-run replaces it
    (again,) = labels()
    assert again is not merged and again.model_id == "cxr-lung-seg"
    assert np.array_equal(again.array > 0, merged.array > 0)


# ============================================================================== 5. override record
def test_research_override_run_records_what_analyze_records(win, tmp_path):
    from imaging_assist.cli import main
    from imaging_assist_ui.ai.session_runs import session_runs

    p = win.model_panel
    _open(win, CXR)
    _show(win, _key_of(win, "cxr_03_pa.dcm"))  # an adult's PA film: cxr-pneumonia does not fit
    _run(p, "cxr-pneumonia", override=True)
    gui = next(r.item for r in session_runs(win).runs.values() if r.result is p.last_result)
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(CXR / "cxr_03_pa.dcm", src)
    assert main(["analyze", str(src), "--model", "cxr-pneumonia", "--research-override",
                 "--out", str(tmp_path / "out")]) == 0
    (cli,) = json.loads((tmp_path / "out" / "results.json").read_text())["items"]
    reasons = cli["research_override"]["reasons"]
    assert reasons and gui["research_override"] == cli["research_override"]
    assert gui["research_override"]["note"].startswith("run with --research-override")
    assert f"research override: the model card does not fit ({'; '.join(reasons)})" in gui["warnings"]
    assert gui["warnings"] == cli["warnings"]
    assert gui["decision"] == cli["decision"] and gui["decision"]["withheld"]
