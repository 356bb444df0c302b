"""Heat-map files (``analyze`` on a slide writes them; the slide viewer loads them back): a
damaged, edited or foreign file is refused in one line, never drawn on the wrong pixels.

Attacked with mutated real outputs: every metadata field replaced by wrong values, random byte
flips and truncations of the TIFF and the NPZ, a header declaring a huge array, a map of
another slide of the same size."""

import dataclasses
import os
import json
import random
import shutil
import zipfile

import numpy as np
import pytest

from imaging_assist.slides import SlideError, open_slide, read_heatmaps, run_tiles, write_heatmaps
from imaging_assist.slides.annotations import slide_key
from imaging_assist.slides.heatmap_io import MAX_HEATMAP_BYTES
from imaging_assist.slides.synth import make_levels, write_pyramid_tiff

W0, H0 = 14 * 64 - 20, 11 * 64 - 30   # the last row/column of tiles hangs over the edge


def _slide_file(path, seed: int):
    img = np.random.default_rng(seed).integers(0, 255, (H0, W0, 3), dtype=np.uint8)
    return write_pyramid_tiff(path, make_levels(img, 64), mpp=0.25, tile=64)


def _model(x):  # two classes from the red channel, in 0..1
    p = np.clip(np.asarray(x)[:, 0].mean(axis=(1, 2)), 0, 1)
    return np.stack([p, 1 - p], 1).astype(np.float32)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    d = tmp_path_factory.mktemp("heat")
    a, b = _slide_file(d / "a.tif", 0), _slide_file(d / "b.tif", 1)  # same size, other content
    with open_slide(a) as s:
        res = run_tiles(s, _model, 32, 0.5, tissue_mask=None, class_names=["tumour", "other"], top_k=3)
        files = {ext: write_heatmaps(res, d / f"heat.{ext}", slide=s)[0] for ext in ("tif", "npz")}
        bare = write_heatmaps(res, d / "bare.npz")[0]  # written without its slide
    return {"dir": d, "a": a, "b": b, "res": res, "files": files, "bare": bare}


def one_line_refusal(path, **kw) -> str:
    with pytest.raises(SlideError) as e:
        read_heatmaps(path, **kw)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(path.name if hasattr(path, "name") else str(path).rsplit("/", 1)[-1])
    return msg


@pytest.mark.parametrize("ext", ["tif", "npz"])
def test_a_map_loads_back_on_its_own_slide_only(made, ext):
    path, res = made["files"][ext], made["res"]
    heat, meta = read_heatmaps(path, slide_dimensions=(W0, H0), slide_key=slide_key(made["a"]))
    np.testing.assert_array_equal(np.nan_to_num(heat, nan=-1), np.nan_to_num(res.heatmaps, nan=-1))
    assert meta["load_warnings"] == [] and meta["grid_shape"] == list(res.heatmaps.shape[1:])
    assert meta["slide_key"] == slide_key(made["a"]) and len(meta["content_sha256"]) == 64
    # another slide of exactly the same size: its content differs, so the map is refused
    msg = one_line_refusal(path, slide_dimensions=(W0, H0), slide_key=slide_key(made["b"]))
    assert "made for another slide" in msg
    msg = one_line_refusal(path, slide_dimensions=(W0 + 1, H0), slide_key=slide_key(made["a"]))
    assert f"made for a {W0} × {H0} slide" in msg


def test_a_map_that_does_not_name_its_slide_is_placed_by_size_and_says_so(made):
    heat, meta = read_heatmaps(made["bare"], slide_dimensions=(W0, H0), slide_key=slide_key(made["b"]))
    assert "slide_key" not in meta
    assert meta["load_warnings"] == ["bare.npz does not record which slide it was made for: "
                                     "placed by the slide's size only"]


def _npz_with(path, heat, meta):
    np.savez_compressed(path, heatmaps=heat, metadata=np.array(json.dumps(meta)))
    return path


