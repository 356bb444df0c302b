"""Numbers and text under other languages (session 24): the GUI's decimal boxes read "2.5" as 2.5
whatever LANG says (under de_DE Qt took "." for a group separator: a 25 mm slab, a heat-map
threshold of 0), a "," typed from habit is the decimal point too; the CLI never dies on a stdout
that cannot encode "µ" or "ü"; a PACS date typed in Arabic-Indic digits goes out in ASCII."""

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PySide6.QtCore import QLocale, QSettings, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QDialog, QDoubleSpinBox, QWidget

from conftest import SHARED, need

CXR = SHARED / "cxr" / "pneumonia_kermany" / "test" / "NORMAL" / "IM-0001-0001.jpeg"


@pytest.fixture
def german():
    """The system's language as German (decimal point ",", group separator "."), set before the
    app is made, as LANG=de_DE does; the default locale is put back after the test (it is
    process-wide: it would leak into every later test)."""
    saved = QLocale()
    QLocale.setDefault(QLocale("de_DE"))
    yield
    QLocale.setDefault(saved)


@pytest.fixture
def english():
    saved = QLocale()
    QLocale.setDefault(QLocale("en_US"))
    yield
    QLocale.setDefault(saved)


def typed(box, text: str) -> float:
    """What ``box`` holds after ``text`` is typed over its contents and Return pressed."""
    le = box.lineEdit()
    box.setFocus()
    le.selectAll()
    QTest.keyClicks(le, text)
    QTest.keyClick(le, Qt.Key_Return)
    box.interpretText()
    return box.value()


def _app():
    from imaging_assist_ui.app import make_app
    return make_app()


def test_a_new_app_shows_numbers_with_a_point_and_western_digits(german):
    _app()
    assert QLocale().decimalPoint() == "."
    assert QLocale().toString(1234.5, "f", 1) == "1234.5"  # no group separator either
    QLocale.setDefault(QLocale("ar_EG"))  # Arabic-Indic digits in every QSpinBox before
    _app()
    assert QLocale().toString(7) == "7"


def test_slab_thickness_reads_a_point_and_a_comma_under_german(german, tmp_path):
    _app()
    from imaging_assist_ui.main_window import MainWindow
    w = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat))
    try:
        w.show()
        box = w.slab_controls.thickness
        assert typed(box, "2.5") == pytest.approx(2.5)  # was 25 mm
        assert box.text() == "2.5 mm"
        assert typed(box, "12,5") == pytest.approx(12.5)
    finally:
        w.close()


def test_heat_map_threshold_and_marker_score_read_a_point_under_german(german):
    _app()
    from imaging_assist.layers import LayerStack
    from imaging_assist_ui.radiology.layers_panel import LayersPanel
    p = LayersPanel(LayerStack())
    try:
        p.show()
        assert typed(p.threshold, "0.75") == pytest.approx(0.75)  # was 75 (or 0: the whole heat map)
        assert typed(p.threshold, "0,25") == pytest.approx(0.25)
        assert typed(p.min_score, "0.5") == pytest.approx(0.5)
        assert typed(p.min_score, "0,4") == pytest.approx(0.4)
    finally:
        p.close()


def test_pacs_timeout_reads_a_point_under_german(german, tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "cfg"))
    _app()
    from imaging_assist_ui.pacs.nodes_dialog import NodesDialog
    d = NodesDialog()
    try:
        d.show()
        assert typed(d.timeout, "2.5") == pytest.approx(2.5)
        assert typed(d.timeout, "7,5") == pytest.approx(7.5)
    finally:
        d.close()


def test_threshold_segmentation_reads_a_point_under_german(german, monkeypatch):
    _app()
    from imaging_assist_ui.main_window import overlays

    class Host(QWidget):
        def __init__(self):
            super().__init__()
            arr = np.linspace(0.0, 10.0, 2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
            self.doc = SimpleNamespace(volume=SimpleNamespace(
                array=arr, is_color=False, units="", value_range=lambda: (0.0, 10.0)))
            self.added = []

        def add_layer(self, layer):
            self.added.append(layer)

    got = {}

    def fill_in(dlg):  # the dialog as the user fills it in: "2.5" to "7,5"
        dlg.show()
        lo, hi = dlg.findChildren(QDoubleSpinBox)
        got["lo"], got["hi"] = typed(lo, "2.5"), typed(hi, "7,5")
        return QDialog.Accepted

    monkeypatch.setattr(QDialog, "exec", fill_in)
    host = Host()
    overlays.threshold_dialog(host)
    assert got == pytest.approx({"lo": 2.5, "hi": 7.5})
    arr = host.doc.volume.array
    assert np.array_equal(host.added[0].array, ((arr >= 2.5) & (arr <= 7.5)).astype(np.uint8))


def test_a_comma_is_the_decimal_point_under_english_too(english):
    _app()
    from imaging_assist.layers import LayerStack
    from imaging_assist_ui.radiology.layers_panel import LayersPanel
    p = LayersPanel(LayerStack())
    try:
        p.show()
        assert typed(p.threshold, "2,5") == pytest.approx(2.5)  # Qt read 25 (a group separator)
    finally:
        p.close()


def test_every_decimal_box_in_the_gui_is_the_locale_proof_one():
    """A new QDoubleSpinBox() in ui/ would bring the bug back for its box."""
    import imaging_assist_ui
    ui = Path(imaging_assist_ui.__file__).resolve().parent
    found = []
    for f in sorted(ui.rglob("*.py")):
        if f.name == "spinbox.py":
            continue
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"\bQDoubleSpinBox\s*\(", line):
                found.append(f"{f.relative_to(ui)}:{n}")
    assert not found, found


