"""Session 22 audit: cine loops of one series, and the order of split parts, studies and patients.

1. Several multi-frame images without patient positions in one series (ultrasound loops) are each
   a series part of their own, a cine at the file's FrameTime, in InstanceNumber order; they were
   one stack of both loops' frames, not a cine, with the warning "no patient-position information".
2. The parts of a series split by TemporalPositionIdentifier (or EchoNumbers) are numbered and
   listed in number order (1, 2, ... 10, 11, 12), not as text (1, 10, 11, 12, 2, ...).
3. Studies under a patient are listed most recent first (undated last), as the Priors panel;
   patients by their name as one patient (index.name_key), not by the raw, case-sensitive name."""

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from _synth import write_ct_series
from imaging_assist import hanging
from imaging_assist.dicom import load_series, scan
from imaging_assist.viewing import cine_rate
from test_index_grouping_s21 import _film
from test_ui_cine import write_cine


def _series(index):
    return [s for p in index.patients for st in p.studies for s in st.series]


# ------------------------------------------------------------------ 1. cine loops
def _loop(path, series_uid, number, value0=0, frame_time=40.0, shared=None):
    write_cine(path, frame_time=frame_time, series_uid=series_uid, value0=value0)
    ds = pydicom.dcmread(path)
    ds.InstanceNumber, ds.SeriesDescription = number, "loops"  # write_cine names each by its file
    if shared is not None:  # an enhanced-style file: functional groups without positions
        ds.SharedFunctionalGroupsSequence = [shared]
    ds.save_as(path, enforce_file_format=True)


def test_two_cine_loops_of_one_series_are_two_cines_at_their_frame_time(tmp_path):
    uid = generate_uid()
    # file order (a, b) is not InstanceNumber order (b is 1): the parts follow InstanceNumber
    _loop(tmp_path / "a.dcm", uid, 2, value0=5)
    _loop(tmp_path / "b.dcm", uid, 1)
    parts = _series(scan(str(tmp_path), workers=1))
    assert [s.key for s in parts] == [f"{uid}:1", f"{uid}:2"]
    assert [[r.get("InstanceNumber") for r in s.instances] for s in parts] == [[1], [2]]
    assert "cine loops" in parts[0].split_reason
    for s, value0 in zip(parts, (0, 5)):
        vol = load_series(s)
        assert vol.array.shape == (12, 32, 32)
        assert vol.is_cine and vol.frame_time_ms == 40.0 and cine_rate(vol) == (25.0, "FrameTime")
        assert [int(v) for v in vol.array.mean(axis=(1, 2))] == [value0 + 20 * k for k in range(12)]
        assert not any("patient-position" in w for w in vol.warnings)


def test_one_cine_loop_and_its_copy_stay_as_before(tmp_path):
    uid = generate_uid()
    _loop(tmp_path / "one.dcm", uid, 1)
    (only,) = _series(scan(str(tmp_path), workers=1))
    assert only.key == uid and load_series(only).is_cine  # a single-file cine: not split
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "one.dcm").write_bytes((tmp_path / "one.dcm").read_bytes())
    parts = _series(scan(str(tmp_path), workers=1))
    assert len(parts) == 2 and all(len(s.instances) == 1 for s in parts)
    assert "copies of one image" in parts[1].split_reason


def test_each_enhanced_file_without_positions_is_a_cine(tmp_path):
    """Functional groups without plane positions: the loader makes each file a stack; each is
    a cine of its own file (it was a plain stack with the InstanceNumber-order warning)."""
    uid = generate_uid()
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [0.2, 0.2]
    shared.PixelMeasuresSequence = [measures]
    _loop(tmp_path / "a.dcm", uid, 1, shared=shared)
    _loop(tmp_path / "b.dcm", uid, 2, value0=5, shared=shared)
    (series,) = _series(scan(str(tmp_path), workers=1))
    for stack, value0 in ((0, 0), (1, 5)):
        vol = load_series(series, stack=stack)
        assert vol.array.shape == (12, 32, 32) and vol.is_cine and vol.frame_time_ms == 40.0
        assert int(vol.array[0].mean()) == value0
        assert not any("InstanceNumber order" in w for w in vol.warnings)


# ------------------------------------------------------------------ 2. parts in number order
def test_parts_split_by_time_point_are_in_number_order_and_hang_1_to_4(tmp_path):
    uid, study = generate_uid(), generate_uid()
    for t in range(1, 13):
        write_ct_series(tmp_path / f"t{t:02d}", [(0, 0, 0), (0, 0, 2)], series_uid=uid,
                        instance_numbers=[2 * t - 1, 2 * t],
                        extra={"StudyInstanceUID": study, "Modality": "MR", "TemporalPositionIdentifier": t})
    idx = scan(str(tmp_path), workers=1)
    parts = _series(idx)
    assert [int(s.instances[0].get("TemporalPositionIdentifier")) for s in parts] == list(range(1, 13))
    assert [s.key for s in parts] == [f"{uid}:{n}" for n in range(1, 13)]
    assert [s.part for s in parts] == list(range(1, 13))
    assert parts[9].warnings[0].endswith("this is part 10 with 2 instances")
    assert "TemporalPositionIdentifier=10" in parts[9].split_reason
    mr = next(p for p in hanging.BUILTIN if p.layout == "2x2")
    h = hanging.plan(mr, idx, parts[0])
    assert [int(idx.find_series(k).instances[0].get("TemporalPositionIdentifier")) for k in h.keys] == [1, 2, 3, 4]


# ------------------------------------------------------------------ 3. studies and patients
@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")  # YYYY.MM.DD: ACR-NEMA, read all the same
def test_studies_are_listed_most_recent_first_undated_last(tmp_path):
    # folder order: 2016, undated, 2024, 2020 (YYYY.MM.DD is a date too), a typo in the future
    _film(tmp_path / "a" / "f.dcm", "P1", "CHEST^ONE", "20160101")
    _film(tmp_path / "b" / "f.dcm", "P1", "CHEST^ONE", "")
    _film(tmp_path / "c" / "f.dcm", "P1", "CHEST^ONE", "20240301")
    _film(tmp_path / "d" / "f.dcm", "P1", "CHEST^ONE", "2020.12.01")
    _film(tmp_path / "e" / "f.dcm", "P1", "CHEST^ONE", "29990101")
    (pat,) = scan(str(tmp_path), workers=1).patients
    assert [st.date for st in pat.studies] == ["20240301", "2020.12.01", "20160101", "", "29990101"]


def test_patients_are_listed_by_name_whatever_its_letter_case(tmp_path):
    _film(tmp_path / "a.dcm", "P1", "CHEST^ONE")
    _film(tmp_path / "b.dcm", "P2", "adams^amy")  # as text "CHEST" came before "adams"
    _film(tmp_path / "c.dcm", "P3", "Baker^Bob")
    assert [p.name for p in scan(str(tmp_path), workers=1).patients] == ["adams^amy", "Baker^Bob", "CHEST^ONE"]
