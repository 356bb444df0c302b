"""A PACS query as a batch SOURCE (issue 19): ``pacs://NODE?PatientID=...&Modality=CR``
against a real Orthanc started here (127.0.0.1, free ports, temporary storage; stopped at the
end).  The retrieved study is analysed exactly as the same file given as a folder, a re-run
fetches and analyses nothing new, and bad queries are one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from _orthanc import _start, write_pacs_json
from test_batch import _rows, _run

DEMO_CXR = Path(__file__).resolve().parents[1] / "imaging_assist" / "data" / "demo" / "chest_xray"


@pytest.fixture(scope="module")
def cr_orthanc(tmp_path_factory):
    """An Orthanc of its own holding the four demo CR chest films (four patients)."""
    files = sorted(DEMO_CXR.glob("*.dcm"))
    assert len(files) == 4, f"the demo chest films are missing in {DEMO_CXR}"
    o = _start(tmp_path_factory, "batch-pacs")
    try:
        o.upload(files)
        yield o
    finally:
        o.stop()


@pytest.fixture
def pacs_cfg(cr_orthanc, tmp_path, monkeypatch):
    cfg = tmp_path / "cfg"
    write_pacs_json(cfg, cr_orthanc)
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(cfg))
    return cfg


@pytest.mark.parametrize("node", ["orthanc", "orthanc-web"])   # C-GET and WADO-RS
def test_pacs_query_source_equals_the_same_file_as_a_folder(pacs_cfg, tmp_path, node):
    src = f"pacs://{node}?PatientID=DEMO-CXR-0002&Modality=CR&StudyDate=20240101-20240131"
    out = tmp_path / "out"
    p = _run(["batch", src, "--model", "cxr-pneumonia", "--out", str(out), "--json"], check_rc=0)
    (row,) = _rows(out)                          # one study of the four matched
    assert row["status"] == "ok" and row["model"] == "cxr-pneumonia", row
    cache = out / "pacs-cache" / node
    got = list(cache.rglob("*.dcm"))
    assert len(got) == 1 and row["source"].startswith(str(cache))
    # the same film given as a folder: the same probabilities (the retrieved file's bytes differ:
    # the node writes its own file meta header, so the content hash differs)
    local = tmp_path / "local"
    local.mkdir()
    shutil.copy(DEMO_CXR / "cxr_02_ap.dcm", local)
    out2 = tmp_path / "out2"
    _run(["batch", str(local), "--model", "cxr-pneumonia", "--out", str(out2)], check_rc=0)
    (ref,) = _rows(out2)
    pa, pb = json.loads(row["probabilities"]), json.loads(ref["probabilities"])
    assert pa.keys() == pb.keys() and all(abs(pa[k] - pb[k]) <= 1e-6 for k in pa)
    # a re-run retrieves nothing new and analyses nothing: resumed by content hash
    p2 = _run(["batch", src, "--model", "cxr-pneumonia", "--out", str(out), "--json"], check_rc=0)
    r2 = json.loads(p2.stdout.strip().splitlines()[-1])
    assert r2["ok"] == 0 and r2["resumed"] == 1, r2
    assert "1 instance(s)" in p.stderr


def test_bad_pacs_sources_are_one_line_errors(pacs_cfg, tmp_path):
    out = str(tmp_path / "out")
    for src, words in [("pacs://nowhere?PatientID=X", "unknown PACS node"),
                       ("pacs://orthanc?PatientID=NO-SUCH-PATIENT", "no study"),
                       ("pacs://orthanc?Colour=red", "unknown query key"),
                       ("pacs://orthanc", "no query")]:
        p = _run(["batch", src, "--model", "cxr-pneumonia", "--out", out], check_rc=2)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], (src, p.stderr)
        assert "Traceback" not in p.stderr


def test_deidentified_pacs_batch_keeps_the_retrieved_originals_out_of_out(pacs_cfg, tmp_path):
    """--deidentify with a PACS SOURCE: the study is retrieved into a temporary folder (not OUT),
    de-identified, and no output under OUT carries the patient's id or name."""
    import pydicom

    ds = pydicom.dcmread(DEMO_CXR / "cxr_02_ap.dcm", stop_before_pixels=True)  # an AP film: the card's view
    out = tmp_path / "out"
    p = _run(["batch", "pacs://orthanc?PatientID=DEMO-CXR-0002", "--model", "cxr-pneumonia", "--out", str(out),
              "--deidentify", "--no-faithfulness"], check_rc=0)
    assert "Traceback" not in p.stderr
    (row,) = _rows(out)
    assert row["status"] == "ok"
    assert not (out / "pacs-cache").exists()
    name = str(ds.PatientName)
    files = [f for f in out.rglob("*") if f.is_file()]
    assert any(f.name == "results.json" for f in files)
    for f in files:
        data = f.read_bytes()
        for form in {"DEMO-CXR-0002", name, name.replace("^", " ")}:
            assert form.encode() not in data, f"{form!r} in {f.relative_to(out)}"
