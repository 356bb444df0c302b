"""Two small fixes of session 24.

(1) The training scripts of us-breast and path-lung-tissue build the card's sentence on
near-duplicate images across the splits from ``weights/<model>/split_duplicates.json``
(scripts/check_split_duplicates.py) with one shared function,
``imaging_assist.training.cards.split_duplicates_limitation``: applied to the shipped JSON with
the scripts' own arguments it gives exactly the sentence session 23 wrote into the shipped
cards, so a retrain keeps it (nothing is retrained here).

(2) ``imaging-assist pacs send`` sends a DICOM data set without File Meta header (the Fuji CR
test file, which ``analyze`` reads): read like the loader reads it, transfer syntax inferred the
loader's way (implicit VR little endian), meta built from the data set.  Sent to a real Orthanc
(the empty ``orthanc_sink`` of tests/_orthanc.py), which then holds the same pixels.  A bare file
without SOP Class/Instance UID stays refused, with one line saying why.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import requests

from _orthanc import orthanc_sink, write_pacs_json  # noqa: F401 - fixture (an empty Orthanc)
from conftest import DICOM, ROOT, need
from imaging_assist.models.registry import project_weights_dir

WEIGHTS = project_weights_dir()  # the weights of the tree under test
FUJI = DICOM / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm"  # no preamble, no File Meta
IMPLICIT_LE = "1.2.840.10008.1.2"


# --------------------------------------------------------------------------- (1) card sentence
def _script(name: str):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(ROOT / "scripts"))


@pytest.mark.parametrize("model,script", [("us-breast", "train_us_breast"),
                                          ("path-lung-tissue", "train_path_lung_tissue")])
def test_script_sentence_is_the_shipped_cards(model, script):
    from imaging_assist.training.cards import split_duplicates_limitation
    mod = _script(script)
    assert mod.MODEL_ID == model
    # the script builds the card's sentence with the shared function and its own arguments
    src = (ROOT / "scripts" / f"{script}.py").read_text(encoding="utf-8")
    assert "split_duplicates_limitation(out, MODEL_ID, t, **SPLIT_DUPLICATES)" in src
    test = json.loads((WEIGHTS / model / "metrics.json").read_text())["details"]["test"]
    got = split_duplicates_limitation(WEIGHTS / model, model, test, **mod.SPLIT_DUPLICATES)
    lims = json.loads((WEIGHTS / model / "model.json").read_text())["limitations"]
    (line,) = [t for t in lims if "split_duplicates.json" in t]
    assert got == line
    assert lims[-1] == line  # the scripts append it last, where the shipped card has it


def test_stale_or_missing_json_quotes_no_figures(tmp_path, capsys):
    """After a retrain the JSON describes the old predictions: the card then says to run the
    check instead of quoting figures of other weights (and the script prints why)."""
    from imaging_assist.training.cards import split_duplicates_limitation
    shutil.copy(WEIGHTS / "us-breast" / "split_duplicates.json", tmp_path)
    test = json.loads((WEIGHTS / "us-breast" / "metrics.json").read_text())["details"]["test"]
    ok = split_duplicates_limitation(tmp_path, "us-breast", test, data_set="BUSI", focus="malignant")
    assert "instead of" in ok
    stale = split_duplicates_limitation(tmp_path, "us-breast", {**test, "macro_auc": test["macro_auc"] + 0.01},
                                        data_set="BUSI", focus="malignant")
    assert "instead of" not in stale and "not checked for these weights" in stale
    assert "python scripts/check_split_duplicates.py us-breast" in stale
    assert "is from other predictions" in capsys.readouterr().err
    missing = split_duplicates_limitation(tmp_path / "nowhere", "us-breast", test)
    assert missing.startswith("Near-duplicate images across the splits were not checked")


# --------------------------------------------------------------------------- (2) pacs send
def _bare_copy(folder, drop=()):
    """The Fuji CR as it is on disk (no preamble, no meta), or re-written the same way without
    the attributes in ``drop``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "cr.dcm"
    if not drop:
        shutil.copy(need(FUJI), out)
    else:
        ds = pydicom.dcmread(need(FUJI), force=True)
        for k in drop:
            delattr(ds, k)
        ds.save_as(out, implicit_vr=True, little_endian=True)
    head = out.read_bytes()[:132]
    assert b"DICM" not in head and head[:2] == b"\x08\x00"  # a bare data set, group 0008 first
    return out


