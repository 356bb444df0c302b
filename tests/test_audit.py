"""The audit trail (issue 16): hash chain + seals + head record, tamper detection, concurrent
appends, crash recovery, pseudonymised identifiers, events from real runs, the CLI."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DICOM, ROOT, need

from imaging_assist.cli.main import main as cli_main
from imaging_assist.errors import UserError
from imaging_assist.privacy import audit, sitekey

CR = DICOM / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm"
PLANTED_NAME = "ZQXPLANTED^SECRETNAME"
PLANTED_ID = "PID-ZQX-778899"
PLANTED_ACC = "ACCZQX4455"
PLANTED_STUDY = "1.2.826.0.1.3680043.8.498.77001122334455"
PLANTED_SOP = "1.2.826.0.1.3680043.8.498.77001122334466"


@pytest.fixture()
def trail(tmp_path, monkeypatch):
    """A fresh config folder (site key) and data folder (audit log) for one test."""
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def _fill(n=5):
    for i in range(n):
        assert audit.record("test.event", i=i, patient_id=f"P{i}", study_uid=f"1.2.3.{i}")
    return audit.log_path()


def _lines(p: Path) -> list[bytes]:
    return p.read_bytes().splitlines()


def _write(p: Path, lines: list[bytes]) -> None:
    p.write_bytes(b"".join(x + b"\n" for x in lines))


# --------------------------------------------------------------------------- the chain
def test_lines_chain_from_genesis_and_verify(trail):
    p = _fill(5)
    assert p == trail / "data" / "audit" / "audit.jsonl"
    lines = _lines(p)
    assert len(lines) == 5
    prev = audit.GENESIS
    for i, raw in enumerate(lines, 1):
        obj = json.loads(raw)
        assert obj["seq"] == i and obj["prev"] == prev and obj["event"] == "test.event"
        assert obj["user"] and obj["host"] and obj["app"] and obj["time"].endswith("+00:00")
        assert obj["key"] == sitekey.key_fingerprint() and len(obj["mac"]) == 64
        prev = hashlib.sha256(raw).hexdigest()
    ok, line, reason = audit.verify()
    assert ok and line is None and f"head 5:{prev}" in reason
    assert oct(p.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("tamper, bad_line, words", [
    ("edit", 3, "altered"),
    ("edit_rechained", 3, "altered"),
    ("delete", 3, "deleted"),
    ("reorder", 2, "reordered"),
    ("truncate", 4, "cut off"),
    ("forge_append", 6, "altered"),
    ("forge_unsealed", 6, "no seal"),
    ("delete_first", 1, "deleted"),
    ("head_missing", 6, "missing"),
    ("head_forged", 5, "altered"),
    ("partial_tail", 6, "incomplete"),
])
def test_tampering_is_found_at_the_first_broken_line(trail, tamper, bad_line, words):
    p = _fill(5)
    lines = _lines(p)
    head = p.with_name(audit.HEAD_NAME)
    if tamper == "edit":
        lines[2] = lines[2].replace(b'"i":2', b'"i":9')
    elif tamper == "edit_rechained":  # edit, then recompute every later prev hash (no key)
        lines[2] = lines[2].replace(b'"i":2', b'"i":9')
        for k in range(3, 5):
            prev = hashlib.sha256(lines[k - 1]).hexdigest().encode()
            obj = json.loads(lines[k])
            lines[k] = lines[k].replace(obj["prev"].encode(), prev)
    elif tamper == "delete":
        del lines[2]
    elif tamper == "delete_first":
        del lines[0]
    elif tamper == "reorder":
        lines[1], lines[2] = lines[2], lines[1]
    elif tamper == "truncate":
        lines = lines[:3]
    elif tamper in ("forge_append", "forge_unsealed"):
        # a line that follows the chain exactly, but written without the site key
        body = {"seq": 6, "time": "2026-12-04T23:59:00+00:00", "user": "mallory", "host": "h", "pid": 1,
                "app": "0.1.0", "event": "study.open", "fields": {}, "key": sitekey.key_fingerprint(),
                "prev": hashlib.sha256(lines[-1]).hexdigest()}
        if tamper == "forge_append":
            body["mac"] = hashlib.sha256(b"guess").hexdigest()
        lines.append(json.dumps(body, separators=(",", ":")).encode())
    elif tamper == "head_missing":
        head.unlink()
    elif tamper == "head_forged":  # cut the tail and rewrite the head to match, without the key
        lines = lines[:4]
        h = json.loads(head.read_bytes())
        h.update(lines=4, sha256=hashlib.sha256(lines[3]).hexdigest())
        head.write_text(json.dumps(h, separators=(",", ":")))
    if tamper == "partial_tail":
        with open(p, "ab") as f:
            f.write(b'{"seq":6,"time":"2026-')
    elif tamper != "head_missing":
        _write(p, lines)
    ok, line, reason = audit.verify()
    assert not ok and line == bad_line and words in reason, reason
    assert "\n" not in reason
    # the command: exit 2, one line naming the line
    assert cli_main(["audit", "verify"]) == 2


def test_deleting_or_restarting_the_whole_trail_is_found(trail):
    _fill(3)
    for f in audit.audit_dir().iterdir():  # the whole audit folder, head included
        f.unlink()
    ok, line, reason = audit.verify()
    assert not ok and line == 1 and "deleted" in reason
    _fill(2)  # a fresh trail in its place
    ok, line, reason = audit.verify()
    assert not ok and line == 1 and "started again" in reason
    first = audit.read_entries()[0]
    assert first["event"] == "audit.restarted" and first["fields"]["previous_start"]
    # the start note itself edited (to hide the restart): said, and never overwritten
    note = audit._starts_path()
    note.write_bytes(note.read_bytes().replace(b'"first_line_sha256":"', b'"first_line_sha256":"0'))
    ok, line, reason = audit.verify()
    assert not ok and "start note" in reason and "altered" in reason


def test_cli_verify_one_line_naming_the_broken_line(trail):
    p = _fill(4)
    lines = _lines(p)
    del lines[1]
    _write(p, lines)
    r = subprocess.run([sys.executable, "-m", "imaging_assist", "audit", "verify"], capture_output=True,
                       text=True, env=dict(os.environ), timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: audit trail broken at line 2:"), r.stderr


def test_cli_show_path_and_anchor(trail, capsys):
    _fill(3)
    assert cli_main(["audit", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(audit.log_path())
    assert cli_main(["audit", "verify"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("audit trail OK: 3 lines")
    anchor = out.split("head ")[1].strip()
    assert cli_main(["audit", "show", "--json"]) == 0
    shown = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [o["seq"] for o in shown] == [1, 2, 3]
    assert cli_main(["audit", "show", "--patient", "P1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].split()[0] == "2" and "test.event" in out[0]
    assert cli_main(["audit", "show", "--since", "2999-01-01"]) == 0
    assert capsys.readouterr().out == ""
    assert cli_main(["audit", "show", "--since", "yesterday"]) == 2
    # a consistent rewrite by a key holder (here: a brand-new trail) is caught by an anchor kept elsewhere
    for f in audit.audit_dir().iterdir():
        f.unlink()
    audit._starts_path().unlink()  # the start note in the config folder too
    _fill(3)
    assert audit.verify()[0]
    ok, line, reason = audit.verify(anchor=anchor)
    assert not ok and line == 3 and "anchor" in reason
    assert cli_main(["audit", "verify", "--anchor", anchor]) == 2


def test_a_new_site_key_is_named_not_called_tampering(trail):
    _fill(2)
    sitekey.key_path().unlink()
    sitekey._cache.clear()
    ok, line, reason = audit.verify()  # no key: chain only, said
    assert ok and "seals not checked" in reason
    sitekey.site_key()  # a new key
    ok, line, reason = audit.verify()
    assert not ok and line == 1 and "another site key" in reason


# --------------------------------------------------------------------------- writing
def test_concurrent_appends_from_processes_keep_the_chain(trail):
    code = ("import sys\nfrom imaging_assist.privacy import audit\n"
            "for i in range(30):\n    assert audit.record('proc', worker=int(sys.argv[1]), i=i)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(w)], env=dict(os.environ), cwd=str(ROOT))
             for w in range(4)]
    import threading
    threads = [threading.Thread(target=lambda: [audit.record("thread", i=i) for i in range(20)])
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(p.wait(120) == 0 for p in procs)
    ok, line, reason = audit.verify()
    assert ok, reason
    entries = audit.read_entries()
    assert len(entries) == 4 * 30 + 2 * 20
    assert [e["seq"] for e in entries] == list(range(1, 161))
    per_worker = {}
    for e in entries:
        if e["event"] == "proc":
            per_worker.setdefault(e["fields"]["worker"], []).append(e["fields"]["i"])
    assert per_worker == {w: list(range(30)) for w in range(4)}
    # one site key, created once although five processes raced for it
    assert len({e["key"] for e in entries}) == 1


def test_an_interrupted_line_is_cut_off_and_recorded(trail):
    p = _fill(3)
    with open(p, "ab") as f:
        f.write(b'{"seq":4,"half a li')
    ok, line, reason = audit.verify()
    assert not ok and line == 4 and "incomplete" in reason
    assert audit.record("after.crash", n=1)
    ok, line, reason = audit.verify()
    assert ok, reason
    entries = audit.read_entries()
    assert [e["event"] for e in entries[-2:]] == ["audit.recovered", "after.crash"]
    assert entries[-2]["fields"]["fragment_bytes"] == len(b'{"seq":4,"half a li')
    kept = audit.audit_dir() / entries[-2]["fields"]["kept_as"]
    assert kept.read_bytes() == b'{"seq":4,"half a li'  # set aside, never deleted


def test_odd_values_and_huge_fields_are_still_recorded(trail):
    import numpy as np

    assert audit.record("x", p=float("nan"), q=np.float32("inf"), n=np.int64(3))
    assert audit.record("big", text="x" * 200_000)
    a, b = audit.read_entries()
    assert a["fields"] == {"p": "nan", "q": "inf", "n": 3}
    assert b["fields"]["too_large"] and b["fields"]["bytes"] > 200_000 and len(b["fields"]["sha256"]) == 64
    assert audit.verify()[0]


def test_a_failing_write_never_raises_into_the_caller(trail, caplog):
    (trail / "data").mkdir()
    (trail / "data" / "audit").write_text("a file where the audit folder should be")
    audit._warned.clear()
    with caplog.at_level(logging.WARNING, logger="imaging_assist.audit"):
        assert audit.record("study.open", patient_id="X") is False
        assert audit.record("study.open", patient_id="Y") is False
    msgs = [r.getMessage() for r in caplog.records if r.name == "imaging_assist.audit"]
    assert len(msgs) == 1 and "not recorded" in msgs[0] and "\n" not in msgs[0]


def test_identifiers_are_keyed_pseudonyms(trail):
    assert audit.record("x", patient_id=PLANTED_ID, patient_name=PLANTED_NAME, accession_number=PLANTED_ACC,
                        study_uid=PLANTED_STUDY, instance_uids=[PLANTED_SOP], path=f"/data/{PLANTED_NAME}/a.dcm",
                        many_uids=[f"1.2.{i}" for i in range(40)], modality="CT")
    raw = audit.log_path().read_bytes()
    for s in (PLANTED_ID, PLANTED_NAME, "SECRETNAME", PLANTED_ACC, PLANTED_STUDY, PLANTED_SOP, "1.2.39"):
        assert s.encode() not in raw, s
    f = audit.read_entries()[0]["fields"]
    assert f["modality"] == "CT"
    pid = audit.pseudonym(PLANTED_ID, "patient-id")
    assert f["patient_id"] == pid == sitekey.pseudonym(PLANTED_ID, "audit:patient-id")
    assert f["patient_id"] != sitekey.pseudonym(PLANTED_ID, "patient-id")  # unlinkable to de-id exports
    assert f["study_uid"] == audit.pseudonym(PLANTED_STUDY, "uid")
    assert f["instance_uids"] == [audit.pseudonym(PLANTED_SOP, "uid")]
    assert f["many_uids"]["count"] == 40 and len(f["many_uids"]["set"]) == 32


def test_xdg_data_and_config_homes_are_honoured(tmp_path, monkeypatch):
    monkeypatch.delenv("IMAGING_ASSIST_DATA_DIR", raising=False)
    monkeypatch.delenv("IMAGING_ASSIST_CONFIG_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    assert audit.record("x", n=1)
    assert (tmp_path / "xdg-data" / "imaging-assist" / "audit" / "audit.jsonl").is_file()
    key = tmp_path / "xdg-config" / "imaging-assist" / "site.key"
    assert key.is_file() and oct(key.stat().st_mode & 0o777) == "0o600"
    r = subprocess.run([sys.executable, "-m", "imaging_assist", "audit", "path"], capture_output=True, text=True,
                       env=dict(os.environ), timeout=60)
    assert r.stdout.strip() == str(tmp_path / "xdg-data" / "imaging-assist" / "audit" / "audit.jsonl")


def test_site_key_is_stable_private_and_a_damaged_one_is_refused(trail):
    k = sitekey.site_key()
    assert len(k) == 32 and sitekey.site_key() == k
    assert oct(sitekey.key_path().stat().st_mode & 0o777) == "0o600"
    a = sitekey.pseudonym("PAT1", "patient-id")
    assert a == sitekey.pseudonym("PAT1 ", "patient-id") and a != sitekey.pseudonym("PAT1", "uid")
    sitekey._cache.clear()
    assert sitekey.pseudonym("PAT1", "patient-id") == a  # read back from the file
    sitekey.key_path().write_text("not a key\n")
    sitekey._cache.clear()
    with pytest.raises(UserError, match="damaged"):
        sitekey.site_key()
    assert audit.record("x") is False  # the audit goes on without raising


# --------------------------------------------------------------------------- real events
@pytest.fixture()
def planted_cr(tmp_path):
    """The public CR chest image with a planted patient name/ID, accession, study and instance UID,
    in a folder named after the patient (paths must not leak either)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.dcmread(str(need(CR)), force=True)
    ds.PatientName, ds.PatientID, ds.AccessionNumber = PLANTED_NAME, PLANTED_ID, PLANTED_ACC
    ds.StudyInstanceUID, ds.SOPInstanceUID = PLANTED_STUDY, PLANTED_SOP
    ds.ViewPosition = "AP"  # the view cxr-pneumonia was trained on (the file says PA)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = PLANTED_SOP
    d = tmp_path / "SECRETNAME_study"
    d.mkdir()
    out = d / "chest.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def _assert_no_phi(raw: bytes, *extra: str):
    for s in (PLANTED_NAME, "SECRETNAME", PLANTED_ID, PLANTED_ACC, PLANTED_STUDY, PLANTED_SOP, *extra):
        assert s.encode() not in raw, f"{s} in the audit log"


