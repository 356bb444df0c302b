"""Slide readers: every backend against a pyramid with known pixels, the real Aperio SVS,
a DICOM WSI written from the same pyramid, plain images without MPP, and error messages."""

import os
import warnings

import numpy as np
import openslide
import pytest
from PIL import Image

from conftest import SHARED, CT_PHANTOM, need
from imaging_assist.errors import UserError
from imaging_assist.slides import (SlideError, UnsupportedSlideError, format_info, info_dict, is_slide_path,
                                   open_slide, scan_slides)
from imaging_assist.slides.dicom_writer import save_dicom_wsi
from imaging_assist.slides.openslide_backend import OpenSlideSlide
from imaging_assist.slides.synth import make_levels, pattern_rgb, write_pyramid_tiff

SVS = SHARED / "pathology" / "wsi_aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"

H, W = 700, 900          # not a multiple of the tile size: edge tiles are partial
LABEL = np.full((90, 70, 3), (40, 90, 200), np.uint8)
MACRO = np.full((60, 180, 3), (200, 60, 40), np.uint8)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    d = tmp_path_factory.mktemp("pyr")
    levels = make_levels(pattern_rgb(H, W), min_size=100)  # 900, 450, 225, 112, 56 wide
    smooth = make_levels(pattern_rgb(H, W, smooth=True), min_size=100)
    files = {
        "chain": write_pyramid_tiff(d / "chain.tif", levels, layout="chain",
                                    associated={"label": LABEL, "macro": MACRO}),
        "ome": write_pyramid_tiff(d / "ome.ome.tif", levels, layout="ome", associated={"label": LABEL}),
        "subifds_lzw": write_pyramid_tiff(d / "subifds.tif", levels, layout="subifds", compression="lzw"),
        "jpeg": write_pyramid_tiff(d / "jpeg.tif", smooth, layout="chain", compression="jpeg",
                                   jpeg_quality=92),
    }
    Image.fromarray(levels[0]).save(d / "plain.png")
    files["png"] = str(d / "plain.png")
    save_dicom_wsi(d / "dicom", [(a.shape[1], a.shape[0]) for a in levels],
                   lambda lv, x, y, t: levels[lv][y:y + t, x:x + t], (0.5, 0.5), tile_size=128,
                   label=LABEL, macro=MACRO)
    files["dicom"] = str(d / "dicom")
    return {"dir": d, "levels": levels, "smooth": smooth, "files": files}


