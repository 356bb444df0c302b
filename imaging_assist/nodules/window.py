"""The nodule models' input: a fixed cube around a point, identical at training and at a click.

Both CT nodule models (``weights/ct-nodule-seg``, ``weights/ct-nodule-malignancy``) see a
:class:`Window`: a ``WINDOW_SIZE``-voxel cube at :data:`MODEL_SPACING_MM`, its axes along
patient L, P, S, cut around a point in patient coordinates (LPS mm) from *any* volume by
trilinear resampling (:func:`cut_window`).  The training script cuts its windows from the
LIDC crops with this very function (through :func:`volume_from_nifti`), so a crop and a
whole scan go through one code path.

Why 1.0 mm isotropic and 32 voxels: LIDC in-plane spacing is 0.5-0.98 mm and slice spacing
0.45-2.5 mm, so 1 mm keeps in-plane detail (no up-sampling beyond 2x anywhere in-plane) while
the z axis of thick-slice scans is interpolated, never extrapolated; a 32 mm cube holds every
nodule the card covers (3-30 mm) with a margin and stays small enough for a < 1 s click on
two CPU cores.

Why a validity mask: the crops are tight (in-plane 20-109 mm, along z as thin as 2 slices =
2.5 mm), so part of any 32 mm window lies outside the crop.  ``Window.valid`` says which
voxels came from inside the source volume; the model input (:func:`model_channels`) is two
HU windows scaled to 0..1 times ``valid`` plus ``valid`` itself, computed by the same code at training
and at a click.  Which region the model may use is the *input design*
(``INPUT_DESIGNS``; measured in docs/ct_nodules_models.md):

* ``"common"``: validity is further cut to the box every training crop holds (in-plane
  +-``COMMON_HALF_MM[1:]``, along z +-``COMMON_HALF_MM[0]``), so what the model sees at a click
  in a whole scan equals what it saw in training (except where a crop is thinner);
* ``"full"``: the whole cube, validity = the crop's extent (at a click: all True).

Coordinates: NIfTI affines are RAS; this module converts them to LPS (x and y negated) so
everything here, like DICOM and :class:`imaging_assist.volume.Volume`, is LPS.  The LIDC
``labels.csv`` ``coordX/Y/Z`` are LPS too (LUNA16 world coordinates, from ITK): the mask
centroid of each crop, taken through :func:`volume_from_nifti`, lies within 1 mm of them
(95th percentile; median 0.2 mm; tests/test_nodule_models.py), while read as RAS without the
flip it would be tens to hundreds of mm away.  The LIDC-IDRI-0001 DICOM slab and its crop
share one LPS frame: the crop is a sub-grid of the slab's voxels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import UserError
from ..volume import Volume

MODEL_SPACING_MM: float = 1.0
WINDOW_SIZE: int = 32
WINDOW_SHAPE: tuple[int, int, int] = (WINDOW_SIZE,) * 3  # [z, y, x]

# Half extents (z, y, x) in mm of the box that (nearly) every training crop holds around its
# nodule centre: in-plane the smallest crop is 19.8 mm wide (5th percentile 24 mm); along z
# crops are 2.5-62 mm (5th percentile 3.9 mm, median 8 mm).
COMMON_HALF_MM = (4.0, 10.0, 10.0)
INPUT_DESIGNS = ("common", "full")
DEFAULT_DESIGN = "common"
UNEVEN_SPACING_TOL = 0.1  # like run_model: relative spread of slice gaps refused


class WindowError(UserError):
    pass


@dataclass
class Window:
    image: np.ndarray   # float32 [z, y, x] HU (not normalised), fixed shape, at MODEL_SPACING_MM, LPS axes
    valid: np.ndarray   # bool, same shape: True where the voxel came from inside the source volume (finite)
    affine: np.ndarray  # 4x4: window index (i=x col, j=y row, k=z slice) -> patient LPS mm
    center_lps: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        return (MODEL_SPACING_MM,) * 3


def window_affine(center_lps, size: int = WINDOW_SIZE, spacing: float = MODEL_SPACING_MM) -> np.ndarray:
    """Index (i, j, k) -> LPS: axes along +L, +P, +S; the cube's centre (voxel (n-1)/2) is the point."""
    c = np.asarray(center_lps, float).reshape(3)
    a = np.eye(4)
    a[:3, :3] *= spacing
    a[:3, 3] = c - spacing * (size - 1) / 2.0
    return a