# -- the CLI on a stdout that cannot encode every character ------------------------------------

def _ascii_cli(cwd, *args, timeout=600):
    """The CLI in a child process whose stdout and stderr are ASCII only (run in ``cwd``, not the
    repository: the child imports the package its PYTHONPATH names)."""
    env = dict(os.environ, PYTHONIOENCODING="ascii", PYTHONUTF8="0")
    return subprocess.run([sys.executable, "-m", "imaging_assist", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, timeout=timeout)


@pytest.mark.parametrize("command", ["annotations", "analyze"])
def test_help_on_an_ascii_stdout_exits_0_without_a_traceback(command, tmp_path):
    r = _ascii_cli(tmp_path, command, "--help")
    err = r.stderr.decode("ascii", "replace")
    assert r.returncode == 0 and "Traceback" not in err, err[-400:]
    assert b"usage:" in r.stdout


def test_analyze_into_a_non_ascii_folder_on_an_ascii_stdout_writes_the_report(tmp_path):
    src = tmp_path / "in_\u00fc"
    src.mkdir()
    (src / CXR.name).write_bytes(need(CXR).read_bytes())
    out = tmp_path / "out_M\u00fcller"
    r = _ascii_cli(tmp_path, "analyze", "--model", "cxr-pneumonia", "--device", "cpu", "--out", out, src)
    err = r.stderr.decode("ascii", "replace")
    assert (out / "results.json").is_file(), err[-400:]
    assert (out / "report.pdf").is_file(), err[-400:]  # was lost: died printing the folder's name
    assert "UnicodeEncodeError" not in err and "Traceback" not in err, err[-400:]
    assert r.returncode == 0, err[-400:]
    assert b"M\\xfcller" in r.stdout  # the name shown escaped


def test_a_c_locale_stdout_escapes_what_it_cannot_hold_and_keeps_file_name_bytes(tmp_path, monkeypatch):
    """LC_ALL=C without UTF-8 mode: stdout is ASCII with surrogateescape.  "Müller" from a DICOM
    header is written escaped (``scan`` died on it); a file name's undecodable byte (decoded
    with surrogateescape) is still written back as that byte."""
    import io

    from _synth import write_ct_series

    from imaging_assist.cli.main import main
    write_ct_series(tmp_path / "s", [(0, 0, 0)], extra={"SpecificCharacterSet": "ISO_IR 192",
                                                          "PatientName": "M\u00fcller^J\u00fcrgen"})
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii", errors="surrogateescape", write_through=True)
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["scan", str(tmp_path / "s")]) == 0
    print(os.fsdecode(b"caf\xe9"), file=sys.stdout)
    out.flush()
    got = raw.getvalue()
    assert b"Patient M\\xfcller^J\\xfcrgen" in got, got
    assert got.endswith(b"caf\xe9\n")


# -- PACS dates in other scripts' digits ---------------------------------------------------------

def test_a_date_in_arabic_indic_digits_goes_to_the_pacs_in_ascii():
    from imaging_assist.pacs.query import Query, normalise_date
    ar = "\u0662\u0660\u0662\u0664\u0660\u0661\u0663\u0661"  # ٢٠٢٤٠١٣١
    assert normalise_date(ar) == "20240131"
    assert normalise_date(f"{ar}-") == "20240131-"
    assert normalise_date("\u06f2\u06f0\u06f2\u06f4-\u06f0\u06f1-\u06f3\u06f1") == "20240131"  # Persian, ISO dashes
    q = Query(date=ar, birth_date="\u0661\u0669\u0665\u0660\u0660\u0661\u0660\u0662").checked()
    assert (q.date, q.birth_date) == ("20240131", "19500102")
    assert q.identifier()["StudyDate"] == "20240131"


def test_other_digits_are_still_refused_when_no_date():
    from imaging_assist.pacs.nodes import PacsError
    from imaging_assist.pacs.query import normalise_date
    for bad in ("\u0662\u0660\u0662\u0664\u0661\u0663\u0663\u0661", "\u0662\u0660\u0662\u0664", "2024\u00b2131"):
        with pytest.raises(PacsError):
            normalise_date(bad)
