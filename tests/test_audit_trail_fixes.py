"""Audit-trail fixes (the audit of the trail itself, /tmp/audit_trail/attacks):

1. a cut tail, a deleted newest part + live log, or a deleted/damaged head is no longer hidden
   by the program's own next event: the append records the damage (``audit.tail_missing`` /
   ``audit.head_missing``) and ``verify`` reports it for good; a cut line the head had counted
   is not filed as an innocent ``audit.recovered``;
2. ``audit verify`` exits 2 when the site key is missing for a trail sealed with one;
3. ``audit show --patient/--uid`` also finds the events of a ``--deidentify`` analysis;
4. a full disk leaves no stray fragment copies; ``audit show`` on a destroyed log is an error;
   a malformed ``--anchor`` is a usage error.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DICOM, need

from imaging_assist.cli.main import main as cli_main
from imaging_assist.privacy import audit, sitekey

PLANTED_ID = "PID-ZQX-445566"
PLANTED_STUDY = "1.2.826.0.1.3680043.8.498.77009988776655"


@pytest.fixture()
def trail(tmp_path, monkeypatch):
    """A fresh config folder (site key) and data folder (audit log) for one test."""
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("IMAGING_ASSIST_AUDIT_ROTATE_BYTES", raising=False)
    return tmp_path


def _fill(n, start=0):
    for i in range(start, start + n):
        assert audit.record("test.event", i=i, patient_id=f"P{i}", study_uid=f"1.2.3.{i}")
    return audit.log_path()


def _lines(p: Path) -> list[bytes]:
    return p.read_bytes().splitlines(keepends=True)


def _head() -> dict:
    return json.loads(audit.head_path().read_bytes())


def _events() -> list[str]:
    return [e["event"] for e in audit.read_entries()]


def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "imaging_assist", *args], capture_output=True, text=True,
                       env=dict(os.environ), timeout=120)
    return r.returncode, r.stdout, r.stderr


# --------------------------------------------------------------------------- 1. no quiet re-seal
def test_a_cut_tail_stays_reported_after_the_next_event(trail):
    p = _fill(7)
    old = _head()
    p.write_bytes(b"".join(_lines(p)[:2]))  # lines 3-7 cut off (no key needed)
    ok, line, reason = audit.verify()
    assert not ok and line == 3 and "lines 3-7 missing" in reason
    assert audit.record("study.index", path="/elsewhere")  # any later event of the program
    ok, line, reason = audit.verify()
    assert not ok and line == 3, reason
    assert "cut off before it was written" in reason and "lines 3-7 of the earlier trail are missing" in reason
    assert f"head 7:{old['sha256'][:16]}" in reason and "the trail holds after it (4 lines" in reason
    e = audit.read_entries()[2]
    assert e["event"] == "audit.tail_missing"
    assert (e["fields"]["head_lines"], e["fields"]["head_sha256"], e["fields"]["lines_found"]) == (7, old["sha256"], 2)
    # and for good: more events do not heal it, the command exits 2 with one line
    _fill(3)
    assert audit.verify()[:2] == (False, 3)
    rc, out, err = _cli("audit", "verify")
    assert rc == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: audit trail broken at line 3: line 3 records that the trail had been cut off")
    # a later cut is still found, named after the recorded one
    p.write_bytes(b"".join(_lines(p)[:5]))
    ok, line, reason = audit.verify()
    assert not ok and line == 3 and "after it: the log ends at line 5 but 7 lines were written" in reason


def test_a_cut_tail_plus_a_garbage_byte_is_tampering_not_a_recovered_crash(trail):
    p = _fill(6)
    p.write_bytes(b"".join(_lines(p)[:4]) + b"x")  # lines 5-6 cut, one byte to look like a torn write
    assert audit.record("study.open", patient_id="SOMEONE")
    assert "audit.recovered" not in _events()
    e = audit.read_entries()[4]
    assert e["event"] == "audit.tail_missing" and e["fields"]["head_lines"] == 6
    frag = e["fields"]["fragment"]
    assert frag["fragment_bytes"] == 1 and "counted by the head" in frag["reason"]
    assert (audit.audit_dir() / frag["kept_as"]).read_bytes() == b"x"  # set aside, never deleted
    ok, line, reason = audit.verify()
    assert not ok and line == 5 and "lines 5-6 of the earlier trail are missing" in reason
    assert "were kept as audit.fragment." in reason


def test_a_line_torn_by_a_crash_is_still_recovered_but_a_counted_one_is_not(trail):
    p = _fill(3)
    with open(p, "ab") as f:  # a crash mid-write: the head never counted line 4
        f.write(b'{"seq":4,"half')
    assert audit.record("after.crash")
    assert _events()[3:] == ["audit.recovered", "after.crash"] and audit.verify()[0]
    # the same bytes at the end of a line the head did count: cut, not torn
    lines = _lines(p)
    p.write_bytes(b"".join(lines[:-1]) + lines[-1][:20])
    assert audit.record("after.cut")
    assert _events()[4:] == ["audit.tail_missing", "after.cut"]
    assert audit.verify()[:2] == (False, 5)


def test_deleting_the_newest_part_and_the_live_log_stays_reported(trail, monkeypatch):
    monkeypatch.setenv("IMAGING_ASSIST_AUDIT_ROTATE_BYTES", "4096")
    _fill(40)
    a, b, newest = audit.parts()[-1]
    os.chmod(newest, 0o600)
    newest.unlink()
    audit.log_path().unlink(missing_ok=True)
    assert audit.record("study.open", patient_id="SOMEONE")
    ok, line, reason = audit.verify()
    assert not ok and line == a, reason
    assert "the head counted 40 lines" in reason and f"lines {a}-40 of the earlier trail are missing" in reason
    assert audit.read_entries()[a - 1]["event"] == "audit.tail_missing"


@pytest.mark.parametrize("damage", ["deleted", "garbage", "reforged"])
def test_a_deleted_or_damaged_head_is_recorded_not_resealed(trail, damage):
    p = _fill(6)
    h = audit.head_path()
    if damage == "deleted":
        h.unlink()
    elif damage == "garbage":
        h.write_bytes(b"\x00" * 256)
    else:  # the tail cut and the head rewritten to match, without the key
        p.write_bytes(b"".join(_lines(p)[:4]))
        d = _head()
        d.update(lines=4, sha256=hashlib.sha256(_lines(p)[3][:-1]).hexdigest())
        h.write_text(json.dumps(d, separators=(",", ":")))
    assert audit.record("study.open", patient_id="X")
    n = 5 if damage == "reforged" else 7
    e = audit.read_entries()[n - 1]
    assert e["event"] == "audit.head_missing" and e["fields"]["lines_found"] == n - 1
    ok, line, reason = audit.verify()
    assert not ok and line == n and "head record was missing or damaged when it was written" in reason, reason
    assert "\n" not in reason
    assert cli_main(["audit", "verify"]) == 2


def test_a_replaced_last_line_is_recorded_not_resealed(trail):
    """Line 8 swapped for another sealed line 8 (from a replayed branch of the same trail)."""
    p = _fill(7)
    folder = audit.audit_dir()
    saved = trail / "saved"
    shutil.copytree(folder, saved)
    _fill(1, start=100)
    branch = p.read_bytes()
    shutil.rmtree(folder)
    shutil.copytree(saved, folder)
    _fill(1, start=200)  # the head now seals this line 8
    p.write_bytes(branch)
    ok, line, reason = audit.verify()
    assert not ok and line == 8 and "tail was replaced" in reason
    assert audit.record("study.open", patient_id="X")
    ok, line, reason = audit.verify()
    assert not ok and line == 9 and "tail was replaced" in reason, reason
    assert audit.read_entries()[8]["event"] == "audit.tail_missing"


# --------------------------------------------------------------------------- 2. no key, no OK
def test_verify_exits_2_when_the_site_key_of_a_sealed_trail_is_missing(trail, capsys):
    p = _fill(5)
    # an edit re-chained without the key, then the key moved away and the head patched
    lines = [json.loads(x) for x in p.read_bytes().splitlines()]
    raw = p.read_bytes().splitlines()
    lines[2]["fields"]["i"] = 99
    raw[2] = json.dumps(lines[2], separators=(",", ":")).encode()
    for k in (3, 4):
        lines[k]["prev"] = hashlib.sha256(raw[k - 1]).hexdigest()
        raw[k] = json.dumps(lines[k], separators=(",", ":")).encode()
    p.write_bytes(b"".join(x + b"\n" for x in raw))
    sitekey.key_path().rename(trail / "site.key.hidden")
    sitekey._cache.clear()
    h = audit.head_path()
    d = _head()
    d["sha256"] = hashlib.sha256(raw[4]).hexdigest()
    h.write_text(json.dumps(d, separators=(",", ":")))
    assert cli_main(["audit", "verify"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "seals cannot be checked: the site key is missing" in err
    assert not sitekey.key_path().exists()  # verify never creates a new key
    ok, _line, reason = audit.verify(require_key=True)
    assert not ok and reason.startswith(audit.KEY_MISSING)
    # with the key back, the edit is found again
    (trail / "site.key.hidden").rename(sitekey.key_path())
    ok, line, reason = audit.verify()
    assert not ok and line == 3 and "altered" in reason


def test_verify_without_key_and_without_trail_is_still_ok(trail, capsys):
    assert cli_main(["audit", "verify"]) == 0
    assert "no audit trail yet" in capsys.readouterr().out
    _fill(2)
    sitekey.key_path().unlink()
    sitekey._cache.clear()
    assert cli_main(["audit", "verify"]) == 2  # sealed here: not OK without the key
    assert "audit trail not verified: seals cannot be checked" in capsys.readouterr().err


# --------------------------------------------------------------------------- 3. show --patient
CR = DICOM / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm"


@pytest.fixture()
def planted_cr(tmp_path):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.dcmread(str(need(CR)), force=True)
    ds.PatientName, ds.PatientID = "ZQXPLANTED^SECRET", PLANTED_ID
    ds.StudyInstanceUID = PLANTED_STUDY
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    d = tmp_path / "study"
    d.mkdir()
    out = d / "chest.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def test_show_patient_and_uid_find_the_events_of_a_deidentified_copy(trail, planted_cr, capsys):
    from imaging_assist.privacy.deid import deidentified_input

    copy = deidentified_input(planted_cr)  # what analyze --deidentify opens and runs on
    assert cli_main(["info", copy]) == 0
    opens = [e for e in audit.read_entries() if e["event"] == "study.open"]
    assert opens and opens[0]["fields"]["patient_id"] != audit.pseudonym(PLANTED_ID, "patient-id")
    capsys.readouterr()
    assert cli_main(["audit", "show", "--patient", PLANTED_ID]) == 0
    out = capsys.readouterr().out
    assert "deidentify" in out and "study.index" in out and "study.open" in out
    assert cli_main(["audit", "show", "--uid", PLANTED_STUDY]) == 0
    out = capsys.readouterr().out
    assert "deidentify" in out and "study.open" in out
    assert cli_main(["audit", "show", "--patient", "SOMEONE-ELSE"]) == 0
    assert capsys.readouterr().out == ""
    assert opens[0]["fields"]["patient_id"] in audit.patient_pseudonyms(PLANTED_ID)
    assert opens[0]["fields"]["study_uid"] in audit.uid_pseudonyms(PLANTED_STUDY)


# --------------------------------------------------------------------------- 4. small ones
@pytest.mark.parametrize("fails", ["fragment copy", "log write"])
def test_a_full_disk_leaves_no_stray_fragment_copies_and_loses_nothing(trail, monkeypatch, fails):
    p = _fill(3)
    with open(p, "ab") as f:
        f.write(b'{"seq":4,"torn')
    before = p.read_bytes()
    real = os.write
    target = "audit.fragment." if fails == "fragment copy" else audit.LOG_NAME

    def full(fd, data):  # the disk is full for new lines (putting freed bytes back still fits)
        if (os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(target)
                and (fails == "fragment copy" or b"while.full" in bytes(data))):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", full)
    for _ in range(3):
        assert audit.record("while.full") is False
    monkeypatch.setattr(os, "write", real)
    assert not list(audit.audit_dir().glob("audit.fragment.*"))
    assert p.read_bytes() == before  # the torn tail is still where it was
    assert audit.record("after.free")
    assert _events()[3:] == ["audit.recovered", "after.free"] and audit.verify()[0]
    kept = list(audit.audit_dir().glob("audit.fragment.*"))
    assert len(kept) == 1 and kept[0].read_bytes() == b'{"seq":4,"torn'


@pytest.mark.parametrize("damage", ["random bytes", "a directory", "deleted", "emptied"])
def test_show_on_a_destroyed_log_is_an_error_not_an_empty_trail(trail, capsys, damage):
    assert cli_main(["audit", "show"]) == 0  # nothing yet: that is fine
    assert "no audit events recorded yet" in capsys.readouterr().err
    p = _fill(3)
    audit.head_path().unlink()
    if damage == "random bytes":
        p.write_bytes(bytes(random.Random(7).randrange(256) for _ in range(5000)))
    elif damage == "a directory":
        p.unlink()
        p.mkdir()
    elif damage == "deleted":
        p.unlink()
    else:
        p.write_bytes(b"")
    assert cli_main(["audit", "show"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: audit trail broken at line 1:"), err
    assert "recorded yet" not in err


def test_a_malformed_anchor_is_a_usage_error(trail, capsys):
    _fill(2)
    with pytest.raises(SystemExit) as e:
        cli_main(["audit", "verify", "--anchor", "5:zz"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --anchor" in err and "audit trail broken" not in err and err.count("\n") == 1
    assert cli_main(["audit", "verify"]) == 0
    anchor = capsys.readouterr().out.split("head ")[1].strip()
    assert cli_main(["audit", "verify", "--anchor", anchor]) == 0
    assert cli_main(["audit", "verify", "--anchor", "2:" + "0" * 64]) == 2
    assert "differs from the anchor" in capsys.readouterr().err


def test_show_patient_without_the_site_key_never_makes_a_new_one(trail, capsys):
    _fill(2)
    sitekey.key_path().unlink()
    sitekey._cache.clear()
    assert cli_main(["audit", "show", "--patient", "P1"]) == 2
    err = capsys.readouterr().err
    assert "site key" in err and "missing" in err and err.count("\n") == 1
    assert not sitekey.key_path().exists()