def check_volume(volume: Volume) -> None:
    """WindowError (one line) unless ``volume`` is a 3D series with a usable, evenly spaced
    patient geometry: what a nodule window needs."""
    if volume.array.ndim != 3:
        raise WindowError("a nodule window needs a greyscale 3D volume "
                          f"(this one has shape {tuple(volume.array.shape)})")
    if not volume.has_geometry:
        raise WindowError("a nodule window needs a series with patient geometry "
                          "(ImagePositionPatient/Orientation); this one has none")
    aff = np.asarray(volume.affine, float)
    if not np.all(np.isfinite(aff)) or abs(float(np.linalg.det(aff[:3, :3]))) < 1e-9:
        raise WindowError("the volume's geometry is unusable (NaN or degenerate orientation/spacing)")
    pos = None if volume.slice_positions is None else np.asarray(volume.slice_positions, float)
    if pos is not None and pos.size > 2:
        gaps = np.abs(np.diff(pos))
        med = float(np.median(gaps))
        if med > 0 and float(gaps.max() - gaps.min()) > UNEVEN_SPACING_TOL * med:
            raise WindowError(f"the slices are unevenly spaced ({gaps.min():.2f}-{gaps.max():.2f} mm): "
                              "a nodule window would be distorted; resample the series to even spacing first")


def _window_points(affine: np.ndarray, shape=WINDOW_SHAPE) -> np.ndarray:
    """(4, N) homogeneous (i, j, k, 1) of every window voxel, in [z, y, x] C order."""
    k, j, i = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    return np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])


def cut_window(volume: Volume, center_lps) -> Window:
    """The model window (``WINDOW_SIZE`` cube) of ``volume`` around ``center_lps``: :func:`cut_cube`."""
    return cut_cube(volume, center_lps, WINDOW_SIZE)


def cut_cube(volume: Volume, center_lps, size: int = WINDOW_SIZE) -> Window:
    """Resample ``volume`` (HU) around ``center_lps`` onto the model grid.

    Trilinear for the image; a window voxel is valid when its source position lies inside
    the volume's voxel footprint (continuous index in [-0.5, n-0.5] on every axis; between
    the outermost voxel centre and the edge the nearest voxel value is used) and its value is
    finite (a sample that touches a NaN or infinite voxel is not valid, and 0).  The training
    scripts cut a larger cube once and take ``WINDOW_SIZE`` sub-cubes of it: a sub-cube shifted
    by whole voxels equals :func:`cut_window` at the shifted point (same sample positions).  Works for any
    direction matrix (tilted, flipped, sheared gantry-tilt stacks) and anisotropic spacing.
    """
    check_volume(volume)
    c = np.asarray(center_lps, float).reshape(-1)
    if c.size != 3 or not np.all(np.isfinite(c)):
        raise WindowError(f"the point must be three finite LPS coordinates in mm (got {center_lps!r})")
    shape = (int(size),) * 3
    waff = window_affine(c, int(size))
    to_src = np.linalg.inv(np.asarray(volume.affine, float)) @ waff
    src = (to_src @ _window_points(waff, shape))[:3]  # (i, j, k) in the source
    nk, nj, ni = volume.array.shape
    inside = ((src[0] >= -0.5) & (src[0] <= ni - 0.5) & (src[1] >= -0.5) & (src[1] <= nj - 0.5)
              & (src[2] >= -0.5) & (src[2] <= nk - 0.5))
    coords = np.stack([src[2], src[1], src[0]])  # array axes [k, j, i]
    img = np.zeros(src.shape[1], np.float32)
    if inside.any():
        arr = volume.array
        if arr.dtype != np.float32:
            # only the bounding box of the samples is converted (a whole scan is large)
            lo = np.maximum(np.floor(coords[:, inside].min(1)).astype(int) - 1, 0)
            hi = np.minimum(np.ceil(coords[:, inside].max(1)).astype(int) + 2, arr.shape)
            sub = np.asarray(arr[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], np.float32)
            cc = coords[:, inside] - lo[:, None]
        else:
            sub, cc = arr, coords[:, inside]
        img[inside] = ndimage.map_coordinates(sub, cc, order=1, mode="nearest")
        bad = ~np.isfinite(img)  # a NaN/inf voxel, or a sample next to one: no data there
        if bad.any():
            img[bad] = 0.0
            inside &= ~bad
        if inside.any():
            lo_v, hi_v = float(img[inside].min()), float(img[inside].max())
            if lo_v < HU_RANGE[0] or hi_v > HU_RANGE[1]:  # e.g. a RescaleSlope of 1000
                raise WindowError(f"the values around the point ({lo_v:.6g} to {hi_v:.6g}) are not "
                                  f"Hounsfield units (a CT holds {HU_RANGE[0]:g} to {HU_RANGE[1]:g})")
    return Window(image=img.reshape(shape), valid=inside.reshape(shape),
                  affine=waff, center_lps=c.copy())