def _mutations(meta, shape):
    c, rows, cols = shape
    t = meta["top_tiles"]["tumour"][0]
    yield "format", {"format": "something-else"}, "not an imaging-assist heat-map file"
    yield "newer", {"version": 99}, "newer version"
    yield "no version", {"version": None}, "no format version"
    yield "names short", {"class_names": ["tumour"]}, "1 class names for 2 heat-map planes"
    yield "names repeated", {"class_names": ["a", "a"]}, "distinct names"
    yield "names not text", {"class_names": [1, 2]}, "distinct names"
    for bad in (0, -64.0, float("nan"), "64", [64.0], None, True):
        yield f"downsample {bad!r}", {"downsample": [bad, 64.0] if bad != [64.0] else bad}, "downsample"
    yield "origin negative", {"origin": [-64.0, 0.0]}, "origin"
    yield "origin inf", {"origin": [float("inf"), 0.0]}, "origin"
    yield "origin off the slide", {"origin": [W0 + 10.0, 0.0]}, "does not lie on"
    yield "grid too long", {"downsample": [W0 / (cols - 1.5), 64.0]}, "does not lie on"
    yield "slide smaller", {"slide_dimensions": [64, 64]}, "does not lie on"
    yield "slide fractional", {"slide_dimensions": [W0 + 0.5, H0]}, "integers"
    yield "slide absurd", {"slide_dimensions": [10 ** 12, H0]}, "beyond any slide"
    yield "grid shape", {"grid_shape": [rows - 1, cols]}, "metadata says"
    yield "mpp zero", {"slide_mpp": [0.0, 0.25]}, "slide mpp"
    yield "top tile outside", {"top_tiles": {"tumour": [dict(t, row=rows)]}}, "not a cell"
    yield "top tile no score", {"top_tiles": {"tumour": [dict(t, score=float("nan"))]}}, "not a cell"
    yield "top tile of no class", {"top_tiles": {"necrosis": [t]}}, "not one of its classes"
    yield "top tiles a list", {"top_tiles": [t]}, "not a table by class"


def test_every_metadata_field_is_checked(made, tmp_path):
    """Each mutation is refused twice: by the checksum (written by every new file), and without
    it (an older file, or one whose checksum was stripped) by the field's own check."""
    heat, meta = read_heatmaps(made["files"]["npz"])
    meta.pop("load_warnings")
    n = 0
    for what, change, why in _mutations(meta, heat.shape):
        bad = dict(meta, **change)
        p = _npz_with(tmp_path / "m.npz", heat, bad)
        assert "checksum" in one_line_refusal(p) or what in ("format", "newer", "no version"), what
        bad.pop("content_sha256")
        if what != "newer" and bad["version"] is not None:
            bad["version"] = 1  # the first format had no checksum
        msg = one_line_refusal(_npz_with(tmp_path / "m.npz", heat, bad))
        assert why in msg, (what, msg)
        n += 1
    assert n >= 25
    # without its checksum the file is damaged; a file of the first format (no checksum) loads
    meta.pop("content_sha256")
    assert "checksum written with it is missing" in one_line_refusal(_npz_with(tmp_path / "m.npz", heat, meta))
    read_heatmaps(_npz_with(tmp_path / "old.npz", heat, dict(meta, version=1)), slide_dimensions=(W0, H0))


@pytest.mark.parametrize("value, why", [(1.5, "not probabilities"), (-0.2, "not probabilities"),
                                        (np.inf, "infinite")])
def test_values_that_are_not_probabilities_are_refused(made, tmp_path, value, why):
    heat = made["res"].heatmaps.copy()
    heat[0, 1, 1] = value
    res = dataclasses.replace(made["res"], heatmaps=heat)
    for ext in ("tif", "npz"):
        assert why in one_line_refusal(write_heatmaps(res, tmp_path / f"v.{ext}")[0])


