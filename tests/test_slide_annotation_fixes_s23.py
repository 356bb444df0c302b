"""Slide annotations and DICOM WSI export (session 23): QuPath >= 0.4 derived classes
(``classification.names``), a DICOM WSI folder's identity that ignores files beside the
instances, LossyImageCompression of the export, a note for features off the open slide, the
JSON object count bounding the parse, and the store written with json's C encoder."""

import hashlib
import json
import os
import shutil

import numpy as np
import pydicom
import pytest

from conftest import SHARED, need
from imaging_assist.errors import UserError
from imaging_assist.slides import open_slide
from imaging_assist.slides.annotations import (DEFAULT_CLASS, HASH_CHUNK, Annotation, from_geojson, point_counts,
                                               read_geojson, slide_key, write_geojson)
from imaging_assist.slides.dicom_writer import save_dicom_wsi, slide_to_dicom
from imaging_assist.slides.synth import make_levels, pattern_rgb, write_pyramid_tiff

SVS = SHARED / "pathology" / "wsi_aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"


def _points(coords, cls):
    return {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": coords},
            "properties": {"objectType": "annotation", "classification": cls}}


# ---------------------------------------------------------------- 1: classification.names
def test_qupath_derived_class_names():
    doc = {"type": "FeatureCollection", "features": [
        _points([[10, 10], [20, 20], [30, 30]], {"names": ["Tumor", "Positive"], "color": [200, 0, 0]}),
        _points([[40, 40], [50, 50]], {"names": ["Tumor", "Negative"], "color": [112, 112, 225]}),
        _points([[60, 60]], {"name": "Stroma", "color": [150, 200, 150]})]}
    anns, notes = from_geojson(doc)
    assert [(a.name, a.color) for a in anns] == [("Tumor: Positive", (200, 0, 0)),
                                                ("Tumor: Negative", (112, 112, 225)), ("Stroma", (150, 200, 150))]
    assert point_counts(anns) == {"Tumor: Positive": 3, "Tumor: Negative": 2, "Stroma": 1}
    assert notes == []


def test_classification_without_name_is_one_note():
    doc = [_points([[1, 1]], {"color": [1, 2, 3]}), _points([[2, 2]], {"color": [1, 2, 3]}),
           _points([[3, 3]], {"names": [1, 2]})]
    anns, notes = from_geojson(doc)
    assert [a.name for a in anns] == [DEFAULT_CLASS] * 3
    unnamed = [n for n in notes if "without a name" in n]
    assert len(unnamed) == 1 and "2 features" in unnamed[0] and "feature 1" in unnamed[0]
    assert any("feature 3" in n and "not text" in n for n in notes)  # names that are not text


# ---------------------------------------------------------------- 2: DICOM WSI folder identity
def _old_folder_key(folder) -> str:
    """slide_key of a folder as it was before (every non-hidden file): annotations saved then
    must stay found for a folder of WSI instances only."""
    h = hashlib.sha256(b"imaging-assist slide v1\0")
    names = sorted(n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n)) and not n.startswith("."))
    for n in names[:2000]:
        full = os.path.join(folder, n)
        size = os.path.getsize(full)
        h.update(n.encode("utf-8", "surrogateescape") + f"\0{size}\0".encode())
        with open(full, "rb") as f:
            h.update(f.read(HASH_CHUNK))
            if size > HASH_CHUNK:
                f.seek(max(HASH_CHUNK, size - HASH_CHUNK))
                h.update(f.read(HASH_CHUNK))
    return h.hexdigest()[:32]


@pytest.fixture(scope="module")
def dicom_wsi(tmp_path_factory):
    d = tmp_path_factory.mktemp("dcm")
    levels = make_levels(pattern_rgb(300, 400), min_size=100)
    files = save_dicom_wsi(d / "wsi", [(a.shape[1], a.shape[0]) for a in levels],
                           lambda lv, x, y, t: levels[lv][y:y + t, x:x + t], (0.5, 0.5), tile_size=128,
                           label=np.full((40, 30, 3), 90, np.uint8))
    return d / "wsi", files


def test_dicom_folder_key_ignores_files_beside_the_instances(dicom_wsi, tmp_path):
    folder = tmp_path / "wsi"
    shutil.copytree(dicom_wsi[0], folder)
    k0 = slide_key(folder)
    assert k0 == _old_folder_key(folder)  # a folder of instances only: the key of before
    inst = sorted(folder.glob("*.dcm"))[0]
    assert slide_key(inst) == k0
    (folder / "annotations.geojson").write_text("{}")
    (folder / "slide_heatmaps.tif").write_bytes(b"II*\0" + bytes(100))
    (folder / "README").write_text("notes")
    assert slide_key(folder) == k0 and slide_key(inst) == k0
    with open_slide(folder) as s:  # and it still opens as the same slide
        assert s.dimensions == (400, 300)


# ---------------------------------------------------------------- 3: LossyImageCompression
def _volume_datasets(files):
    out = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    return [ds for ds in out if ds.ImageType[2] == "VOLUME"]