def design_box(design: str = DEFAULT_DESIGN) -> np.ndarray | None:
    """Bool [z, y, x] box the model may look at under ``design`` (None: the whole cube)."""
    if design == "full":
        return None
    if design != "common":
        raise ValueError(f"input design is one of {INPUT_DESIGNS}, not {design!r}")
    off = (np.arange(WINDOW_SIZE) - (WINDOW_SIZE - 1) / 2.0) * MODEL_SPACING_MM
    hz, hy, hx = COMMON_HALF_MM
    return ((np.abs(off) <= hz)[:, None, None] & (np.abs(off) <= hy)[None, :, None]
            & (np.abs(off) <= hx)[None, None, :])


def design_valid(window: Window, design: str = DEFAULT_DESIGN) -> np.ndarray:
    """The validity the model is given under ``design`` (see the module docstring)."""
    box = design_box(design)
    return window.valid if box is None else window.valid & box


# Two HU windows (lung and mediastinum, the two a reader uses on a nodule) and the validity:
# three channels, the card format's colour-image layout (safetensors cards take 1 or 3).
HU_WINDOWS = ((-1000.0, 400.0), (-160.0, 240.0))
N_CHANNELS = 3


def channels_from_arrays(image: np.ndarray, valid: np.ndarray, design: str = DEFAULT_DESIGN) -> np.ndarray:
    """(..., 3, z, y, x) float32 network input from HU ``image`` and bool ``valid``
    (..., z, y, x), any leading batch axes: each HU window scaled to 0..1 times the
    validity, then the validity.  Used by the engine and the training scripts alike."""
    box = design_box(design)
    v = valid if box is None else (valid & box)
    v = v.astype(np.float32)
    chans = [((np.clip(image, lo, hi) - lo) / (hi - lo)).astype(np.float32) * v for lo, hi in HU_WINDOWS]
    return np.stack(chans + [v], axis=-4)


def model_channels(window: Window, design: str = DEFAULT_DESIGN) -> np.ndarray:
    """(3, z, y, x) float32 network input of one window (:func:`channels_from_arrays`)."""
    return channels_from_arrays(window.image, window.valid, design)


#: Values a CT in Hounsfield units can hold (DICOM CT: 16-bit stored values, rescaled to HU;
#: padding down to -32768, metal in extended-range CT up to 32767).  A window with values beyond
#: this range is not HU (a RescaleSlope of 1000, a corrupt NIfTI scl_slope): :func:`cut_cube` refuses it.
HU_RANGE = (-32768.0, 32767.0)