def test_a_declared_huge_array_is_refused_before_it_is_decoded(made, tmp_path):
    import tifffile

    side = 1 + int((MAX_HEATMAP_BYTES / 8) ** 0.5)
    p = tmp_path / "huge.tif"
    shutil.copy(made["files"]["tif"], p)
    with tifffile.TiffFile(p, mode="r+b") as t:
        t.pages[0].tags["ImageWidth"].overwrite(side)
        t.pages[0].tags["ImageLength"].overwrite(side)
    assert "GiB" in one_line_refusal(p)
    # the NPZ: a heatmaps.npy whose header declares (2, side, side) float32 over a few bytes
    q = tmp_path / "huge.npz"
    with zipfile.ZipFile(made["files"]["npz"]) as src, zipfile.ZipFile(q, "w") as dst:
        dst.writestr("metadata.npy", src.read("metadata.npy"))
        with dst.open("heatmaps.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                     "shape": (2, side, side)})
            f.write(b"\0" * 64)
    assert "GiB" in one_line_refusal(q)


@pytest.mark.parametrize("ext", ["tif", "npz"])
def test_flipped_bytes_and_truncations_never_load_silently_wrong(made, tmp_path, ext):
    """A mutated file is refused in one line, or it loads exactly the map that was written."""
    src = open(made["files"][ext], "rb").read()
    want, want_meta = read_heatmaps(made["files"][ext])
    rnd = random.Random(ext)
    cases = [("truncated", src[:n]) for n in sorted({0, 1, 8, 64, len(src) // 3, len(src) // 2, len(src) - 1})]
    for _ in range(300):
        b = bytearray(src)
        at = rnd.randrange(len(b))
        b[at] ^= 1 << rnd.randrange(8)
        cases.append((f"bit at {at}", bytes(b)))
    refused = loaded = 0
    p = tmp_path / f"x.{ext}"
    for what, data in cases:
        p.write_bytes(data)
        try:
            heat, meta = read_heatmaps(p, slide_dimensions=(W0, H0), slide_key=slide_key(made["a"]))
        except SlideError as e:
            assert "\n" not in str(e), what
            refused += 1
            continue
        np.testing.assert_array_equal(np.nan_to_num(heat, nan=-1), np.nan_to_num(want, nan=-1), err_msg=what)
        assert meta == want_meta, what
        loaded += 1
    assert refused >= 50 and refused + loaded == len(cases)


def test_a_heat_map_is_not_opened_as_a_slide_and_info_checks_it_against_one(made, capsys):
    from imaging_assist.cli.main import main
    from imaging_assist.slides import UnsupportedSlideError
    from imaging_assist.slides.base import heatmap_kind

    tif, npz = made["files"]["tif"], made["files"]["npz"]
    assert (heatmap_kind(tif), heatmap_kind(npz), heatmap_kind(made["a"]), heatmap_kind(__file__)) == \
        ("tif", "npz", None, None)
    with pytest.raises(UnsupportedSlideError, match="an imaging-assist heat map, not a slide"):
        open_slide(tif)
    assert main(["info", tif, "--slide", made["a"]]) == 0
    out = capsys.readouterr().out
    assert "checksum verified" in out and f"Made for    a {W0} x {H0} px slide" in out
    assert "Class       tumour:" in out and "the heat map fits it" in out
    assert main(["info", npz, "--slide", made["b"]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: heat.npz: the heat map was made for another slide") and "\n" not in err
    assert main(["info", made["bare"], "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["grid"] == list(made["res"].heatmaps.shape[1:]) and d["slide_key"] is None and d["fits_slide"] is None
    assert [c["name"] for c in d["classes"]] == ["tumour", "other"]
    assert main(["info", made["a"], "--slide", made["a"]]) == 2
    assert "--slide goes with a heat-map file" in capsys.readouterr().err


def test_heat_map_and_overview_replace_a_link_never_write_through_it(made, tmp_path):
    """A link planted in the output folder under the heat map's or the overview's name (a
    shared folder; CWE-59): the link itself is replaced, the file it points to is untouched
    (session 24: the heat map used a guessable temporary name, the overview wrote to the name)."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"the user's own file")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("heat.tif", "heat_overview.png", "heat.npz"):
        (out / name).symlink_to(victim)
    with open_slide(made["a"]) as s:
        written = write_heatmaps(made["res"], out / "heat.tif", overview_png=True, slide=s)
        written += write_heatmaps(made["res"], out / "heat.npz", slide=s)
    assert victim.read_bytes() == b"the user's own file"
    for p in map(str, written):
        assert not os.path.islink(p) and os.path.getsize(p) > 0, p
    assert sorted(os.listdir(out)) == sorted(os.path.basename(str(p)) for p in written)  # no temporary left
    assert np.array_equal(read_heatmaps(out / "heat.npz")[0], read_heatmaps(out / "heat.tif")[0])
