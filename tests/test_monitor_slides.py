"""Whole-slide runs in the prediction log and the audit trail (issue 18), and the drift monitor of
path-lung-tissue and cxr-lung-seg with their shipped references: a real SVS through
analyze_slide is one `runs` row (kind slide, keyed pseudonym, size, MPP, tissue tiles, class
fractions, heat-map summary, run time, device) and one audit `model.run`; a cancelled run is
not logged; `monitor --model path-lung-tissue` compares tile runs with the tile reference and
keeps the slide run apart (no alert from pooling a slide with tiles)."""

from __future__ import annotations

import csv
import json
import threading

import pytest

from conftest import SHARED, need
from imaging_assist.cli.main import main
from imaging_assist.monitoring import log as plog

CMU1 = SHARED / "pathology" / "wsi_aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"
LC25000 = SHARED / "pathology" / "lc25000_lung_subset"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("IMAGING_ASSIST_PREDICTION_LOG", raising=False)
    yield tmp_path
    plog.close_all()


@pytest.fixture(scope="module")
def path_model():
    from imaging_assist.models.registry import Registry

    return Registry().load("path-lung-tissue")


def _runs(kind=None):
    lg = plog.open_log()
    cols = [r[1] for r in lg.query("PRAGMA table_info(runs)")]
    rows = [dict(zip(cols, r)) for r in lg.query("SELECT * FROM runs ORDER BY id")]
    return [r for r in rows if kind is None or r["kind"] == kind]


def test_a_slide_run_is_one_log_row_and_one_audit_event(home, path_model):
    from imaging_assist.privacy import audit
    from imaging_assist.privacy.sitekey import pseudonym
    from imaging_assist.slides.analysis import analyze_slide

    it = analyze_slide(need(CMU1), path_model, home / "out", "c", batch_size=16, top_k=1, explain=False)
    (row,) = _runs()
    assert row["kind"] == "slide" and row["model_id"] == "path-lung-tissue"
    assert row["model_version"] == path_model.card.version
    assert row["weights_sha256"] == path_model.card.weights[0].sha256
    key = pseudonym(str(CMU1.resolve()), "file")
    assert row["input_key"] == key and row["patient_key"] == key
    assert (row["cols"], row["rows"]) == tuple(it["slide"]["dimensions"])
    assert row["spacing_x"] == pytest.approx(it["slide"]["mpp"][0] / 1000)
    assert row["modality"] == "SM" and row["channels"] == 3
    out = json.loads(row["areas"])
    assert out["n_tissue_tiles"] == it["tiling"]["n_tissue_tiles"] and out["n_tiles_run"] == it["tiling"]["n_tiles_run"]
    assert out["area_fraction"] == pytest.approx(it["area_fraction"], abs=1e-5)
    assert set(out["heatmap"]) == set(path_model.card.labels)
    probs = json.loads(row["probabilities"])
    assert probs == pytest.approx(it["mean_probabilities"], abs=1e-5)
    assert row["top_label"] == max(probs, key=probs.get) and row["score"] == pytest.approx(max(probs.values()))
    assert row["ood_score"] == pytest.approx(it["ood"]["score"]) and row["ood_flagged"] == int(it["ood"]["flagged"])
    assert row["run_s"] > 0 and row["device"] == it["device"]
    # no path, file name or pixel in the row
    text = json.dumps(row)
    assert "CMU-1" not in text and str(SHARED) not in text
    runs = [e for e in audit.read_entries() if e and e["event"] == "model.run"]
    assert len(runs) == 1
    f = runs[0]["fields"]
    assert f["model"] == "path-lung-tissue" and "CMU-1" not in json.dumps(f)
    assert f["probabilities"] == pytest.approx({k: round(v, 4) for k, v in probs.items()}, abs=1e-4)

    # a cancelled (partial) run is not logged
    ev = threading.Event()
    it2 = analyze_slide(CMU1, path_model, home / "out2", "c", batch_size=4, top_k=1, explain=False,
                        progress=lambda d, n: ev.set() if d >= 4 else None, cancel=ev)
    assert it2["cancelled"] is True
    assert len(_runs()) == 1


def test_monitor_path_lung_tissue_uses_its_tile_reference_and_keeps_slides_apart(home, path_model, capsys):
    from imaging_assist.inference import RunOptions, read_image, run_model
    from imaging_assist.monitoring.reference import load_reference
    from imaging_assist.slides.analysis import analyze_slide

    ref = load_reference(path_model.card)
    assert ref["unit"] == "tile" and "no patient ids" in ref["data"] and ref["n"] >= 200
    assert ref["ood_sha256"] == path_model.card.ood["sha256"]
    # 30 test-split tiles (never in the reference's validation split) -> one in-distribution window
    rows = [r for r in csv.DictReader((path_model.card.folder / "predictions.csv").open()) if r["split"] == "test"]
    for r in rows[:30]:
        run_model(path_model, read_image(need(LC25000 / r["file"])), RunOptions(device="cpu"))
    analyze_slide(need(CMU1), path_model, home / "out", "c", batch_size=16, top_k=1, explain=False)
    capsys.readouterr()
    rc = main(["monitor", "--model", "path-lung-tissue", "--window", "30", "--json"])
    rep = json.loads(capsys.readouterr().out)
    (m,) = rep["models"]
    assert m["n_runs"] == 30 and m["n_slide_runs"] == 1
    assert any("whole-slide run" in n for n in m["notes"])
    assert not any("no training reference" in n for n in m["notes"])
    (w,) = m["windows"]
    assert w["input"]["ood_score"]["ks_p"] is not None and w["input"]["int_mean"]["psi"] is not None
    assert not w["alert"] and rc == 0, m["alerts"]


def test_cxr_lung_seg_reference_is_shipped_and_monitored(home, capsys):
    from imaging_assist.models.registry import Registry
    from imaging_assist.monitoring.reference import load_reference

    card = Registry().get("cxr-lung-seg").card
    ref = load_reference(card)
    assert ref["unit"] == "image" and ref["n"] == 33 and "jsrt_split" in ref["data"]
    assert ref["rates"]["positive"] is None and len(ref["values"]["score"]) == 33
    assert ref["ood_sha256"] == card.ood["sha256"]
    # the labelled fraction of the validation films (the segmenter's output statistic) is plausible
    assert 0.15 < sorted(ref["values"]["score"])[16] < 0.5
    # three JSRT test films (patients never in the reference) through the engine, logged
    from imaging_assist.inference import RunOptions, read_image, run_model

    model = Registry().load("cxr-lung-seg")
    test = [r["file"] for r in csv.DictReader((card.folder / "predictions.csv").open()) if r["set"] == "jsrt_test"]
    for f in test[:3]:
        run_model(model, read_image(need(SHARED / "cxr" / "lung_masks_jsrt" / f)), RunOptions(device="cpu"))
    capsys.readouterr()
    assert main(["monitor", "--model", "cxr-lung-seg", "--json"]) == 0
    (m,) = json.loads(capsys.readouterr().out)["models"]
    assert not any("no training reference" in n for n in m["notes"]) and m["n_runs"] == 3
    (w,) = m["windows"]
    sc = w["output"]["score"]
    assert sc["reference_median"] == pytest.approx(sorted(ref["values"]["score"])[16], abs=1e-3)
    assert sc["ks_p"] is not None and not w["alert"]  # < 30 runs: shown, never alerts