def _check_declared_size(path: Path, img) -> None:
    """Refuse, before a byte is decoded, a NIfTI whose header asks for more memory than the DICOM
    loader would give a series (``MAX_SERIES_BYTES``), (gzip) more bytes per stored byte than
    it would decode (``MAX_DECODE_RATIO``), or (uncompressed) more bytes than the file holds after
    its vox_offset: nibabel allocates the declared size up front."""
    from ..dicom.index import MAX_DECODE_RATIO, MAX_SERIES_BYTES, RATIO_FLOOR_BYTES

    need = int(np.prod([int(n) for n in img.shape], dtype=object)) * int(img.get_data_dtype().itemsize)
    size = path.stat().st_size
    shape = "x".join(str(int(n)) for n in img.shape)
    if need > MAX_SERIES_BYTES:
        raise WindowError(f"{path}: implausible size: {shape} voxels would need {need / 1024**3:.1f} GiB")
    if path.name.lower().endswith(".gz") and need > RATIO_FLOOR_BYTES and need > MAX_DECODE_RATIO * size:
        raise WindowError(f"{path}: implausible size: {shape} voxels ({need >> 20} MiB) from a "
                          f"{size >> 10} KiB file")
    if not path.name.lower().endswith(".gz") and int(img.dataobj.offset) + need > size:
        raise WindowError(f"{path}: implausible size: {shape} voxels need {need} bytes from byte "
                          f"{int(img.dataobj.offset)} on; the file has {size}")


def _count_not_finite(arr: np.ndarray, step: int = 16) -> int:
    """NaN/inf voxels of a float volume, ``step`` slices at a time (a whole-scan float NIfTI is
    not doubled in memory to count them)."""
    return sum(int(arr[k:k + step].size - np.count_nonzero(np.isfinite(arr[k:k + step])))
               for k in range(0, arr.shape[0], step))


