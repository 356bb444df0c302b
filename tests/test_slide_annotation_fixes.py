"""Slide annotations, regions, heat-map files and the DICOM WSI export, after an audit: a tangled
outline is measured in about a second (or refused in one line), a one-label model's heat map is
written and read back, GeoJSON limits hold for MultiPolygon members and are checked as the file is
read, bad numbers and endless files are one line, the region filter is vectorised with the same
values, the DICOM export carries its ICC profile, and QuPath 0.2's colours are read."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from imaging_assist.errors import UserError
from imaging_assist.slides import annotations as A
from imaging_assist.slides.annotations import read_geojson

ROOT = Path(__file__).resolve().parents[1]


def _star(n: int) -> np.ndarray:
    """A {n/k} star polygon, k = n/2 - 1: nearly every edge crosses most others (n·(k-1) crossings)."""
    k = n // 2 - 1
    t = np.arange(n) * 2 * np.pi * k / n
    return np.c_[5000 + 4000 * np.cos(t), 5000 + 4000 * np.sin(t)].round(3)


def _polygon_file(path: Path, ring) -> Path:
    ring = np.asarray(ring).tolist()
    path.write_text(json.dumps({"type": "Feature", "geometry": {"type": "Polygon",
                                                                "coordinates": [ring + ring[:1]]}}))
    return path


def _run(code: str, timeout: float, env=None) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (a regression that hangs is killed, not waited for)."""
    e = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", **(env or {}))
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT, env=e)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {timeout} s")


# ---------------------------------------------------------------- 1: a tangled outline
def test_a_star_outline_is_measured_even_odd_in_about_a_second(tmp_path):
    """A 200-vertex star (19,600 crossings, 4 KiB of GeoJSON) took 117 s in make_valid on import;
    now about a second, with the even-odd area (the one drawn and counted in the masks).  One
    crossing 2,000 times as often is refused in one line instead of running for hours."""
    from imaging_assist.slides.regions import points_in_polygon

    star = _star(200)
    ok = _polygon_file(tmp_path / "star200.geojson", star)
    huge = _polygon_file(tmp_path / "star2000.geojson", _star(2000))
    code = f"""
import json, time
from imaging_assist.errors import UserError
from imaging_assist.slides.annotations import read_geojson
t = time.monotonic()
anns, notes = read_geojson({str(ok)!r})
print(json.dumps([anns[0].measurements(None)["Area px^2"], anns[0].crosses_itself(), notes, time.monotonic() - t]))
t = time.monotonic()
try:
    read_geojson({str(huge)!r})
except UserError as e:
    print(json.dumps([str(e), time.monotonic() - t]))
"""
    r = _run(code, timeout=90)  # about a second each (117 s and hours before)
    assert r.returncode == 0, r.stderr[-2000:]
    (area, crosses, notes, took), (refusal, took2) = map(json.loads, r.stdout.splitlines())
    assert crosses and notes == ["feature 1: the outline crosses itself; its area counts the filled parts "
                                 "(even-odd, as drawn)"]
    assert took < 30 and took2 < 30
    assert refusal.startswith("feature 1: the outline crosses itself more than 50,000 times")
    assert "\n" not in refusal
    # the even-odd area against the even-odd rule sampled on a 1000 x 1000 grid
    g = 1000 + (np.arange(1000) + 0.5) * 8
    x, y = np.meshgrid(g, g)
    sampled = points_in_polygon(x, y, star).mean() * 8000 ** 2
    assert area == pytest.approx(sampled, rel=5e-3)


def test_tangled_outlines_give_what_make_valid_gave():
    """On the outlines make_valid (linework) measured in reasonable time, the same area."""
    import shapely

    from imaging_assist.measure import outline_area
    for ring in (_star(31), _star(51), [(0, 0), (80, 40), (80, 0), (0, 40)],
                 [(0, 0), (40, 0), (40, 40), (0, 40), (0, 10), (30, 10), (30, 30), (10, 30), (10, 5), (0, 5)]):
        ring = np.asarray(ring, float)
        expected = shapely.make_valid(shapely.Polygon(ring), method="linework").area
        assert outline_area(ring) == (pytest.approx(expected, rel=1e-12), True)


# ---------------------------------------------------------------- 2: one-label heat maps
@pytest.fixture(scope="module")
def one_label(tmp_path_factory):
    from imaging_assist.slides import open_slide, run_tiles
    from imaging_assist.slides.synth import make_levels, write_pyramid_tiff

    d = tmp_path_factory.mktemp("one")
    img = np.random.default_rng(3).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    slide = write_pyramid_tiff(d / "s.tif", make_levels(img, 64), mpp=0.25, tile=64)

    def sigmoid(x):  # one label: (N, 1) probabilities
        return np.clip(np.asarray(x)[:, 0].mean(axis=(1, 2)), 0, 1)[:, None].astype(np.float32)

    with open_slide(slide) as s:
        res = run_tiles(s, sigmoid, 32, 0.5, tissue_mask=None, class_names=["tumour"], top_k=2)
    return d, slide, res


