"""Hanging protocols, remembered positions and the cine rate (engine, no Qt)."""

from __future__ import annotations

import json
from types import SimpleNamespace as NS

import numpy as np
import pytest

from imaging_assist import hanging, positions, viewing
from imaging_assist.dicom.index import PatientInfo, SeriesInfo, StudyIndex, StudyInfo
from imaging_assist.volume import Volume


def _ser(uid, mod, desc="", n=1, body=""):
    s = SeriesInfo(uid, uid)
    tags = {"Modality": mod, "SeriesDescription": desc, "BodyPartExamined": body}
    s.instances = [NS(get=lambda kw, d=None, t=tags: t.get(kw, d), has_pixels=True, frames=1) for _ in range(n)]
    return s


def _index():
    cxr = _ser("cxr-now", "CR", "PA", body="CHEST")
    cxr_old = _ser("cxr-2019", "CR", "PA", body="CHEST")
    cxr_older = _ser("cxr-2015", "DX", "PA", body="CHEST")
    mr = [_ser(f"mr{i}", "MR", f"T{i}", 20, "BRAIN") for i in range(5)]
    ct = _ser("ct", "CT", "AX", 100, "CHEST")
    idx = StudyIndex("/", patients=[
        PatientInfo("P1", "A^B", studies=[StudyInfo("s-now", date="20240301", series=[cxr]),
                                          StudyInfo("s-2019", date="20190101", series=[cxr_old]),
                                          StudyInfo("s-2015", date="20150101", series=[cxr_older])]),
        PatientInfo("P2", "C^D", studies=[StudyInfo("mr", date="20240101", series=mr),
                                          StudyInfo("ct", date="20240102", series=[ct])]),
        PatientInfo("P3", "E^F", studies=[StudyInfo("lone", date="20240101", series=[_ser("lone-cr", "CR", body="CHEST")])]),
    ])
    return idx


@pytest.fixture()
def store(tmp_path):
    return hanging.ProtocolStore(tmp_path / "cfg" / hanging.FILE_NAME)


def test_builtin_rules_per_modality_and_body_part(store):
    idx = _index()
    cxr = idx.find_series("cxr-now")
    p = store.match(cxr.modality, cxr.body_part)
    assert p.builtin and p.layout == "1x2"
    h = hanging.plan(p, idx, cxr)
    assert h.layout == "1x2" and h.keys == ["cxr-now", "cxr-2019"]  # the most recent prior, not 2015
    assert store.match("DX", "chest").layout == "1x2"  # body part case-insensitive, DX too
    assert store.match("CR", "HAND").layout == "single"  # chest rule only for the chest
    assert store.match("CT", "CHEST").layout == "mpr"
    mr = idx.find_series("mr2")
    h = hanging.plan(store.match("MR", "BRAIN"), idx, mr)
    assert h.layout == "2x2" and h.keys == ["mr2", "mr0", "mr1", "mr3"]  # the study's series
    assert store.match("US", "").layout == "single" and store.match("", "").layout == "single"


def test_the_prior_is_the_newest_earlier_study_of_the_same_kind(store):
    """A chest film's prior is the most recent earlier film (CR or DX), not a CT the patient
    had in between; a later study is never hung as the prior of an older one."""
    film, ct_between, film_old, film_later = (_ser("f-2024", "CR", "PA", body="CHEST"), _ser("ct-2023", "CT", "AX", 100),
                                              _ser("f-2019", "DX", "PA", body="CHEST"), _ser("f-2025", "CR", "PA", body="CHEST"))
    idx = StudyIndex("/", patients=[PatientInfo("P1", "A^B", studies=[
        StudyInfo("s-2024", date="20240301", series=[film]), StudyInfo("s-2023", date="20230601", series=[ct_between]),
        StudyInfo("s-2019", date="20190101", series=[film_old]),
        StudyInfo("s-2025", date="20250101", series=[film_later])])])
    p = store.match("CR", "CHEST")
    h = hanging.plan(p, idx, film)
    assert h.keys == ["f-2024", "f-2019"] and not h.notes  # not the 2023 CT, not the 2025 film
    assert [st.uid for st in viewing.prior_studies(idx, film)] == ["s-2023", "s-2019"]
    assert [st.uid for st in viewing.other_studies(idx, film)] == ["s-2025", "s-2023", "s-2019"]
    assert viewing.is_later(idx.study_of(film_later), idx.study_of(film))
    # the oldest film has no prior: the layout shrinks with a note, the later films are not priors
    h = hanging.plan(p, idx, film_old)
    assert h.layout == "single" and any("no prior study" in n for n in h.notes)
    h = hanging.plan(p, idx, film_later)  # a CT in between does not count, the 2024 film does
    assert h.keys == ["f-2025", "f-2024"]
    only_ct = StudyIndex("/", patients=[PatientInfo("P1", "A^B", studies=[
        StudyInfo("s-2024", date="20240301", series=[film]), StudyInfo("s-2023", date="20230601", series=[ct_between])])])
    h = hanging.plan(p, only_ct, film)
    assert h.keys == ["f-2024"] and any("no prior CR study" in n for n in h.notes)
    assert hanging.source_of(idx, film_old, film) == "next" and hanging.source_of(idx, film, film_old) == "prior"


