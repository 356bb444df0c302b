"""Session 21 OOD fixes: a series' decision taken from a flagged slice is withheld; the view /
age population gate reads every image of a series; OOD statistics with a matching hash but
wrong shapes are refused (or flag the result, never pass it); the SR of a flagged or
quality-failed segmentation says so."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import SHARED, need
from test_ood import W, _copy, _one_line, _rehash
from imaging_assist.models.card import load_card
from imaging_assist.models.loaders import load_model, verify
from imaging_assist.validation import ood as O


def _cr(path: Path, px: np.ndarray, study: str, series: str, n: int = 1, **kw) -> Path:
    """An 8-bit CR chest image (a child's AP film unless ``kw`` says otherwise)."""
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    fm.MediaStorageSOPInstanceUID = generate_uid()
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID, ds.SOPInstanceUID = fm.MediaStorageSOPClassUID, fm.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.StudyDate = "Test^Ood", "OOD1", "20240101"
    ds.Modality, ds.BodyPartExamined, ds.InstanceNumber, ds.SeriesNumber = "CR", "CHEST", n, 1
    ds.Rows, ds.Columns = px.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelSpacing = [0.5, 0.5]
    ds.ViewPosition, ds.PatientAge = "AP", "003Y"
    for k, v in kw.items():
        setattr(ds, k, v)
    ds.PixelData = px.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _normal_films(n: int) -> list[np.ndarray]:
    """Paediatric test films the model calls normal (224 x 224, 8-bit)."""
    rows = [r for r in csv.DictReader((W / "cxr-pneumonia" / "predictions.csv").open())
            if r["split"] == "test" and r["label"] == "normal" and float(r["p_pneumonia"]) < 0.1]
    return [np.asarray(Image.open(need(SHARED / "cxr" / "pneumonia_kermany" / r["file"])).convert("L")
                       .resize((224, 224))) for r in rows[:n]]


def _photo() -> np.ndarray:
    import skimage.data as sd

    return np.asarray(Image.fromarray(sd.astronaut()).convert("L").resize((224, 224)))


def _analyze(argv: list[str], capsys) -> tuple[int, str]:
    from imaging_assist.cli.main import main

    rc = main(argv)
    text = capsys.readouterr()
    return rc, text.out + text.err


# --------------------------------------------------------------------------- 1. decisive slice
def test_series_decision_taken_from_a_flagged_slice_is_withheld(tmp_path, capsys):
    """Two films and a photograph in one AP series: the pneumonia probability (max over slices)
    is the photograph's; the majority rule passed the series and the photo's 'positive' was
    written everywhere. It is withheld now, the reason naming the slice."""
    st, se = generate_uid(), generate_uid()
    for i, px in enumerate(_normal_films(2) + [_photo()], 1):
        _cr(tmp_path / "s" / f"{i}.dcm", px, st, se, i)
    rc, text = _analyze(["analyze", str(tmp_path / "s"), "--model", "cxr-pneumonia", "--dicom",
                         "--out", str(tmp_path / "o")], capsys)
    assert rc == 0, text
    (it,) = json.loads((tmp_path / "o" / "results.json").read_text())["items"]
    o = it["ood"]
    # the case: the photograph (slice 3) alone is flagged and gives the series its probability
    assert o["slices"] == 3 and o["slices_flagged"] == 1 and o["per_unit"][2] > o["threshold"]
    assert int(np.argmax([s["pneumonia"] for s in it["per_slice_probabilities"]])) == 2
    assert o["flagged"] is True
    assert any("slice 3 of 3" in r and "pneumonia" in r for r in o["reasons"])
    dec = it["decisions"]["pneumonia"]
    assert dec["positive"] is None and dec["withheld"] == O.OUTSIDE_TEXT
    assert it["decision"]["withheld"] and it["decision"]["labels"][0]["state"] == "withheld"
    assert any("slice 3 of 3" in w for w in it["warnings"])
    assert "decision withheld" in text and ": positive" not in text
    sr = pydicom.dcmread(next((tmp_path / "o" / "dicom").rglob("*_SR.dcm")))
    assert "IN-TRAIN-DOMAIN" in str(sr) and "Present" not in str(sr)


def test_mean_aggregation_withholds_on_any_flagged_slice_and_max_only_on_the_decisive_one():
    stats = O.OODStats("mahalanobis", 1.0, [], {})
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])  # labels a, b; slice 2 (0-based 1) flagged
    s = np.array([0.5, 3.0, 0.4])
    dec = {"a": {"positive": True}, "b": {"positive": False}}
    mx = O.block_from_scores(stats, s, "slice", O.decisive_units(p, ["a", "b"], dec, mean=False))
    assert not mx["flagged"] and mx["reasons"] == []  # neither maximum comes from slice 2
    mean = O.block_from_scores(stats, s, "slice", O.decisive_units(p, ["a", "b"], dec, mean=True))
    assert mean["flagged"] and any("(mean over slices) includes slice 2 of 3" in r for r in mean["reasons"])
    p[1, 1] = 0.9  # now b's maximum is on the flagged slice
    mx = O.block_from_scores(stats, s, "slice", O.decisive_units(p, ["a", "b"], dec, mean=False))
    assert mx["flagged"] and mx["reasons"] == [
        "the b probability (max over slices) comes from slice 2 of 3, unlike the training images "
        "(OOD score above threshold 1)"]


