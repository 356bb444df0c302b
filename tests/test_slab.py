"""Thick-slab projections (imaging_assist/slab.py): which slices a slab takes (uneven gaps,
reversed order, volume ends), the projection on every plane and flip, slices not loaded yet,
NaN, the depth a click on a projection points at, refusals, and the real LIDC slab against its
own files' ImagePositionPatient read with pydicom."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from conftest import SHARED, need
from imaging_assist.layers import Plane, standard_planes
from imaging_assist.slab import Slab, depth_index, project, refusal, slab_indices
from imaging_assist.volume import Volume

SLAB_DIR = SHARED / "ct" / "lidc_idri_0001_slab"


def _vol(shape=(9, 6, 5), spacing=(0.7, 0.8, 2.5), positions=None, dtype=np.int16, seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1000, 1000, size=shape).astype(dtype)
    v = Volume(array=arr, spacing=spacing, modality="CT", units="HU")
    v.slice_positions = (np.arange(shape[0]) * spacing[2] if positions is None
                         else np.asarray(positions, float))
    return v


def test_slab_takes_the_slices_within_half_the_thickness_nearest_first():
    v = _vol()
    idx, off = slab_indices(v, Plane.native(), 4, Slab("mip", 10))
    assert list(idx) == [4, 3, 5, 2, 6] and list(off) == [0, -2.5, 2.5, -5, 5]
    idx, off = slab_indices(v, Plane.native(), 0, Slab("mip", 10))  # clipped at the first slice
    assert list(idx) == [0, 1, 2] and list(off) == [0, 2.5, 5]
    idx, _ = slab_indices(v, Plane.native(), 4, Slab("mip", 5))
    assert list(idx) == [4, 3, 5]
    idx, _ = slab_indices(v, Plane.native(), 4, Slab("mip", 4.9))  # +-2.45 mm holds no neighbour
    assert list(idx) == [4]


def test_slab_follows_each_slices_own_position_and_the_display_direction():
    v = _vol(positions=[0, 1, 2, 5, 6, 7, 8, 9, 10])  # a gap of 3 mm after slice 2
    idx, off = slab_indices(v, Plane.native(), 2, Slab("mip", 4))
    assert sorted(idx) == [0, 1, 2] and sorted(off) == [-2, -1, 0]
    rev = _vol(positions=[20, 17.5, 15, 12.5, 10, 7.5, 5, 2.5, 0])  # order against the normal
    idx, off = slab_indices(rev, Plane.native(), 0, Slab("avg", 10))
    assert list(idx) == [0, 1, 2] and list(off) == [0, 2.5, 5]  # the next slice is +


@pytest.mark.parametrize("mode,fn", [("mip", np.max), ("minip", np.min)])
def test_projection_equals_the_reduction_on_every_plane_and_flip(mode, fn):
    v = _vol(shape=(7, 8, 9), spacing=(1.0, 1.5, 2.0))
    planes = [Plane.native(), Plane(axis=0, flip_h=True, flip_v=True)] + standard_planes(np.diag([-1.0, 1, -1]))
    for plane in planes:
        n = v.array.shape[plane.axis]
        sp = plane.slice_spacing(v.spacing)
        for index in (0, n // 2, n - 1):
            img = project(v, plane, index, Slab(mode, 2 * sp))
            lo, hi = max(0, index - 1), min(n - 1, index + 1)
            want = fn(np.stack([plane.extract(v.array, k) for k in range(lo, hi + 1)]), axis=0)
            assert img.array.dtype == v.array.dtype and np.array_equal(img.array, want), (plane, index)
            assert len(img.indices) == hi - lo + 1 and img.indices[0] == index


def test_average_keeps_the_volumes_type_and_rounds():
    v = _vol()
    img = project(v, Plane.native(), 4, Slab("avg", 5))
    want = np.rint(v.array[3:6].astype(float).mean(axis=0)).astype(np.int16)
    assert img.array.dtype == np.int16 and np.array_equal(img.array, want)
    f = _vol(dtype=np.float32)
    img = project(f, Plane.native(), 4, Slab("avg", 5))
    assert img.array.dtype == np.float32 and np.allclose(img.array, f.array[3:6].mean(axis=0), atol=1e-3)


def test_nan_is_left_out_and_an_all_nan_ray_stays_nan():
    v = _vol(dtype=np.float32)
    v.array[4, 0, 0] = np.nan
    v.array[3:6, 1, 1] = np.nan
    for mode in ("mip", "minip", "avg"):
        img = project(v, Plane.native(), 4, Slab(mode, 5)).array
        assert np.isfinite(img[0, 0]) and np.isnan(img[1, 1]), mode
    assert project(v, Plane.native(), 4, Slab("mip", 5)).array[0, 0] == np.nanmax(v.array[3:6, 0, 0])


def test_slices_not_loaded_yet_are_left_out_and_counted():
    v = _vol()
    v.array[5] = 0  # what an unread slice holds
    v.array[3:5] = -500
    v.loaded = np.ones(9, bool)
    v.loaded[5] = False
    img = project(v, Plane.native(), 4, Slab("minip", 5))
    assert img.missing == 1 and sorted(img.indices) == [3, 4]
    assert (img.array == -500).all()  # not the zeros of slice 5
    assert "(1 not loaded yet)" in img.describe()
    assert depth_index(v, Plane.native(), 4, Slab("mip", 5), 0, 0) in (3, 4)


def test_describe_names_mode_thickness_and_the_slices_taken():
    v = _vol()
    assert project(v, Plane.native(), 4, Slab("mip", 10)).describe() == "MIP 10 mm: 5 slices -5.0 to +5.0 mm"
    assert project(v, Plane.native(), 8, Slab("minip", 5)).describe() == "MinIP 5 mm: 2 slices -2.5 to +0.0 mm"


def test_a_click_on_a_projection_points_at_the_extreme_voxels_slice():
    v = _vol()
    v.array[:] = 0
    v.array[6, 2, 3] = 900   # bright voxel 2 slices above the centre
    v.array[3, 2, 3] = -900  # dark voxel 1 slice below
    p = Plane.native()
    assert depth_index(v, p, 4, Slab("mip", 10), u=3, v=2) == 6
    assert depth_index(v, p, 4, Slab("minip", 10), u=3, v=2) == 3
    assert depth_index(v, p, 4, Slab("avg", 10), u=3, v=2) == 4
    assert depth_index(v, p, 4, Slab("mip", 10), u=0, v=0) == 4  # equal values: the centre
    v.array[2, 0, 0] = v.array[5, 0, 0] = 5                     # equal maxima: the nearer one
    assert depth_index(v, p, 4, Slab("mip", 10), u=0, v=0) == 5
    assert depth_index(v, p, 4, Slab("mip", 10), u=99, v=0) == 4  # outside the image
    # a reformatted, flipped plane: the depth runs along its own axis
    sag = [q for q in standard_planes(np.eye(3)) if q.axis == 2][0]
    u, vv, index = sag.from_voxel((6, 2, 3), v.array.shape)
    assert depth_index(v, sag, 2, Slab("mip", 2 * 0.7 + 0.01), u, vv) == 3


def test_refusals_say_why():
    p = Plane.native()
    rgb = Volume(array=np.zeros((3, 4, 4, 3), np.uint8))
    cine = _vol()
    cine.is_cine = True
    flat = _vol()
    flat.has_geometry = False
    one = _vol(shape=(1, 6, 5))
    for vol, why in ((rgb, "colour"), (cine, "time"), (flat, "positions"), (one, "single slice")):
        assert why in refusal(vol, p)
        with pytest.raises(ValueError, match=why):
            project(vol, p, 0, Slab("mip", 5))
    assert depth_index(rgb, p, 0, Slab("mip", 5), 0, 0) == 0


@pytest.mark.parametrize("text,ok", [("mip:10", Slab("mip", 10)), ("MinIP:2.5", Slab("minip", 2.5)),
                                     ("avg:0.5", Slab("avg", 0.5)), ("mip", None), ("max:10", None),
                                     ("mip:x", None), ("mip:nan", None), ("mip:-1", None), ("mip:0", None),
                                     ("mip:1e9", None), ("mip:inf", None)])
def test_parse(text, ok):
    if ok is None:
        with pytest.raises(ValueError, match="slab"):
            Slab.parse(text)
    else:
        assert Slab.parse(text) == ok


def test_real_slab_mip_takes_the_files_within_5_mm_by_their_own_positions():
    from imaging_assist.dicom import load_series, scan

    vol = load_series(scan(str(need(SLAB_DIR))).all_series()[0])
    files = sorted(need(SLAB_DIR).glob("*.dcm"))
    by_z = {}
    for f in files:
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        by_z[float(ds.ImagePositionPatient[2])] = hu
    zs = np.array(sorted(by_z))
    k = vol.n_slices // 2
    zc = float(vol.index_to_lps(0, 0, k)[2])
    want = np.max([by_z[z] for z in zs if abs(z - zc) <= 5.0 + 1e-6], axis=0)
    img = project(vol, Plane.native(), k, Slab("mip", 10))
    assert len(img.indices) == sum(abs(z - zc) <= 5.0 + 1e-6 for z in zs) == 5
    assert np.array_equal(img.array.astype(np.float64), want)


@pytest.mark.parametrize("positions,spacing", [
    ([0, 2.5, np.nan, 7.5, 10, 12.5, 15, 17.5, 20], 2.5),  # a broken position
    ([np.nan] * 9, 2.5),                                   # none usable
    ([0.0] * 9, 2.5),                                      # all in one place
    (None, 1e-9),                                          # absurdly thin slices
    (None, float("nan")),                                  # no spacing
])
def test_broken_positions_give_a_slab_that_holds_the_shown_slice_and_never_fails(positions, spacing):
    v = _vol(spacing=(0.7, 0.8, spacing), positions=positions)
    for k in (0, 2, 8):
        idx, off = slab_indices(v, Plane.native(), k, Slab("mip", 10))
        assert idx[0] == k and off[0] == 0 and np.isfinite(off).all()
        img = project(v, Plane.native(), k, Slab("minip", 10))
        assert img.array.shape == (6, 5)
        assert np.array_equal(img.array, v.array[idx].min(axis=0))