def test_jpeg_export_says_lossy(dicom_wsi, tmp_path):
    levels = make_levels(pattern_rgb(300, 400, smooth=True), min_size=100)
    files = save_dicom_wsi(tmp_path / "jpeg", [(a.shape[1], a.shape[0]) for a in levels],
                           lambda lv, x, y, t: levels[lv][y:y + t, x:x + t], (0.5, 0.5), tile_size=128,
                           jpeg_quality=90)
    vols = _volume_datasets(files)
    assert vols
    for ds in vols:
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
        assert ds.LossyImageCompression == "01"
        assert ds.LossyImageCompressionMethod == "ISO_10918_1"
        assert float(ds.LossyImageCompressionRatio) > 1
    with open_slide(tmp_path / "jpeg") as s:  # pixels still close to the source
        a = s.read_region((0, 0), 0, (400, 300))[..., :3].astype(int)
        assert np.abs(a - levels[0].astype(int)).mean() < 4
    # uncompressed export of an uncompressed source: "00"
    for ds in _volume_datasets(dicom_wsi[1]):
        assert ds.LossyImageCompression == "00" and "LossyImageCompressionMethod" not in ds


def test_export_of_a_jpeg_source_stays_lossy(tmp_path):
    levels = make_levels(pattern_rgb(300, 400, smooth=True), min_size=100)
    src = write_pyramid_tiff(tmp_path / "j.tif", levels, layout="chain", compression="jpeg", jpeg_quality=92)
    with open_slide(src) as s:
        files = slide_to_dicom(s, tmp_path / "out", tile_size=128)
    for ds in _volume_datasets(files):
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.LossyImageCompression == "01"
        assert ds.LossyImageCompressionMethod == "ISO_10918_1"
        assert float(ds.LossyImageCompressionRatio) > 1
    from imaging_assist.slides.dicom_writer import source_lossy_compression

    with open_slide(need(SVS)) as s:  # OpenSlide's Aperio SVS: "JPEG/RGB Q=30" in its description
        (lossy,) = source_lossy_compression(s)
        assert lossy.method.value == "ISO_10918_1" and lossy.ratio > 1


# ---------------------------------------------------------------- 4: features off the slide
def _offslide_file(tmp_path):
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[42000, 9000], [43000, 9000],
                                                                              [43000, 9800], [42000, 9000]]]},
         "properties": {"classification": {"name": "Tumor"}}},
        _points([[30000, 20000], [30010, 20010]], {"name": "Immune cells"}),
        _points([[100, 100], [30010, 20010]], {"name": "Stroma"})]}  # one vertex on the slide
    p = tmp_path / "offslide.geojson"
    p.write_text(json.dumps(doc))
    return p


def test_import_notes_features_off_the_slide(tmp_path):
    p = _offslide_file(tmp_path)
    anns, notes = read_geojson(p, (2220, 2967))
    assert len(anns) == 3  # kept
    assert "2 of 3 features" in notes[0] and "outside the slide" in notes[0] and "2,220 x 2,967" in notes[0]
    assert read_geojson(p)[1] == []  # without a slide size: nothing to say
    assert read_geojson(p, (50_000, 40_000))[1] == []


def test_viewer_import_passes_the_slide_size(tmp_path):
    from PySide6.QtCore import QObject

    from imaging_assist_ui.slides.slide_tools import SlideTools

    class View(QObject):  # what SlideTools uses of the slide view
        tools = None
        slide = type("S", (), {"dimensions": (2220, 2967), "mpp": (0.5, 0.5), "path": "x.svs"})()
        dimensions = (2220, 2967)

        def update(self):
            pass

    tools = SlideTools(View())
    assert tools.import_geojson(_offslide_file(tmp_path)) == 3
    assert "outside the slide" in tools.notes[0]


# ---------------------------------------------------------------- 5: JSON objects counted while parsing
def test_many_small_objects_stop_the_parse(tmp_path):
    p = tmp_path / "dicts.json"  # 2,000,010 objects: more than MAX_JSON_OBJECTS (20 a feature)
    p.write_text("[" + ",".join(["{}"] * 2_000_010) + "]")
    with pytest.raises(UserError, match="JSON objects"):
        read_geojson(p)
    # QuPath 0.2's cells: a measurement list of {name, value} objects (24 objects a feature) still read
    feat = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]},
            "properties": {"classification": {"name": "Tumor", "color": [1, 2, 3]},
                           "measurements": [{"name": f"m{i}", "value": i} for i in range(20)]}}
    p.write_text(json.dumps([feat] * 20_000))
    assert len(read_geojson(p)[0]) == 20_000


# ---------------------------------------------------------------- 6: the store with the C encoder
def test_store_written_with_the_c_encoder(tmp_path, monkeypatch):
    anns = [Annotation("polygon", [(0, 0), (5, 0), (0, 5)], "Tumor: Positive", label="Zone ü"),
            Annotation("points", [(1, 1), (2, 2)], "Stroma")]

    def python_encoder(*a, **k):
        raise AssertionError("json's pure-Python encoder used (json.dump / indent): seconds per edit")

    monkeypatch.setattr(json.encoder, "_make_iterencode", python_encoder)
    p = write_geojson(tmp_path / "a.geojson", anns, (0.5, 0.5), {"name": "s.svs"})
    monkeypatch.undo()
    doc = json.loads(p.read_text(encoding="utf-8"))  # valid JSON, a FeatureCollection as QuPath reads it
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 2
    assert doc["features"][0]["properties"]["classification"]["name"] == "Tumor: Positive"
    back, notes = read_geojson(p)
    assert [(a.kind, a.name, a.points, a.label) for a in back] == [(a.kind, a.name, a.points, a.label) for a in anns]
    assert notes == []
