"""Fixes of the s23 fine-tune audit: a damaged model_versions.json refuses (every model when it
cannot be read, one model for its own bad entry) instead of silently running the shipped
models; a candidate card quotes no figures of the base model as its own and keeps every
fine-tune of its line; ``--out`` inside a folder the registry reads is refused; original-test
rows of the local patients are left out; a labels-CSV patient id and the DICOM Patient ID of one
film are one patient; ``finetune --json`` prints one JSON document; no non-inferiority verdict
on a handful of patients.  One real fine-tune (cxr-pneumonia, 1 epoch, no replay)."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import pytest

from _monitor_stream import shifted_local_set
from imaging_assist.errors import UserError
from test_finetune_patients import _dicom, _feedback_case
from test_monitor_audit_fixes import MODEL, SHIPPED, _candidate, _register, home  # noqa: F401
from conftest import DICOM, need


def _one_line(s: str) -> bool:
    return "\n" not in s and "\r" not in s


# --------------------------------------------------------------------------- 1. damaged state file
def test_a_damaged_state_file_refuses_instead_of_running_the_shipped_models(home):  # noqa: F811
    from imaging_assist.models.registry import Registry
    from imaging_assist.monitoring import versions as V

    _register(home, "1.0.0+site.1")
    V.promote(MODEL, "1.0.0+site.1")
    assert Registry().get(MODEL).card.version == "1.0.0+site.1"
    path = V.state_path()
    good = path.read_text()

    # cut short: which model has a promoted version is unknown -> every model refused, naming the file
    path.write_text(good[:-40])
    for m in (MODEL, "us-breast"):
        with pytest.raises(UserError) as e:
            Registry().get(m)
        msg = str(e.value)
        assert str(path) in msg and "not running the shipped" in msg and "delete it" in msg, msg
        assert _one_line(msg)

    # another model's broken entry refuses that model only
    d = json.loads(good)
    d["us-breast"] = {"candidates": {}, "active": "9.9", "history": []}
    path.write_text(json.dumps(d))
    assert Registry().get(MODEL).card.version == "1.0.0+site.1"
    with pytest.raises(UserError) as e:
        Registry().get("us-breast")
    assert "us-breast" in str(e.value) and str(path) in str(e.value) and _one_line(str(e.value))
    assert Registry().get("cxr-lung-seg").card.version  # a model without an entry runs


# --------------------------------------------------------------------------- 2. the candidate's card
def test_candidate_card_thresholds_and_limitations_are_not_the_base_figures_and_fine_tunes_accumulate(
        home, monkeypatch):  # noqa: F811
    from imaging_assist.models.card import validate_card
    from imaging_assist.models.operating_point import operating_point
    from imaging_assist.monitoring import finetune as FT
    from imaging_assist.monitoring import versions as V

    written = []
    monkeypatch.setattr(V, "register_candidate", lambda *a: None)
    monkeypatch.setattr("imaging_assist.models.build.save_model_folder", lambda out, raw, net: written.append(raw))
    base = SimpleNamespace(id=MODEL, version="1.0.0", name="x", raw=json.loads((SHIPPED / "model.json").read_text()))
    comps = {"local_holdout": {"diff": 0.0, "diff_ci95": [-0.01, 0.01]}}
    lims = FT.inherited_limitations(base)
    auc = [t for t in lims if "AUC is 0.968" in t]
    assert auc and all(t.startswith("Measured on the base model cxr-pneumonia 1.0.0") for t in auc)
    assert any(t.startswith("Trained only on paediatric") for t in lims)  # no figure measured: as it was
    for n, b in enumerate((base, None)):
        if b is None:  # a fine-tune of the promoted candidate
            b = SimpleNamespace(id=MODEL, version="1.0.0+site.1", name="x", raw=written[-1])
            monkeypatch.setattr(V, "next_version", lambda *a: "1.0.0+site.2")
        upd = {"training": {}, "limitations": FT.inherited_limitations(b),  # metrics: the candidate's, as finetune's
               "metrics": [{"name": "AUC", "value": 0.9, "ci95": [0.8, 0.95], "n": 30, "data": "local hold-out"}],
               "data": {**b.raw["data"], "fine_tuning": f"fine-tune number {n + 1}"}}
        (home / f"c{n}").mkdir()
        FT.finish_candidate(b, home / f"c{n}", upd, None, comps, {"metric": "AUC", "margin": 0.05}, None, 3,
                            ["file"], [], log=lambda s: None)
    raw = written[-1]
    t = raw["thresholds"]["pneumonia"]
    assert t["threshold"] == 0.7477 and "sensitivity" not in t and "specificity" not in t
    assert t["data"] == "inherited from cxr-pneumonia 1.0.0+site.1; not re-measured on this version"
    assert [h["description"] for h in raw["data"]["fine_tuning_history"]] == ["fine-tune number 1",
                                                                               "fine-tune number 2"]
    assert raw["data"]["fine_tuning"] == "fine-tune number 2"
    n_marked = [sum("Measured on the base model" in t for t in w["limitations"]) for w in written]
    assert n_marked[0] == n_marked[1] >= 1  # marked once, not again in the second fine-tune
    assert all(t.count("Measured on the base model") == 1 for t in raw["limitations"] if "AUC is 0.968" in t)
    # the card schema accepts a threshold without figures (format and weights: what save_model_folder adds)
    card = validate_card({**raw, "format": base.raw["format"], "weights": base.raw["weights"]}, SHIPPED)
    assert card.thresholds["pneumonia"].sensitivity is None
    op = operating_point(card, "pneumonia")
    assert op["test"] is None and "0.9506" not in json.dumps(op)


# --------------------------------------------------------------------------- 3. --out in a models folder
def test_finetune_out_inside_a_folder_the_registry_reads_is_refused(home):  # noqa: F811
    from imaging_assist.models.paths import project_weights_dir, user_models_dir
    from imaging_assist.models.registry import Registry
    from imaging_assist.monitoring.finetune import finetune

    added = home / "added"
    _candidate(added / "m", "1.0.0+x")
    Registry().add_folder(added)
    for out in (user_models_dir() / "site-candidate", project_weights_dir() / "new-cand", added / "cand"):
        with pytest.raises(UserError) as e:
            finetune(MODEL, out, data=home, labels_csv=home / "none.csv")
        assert "a folder the model registry reads" in str(e.value) and _one_line(str(e.value))
        assert not out.exists()


# --------------------------------------------------------------------------- 5. CSV id + DICOM id
def test_a_csv_patient_id_and_the_dicom_patient_id_of_one_patient_are_one_group(tmp_path, monkeypatch):
    from imaging_assist.monitoring.finetune import csv_patient, patient_groups

    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    data = tmp_path / "in"
    data.mkdir()
    src = need(DICOM / "rgb_jpeg_lossless_secondary_capture" / "GH538-jpeg14sv1.dcm")
    _dicom(src, data / "a.dcm", "PX")
    _dicom(src, data / "b.dcm", "PX")
    _dicom(src, data / "c.dcm", "PY")
    cases = [{"path": data / "a.dcm", "label": "normal", **csv_patient({"file": "a.dcm", "patient_id": "MRN-1"})},
             _feedback_case(data / "b.dcm", "normal"),   # logged by its Patient ID PX
             {"path": data / "c.dcm", "label": "normal", **csv_patient({"file": "c.dcm", "patient_id": "MRN-2"})}]
    assert patient_groups(cases, data) == ["MRN-1", "MRN-1", "MRN-2"]


# --------------------------------------------------------------------------- 7. too few patients
def test_no_non_inferiority_verdict_on_a_handful_of_patients():
    from imaging_assist.monitoring import versions as V

    tiny = {"diff": 0.0, "diff_ci95": [0.0, 0.0], "patients": 7,
            "patients_per_class": {"normal": 3, "pneumonia": 4}}
    ok, why = V.non_inferiority({"non_inferiority": {"metric": "AUC", "margin": 0.05,
                                                     "comparisons": {"local_holdout": tiny}}})
    k = V.MIN_PATIENTS_PER_CLASS
    assert not ok and why == [f"local_holdout: not enough data to judge: 7 patients / 3 normal and 4 pneumonia "
                              f"per class, at least {k} per class needed"]
    enough = {**tiny, "patients": 2 * k, "patients_per_class": {"normal": k, "pneumonia": k}}
    assert V.non_inferiority({"non_inferiority": {"comparisons": {"h": enough}}})[0]
    seg = {"diff": 0.0, "diff_ci95": [0.0, 0.0], "patients": k - 1}  # a segmenter: patients in all
    assert "not enough data to judge" in V.non_inferiority({"non_inferiority": {"comparisons": {"h": seg}}})[1][0]


# --------------------------------------------------------------------------- 4, 6, 7: one real fine-tune
@pytest.mark.slow
def test_finetune_json_stdout_original_test_without_local_patients_and_no_verdict_on_few(
        home, capsys, monkeypatch):  # noqa: F811
    from imaging_assist.cli.main import main

    monkeypatch.setenv("IMAGING_ASSIST_PREDICTION_LOG", "off")
    data, labels = shifted_local_set(home / "local", n=60)
    capsys.readouterr()
    assert main(["finetune", "--model", MODEL, "--data", str(data), "--labels", str(labels),
                 "--out", str(home / "cand"), "--epochs", "1", "--replay", "0", "--original-test-max", "10",
                 "--json"]) == 0
    out = capsys.readouterr().out
    r = json.loads(out)  # stdout is one JSON document: the training progress went to stderr

    # the original-test rows of the local patients (the Kermany person numbers run across its splits)
    local = {row["patient_id"] for row in csv.DictReader(labels.open())}
    test = [row for row in csv.DictReader((SHIPPED / "predictions.csv").open()) if row["split"] == "test"]
    n_shared = sum(row["patient"] in local for row in test)
    assert n_shared > 0
    assert r["original_test_left_out_local_patients"] == n_shared
    assert f"{n_shared} images of" in r["comparisons"]["original_test"]["data"]
    card = json.loads((home / "cand" / "model.json").read_text())
    assert f"{n_shared} images of the original test split left out" in card["data"]["fine_tuning"]
    assert "sensitivity" not in card["thresholds"]["pneumonia"]

    # 10 original-test films: fewer patients per class than a verdict needs
    o = r["comparisons"]["original_test"]
    assert min(o["patients_per_class"].values()) < 8
    assert not r["non_inferiority"]["passes"]
    assert any(w.startswith("original_test: not enough data to judge") for w in r["non_inferiority"]["reasons"])
