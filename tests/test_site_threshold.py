"""Site operating points (evaluate --save-site-threshold): versioned beside the user config,
never in the shipped card; every run uses the newest one that fits the model and says so."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from conftest import SHARED, need

KERMANY = SHARED / "cxr" / "pneumonia_kermany" / "test"
TEXT = "site threshold 0.62, from 412 local studies, 2026-12-04"


@pytest.fixture(scope="module")
def pneumonia():
    from imaging_assist.models.loaders import load_model
    from imaging_assist.models.registry import Registry

    card = Registry().get("cxr-pneumonia").card
    return card, load_model(card, "cpu")


@pytest.fixture(scope="module")
def image():
    from imaging_assist.inference.images import read_image

    return read_image(sorted((need(KERMANY) / "PNEUMONIA").glob("*.jpeg"))[0])


def _run(pneumonia, image):
    from imaging_assist.inference.pipelines import RunOptions, run_model

    return run_model(pneumonia[1], image, RunOptions(device="cpu"))


def test_saved_site_threshold_is_used_and_said_with_every_decision(pneumonia, image, tmp_path, monkeypatch):
    from imaging_assist.models.site import save_site_threshold
    from imaging_assist_ui.ai.model_support import operating_point_text

    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path))
    card = pneumonia[0]
    card_file = Path(card.folder) / "model.json" if getattr(card, "folder", None) else None
    before = hashlib.sha256(card_file.read_bytes()).hexdigest() if card_file else None
    res0 = _run(pneumonia, image)
    assert res0.decisions["pneumonia"]["threshold"] == card.thresholds["pneumonia"].threshold
    assert res0.decisions["pneumonia"].get("threshold_source") == "card"
    save_site_threshold(card, "pneumonia", 0.62, 412, sensitivity=0.95, specificity=0.8,
                        date="2026-12-04")
    res = _run(pneumonia, image)
    d = res.decisions["pneumonia"]
    assert d["threshold"] == 0.62 and d["threshold_source"] == "site" and d["note"] == TEXT
    assert d["positive"] == (res.probabilities["pneumonia"] >= 0.62)
    assert d["sensitivity"] == 0.95 and d["specificity"] == 0.8  # the local figures, not the card's
    assert res.to_dict()["decisions"]["pneumonia"]["note"] == TEXT  # results.json
    assert TEXT in operating_point_text(d)  # the viewer's model panel
    assert card.thresholds["pneumonia"].threshold == 0.7477  # the card in memory is untouched
    if card_file:
        assert hashlib.sha256(card_file.read_bytes()).hexdigest() == before


def test_site_thresholds_are_versioned_and_the_newest_wins(pneumonia, tmp_path, monkeypatch):
    from imaging_assist.models.site import effective_thresholds, save_site_threshold, site_file

    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path))
    card = pneumonia[0]
    save_site_threshold(card, "pneumonia", 0.5, 100, date="2026-11-01")
    p, e = save_site_threshold(card, "pneumonia", 0.62, 412, date="2026-12-04")
    assert p == site_file(card.id) and p.parent == tmp_path / "site_thresholds" and e["version"] == 2
    doc = json.loads(p.read_text())
    assert [v["threshold"] for v in doc["versions"]] == [0.5, 0.62]
    assert doc["versions"][1]["model_version"] == card.version
    th, notes = effective_thresholds(card)
    assert th["pneumonia"].threshold == 0.62 and notes["pneumonia"] == TEXT
    with pytest.raises(ValueError):
        save_site_threshold(card, "nonsense", 0.5, 10)
    with pytest.raises(ValueError):
        save_site_threshold(card, "pneumonia", 1.5, 10)


def test_a_point_measured_on_another_model_version_is_not_used_and_the_reason_shown(pneumonia, image,
                                                                                    tmp_path, monkeypatch):
    from imaging_assist.models.site import save_site_threshold, site_file

    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path))
    card = pneumonia[0]
    p, _ = save_site_threshold(card, "pneumonia", 0.62, 412, date="2026-12-04")
    doc = json.loads(p.read_text())
    doc["versions"][0]["model_version"] = "0.9.0"
    site_file(card.id).write_text(json.dumps(doc))
    d = _run(pneumonia, image).decisions["pneumonia"]
    assert d["threshold"] == 0.7477 and d["threshold_source"] == "card"
    assert "0.9.0" in d["note"] and "card's threshold is used" in d["note"]


@pytest.mark.parametrize("body", [b"\x00\xff garbage", b"[]", b'{"versions": [{"label": "pneumonia"}]}',
                                  b'{"versions": [{"label": "pneumonia", "threshold": "NaN", '
                                  b'"n_studies": 3, "date": "x"}]}', b"{" * 2_000_000,
                                  b'{"versions": [{"label": "pneumonia", "version": "v1"}]}'])
def test_a_damaged_site_file_never_stops_a_run_and_is_named(pneumonia, image, tmp_path, monkeypatch, body):
    from imaging_assist.models.site import save_site_threshold, site_file

    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path))
    card = pneumonia[0]
    f = site_file(card.id)
    f.parent.mkdir(parents=True)
    f.write_bytes(body)
    d = _run(pneumonia, image).decisions["pneumonia"]
    assert d["threshold"] == 0.7477 and d["threshold_source"] == "card"
    assert d.get("note") and ("unreadable" in d["note"] or "ignored" in d["note"]
                              or "does not fit" in d["note"])
    # saving again keeps the damaged file aside instead of overwriting or failing
    save_site_threshold(card, "pneumonia", 0.62, 412, date="2026-12-04")
    assert _run(pneumonia, image).decisions["pneumonia"]["threshold"] == 0.62