@pytest.mark.slow
def test_analyze_records_open_run_and_exports_without_phi(trail, planted_cr):
    from imaging_assist.models.registry import Registry

    out = trail / "out"
    rc = cli_main(["analyze", str(planted_cr), "--model", "cxr-pneumonia", "--device", "cpu", "--dicom",
                   "--out", str(out)])
    assert rc == 0
    ok, _, reason = audit.verify()
    assert ok, reason
    entries = audit.read_entries()
    events = [e["event"] for e in entries]
    assert events[:2] == ["study.index", "study.open"] and "model.run" in events
    idx = entries[0]["fields"]
    assert idx["patient_ids"] == [audit.pseudonym(PLANTED_ID, "patient-id")] and idx["files"] == 1
    run = next(e["fields"] for e in entries if e["event"] == "model.run")
    card = Registry().get("cxr-pneumonia").card
    assert run["model"] == "cxr-pneumonia" and run["model_version"] == card.version
    assert run["weights_sha256"] == {w.file: w.sha256 for w in card.weights}
    assert run["patient_id"] == audit.pseudonym(PLANTED_ID, "patient-id")
    assert run["study_uid"] == audit.pseudonym(PLANTED_STUDY, "uid")
    assert run["instance_uids"] == [audit.pseudonym(PLANTED_SOP, "uid")]
    assert len(run["outputs_sha256"]) == 64 and set(run["probabilities"]) == {"normal", "pneumonia"}
    assert run["decision"]["pneumonia"] in ("positive", "review", "negative", "withheld")
    doc = json.loads((out / "results.json").read_text())
    assert abs(run["probabilities"]["pneumonia"] - doc["items"][0]["probabilities"]["pneumonia"]) < 1e-3
    exports = {e["fields"]["kind"]: e["fields"] for e in entries if e["event"] == "export"}
    assert {"results.json", "report-pdf", "SR"} <= set(exports)
    # the sha256 recorded is that of the bytes on disk
    assert exports["results.json"]["sha256"] == hashlib.sha256((out / "results.json").read_bytes()).hexdigest()
    assert exports["report-pdf"]["sha256"] == hashlib.sha256((out / "report.pdf").read_bytes()).hexdigest()
    _assert_no_phi(audit.log_path().read_bytes(), str(trail))
    # the auditor finds this patient's events with the key, never seeing the ID in the log
    r = subprocess.run([sys.executable, "-m", "imaging_assist", "audit", "show", "--patient", PLANTED_ID],
                       capture_output=True, text=True, env=dict(os.environ), timeout=60)
    assert r.returncode == 0 and "study.open" in r.stdout and "model.run" in r.stdout
    # results.json names only series: its export event carries the patient too (found by --patient)
    assert exports["results.json"]["patient_ids"] == [audit.pseudonym(PLANTED_ID, "patient-id")]
    assert "results.json" in r.stdout


