"""MPR plane names on a double-oblique acquisition (session 22).

Each reformatted plane used to be named on its own after the dominant component of its
normal, so an acquisition tilted 40 degrees about x and 40 degrees about z got two
"sagittal" views and no coronal one (and two crosshair lines of one colour).  The names are
now assigned jointly, and each reformat's screen axes follow its convention as nearly as
the grid allows: the plane closest to coronal is called coronal, with superior up."""

from __future__ import annotations

import numpy as np

from imaging_assist import layers
from imaging_assist.layers import plane_kind, standard_planes
from imaging_assist_ui.shared.theme import PLANE_COLORS


def _rot(axis: str, deg: float) -> np.ndarray:
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


def _direction(deg_x: float, deg_z: float) -> np.ndarray:
    """Direction cosines (columns i, j, k) of an axial series tilted about x, then z."""
    r = _rot("x", deg_x) @ _rot("z", deg_z)
    return np.column_stack([r[:, 0], r[:, 1], np.cross(r[:, 0], r[:, 1])])


def test_double_oblique_planes_get_three_names_and_colours():
    d = _direction(40, 40)
    planes = standard_planes(d)
    assert [p.name for p in planes] == ["axial", "coronal", "sagittal"]
    assert layers.plane_kinds(d) == ("axial", "coronal", "sagittal")
    assert [plane_kind(d, axis) for axis in (0, 1, 2)] == ["axial", "coronal", "sagittal"]
    # the crosshair colours are looked up by name: three lines, three colours
    assert len({PLANE_COLORS[p.name] for p in planes}) == 3


def test_double_oblique_coronal_and_sagittal_have_superior_up():
    d = _direction(40, 40)
    co = next(p for p in standard_planes(d) if p.name == "coronal")
    labels = co.orientation_labels(d)
    assert labels["top"][0] == "S" and labels["bottom"][0] == "I"
    assert labels["right"][0] == "L" and labels["left"][0] == "R"
    sa = [p for p in standard_planes(d) if p.name == "sagittal"]
    assert len(sa) == 1
    labels = sa[0].orientation_labels(d)
    # superior up; its vertical axis used to run mostly left-right ('LPS' at the top)
    assert labels["top"][0] == "S" and labels["bottom"][0] == "I"
    _, down = sa[0].screen_vectors(d)
    assert -down[2] > 0.7  # up is mostly superior


def test_mildly_oblique_series_keep_their_planes():
    # 20 degrees about x and z: named and laid out exactly like a straight axial series
    d = _direction(20, 20)
    ax, co, sa = standard_planes(d)
    straight = standard_planes(np.eye(3))
    assert (ax, co, sa) == tuple(straight)
    assert co.orientation_labels(d)["top"][0] == "S"
    assert sa.orientation_labels(d)["left"][0] == "A"