# --------------------------------------------------------------------------- 2. every image's view / age
def _two_image_series(tmp_path: Path, first: dict, second: dict):
    from imaging_assist.dicom import load_series, scan

    st, se = generate_uid(), generate_uid()
    film = _normal_films(1)[0]
    _cr(tmp_path / "s" / "1.dcm", film, st, se, 1, **first)
    _cr(tmp_path / "s" / "2.dcm", film, st, se, 2, **second)
    (s,) = scan(str(tmp_path / "s")).image_series()
    return s, load_series(s)


@pytest.mark.parametrize("first, second, said", [
    ({"ViewPosition": "AP"}, {"ViewPosition": "LL"}, "the series has AP and LL images (LL not trained on)"),
    ({"PatientAge": "003Y"}, {"PatientAge": "030Y"}, "the patient is 3 years or 30 years"),
])
def test_a_value_outside_the_population_on_any_image_refuses_the_model(tmp_path, first, second, said):
    from imaging_assist.models.matching import SeriesFacts, match_card, series_facts

    card = load_card(W / "cxr-pneumonia")
    s, vol = _two_image_series(tmp_path, first, second)
    for facts in (SeriesFacts.from_series(s), series_facts(vol, s)):
        m = match_card(card, facts)
        assert not m.ok and said in m.reason, m.reason
    # the order does not matter
    s, vol = _two_image_series(tmp_path / "b", second, first)
    assert not match_card(card, series_facts(vol, s)).ok


def test_a_view_missing_on_some_images_is_a_warning_and_one_view_is_said_as_before(tmp_path):
    from imaging_assist.models.matching import SeriesFacts, match_card

    card = load_card(W / "cxr-pneumonia")
    s, _ = _two_image_series(tmp_path, {"ViewPosition": "AP"}, {"ViewPosition": ""})
    m = match_card(card, SeriesFacts.from_series(s))
    assert m.ok and any("on some images" in w for w in m.warnings), m.warnings
    s, _ = _two_image_series(tmp_path / "b", {"ViewPosition": "LL"}, {"ViewPosition": "LL"})
    assert match_card(card, SeriesFacts.from_series(s)).reason == "model was trained on AP views, the series is LL"


def test_cli_refuses_a_lateral_film_inside_an_ap_series(tmp_path, capsys):
    _two_image_series(tmp_path, {"ViewPosition": "AP"}, {"ViewPosition": "LL"})
    rc, text = _analyze(["analyze", str(tmp_path / "s"), "--model", "cxr-pneumonia",
                         "--out", str(tmp_path / "o")], capsys)
    assert rc != 0 and "LL not trained on" in text and "Traceback" not in text


# --------------------------------------------------------------------------- 3. statistics shapes
def test_statistics_with_a_matching_hash_but_wrong_shapes_are_refused(tmp_path):
    from safetensors.torch import load as st_load, save as st_save

    folder = _copy("cxr-pneumonia", tmp_path)
    t = st_load((folder / O.STATS_FILE).read_bytes())
    p = t["precision"]
    cases = {"precision": dict(t, precision=p[:1].contiguous()),  # (1, D): broadcast before
             "precision ": dict(t, precision=p[0].contiguous()),  # (D,)
             "means": dict(t, means=t["means"][0].contiguous()),  # (D,)
             "center": dict(t, center=t["center"][None].contiguous()),
             "scale": dict(t, scale=t["scale"][:5].contiguous()),
             "symmetric": dict(t, precision=(p + torch.triu(torch.ones_like(p), 1)).contiguous()),
             "semi-definite": dict(t, precision=(-p).contiguous())}
    for what, tensors in cases.items():
        _rehash(folder, st_save(tensors))
        card = load_card(folder)
        with pytest.raises(O.OODStatsError) as e:
            O.load_stats(card)
        assert what.strip() in _one_line(e.value), (what, str(e.value))
        bad = [r for r in verify(card) if not r.ok]  # models verify says so
        assert [r.file for r in bad] == [O.STATS_FILE] and what.strip() in bad[0].message