def test_info_and_view_screenshot_record_the_study_open(trail, planted_cr):
    assert cli_main(["info", str(planted_cr)]) == 0
    shot = trail / "shot.png"
    r = subprocess.run([sys.executable, "-m", "imaging_assist_ui", "view", str(planted_cr),
                        "--screenshot", str(shot)],
                       capture_output=True, text=True, env=dict(os.environ, QT_QPA_PLATFORM="offscreen"),
                       timeout=180)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    opens = [e for e in audit.read_entries() if e["event"] == "study.open"]
    assert len(opens) >= 2  # info's and the viewer's
    pids = {e["pid"] for e in opens}
    assert len(pids) >= 2 and os.getpid() in pids
    for e in opens:
        assert e["fields"]["patient_id"] == audit.pseudonym(PLANTED_ID, "patient-id")
        assert e["fields"]["modality"] == "CR"
    assert audit.verify()[0]
    _assert_no_phi(audit.log_path().read_bytes(), str(trail))


def test_pacs_transfers_are_recorded_without_identifiers(trail):
    from imaging_assist.pacs.send import SendResult
    from imaging_assist.pacs.transfer import Failure, TransferResult

    got = TransferResult(out_dir=str(trail / "SECRETNAME"), study_uid=PLANTED_STUDY, method="C-GET",
                         expected=4, written=3, failures=[Failure(PLANTED_SOP, "timeout")],
                         notes=[f"{PLANTED_SOP} retried"])
    assert audit.record_transfer("retrieve", got)
    sent = SendResult("ORTHANC@127.0.0.1:4242", sent=2, confirmed=2,
                      failures=[(f"/data/SECRETNAME/{PLANTED_SOP}.dcm", "refused")])
    assert audit.record_transfer("send", sent, study_uids=[PLANTED_STUDY])
    _assert_no_phi(audit.log_path().read_bytes(), str(trail))
    r, s = audit.read_entries()
    assert r["event"] == "pacs.retrieve" and s["event"] == "pacs.send"
    assert r["fields"]["study_uid"] == audit.pseudonym(PLANTED_STUDY, "uid")
    assert (r["fields"]["written"], r["fields"]["failures"], r["fields"]["method"]) == (3, 1, "C-GET")
    assert s["fields"]["node"] == "ORTHANC@127.0.0.1:4242" and s["fields"]["failures"] == 1
    assert s["fields"]["study_uids"] == [audit.pseudonym(PLANTED_STUDY, "uid")]
    assert audit.verify()[0]


