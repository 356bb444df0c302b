"""One card-vs-series rule set (imaging_assist.models.matching) for analyze, the demo and the
viewer.  The cases are those where the two old rule sets (``models/cli._series_mismatch`` and
``ui/model_support.match_card``) gave different answers; each path must now give the one
answer of ``match_card``."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from conftest import DICOM, ROOT, need
from imaging_assist.errors import UserError
from imaging_assist.models.card import validate_card
from imaging_assist.models.matching import SeriesFacts, match_card, series_facts

XA_CINE = DICOM / "xa_multiframe_cine_jpeg_baseline" / "HasFragmentSequence.dcm"
DEMO_CR = ROOT / "imaging_assist" / "data" / "demo" / "chest_xray" / "cxr_03_pa.dcm"
COMMON = {"version": "1.0", "license": "MIT", "intended_use": "tests", "not_for_clinical_use": True,
          "data": {"training": "none", "validation": "none"}}


def card(**over):
    d = dict(COMMON, id="c", name="c", task="classification", modality=["CR", "DX"], body_part="CHEST",
             spatial_dims=2, labels=["a", "b"], format="torchscript",
             weights=[{"file": "model.ts", "sha256": "0" * 64}],
             input={"channels": 1, "size": [16, 16], "intensity": [{"type": "minmax"}]})
    d.update(over)
    return validate_card(d)


def seg3d(**over):
    return card(**dict(dict(id="s3", task="segmentation", spatial_dims=3, modality=["XA"], body_part=None,
                            input={"channels": 1, "roi_size": [16, 16, 16],
                                   "intensity": [{"type": "minmax"}]}), **over))


# =========================================================================== the rules
def test_rules_where_the_old_rule_sets_disagreed():
    cxr = card()
    # plain image (no DICOM, no modality): old viewer refused, old CLI ran it silently -> runs, warned
    m = match_card(cxr, SeriesFacts("", "", 1, False, "", is_dicom=False))
    assert m.ok and any("plain image" in w and "CR/DX" in w for w in m.warnings)
    # DICOM without Modality: old CLI ran it, old viewer refused -> refused (only OT cards take it)
    m = match_card(cxr, SeriesFacts("", "CHEST", 1, False, ""))
    assert not m.ok and "DICOM without Modality" in m.reason
    assert match_card(card(modality=["OT"]), SeriesFacts("", "CHEST", 1, False, "")).ok
    # an OT model (any modality, e.g. a bundle whose metadata says "regular") takes a CT, said
    m = match_card(card(modality=["OT"], body_part=None), SeriesFacts("CT", "", 1, False, ""))
    assert m.ok and any("names no modality (OT)" in w and "CT" in w for w in m.warnings), m.warnings
    # a cine loop (frames in time): old CLI took it as 3D (>= 2 frames), the viewer did not -> refused
    m = match_card(seg3d(), SeriesFacts("XA", "", 96, False, ""))
    assert not m.ok and "not a volume" in m.reason
    # before loading the same cine is only "unchecked", never silently accepted as a volume
    m = match_card(seg3d(), SeriesFacts("XA", "", 96, None, None, loaded=False))
    assert m.ok and m.unchecked == ["3D volume"]
    # units: old CLI ignored the card's input.units when matching, the viewer refused -> refused
    hu = card(modality=["OT"], body_part=None, input={"channels": 1, "size": [16, 16], "units": "HU",
                                                       "intensity": [{"type": "minmax"}]})
    m = match_card(hu, SeriesFacts("CR", "CHEST", 1, False, ""))
    assert not m.ok and "needs values in HU" in m.reason and "no physical units" in m.reason
    assert match_card(hu, SeriesFacts("CT", "", 1, False, None, loaded=False)).unchecked == ["values in HU"]
    # body part not given: fits, but the user is told it was not checked
    m = match_card(cxr, SeriesFacts("CR", "", 1, False, ""))
    assert m.ok and any("BodyPartExamined" in w for w in m.warnings)
    # what both agreed on stays: wrong modality / wrong body part / a single image for 3D
    assert "model is for CR/DX" in match_card(cxr, SeriesFacts("MR", "CHEST", 1, False, "")).reason
    assert "model is for CHEST" in match_card(cxr, SeriesFacts("CR", "KNEE", 1, False, "")).reason
    assert "3D model" in match_card(seg3d(), SeriesFacts("XA", "", 1, False, "")).reason
    assert not match_card(cxr, SeriesFacts("CR", "CHEST", 1, False, "", is_image=False)).ok
    # score: exact modality + body part + same dimensionality
    assert match_card(cxr, SeriesFacts("CR", "CHEST", 1, False, "")).score == 4


def test_facts_from_the_index_and_from_the_loaded_volume_of_real_files():
    from imaging_assist.dicom import load_series, scan

    (cine,) = scan(str(need(XA_CINE))).image_series()
    before = SeriesFacts.from_series(cine)
    assert before.modality == "XA" and before.n_slices == 96 and before.is_volume is None
    assert before.units is None and not before.loaded
    after = series_facts(load_series(cine), cine)
    assert after.is_volume is False and after.loaded and after.n_slices == 96
    (cr,) = scan(str(DEMO_CR)).image_series()
    f = series_facts(load_series(cr), cr)
    # population facts for later checks: the demo's adult PA film
    assert (f.modality, f.body_part, f.view_position) == ("CR", "CHEST", "PA")
    assert f.patient_age_years == pytest.approx(float(pydicom.dcmread(DEMO_CR).PatientAge[:-1]))
    assert SeriesFacts.from_series(cr).view_position == "PA"


def test_age_from_birth_and_study_date_when_patient_age_is_absent(tmp_path):
    from imaging_assist.dicom import scan

    ds = pydicom.dcmread(DEMO_CR)
    del ds.PatientAge
    ds.PatientBirthDate, ds.StudyDate = "20000101", "20100101"
    ds.save_as(tmp_path / "x.dcm")
    (s,) = scan(str(tmp_path)).image_series()
    assert SeriesFacts.from_series(s).patient_age_years == pytest.approx(10.0, abs=0.01)
    ds.PatientBirthDate = "20200101"  # born after the study: unknown, never a negative age
    ds.save_as(tmp_path / "x.dcm")
    (s,) = scan(str(tmp_path)).image_series()
    assert SeriesFacts.from_series(s).patient_age_years is None
    # completed calendar years on and around birthdays (days / 365.25 made the first
    # birthday 0.999 years: a 1-year-old refused by a model for ages 1-5)
    from imaging_assist.models.population import Population

    pop = Population(age_years=(1, 5))
    for born, study, completed in (("20200615", "20210615", 1), ("20200615", "20210614", 0),
                                   ("20170615", "20230615", 6), ("20170615", "20230614", 5),
                                   ("20160229", "20170228", 0), ("20160229", "20170301", 1)):
        ds.PatientBirthDate, ds.StudyDate = born, study
        ds.save_as(tmp_path / "x.dcm")
        (s,) = scan(str(tmp_path)).image_series()
        age = SeriesFacts.from_series(s).patient_age_years
        assert int(age) == completed, (born, study, age)
        assert pop.age_fits(age) == (1 <= completed <= 5), (born, study, age)


# =========================================================================== the three paths
def _arch_cls():
    return {"library": "monai", "name": "Classifier",
            "kwargs": {"in_shape": [1, 16, 16], "classes": 2, "channels": [4], "strides": [2],
                       "kernel_size": 3, "num_res_units": 0, "act": "relu", "norm": None, "dropout": None}}


def _arch_unet3d():
    return {"library": "monai", "name": "UNet",
            "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8],
                       "strides": [2], "num_res_units": 0}}


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    """Three model folders: a CR/DX chest classifier, a 3D XA segmenter, an OT classifier in HU."""
    from imaging_assist.models.architectures import build_network
    from imaging_assist.models.build import save_model_folder

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("match_models")
    base = dict(COMMON, task="classification", spatial_dims=2, labels=["a", "b"], architecture=_arch_cls(),
                input={"channels": 1, "size": [16, 16], "intensity": [{"type": "minmax"}]})
    save_model_folder(root / "cxr", dict(base, id="toy-cxr", name="cxr", modality=["CR", "DX"],
                                         body_part="CHEST"), build_network(_arch_cls()))
    save_model_folder(root / "hu", dict(base, id="toy-hu", name="hu", modality=["OT"],
                                        input=dict(base["input"], units="HU")), build_network(_arch_cls()))
    save_model_folder(root / "xa3d", dict(COMMON, id="toy-xa3d", name="xa", task="segmentation",
                                          modality=["XA"], spatial_dims=3, labels=["bg", "fg"],
                                          architecture=_arch_unet3d(),
                                          input={"channels": 1, "roi_size": [16, 16, 16],
                                                 "intensity": [{"type": "minmax"}]}),
                      build_network(_arch_unet3d()))
    return root


def _analyze(model: Path, src: Path, out: Path):
    """The `analyze` handler (UserError propagates) -> results.json or the error."""
    from imaging_assist.cli import build_parser

    args = build_parser().parse_args(["analyze", str(src), "--model", str(model), "--out", str(out)])
    try:
        rc = args.func(args)
    except UserError as e:
        return None, str(e)
    return rc, json.loads((out / "results.json").read_text())


def _demo_fits(lib: Path, series, vol) -> set[str]:
    from imaging_assist.demo import _Models
    from imaging_assist.models.registry import Registry

    models = _Models(Registry(sources=[(lib, "added")]), device="cpu")
    return {e.card.id for e in models.matching(series, vol)}


def _ui_match():
    """The viewer's match_card (the model panel imports it from model_support)."""
    for name in ("imaging_assist_ui.ai.model_support", "imaging_assist_ui.model_support"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise AssertionError("imaging_assist_ui model_support not found")


def test_cine_is_refused_by_a_3d_model_in_analyze_demo_and_viewer(tmp_path, lib):
    from imaging_assist.dicom import load_series, scan
    from imaging_assist.models.card import load_card

    src = tmp_path / "xa"
    src.mkdir()
    shutil.copy(need(XA_CINE), src / "cine.dcm")
    rc, got = _analyze(lib / "xa3d", src, tmp_path / "o")
    # old CLI: matched (>= 2 frames), then failed as an item error (exit 1); the old demo tried it
    assert rc is None, got
    assert "nothing in" in got and "not a volume" in got
    assert not (tmp_path / "o" / "results.json").exists()
    (s,) = scan(str(src)).image_series()
    vol = load_series(s)
    assert _demo_fits(lib, s, vol) == set()
    ui = _ui_match()
    facts = ui.series_facts(vol, s)
    assert not ui.match_card(load_card(lib / "xa3d"), facts).ok


def test_units_and_missing_modality_are_refused_before_running(tmp_path, lib):
    from imaging_assist.dicom import load_series, scan
    from imaging_assist.models.card import load_card

    # a CR has no physical units: the HU model does not fit it anywhere (old CLI: matched, then
    # an item error and exit 1; the old demo would have run it and noted a failure)
    rc, got = _analyze(lib / "hu", DEMO_CR, tmp_path / "o1")
    assert rc is None and "needs values in HU" in got
    (s,) = scan(str(DEMO_CR)).image_series()
    vol = load_series(s)
    assert _demo_fits(lib, s, vol) == {"toy-cxr"}
    ui = _ui_match()
    assert {c for c in ("hu", "cxr") if ui.match_card(load_card(lib / c), ui.series_facts(vol, s)).ok} == {"cxr"}
    # plain images have no physical units either: refused before any is read (old CLI: one
    # item error per image)
    png = tmp_path / "p.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    rc, got = _analyze(lib / "hu", png, tmp_path / "o3")
    assert rc is None and "plain image(s) skipped: model needs values in HU" in got, got
    # DICOM without Modality (old CLI: ran the chest model on it, taking it for a plain image)
    ds = pydicom.dcmread(DEMO_CR)
    del ds.Modality
    d = tmp_path / "nomod"
    d.mkdir()
    ds.save_as(d / "x.dcm")
    rc, got = _analyze(lib / "cxr", d, tmp_path / "o2")
    assert rc is None and "nothing in" in got, got


def test_plain_image_runs_with_a_warning_in_analyze_and_viewer(tmp_path, lib):
    from imaging_assist.inference.images import read_image
    from imaging_assist.models.card import load_card

    png = tmp_path / "film.png"
    Image.fromarray(np.asarray(pydicom.dcmread(DEMO_CR).pixel_array)).save(png)
    rc, doc = _analyze(lib / "cxr", png, tmp_path / "o")
    assert rc == 0, doc
    (it,) = doc["items"]
    assert "error" not in it
    # the pipeline says the modality is assumed; old CLI: no word on the body part
    assert any("modality" in w for w in it["warnings"])
    assert any("CHEST (body part), not checked" in w for w in it["warnings"])
    ui = _ui_match()
    m = ui.match_card(load_card(lib / "cxr"), ui.series_facts(read_image(png)))
    assert m.ok  # old viewer: refused ("the series is a plain image without modality")


def test_a_colour_microscopy_model_refuses_grayscale_images(tmp_path):
    """The shipped H&E model on a chest film: refused by the rules (a reason), before running,
    instead of running and being caught only by the OOD score.  A colour picture fits; a
    plain image not loaded yet is unchecked (analyze checks it again once loaded)."""
    from imaging_assist.batch.item import Settings
    from imaging_assist.batch.run import run_batch
    from imaging_assist.models.registry import Registry

    h_e = Registry().get("path-lung-tissue").card
    gray = SeriesFacts(is_dicom=False, units="", n_slices=1, is_color=False, loaded=True)
    m = match_card(h_e, gray)
    assert not m.ok and "model is for colour microscopy (stained tissue, 3 channels), the image is grayscale" \
        in m.reasons
    assert match_card(h_e, SeriesFacts(is_dicom=False, units="", n_slices=1, is_color=True, loaded=True)).ok
    before = match_card(h_e, SeriesFacts(is_dicom=False, units="", loaded=False))
    assert before.ok and "colour image" in before.unchecked
    assert match_card(Registry().get("cxr-pneumonia").card, gray).ok  # a 1-channel model: no colour rule
    # batch (analyze's own rules on the loaded image): a skipped row saying why
    src = tmp_path / "src"
    src.mkdir()
    film = pydicom.dcmread(need(DEMO_CR)).pixel_array  # a chest film, saved as a grayscale PNG
    Image.fromarray((film / film.max() * 255).astype(np.uint8)).save(src / "film.png")
    rgb = np.zeros((224, 224, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 200, 160
    Image.fromarray(rgb).save(src / "pink.png")
    r = run_batch([str(src)], ["path-lung-tissue"], Settings(out_dir=str(tmp_path / "out")), progress=False,
                  echo=lambda m: None)
    assert (r["skipped"], r["ok"]) == (1, 1), r
    import sqlite3

    db = sqlite3.connect(str(tmp_path / "out" / "batch.sqlite"))
    rows = dict(db.execute("SELECT stem, error FROM results").fetchall())
    db.close()
    assert "the image is grayscale" in rows["film"] and rows["pink"] is None
