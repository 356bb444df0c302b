"""``imaging-assist pacs ...`` end to end (subprocesses) against the session Orthanc: output,
exit codes, one-line errors, secrets never printed, Ctrl-C, a full disk."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

from _orthanc import ct_files, orthanc, pacs_home  # noqa: F401 - fixtures
from conftest import ROOT

CT_STUDY = "1.3.46.670589.33.1.27492712521914879309.27169771283235650014"
MR_STUDY = "1.2.840.114350.2.408.2.798268.2.129495550.1"


def run(*args, input=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "imaging_assist", "pacs", *args], capture_output=True,
                          text=True, timeout=timeout, input=input, cwd=ROOT)


def _no_traceback(r):
    assert "Traceback" not in r.stderr + r.stdout, r.stderr


def test_nodes_add_remove_and_secrets_never_shown(orthanc, pacs_home):
    secret = orthanc.password
    r = run("add-node", "web2", "--url", orthanc.dicomweb_url + "/", "--user", orthanc.user,
            "--password-stdin", input=secret + "\n")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(pacs_home / "pacs.json").st_mode) == 0o600
    outputs = [r]
    for args in (["nodes"], ["nodes", "--json"], ["echo", "--node", "web2"],
                 ["echo", "--node", "orthanc-web"], ["find", "--node", "web2", "--modality", "MR"]):
        outputs.append(run(*args))
        assert outputs[-1].returncode == 0, (args, outputs[-1].stderr)
    listing = json.loads(outputs[2].stdout)
    assert {n["name"] for n in listing["nodes"]} == {"orthanc", "orthanc-web", "web2"}
    assert "QIDO-RS ok" in outputs[3].stdout
    # A wrong password: a one-line 401, the password in no output either.
    bad = run("add-node", "web3", "--url", orthanc.dicomweb_url, "--user", "ia", "--password-stdin",
              input="Wr0ng-Pa55word\n")
    r = run("echo", "--node", "web3")
    assert r.returncode == 2 and r.stderr.startswith("error: web3 [") and "HTTP 401" in r.stderr
    outputs += [bad, r]
    for o in outputs:
        _no_traceback(o)
        assert secret not in o.stdout + o.stderr and "Wr0ng-Pa55word" not in o.stdout + o.stderr
    assert run("remove-node", "web2").returncode == 0
    assert "web2" not in run("nodes").stdout


def test_echo_forms(orthanc, pacs_home):
    for node in ("orthanc", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"):
        r = run("echo", "--node", node)
        assert r.returncode == 0 and "C-ECHO ok" in r.stdout, r.stderr


def test_find_json_and_table(orthanc, pacs_home):
    r = run("find", "--node", "orthanc", "--modality", "MR", "--json")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert row["study_uid"] == MR_STUDY and row["n_instances"] == 4
    r = run("find", "--node", "orthanc-web", "--level", "series", "--patient", "HEAD")
    assert r.returncode == 0 and "STD BRAIN 1MM" in r.stdout and "1 series" in r.stdout, r.stdout
    r = run("find", "--node", "orthanc", "--limit", "1", "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)) == 1
    assert "note: more than 1 matches; showing the first 1" in r.stderr
    r = run("find", "--node", "orthanc", "--date", "2020-13-01")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "invalid date" in r.stderr


def test_get_indexes_the_study_then_skips_what_is_there(orthanc, pacs_home, tmp_path):
    r = run("get", MR_STUDY, "--node", "orthanc", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "4 instances retrieved by C-GET" in r.stdout and "MR ep2d_fid_weisskoff_25slc" in r.stdout
    r = run("get", MR_STUDY, "--node", "orthanc-web", "--out", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["written"], out["skipped"], out["method"]) == (0, 4, "wado")


def test_errors_are_one_line(orthanc, pacs_home, tmp_path):
    from imaging_assist.pacs.testing import free_port
    cases = [(["echo", "--node", f"X@127.0.0.1:{free_port()}"], "connection refused"),
             (["echo", "--node", "nowhere"], "unknown node 'nowhere'"),
             (["echo", "--node", f"WRONG@127.0.0.1:{orthanc.dicom_port}"], "association rejected"),
             (["get", "1.2.3", "--node", "orthanc", "--out", str(tmp_path)], "not found"),
             (["get", MR_STUDY, "--node", "orthanc", "--method", "wado", "--out", str(tmp_path)],
              "WADO-RS needs a DICOMweb node"),
             (["send", str(tmp_path), "--node", "orthanc"], "nothing to send"),
             (["get", MR_STUDY, "--node", "orthanc", "--out", str(ROOT / "pyproject.toml")],
              "exists and is not a folder")]
    for args, msg in cases:
        r = run(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr, orthanc.log_tail())
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
        assert msg in r.stderr, (r.stderr, orthanc.log_tail())
        _no_traceback(r)


def test_ctrl_c_cancels_cleanly_and_the_next_get_resumes(orthanc, pacs_home, tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "imaging_assist", "pacs", "get", CT_STUDY, "--node",
                          "orthanc", "--out", str(tmp_path)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=ROOT)
    study = tmp_path / CT_STUDY
    end = time.monotonic() + 60
    while time.monotonic() < end and len(list(study.rglob("*.dcm"))) < 10:
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (out, err)
    assert "cancelled:" in err and "run the same command again" in err
    assert "Traceback" not in err
    have = len(list(study.rglob("*.dcm")))
    assert 10 <= have < 140 and not list(tmp_path.rglob("*.partial"))
    r = run("get", CT_STUDY, "--node", "orthanc", "--out", str(tmp_path), "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and (out["skipped"], out["written"]) == (have, 140 - have), r.stderr


def test_full_disk_leaves_only_whole_files(orthanc, pacs_home, tmp_path):
    """A 3 MB tmpfs (mounted in a private mount namespace by `unshare`): the CT's slices are
    0.5 MB each, so the disk fills during the transfer."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed for the full-disk test")
    mnt, copy = tmp_path / "small", tmp_path / "copy"
    mnt.mkdir()
    copy.mkdir()
    script = (f"mount -t tmpfs -o size=3m tmpfs {mnt} && "
              f"{sys.executable} -m imaging_assist pacs get {CT_STUDY} --node orthanc --out {mnt}; "
              f"echo RC=$?; cp -a {mnt}/. {copy}/")
    flags = [] if os.geteuid() == 0 else ["-r"]
    r = subprocess.run(["unshare", *flags, "-m", "sh", "-c", script], capture_output=True, text=True,
                       timeout=300, cwd=ROOT, env=dict(os.environ))
    assert "RC=1" in r.stdout, (r.stdout[-2000:], r.stderr[-2000:])
    failed = [ln for ln in r.stderr.splitlines() if ln.startswith("failed: ")]
    assert failed and all("disk full" in ln for ln in failed), r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    everything = [p for p in copy.rglob("*") if p.is_file()]
    kept = [p for p in everything if p.suffix == ".dcm"]
    assert kept == everything  # no temporary file left behind
    assert 1 <= len(kept) < 140 and len(kept) + len(failed) == 140, (len(kept), len(failed))
    import pydicom
    src = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in ct_files()}
    for p in kept:  # every file kept is whole: the same data set as the stored instance
        a, b = pydicom.dcmread(p), pydicom.dcmread(src[p.stem])
        assert a == b and a.PixelData == b.PixelData, p.name
