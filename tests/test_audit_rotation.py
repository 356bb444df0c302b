"""The audit trail in parts: the live log is closed as a numbered read-only part at a size
(``IMAGING_ASSIST_AUDIT_ROTATE_BYTES``), the chain runs on across parts, parts may be gzipped,
and a deleted, cut or edited part is found and named by ``verify``."""

from __future__ import annotations

import gzip
import os
import stat
import subprocess
import sys

import pytest

from conftest import ROOT

from imaging_assist.cli.main import main as cli_main
from imaging_assist.privacy import audit

SMALL = 4096  # bytes: a part every ~8 records of these (~500 bytes each)


@pytest.fixture()
def trail(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IMAGING_ASSIST_AUDIT_ROTATE_BYTES", str(SMALL))
    return tmp_path


def _fill(n: int, start: int = 0):
    for i in range(start, start + n):
        assert audit.record("test.event", i=i, patient_id=f"P{i}", study_uid=f"1.2.3.{i}")


def _writable(p):
    os.chmod(p, 0o600)


def test_the_chain_runs_on_across_read_only_parts(trail, capsys):
    _fill(60)
    parts = audit.parts()
    assert len(parts) >= 5
    # contiguous record ranges from 1, each part read-only and at least the rotation size
    assert parts[0][0] == 1 and all(b + 1 == a2 for (_, b, _), (a2, _, _) in zip(parts, parts[1:]))
    for a, b, f in parts:
        assert f.name == audit.part_name(a, b) and stat.S_IMODE(f.stat().st_mode) == 0o400
        assert f.stat().st_size >= SMALL and len(f.read_bytes().splitlines()) == b - a + 1
    live = audit.log_path()
    assert not live.exists() or live.stat().st_size < SMALL
    ok, line, reason = audit.verify()
    assert ok and line is None and reason.startswith(f"60 lines in {len(parts)} closed part(s)"), reason
    assert [e["fields"]["i"] for e in audit.read_entries()] == list(range(60))
    assert [e["seq"] for e in audit.read_entries()] == list(range(1, 61))
    # the CLI shows the whole trail, and its head is the last record of all
    assert cli_main(["audit", "show", "--event", "test.event"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 60
    assert cli_main(["audit", "verify"]) == 0
    assert "head 60:" in capsys.readouterr().out


def test_gzipped_parts_are_read_and_checked(trail):
    _fill(40)
    for _a, _b, f in audit.parts()[:-1]:  # what an administrator (or logrotate) does
        gz = f.with_name(f.name + ".gz")
        gz.write_bytes(gzip.compress(f.read_bytes()))
        _writable(f)
        f.unlink()
    _fill(10, start=40)  # the chain goes on from a gzipped newest part too
    assert audit.verify()[0], audit.verify()[2]
    assert [e["fields"]["i"] for e in audit.read_entries()] == list(range(50))
    # a damaged .gz part is one line naming it, never an exception
    gz = next(f for _a, _b, f in audit.parts() if f.name.endswith(".gz"))
    data = bytearray(gz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    gz.write_bytes(bytes(data))
    ok, line, reason = audit.verify()
    assert not ok and (gz.name in reason) and "\n" not in reason


def test_a_part_compressed_and_left_plain_counts_once(trail):
    _fill(20)
    a, b, f = audit.parts()[0]
    f.with_name(f.name + ".gz").write_bytes(gzip.compress(f.read_bytes()))  # interrupted before the unlink
    assert [p for _x, _y, p in audit.parts()][0] == f
    assert audit.verify()[0]


@pytest.mark.parametrize("which", ["first", "middle"])
def test_a_deleted_part_is_found(trail, which):
    _fill(40)
    parts = audit.parts()
    a, b, f = parts[0] if which == "first" else parts[2]
    _writable(f)
    f.unlink()
    ok, line, reason = audit.verify()
    assert not ok and line == a
    gone = f"record {a} before it was" if a == b else f"records {a}-{b} before it were"
    assert f"line {a} is record {b + 1}: {gone} deleted" in reason


def test_an_edited_or_cut_part_is_found_and_named(trail):
    _fill(40)
    a, b, f = audit.parts()[1]
    _writable(f)
    lines = f.read_bytes().splitlines()
    lines[1] = lines[1].replace(b'"i":', b'"i":1')
    f.write_bytes(b"".join(x + b"\n" for x in lines))
    ok, line, reason = audit.verify()
    assert not ok and line == a + 1 and reason.endswith(f"(in {f.name})") and "altered" in reason
    f.write_bytes(b"".join(x + b"\n" for x in f.read_bytes().splitlines()[:1]) + b'{"seq":')
    ok, line, reason = audit.verify()
    assert not ok and line == a + 1 and "closed part was cut" in reason


def test_the_live_log_deleted_after_parts_is_found_by_the_head(trail):
    _fill(30)
    audit.log_path().unlink()  # the live log holds the last few records
    ok, line, reason = audit.verify()
    last_part = audit.parts()[-1][1]
    assert not ok and f"the log ends at line {last_part} but 30 lines were written" in reason


def test_concurrent_appends_rotating_keep_one_chain(trail):
    code = ("import sys\nfrom imaging_assist.privacy import audit\n"
            "for i in range(40):\n    assert audit.record('proc', worker=int(sys.argv[1]), i=i)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(w)], env=dict(os.environ), cwd=str(ROOT))
             for w in range(4)]
    assert all(p.wait(120) == 0 for p in procs)
    ok, _line, reason = audit.verify()
    assert ok, reason
    entries = audit.read_entries()
    assert [e["seq"] for e in entries] == list(range(1, 161))
    assert len(audit.parts()) >= 10
    per_worker = {}
    for e in entries:
        per_worker.setdefault(e["fields"]["worker"], []).append(e["fields"]["i"])
    assert per_worker == {w: list(range(40)) for w in range(4)}
