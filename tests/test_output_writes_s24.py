"""Session 24, how analyze and the reports write their files (imaging_assist.outputs.written_beside):

* a link planted in the output folder under an output's name (the label map, the old fixed temp
  names results.json.tmp / report.pdf.tmp, report.pdf, evaluation.json.part, a NIfTI) is replaced
  itself: the file it points to (here the input film) is never written through;
* a run into a folder holding an earlier run's results.json removes it (and report.pdf) before its
  first item's files: a run that dies half-way never leaves patient A's results.json beside
  patient B's label map of the same name;
* a full disk is one line per failure, no temporary or zero-byte file left, no stale index
  (a real tmpfs, mounted in a private mount namespace by `unshare`, as tests/test_pacs_cli.py);
* an error or Ctrl-C while a report is written leaves no temporary file;
* ``--out`` equal to the folder of a single input file is refused;
* the Encapsulated PDF object gets report_PDF_2.dcm beside an earlier run's, as SR/SEG/PM do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DICOM, SHARED, need

JSRT = SHARED / "cxr" / "lung_masks_jsrt" / "images"
FILM = SHARED / "cxr" / "pneumonia_kermany" / "test" / "NORMAL" / "IM-0001-0001.jpeg"
CR = DICOM / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm"


def _cli(args, capsys) -> tuple[int, str, str]:
    from imaging_assist.cli.main import main

    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _leftovers(folder: Path) -> list[str]:
    """Temporary files of any writer (ours, the old fixed names) and zero-byte files."""
    return sorted(p.name for p in folder.rglob("*") if (p.is_file() and not p.is_symlink()) and (
        "partial" in p.name or p.name.endswith((".tmp", ".part")) or p.stat().st_size == 0))


# ------------------------------------------------------------------------------------ links
def test_links_named_like_outputs_are_replaced_never_written_through(tmp_path, capsys):
    src, out, keep = tmp_path / "src", tmp_path / "out", tmp_path / "keep"
    for d in (src, out, keep):
        d.mkdir()
    shutil.copy(need(JSRT / "JPCLN001.png"), src / "film.png")
    film = (src / "film.png").read_bytes()
    victims = {}
    for name in ("film_key_labels.png", "results.json.tmp", "report.pdf", "report.pdf.tmp"):
        v = keep / f"victim_{name}"
        v.write_bytes(b"the user's own file " + name.encode())
        victims[v] = v.read_bytes()
        (out / name).symlink_to(os.path.relpath(v, out))
    (out / "film_labels.png").symlink_to("../src/film.png")  # the label map's name -> the input itself
    rc, so, err = _cli(["analyze", src, "--model", "cxr-lung-seg", "--out", out], capsys)
    assert rc == 0, so + err
    assert (src / "film.png").read_bytes() == film, "the input film was overwritten through a link"
    for v, data in victims.items():
        assert v.read_bytes() == data, f"{v.name} was written through a link in --out"
    for name in ("film_labels.png", "film_key_labels.png", "report.pdf", "results.json"):
        assert (out / name).is_file() and not (out / name).is_symlink(), name
    assert json.loads((out / "results.json").read_text())["items"][0]["label_map"] == "film_labels.png"
    assert (out / "report.pdf").read_bytes()[:5] == b"%PDF-"
    assert _leftovers(out) == []


def test_nifti_npy_and_evaluation_writers_replace_a_link(tmp_path):
    from imaging_assist.inference.nifti_files import save_nifti
    from imaging_assist.validation.evaluate_report import write_json

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a_labels.nii.gz", "evaluation.json.part"):
        (out / name).symlink_to(victim)
    save_nifti(np.zeros((2, 3, 4), np.uint8), np.eye(4), out / "a_labels.nii.gz")
    write_json({"n": 1}, out)
    assert victim.read_bytes() == b"keep me"
    import nibabel as nib

    assert not (out / "a_labels.nii.gz").is_symlink() and nib.load(out / "a_labels.nii.gz").shape == (4, 3, 2)
    assert json.loads((out / "evaluation.json").read_text()) == {"n": 1}


def test_a_report_interrupted_while_written_leaves_no_temporary_file(tmp_path, monkeypatch):
    """Ctrl-C (or any error not an OSError) while fpdf writes: report.pdf.tmp stayed."""
    import fpdf

    from imaging_assist.export.report_pdf import build_report, write_report_pdf

    def output(self, name=""):
        Path(name).write_bytes(b"%PDF-half")
        raise KeyboardInterrupt

    monkeypatch.setattr(fpdf.FPDF, "output", output)
    (tmp_path / "report.pdf").write_bytes(b"%PDF-earlier")
    with pytest.raises(KeyboardInterrupt):
        write_report_pdf(build_report({"items": []}, load_missing=False), tmp_path / "report.pdf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.pdf"]
    assert (tmp_path / "report.pdf").read_bytes() == b"%PDF-earlier"


# ------------------------------------------------------------------- a run replacing a run
class _Killed(BaseException):
    """Stands for kill -9 / a power cut: nothing after it runs (not even finally's writes)."""


def test_a_rerun_that_dies_never_leaves_the_earlier_runs_results_json(tmp_path, monkeypatch, capsys):
    import imaging_assist.cli.analyze as analyze

    a, b, out = tmp_path / "patientA", tmp_path / "patientB", tmp_path / "out"
    a.mkdir()
    b.mkdir()
    shutil.copy(need(JSRT / "JPCLN001.png"), a / "film.png")
    shutil.copy(need(JSRT / "JPCLN002.png"), b / "film.png")  # another patient, the same file name
    rc, so, err = _cli(["analyze", a, "--model", "cxr-lung-seg", "--out", out], capsys)
    assert rc == 0 and (out / "results.json").is_file() and (out / "report.pdf").is_file(), so + err
    old_map = (out / "film_labels.png").read_bytes()

    def killed(*a, **k):  # after every item's files, before results.json
        raise _Killed

    monkeypatch.setattr(analyze, "finish_run", killed)
    with pytest.raises(_Killed):
        _cli(["analyze", b, "--model", "cxr-lung-seg", "--out", out], capsys)
    err = capsys.readouterr().err
    assert (out / "film_labels.png").read_bytes() != old_map  # patient B's map is there now
    assert not (out / "results.json").exists(), "patient A's results.json is left beside patient B's label map"
    assert not (out / "report.pdf").exists()
    assert f"note: removed results.json and report.pdf of an earlier run in {out}" in err, err
    assert _leftovers(out) == []


# ------------------------------------------------------------------------------- full disk
def test_full_disk_is_one_line_and_leaves_no_stale_index_nor_temporary_file(tmp_path):
    """300 KiB tmpfs: run 1 (patient A) completes; the disk is then filled; run 2 (patient B,
    same file name) into the same folder, then run 3 into a new folder on the full disk."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed for the full-disk test")
    for d in ("patientA", "patientB", "mnt", "copy"):
        (tmp_path / d).mkdir()
    shutil.copy(need(JSRT / "JPCLN001.png"), tmp_path / "patientA" / "film.png")
    shutil.copy(need(JSRT / "JPCLN002.png"), tmp_path / "patientB" / "film.png")
    mnt, copy = tmp_path / "mnt", tmp_path / "copy"
    ia = f"{sys.executable} -m imaging_assist analyze"
    script = (f"mount -t tmpfs -o size=300k tmpfs {mnt} || exit 9; "
              f"{ia} patientA --model cxr-lung-seg --out {mnt}/o >/dev/null 2>&1; echo RC1=$?; "
              f"cat /dev/zero > {mnt}/filler 2>/dev/null; "
              f"{ia} patientB --model cxr-lung-seg --out {mnt}/o; echo RC2=$?; echo ==== >&2; "
              f"mkdir {mnt}/o3; cat /dev/zero > {mnt}/filler2 2>/dev/null; "
              f"{ia} patientB --model cxr-lung-seg --out {mnt}/o3; echo RC3=$?; "
              f"rm -f {mnt}/filler {mnt}/filler2; cp -a {mnt}/. {copy}/")
    flags = [] if os.geteuid() == 0 else ["-r"]
    # run from tmp_path: `python -m` puts the current folder first on sys.path
    r = subprocess.run(["unshare", *flags, "-m", "sh", "-c", script], capture_output=True, text=True,
                       timeout=600, cwd=tmp_path, env=dict(os.environ))
    assert "RC1=0" in r.stdout, (r.stdout[-2000:], r.stderr[-2000:])
    err2, err3 = r.stderr.split("====\n")
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr[-3000:]
    # run 2: patient A's index and report are removed first (which frees their space); what does
    # not fit then is said in one line; whatever is left, no index describes patient A
    doc = copy / "o" / "results.json"
    assert not doc.exists() or "patientA" not in doc.read_text(), "patient A's results.json beside patient B's files"
    assert not (copy / "o" / "report.pdf").exists() or doc.exists()
    assert ("RC2=0" in r.stdout and doc.exists()) or ("RC2=1" in r.stdout and "No space left" in err2), \
        (r.stdout, err2)
    # run 3: nothing fits: each item one line, then results.json one line
    assert "RC3=1" in r.stdout, r.stdout
    said = [ln for ln in err3.splitlines() if "results.json" in ln]
    assert len(said) == 1 and said[0].startswith(f"error: cannot write {mnt}/o3/results.json: No space left on "
                                                 "device"), err3
    assert _leftovers(copy) == [], "temporary or zero-byte files left"
    assert sorted(p.name for p in (copy / "o3").iterdir()) == []


# ------------------------------------------------------------- --out beside a single input file
def test_out_equal_to_the_folder_of_a_single_input_file_is_refused(tmp_path, capsys):
    from imaging_assist.errors import UserError
    from imaging_assist.outputs import refuse_inside

    sf = tmp_path / "sf"
    sf.mkdir()
    shutil.copy(need(FILM), sf / "film.jpeg")
    (sf / "film_key.png").write_bytes(b"the user's own key image")
    (sf / "report.pdf").write_bytes(b"my own report")
    rc, so, err = _cli(["analyze", sf / "film.jpeg", "--model", "cxr-pneumonia", "--out", sf], capsys)
    assert rc != 0 and err.strip().startswith(f"error: --out {sf} is the folder of the input {sf / 'film.jpeg'}"), err
    assert len(err.strip().splitlines()) == 1
    assert (sf / "film_key.png").read_bytes() == b"the user's own key image"
    assert (sf / "report.pdf").read_bytes() == b"my own report"
    assert sorted(p.name for p in sf.iterdir()) == ["film.jpeg", "film_key.png", "report.pdf"]
    refuse_inside(sf / "out", [sf / "film.jpeg"])  # a sub-folder of its folder is fine
    (tmp_path / "ln").mkdir()
    (tmp_path / "ln" / "film.jpeg").symlink_to(sf / "film.jpeg")
    with pytest.raises(UserError):  # through a link: the folder it lies in too
        refuse_inside(sf, [tmp_path / "ln" / "film.jpeg"])


# ---------------------------------------------------------------------- report_PDF.dcm numbered
def test_the_encapsulated_pdf_is_never_replaced_by_a_second_run(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    shutil.copy(need(CR), src)
    (out / "dicom").mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (out / "dicom" / "report_PDF.dcm").symlink_to(victim)  # taken: the object goes to _2
    args = ["analyze", src, "--model", "cxr-pneumonia", "--research-override", "--dicom", "--out", out]
    rc, so, err = _cli(args, capsys)
    assert rc == 0, so + err
    assert victim.read_bytes() == b"keep me"
    first = (out / "dicom" / "report_PDF_2.dcm").read_bytes()
    rc, so, err = _cli(args, capsys)
    assert rc == 0, so + err
    assert (out / "dicom" / "report_PDF_2.dcm").read_bytes() == first, "replaced in place"
    import pydicom

    ds = pydicom.dcmread(out / "dicom" / "report_PDF_3.dcm")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1"
    assert victim.read_bytes() == b"keep me"
    assert _leftovers(out) == []