def test_a_field_named_event_does_not_break_the_call(trail):
    assert audit.record("drift_alert", event="x", model_id="cxr-pneumonia")
    assert audit.read_entries()[0]["fields"] == {"event": "x", "model_id": "cxr-pneumonia"}


def test_opening_a_slide_or_a_plain_image_is_recorded(trail):
    from PIL import Image

    from imaging_assist.inference.images import read_image
    from imaging_assist.slides.reader import open_slide

    svs = need(DICOM.parent / "pathology" / "wsi_aperio_cmu1_small_region" / "CMU-1-Small-Region.svs")
    with open_slide(svs):
        pass
    png = trail / "SECRETNAME.png"
    Image.fromarray(__import__("numpy").zeros((8, 8), "uint8")).save(png)
    read_image(png)
    opens = [e["fields"] for e in audit.read_entries() if e["event"] == "study.open"]
    assert [(f["kind"], f["path"]) for f in opens] == [("slide", audit.pseudonym(str(svs), "path")),
                                                      ("image", audit.pseudonym(str(png), "path"))]
    assert opens[0]["backend"]
    _assert_no_phi(audit.log_path().read_bytes(), str(trail), "CMU-1")


def test_an_overlong_line_is_reported_with_bounded_memory(trail):
    p = _fill(2)
    with open(p, "ab") as f:
        f.write(b"x" * (3 * audit.MAX_LINE) + b"\n")
    ok, line, reason = audit.verify()
    assert not ok and line == 3 and "longer than" in reason
    assert audit.read_entries()[2] is None
    with open(p, "ab") as f:  # a tail with no line end at all, larger than any torn line of ours
        f.write(b"y" * (audit.MAX_FRAGMENT + 2 * audit.MAX_LINE))
    size = p.stat().st_size
    assert audit.record("after") is False  # refused, the file is left as it is
    assert p.stat().st_size == size


