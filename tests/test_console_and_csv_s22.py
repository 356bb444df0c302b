"""Header values and file names on the terminal (no ESC sequence, line break or bidi override
acts on it), spreadsheet formula injection in the CSV files, and evaluation.json keeping a
subgroup whose name starts with "_"."""

from __future__ import annotations

import csv
import io
import json

import pytest

from conftest import DICOM, need
from imaging_assist.cli.main import main
from test_monitor_audit_fixes import MODEL, SHIPPED, _candidate, home  # noqa: F401
from test_monitor_log import logdir  # noqa: F401

CR = DICOM / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm"
ESC = "\x1b"


def _no_terminal_controls(text: str) -> None:
    assert ESC not in text and "\x07" not in text and "\r" not in text and "\u202e" not in text
    assert text.isprintable() or set(c for c in text if not c.isprintable()) <= {"\n"}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """The real CR chest film with header values a hostile sender controls: ESC sequences (hide
    what follows, an OSC-8 link), a SeriesDescription that ends the line and prints a fake
    Patient line, a bidi override."""
    import pydicom
    from pydicom.uid import generate_uid

    d = tmp_path_factory.mktemp("hostile")
    ds = pydicom.dcmread(need(CR), force=True)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientName = "Doe^John" + ESC + "[8m"
    ds.PatientID = "P\u202e123"
    ds.StudyDescription = "X" + ESC + "]8;;http://evil/" + ESC + "\\link" + ESC + "]8;;" + ESC + "\\"
    ds.SeriesDescription = "CHEST\r\nPatient Roe^Jane  id=12345  sex=F  born=19700101"
    ds.save_as(d / "img.dcm")
    return d


def test_printable_escapes_controls_bidi_and_surrogates():
    from imaging_assist.safe_text import printable

    assert printable("Doe^John\x1b[8m") == "Doe^John\\x1b[8m"
    assert printable("a\r\nb\tc\x07\x7f\x9b") == "a\\r\\nb\\tc\\x07\\x7f\\x9b"
    assert printable("Smith\u202e^nhoJ \u2066x\u2069 \u2028") == "Smith\\u202e^nhoJ \\u2066x\\u2069 \\u2028"
    assert printable("M\udcfcller.dcm") == "M\\udcfcller.dcm"  # undecodable byte of a file name
    assert printable("Müller 中 ¼ a b") == "Müller 中 ¼ a b"  # printable text as it is
    assert printable(None) == "None" and printable(12) == "12"


def test_scan_info_annotations_print_header_values_escaped(hostile, capsys):
    f = str(hostile / "img.dcm")
    for argv in (["scan", str(hostile)], ["info", f], ["annotations", f]):
        assert main(argv) == 0, argv
        out = capsys.readouterr().out
        _no_terminal_controls(out)
        # the fake line is not a line of its own: the description is on the Series line
        assert not any(ln.startswith("Patient Roe") for ln in out.splitlines()), argv
        assert "CHEST\\r\\nPatient Roe^Jane" in out, argv
    assert main(["scan", str(hostile)]) == 0
    out = capsys.readouterr().out
    assert "Patient Doe^John\\x1b[8m  id=P\\u202e123" in out and "X\\x1b]8;;http://evil/" in out


def _hostile_names(folder):
    folder.mkdir()
    for name in ("z" + ESC + "[31mRED" + ESC + "[0m.dcm", "y\nPatient Roe.dcm", "r\u202etxt.dcm"):
        (folder / name).write_bytes(b"not a DICOM file")
    return folder


