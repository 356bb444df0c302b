"""A heat map the engine flags (negative faithfulness, mostly outside the lungs) is written into
its DICOM Parametric Map (ImageComments), and the viewer that reopens the map hides it with the
reasons, as the run did: reopened, it came back unflagged and visible."""
from __future__ import annotations

import shutil

from conftest import ROOT

FILM = ROOT / "imaging_assist" / "data" / "demo" / "chest_xray" / "cxr_01_ap.dcm"


def test_a_flagged_map_is_flagged_when_its_parametric_map_is_reopened(tmp_path, monkeypatch, capsys):
    from imaging_assist.cli.main import main
    from imaging_assist.dicom import load_series, scan
    from imaging_assist.dicom.result_objects import FLAGGED_PREFIX, read_parametric_map
    from imaging_assist.export.parametric_map import build_parametric_map
    from test_export_dicom import dciodvfy_errors

    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    src = tmp_path / "film"
    src.mkdir()
    shutil.copy(FILM, src)
    assert main(["analyze", str(src), "--model", "cxr-pneumonia", "--explain", "gradcam", "--dicom",
                 "--out", str(tmp_path / "o")]) == 0
    (pm_file,) = (tmp_path / "o" / "dicom").glob("*_PM_*.dcm")
    assert dciodvfy_errors(pm_file) == []
    vol = load_series(scan(str(src)).image_series()[0])
    pm = read_parametric_map(str(pm_file), vol)
    assert any(f.startswith("negative faithfulness") for f in pm.flags), pm.flags
    assert any(f.startswith("mostly outside the lungs") for f in pm.flags), pm.flags
    layer = pm.layer()
    assert layer.flagged and layer.visible is False
    assert pm.to_dict()["flags"] == pm.flags
    # a map that is not flagged says nothing of the kind, and opens visible
    import numpy as np

    plain = build_parametric_map(vol, np.asarray(layer.array, np.float32), label="pneumonia", method="gradcam",
                                 model_id="cxr-pneumonia", model_version="1.0.0")
    assert FLAGGED_PREFIX not in str(plain.get("ImageComments") or "")
    plain.save_as(tmp_path / "plain.dcm")
    again = read_parametric_map(str(tmp_path / "plain.dcm"), vol)
    assert again.flags == [] and again.layer().visible
