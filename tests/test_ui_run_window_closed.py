"""A model run ends with its window: closing the main window mid-run cancels the job and its
late result is ignored (it was added as a layer to the closed window's document and entered the
session's run log, as if the reader had seen it).  Changing the series mid-run already did so."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from _qt import open_window, wait_until  # noqa: E402
from test_ui_model_panel import DEMO, models, slow_runs  # noqa: E402,F401


def test_closing_the_window_mid_run_cancels_it_and_adds_nothing(qapp, tmp_path_factory, models, slow_runs):  # noqa: F811
    from imaging_assist_ui.ai.session_runs import session_runs

    w = open_window(tmp_path_factory, str(DEMO))
    w.show_model_panel()
    p = w.model_panel
    assert wait_until(lambda: p._catalog_loaded and p._volume_ready(), 60)
    assert p.select_model("demo-dense-cls")
    p.set_method("gradcam")
    got = []
    p.runFinished.connect(got.append)
    assert p.run(), p.error_text()
    job = p.job
    assert wait_until(lambda: len(slow_runs) >= 2, 60)
    doc = w.doc
    n_layers = len(doc.layers)
    w.close()
    assert wait_until(job.done, 120)
    wait_until(lambda: False, 0.5)  # a late "finished" would be delivered now
    assert got == ["cancelled"] and job.status == "cancelled"
    assert len(doc.layers) == n_layers
    assert not list(session_runs(w).runs)