def test_missing_prior_shrinks_the_layout_with_a_note(store):
    idx = _index()
    lone = idx.find_series("lone-cr")
    h = hanging.plan(store.match("CR", "CHEST"), idx, lone)
    assert h.layout == "single" and h.keys == ["lone-cr"]
    assert any("no prior" in n for n in h.notes)


def test_saved_protocol_wins_is_stored_as_json_and_removable(store, tmp_path):
    idx = _index()
    ct = idx.find_series("ct")
    # the reader's layout for chest CT: the CT beside the next series
    p = hanging.protocol_from_layout("1x2", ["current", "next"], "CT", "CHEST")
    path = store.save(p)
    assert path == tmp_path / "cfg" / hanging.FILE_NAME
    data = json.loads(path.read_text())
    assert data["protocols"] == [{"name": "CT / CHEST: 1x2", "modality": "CT", "body_part": "CHEST",
                                  "layout": "1x2", "viewports": ["current", "next"]}]
    again = hanging.ProtocolStore(path)  # a new session reads it back
    assert again.warning == "" and again.match("CT", "CHEST").layout == "1x2"
    assert again.match("CT", "HEAD").layout == "mpr"  # other body part: the built-in rule
    assert hanging.plan(again.match("CT", "CHEST"), idx, ct).layout == "single"  # nothing to put beside
    # saving the same modality / body part replaces, does not add
    again.save(hanging.protocol_from_layout("2x2", ["current", "prior", "next", "next"], "CT", "CHEST"))
    assert [q.layout for q in hanging.ProtocolStore(path).user] == ["2x2"]
    assert again.remove(("CT", "CHEST")) and not again.remove(("CT", "CHEST"))
    assert hanging.ProtocolStore(path).match("CT", "CHEST").layout == "mpr"


def test_a_protocol_keeps_each_views_slab(store, tmp_path):
    from imaging_assist.slab import Slab

    p = hanging.protocol_from_layout("mpr", ["current"], "CT", "CHEST", slabs=[Slab("mip", 10), None, None])
    assert p.slabs == ["mip:10", None, None]
    assert "view 1 MIP 10 mm" in p.describe()
    path = store.save(p)
    assert json.loads(path.read_text())["protocols"][0]["slabs"] == ["mip:10", None, None]
    again = hanging.ProtocolStore(path)
    h = hanging.plan(again.match("CT", "CHEST"), _index(), _index().find_series("ct"))
    assert h.layout == "mpr" and h.slabs == ["mip:10", None, None]
    # no slab anywhere: no "slabs" key (files written before stay as they were)
    q = hanging.protocol_from_layout("single", ["current"], "US", slabs=[None])
    assert q.slabs == [] and "slabs" not in q.to_dict()
    assert hanging.plan(q, _index(), _index().find_series("ct")).slabs == []
    # a 2×2 with slabs hung as 1×1 (nothing else to show) keeps the first view's
    g = hanging.protocol_from_layout("2x2", ["current", "next", "next", "next"], "CT",
                                     slabs=[Slab("minip", 5), None, Slab("avg", 3), None])
    assert hanging.plan(g, _index(), _index().find_series("ct")).slabs == ["minip:5"]