@pytest.mark.parametrize("ext", ["tif", "npz"])
def test_a_one_label_heat_map_is_written_and_read_back(one_label, ext):
    from imaging_assist.slides import open_slide, read_heatmaps, write_heatmaps
    from imaging_assist.slides.annotations import slide_key

    d, slide, res = one_label
    assert res.heatmaps.shape[0] == 1
    with open_slide(slide) as s:
        path = write_heatmaps(res, d / f"heat.{ext}", slide=s)[0]
        heat, meta = read_heatmaps(path, slide_dimensions=s.dimensions, slide_key=slide_key(slide))
    assert heat.shape == res.heatmaps.shape and meta["class_names"] == ["tumour"]
    np.testing.assert_array_equal(np.nan_to_num(heat, nan=-1), np.nan_to_num(res.heatmaps, nan=-1))
    assert not [p.name for p in d.iterdir() if p.name.endswith(".tmp")]


def test_a_one_plane_tiff_keeps_its_pyramid(tmp_path):
    """Larger than 256 cells: reduced levels in SubIFDs, each a 2-D page."""
    import tifffile

    from imaging_assist.slides.heatmap_io import _write_tiff
    heat = np.random.default_rng(0).random((1, 600, 40)).astype(np.float32)
    _write_tiff(str(tmp_path / "h.tif"), heat, {"format": "x"}, (2.0, 2.0))
    with tifffile.TiffFile(tmp_path / "h.tif") as t:
        page = t.pages[0]
        assert page.shape == (600, 40) and len(page.pages) == 2
        np.testing.assert_array_equal(page.asarray(), heat[0])
        assert [p.shape for p in page.pages] == [(300, 20), (150, 10)]


@pytest.mark.parametrize("ext", ["tif", "npz"])
def test_a_failed_heat_map_write_leaves_no_broken_file(one_label, tmp_path, monkeypatch, ext):
    from imaging_assist.slides import heatmap_io, write_heatmaps

    _, _, res = one_label
    path = tmp_path / f"heat.{ext}"
    good = write_heatmaps(res, path)[0]
    before = Path(good).read_bytes()

    def broken(target, *a, **k):  # a disk that fills up half way through
        if isinstance(target, (str, os.PathLike)):
            with open(target, "wb") as f:
                f.write(b"II*\0\x08\0\0\0")
        else:
            target.write(b"PK\x03\x04")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(heatmap_io, "_write_tiff", broken)
    monkeypatch.setattr(heatmap_io.np, "savez_compressed", broken)
    with pytest.raises(OSError):
        write_heatmaps(res, path)
    assert Path(good).read_bytes() == before  # the previous file is intact
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # and no temporary file is left
    path.unlink()
    with pytest.raises(OSError):
        write_heatmaps(res, path)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- 3: GeoJSON limits
def _multipolygon(path: Path, members) -> Path:
    path.write_text(json.dumps({"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": members}}))
    return path


TRI = [[[0, 0], [5, 0], [0, 5], [0, 0]]]


def test_each_polygon_of_a_multipolygon_counts_as_a_feature(tmp_path, monkeypatch):
    monkeypatch.setattr(A, "MAX_FEATURES", 50)
    assert len(read_geojson(_multipolygon(tmp_path / "ok.geojson", [TRI] * 50))[0]) == 50
    with pytest.raises(UserError, match="more than 50 features"):
        read_geojson(_multipolygon(tmp_path / "many.geojson", [TRI] * 51))
    # empty members count too: no feature limit was passed by a MultiPolygon of "[]"s
    with pytest.raises(UserError, match="more than 50 features"):
        read_geojson(_multipolygon(tmp_path / "empty.geojson", [[]] * 51))


def test_vertices_are_counted_before_any_annotation_is_made(tmp_path, monkeypatch):
    made = []

    class Counted(A.Annotation):
        def __post_init__(self):
            made.append(self.kind)
            super().__post_init__()

    monkeypatch.setattr(A, "MAX_VERTICES", 1000)
    monkeypatch.setattr(A, "Annotation", Counted)
    with pytest.raises(UserError, match="more than 1,000 vertices"):
        read_geojson(_multipolygon(tmp_path / "m.geojson", [TRI] * 400))  # 1,600 vertices
    assert made == []


def test_notes_are_bounded(tmp_path):
    anns, notes = read_geojson(_multipolygon(tmp_path / "e.geojson", [[]] * 5000 + [TRI]))
    assert len(anns) == 1 and len(notes) == A.MAX_NOTES + 1
    assert notes[-1] == "and 4,980 more notes like these"
    assert all("without rings" in n for n in notes[:-1])


# ---------------------------------------------------------------- 4: a number of 5000 digits
def test_a_number_of_thousands_of_digits_is_one_line(tmp_path):
    p = tmp_path / "big.geojson"
    p.write_text('{"type":"Feature","geometry":{"type":"Point","coordinates":[' + "9" * 5000 + ",1]}}")
    with pytest.raises(UserError, match="big.geojson is not readable JSON") as e:
        read_geojson(p)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- 5: the region filter
