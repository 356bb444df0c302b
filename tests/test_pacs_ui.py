"""The Query/Retrieve window, the node dialog's Test and Send to PACS… against the real Orthanc
(pytest-qt, offscreen).  Every network call runs in a worker: the window keeps painting."""

import os
import time
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from _orthanc import orthanc, orthanc_sink, pacs_home, write_pacs_json  # noqa: F401 - fixtures
from _qt import pump_until

CT_STUDY = "1.3.46.670589.33.1.27492712521914879309.27169771283235650014"
MR_STUDY = "1.2.840.114350.2.408.2.798268.2.129495550.1"


@pytest.fixture
def window(qtbot, pacs_home, tmp_path):
    from imaging_assist_ui.app import make_app
    from imaging_assist_ui.pacs.window import PacsWindow
    make_app()
    w = PacsWindow(out_dir=str(tmp_path / "retrieved"))
    qtbot.addWidget(w)
    w.show()
    i = w.node_box.findData("orthanc")
    assert i >= 0
    w.node_box.setCurrentIndex(i)
    yield w
    if w.transfer is not None:
        w.transfer.cancel.set()
        pump_until(lambda: w.transfer is None, 30)
    pump_until(lambda: not any(j.running() for j in w._jobs), 30)  # no worker outlives its window


def _search(w, **fields):
    for name, value in fields.items():
        getattr(w, f"f_{name}").setText(value)
    w.b_search.click()
    assert pump_until(lambda: w.b_search.isEnabled() and w.status.text() != "searching", 30)
    assert pump_until(lambda: "stud" in w.status.text(), 30), w.status.text()


def test_search_expand_retrieve_opens_the_study(window, tmp_path):
    w = window
    _search(w, modality="MR")
    assert w.tree.topLevelItemCount() == 1
    st = w.tree.topLevelItem(0)
    assert st.text(0).startswith("Zzz_Test") and st.text(4) == "MR" and st.text(6) == "4"
    st.setExpanded(True)
    assert pump_until(lambda: st.childCount() == 1, 30), w.status.text()
    assert "ep2d_fid_weisskoff_25slc" in st.child(0).text(3)
    arrived = []
    w.studyArrived.connect(lambda path, complete: arrived.append((path, complete)))
    st.child(0).setSelected(True)
    assert w.b_retrieve.isEnabled()
    w.b_retrieve.click()
    assert pump_until(lambda: w.transfer is None, 60), w.status.text()
    assert "4 instances by C-GET" in w.status.text(), w.status.text()
    study_dir = str(tmp_path / "retrieved" / MR_STUDY)
    assert arrived[0] == (study_dir, False)  # the first instance: the browser may show it now
    assert arrived[-1] == (study_dir, True)
    assert len(list(Path(study_dir).rglob("*.dcm"))) == 4
    (item, bar) = next(iter(w.bars.values()))
    assert (bar.value(), bar.maximum(), item.text(2)) == (4, 4, "done")


def test_cancel_keeps_whole_files_and_says_so(window, tmp_path):
    w = window
    _search(w, patient="HEAD")
    w.tree.topLevelItem(0).setSelected(True)
    from PySide6.QtCore import QTimer
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    w.b_retrieve.click()
    study = tmp_path / "retrieved" / CT_STUDY
    assert pump_until(lambda: len(list(study.rglob("*.dcm"))) >= 5, 60)
    timer.stop()
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert gaps and max(gaps) < 1.0, max(gaps)  # the event loop kept running: no freeze
    t0 = time.perf_counter()
    w.b_cancel.click()
    assert pump_until(lambda: w.transfer is None, 30)
    assert time.perf_counter() - t0 < 10
    assert "cancelled" in w.status.text(), w.status.text()
    assert 5 <= len(list(study.rglob("*.dcm"))) < 140
    assert not list(study.rglob("*.partial"))


def test_errors_are_one_line_in_the_window(window, orthanc):
    w = window
    w.f_date.setText("2020-99-99")
    w.b_search.click()
    assert "invalid date" in w.status.text()
    w.date_preset.setCurrentIndex(2)  # last 7 days
    import datetime
    today = datetime.date.today()
    assert w.f_date.text() == f"{today - datetime.timedelta(days=6):%Y%m%d}-{today:%Y%m%d}"
    w.date_preset.setCurrentIndex(0)
    assert w.f_date.text() == ""
    w.settings.nodes["orthanc"].port = orthanc.http_port + 0  # HTTP port: not DICOM
    w.settings.nodes["orthanc"].timeout = 2
    w.b_test.click()
    assert pump_until(lambda: w.b_test.isEnabled() and "testing" not in w.status.text(), 30)
    assert "orthanc [" in w.status.text() and "\n" not in w.status.text(), w.status.text()


