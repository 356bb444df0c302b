"""Honest microns-per-pixel: where every MPP comes from (``slide.mpp_source``), resolution tags
accepted only in a microscope range and always with a warning, scanner/print dpi never taken as a
calibration, implausible values (NaN, 0, negative, 1e9) refused with a warning saying why."""

import pytest
import tifffile
from PIL import Image

from conftest import SHARED, need
from imaging_assist.slides import format_info, open_slide
from imaging_assist.slides.dicom_writer import save_dicom_wsi
from imaging_assist.slides.openslide_backend import OpenSlideSlide
from imaging_assist.slides.synth import make_levels, pattern_rgb, write_pyramid_tiff
from imaging_assist.slides.tiff_backend import TiffSlide

SVS = SHARED / "pathology" / "wsi_aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"
BASE = pattern_rgb(96, 128)


def tiff_with_resolution(path, resolution, unit, tile=True):
    kw = {"tile": (32, 32)} if tile else {"rowsperstrip": 16}
    tifffile.imwrite(path, BASE, photometric="rgb", compression="zlib", resolution=resolution,
                     resolutionunit=unit, metadata=None, **kw)
    return str(path)


# Both readers of generic TIFF follow the same rule: the tifffile backend and OpenSlide (whose
# generic-tiff driver turns resolution tags into openslide.mpp-x).
READERS = [pytest.param(open_slide, id="open_slide"), pytest.param(TiffSlide, id="tifffile"),
           pytest.param(OpenSlideSlide, id="openslide")]


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("dpi", [72, 96, 150, 300, 600, 1200])
def test_print_and_scanner_dpi_is_not_a_calibration(tmp_path, reader, dpi):
    path = tiff_with_resolution(tmp_path / f"scan{dpi}.tif", (dpi, dpi), "INCH")
    with reader(path) as s:
        assert s.mpp is None and s.mpp_source == "none"
        why = [w for w in s.warnings if "resolution tags" in w]
        assert len(why) == 1, s.warnings
        assert f"{dpi:g} dpi" in why[0] and "not a microscope pixel size" in why[0]
        assert any("no microns-per-pixel" in w for w in s.warnings)


@pytest.mark.parametrize("reader", READERS)
def test_plausible_resolution_in_cm_is_used_with_a_warning(tmp_path, reader):
    path = tiff_with_resolution(tmp_path / "cm.tif", (40000, 40000), "CENTIMETER")  # 0.25 µm/px
    with reader(path) as s:
        assert s.mpp == pytest.approx((0.25, 0.25))
        assert s.mpp_source == "tiff-resolution-tags"
        assert [w for w in s.warnings if "resolution tags" in w and "0.25" in w], s.warnings
        assert not any("no microns-per-pixel" in w for w in s.warnings)
    text = format_info(path)
    assert "0.25" in text and "warning: MPP 0.25" in text and "resolution tags" in text


def test_striped_tiff_and_anisotropic_resolution(tmp_path):
    path = tiff_with_resolution(tmp_path / "strips.tif", (1e4 / 0.8, 1e4 / 0.4), "CENTIMETER", tile=False)
    with open_slide(path) as s:
        assert s.mpp == pytest.approx((0.8, 0.4)) and s.mpp_source == "tiff-resolution-tags"


@pytest.mark.parametrize("reader", READERS)
def test_resolution_unit_none_is_never_a_size(tmp_path, reader):
    # 4 "pixels per no-unit" would be 0.25 µm/px if the unit were taken as µm: it must not be.
    path = tiff_with_resolution(tmp_path / "nounit.tif", (4, 4), "NONE")
    with reader(path) as s:
        assert s.mpp is None and s.mpp_source == "none"
        assert any("ResolutionUnit NONE" in w for w in s.warnings), s.warnings


@pytest.mark.parametrize("mpp", [1e-4, 25.0, 1e9])
def test_resolution_outside_the_microscope_range_is_ignored(tmp_path, mpp):
    path = tiff_with_resolution(tmp_path / "odd.tif", (1e4 / mpp, 1e4 / mpp), "CENTIMETER")
    for reader in (open_slide, OpenSlideSlide):
        with reader(path) as s:
            assert s.mpp is None and s.mpp_source == "none"
            assert any("not a microscope pixel size" in w for w in s.warnings), s.warnings


def test_ome_xml_physical_size(tmp_path):
    levels = make_levels(pattern_rgb(300, 400), min_size=100)
    path = write_pyramid_tiff(tmp_path / "s.ome.tif", levels, layout="ome", mpp=0.3)
    with open_slide(path) as s:
        assert s.format == "ome-tiff" and s.mpp == pytest.approx((0.3, 0.3))
        assert s.mpp_source == "ome-xml" and not s.warnings