def _reference_inside(px, py, poly):
    """The region filter's rule as it was written (a loop over the edges): the values must not change."""
    inside = np.zeros(px.shape, bool)
    for x1, y1, x2, y2 in zip(poly[:, 0], poly[:, 1], np.roll(poly[:, 0], -1), np.roll(poly[:, 1], -1)):
        if y1 != y2:
            inside ^= ((y1 > py) != (y2 > py)) & (px < x1 + (py - y1) * (x2 - x1) / (y2 - y1))
    return inside


def test_region_filter_keeps_its_values_and_is_fast():
    from imaging_assist.slides.regions import inside_fraction, points_in_polygon, rect_polygon

    rng = np.random.default_rng(5)
    g = np.arange(0, 31, 0.5)
    x, y = np.meshgrid(g, g)  # points on the vertices and edges of integer polygons, too
    for poly in [rect_polygon(4, 4, 10, 10), np.array([(0, 0), (20, 20), (20, 0), (0, 20)], float)] + \
            [rng.integers(0, 30, (12, 2)).astype(float) for _ in range(20)]:
        np.testing.assert_array_equal(points_in_polygon(x, y, poly), _reference_inside(x, y, poly))
    # a 10,000-vertex outline over 3,600 tiles of 448 px: 20 s before, 0.1 s now
    t = np.linspace(0, 2 * np.pi, 10_000, endpoint=False)
    r = 12000 * (1 + 0.05 * np.sin(40 * t))
    poly = np.c_[13440 + r * np.cos(t), 13440 + r * np.sin(t)]
    g = np.arange(60) * 448.0
    gx, gy = np.meshgrid(g, g)
    rects = np.c_[gx.ravel(), gy.ravel(), np.full(gx.size, 448.0), np.full(gx.size, 448.0)]
    start = time.monotonic()
    frac = inside_fraction(rects, poly)
    assert time.monotonic() - start < 3
    assert 0.55 < frac.mean() < 0.65 and set(np.unique(frac * 64)) <= set(range(65))
    some = rng.choice(len(rects), 6, replace=False)  # the sampled values themselves, as before
    s = (np.arange(8) + 0.5) / 8
    for i in some:
        px, py = np.meshgrid(rects[i, 0] + s * 448, rects[i, 1] + s * 448)
        assert frac[i] == np.float32(_reference_inside(px, py, poly).mean())


# ---------------------------------------------------------------- 6: DICOM WSI ICC profile
def test_the_dicom_wsi_export_carries_an_icc_profile(tmp_path):
    import pydicom

    from imaging_assist.slides.dicom_writer import save_dicom_wsi
    img = np.random.default_rng(2).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    levels = [img, img[::2, ::2]]
    files = save_dicom_wsi(tmp_path / "wsi", [(a.shape[1], a.shape[0]) for a in levels],
                           lambda lv, x, y, t: levels[lv][y:y + t, x:x + t], (0.5, 0.5), tile_size=128,
                           label=img[:50, :80])
    assert len(files) == 3
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.fail("dciodvfy (Debian package dicom3tools) is missing: scripts/test installs it")
    for f in files:
        ds = pydicom.dcmread(f)
        icc = ds.OpticalPathSequence[0].ICCProfile
        assert icc[12:24] == b"scnrRGB XYZ " and len(icc) > 128  # sRGB, as a DICOM input profile
        out = subprocess.run([exe, f], capture_output=True, text=True, timeout=120)
        assert [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")] == [], f


# ---------------------------------------------------------------- 7: QuPath 0.2 colours
def test_qupath_02_class_colours_are_read(tmp_path):
    p = tmp_path / "q.geojson"
    tri = [[[0, 0], [100, 0], [100, 100], [0, 0]]]
    feats = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": tri},
              "properties": {"objectType": "annotation", "classification": {"name": "Glomerulus", "colorRGB": c}}}
             for c in (-16711936, -3670016)]  # 0xFF00FF00 green; 0xFFC80000 QuPath's Tumor red
    p.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    anns, notes = read_geojson(p)
    assert [a.color for a in anns] == [(0, 255, 0), (200, 0, 0)] and notes == []


# ---------------------------------------------------------------- 8: an endless file
def test_an_endless_stream_is_refused_after_the_size_limit():
    code = """
import resource
resource.setrlimit(resource.RLIMIT_AS, (1500 << 20, 1500 << 20))
from imaging_assist.errors import UserError
from imaging_assist.slides.annotations import read_geojson
try:
    read_geojson("/dev/zero")
except UserError as e:
    print("refused:", e)
"""
    r = _run(code, timeout=60)
    assert r.stdout.strip() == "refused: zero is not a regular file (a folder, pipe or device)", r.stderr[-1000:]


def test_a_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path):
    """open() of a FIFO blocks until something writes to it: the viewer froze."""
    fifo = tmp_path / "shapes.geojson"
    os.mkfifo(fifo)
    code = f"""
from imaging_assist.errors import UserError
from imaging_assist.slides.annotations import read_geojson
try:
    read_geojson({str(fifo)!r})
except UserError as e:
    print("refused:", e)
"""
    r = _run(code, timeout=20)
    assert r.stdout.strip() == "refused: shapes.geojson is not a regular file (a folder, pipe or device)", \
        r.stderr[-1000:]
