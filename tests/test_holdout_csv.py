"""``models compare --holdout CSV``: the hold-out is checked before any model runs.  A label
that is not one of the model's (a typo) used to count silently as the other class; a missing
column was a KeyError."""

from __future__ import annotations

import pytest

from imaging_assist.errors import UserError
from imaging_assist.monitoring.finetune import read_holdout

LABELS = ["normal", "pneumonia"]


@pytest.fixture()
def files(tmp_path):
    for n in ("a.png", "b.png", "m.png"):
        (tmp_path / n).write_bytes(b"x")
    return tmp_path


def _csv(folder, text: str):
    p = folder / "holdout.csv"
    p.write_text(text, encoding="utf-8")
    return p


def test_a_good_holdout_reads_relative_to_its_folder(files):
    rows = read_holdout(_csv(files, "file,label,patient_id\na.png,Normal,P1\nb.png, PNEUMONIA ,\n"), LABELS)
    assert [(r["file"], r["label"], r["patient"]) for r in rows] == [
        (files / "a.png", "normal", "P1"), (files / "b.png", "pneumonia", "file:b.png")]
    seg = read_holdout(_csv(files, f"file,mask\n{files / 'a.png'},m.png\n"), need_mask=True)
    assert seg[0]["mask"] == files / "m.png" and seg[0]["label"] is None


@pytest.mark.parametrize("text, why", [
    ("file,label\na.png,normal\nb.png,pneumonai\n", "line 3: label 'pneumonai' is not one of normal, pneumonia"),
    ("file,diagnosis\na.png,normal\n", "needs the columns file, label"),
    ("file,label\na.png,normal\nb.png,normal\n", "holds only 'normal' cases: an AUC needs both classes"),
    ("file,label\na.png,normal\nzz.png,pneumonia\n", "line 3: file 'zz.png' not found"),
    ("file,label\n", "has no rows"),
    ("file,label\na.png,normal\n\"b.png,pneumonia\n", "line 3: label '' is not one of"),  # an unclosed quote
])
def test_a_bad_holdout_is_one_line_naming_the_line(files, text, why):
    with pytest.raises(UserError) as e:
        read_holdout(_csv(files, text), LABELS)
    assert why in str(e.value) and "\n" not in str(e.value)


def test_segmenter_holdout_needs_masks_and_bytes_must_be_utf8(files):
    with pytest.raises(UserError, match="needs the columns file, mask"):
        read_holdout(_csv(files, "file,label\na.png,normal\n"), need_mask=True)
    with pytest.raises(UserError, match="line 2: mask 'gone.png' not found"):
        read_holdout(_csv(files, "file,mask\na.png,gone.png\n"), need_mask=True)
    p = files / "latin1.csv"
    p.write_bytes("file,label\nä.png,normal\n".encode("latin-1"))
    with pytest.raises(UserError, match="not a UTF-8 CSV"):
        read_holdout(p, LABELS)


def test_models_compare_refuses_a_bad_holdout_before_running(files, capsys, monkeypatch, tmp_path):
    from imaging_assist.cli.main import main

    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "config"))
    p = _csv(files, "file,label\na.png,normal\nb.png,pneumonai\n")
    assert main(["models", "compare", "cxr-pneumonia", "1.0.0", "1.0.0", "--holdout", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: hold-out {p} line 3: label 'pneumonai' is not one of normal, pneumonia")