def test_statistics_of_another_feature_width_flag_the_result_never_a_raw_error(tmp_path):
    """Another model's (self-consistent, D=384) statistics under this card's hash: the width is
    compared with the network's features; the result is flagged with the reason."""
    from imaging_assist.inference.images import read_image
    from imaging_assist.inference.pipelines import run_model

    folder = _copy("cxr-pneumonia", tmp_path)
    # without its weights_sha256 (that alone is refused at load now, test_stats_weights_hash_s24): the
    # width check is what this test is about
    from safetensors.torch import load as st_load, save as st_save

    _rehash(folder, st_save(st_load((W / "ct-nodule-malignancy" / O.STATS_FILE).read_bytes())))
    card = load_card(folder)
    assert O.load_stats(card).tensors["center"].shape == (384,)
    with pytest.raises(O.OODStatsError, match="for 384 features, the network gives 448"):
        O.score(O.load_stats(card).tensors, np.zeros((2, 448)), "mahalanobis")
    model = load_model(card)
    Image.fromarray(_normal_films(1)[0]).save(tmp_path / "film.png")
    res = run_model(model, read_image(tmp_path / "film.png"))
    assert res.ood["flagged"] and "384 features" in res.ood["reasons"][0]
    assert all(v is None or v["positive"] is None for v in res.decisions.values())


def test_a_value_error_in_the_score_is_a_flagged_block(monkeypatch):
    card = load_card(W / "cxr-pneumonia")
    model = load_model(card)

    def boom(*a, **k):
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(O, "score", boom)
    d = O.ood_block(card, model.network, [torch.zeros(1, 224, 224)])
    assert d["flagged"] and "broadcast" in d["reasons"][0] and "\n" not in d["reasons"][0]
    assert O.block_from_features(card, np.zeros((1, 448)))["flagged"]


# --------------------------------------------------------------------------- 4. segmentation SR
def _concepts(ds) -> list[tuple[str, str]]:
    out = []
    for item in getattr(ds, "ContentSequence", None) or []:
        if "ConceptNameCodeSequence" in item and "ConceptCodeSequence" in item:
            out.append((str(item.ConceptNameCodeSequence[0].CodeValue), str(item.ConceptCodeSequence[0].CodeMeaning)))
        out += _concepts(item)
    return out


def test_sr_of_a_flagged_or_quality_failed_segmentation_says_so(tmp_path):
    from imaging_assist.dicom import load_series, scan
    from imaging_assist.export.sr import build_sr

    _cr(tmp_path / "s" / "1.dcm", _photo(), generate_uid(), generate_uid())
    (s,) = scan(str(tmp_path / "s")).image_series()
    vol = load_series(s)
    item = {"model": "cxr-lung-seg", "model_version": "1.0.0", "labels": ["background", "right_lung", "left_lung"],
            "voxel_counts": {"right_lung": 10, "left_lung": 5}, "area_mm2": {"right_lung": 2.5, "left_lung": 1.25},
            "ood": {"score": 18.8, "threshold": 2.86, "flagged": True, "reasons": ["x"]},
            "quality": {"checked": True, "passed": False, "failures": ["ratio"]}}
    warns: list = []
    got = _concepts(build_sr(vol, [item], warnings=warns))
    assert got.count(("IN-TRAIN-DOMAIN", "No")) == 2  # one per structure, as per label
    assert got.count(("QUALITY-CHECKS", "No")) == 2
    assert any("outside the model's training data" in w for w in warns)
    assert any("quality checks failed" in w for w in warns)
    ok = dict(item, ood={"flagged": False, "reasons": []}, quality={"checked": True, "passed": True})
    got = _concepts(build_sr(vol, [ok]))
    assert not [c for c in got if c[0] in ("IN-TRAIN-DOMAIN", "QUALITY-CHECKS")]


def test_the_ood_warning_says_decision_withheld_only_where_there_is_a_decision():
    """A flagged segmentation's warning ended in "(decision withheld)": it has no decision."""
    from types import SimpleNamespace

    from imaging_assist.validation.ood import attach_block

    block = {"flagged": True, "reasons": ["OOD score 3.67 > threshold 2.86"]}
    seg = SimpleNamespace(warnings=[])
    cls = SimpleNamespace(warnings=[], decisions={"pneumonia": {"positive": True, "threshold": 0.7}})
    attach_block(seg, dict(block))
    attach_block(cls, dict(block))
    assert seg.warnings == ["outside what this model was trained on: OOD score 3.67 > threshold 2.86"]
    assert cls.warnings == [seg.warnings[0] + " (decision withheld)"]
    assert cls.decisions["pneumonia"]["positive"] is None
