"""File names that are not UTF-8 and texts with lone surrogates (audit s22).

A file copied from a Latin-1 system is named b'M\\xfcller.jpeg'; Python gives its name as
'M\\udcfcller.jpeg' (a lone surrogate, os.fsdecode).  A GeoJSON may name a class "Tumor\\ud800"
(valid JSON).  None of them may stop a batch, lose audit-trail or prediction-log records, or keep
slide annotations from being saved:

1. keyed pseudonyms hash such a name by its bytes; the batch table stores it escaped and resumes;
   one event of a group that cannot be recorded never takes the others with it; the prediction
   log records the run.
2. slide annotations: a lone surrogate in an imported name is replaced by U+FFFD (with a note);
   a slide named in Latin-1 is saved (its name escaped); a save that fails is said (store_error)
   and leaves no temporary file; the import dialog shows one line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from test_batch import _rows  # the table's rows, as test_batch reads them
from test_batch_audit_fixes import _batch, _films, _own_config  # noqa: F401  (own config and data folders)
from test_monitor_log import pneumonia  # noqa: F401

from conftest import SHARED, need
from imaging_assist.privacy import audit, sitekey

LATIN1 = os.fsdecode(b"M\xfcller.jpeg")  # 'M\udcfcller.jpeg'
SVS = SHARED / "pathology" / "wsi_aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"


def _latin1_folder(tmp_path: Path, n: int = 2) -> tuple[Path, Path]:
    """(a folder of ``n`` films, the one named b'M\\xfcller.jpeg')."""
    d = tmp_path / "in"
    d.mkdir()
    films = _films(n)
    odd = d / LATIN1
    shutil.copy(films[0], odd)
    for f in films[1:]:
        shutil.copy(f, d / f.name)
    return d, odd


def _audit_events() -> list[tuple[str, dict]]:
    return [(e["event"], e["fields"]) for e in audit.read_entries() if e]


# =========================================================================== 1. pseudonyms, batch, audit, log
def test_a_name_that_is_not_utf8_has_a_keyed_pseudonym_of_its_bytes():
    d = sitekey.keyed_digest(LATIN1, "path")
    assert d == sitekey.keyed_digest(b"M\xfcller.jpeg", "path")  # its bytes, as os.fsencode gives them
    assert d != sitekey.keyed_digest("Müller.jpeg", "path")  # not the UTF-8 name it looks like
    # valid text: the digest made before (plain UTF-8), so old pseudonyms still match
    want = hmac.new(sitekey.site_key(), b"path\x00M\xc3\xbcller.jpeg", hashlib.sha256).digest()
    assert sitekey.keyed_digest("Müller.jpeg", "path") == want
    # a lone surrogate no file name holds (from JSON text) has one too, and a stable one
    assert sitekey.pseudonym("Tumor\ud800", "x") == sitekey.pseudonym("Tumor\ud800", "x")
    assert audit.pseudonym(LATIN1, "path") and len(audit.pseudonym(LATIN1, "path")) == 32


def test_a_latin1_path_in_a_group_of_audit_events_is_recorded():
    with audit.grouped():
        audit.record("study.open", kind="image", path="/data/" + LATIN1)
        audit.record("model.run", model="m", source_paths=["/data/" + LATIN1])
        audit.record("export", kind="results.json", output="/out/" + LATIN1 + ".json")
    ev = _audit_events()
    assert [e for e, _ in ev] == ["study.open", "model.run", "export"]
    assert ev[0][1]["path"] == audit.pseudonym("/data/" + LATIN1, "path")
    ok, line, reason = audit.verify()
    assert ok, (line, reason)


def test_one_event_that_cannot_be_recorded_leaves_the_rest_of_its_group(caplog):
    class NoText:
        def __str__(self):
            raise ValueError("this value has no text")

    audit._warned.clear()
    with caplog.at_level(logging.WARNING, logger="imaging_assist.audit"):
        with audit.grouped():
            audit.record("study.open", kind="image", path="/data/a.jpeg")
            audit.record("model.run", model="m", note=NoText())
            audit.record("export", kind="results.json", output="/out/a.json")
    assert [e for e, _ in _audit_events()] == ["study.open", "export"]
    msgs = [r.getMessage() for r in caplog.records if r.name == "imaging_assist.audit"]
    assert len(msgs) == 1 and "'model.run' not recorded" in msgs[0] and "no text" in msgs[0], msgs
    assert "study.open" not in msgs[0] and "\n" not in msgs[0]


def test_the_batch_table_stores_a_latin1_source_escaped_and_compares_it():
    from imaging_assist.batch import table

    src = "/in/" + LATIN1
    with tempfile.TemporaryDirectory() as d:
        t = table.ResultsTable(d)
        try:
            t.put({"content_hash": "h", "model": "m", "model_version": "1", "status": "failed",
                   "error": f"{src}: truncated", "source": src, "stem": LATIN1[:-5], "warnings": [src]})
            t.put({"content_hash": "h2", "model": "m", "model_version": "1", "status": "ok", "source": "/in/b"})
            (row,) = t.rows("WHERE content_hash='h'")
            assert row["source"] == "/in/M\\xfcller.jpeg" and row["warnings"] == ["/in/M\\xfcller.jpeg"]
            assert t.failed_sources() == {"/in/M\\xfcller.jpeg"}
            t.add_sources("h2", "m", "1", ["/in/b", src])
            assert t.lookup("h2", "m", "1")["other_sources"] == ["/in/M\\xfcller.jpeg"]
            t.add_sources("h2", "m", "1", [src])  # named again: not twice
            assert t.lookup("h2", "m", "1")["other_sources"] == ["/in/M\\xfcller.jpeg"]
            assert t.clear_failed([src], "m", "h3") == 1 and t.failed_sources() == set()
        finally:
            t.close()
    assert table.db_text(src) == "/in/M\\xfcller.jpeg" and table.db_text(table.db_text(src)) == table.db_text(src)
    assert table.db_text("/in/Müller.jpeg") == "/in/Müller.jpeg"  # valid text as it is


def test_an_unreadable_latin1_path_is_hashed(tmp_path):
    from imaging_assist.batch.run import _file_hash

    h, why = _file_hash(str(tmp_path / LATIN1))  # gone: hashed by its path
    assert len(h) == 64 and why is None


@pytest.mark.parametrize("processes", [0, 2])
def test_a_batch_with_a_latin1_name_finishes_records_everything_and_resumes(tmp_path, processes):
    from imaging_assist.monitoring import log as plog

    src, odd = _latin1_folder(tmp_path)
    out = tmp_path / "out"
    try:
        rc, r, err = _batch(src, "--model", "cxr-pneumonia", "--out", out, "--processes", processes)
        assert rc == 0 and r["ok"] == 2 and r["failed"] == 0, err
        assert "not recorded" not in err and "internal error" not in err, err
        rows = _rows(out)
        assert sorted(x["source"] for x in rows) == sorted([str(src / "M\\xfcller.jpeg"),
                                                            str(src / _films(2)[1].name)])
        assert all(x["status"] == "ok" and Path(x["results_json"]).is_file() for x in rows)
        # the audit trail has the film's open, run and export; the prediction log its run
        ev = _audit_events()
        key = audit.pseudonym(str(odd), "path")
        assert any(e == "study.open" and f.get("path") == key for e, f in ev), ev
        assert any(e == "model.run" and key in (f.get("source_paths") or []) for e, f in ev), ev
        assert sum(e == "export" for e, _ in ev) == 2
        n_runs = plog.open_log().query("SELECT count(*) FROM runs")[0][0]
        assert n_runs == 2
        # the same command resumes: both films done, nothing run again
        rc, r, err = _batch(src, "--model", "cxr-pneumonia", "--out", out)
        assert rc == 0 and r["resumed"] == 2 and r["ok"] == 0 and r["total"] == 0, (r, err)
        assert len(_rows(out)) == 2
    finally:
        plog.close_all()


def test_a_run_on_a_latin1_file_is_in_the_trail_and_the_prediction_log(tmp_path, pneumonia):  # noqa: F811
    from imaging_assist.inference import RunOptions, read_image, run_model
    from imaging_assist.monitoring import log as plog

    _, odd = _latin1_folder(tmp_path, 1)
    try:
        res = run_model(pneumonia, read_image(odd), RunOptions(device="cpu"))
        assert res.prediction_log_id is not None
        row = plog.open_log().run(res.prediction_log_id)
        assert row["input_key"] == sitekey.pseudonym(str(odd.resolve()), "file")
    finally:
        plog.close_all()
    key = audit.pseudonym(str(odd), "path")
    ev = _audit_events()
    assert [e for e, _ in ev] == ["study.open", "model.run"] and ev[0][1]["path"] == key, ev


# =========================================================================== 2. slide annotations
def _geojson_with_surrogates(tmp_path: Path) -> Path:
    doc = ('{"type":"FeatureCollection","features":[{"type":"Feature","geometry":{"type":"Point",'
           '"coordinates":[10,20]},"properties":{"classification":{"name":"Tumor\\ud800"},"name":"cell\\udcfc"}}]}')
    p = tmp_path / "in.geojson"
    p.write_text(doc)
    return p


def test_a_lone_surrogate_in_an_imported_name_is_replaced_and_noted(tmp_path):
    from imaging_assist.slides.annotations import read_geojson, write_geojson

    (a,), notes = read_geojson(_geojson_with_surrogates(tmp_path))
    assert a.name == "Tumor\ufffd" and a.label == "cell\ufffd"
    assert len(notes) == 2 and all("U+FFFD" in n for n in notes), notes
    write_geojson(tmp_path / "out.geojson", [a])  # and it can be written, and read back
    (b,), notes = read_geojson(tmp_path / "out.geojson")
    assert (b.name, b.label, b.color) == (a.name, a.label, a.color) and not notes


def test_a_slide_named_in_latin1_gets_its_annotations_saved(tmp_path):
    from imaging_assist.slides.annotations import (Annotation, load_for_slide, save_for_slide, slide_key,
                                                   store_dir)

    odd = tmp_path / os.fsdecode(b"M\xfcller.svs")
    shutil.copy(need(SVS), odd)
    key = slide_key(odd)
    p = save_for_slide(key, [Annotation("points", [(100, 200)], "Tumor")], (0.499, 0.499),
                       {"name": odd.name, "dimensions": [2220, 2967], "identity": key})
    doc = json.loads(p.read_bytes().decode("utf-8"))  # strict UTF-8
    assert doc["imaging_assist"]["slide"]["name"] == "M\\xfcller.svs"
    assert [a.name for a in load_for_slide(key)[0]] == ["Tumor"]
    assert sorted(os.listdir(store_dir())) == [p.name]  # no temporary file
    # a DICOM WSI folder holding a Latin-1 file name has a key too
    (tmp_path / "wsi").mkdir()
    (tmp_path / "wsi" / os.fsdecode(b"\xe9t\xe9.dcm")).write_bytes(b"x" * 10)
    assert len(slide_key(tmp_path / "wsi")) == 32


def _tools(qapp, path: str):
    from imaging_assist_ui.slides.slide_tools import SlideTools

    view = SimpleNamespace(slide=SimpleNamespace(path=path, dimensions=(2220, 2967), mpp=(0.5, 0.5)),
                           update=lambda: None, setCursor=lambda c: None)
    t = SlideTools(view)
    t.key = "0123456789abcdef0123456789abcdef"
    return t


def test_the_viewer_saves_a_latin1_slide_and_says_when_a_save_fails(qapp, tmp_path):
    from imaging_assist.slides.annotations import Annotation, store_dir, store_path

    t = _tools(qapp, "/data/" + os.fsdecode(b"M\xfcller.svs"))
    said = []
    t.message.connect(said.append)
    t.add(Annotation("ruler", [(0, 0), (10, 0)]))
    assert t.store_error == "" and store_path(t.key).is_file() and not said
    # an annotation whose text cannot be written (a lone surrogate): said, the file kept, no .tmp
    before = store_path(t.key).read_bytes()
    bad = Annotation("ruler", [(0, 0), (20, 0)], "Tumor")
    bad.name = "Tumor\ud800"
    t.add(bad)
    assert t.store_error.startswith("annotations not saved: ") and "\n" not in t.store_error
    assert said == [t.store_error]
    assert store_path(t.key).read_bytes() == before
    assert sorted(os.listdir(store_dir())) == [store_path(t.key).name]


def test_the_import_dialog_shows_one_line_for_any_failure(qapp, tmp_path, monkeypatch):
    from imaging_assist_ui.slides import slide_page

    shown = []
    path = str(tmp_path / "in.geojson")
    monkeypatch.setattr(slide_page.QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (path, "")))
    monkeypatch.setattr(slide_page.QMessageBox, "warning", staticmethod(lambda *a: shown.append(a[2])))

    def import_annotations(p):
        "Tumor\ud800".encode()  # what an unexpected text error looks like

    page = SimpleNamespace(slide=object(), path=str(tmp_path / "s.svs"), import_annotations=import_annotations)
    slide_page.SlidePage.import_annotations_dialog(page)
    assert len(shown) == 1 and shown[0].startswith("Could not import in.geojson: ") and "\n" not in shown[0]
