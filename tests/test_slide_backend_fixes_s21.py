"""Slide backend fixes (s21): read_region on levels whose size was rounded, a DICOM WSI with a
3x level, 16-bit plain images, one identity for a DICOM WSI opened as its folder or a file,
a tile region off the slide.  Inputs are cut from the real CMU-1 small region, built as a
pyramid (2x2 box means, sizes rounded down) in tmp_path."""

import glob
import hashlib
import os

import numpy as np
import openslide
import pydicom
import pytest
import tifffile
from PIL import Image

from conftest import SHARED
from imaging_assist.slides import SlideError, open_slide
from imaging_assist.slides.annotations import slide_key
from imaging_assist.slides.dicom_writer import save_dicom_wsi
from imaging_assist.slides.heatmap_io import read_heatmaps, write_heatmaps
from imaging_assist.slides.openslide_backend import OpenSlideSlide
from imaging_assist.slides.tiling import plan_tiles, run_tiles

SVS = SHARED / "pathology" / "wsi_aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"


def box(a, f):
    h, w = a.shape[0] // f * f, a.shape[1] // f * f
    return a[:h, :w].reshape(h // f, f, w // f, f, 3).mean((1, 3)).round().astype(np.uint8)


@pytest.fixture(scope="module")
def cut():
    """A 2001 x 752 px piece of the real slide (tissue), odd width: level sizes get rounded."""
    with openslide.OpenSlide(str(SVS)) as o:
        return np.asarray(o.read_region((100, 900), 0, (2001, 752)))[..., :3].copy()


def write_tiff(path, levels, mpp=0.5):
    """Tiled TIFF pyramid, X/YResolution in px/cm per level (MPP from resolution tags)."""
    with tifffile.TiffWriter(path) as tw:
        for i, a in enumerate(levels):
            f = levels[0].shape[1] / a.shape[1]
            tw.write(a, tile=(64, 64), photometric="rgb", metadata=None, resolution=(1e4 / mpp / f, 1e4 / mpp / f),
                     resolutionunit="CENTIMETER", **({"subfiletype": 1} if i else {}))
    return str(path)


@pytest.fixture(scope="module")
def rounded(cut, tmp_path_factory):
    """The piece as a tiled TIFF and a DICOM WSI with levels 1x, 2x, 4x (1000 x 376, 500 x 188)."""
    d = tmp_path_factory.mktemp("rounded")
    levels = [cut, box(cut, 2), box(cut, 4)]
    tif = write_tiff(d / "p2.tif", levels)
    save_dicom_wsi(d / "dcm", [(a.shape[1], a.shape[0]) for a in levels],
                   lambda lv, x, y, t: levels[lv][y:y + t, x:x + t], (0.5, 0.75), tile_size=128)
    return {"levels": levels, "tif": tif, "dcm": str(d / "dcm")}


# --------------------------------------------------------------------------- 1. read_region


@pytest.mark.parametrize("which, backend", [("tif", "tifffile"), ("dcm", "wsidicom")])
def test_read_region_on_rounded_levels_takes_the_stored_pixel_as_openslide(rounded, which, backend):
    levels = rounded["levels"]
    with open_slide(rounded[which]) as s, openslide.OpenSlide(rounded["tif"]) as o:
        assert s.backend == backend
        assert s.level_downsamples[1:] == pytest.approx((2.0005, 4.001))
        for level, f in ((1, 2), (2, 4)):
            t = levels[level]
            # the level pixel k holds level-0 pixels f*k .. f*k+f-1, as the pyramid was made
            for k in range(min(t.shape[:2]) - 3):
                for x in (f * k, f * k + f - 1):
                    np.testing.assert_array_equal(s.read_region((x, x), level, (3, 3)), t[k:k + 3, k:k + 3],
                                                  err_msg=f"level {level} at {x}")
            # OpenSlide draws the level from location / downsample and interpolates unless that
            # is (within 0.002) a whole level pixel m: there it returns stored pixel m, and so do we
            ds = o.level_downsamples[level]
            near = [x for x in range(0, 40) if abs(x / ds - round(x / ds)) < 0.002]
            assert len(near) >= 8
            for x in near:
                for y in near:
                    ref = np.asarray(o.read_region((x, y), level, (5, 4)))[..., :3]
                    mx, my = round(x / ds), round(y / ds)
                    np.testing.assert_array_equal(ref, t[my:my + 4, mx:mx + 5])
                    np.testing.assert_array_equal(s.read_region((x, y), level, (5, 4)), ref,
                                                  err_msg=f"level {level} at {(x, y)}")


def test_read_region_on_exact_levels_is_unchanged(tmp_path, cut):
    # 3x levels of a 999 x 750 piece divide exactly: the pixel that contains the location
    a = cut[:750, :999]
    levels = [a, box(a, 3)]
    with open_slide(write_tiff(tmp_path / "p3.tif", levels)) as s:
        assert s.level_downsamples[1] == 3.0
        for x in (0, 2, 3, 5, 300, 301, 302):
            np.testing.assert_array_equal(s.read_region((x, x), 1, (2, 2)), levels[1][x // 3:x // 3 + 2, x // 3:x // 3 + 2])


# --------------------------------------------------------------------------- 2. DICOM 1x, 2x, 3x


@pytest.fixture(scope="module")
def dicom_p3(cut, tmp_path_factory):
    """A DICOM WSI folder with levels 1x, 2x and 3x (the 3x level exported alone, then joined
    to the slide's series), as the auditor built it."""
    d = tmp_path_factory.mktemp("p3dcm")
    base = cut[:750, :999]
    l2, l3 = box(base, 2), box(base, 3)
    src = save_dicom_wsi(d / "src", [(base.shape[1], base.shape[0]), (l2.shape[1], l2.shape[0])],
                         lambda lv, x, y, t: (base, l2)[lv][y:y + t, x:x + t], (0.5, 0.75), tile_size=128)
    f3 = save_dicom_wsi(d / "l3", [(l3.shape[1], l3.shape[0])], lambda lv, x, y, t: l3[y:y + t, x:x + t],
                        (1.5, 2.25), tile_size=128)
    src = sorted((pydicom.dcmread(f) for f in src), key=lambda ds: -ds.TotalPixelMatrixColumns)
    out = d / "slide"
    out.mkdir()
    for i, ds in enumerate(src):
        ds.save_as(out / f"L{i}.dcm")
    d3 = pydicom.dcmread(f3[0])
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PyramidUID", "ContainerIdentifier",
               "DimensionOrganizationSequence", "SpecimenDescriptionSequence", "TotalPixelMatrixOriginSequence",
               "StudyID", "SeriesNumber", "PatientName", "PatientID", "AcquisitionUID"):
        if kw in src[0]:
            setattr(d3, kw, src[0].data_element(kw).value)
    d3.ImageType = ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
    d3.save_as(out / "L2.dcm")
    return {"dir": str(out), "levels": [base, l2, l3]}


def test_dicom_wsi_with_a_3x_level_opens_with_openslides_levels_mpp_and_stored_pixels(dicom_p3):
    levels = dicom_p3["levels"]
    with openslide.OpenSlide(os.path.join(dicom_p3["dir"], "L0.dcm")) as o:
        ref_dims = o.level_dimensions
        ref_mpp = (float(o.properties["openslide.mpp-x"]), float(o.properties["openslide.mpp-y"]))
    assert ref_dims == tuple((a.shape[1], a.shape[0]) for a in levels)
    for path in (dicom_p3["dir"], os.path.join(dicom_p3["dir"], "L0.dcm")):
        with open_slide(path) as s:
            assert s.backend == "wsidicom" and s.format == "dicom-wsi"
            assert s.level_dimensions == ref_dims
            assert s.level_downsamples[2] == 3.0
            assert s.mpp == pytest.approx(ref_mpp) == (0.5, 0.75) and s.mpp_source == "dicom-pixel-spacing"
            assert not s.warnings
            for level, a in enumerate(levels):
                np.testing.assert_array_equal(s.read_level(level, 0, 0, a.shape[1], a.shape[0]), a)
            np.testing.assert_array_equal(s.read_region((9, 9), 2, (4, 4)), levels[2][3:7, 3:7])
            assert s.get_thumbnail(100).shape[:2] == (75, 100)


# --------------------------------------------------------------------------- 3. 16-bit plain images


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    a = (np.arange(300 * 256).reshape(300, 256) % 256 * 256).astype(np.uint16)  # 0, 256, ... 65280
    Image.fromarray(a).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I;16")
    tifffile.imwrite(tmp_path / "grey16.tif", a, tile=(64, 64), photometric="minisblack")
    want = (a[0].astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    with open_slide(tmp_path / "grey16.png") as s, open_slide(tmp_path / "grey16.tif") as t:
        assert s.backend == "pillow"
        row = s.read_level(0, 0, 0, 256, 1)[0]
        np.testing.assert_array_equal(row[:, 0], want)
        np.testing.assert_array_equal(row, t.read_level(0, 0, 0, 256, 1)[0])
        assert s.level_count == 1 and s.get_thumbnail(64).shape == (64, 55, 3)


# --------------------------------------------------------------------------- 4. DICOM identity


def _key_v1(path):
    """slide_key of a file under 4 MiB as the annotation store has always written it."""
    data = open(path, "rb").read()
    return hashlib.sha256(b"imaging-assist slide v1\0" + f"{len(data)}\0".encode() + data).hexdigest()[:32]


def _model(x):
    m = np.asarray(x).mean((1, 2, 3))
    return np.stack([m, 1 - m], 1)


def test_dicom_wsi_has_one_identity_as_folder_or_file_and_other_keys_are_unchanged(rounded, tmp_path):
    folder = rounded["dcm"]
    files = sorted(glob.glob(os.path.join(folder, "*.dcm")))
    assert len(files) == 3
    assert {slide_key(f) for f in files} == {slide_key(folder)}
    # a heat map made on the folder loads on the slide opened by a file, and the other way round
    for made_on, loaded_on in ((folder, files[0]), (files[1], folder)):
        with open_slide(made_on) as s:
            res = run_tiles(s, _model, tile_px=100, mpp=2.0, tissue_mask=None, class_names=["a", "b"])
            out = tmp_path / f"h{len(made_on)}.tif"
            write_heatmaps(res, out, slide=s)
        with open_slide(loaded_on) as s2:
            heat, _ = read_heatmaps(out, slide_dimensions=s2.dimensions, slide_key=slide_key(loaded_on))
        np.testing.assert_array_equal(heat, res.heatmaps)
    # other slides keep their keys (saved annotations and heat maps still match)
    Image.fromarray(rounded["levels"][2]).save(tmp_path / "plain.png")
    for p in (rounded["tif"], str(tmp_path / "plain.png")):
        assert slide_key(p) == _key_v1(p)
    other = tmp_path / "notwsi.dcm"
    other.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 40)
    assert slide_key(other) == _key_v1(other)


# --------------------------------------------------------------------------- 5. OpenSlide read_level


def test_openslide_read_level_is_exact_only_at_integer_downsamples_as_documented(rounded, tmp_path, cut):
    # docs/slides.md: at a rounded level the position is right, the values blended
    levels = rounded["levels"]
    s = OpenSlideSlide(rounded["tif"], "generic-tiff")
    got = s.read_level(1, 200, 150, 60, 40).astype(int)
    diff = [np.abs(got - levels[1][150 + dy:190 + dy, 200 + dx:260 + dx]).mean()
            for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    assert int(np.argmin(diff)) == 4 and diff[4] > 0
    s.close()
    a = cut[:750, :999]
    with OpenSlideSlide(write_tiff(tmp_path / "p3.tif", [a, box(a, 3)]), "generic-tiff") as s:
        np.testing.assert_array_equal(s.read_level(1, 100, 70, 60, 40), box(a, 3)[70:110, 100:160])


# --------------------------------------------------------------------------- 6. region off the slide


def test_a_region_off_the_slide_is_cut_to_it_and_its_heat_map_reads_back(rounded, tmp_path):
    with open_slide(rounded["tif"]) as s:
        res = run_tiles(s, _model, tile_px=64, mpp=2.0, tissue_mask=None, region=(-100, -50, 900, 700),
                        class_names=["a", "b"])
        assert res.origin == (0.0, 0.0)
        for ext in ("tif", "npz"):
            out = tmp_path / f"neg.{ext}"
            write_heatmaps(res, out, slide=s)
            heat, meta = read_heatmaps(out, slide_dimensions=s.dimensions, slide_key=slide_key(s.path))
            assert heat.shape == res.heatmaps.shape and meta["origin"] == [0.0, 0.0]
        plan = plan_tiles(s, tile_px=64, mpp=2.0, tissue_mask=None, region=(1800, 700, 500, 500))
        assert plan.origin == (1800.0, 700.0) and plan.grid_shape == (1, 1)
        assert any("cut to the slide" in w for w in plan.warnings)
        for bad in ((-500, 0, 100, 100), (3000, 0, 100, 100), (0, 0, float("nan"), 10)):
            with pytest.raises(SlideError) as e:
                plan_tiles(s, tile_px=64, mpp=2.0, tissue_mask=None, region=bad)
            assert "\n" not in str(e.value)
