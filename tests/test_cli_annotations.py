"""``imaging-assist annotations``: a series' saved measurements and annotations listed with
their values, and written as SR and GSPS from the command line (the viewer's File menu)."""

import json

import pytest

from conftest import CT_PHANTOM, need
from test_annotations_sr import _items

from imaging_assist.annotations import AnnotationStore
from imaging_assist.cli.main import main
from imaging_assist.dicom.presentation_state import read_presentation_state
from imaging_assist.export.sr_measurements import read_measurement_sr


@pytest.fixture
def saved(ct_volume, ct_index, tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    (series,) = ct_index.image_series()
    k, items = _items(ct_volume)
    path, warns = AnnotationStore().save(series.study_uid, series.key, items)
    assert path is not None and path.is_relative_to(tmp_path / "data") and not warns
    return series, k, items


def test_list_and_export_sr_and_gsps(saved, ct_volume, tmp_path, capsys):
    series, k, items = saved
    sr, gsps = tmp_path / "out" / "m_sr.dcm", tmp_path / "out" / "m_gsps.dcm"
    rc = main(["annotations", str(need(CT_PHANTOM)), "--export-sr", str(sr), "--export-gsps", str(gsps)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert f"Saved       {len(items)} measurement(s) and annotation(s)" in out.out
    ruler = next(m for m in items if m.kind == "ruler")
    ruler.compute_on(ct_volume)
    assert f"ruler     image {k + 1:<6} {ruler.result['text'][0]}" in out.out
    assert "reformatted plane 1" in out.out and "GSPS: measurement" in out.out  # the axis-1 polygon, named
    assert sorted(g["kind"] for g in read_measurement_sr(sr)) == sorted(m.kind for m in items if m.axis == 0)
    ps = read_presentation_state(str(gsps), ct_volume)
    assert ps.layer is not None and {int(s.points[0, 0]) for s in ps.layer.shapes} == {k, k + 1}
    rc = main(["annotations", str(need(CT_PHANTOM)), "--json"])
    js = json.loads(capsys.readouterr().out)
    assert rc == 0 and js["key"] == series.key and len(js["items"]) == len(items) and js["written"] == {}


def test_nothing_saved_or_an_unknown_series_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "empty"))
    rc = main(["annotations", str(need(CT_PHANTOM)), "--export-gsps", str(tmp_path / "x.dcm")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: no saved measurements") and err.count("\n") == 1
    assert not (tmp_path / "x.dcm").exists()
    rc = main(["annotations", str(need(CT_PHANTOM)), "--series", "1.2.3.4"])
    err = capsys.readouterr().err
    assert rc == 2 and "no image series '1.2.3.4'" in err and err.count("\n") == 1


def test_a_stack_of_a_multi_stack_series_is_found_as_the_viewer_saved_it(tmp_path, monkeypatch, capsys):
    """The viewer saves a stack's items under its label ("stack 1 of 2"); the command looked
    under none and listed nothing. --stack N picks the stack, default 1."""
    from conftest import DICOM, need
    from imaging_assist.annotations import AnnotationStore
    from imaging_assist.cli import main
    from imaging_assist.dicom import load_series, scan
    from imaging_assist.dicom.loader import plan_series, stack_label
    from imaging_assist.measure import Measurement

    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    folder = need(DICOM / "mr_enhanced_multiframe_philips")
    s = scan(str(folder)).image_series()[0]
    plans = plan_series(s)
    assert len(plans) == 2 and stack_label(plans, 0) == "stack 1 of 2"
    vol = load_series(s, 0)
    m = Measurement("ruler", [(10, 10), (40, 10)], index=5)
    m.compute_on(vol)
    AnnotationStore().save(s.study_uid, s.key, [m], stack=stack_label(plans, 0))
    assert main(["annotations", str(folder), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [i["kind"] for i in got["items"]] == ["ruler"]
    assert main(["annotations", str(folder), "--stack", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == []
    assert main(["annotations", str(folder), "--stack", "3"]) == 2
    assert "holds 2 stack(s)" in capsys.readouterr().err