@pytest.mark.parametrize("text,why", [
    ('{"protocols": [{"modality": "CT", "layout": "mpr", "viewports": ["current"], "slabs": ["mip:10"]}]}',
     "slabs must be a list of 3"),
    ('{"protocols": [{"modality": "CT", "layout": "single", "viewports": ["current"], "slabs": ["max:10"]}]}',
     "slab mode"),
    ('{"protocols": [{"modality": "CT", "layout": "single", "viewports": ["current"], "slabs": ["mip:1e9"]}]}',
     "not in (0, 200]"),
    ('{"protocols": [{"modality": "CT", "layout": "single", "viewports": ["current"], "slabs": [7]}]}',
     "MODE:MM text or null"),
    ("{not json", "Expecting"),
    ('{"protocols": 3}', 'no "protocols" list'),
    ('{"protocols": [{"modality": "CT", "layout": "9x9", "viewports": ["current"]}]}', "layout"),
    ('{"protocols": [{"modality": "CT", "layout": "1x2", "viewports": ["current"]}]}', "needs 2"),
    ('{"protocols": [{"modality": "CT", "layout": "single", "viewports": ["rm -rf /"]}]}', "viewports"),
    ('[' * 100000 + ']' * 100000, ""),
])
def test_malformed_file_gives_one_warning_and_the_builtin_rules(tmp_path, text, why):
    path = tmp_path / hanging.FILE_NAME
    path.write_text(text)
    st = hanging.ProtocolStore(path)
    assert st.user == [] and st.warning.count("\n") == 0
    assert "not usable" in st.warning and why in st.warning and "built-in rules used" in st.warning
    assert st.match("CT", "").layout == "mpr" and st.match("CR", "CHEST").layout == "1x2"
    # saving keeps the unreadable file beside instead of destroying it
    st.save(hanging.protocol_from_layout("single", ["current"], "US"))
    assert (tmp_path / (hanging.FILE_NAME + ".unreadable")).read_text() == text
    assert hanging.ProtocolStore(path).match("US", "").name == "US: single"


def _vol(n, uid="1.2.840.99.1", cine=False):
    vol = Volume(np.zeros((n, 4, 4), np.int16), spacing=(1, 1, 1), origin=(0, 0, 0), direction=np.eye(3))
    vol.is_cine = cine
    vol.headers = [{"SeriesInstanceUID": uid, "InstanceNumber": n - k} for k in range(n)]  # reversed numbers
    return vol


def test_remembered_position_by_series_uid(tmp_path):
    vol = _vol(30)
    assert viewing.start_index(vol) == 29  # first open: InstanceNumber 1
    st = positions.PositionStore(tmp_path / "data" / "positions.json")
    positions.activate(st)
    try:
        assert viewing.start_index(vol) == 29  # never seen: still the first image
        st.remember(vol, 12)
        assert viewing.start_index(vol) == 12  # same session
        assert st.flush()
        saved = json.loads((tmp_path / "data" / "positions.json").read_text())
        assert saved["series"]["1.2.840.99.1"]["index"] == 12 and "P1" not in json.dumps(saved)
        positions.activate(positions.PositionStore(tmp_path / "data" / "positions.json"))  # reopened
        assert viewing.start_index(vol) == 12
        assert viewing.start_index(_vol(20)) == 19  # same UID, other number of images: first image
        assert viewing.start_index(_vol(30, uid="9.9")) == 29  # another series
        assert viewing.start_index(vol, remembered=False) == 29
        cine = _vol(50, uid="7.7", cine=True)
        positions.active().remember(cine, 33)
        assert viewing.start_index(cine) == 33  # a cine frame too
    finally:
        positions.activate(None)
    assert viewing.start_index(vol) == 29  # no store active (engine CLI): the first image


def test_malformed_positions_file_is_ignored(tmp_path):
    p = tmp_path / "positions.json"
    p.write_text('{"series": {"1.2": {"index": 99, "n": 3}, "1.3": "x"}}')
    st = positions.PositionStore(p)
    assert st.recall(_vol(3, uid="1.2")) is None  # out of range: not trusted
    p.write_text("garbage")
    st = positions.PositionStore(p)
    assert "not usable" in st.warning and st.recall(_vol(3, uid="1.2")) is None
    st.remember(_vol(3, uid="1.2"), 1)
    assert st.flush() and positions.PositionStore(p).recall(_vol(3, uid="1.2")) == 1


def test_cine_rate_sources(tmp_path):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian
    vol = _vol(10, cine=True)
    vol.frame_time_ms = 33.0
    assert viewing.cine_rate(vol) == (pytest.approx(1000 / 33.0), "FrameTime")
    vol.frame_time_ms = None
    assert viewing.cine_rate(vol) == (viewing.DEFAULT_CINE_FPS, "default")
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = "1.2.3.4"
    ds.RecommendedDisplayFrameRate = 24
    ds.CineRate = 10
    f = tmp_path / "c.dcm"
    ds.save_as(f, enforce_file_format=True)
    from imaging_assist.dicom.header import InstanceRecord
    vol.headers = [InstanceRecord(path=str(f))]
    assert viewing.cine_rate(vol) == (24.0, "RecommendedDisplayFrameRate")
    del ds.RecommendedDisplayFrameRate
    ds.save_as(f, enforce_file_format=True)
    assert viewing.cine_rate(vol) == (10.0, "CineRate")
