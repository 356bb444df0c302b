"""The bundled demo study and ``imaging-assist demo``.

* the demo DICOM files: valid files with file meta, CR / US, fake identities, unique UIDs,
  no invented pixel spacing, and pixels equal to their source images (X-rays) or to the
  generator (synthetic ultrasound);
* the scanner indexes them into the expected series;
* the headless demo runs the matching models (tiny test models here; the shipped ones in
  ``test_real_models_headless`` once they are in ``weights/``) and writes ``report.json``
  with the results, label maps, heat maps and key images;
* the GUI demo (offscreen) opens the demo, shows the first series and runs its models.
"""

from __future__ import annotations

import collections
import importlib.util
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from conftest import ROOT, SHARED, need

DEMO = ROOT / "imaging_assist" / "data" / "demo"
LICENSES = ROOT / "imaging_assist" / "data" / "licenses"
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
US_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"


def make_demo_module():
    spec = importlib.util.spec_from_file_location("make_demo_data", ROOT / "scripts" / "make_demo_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.SHARED = str(SHARED)
    return mod


def demo_files(sub: str) -> list[Path]:
    return sorted((DEMO / sub).glob("*.dcm"))


# =========================================================================== the files
def test_demo_dicom_files_are_valid_and_fake():
    files = demo_files("chest_xray") + demo_files("breast_us")
    assert [f.name for f in files] == ["cxr_01_ap.dcm", "cxr_02_ap.dcm", "cxr_03_pa.dcm", "cxr_04_pa.dcm",
                                       "us_01_breast.dcm", "us_02_breast.dcm"]
    uids = collections.Counter()
    for f in files:
        assert f.read_bytes()[128:132] == b"DICM"  # preamble + prefix + file meta
        ds = pydicom.dcmread(f)  # no force
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert str(ds.PatientName).startswith("DEMO^") and ds.PatientID.startswith("DEMO-")
        assert ds.PatientIdentityRemoved == "YES" and ds.PatientAge[-1] == "Y"
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsAllocated == 8
        assert ds.BitsStored == 8 and ds.SamplesPerPixel == 1 and ds.PixelRepresentation == 0
        # the spacing of these images is unknown: none may be invented
        for kw in ("PixelSpacing", "ImagerPixelSpacing", "SequenceOfUltrasoundRegions"):
            assert kw not in ds, (f.name, kw)
        if f.name.startswith("cxr"):
            assert ds.SOPClassUID == CR_STORAGE and ds.Modality == "CR" and ds.BodyPartExamined == "CHEST"
            assert ds.ViewPosition == f.stem.split("_")[-1].upper()
            assert list(ds.PatientOrientation) == ["L", "F"]
        else:
            assert ds.SOPClassUID == US_STORAGE and ds.Modality == "US" and ds.BodyPartExamined == "BREAST"
            assert "SYNTHETIC" in ds.SeriesDescription and "not a patient image" in ds.ImageComments
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns) and ds.pixel_array.dtype == np.uint8
        uids.update([ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID])
    for f in demo_files("ct_head_phantom"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        uids.update([ds.SOPInstanceUID])
    # every X-ray / US file is its own patient, study and series; no UID is used twice
    assert max(uids.values()) == 1 and len(uids) == 6 * 3 + 28


def test_xray_pixels_equal_the_source_images():
    mk = make_demo_module()
    assert len(mk.CXR) == 4
    for n, entry in enumerate(mk.CXR, 1):
        src = need(Path(mk.cxr_source(entry)))
        ref = np.asarray(Image.open(src).convert("L"))
        f = DEMO / "chest_xray" / f"cxr_{n:02d}_{entry[5].lower()}.dcm"
        ds = pydicom.dcmread(f)
        np.testing.assert_array_equal(ds.pixel_array, ref)
        assert str(ds.PatientName) == entry[2] and ds.PatientID == entry[3]
        assert entry[7] in ds.ImageComments  # the licence travels with the file
    # the paediatric images come from the ORIGINAL test split (never trained on by cxr-pneumonia)
    import csv

    rows = {r["file"]: r for r in csv.DictReader(open(need(SHARED / "cxr" / "pneumonia_kermany" / "labels.csv")))}
    kermany = [e for e in mk.CXR if e[0] == "pneumonia_kermany"]
    assert {rows[e[1]]["source_split"] for e in kermany} == {"test"}
    assert sorted(rows[e[1]]["label"] for e in kermany) == ["NORMAL", "PNEUMONIA"]
    # the adult images are those whose per-image licence is CC BY
    rows = {r["image"]: r for r in csv.DictReader(
        open(need(SHARED / "cxr" / "lung_masks_covid_generalblockchain" / "labels.csv")))}
    for e in mk.CXR:
        if e[0] != "pneumonia_kermany":
            assert rows[e[1]]["image_license"] == "CC BY" and rows[e[1]]["view"] == e[5]


def test_synthetic_ultrasound_is_reproducible():
    mk = make_demo_module()
    for n, (fname, name, pid, age, desc, mal, seed) in enumerate(mk.US, 1):
        ds = pydicom.dcmread(DEMO / "breast_us" / fname)
        np.testing.assert_array_equal(ds.pixel_array, mk.synthetic_breast_us(seed, mal))
        assert ds.SeriesDescription == desc and str(ds.PatientName) == name


def test_ct_uids_are_deterministic():
    """make_demo_data.py rebuilds byte-identical files: the UIDs come from the source, not chance."""
    from pydicom.uid import generate_uid

    for n, f in enumerate(demo_files("ct_head_phantom")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert ds.SOPInstanceUID == generate_uid(entropy_srcs=["imaging-assist-demo-ct", str(n)])
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SeriesInstanceUID == generate_uid(entropy_srcs=["imaging-assist-demo-ct-series"])
    mk = make_demo_module()
    ds = pydicom.dcmread(DEMO / "chest_xray" / "cxr_01_ap.dcm", stop_before_pixels=True)
    assert ds.SOPInstanceUID == mk._uid(f"cxr:{mk.CXR[0][0]}/{mk.CXR[0][1]}", "sop")


def test_attribution_and_size():
    text = (LICENSES / "DEMO_ATTRIBUTION.md").read_text()
    for must in ("10.17632/rscbjbr9sj.2", "CC BY 4.0", "arXiv:2003.11597", "GeneralBlockchain",
                 "could not be confirmed", "synthetic", "cxr_04_pa.dcm", "us_02_breast.dcm",
                 "LIDC-IDRI", "CC BY 3.0", "10.7937/K9/TCIA.2015.LO9QL9SX", "ct_chest_01..16.dcm"):
        assert must in text, must
    assert (LICENSES / "demo_ct_head_phantom_LICENSE_dcm_qa_ct.txt").is_file()
    size = sum(p.stat().st_size for p in (ROOT / "imaging_assist" / "data").rglob("*") if p.is_file())
    assert size < 5 * 1024**2  # "a few MB" (head phantom 2.4 MB, LIDC nodule CT 1.4 MB, X-rays, US)


def test_ct_chest_nodule_copy_keeps_geometry_and_hu():
    """The demo's LIDC crop: same HU at the same patient position as the real slab, and the
    demo's nodule point is the readers' consensus centre on the original slab."""
    from imaging_assist.demo import nodule_points
    from imaging_assist.dicom import load_series, scan
    from imaging_assist.nodules import lidc_xml

    slab_dir = need(SHARED / "ct" / "lidc_idri_0001_slab")
    src = load_series(scan(str(slab_dir)).all_series()[0])
    (s,) = scan(str(DEMO / "ct_chest_nodule")).image_series()
    demo = load_series(s)
    mk = make_demo_module()
    r0, c0, n = mk.NODULE_CROP
    assert demo.shape == (16, n, n)
    np.testing.assert_array_equal(demo.array, src.array[:, r0:r0 + n, c0:c0 + n])
    assert np.allclose(demo.index_to_lps(0, 0, 0), src.index_to_lps(c0, r0, 0), atol=1e-3)
    assert np.allclose(demo.affine[:3, :3], src.affine[:3, :3])
    for f in demo_files("ct_chest_nodule"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
        assert str(ds.PatientName).startswith("DEMO^") and "LIDC-IDRI" in ds.DerivationDescription
    (pt,) = nodule_points()[s.uid]
    (nod,) = lidc_xml.load_for_volume(slab_dir / "annotations_69.xml", src)
    want = lidc_xml.centre_lps(lidc_xml.consensus_mask(nod), src)
    assert np.allclose(pt["point_lps"], want, atol=1e-2)


def test_scanner_indexes_the_demo_series():
    from imaging_assist.demo import demo_root
    from imaging_assist.dicom import scan

    index = scan(demo_root())
    assert index.problems == []
    series = index.image_series()
    assert collections.Counter(s.modality for s in series) == {"CR": 4, "US": 2, "CT": 2}
    by_desc = {s.description: s for s in series}
    assert by_desc["DEMO head phantom (decimated)"].n_instances == 28
    assert by_desc["DEMO chest CT with a lung nodule (LIDC-IDRI-0001, cropped)"].n_instances == 16
    for s in series:
        if s.modality in ("CR", "US"):
            assert s.n_instances == 1 and s.body_part == {"CR": "CHEST", "US": "BREAST"}[s.modality]
    names = [p.name for p in index.patients]
    assert names[0] == "DEMO^CHEST-1^PAEDIATRIC" and len(names) == 8
    assert (series[0].rows, series[0].cols) == (224, 224)


# =========================================================================== test models
COMMON = {"version": "0.1", "license": "MIT (test model)", "not_for_clinical_use": True,
          "intended_use": "tests of the demo only",
          "data": {"training": "none: weights set by hand", "validation": "none"}}


def _lungs_net():
    """Scriptable 2D 'lung' segmenter: dark pixels (< 0.45 after min-max) are lung, on the
    image's left half the right lung (label 1), on its right half the left lung (label 2)."""
    import torch
    import torch.nn as nn

    class HalfLungs(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            dark = (0.45 - x) * 40.0
            w = x.shape[-1]
            col = torch.arange(w, device=x.device).to(x.dtype).view(1, 1, 1, w)
            right = (col < w / 2).to(x.dtype)
            return torch.cat([-dark, dark - 100.0 * (1.0 - right), dark - 100.0 * right], 1)

    return HalfLungs().eval()


def _classifier(n_classes: int, seed: int):
    import torch
    from monai.networks.nets import Classifier

    torch.manual_seed(seed)
    return Classifier(in_shape=(1, 64, 64), classes=n_classes, channels=(4, 4), strides=(2, 1), kernel_size=3,
                      num_res_units=0, act="relu", norm=None, dropout=None).eval()


def _cls_arch(n):
    return {"library": "monai", "name": "Classifier",
            "kwargs": {"in_shape": [1, 64, 64], "classes": n, "channels": [4, 4], "strides": [2, 1],
                       "kernel_size": 3, "num_res_units": 0, "act": "relu", "norm": None, "dropout": None}}


MINMAX = [{"type": "minmax"}]


def build_models(lib: Path) -> Path:
    from imaging_assist.models.build import save_model_folder

    save_model_folder(lib / "lungs", dict(
        COMMON, id="toy-lung-seg", name="toy lungs", task="segmentation", modality=["CR", "DX"],
        body_part="CHEST", spatial_dims=2, labels=["background", "right_lung", "left_lung"],
        input={"channels": 1, "intensity": MINMAX}, inference={"roi_multiple": 8}), _lungs_net(),
        fmt="torchscript")
    cxr = dict(COMMON, id="toy-pneumonia", name="toy pneumonia", task="classification",
               modality=["CR", "DX"], body_part="CHEST", spatial_dims=2, architecture=_cls_arch(2),
               labels=["normal", "pneumonia"], gradcam_layer="net.layer_0",
               input={"channels": 1, "size": [64, 64], "intensity": MINMAX},
               thresholds={"pneumonia": {"threshold": 0.5, "sensitivity": 0.95, "specificity": 0.6,
                                         "data": "none"}},
               explanation_region={"model": "toy-lung-seg", "labels": ["right_lung", "left_lung"],
                                   "name": "lungs"})
    save_model_folder(lib / "pneumonia", cxr, _classifier(2, 1))
    save_model_folder(lib / "us", dict(
        COMMON, id="toy-us-breast", name="toy breast US", task="classification", modality=["US"],
        body_part="BREAST", spatial_dims=2, architecture=_cls_arch(3), labels=["benign", "malignant", "normal"],
        input={"channels": 1, "size": [64, 64], "intensity": MINMAX}), _classifier(3, 2))
    bad = save_model_folder(lib / "corrupt", dict(cxr, id="toy-corrupt", explanation_region=None),
                            _classifier(2, 3))
    w = bad / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    return lib


@pytest.fixture(scope="module")
def toy_models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("demo_models") / "lib")


def _nifti_kji(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.transpose(np.asarray(nib.load(str(path)).dataobj), (2, 1, 0))


def test_headless_demo_runs_the_matching_models(tmp_path, toy_models, capsys):
    from imaging_assist.cli import main

    out = tmp_path / "out"
    # in-process (the CLI subprocess path is tested in test_cli.py): torch/MONAI are imported once
    rc = main(["demo", "--headless", "--models", str(toy_models), "--device", "cpu", "--out", str(out)])
    r = capsys.readouterr()
    assert rc == 0, r.err
    assert "Traceback" not in r.out + r.err
    assert f"Report written to {out / 'report.json'}" in r.out
    rep = json.loads((out / "report.json").read_text())
    assert rep["not_for_clinical_use"] is True and len(rep["series"]) == 8
    assert Path(rep["attribution"]).is_file() and "sources and licences" in r.out
    models = {m["id"]: m for m in rep["models"]}
    assert models["toy-pneumonia"]["sha256_verified"] and "sha256" in models["toy-corrupt"]["error"]
    by_mod = collections.defaultdict(list)
    for s in rep["series"]:
        by_mod[s["modality"]].append(s)
        assert Path(s["key_image"]).is_file()
    # CT: no test model fits -> one note, no analysis (the nodule models are not in this registry)
    assert len(by_mod["CT"]) == 2
    for ct in by_mod["CT"]:
        assert ct["analyses"] == [] and any("no registered model fits" in n for n in ct["notes"])
    for s in by_mod["CR"]:
        rows, cols = s["shape"][1:]
        got = {d["model"]: d for d in s["analyses"]}
        assert set(got) == {"toy-lung-seg", "toy-pneumonia"}, s["notes"]
        # the corrupt copy fails its sha256 check: a one-line note, the others still run
        assert any(n.startswith("toy-corrupt:") and "sha256" in n for n in s["notes"])
        seg, cls = got["toy-lung-seg"], got["toy-pneumonia"]
        # label map as 8-bit PNG of the image's size, areas in px (no spacing in the files)
        lm = np.array(Image.open(out / seg["label_map_png"]))
        assert lm.shape == (rows, cols) and lm.dtype == np.uint8
        np.testing.assert_array_equal(lm, _nifti_kji(out / seg["label_map"])[0])
        assert seg["area_mm2"] is None
        assert seg["area_px"]["right_lung"] == int((lm == 1).sum()) > 0
        assert seg["area_px"]["left_lung"] == int((lm == 2).sum()) > 0
        assert not (lm[:, cols // 2 + 8:] == 1).any()  # right lung on the image's left (+ padding)
        # classifier: probabilities with the card's decision, a Grad-CAM heat map
        assert abs(sum(cls["probabilities"].values()) - 1) < 1e-5
        dec = cls["decisions"]["pneumonia"]
        assert dec["threshold"] == 0.5 and dec["positive"] == (cls["probabilities"]["pneumonia"] >= 0.5)
        (hm,) = cls["heatmaps"]
        assert hm["method"] == "gradcam" and hm["label"] in cls["labels"]
        heat = _nifti_kji(out / hm["file"])
        assert heat.shape == (1, rows, cols)
        # the share of the heat map inside the lungs, recomputed from the files
        er = cls["explanation_region"]
        assert er["model"] == "toy-lung-seg" and er["name"] == "lungs"
        pos = np.clip(np.nan_to_num(heat[0]), 0, None)
        if pos.sum() > 0:
            want = pos[lm > 0].sum() / pos.sum()
            assert er["fraction_inside"] == pytest.approx(want, abs=1e-4)
        assert er["region_fraction_of_image"] == pytest.approx((lm > 0).mean(), abs=1e-5)
        # key images: the image with the overlay, at the image's size
        keys = seg["key_images"] + cls["key_images"]
        assert len(keys) == 2
        for k in keys:
            im = Image.open(out / k)
            assert im.size == (cols, rows) and im.mode == "RGB"
    for s in by_mod["US"]:
        (d,) = s["analyses"]
        assert d["model"] == "toy-us-breast" and set(d["probabilities"]) == {"benign", "malignant", "normal"}
        assert d["decisions"]["malignant"] is None  # no threshold in the card: no decision
        assert Image.open(out / d["key_images"][0]).size == (352, 288)
    # the console says where everything is
    assert "toy-pneumonia" in r.out and "key image" in r.out and "lies inside the lungs" in r.out


def test_headless_demo_without_models_still_shows_the_series(tmp_path):
    from imaging_assist.demo import run_headless
    from imaging_assist.models.registry import Registry

    empty = tmp_path / "none"
    empty.mkdir()
    rep = run_headless(str(tmp_path / "out"), registry=Registry(sources=[(empty, "added")]))
    assert len(rep["series"]) == 8 and all(s["analyses"] == [] for s in rep["series"])
    assert any("no models are registered" in n for n in rep["notes"])
    shapes = sorted(s["shape"] for s in rep["series"] if s["modality"] == "CT")
    assert shapes == [[16, 256, 256], [28, 256, 256]]
    cr = next(s for s in rep["series"] if s["modality"] == "CR")
    assert any("no pixel spacing" in w for w in cr["warnings"])


# =========================================================================== shipped models
def _shipped():
    from imaging_assist.models.registry import Registry, project_weights_dir

    reg = Registry(sources=[(project_weights_dir(), "project")])
    return reg, [e for e in reg.entries() if e.card is not None]


def test_real_models_headless(tmp_path):
    """The demo with the models shipped in weights/: every demo series that a shipped card
    fits is analysed by that model, and its outputs exist."""
    from imaging_assist.demo import run_headless
    from imaging_assist.dicom import load_series, scan
    from imaging_assist.models.matching import match_card, series_facts

    reg, shipped = _shipped()
    index = scan(str(DEMO))
    want = {}
    for s in index.image_series():
        facts = series_facts(load_series(s), s)
        want[s.key] = {e.card.id for e in shipped if match_card(e.card, facts).ok}
        if want[s.key] & {"ct-nodule-seg", "ct-nodule-malignancy"}:
            # the nodule workflow runs both at the readers' nodule: one item, under the classifier
            want[s.key] = (want[s.key] - {"ct-nodule-seg"}) | {"ct-nodule-malignancy"}
    # weights/ ships with the project: the chest X-rays, the breast US and the nodule CT
    assert sum(bool(v) for v in want.values()) == 7, want
    out = tmp_path / "out"
    rep = run_headless(str(out), registry=reg, device="cpu")
    for s in rep["series"]:
        got = {d["model"] for d in s["analyses"]}
        assert got == want[s["key"]], (s["description"], s["notes"])
        rows, cols = s["shape"][1:]
        for d in s["analyses"]:
            assert "error" not in d
            for k in d["key_images"]:
                assert Image.open(out / k).size == (cols, rows)
            if d["task"] == "nodule":  # the readers' nodule is found and measured
                (nd,) = d["nodules"]
                assert nd["found"], nd["reason"]
                assert 0.0 <= nd["p_malignant"] <= 1.0 and (out / d["label_map"]).is_file()
            elif d["task"] == "classification":
                assert abs(sum(d["probabilities"].values()) - 1) < 1e-4
            else:
                assert np.array(Image.open(out / d["label_map_png"])).shape == (rows, cols)
            for h in d["heatmaps"]:
                assert (out / h["file"]).is_file()
            er = d.get("explanation_region")
            if er is not None and not er.get("error") and er.get("fraction_inside") is not None:
                assert 0.0 <= er["fraction_inside"] <= 1.0


# =========================================================================== GUI
@pytest.mark.gui
def test_gui_demo_opens_first_series_and_runs_its_models(qapp, tmp_path_factory, toy_models):
    from PySide6.QtCore import QSettings

    from _qt import wait_until
    from imaging_assist.demo import demo_root, first_series_key
    from imaging_assist.models.registry import Registry
    from imaging_assist_ui.ai.demo_autorun import AutoRun

    mp = pytest.MonkeyPatch()
    mp.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path_factory.mktemp("cfg")))
    try:
        Registry().add_folder(toy_models)
        # the toy lung segmenter is TorchScript (a program): this new user folder trusts it, as
        # `imaging-assist models trust toy-lung-seg` would; untrusted, the demo skips it
        from imaging_assist.models.trust import trust

        trust(toy_models / "lungs")
        # what `imaging-assist demo` does with a display (ui/app.run_gui(..., run_models=True))
        from imaging_assist_ui.app import make_app
        from imaging_assist_ui.main_window import MainWindow

        make_app()
        w = MainWindow(settings=QSettings(str(tmp_path_factory.mktemp("ini") / "s.ini"), QSettings.IniFormat))
        w.resize(1600, 1000)
        w.show()
        w.open_path(demo_root(), series=first_series_key())
        auto = AutoRun(w)
        w.show_model_panel()
        try:
            assert wait_until(lambda: w.load_state == "done"), w.last_error
            # the first series of the demo is shown: the paediatric NORMAL chest X-ray
            assert w.doc.series.description == "DEMO chest AP (NORMAL)"
            assert w.doc.volume.shape[1:] == (224, 224)
            assert wait_until(lambda: auto.idle, 120), (auto.started, auto.finished, w.model_panel.status.text())
            done = dict(auto.finished)
            assert done.get("toy-lung-seg") == "done" and done.get("toy-pneumonia") == "done", auto.finished
            assert done.get("toy-corrupt") == "error"  # its sha256 check fails: one line in the panel
            assert auto.started.index("toy-lung-seg") < auto.started.index("toy-pneumonia")
            assert "toy-us-breast" not in auto.started  # does not fit a chest X-ray
            made = {getattr(layer, "model_id", None) for layer in w.doc.layers.layers}
            assert {"toy-lung-seg", "toy-pneumonia"} <= made
        finally:
            w.close()
    finally:
        mp.undo()


def test_real_lung_seg_on_the_adult_demo_xrays_matches_their_reference_masks():
    """cxr-lung-seg on the two adult demo X-rays (DICOM, never trained on) against the
    radiologists' masks of their source set: right lung on the image's left, Dice per lung."""
    from imaging_assist.dicom import load_series, scan
    from imaging_assist.inference.pipelines import RunOptions, run_model

    reg, shipped = _shipped()
    assert "cxr-lung-seg" in {e.card.id for e in shipped}, "shipped model cxr-lung-seg missing from weights/"
    import csv

    mk = make_demo_module()
    src = SHARED / "cxr" / "lung_masks_covid_generalblockchain"
    rows = {r["image"]: r for r in csv.DictReader(open(need(src / "labels.csv")))}
    model = reg.load("cxr-lung-seg")
    for n, e in enumerate(mk.CXR, 1):
        if e[0] != "lung_masks_covid_generalblockchain":
            continue
        f = DEMO / "chest_xray" / f"cxr_{n:02d}_{e[5].lower()}.dcm"
        (series,) = scan(str(f)).image_series()
        res = run_model(model, load_series(series), RunOptions(device="cpu"))
        ref = np.array(Image.open(src / rows[e[1]]["label_mask"]))
        lm = res.label_map[0]
        assert lm.shape == ref.shape
        for lab in (1, 2):  # 1 right lung, 2 left lung in both
            a, b = lm == lab, ref == lab
            dice = 2 * (a & b).sum() / (a.sum() + b.sum())
            assert dice > 0.7, (f.name, lab, dice)


def test_real_pneumonia_model_gives_the_same_probability_on_the_dicom_as_on_its_source_jpeg():
    """The paediatric demo X-rays hold the source JPEG's pixels: the shipped model must score
    the DICOM exactly as the training script scored the JPEG (its predictions.csv)."""
    import csv

    from imaging_assist.dicom import load_series, scan
    from imaging_assist.inference.pipelines import RunOptions, run_model

    reg, shipped = _shipped()
    entry = next((e for e in shipped if e.card.id == "cxr-pneumonia"), None)
    assert entry is not None and (entry.folder / "predictions.csv").is_file(), \
        "shipped model cxr-pneumonia (with predictions.csv) missing from weights/"
    preds = {r["file"]: float(r["p_pneumonia"]) for r in csv.DictReader(open(entry.folder / "predictions.csv"))}
    mk = make_demo_module()
    model = reg.load("cxr-pneumonia")
    checked = 0
    for n, e in enumerate(mk.CXR, 1):
        if e[0] != "pneumonia_kermany" or e[1] not in preds:
            continue
        (series,) = scan(str(DEMO / "chest_xray" / f"cxr_{n:02d}_{e[5].lower()}.dcm")).image_series()
        res = run_model(model, load_series(series), RunOptions(device="cpu"))
        assert res.probabilities["pneumonia"] == pytest.approx(preds[e[1]], abs=2e-4), e[1]
        checked += 1
    assert checked == 2
