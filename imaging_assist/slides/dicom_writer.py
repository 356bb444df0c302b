"""Write a pyramid as DICOM VL Whole Slide Microscopy instances (wsidicom does the encoding).

wsidicom writes WSI DICOM from a :class:`wsidicom.source.Source`; this module provides a
small in-memory one whose levels come from numpy arrays or from any :class:`Slide` (tiles
are read on demand, so a large slide is converted without holding it in memory).  Used by
the tests (a DICOM WSI with known pixels) and by :func:`slide_to_dicom` for exporting.  The
images are colour, so each instance carries an sRGB ICC profile (required for colour by the
Optical Path module).

Lossy compression is recorded (PS3.3 C.7.6.1.1.5: once lossy, always "01"): the JPEG of
``jpeg_quality`` (wsidicom encodes the tiles then and writes the method and the measured ratio),
and a lossy source (a JPEG / JPEG 2000 TIFF or SVS) with its method and a ratio estimated from
the file size (at least that: the file also holds the other levels).
"""

from __future__ import annotations

import copy
import os
import re
from typing import Callable, Sequence

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from wsidicom import WsiDicom
from wsidicom.codec import Encoder, JpegSettings, LossyCompressionIsoStandard, Subsampling
from wsidicom.geometry import Size, SizeMm
from wsidicom.instance import ImageData, WsiDataset, WsiInstance
from wsidicom.instance.numpy_image_data import NumpyImageData
from wsidicom.metadata import (Equipment, Image, Label, LossyCompression, OpticalPath, Patient, Pyramid, Series,
                               Slide, Study, WsiMetadata)
from wsidicom.metadata.image import ImageType
from wsidicom.metadata.sample import SlideSample
from wsidicom.metadata.schema.dicom.wsi import WsiMetadataDicomSchema
from wsidicom.source import Source


class _TileImageData(ImageData):
    """Tiles from ``read(tx, ty) -> (<=tile, <=tile, 3) uint8``; edges padded white.
    ``lossy``: the lossy compressions the pixels went through before (a JPEG source)."""

    def __init__(self, size, tile, mpp_um, read, jpeg_quality, lossy=()):
        self._size, self._tile, self._mpp, self._read = size, tile, mpp_um, read
        self._lossy = list(lossy)
        self._ts = ExplicitVRLittleEndian
        self._photometric = "RGB"
        super().__init__(Encoder.create(self._ts, 8, self._photometric))
        # JPEG: as wsidicom's transcoder, so that its writer records the compression in the
        # instance (LossyImageCompression "01", the method and the measured ratio)
        self._jpeg = (Encoder.create_for_settings(JpegSettings(quality=jpeg_quality, subsampling=Subsampling.R422))
                      if jpeg_quality else None)

    transfer_syntax = property(lambda s: s._ts)
    image_size = property(lambda s: Size(*s._size))
    tile_size = property(lambda s: Size(s._tile, s._tile))
    pixel_spacing = property(lambda s: SizeMm(s._mpp[0] / 1000, s._mpp[1] / 1000))
    imaged_size = property(lambda s: None)
    samples_per_pixel = property(lambda s: 3)
    photometric_interpretation = property(lambda s: s._photometric)
    bits = property(lambda s: 8)
    image_coordinate_system = property(lambda s: None)
    thread_safe = property(lambda s: True)
    lossy_compression = property(lambda s: s._lossy or None)
    transcoder = property(lambda s: s._jpeg)

    def get_decoded_tile(self, tile_point, z, path, cache=True):
        t = self._tile
        out = np.full((t, t, 3), 255, np.uint8)
        a = self._read(tile_point.x, tile_point.y)
        out[:a.shape[0], :a.shape[1]] = a
        return out

    def get_encoded_tile(self, tile, z, path):
        return self.encoder.encode(self.get_decoded_tile(tile, z, path))


class _ArraySource(Source):
    """A wsidicom Source over prepared image data (what WsiDicom.save writes from)."""

    def __init__(self, md: WsiMetadata, levels: list, label, macro):
        super().__init__()
        self._schema = WsiMetadataDicomSchema()
        self._md, self._levels, self._label, self._macro = md, levels, label, macro
        # colour images: the ICC Profile (Type 1C) is required; wsidicom's default is sRGB, as a
        # DICOM input ('scnr') profile
        self._vol = self._schema.dump(md, ImageType.VOLUME, require_icc_profile=True)

    @property
    def base_dataset(self):
        return WsiDataset(self._vol)

    @property
    def level_instances(self):
        # create_instance_dataset edits the dataset it is given: one copy per instance
        return [WsiInstance.create_instance(d, copy.deepcopy(self._vol), ImageType.VOLUME, 0) for d in self._levels]

    def _single(self, img, kind):
        if img is None:
            return []
        ds = self._schema.dump(self._md, kind, require_icc_profile=True)
        return [WsiInstance.create_instance(NumpyImageData(np.ascontiguousarray(img[..., :3])), ds, kind)]

    @property
    def label_instances(self):
        return self._single(self._label, ImageType.LABEL)

    @property
    def overview_instances(self):
        return self._single(self._macro, ImageType.OVERVIEW)

    thumbnail_instances = property(lambda s: [])
    annotation_instances = property(lambda s: [])

    def close(self):
        pass