def truth(levels, level, lx, ly, w, h):
    """Expected pixels of a level-pixel rectangle; outside the image is white."""
    out = np.full((h, w, 3), 255, np.uint8)
    a = levels[level]
    x0, y0 = max(lx, 0), max(ly, 0)
    x1, y1 = min(lx + w, a.shape[1]), min(ly + h, a.shape[0])
    if x1 > x0 and y1 > y0:
        out[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = a[y0:y1, x0:x1]
    return out


# level-0 positions: origin, inside a tile, across tile borders, overhanging the edge
POSITIONS = [(0, 0), (8, 4), (130, 250), (256, 128), (840, 660)]


def check_exact(slide, levels, positions=POSITIONS, size=(150, 110), only_level=None):
    assert slide.level_count == len(levels)
    assert slide.level_dimensions == tuple((a.shape[1], a.shape[0]) for a in levels)
    for level in range(slide.level_count) if only_level is None else [only_level]:
        for x, y in positions:
            got = slide.read_region((x, y), level, size)
            # the pyramid halves each level (sizes rounded down): level-0 pixel x lies in level
            # pixel x // 2**level (x // ds took the pixel before where ds = 8.04 > 8)
            lx, ly = x // 2 ** level, y // 2 ** level
            np.testing.assert_array_equal(got, truth(levels, level, lx, ly, *size),
                                          err_msg=f"{slide} level {level} at {(x, y)}")


@pytest.mark.parametrize("name,backend,fmt", [("chain", "tifffile", "generic-tiff"),
                                               ("ome", "tifffile", "ome-tiff"),
                                               ("subifds_lzw", "tifffile", "generic-tiff"),
                                               ("dicom", "wsidicom", "dicom-wsi")])
def test_reader_exact_on_known_pyramid(pyramid, name, backend, fmt):
    with open_slide(pyramid["files"][name]) as s:
        assert s.backend == backend and s.format == fmt
        assert s.mpp == pytest.approx((0.5, 0.5))
        assert s.level_downsamples[:3] == pytest.approx((1.0, 2.0, 4.0))
        assert s.level_mpp(1) == pytest.approx((1.0, 1.0))
        check_exact(s, pyramid["levels"])
        if fmt == "generic-tiff":  # MPP from X/YResolution in px/cm: used, with a warning
            assert s.mpp_source == "tiff-resolution-tags"
            assert len(s.warnings) == 1 and "generic resolution tags" in s.warnings[0]
        else:
            assert s.mpp_source in ("ome-xml", "dicom-pixel-spacing") and not s.warnings


def test_openslide_backend_on_generic_tiff(pyramid):
    # OpenSlide interpolates when location/downsample is fractional: test level-aligned spots.
    with OpenSlideSlide(pyramid["files"]["chain"]) as s:
        assert s.format == "generic-tiff" and s.mpp == pytest.approx((0.5, 0.5))
        assert s.level_dimensions == tuple((a.shape[1], a.shape[0]) for a in pyramid["levels"])
        for level, ds in enumerate(s.level_downsamples):
            spots = [(0, 0)]
            if ds == int(ds):
                spots += [(int(8 * ds), int(4 * ds)), (256, 128), (840, 660)]
            check_exact(s, pyramid["levels"], positions=spots, only_level=level)


def test_associated_images_tiff_and_dicom(pyramid):
    with open_slide(pyramid["files"]["chain"]) as s:
        assert s.associated_image_names == ("label", "macro")
        np.testing.assert_array_equal(s.associated_image("label"), LABEL)
        np.testing.assert_array_equal(s.associated_image("macro"), MACRO)
        with pytest.raises(SlideError, match="no 'thumbnail' image"):
            s.associated_image("thumbnail")
    with open_slide(pyramid["files"]["ome"]) as s:
        assert s.associated_image_names == ("label",)
    with open_slide(pyramid["files"]["dicom"]) as s:
        assert s.associated_image_names == ("label", "macro")
        assert s.associated_image("label").shape == LABEL.shape
        # label/overview are JPEG in DICOM: compare with a tolerance
        assert np.abs(s.associated_image("macro").astype(int) - MACRO).mean() < 3


def test_dicom_single_file_opens_its_slide(pyramid):
    files = sorted(os.listdir(pyramid["files"]["dicom"]))
    one = os.path.join(pyramid["files"]["dicom"], files[0])
    assert is_slide_path(one) and is_slide_path(pyramid["files"]["dicom"])
    with open_slide(one) as s:
        assert s.level_count == len(pyramid["levels"])


def test_slide_exported_to_jpeg_dicom(pyramid, tmp_path):
    from imaging_assist.slides.dicom_writer import slide_to_dicom
    with open_slide(pyramid["files"]["jpeg"]) as src:
        slide_to_dicom(src, tmp_path / "out", tile_size=128, jpeg_quality=95)
    smooth = pyramid["smooth"]
    with open_slide(tmp_path / "out") as s:
        assert s.format == "dicom-wsi" and s.level_count == len(smooth) and s.mpp == pytest.approx((0.5, 0.5))
        for level in range(3):
            got = s.read_region((128, 64), level, (100, 80)).astype(int)
            ds = s.level_downsamples[level]
            err = np.abs(got - truth(smooth, level, int(128 // ds), int(64 // ds), 100, 80))
            assert err.mean() < 2.5, (level, err.mean())   # JPEG twice (TIFF, then DICOM)


def test_jpeg_pyramid_within_tolerance(pyramid):
    smooth = pyramid["smooth"]
    for s in (open_slide(pyramid["files"]["jpeg"]), OpenSlideSlide(pyramid["files"]["jpeg"])):
        with s:
            for level in range(3):
                ds = s.level_downsamples[level]
                for x, y in [(0, 0), (256, 128), (300, 200)]:  # inside: no edge-padding ringing
                    got = s.read_region((x, y), level, (120, 100)).astype(int)
                    ref = truth(smooth, level, int(x // ds), int(y // ds), 120, 100).astype(int)
                    err = np.abs(got - ref)
                    assert err.mean() < 2.0 and err.max() < 24, (s.backend, level, x, y, err.mean(), err.max())


def test_svs_real_file():
    path = need(SVS)
    with open_slide(path) as s:
        assert s.backend == "openslide" and s.format == "aperio" and s.vendor == "aperio"
        assert s.level_count == 1 and s.dimensions == (2220, 2967)
        assert s.mpp == pytest.approx((0.499, 0.499))
        assert s.objective_power == 20
        assert s.associated_image_names == ("label", "macro", "thumbnail")
        assert s.associated_image("label").shape == (463, 387, 3)
        assert s.associated_image("macro").shape == (431, 1280, 3)
        assert s.associated_image("thumbnail").shape == (768, 574, 3)
        osr = openslide.OpenSlide(str(path))
        for loc, size in [((0, 0), (256, 256)), ((1000, 1500), (300, 200)), ((2100, 2900), (200, 120))]:
            ref = np.asarray(osr.read_region(loc, 0, size)).astype(np.uint16)
            # OpenSlide leaves the outside transparent; ours composites it on white
            a = ref[..., 3:4]
            ref_rgb = ((ref[..., :3] * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
            np.testing.assert_array_equal(s.read_region(loc, 0, size), ref_rgb)
        osr.close()
        thumb = s.get_thumbnail(256)
        assert max(thumb.shape[:2]) == 256 and thumb.dtype == np.uint8
    # The tifffile backend reads the same file identically (cross-check of both decoders).
    from imaging_assist.slides.tiff_backend import TiffSlide
    with TiffSlide(str(path)) as t, open_slide(path) as s:
        assert t.mpp == pytest.approx((0.499, 0.499)) and t.associated_image_names == s.associated_image_names
        np.testing.assert_array_equal(t.read_region((600, 700), 0, (500, 400)), s.read_region((600, 700), 0, (500, 400)))


def test_svs_info_text_and_dict():
    path = need(SVS)
    d = info_dict(str(path))
    assert d["mpp"] == pytest.approx([0.499, 0.499]) and d["level_count"] == 1
    assert d["associated_image_sizes"] == {"label": [387, 463], "macro": [1280, 431], "thumbnail": [574, 768]}
    text = format_info(str(path))
    assert "0.499" in text and "label 387x463" in text and "warning" not in text
    assert d["mpp_source"].startswith("openslide-property") and f"(source {d['mpp_source']})" in text
    assert all(len(line) < 200 for line in text.splitlines())


def test_plain_png_has_no_mpp_and_says_so(pyramid):
    with open_slide(pyramid["files"]["png"]) as s:
        assert s.backend == "pillow" and s.mpp is None and s.mpp_x is None
        assert any("no microns-per-pixel" in w for w in s.warnings)
        got = s.read_region((130, 250), 0, (150, 110))
        np.testing.assert_array_equal(got, truth(pyramid["levels"], 0, 130, 250, 150, 110))
        with pytest.raises(SlideError):
            s.mpp_base
    text = format_info(pyramid["files"]["png"])
    assert "MPP         unknown" in text and "warning: no microns-per-pixel" in text
    assert info_dict(pyramid["files"]["png"])["mpp"] is None


def test_striped_and_grey_tiffs_and_rgba_png(tmp_path):
    import tifffile
    base = pattern_rgb(300, 410)
    p = tmp_path / "strips.tif"
    tifffile.imwrite(p, base, photometric="rgb", compression="zlib", rowsperstrip=37,
                     resolution=(1e4 / 0.8, 1e4 / 0.8), resolutionunit="CENTIMETER")
    with open_slide(p) as s:
        assert s.backend == "tifffile" and s.format == "tiff" and s.level_count == 1
        assert s.mpp == pytest.approx((0.8, 0.8))
        np.testing.assert_array_equal(s.read_region((33, 70), 0, (200, 100)), base[70:170, 33:233])
        np.testing.assert_array_equal(s.read_region((400, 290), 0, (20, 20))[:10, :10], base[290:, 400:])
    grey = base[..., 0].copy()
    tifffile.imwrite(tmp_path / "grey.tif", grey, tile=(64, 64), compression="zlib")
    with open_slide(tmp_path / "grey.tif") as s:
        got = s.read_region((10, 20), 0, (50, 40))
        np.testing.assert_array_equal(got, np.repeat(grey[20:60, 10:60, None], 3, axis=2))
    rgba = np.dstack([base, np.full(base.shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = 0                                  # transparent corner -> background
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    with open_slide(tmp_path / "rgba.png") as s:
        got = s.read_region((0, 0), 0, (20, 20))
        assert (got[:10, :10] == 255).all()
        np.testing.assert_array_equal(got[10:, 10:], base[10:20, 10:20])


def test_writer_default_dpi_is_not_taken_as_mpp(tmp_path):
    p = tmp_path / "dpi72.png"
    Image.fromarray(pattern_rgb(64, 64)).save(p, dpi=(72, 72))
    with open_slide(p) as s:
        assert s.mpp is None
        assert any(w.startswith("ignored resolution tags (72") for w in s.warnings)
    p2 = tmp_path / "calibrated.png"
    Image.fromarray(pattern_rgb(64, 64)).save(p2, dpi=(25400 / 0.25, 25400 / 0.25))  # 0.25 µm/px
    with open_slide(p2) as s:
        assert s.mpp == pytest.approx((0.25, 0.25), rel=1e-3)


def test_errors_are_one_line_user_errors(tmp_path, pyramid):
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"not a slide at all" * 10)
    with pytest.raises(UnsupportedSlideError) as e:
        open_slide(junk)
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)
    with pytest.raises(SlideError, match="no such file"):
        open_slide(tmp_path / "missing.svs")
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(UnsupportedSlideError, match="not a slide or image"):
        open_slide(txt)
    ct = sorted(need(CT_PHANTOM).glob("*.dcm"))[0]
    assert not is_slide_path(ct)
    with pytest.raises(UnsupportedSlideError, match="not a whole-slide image"):
        open_slide(ct)
    with open_slide(pyramid["files"]["chain"]) as s:
        with pytest.raises(SlideError, match="level 9 out of range"):
            s.read_region((0, 0), 9, (10, 10))
        with pytest.raises(SlideError, match="positive"):
            s.read_region((0, 0), 0, (0, 10))
    s.close()
    with pytest.raises(SlideError, match="closed"):
        s.read_region((0, 0), 0, (10, 10))


def test_thumbnail_from_pyramid(pyramid):
    with open_slide(pyramid["files"]["chain"]) as s:
        t = s.get_thumbnail(200)
        assert t.shape == (156, 200, 3)
        ref = np.asarray(Image.fromarray(pyramid["levels"][0]).resize((200, 156), Image.Resampling.BOX)).astype(int)
        assert np.abs(t.astype(int) - ref).mean() < 12  # from level 2, not level 0: close, not equal


def test_scan_slides_lists_slides_and_problems(pyramid, tmp_path):
    bad = pyramid["dir"] / "broken.svs"
    bad.write_bytes(b"II*\x00" + b"\x00" * 64)
    small = pyramid["dir"] / "small_tile.jpg"
    Image.fromarray(pattern_rgb(64, 64)).save(small)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # scanning must not spam Python warnings
            found, problems = scan_slides([str(pyramid["dir"]), str(tmp_path / "nowhere")])
    finally:
        bad.unlink()
        small.unlink()
    by_name = {os.path.basename(s.path): s for s in found}
    assert {"chain.tif", "ome.ome.tif", "subifds.tif", "jpeg.tif", "dicom"} <= set(by_name)
    assert "plain.png" not in by_name and "small_tile.jpg" not in by_name  # small plain images: not slides
    assert by_name["dicom"].format == "dicom-wsi" and by_name["dicom"].associated_images == ["label", "macro"]
    assert by_name["chain.tif"].mpp == (0.5, 0.5) and by_name["chain.tif"].level_count == 5
    reasons = dict(problems)
    assert str(bad) in reasons and str(tmp_path / "nowhere") in reasons
    assert all("\n" not in r for r in reasons.values())
    assert by_name["chain.tif"].to_dict()["size_mm"] == [0.45, 0.35]
    assert scan_slides(pyramid["files"]["png"])[0][0].mpp is None  # given explicitly: listed


def test_is_slide_path(pyramid, tmp_path):
    assert is_slide_path(pyramid["files"]["chain"]) and is_slide_path(pyramid["files"]["png"])
    assert is_slide_path(need(SVS))
    assert not is_slide_path(tmp_path)            # empty folder
    assert not is_slide_path(tmp_path / "nope.svs")
    assert not is_slide_path(need(CT_PHANTOM))    # a DICOM CT folder is a series, not a slide


# --------------------------------------------------------------------------- package structure

SLIDES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "imaging_assist", "slides")
BACKEND_MODULES = ("openslide_backend", "tiff_backend", "dicom_backend", "image_backend", "dicom_writer", "base")


def _slides_imports(module: str) -> set[str]:
    """Modules of the slides package that ``module`` imports anywhere (also inside functions)."""
    import ast
    with open(os.path.join(SLIDES_DIR, module + ".py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1:            # from .x import ...   /  from . import x
                out |= {mod.split(".")[0]} if mod else {a.name for a in node.names}
            elif mod.startswith("imaging_assist.slides."):
                out.add(mod.split(".")[2])
            elif mod == "imaging_assist.slides":
                out |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("imaging_assist.slides."):
                    out.add(a.name.split(".")[2])
    return out


def test_backends_import_only_base_and_the_package_has_no_import_cycle():
    mods = [f[:-3] for f in os.listdir(SLIDES_DIR) if f.endswith(".py") and f != "__init__.py"]
    graph = {m: _slides_imports(m) & set(mods) for m in mods}
    for m in BACKEND_MODULES:
        assert "reader" not in graph[m], f"slides/{m}.py imports reader (import cycle)"
    assert graph["base"] == set(), "slides/base.py must not import other slides modules"
    # no cycle anywhere in the package (depth-first search)
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for n in graph[m]:
            assert state.get(n) != 1, "import cycle: " + " -> ".join(stack + [m, n])
            if n not in state:
                visit(n, stack + [m])
        state[m] = 2

    for m in mods:
        if m not in state:
            visit(m, [])


def test_registry_uses_a_backend_registered_by_a_test(tmp_path, pyramid):
    from imaging_assist.slides import reader
    from imaging_assist.slides.base import BackendDeclined, Slide as BaseSlide

    class FakeSlide(BaseSlide):
        backend = "fake"

        def __init__(self, path):
            super().__init__(path)
            self.format = "fake"
            self._finish_levels([(40, 30)])
            self._finish_mpp()

        def _read_level(self, level, x, y, w, h):
            return np.full((h, w, 3), 7, np.uint8)

    fake = tmp_path / "x.fake"
    fake.write_bytes(b"FAKESLIDE" + b"\0" * 200)
    calls = []

    def declining_open(path):
        calls.append(path)
        raise BackendDeclined("not my kind after all")

    reader.register_backend("fake", lambda path, head: head.startswith(b"FAKESLIDE"), FakeSlide, priority=1000)
    reader.register_backend("decliner", lambda path, head: True, declining_open, priority=2000)
    try:
        names = [b.name for b in reader.registered_backends()]
        assert names[:2] == ["decliner", "fake"] and {"wsidicom", "openslide", "tifffile", "pillow"} <= set(names)
        with open_slide(fake) as s:
            assert isinstance(s, FakeSlide) and s.dimensions == (40, 30)
            assert (s.read_region((0, 0), 0, (5, 5)) == 7).all()
        assert calls == [str(fake)]                     # asked first, declined, next one used
        with open_slide(pyramid["files"]["chain"]) as s:  # the built-in ones still work after it
            assert s.backend == "tifffile"
        with pytest.raises(ValueError, match="already registered"):
            reader.register_backend("fake", lambda p, h: False, FakeSlide)
    finally:
        reader.unregister_backend("fake")
        reader.unregister_backend("decliner")
    with pytest.raises(UnsupportedSlideError, match="not a slide or image"):
        open_slide(fake)
    assert "fake" not in [b.name for b in reader.registered_backends()]


def test_public_names_still_importable_from_reader():
    from imaging_assist.slides import base, reader
    for name in ("MISSING_MPP_MESSAGE", "MissingMPPWarning", "Slide", "SlideError", "SlideReadError",
                 "UnsupportedSlideError", "open_slide", "to_rgb", "plausible_mpp", "canonical_associated_name",
                 "IMAGE_EXTENSIONS", "OPENSLIDE_EXTENSIONS", "WSM_SOP_CLASS_UID", "_TIFF_MAGIC", "is_dicom_file"):
        assert hasattr(reader, name), name
    assert reader.Slide is base.Slide and reader.SlideError is base.SlideError
