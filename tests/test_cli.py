"""The command line: JSON output, one-line errors, no tracebacks."""

import json
import os
import subprocess
import sys

from conftest import CT_PHANTOM, DICOM, need


def run(*args):
    return subprocess.run([sys.executable, "-m", "imaging_assist", *args], capture_output=True, text=True,
                          timeout=120)


def test_scan_json():
    r = run("scan", str(need(DICOM)), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    series = [s for p in data["patients"] for st in p["studies"] for s in st["series"]]
    ct = [s for s in series if s["description"] == "STD BRAIN 1MM, iDose"][0]
    assert ct["instances"] == 140 and ct["modality"] == "CT" and ct["rows"] == 512
    assert {"path", "reason"} <= set(data["problems"][0])


def test_info_json_geometry():
    r = run("info", str(need(CT_PHANTOM)), "--json")
    assert r.returncode == 0, r.stderr
    g = json.loads(r.stdout)
    assert g["shape"] == [140, 512, 512] and g["units"] == "HU" and g["dtype"] == "int16"
    assert g["spacing"] == [0.451172, 0.451172, 1.0]
    assert g["value_range"][0] == -1024
    assert any(p["name"] == "Lung" for p in g["window_presets"])


def test_info_warns_on_tilt():
    r = run("info", str(need(DICOM / "ct_gantry_tilt_uneven_spacing_ge_subset")))
    assert r.returncode == 0
    assert "warning: gantry tilt" in r.stdout and "warning: uneven slice spacing" in r.stdout


def test_errors_are_one_line(tmp_path):
    r = run("info", str(tmp_path / "missing"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error:")
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\x00" * 200)
    r = run("info", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.startswith("error:")
    r = run("info", str(need(DICOM)))  # several series: asks to choose
    assert r.returncode == 2 and "--series" in r.stderr


def test_demo_headless(tmp_path):
    (tmp_path / "no_models").mkdir()  # the models' part: tests/test_demo.py
    r = run("demo", "--headless", "--models", str(tmp_path / "no_models"), "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["not_for_clinical_use"] is True
    ct = next(s for s in report["series"] if s["modality"] == "CT")  # CR and US series come first
    assert ct["shape"] == [28, 256, 256]
    assert os.path.isfile(ct["key_image"]) and ct["key_image"].endswith("_ct.png")
    assert "Report written to" in r.stdout


def test_scan_lists_slides_beside_studies():
    from conftest import SHARED
    svs_dir = need(SHARED / "pathology" / "wsi_aperio_cmu1_small_region")
    r = run("scan", str(svs_dir), str(need(DICOM / "cr_chest_monochrome1_fuji")), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [s["mpp"] for s in data["slides"]] == [[0.499, 0.499]]
    assert not [p for p in data["problems"] if p["path"].endswith(".svs")]
    assert len([s for p in data["patients"] for st in p["studies"] for s in st["series"]]) == 1
    r = run("info", str(svs_dir / "CMU-1-Small-Region.svs"))
    assert r.returncode == 0 and "0.499" in r.stdout and "label" in r.stdout