def test_a_real_pacs_send_and_retrieve_are_recorded_without_identifiers(trail, planted_cr, tmp_path_factory):
    """A real Orthanc (its own, so the PACS tests' peer keeps its studies): C-STORE the planted
    image, C-GET it back; both transfers are in the trail with the peer, never with the IDs."""
    from _orthanc import _start

    from imaging_assist.pacs import api
    from imaging_assist.pacs.send import send

    o = _start(tmp_path_factory, "orthanc-audit")
    try:
        node = o.dimse_node()
        sent = send(node, [str(planted_cr)], o.settings())
        assert sent.confirmed == 1, sent.to_dict()
        inbox = trail / "SECRETNAME_inbox"
        got = api.get(node, PLANTED_STUDY, inbox, method="get", settings=o.settings())
        assert got.written == 1 and not got.failures
    finally:
        o.stop()
    ev = {e["event"]: e["fields"] for e in audit.read_entries() if e["event"].startswith("pacs.")}
    assert set(ev) == {"pacs.send", "pacs.retrieve"}
    assert ev["pacs.send"]["confirmed"] == 1 and ev["pacs.send"]["node"] == node.label()
    assert ev["pacs.send"]["study_uids"] == [audit.pseudonym(PLANTED_STUDY, "uid")]  # which study left
    r = ev["pacs.retrieve"]
    assert (r["written"], r["failures"], r["method"], r["node"]) == (1, 0, "get", node.label())
    assert r["study_uid"] == audit.pseudonym(PLANTED_STUDY, "uid")
    assert audit.verify()[0]
    _assert_no_phi(audit.log_path().read_bytes(), str(trail))