def test_node_dialog_test_button_and_secret_field(qtbot, pacs_home, orthanc):
    from imaging_assist_ui.app import make_app
    from imaging_assist_ui.pacs.nodes_dialog import NodesDialog
    make_app()
    d = NodesDialog()
    qtbot.addWidget(d)
    d.show()
    d.list.setCurrentItem(d.list.findItems("orthanc-web", Qt.MatchExactly)[0])
    assert d.kind.currentText() == "DICOMweb" and d.password.text() == ""  # never shown back
    assert "saved" in d.password.placeholderText()
    d.b_test.click()
    assert pump_until(lambda: "QIDO-RS ok" in d.status.text() or "error" in d.status.styleSheet(), 30), \
        d.status.text()
    assert "QIDO-RS ok" in d.status.text() and orthanc.password not in d.status.text()
    d.password.setText("wrong")
    d.b_test.click()
    assert pump_until(lambda: "HTTP 401" in d.status.text(), 30), d.status.text()
    d.password.clear()
    assert d.save_node()  # empty password field keeps the saved one
    from imaging_assist.pacs.nodes import load_settings
    assert load_settings().nodes["orthanc-web"].password == orthanc.password
    assert oct(os.stat(pacs_home / "pacs.json").st_mode & 0o777) == "0o600"


def test_send_dialog_sends_and_confirms(qtbot, pacs_home, orthanc, orthanc_sink, tmp_path):
    from _synth import write_ct_series
    from imaging_assist_ui.app import make_app
    from imaging_assist_ui.pacs.send_dialog import SendDialog
    make_app()
    # sent to an empty Orthanc of its own: the shared one's studies are counted elsewhere
    write_pacs_json(pacs_home, orthanc, {"sink-web": orthanc_sink.web_node("sink-web").to_dict()})
    files = write_ct_series(tmp_path / "s", [(0, 0, k) for k in range(3)])
    d = SendDialog(paths=[str(tmp_path / "s")])
    qtbot.addWidget(d)
    d.show()
    assert d.node_box.findData("sink-web") >= 0
    d.node_box.setCurrentIndex(d.node_box.findData("sink-web"))
    d.b_send.click()
    assert pump_until(lambda: d.result is not None or "error" in d.status.styleSheet(), 60), d.status.text()
    assert d.result.confirmed == len(files) and "3 instances sent and confirmed" in d.status.text()


def test_main_window_menu_opens_the_pacs_window(qtbot, pacs_home, tmp_path_factory):
    from PySide6.QtCore import QSettings

    from imaging_assist_ui.app import make_app
    from imaging_assist_ui.main_window import MainWindow
    make_app()
    mw = MainWindow(settings=QSettings(str(tmp_path_factory.mktemp("cfg") / "s.ini"), QSettings.IniFormat))
    qtbot.addWidget(mw)
    file_menu = mw.menuBar().actions()[0].menu()
    assert mw.a_pacs in file_menu.actions()
    mw.show()
    mw.a_pacs.trigger()
    pw = mw._pacs_window
    assert pw.isVisible()
    # Retrieve from the window: the study opens in the main window's browser.
    pw.out_dir = str(tmp_path_factory.mktemp("retrieved"))
    pw.node_box.setCurrentIndex(pw.node_box.findData("orthanc"))
    _search(pw, modality="MR")
    pw.tree.topLevelItem(0).setSelected(True)
    pw.b_retrieve.click()
    assert pump_until(lambda: pw.transfer is None, 60), pw.status.text()
    assert pump_until(lambda: mw.load_state == "done" and mw.loading.index is not None
                      and mw.loading.index.root == os.path.join(pw.out_dir, MR_STUDY), 60), \
        (mw.load_state, mw.last_error)
    (series,) = mw.loading.index.image_series()
    assert series.modality == "MR" and len(series.instances) == 4
    pw.close()