def volume_from_nifti(path) -> Volume:
    """A NIfTI file (RAS affine, data [i, j, k]) as a :class:`Volume` in LPS, indexed [k, j, i].

    LPS = diag(-1, -1, 1) @ RAS.  The values are taken as CT Hounsfield units (NIfTI stores
    no modality): a warning on the volume says so.  Refused with one line rather than guessed
    (nibabel repairs some of these silently): no orientation (qform_code and sform_code 0), a
    zero or non-finite voxel size, a voxel size outside what the DICOM loader believes
    (``PIXEL_SPACING_RANGE_MM``), a declared size it would not allocate
    (:func:`_check_declared_size`), no finite voxel.  NaN or infinite voxels are kept as they
    are and said in a warning: :func:`cut_window` takes them as outside the scan (not valid),
    like the space beyond a crop.  Values that are not HU (e.g. a wrong scl_slope) are refused
    where the models look, by :func:`cut_window`, as for DICOM.
    """
    from .. import nifti
    from ..dicom.loader import PIXEL_SPACING_RANGE_MM

    path = Path(path)
    try:
        # nibabel repairs some header fields on loading (zero pixdim -> 1, negative -> abs, an
        # unknown sform_code -> 0); the header as stored is read to decide here
        img = nifti.load(path)
        stored = nifti.stored_header(path, img)
        hdr = img.header
        codes = (int(hdr["qform_code"]), int(hdr["sform_code"]))
        stored_codes = (int(stored["qform_code"]), int(stored["sform_code"]))
        pixdim = np.asarray(stored["pixdim"][1:4], float)
        _check_declared_size(path, img)
        data = nifti.read_data(path, img)
    except nifti.NiftiError as e:
        raise WindowError(f"{path}: {str(e).split(': ', 1)[-1]}") from None
    warnings = ["NIfTI stores no modality: the values are taken as CT Hounsfield units"]
    while data.ndim > 3 and data.shape[-1] == 1:  # (x, y, z, 1, 1), as the overlay loader takes it
        data = data[..., 0]
    if data.ndim != 3 or min(data.shape) < 1:
        raise WindowError(f"{path}: a 3D NIfTI volume is needed (shape {tuple(data.shape)})")
    for name, was, now in zip(("qform_code", "sform_code"), stored_codes, codes):
        if was != now:
            warnings.append(f"the NIfTI {name} {was} is not a valid code: ignored")
    if codes == (0, 0):
        raise WindowError(f"{path}: the NIfTI file has no orientation (qform_code and sform_code are 0): "
                          "which way is head-foot is unknown")
    if codes[1] <= 0:  # the qform is used: its voxel size is pixdim (nibabel turns 0 into 1)
        if not np.all(np.isfinite(pixdim)) or np.any(pixdim == 0):
            raise WindowError(f"{path}: the NIfTI voxel size (pixdim {', '.join(f'{v:g}' for v in pixdim)}) "
                              "is zero or not a number")
        if np.any(pixdim < 0):
            warnings.append(f"negative NIfTI voxel size (pixdim {', '.join(f'{v:g}' for v in pixdim)}): "
                            "its absolute value is used, as nibabel and ITK do")
    # the spatial unit is bits 0-2 of xyzt_units (NIfTI-1 XYZT_TO_SPACE): nibabel's
    # get_xyzt_units raises KeyError for a code it does not know (one flipped bit), so the code
    # is taken here and named with nibabel's own table
    from nibabel.nifti1 import unit_codes

    space = int(hdr["xyzt_units"]) & 7
    unit = str(unit_codes.label[space]) if space in (0, 1, 2, 3) else None
    if unit in ("meter", "micron"):
        # nibabel's affine is in the file's unit; a CT in metres or microns is not one to guess
        raise WindowError(f"{path}: the NIfTI spatial unit is {unit}s (xyzt_units): only millimetres "
                          "(or an unknown unit, taken as mm) are read")
    if unit is None:
        warnings.append(f"the NIfTI spatial unit code {space} (xyzt_units) is not a valid code: "
                        "taken as millimetres, as ITK does")
    ras = np.asarray(img.affine, float)
    if not np.all(np.isfinite(ras)) or abs(float(np.linalg.det(ras[:3, :3]))) < 1e-9:
        raise WindowError(f"{path}: the NIfTI affine is unusable (NaN or degenerate)")
    # a transform whose code is 0 is unused (NIfTI-1): its fields may hold anything (NaN pixdim,
    # leftover quaternions) and are not kept; nibabel's get_*form(coded=True) give None then
    sform = img.get_sform(coded=True)[0]
    try:
        qform = img.get_qform(coded=True)[0]
    except ValueError:  # nibabel: quaternion fields that are no rotation
        qform = np.full((4, 4), np.nan)
    if qform is not None and not np.all(np.isfinite(qform)):
        # only with an sform (the qform of a qform-only file is the affine, checked above)
        warnings.append(f"the NIfTI qform (code {codes[0]}) is unusable (pixdim not a number or a broken "
                        "quaternion): ignored, the sform is used")
        qform = None
    if qform is not None and sform is not None:
        # both transforms given: nibabel (and FSL) use the sform, ITK may use the qform; when
        # they disagree the same file lands in two places, so say which one is used
        off = _transform_gap_mm(qform, ras, data.shape[:3])
        if off > 0.1:
            warnings.append(f"the NIfTI qform (code {codes[0]}) and sform (code {codes[1]}) disagree by up to "
                            f"{off:.1f} mm: the sform is used (as nibabel and FSL do; ITK-based tools may place "
                            "this file by its qform); the label and heat-map files keep both")
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras
    m = lps[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    lo, hi = PIXEL_SPACING_RANGE_MM
    if np.any(spacing < lo) or np.any(spacing > hi):
        raise WindowError(f"{path}: implausible voxel size {' x '.join(f'{v:g}' for v in spacing)} mm "
                          f"(believed: {lo:g} to {hi:g} mm)")
    direction = m / spacing[None, :]
    arr = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise WindowError(f"{path}: unsupported NIfTI data type {arr.dtype}")
    n_bad = _count_not_finite(arr) if np.issubdtype(arr.dtype, np.floating) else 0
    if n_bad == arr.size:
        raise WindowError(f"{path}: no voxel has a value (all NaN or infinite)")
    if n_bad:
        warnings.append(f"{n_bad} voxel(s) are NaN or infinite: taken as outside the scan")
    n = direction[:, 2]
    origin = lps[:3, 3]
    normal = np.cross(direction[:, 0], direction[:, 1])
    normal = normal / (np.linalg.norm(normal) or 1.0)  # in-plane axes need not be orthogonal
    positions = np.array([float(np.dot(origin + n * spacing[2] * k, normal)) for k in range(arr.shape[0])])
    vol = Volume(array=arr, spacing=tuple(float(s) for s in spacing), origin=tuple(float(v) for v in origin),
                 direction=direction, modality="CT", units="HU", slice_positions=positions,
                 warnings=warnings, description=path.name, source_paths=[str(path)])
    # the file's own transforms and codes, for files written on its grid (results.save_nifti)
    # (None, 0) for a transform that is unused or unusable
    vol.nifti_transforms = {"qform": (qform, 0 if qform is None else codes[0]),
                            "sform": (sform, 0 if sform is None else codes[1])}
    return vol


def _transform_gap_mm(a: np.ndarray, b: np.ndarray, shape) -> float:
    """The largest distance (mm) between where two voxel-to-world matrices put the corners of
    a grid of ``shape``."""
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)]).T
    return float(np.linalg.norm((a @ corners - b @ corners)[:3], axis=0).max())