def test_anonymize_prints_file_names_escaped(tmp_path, capsys):
    src = _hostile_names(tmp_path / "in")
    assert main(["anonymize", str(src), str(tmp_path / "out"), "--keep-names", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    _no_terminal_controls(out)
    left = [ln for ln in out.splitlines() if ln.startswith("left out: ")]
    assert len(left) == 3 and not any(ln.startswith("Patient Roe") for ln in out.splitlines())
    assert any("z\\x1b[31mRED\\x1b[0m.dcm" in ln for ln in left)
    assert any("y\\nPatient Roe.dcm" in ln for ln in left)


def test_batch_deidentify_prints_file_names_escaped(tmp_path, capsys, monkeypatch):
    from imaging_assist.errors import UserError
    from imaging_assist.privacy import deid

    src = _hostile_names(tmp_path / "in")
    argv = ["batch", str(src), "--model", "cxr-pneumonia", "--out", str(tmp_path / "out"), "--deidentify"]
    # nothing could be de-identified: refused (exit 2) after the summary lines, before any model
    assert main(argv) == 2
    err = capsys.readouterr().err
    _no_terminal_controls(err)
    assert "z\\x1b[31mRED\\x1b[0m.dcm" in err and "y\\nPatient Roe.dcm" in err

    # batch's own echo (also given to the PACS retrieval) escapes whatever line it is handed
    def deidentified_input(path, opts=None, echo=None):
        echo("note: " + path + ESC + "]0;title\x07\nPatient Roe")
        raise UserError("stop here")

    monkeypatch.setattr(deid, "deidentified_input", deidentified_input)
    assert main(argv) == 2
    err = capsys.readouterr().err
    _no_terminal_controls(err)
    assert "\\x1b]0;title\\x07\\nPatient Roe" in err


def test_item_errors_and_tables_are_escaped(capsys):
    from imaging_assist.cli.common import fmt_table, print_item_error

    print_item_error("a" + ESC + "[2Kb.dcm", "cannot be read\nPatient Roe")
    err = capsys.readouterr().err
    assert err == "error: a\\x1b[2Kb.dcm: cannot be read\\nPatient Roe\n"
    table = fmt_table([["Doe^John" + ESC + "[31m", "P\u202e1"], ["Roe\r\nX", 3]], ["patient", "id"])
    _no_terminal_controls(table)
    assert len(table.splitlines()) == 3 and "Doe^John\\x1b[31m" in table and "Roe\\r\\nX" in table


def test_csv_cell_prefixes_formulas_but_not_numbers():
    from imaging_assist.safe_text import csv_cell

    for v in ('=HYPERLINK("http://evil/","x")', "+SUM(1,2)", "-2+3", "@SUM(1+1)", "\tx", "\rx", "-", "=1"):
        assert csv_cell(v) == "'" + v, v
    for v in ("-0.5", "+3", "-12", "1e-3", "-1.5E+2", ".5", "Siemens", "", "a=b", 7, -0.5, None):
        assert csv_cell(v) == v, v


def test_log_export_csv_cells_are_no_formulas_and_stdout_has_no_escapes(logdir, capsys):  # noqa: F811
    from imaging_assist.monitoring import log as plog

    lg = plog.open_log()
    lg.add_runs([{"time_utc": "2026-01-01T00:00:00", "time_unix": 1.767e9, "model_id": "cxr-pneumonia",
                  "model_version": "1.0.0", "manufacturer": '=HYPERLINK("http://evil.example/","click")',
                  "modality": "-2+3"},
                 {"time_utc": "2026-01-02T00:00:00", "time_unix": 1.768e9, "model_id": "cxr-pneumonia",
                  "model_version": "1.0.0", "manufacturer": "ACME" + ESC + "[2J" + ESC + "]0;pwned\x07",
                  "modality": "-0.5", "score": -0.5}])
    out = logdir / "runs.csv"
    assert main(["log", "export", "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open(newline="", encoding="utf-8")))
    assert rows[0]["manufacturer"] == '\'=HYPERLINK("http://evil.example/","click")'
    assert rows[0]["modality"] == "'-2+3"
    assert rows[1]["modality"] == "-0.5" and rows[1]["score"] == "-0.5"  # plain numbers stay
    assert rows[1]["manufacturer"] == "ACME" + ESC + "[2J" + ESC + "]0;pwned\x07"  # the file keeps the text
    capsys.readouterr()
    assert main(["log", "export"]) == 0
    text = capsys.readouterr().out
    _no_terminal_controls(text.replace("\r\n", "\n"))  # the CSV's own line ends are \r\n
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[1]["manufacturer"] == "ACME\\x1b[2J\\x1b]0;pwned\\x07"
    assert rows[0]["manufacturer"].startswith("'=HYPERLINK")


def test_finetune_holdout_csv_cells_are_no_formulas(home, monkeypatch):  # noqa: F811
    from imaging_assist.monitoring import finetune as FT
    from imaging_assist.monitoring import versions as V

    cand = _candidate(home / "c", "1.0.0+site.1")
    monkeypatch.setattr(V, "register_candidate", lambda *a: None)
    monkeypatch.setattr("imaging_assist.models.build.save_model_folder", lambda out, raw, net: None)

    class Card:  # the parts finish_candidate reads
        id, version, name = MODEL, "1.0.0", "x"
        raw = json.loads((SHIPPED / "model.json").read_text())

    rows = [["/data/a.png", "normal", '=HYPERLINK("http://evil/","x")'], ["/data/b.png", "pneumonia", "-12"]]
    FT.finish_candidate(Card, cand, {"training": {}}, None, {"local_holdout": {"diff": 0.0, "diff_ci95": [-0.01, 0.01]}},
                        {"metric": "AUC", "margin": 0.05}, None, 2, ["file", "label", "patient_id"], rows,
                        log=lambda s: None)
    got = list(csv.DictReader((cand / "holdout.csv").open(newline="", encoding="utf-8")))
    assert [r["patient_id"] for r in got] == ['\'=HYPERLINK("http://evil/","x")', "-12"]
    assert [r["file"] for r in got] == ["/data/a.png", "/data/b.png"]


def test_evaluation_json_keeps_subgroups_starting_with_underscore(tmp_path):
    import numpy as np

    from imaging_assist.validation.evaluate_report import write_json

    groups = {"_ICU": {"n": np.int64(6), "sensitivity": {"value": np.float64(1.0), "ci95": None}},
              "ER": {"n": 6, "sensitivity": {"value": float("nan")}}}
    report = {"schema_version": 1, "_arrays": {"y": np.array([0, 1]), "p": np.array([0.2, 0.9])},
              "operating_points": {"card": {"subgroups": {"ward": {
                  "groups": groups,
                  "largest_sensitivity_gap": {"groups": ["_ICU", "ER"], "sensitivity": {"_ICU": 1.0, "ER": 0.5}}}}}}}
    d = json.loads(write_json(report, tmp_path).read_text(encoding="utf-8"))
    assert "_arrays" not in d  # the report's own private key (the PDF's arrays) is still left out
    ward = d["operating_points"]["card"]["subgroups"]["ward"]
    assert ward["groups"] == {"_ICU": {"n": 6, "sensitivity": {"value": 1.0, "ci95": None}},
                              "ER": {"n": 6, "sensitivity": {"value": None}}}
    assert ward["largest_sensitivity_gap"]["sensitivity"] == {"_ICU": 1.0, "ER": 0.5}


def test_the_error_line_has_no_control_sequence():
    from imaging_assist.cli.main import one_line

    assert one_line(ValueError("bad file \x1b]0;owned\x07name.dcm\n  second")) == \
        "bad file \\x1b]0;owned\\x07name.dcm second"


def test_result_info_audit_and_analyze_lines_are_escaped(capsys):
    """The remaining text-mode lines that carry values from files: `info` on a result object,
    `audit show` event lines, analyze's summary and warning lines."""
    from imaging_assist.cli import result_info
    from imaging_assist.cli.analyze import _summary

    result_info._print("Title       FINDINGS\x1b[2J\nPatient ROE^JANE")
    assert capsys.readouterr().out == "Title       FINDINGS\\x1b[2J\\nPatient ROE^JANE\n"
    line = _summary({"source": "a\x1b]0;t\x07.dcm", "probabilities": {"x": 0.5}})
    assert "\x1b" not in line and "\\x1b]0;t\\x07.dcm" in line


def test_pacs_send_lines_are_escaped(tmp_path, monkeypatch, capsys):
    """`pacs send` names each skipped or failed file and the node's reason: escaped too."""
    import argparse

    from imaging_assist.cli import pacs as cli_pacs
    from imaging_assist.pacs import send as sendmod

    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "cfg"))
    bad = "x\x1b[2J\nPatient ROE^JANE.dcm"
    monkeypatch.setattr(sendmod, "send", lambda node, paths, **k: sendmod.SendResult(
        node="n", skipped=[(bad, "not DICOM")], failures=[(bad, "refused\x1b[8m")]))
    args = argparse.Namespace(node="AE@127.0.0.1:104", paths=[bad], json=False)
    assert cli_pacs.cmd_send(args) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and "skipped: x\\x1b[2J\\nPatient ROE^JANE.dcm: not DICOM" in err


def test_evaluate_notes_are_escaped(tmp_path, monkeypatch, capsys):
    """evaluate's notes and summary name groups and files from the site's data: no control sequence."""
    import argparse

    import imaging_assist.validation.evaluate as ev
    import imaging_assist.validation.evaluate_report as er
    from imaging_assist.cli import evaluate as cli_eval

    report = {"notes": ["group 'ICU\x1b[2J\nPatient X' has 1 case"]}
    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: report)
    monkeypatch.setattr(er, "write_json", lambda r, d: d / "evaluation.json")
    monkeypatch.setattr(er, "write_pdf", lambda r, d: d / "evaluation.pdf")
    monkeypatch.setattr(cli_eval, "_summary", lambda r: "m 1 on 1 images\n  group \x1b]0;t\x07 ok")
    (tmp_path / "data").mkdir()
    args = argparse.Namespace(data=str(tmp_path / "data"), model="m", labels=None, group_by=None,
                              target_sensitivity=None, bootstrap=10, positive=None, out=str(tmp_path / "out"),
                              save_site_threshold=False)
    assert cli_eval.cmd_evaluate(args) == 0
    out = capsys.readouterr()
    assert "\x1b" not in out.err + out.out and "note: group 'ICU\\x1b[2J\\nPatient X' has 1 case" in out.err
    assert "group \\x1b]0;t\\x07 ok" in out.out