def save_dicom_wsi(out_dir: str | os.PathLike, level_sizes: Sequence[tuple[int, int]],
                   read_tile: Callable[[int, int, int, int], np.ndarray], mpp: tuple[float, float], *,
                   tile_size: int = 256, jpeg_quality: int | None = None, label: np.ndarray | None = None,
                   macro: np.ndarray | None = None, patient_name: str = "Anonymous",
                   workers: int = 1, lossy: Sequence[LossyCompression] = ()) -> list[str]:
    """Write DICOM WSI files into ``out_dir``.

    ``level_sizes``: (width, height) per level, largest first, each half the previous one
    (wsidicom's requirement).  ``read_tile(level, x, y, size)`` returns the pixels of the
    square at level pixels (x, y) (clipped at the level edge).  ``mpp``: level-0 µm/px (DICOM
    WSI requires a pixel spacing).  Uncompressed unless ``jpeg_quality`` is given.  ``lossy``:
    the lossy compressions of the source pixels (recorded in the instances, with the JPEG's).
    """
    md = WsiMetadata(
        study=Study(uid=generate_uid(), identifier="1", description="imaging-assist export"),
        series=Series(uid=generate_uid(), number=1),
        patient=Patient(name=patient_name),
        equipment=Equipment(manufacturer="imaging-assist", model_name="export", software_versions=["imaging-assist"]),
        slide=Slide(identifier="slide", samples=[SlideSample(identifier="sample", uid=generate_uid())]),
        pyramid=Pyramid(image=Image(), optical_paths=[OpticalPath(identifier="0")], uid=generate_uid()),
        label=Label(), frame_of_reference_uid=generate_uid(), dimension_organization_uids=[generate_uid()])
    w0, h0 = level_sizes[0]
    datas = []
    for i, (w, h) in enumerate(level_sizes):
        def reader(tx, ty, _i=i, _w=w, _h=h):
            x, y = tx * tile_size, ty * tile_size
            return read_tile(_i, x, y, tile_size)[:max(0, _h - y), :max(0, _w - x)]

        datas.append(_TileImageData((w, h), tile_size, (mpp[0] * w0 / w, mpp[1] * h0 / h), reader, jpeg_quality,
                                    lossy))
    os.makedirs(out_dir, exist_ok=True)
    with WsiDicom(_ArraySource(md, datas, label, macro)) as wsi:
        files = wsi.save(os.fspath(out_dir), workers=workers)
    return [os.fspath(f) for f in files]


def slide_to_dicom(slide, out_dir: str | os.PathLike, **kw) -> list[str]:
    """Export a :class:`Slide` (its dyadic levels, label and macro) as DICOM WSI."""
    from .base import SlideError
    if slide.mpp is None:
        raise SlideError(f"{slide.path}: DICOM WSI needs a pixel spacing and the slide has no MPP")
    sizes, idx = [], []
    for i, (w, h) in enumerate(slide.level_dimensions):
        if not sizes or (abs(sizes[-1][0] / w - 2) < 0.05 and abs(sizes[-1][1] / h - 2) < 0.05):
            sizes.append((w, h))
            idx.append(i)
    label = slide.associated_image("label") if "label" in slide.associated_image_names else None
    macro = slide.associated_image("macro") if "macro" in slide.associated_image_names else None
    kw.setdefault("lossy", source_lossy_compression(slide))
    return save_dicom_wsi(out_dir, sizes, lambda lv, x, y, t: slide.read_level(idx[lv], x, y, t, t),
                          slide.mpp, label=label, macro=macro, **kw)


def source_lossy_compression(slide) -> list[LossyCompression]:
    """The lossy compression of a slide's stored pixels where its reader says it: a TIFF's
    Compression (our TIFF reader), an Aperio description ("... JPEG/RGB Q=30", OpenSlide); [] when
    not known (a DICOM source, a lossless or unknown codec)."""
    props = slide.properties or {}
    comp = str(props.get("tiff.Compression", "")).upper()
    desc = str(props.get("tiff.ImageDescription", "")) if slide.format == "aperio" else ""
    aperio = re.search(r"\b(JPEG|J2K)/", desc)  # Aperio: "(256x256) JPEG/RGB Q=30", "J2K/YUV16 Q=70"
    if comp in ("JPEG", "OJPEG") or aperio and aperio.group(1) == "JPEG":
        method = LossyCompressionIsoStandard.JPEG_LOSSY
    elif "JP2000" in comp or "JPEG2000" in comp or aperio:
        method = LossyCompressionIsoStandard.JPEG_2000_IRREVERSIBLE
    else:
        return []
    w, h = slide.dimensions
    try:
        size = os.path.getsize(slide.path)
    except OSError:
        size = 0
    # the file holds level 0 and more (other levels, label, macro): the ratio is at least this
    return [LossyCompression(method, round(w * h * 3 / size, 2) if size else 1.0)]
