"""Overlay layer model (no Qt): planes, label maps, heat maps, markers, compositing."""

import numpy as np
import pytest

from imaging_assist.layers import (HeatmapLayer, LabelLayer, LayerStack, Marker, MarkerLayer, Plane,
                                   argb32_to_rgba, colormap_rgb, load_overlay, outline, plane_kind,
                                   standard_planes)
from imaging_assist.volume import Volume


def test_standard_planes_axial_acquisition():
    d = np.eye(3)  # columns i=+x (L), j=+y (P), k=+z (S): a normal axial CT
    ax, co, sa = standard_planes(d)
    assert (ax.name, co.name, sa.name) == ("axial", "coronal", "sagittal")
    assert ax.orientation_labels(d) == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    # coronal: patient left on screen right, superior up (k runs to S, so rows are flipped)
    assert co.orientation_labels(d) == {"left": "R", "right": "L", "top": "S", "bottom": "I"}
    assert (co.h_axis, co.v_axis, co.flip_v) == (2, 0, True)
    # sagittal: anterior on the left, superior up
    assert sa.orientation_labels(d) == {"left": "A", "right": "P", "top": "S", "bottom": "I"}
    assert plane_kind(d, 0) == "axial"


def test_standard_planes_sagittal_acquisition():
    # sagittal MR: i runs A->P (+y), j runs S->I (-z), k runs R->L (+x)
    d = np.column_stack([[0, 1, 0], [0, 0, -1], [1, 0, 0]]).astype(float)
    planes = standard_planes(d)
    assert [p.name for p in planes] == ["sagittal", "axial", "coronal"]
    assert planes[0].orientation_labels(d) == {"left": "A", "right": "P", "top": "S", "bottom": "I"}
    ax = planes[1]
    assert ax.orientation_labels(d) == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    co = planes[2]
    assert co.orientation_labels(d) == {"left": "R", "right": "L", "top": "S", "bottom": "I"}


def test_plane_extract_and_coordinates_round_trip():
    arr = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    for p in standard_planes(np.eye(3)):
        rows, cols = p.shape2d(arr.shape)
        for idx in (0, p.n_slices(arr.shape) - 1):
            s = p.extract(arr, idx)
            assert s.shape == (rows, cols)
            for v, u in ((0, 0), (rows - 1, cols - 1), (1, 2)):
                k, j, i = p.to_voxel(u, v, idx, arr.shape)
                assert s[v, u] == arr[int(k), int(j), int(i)]
                assert p.from_voxel((k, j, i), arr.shape) == (u, v, idx)


def test_plane_spacing():
    co = standard_planes(np.eye(3))[1]
    assert co.spacing2d((0.45, 0.45, 1.0)) == (0.45, 1.0)
    assert Plane.native().spacing2d((0.4, 0.5, 2.0)) == (0.4, 0.5)


def test_label_layer_fill_outline_visibility():
    lab = np.zeros((2, 8, 8), np.uint8)
    lab[0, 2:6, 2:6] = 1
    lab[0, 0, 0] = 2
    layer = LabelLayer("seg", lab, names={1: "lesion", 2: "other"}, colors={1: (255, 0, 0)}, opacity=0.5)
    assert layer.labels[1].name == "lesion"
    rgba = argb32_to_rgba(layer.render_argb32(Plane.native(), 0))
    assert tuple(rgba[3, 3]) == (255, 0, 0, 128)
    assert rgba[7, 7, 3] == 0  # background transparent
    layer.labels[2].visible = False
    assert argb32_to_rgba(layer.render_argb32(Plane.native(), 0))[0, 0, 3] == 0
    layer.mode = "outline"
    rgba = argb32_to_rgba(layer.render_argb32(Plane.native(), 0))
    assert rgba[2, 2, 3] == 128 and rgba[3, 3, 3] == 0  # edge kept, inside empty
    layer.visible = False
    assert layer.render_argb32(Plane.native(), 0) is None


def test_outline_keeps_region_boundaries():
    s = np.zeros((6, 6), np.uint8)
    s[1:5, 1:5] = 3
    o = outline(s)
    assert o[1, 1] == 3 and o[2, 2] == 0 and o[4, 3] == 3


def test_label_layer_from_bool_and_wide_values():
    assert LabelLayer("b", np.ones((3, 3), bool)).labels.keys() == {1}
    big = np.zeros((1, 4, 4), np.int32)
    big[0, 0, 0] = 300
    layer = LabelLayer("wide", big)
    assert 300 in layer.labels
    assert argb32_to_rgba(layer.render_argb32(Plane.native(), 0))[0, 0, 3] > 0
    with pytest.raises(ValueError):
        LabelLayer("bad", np.full((2, 2), 0.5))