def test_de_identification_is_recorded_without_identifiers(trail, planted_cr):
    out = trail / "deid_out"
    assert cli_main(["anonymize", str(planted_cr.parent), str(out)]) == 0
    (e,) = [e["fields"] for e in audit.read_entries() if e["event"] == "deidentify"]
    assert e["files_written"] == 1 and e["files_left_out"] == 0
    assert e["patient_ids"] == [audit.pseudonym(PLANTED_ID, "patient-id")]
    assert e["study_uids"] == [audit.pseudonym(PLANTED_STUDY, "uid")]
    assert e["key_fingerprint"] == sitekey.key_fingerprint()
    assert audit.verify()[0]
    _assert_no_phi(audit.log_path().read_bytes(), str(trail))


def test_batch_results_json_export_names_the_patient(trail, planted_cr):
    """A batch item's results.json names only its series: the export event carries the patient,
    so ``audit show --patient`` finds what was written about them."""
    src = trail / "in"
    src.mkdir()
    shutil.copy(planted_cr, src / "film.dcm")
    rc = cli_main(["batch", str(src), "--model", "cxr-pneumonia", "--out", str(trail / "batch"), "--json"])
    assert rc == 0
    exports = [e["fields"] for e in audit.read_entries() if e["event"] == "export"
               and e["fields"]["kind"] == "results.json"]
    assert len(exports) == 1
    assert exports[0]["patient_ids"] == [audit.pseudonym(PLANTED_ID, "patient-id")]
    _assert_no_phi(audit.log_path().read_bytes(), str(trail))