def _stored_file(o, sop_uid: str) -> pydicom.Dataset:
    (hit,) = o.rest("/tools/find", "POST", json={"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}})
    r = requests.get(f"{o.url}/instances/{hit}/file", auth=o.auth, timeout=60)
    r.raise_for_status()
    return pydicom.dcmread(io.BytesIO(r.content))


def _same_as_sent(got: pydicom.Dataset, src) -> None:
    want = pydicom.dcmread(src, force=True)
    assert got.file_meta.TransferSyntaxUID == IMPLICIT_LE
    assert got.file_meta.MediaStorageSOPClassUID == want.SOPClassUID
    assert got.file_meta.MediaStorageSOPInstanceUID == want.SOPInstanceUID
    assert got.PixelData == want.PixelData and len(got.PixelData) == 2 * want.Rows * want.Columns
    # every data element as sent (pydicom leaves out the retired group lengths gggg,0000)
    assert [t for t in want.keys() if t.element != 0 and want[t].value != got[t].value] == []


def test_cli_sends_a_file_without_file_meta(orthanc_sink, tmp_path):
    src = _bare_copy(tmp_path / "in")
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    cfg = tmp_path / "cfg"
    write_pacs_json(cfg, orthanc_sink)
    # the CLI of the tree under test (the package this test imports), whatever the directory
    import imaging_assist
    tree = str(Path(imaging_assist.__file__).resolve().parents[1])
    env = {**os.environ, "IMAGING_ASSIST_CONFIG_DIR": str(cfg),
           "PYTHONPATH": os.pathsep.join([tree] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    r = subprocess.run([sys.executable, "-m", "imaging_assist", "pacs", "send", str(src), "--node", "orthanc"],
                       capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env)
    assert r.returncode == 0, (r.stdout, r.stderr, orthanc_sink.log_tail())
    assert r.stdout.startswith("1 instances sent to ") and "confirmed by a query" in r.stdout
    assert "skipped" not in r.stderr and "Traceback" not in r.stderr
    _same_as_sent(_stored_file(orthanc_sink, pydicom.dcmread(src, force=True).SOPInstanceUID), src)
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before  # the source file is not changed


@pytest.mark.parametrize("proto", ["dimse", "dicomweb"])
def test_send_file_without_file_meta_and_the_temporary_copy_is_gone(orthanc_sink, tmp_path, monkeypatch, proto):
    import tempfile

    from imaging_assist.pacs import send as sendmod
    src = _bare_copy(tmp_path / "in")
    (item,), skipped = sendmod.collect([str(src)])
    assert skipped == [] and item.transfer_syntax == IMPLICIT_LE  # the loader's inference
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    node = orthanc_sink.dimse_node() if proto == "dimse" else orthanc_sink.web_node()
    res = sendmod.send(node, [str(src)], settings=orthanc_sink.settings())
    assert (res.sent, res.confirmed, res.failures, res.skipped) == (1, 1, [], []), res.to_dict()
    assert list(scratch.iterdir()) == []  # the Part 10 copy was removed
    _same_as_sent(_stored_file(orthanc_sink, item.sop_uid), src)


def test_file_without_meta_and_without_sop_uids_is_refused_in_one_line(orthanc_sink, tmp_path):
    from imaging_assist.pacs import send as sendmod
    from imaging_assist.pacs.nodes import PacsError
    bad = _bare_copy(tmp_path / "bad", drop=("SOPClassUID", "SOPInstanceUID"))
    with pytest.raises(PacsError) as e:
        sendmod.send(orthanc_sink.dimse_node(), [str(bad)], settings=orthanc_sink.settings())
    msg = str(e.value)
    assert "\n" not in msg and msg == f"nothing to send: {bad}: missing or invalid UIDs (SOP class/instance, " \
                                      "study, series)"
    # next to a good one: the good one goes, the bad one is skipped with its reason
    good = _bare_copy(tmp_path / "good")
    res = sendmod.send(orthanc_sink.dimse_node(), [str(good), str(bad)], settings=orthanc_sink.settings())
    assert (res.confirmed, res.failures) == (1, [])
    assert res.skipped == [(str(bad), "missing or invalid UIDs (SOP class/instance, study, series)")]