def test_heatmap_threshold_colormap_and_nan():
    h = np.array([[[0.0, 0.1, 0.5, 1.0, np.nan]]], np.float32)
    layer = HeatmapLayer("cam", h, colormap="hot", opacity=1.0, threshold=0.3, fade=False)  # fade: test_colormaps.py
    assert (layer.vmin, layer.vmax) == (0.0, 1.0)
    rgba = argb32_to_rgba(layer.render_argb32(Plane.native(), 0))
    assert list(rgba[0, :, 3]) == [0, 0, 255, 255, 0]  # below threshold and NaN hidden
    assert tuple(rgba[0, 3, :3]) == tuple(colormap_rgb("hot")[-1])  # the top of the map
    cols, lo, hi = layer.legend()
    assert cols.shape == (256, 3) and (lo, hi) == (0.0, 1.0)
    with pytest.raises(ValueError):
        HeatmapLayer("x", h, colormap="nope")


def test_stack_events_order_toggle_and_composite():
    events = []
    st = LayerStack()
    st.subscribe(lambda e, l: events.append((e, l.name if l else None)))
    a = np.zeros((1, 4, 4), np.uint8)
    a[0, :, :2] = 1
    red = st.add(LabelLayer("red", a, colors={1: (255, 0, 0)}, opacity=1.0))
    b = np.zeros((1, 4, 4), np.uint8)
    b[0, :2, :] = 1
    blue = st.add(LabelLayer("blue", b, colors={1: (0, 0, 255)}, opacity=0.5))
    out = st.composite(Plane.native(), 0)
    assert tuple(out[3, 0]) == (255, 0, 0, 255)  # only red
    assert tuple(out[0, 3]) == (0, 0, 255, 128)  # only blue, half transparent
    r, g, bb, al = out[0, 0]
    assert al == 255 and abs(int(r) - 128) <= 1 and abs(int(bb) - 128) <= 1  # blue over red
    assert tuple(out[3, 3]) == (0, 0, 0, 0)
    assert st.toggle("blue") is False
    assert tuple(st.composite(Plane.native(), 0)[0, 0]) == (255, 0, 0, 255)
    st.move(red, 1)
    assert st.layers == [blue, red]
    blue.opacity = 0.2
    assert ("changed", "blue") in events
    st.remove("red")
    assert [e for e, _ in events][:2] == ["added", "added"] and ("removed", "red") in events
    st.add(LabelLayer("blue", b))
    assert [l.name for l in st] == ["blue", "blue (2)"]
    assert st.check_shape((1, 4, 4)) == [] and st.check_shape((2, 4, 4)) == ["blue", "blue (2)"]


def test_markers_near_plane():
    ml = MarkerLayer("findings", [Marker((5, 10, 20), "nodule", score=0.9), Marker((9, 1, 1), "low", score=0.1)])
    shape = (10, 32, 32)
    near = ml.near(Plane.native(), 5, shape)
    assert [(m.label, u, v) for m, u, v in near] == [("nodule", 20.0, 10.0)]
    ml.min_score = 0.5
    assert [m.label for m in ml.shown()] == ["nodule"]
    co = standard_planes(np.eye(3))[1]
    (m, u, v), = ml.near(co, 10, shape)
    assert (u, v) == (20.0, 4.0)  # k=5 shown flipped: row 10-1-5
    assert m.text() == "nodule 0.90"