def to_source_grid(window: Window, values: np.ndarray, volume: Volume, order: int) -> np.ndarray:
    """Map a window-grid array back onto ``volume``'s voxel grid ([k, j, i]).

    ``order=0`` (masks: nearest, keeps the dtype) or ``order=1`` (heat maps: trilinear,
    float32).  Voxels the window does not cover are 0.
    """
    values = np.asarray(values)
    if values.shape != WINDOW_SHAPE:
        raise ValueError(f"values must have the window shape {WINDOW_SHAPE}, not {values.shape}")
    if order not in (0, 1):
        raise ValueError("order is 0 (masks) or 1 (heat maps)")
    shape = tuple(volume.array.shape[:3])
    out = np.zeros(shape, values.dtype if order == 0 else np.float32)
    vaff = np.asarray(volume.affine, float)
    to_win = np.linalg.inv(window.affine) @ vaff
    # source voxels the window can touch: the window corners mapped into the source index space
    n = WINDOW_SIZE
    corners = np.array([[a, b, c, 1.0] for a in (-0.5, n - 0.5) for b in (-0.5, n - 0.5) for c in (-0.5, n - 0.5)]).T
    src = (np.linalg.inv(vaff) @ window.affine @ corners)[:3]  # (i, j, k)
    lo = np.maximum(np.floor(src.min(1)).astype(int), 0)
    hi = np.minimum(np.ceil(src.max(1)).astype(int) + 1, [shape[2], shape[1], shape[0]])
    if np.any(hi <= lo):
        return out
    k, j, i = np.meshgrid(np.arange(lo[2], hi[2]), np.arange(lo[1], hi[1]), np.arange(lo[0], hi[0]), indexing="ij")
    pts = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)]).astype(np.float64)
    w = (to_win @ pts)[:3]  # window (i, j, k)
    inside = np.all((w >= -0.5) & (w <= n - 0.5), axis=0)
    vals = np.zeros(w.shape[1], out.dtype)
    if inside.any():
        coords = np.stack([w[2], w[1], w[0]])[:, inside]
        src_vals = values.astype(np.uint8) if values.dtype == bool else values
        src_vals = src_vals if order == 0 else values.astype(np.float32)
        vals[inside] = ndimage.map_coordinates(src_vals, coords, order=order, mode="nearest").astype(out.dtype)
    out[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = vals.reshape(k.shape)
    return out