@pytest.mark.parametrize("value", ["nan", "0", "-0.5", "1e9", "abc"])
def test_ome_xml_implausible_physical_size(tmp_path, value):
    path = str(tmp_path / "bad.ome.tif")
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(BASE, photometric="rgb", tile=(32, 32),
                 metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    xml = tifffile.tiffcomment(path)
    tifffile.tiffcomment(path, xml.replace('PhysicalSizeX="0.5"', f'PhysicalSizeX="{value}"'))
    with open_slide(path) as s:
        assert s.mpp is None and s.mpp_source == "none"
        assert any("PhysicalSizeX" in w for w in s.warnings), s.warnings


def test_aperio_svs_real_file_source():
    path = need(SVS)
    with open_slide(path) as s:
        assert s.backend == "openslide" and s.mpp == pytest.approx((0.499, 0.499))
        assert s.mpp_source == "openslide-property:openslide.mpp-x" and not s.warnings
    with TiffSlide(str(path)) as t:
        assert t.mpp == pytest.approx((0.499, 0.499))
        assert t.mpp_source == "aperio-description" and not t.warnings


@pytest.mark.parametrize("value", ["nan", "0", "-0.25", "1e9", "inf"])
def test_aperio_description_implausible_mpp(tmp_path, value):
    path = str(tmp_path / "bad.svs")
    desc = f"Aperio Image Library v12.0.15\r\n128x96 [0,0 128x96] (32x32) JPEG/RGB Q=70|AppMag = 20|MPP = {value}"
    tifffile.imwrite(path, BASE, photometric="rgb", tile=(32, 32), compression="zlib", description=desc,
                     metadata=None)
    for reader in (open_slide, TiffSlide):
        with reader(path) as s:
            assert s.mpp is None and s.mpp_source == "none"
            assert any("implausible MPP" in w for w in s.warnings), (reader, s.warnings)


def test_dicom_pixel_spacing_source(tmp_path):
    levels = make_levels(pattern_rgb(256, 256), min_size=100)
    save_dicom_wsi(tmp_path / "d", [(a.shape[1], a.shape[0]) for a in levels],
                   lambda lv, x, y, t: levels[lv][y:y + t, x:x + t], (0.25, 0.25), tile_size=128)
    with open_slide(tmp_path / "d") as s:
        assert s.mpp == pytest.approx((0.25, 0.25)) and s.mpp_source == "dicom-pixel-spacing"
        assert not s.warnings


def test_plain_image_dpi(tmp_path):
    p = tmp_path / "dpi300.png"
    Image.fromarray(BASE).save(p, dpi=(300, 300))
    with open_slide(p) as s:
        assert s.mpp is None and s.mpp_source == "none"
        assert any("300 dpi" in w and "not a microscope pixel size" in w for w in s.warnings)
    p2 = tmp_path / "calibrated.png"
    Image.fromarray(BASE).save(p2, dpi=(25400 / 0.25, 25400 / 0.25))
    with open_slide(p2) as s:
        assert s.mpp == pytest.approx((0.25, 0.25), rel=1e-3) and s.mpp_source == "image-resolution-tags"
        assert any("resolution tags" in w for w in s.warnings)
    p3 = tmp_path / "none.jpg"
    Image.fromarray(BASE).save(p3)
    with open_slide(p3) as s:
        assert s.mpp is None and s.mpp_source == "none"


def test_slide_model_does_not_run_on_a_300_dpi_scan(tmp_path):
    """The 300 dpi case of the issue: the tile planner must see no MPP (tiles in pixels, with a
    warning), not 84.67 µm/px (which asks for ~170x upsampling and a huge grid)."""
    from imaging_assist.slides import plan_tiles
    path = tiff_with_resolution(tmp_path / "scan300.tif", (300, 300), "INCH")
    with open_slide(path) as s:
        with pytest.warns(UserWarning):
            plan = plan_tiles(s, 32, 0.5, tissue_mask=None)
        assert plan.mpp is None and plan.downsample == (1.0, 1.0)
        assert plan.n_grid_tiles == 4 * 3


@pytest.mark.parametrize("value", ["nan", "0", "-0.00025", "1e9"])
def test_dicom_implausible_pixel_spacing(tmp_path, value):
    import warnings

    import pydicom
    levels = make_levels(pattern_rgb(256, 256), min_size=100)
    files = save_dicom_wsi(tmp_path / "d", [(a.shape[1], a.shape[0]) for a in levels],
                           lambda lv, x, y, t: levels[lv][y:y + t, x:x + t], (0.25, 0.25), tile_size=128)
    for f in files:
        ds = pydicom.dcmread(f)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom: 'nan' is not a valid DS
            ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = [value, value]
        ds.save_as(f, enforce_file_format=True)
    try:
        s = open_slide(tmp_path / "d")
    except Exception as e:  # refusing the file is honest too, if it is one line
        from imaging_assist.slides import SlideError
        assert isinstance(e, SlideError) and "\n" not in str(e)
        return
    with s:
        assert s.mpp is None and s.mpp_source == "none"
        assert any("Pixel Spacing" in w or "implausible MPP" in w for w in s.warnings), s.warnings
