"""A slide model run from the GUI's AI panel (the real CMU-1 SVS, a drawn region) is one
prediction-log row (kind slide_region) and one audit model.run event (issue 18)."""

import json
import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import imaging_assist_ui  # noqa: E402,F401
from PySide6.QtCore import QSettings  # noqa: E402

from _qt import pump_until as wait  # noqa: E402
from conftest import SHARED, need  # noqa: E402

pytestmark = pytest.mark.gui

SVS = SHARED / "pathology" / "wsi_aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"


@pytest.fixture
def win(qapp, tmp_path):
    from imaging_assist.monitoring import log as plog
    from imaging_assist_ui.app import make_app
    from imaging_assist_ui.main_window import MainWindow

    mp = pytest.MonkeyPatch()
    mp.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    mp.delenv("IMAGING_ASSIST_PREDICTION_LOG", raising=False)
    make_app()
    w = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat))
    w.resize(1600, 1000)
    w.show()
    w.open_path(str(need(SVS)))
    assert wait(lambda: w.load_state == "done" and w.slide_page is not None and w.slide_page.tools.key), \
        w.last_error
    yield w
    w.close()
    plog.close_all()
    mp.undo()


def test_a_gui_slide_run_is_logged_and_audited(win):
    from imaging_assist.monitoring import log as plog
    from imaging_assist.privacy import audit
    from imaging_assist.privacy.sitekey import pseudonym
    from imaging_assist.slides.annotations import Annotation

    page, panel = win.slide_page, win.model_panel
    win.model_dock.show()
    if not panel._catalog_loaded:
        panel.refresh()
    assert wait(lambda: panel._catalog_loaded, 60), panel.series_label.text()
    page.tools.add(Annotation("rectangle", [(700, 1300), (1700, 1300), (1700, 2300), (700, 2300)]))
    got = []
    panel.runFinished.connect(got.append)
    assert panel.run()
    assert wait(lambda: got, 120), panel.status.text()
    assert got == ["done"], panel.error_text()
    res = page.runs.last
    lg = plog.open_log()
    cols = [r[1] for r in lg.query("PRAGMA table_info(runs)")]
    rows = [dict(zip(cols, r)) for r in lg.query("SELECT * FROM runs")]
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["kind"] == "slide_region" and row["model_id"] == "path-lung-tissue"
    assert row["input_key"] == pseudonym(str(SVS.resolve()), "file")
    assert json.loads(row["areas"])["n_tiles_run"] == res.n_tiles
    assert (row["cols"], row["rows"]) == tuple(res.slide_dimensions)
    assert "CMU-1" not in json.dumps(row)
    runs = [e for e in audit.read_entries() if e and e["event"] == "model.run"]
    assert len(runs) == 1 and runs[0]["fields"]["model"] == "path-lung-tissue"