def test_load_overlay_npy_and_nifti(tmp_path):
    import struct

    import nibabel as nib
    vol = Volume(array=np.zeros((3, 4, 5), np.int16), spacing=(0.5, 0.6, 2.0), origin=(10.0, 20.0, 30.0),
                 direction=np.eye(3))
    lab = np.zeros((3, 4, 5), np.uint8)
    lab[1, 2, 3] = 4
    np.save(tmp_path / "lab.npy", lab)
    layer = load_overlay(str(tmp_path / "lab.npy"), vol)
    assert isinstance(layer, LabelLayer) and layer.array[1, 2, 3] == 4
    # the same map as NIfTI (x, y, z) = (i, j, k) with an LPS->RAS affine, as dcm2niix writes it
    aff = np.diag([-1.0, -1.0, 1.0, 1.0]) @ vol.affine
    nib.save(nib.Nifti1Image(np.transpose(lab, (2, 1, 0)).astype(np.uint8), aff), tmp_path / "lab.nii.gz")
    layer = load_overlay(str(tmp_path / "lab.nii.gz"), vol)
    assert np.array_equal(layer.array, lab)
    # flipped x axis in the file: still the same voxels after matching the affines
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = 4
    nib.save(nib.Nifti1Image(np.transpose(lab, (2, 1, 0))[::-1].astype(np.float32) * 0.5,
                             aff @ flip), tmp_path / "heat.nii")
    heat = load_overlay(str(tmp_path / "heat.nii"), vol)
    assert isinstance(heat, HeatmapLayer) and heat.array[1, 2, 3] == 2.0
    with pytest.raises(ValueError):
        np.save(tmp_path / "bad.npy", np.zeros((2, 2, 2)))
        load_overlay(str(tmp_path / "bad.npy"), vol)
    # a header that declares another (huge) grid is refused before a voxel is read: the file
    # holds only the header, so reading would fail differently (or allocate 16 GiB)
    big = nib.Nifti1Image(np.zeros((1, 1, 1), np.uint8), aff)
    big.header.set_data_shape((2048, 2048, 4096))
    raw = big.header.binaryblock + b"\0" * 4
    (tmp_path / "big.nii").write_bytes(raw)
    with pytest.raises(ValueError, match="do not match the image grid"):
        load_overlay(str(tmp_path / "big.nii"), vol)
    # a NaN origin would pass every comparison of the grid check: refused, not placed by guess
    nib.save(nib.Nifti1Image(np.transpose(lab, (2, 1, 0)), aff), tmp_path / "nan.nii")
    b = bytearray((tmp_path / "nan.nii").read_bytes())
    struct.pack_into("<hh", b, 252, 1, 0)  # qform_code 1, sform_code 0: the qform is the affine
    struct.pack_into("<f", b, 268, float("nan"))  # qoffset_x
    (tmp_path / "nan.nii").write_bytes(bytes(b))
    with pytest.raises(ValueError, match="affine is unusable"):
        load_overlay(str(tmp_path / "nan.nii"), vol)


# --------------------------------------------------------------------------- one palette (issue 12)
def test_key_image_colours_equal_the_viewer_layers(tmp_path):
    from PIL import Image

    from imaging_assist import colormaps, display
    from imaging_assist.inference.results import overlay_png
    from imaging_assist.layers import HeatmapLayer, LabelLayer
    from imaging_assist.volume import Volume

    base = np.tile(np.linspace(0, 1000, 64, dtype=np.float32), (48, 1))[None]
    vol = Volume(array=base, has_geometry=False)
    heat = np.tile(np.linspace(0, 2.0, 64, dtype=np.float32), (48, 1))
    overlay_png(base[0], tmp_path / "h.png", heat_slice=heat, volume=vol, k=0)
    key = np.asarray(Image.open(tmp_path / "h.png").convert("RGB")).astype(np.float32)
    layer = HeatmapLayer("heat", heat[None], vmin=0.0, vmax=float(heat.max()))
    assert layer.colormap == colormaps.DEFAULT_HEAT_COLORMAP == "inferno"
    layer_rgb = colormap_rgb(layer.colormap)[np.minimum(layer.indices(heat), 255)].astype(np.float32)
    grey = display.render_slice(vol, 0).astype(np.float32)[..., None]
    a = colormaps.fade_alpha(heat / heat.max())[..., None]  # the viewer's fade, not a flat tint
    want = np.clip(grey * (1 - a) + layer_rgb * a, 0, 255).astype(np.uint8)
    assert np.abs(key - want).max() <= 1

    labels = (np.arange(64)[None, :] // 2 % 25).repeat(48, 0).astype(np.uint8)  # 0..24: wraps the palette
    overlay_png(base[0], tmp_path / "l.png", label_slice=labels, volume=vol, k=0)
    key = np.asarray(Image.open(tmp_path / "l.png").convert("RGB")).astype(np.float32)
    ll = LabelLayer("labels", labels[None])
    for v in (int(x) for x in np.unique(labels) if x > 0):
        r, c = 0, int(np.argmax(labels[0] == v))
        want = grey[r, c, 0] * 0.55 + np.array(ll.label(v).color, np.float32) * 0.45
        assert np.abs(key[r, c] - want).max() <= 1, v


def test_one_palette_module_is_re_exported():
    from imaging_assist import colormaps, layers
    assert layers.colormap_rgb is colormaps.colormap_rgb and layers.COLORMAPS is colormaps.COLORMAPS
    assert layers.LABEL_PALETTE is colormaps.LABEL_PALETTE
    assert colormaps.label_color(1) == colormaps.LABEL_PALETTE[0]
    # past the palette, colours of their own (label 21 is not label 1's colour)
    assert colormaps.label_color(21) not in colormaps.LABEL_PALETTE and colormaps.label_color(0) == (0, 0, 0)
    from imaging_assist.inference.results import heat_colormap
    v = np.linspace(0, 1, 11)
    assert np.array_equal(heat_colormap(v), colormaps.colormap_rgb("inferno")[(v * 255 + 0.5).astype(int)])
