"""Fuzzing every slide reader with mutated real files.

Sources: the real Aperio SVS region (OpenSlide, and the tifffile backend on the same bytes), a
tiled TIFF pyramid written here (tifffile backend, and OpenSlide's generic-tiff driver), the
pathology tiles as plain images (Pillow) and a DICOM WSI written by ``slides/dicom_writer.py``
(wsidicom).  Mutations: truncations, flipped bytes, absurd tag values (image/tile sizes, strip
counts, offsets past the end, codecs, sample counts), absurd MPP (NaN, 0, negative, 1e9).

Every case must either open and read with sane geometry, or fail with a one-line
:class:`SlideError`; never another exception, never a hang, never an allocation beyond what the
file can hold.  The cases run in a child process (a crash in a C decoder cannot take pytest
down, and its address space is limited so a runaway allocation fails loudly).  Truncated
files that still read must read exactly the original pixels (a missing tile is an error, not
background).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
from conftest import ROOT, SHARED, need  # noqa: E402

SVS = SHARED / "pathology" / "wsi_aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"
JPEG_TILE = SHARED / "pathology" / "lc25000_lung_subset" / "tiles" / "lung_aca" / "lungaca1.jpeg"
KATHER_TILE = SHARED / "pathology" / "kather2016_crc_texture_samples" / "tiles" / "01_TUMOR_1.jpg"

#: address-space head-room of the child above its size after imports (a 10^6 x 10^6 px read
#: would need terabytes; legitimate reads of these small files need a few hundred MB)
CHILD_AS_HEADROOM = 2 << 30
CASE_SECONDS = 8


# --------------------------------------------------------------------------- mutations


def _truncations(data: bytes, name: str) -> list[tuple[str, bytes]]:
    n = len(data)
    cuts = sorted({8, 200, n // 50, n // 10, n // 3, (2 * n) // 3, (9 * n) // 10, n - 1})
    return [(f"{name}-trunc{c}", data[:c]) for c in cuts if 0 < c < n]


def _flips(data: bytes, name: str, rng: np.random.Generator, count: int, head: int) -> list[tuple[str, bytes]]:
    """``count`` mutants, each with 1-8 flipped bytes; half of them in the first ``head`` bytes."""
    out = []
    for i in range(count):
        b = bytearray(data)
        lim = head if i % 2 == 0 else len(b)
        for _ in range(int(rng.integers(1, 9))):
            j = int(rng.integers(0, min(lim, len(b))))
            b[j] ^= int(rng.integers(1, 256))
        out.append((f"{name}-flip{i}", bytes(b)))
    return out


def _tiff_tag_edits(path: str, name: str, tags: dict[str, list], page_index: int = 0) -> list[tuple[str, bytes]]:
    """Overwrite a tag value of one page (the first element of an array; ``valueoffset`` is
    where the value lies, inline or not)."""
    import tifffile
    data = open(path, "rb").read()
    out = []
    with tifffile.TiffFile(path) as tif:
        bo = tif.byteorder
        page = tif.pages[page_index]
        ifd_tags = page.tags
        for tname, values in tags.items():
            tag = ifd_tags.get(tname)
            if tag is None:
                continue
            code = {3: "H", 4: "I", 5: "II", 16: "Q"}.get(int(tag.dtype))
            if code is None:
                continue
            off = tag.valueoffset
            for v in values:
                b = bytearray(data)
                vals = v if isinstance(v, tuple) else (v,)
                fmt = bo + code
                if code == "H":
                    vals = tuple(min(int(x), 0xFFFF) for x in vals)
                elif code in ("I", "II"):
                    vals = tuple(min(int(x), 0xFFFFFFFF) for x in vals)
                struct.pack_into(fmt, b, off, *vals)
                out.append((f"{name}-p{page_index}-{tname}={v}", bytes(b)))
    return out


TIFF_TAG_VALUES = {
    "ImageWidth": [0, 1, 10**6, 2**32 - 1],
    "ImageLength": [0, 10**6],
    "TileWidth": [0, 16, 2**16 - 16],
    "TileLength": [0, 2**16 - 16],
    "RowsPerStrip": [0, 10**6],
    "BitsPerSample": [0, 64],
    "SamplesPerPixel": [0, 255],
    "Compression": [99, 34712],
    "TileOffsets": [2**31, 0],
    "TileByteCounts": [2**31, 0],
    "StripOffsets": [2**31],
    "StripByteCounts": [2**31],
    "XResolution": [(0, 1), (1, 0), (2**32 - 1, 1)],
    "ResolutionUnit": [0, 3, 99],
}


def _svs_mpp_edits(data: bytes, name: str) -> list[tuple[str, bytes]]:
    """Aperio 'MPP = 0.4990' replaced by NaN, 0, negative, 1e9 (same length: structure intact)."""
    i = data.find(b"MPP = ")
    assert i > 0
    j = i + len(b"MPP = ")
    k = j
    while data[k:k + 1] not in (b"|", b"\x00", b"\r", b"\n"):
        k += 1
    width = k - j
    out = []
    for v in (b"nan", b"0", b"-0.5", b"1e9", b"inf", b"x"):
        out.append((f"{name}-MPP={v.decode()}", data[:j] + v.ljust(width) + data[k:]))
    return out


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_mutants(png: bytes, name: str) -> list[tuple[str, bytes]]:
    """IHDR with absurd sizes and a correct CRC (so the size itself is what the reader sees);
    pHYs with absurd densities."""
    assert png[12:16] == b"IHDR"
    ihdr = png[16:29]
    rest = png[33:]
    out = []
    for w, h in ((30000, 30000), (2**31 - 1, 1), (0, 10), (10**6, 10**6)):
        new = struct.pack(">II", w, h) + ihdr[8:]
        out.append((f"{name}-IHDR{w}x{h}", png[:8] + _png_chunk(b"IHDR", new) + rest))
    for ppm in (0, 1, 2**32 - 1, 11811):  # 11811 px/m = 300 dpi
        phys = _png_chunk(b"pHYs", struct.pack(">IIB", ppm, ppm, 1))
        out.append((f"{name}-pHYs{ppm}", png[:33] + phys + rest))
    return out


def _jpeg_sof_edits(data: bytes, name: str) -> list[tuple[str, bytes]]:
    i = 2
    while i < len(data) - 4:
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        seglen = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            out = []
            for h, w in ((30000, 30000), (65535, 65535), (0, 100), (1, 1)):
                b = bytearray(data)
                struct.pack_into(">HH", b, i + 5, h, w)
                out.append((f"{name}-SOF{w}x{h}", bytes(b)))
            return out
        i += 2 + seglen
    raise AssertionError("no SOF marker")


def _dicom_mutants(folder: str, name: str, rng) -> list[tuple[str, str, bytes]]:
    """(case name, file name inside the folder, new bytes) for the level-0 instance."""
    import pydicom
    files = sorted(os.listdir(folder))
    sizes = {}
    for f in files:
        ds = pydicom.dcmread(os.path.join(folder, f), stop_before_pixels=True)
        if "VOLUME" in list(ds.ImageType):
            sizes[f] = int(ds.TotalPixelMatrixColumns) * int(ds.TotalPixelMatrixRows)
    base = max(sizes, key=sizes.get)
    path = os.path.join(folder, base)
    data = open(path, "rb").read()
    out = [(n, base, b) for n, b in _truncations(data, name)]
    out += [(n, base, b) for n, b in _flips(data, name, rng, 10, 4096)]
    edits = {
        "Rows": [0, 1, 65535], "Columns": [0, 65535],
        "TotalPixelMatrixColumns": [0, 10**9, 2**32 - 1], "TotalPixelMatrixRows": [0, 10**9],
        "NumberOfFrames": ["0", "100000", "-1"],
        "PixelSpacing": [["nan", "nan"], ["0", "0"], ["-0.0005", "-0.0005"], ["1e9", "1e9"]],
        "SamplesPerPixel": [0, 4], "BitsAllocated": [0, 64],
    }
    import warnings
    for kw, values in edits.items():
        for v in values:
            ds = pydicom.dcmread(path)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom warns that 'nan' is not a valid DS
                if kw == "PixelSpacing":
                    ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = v
                else:
                    setattr(ds, kw, v)
            import io
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            out.append((f"{name}-{kw}={v}", base, buf.getvalue()))
    return out


# --------------------------------------------------------------------------- the child


def _check_slide(s, ref, light=False) -> list[str]:
    """Problems of an opened slide; SlideError from reads is fine (collected by the caller)."""
    import math

    from imaging_assist.slides.base import PLAUSIBLE_MPP_RANGE, RESOLUTION_TAG_SOURCES, SlideError

    bad = []
    if not s.level_dimensions or any(not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0)
                                     for w, h in s.level_dimensions):
        bad.append(f"bad level dimensions {s.level_dimensions}")
    if any(not (math.isfinite(d) and d >= 1 - 1e-6) for d in s.level_downsamples):
        bad.append(f"bad downsamples {s.level_downsamples}")
    if s.mpp is not None:
        if not all(math.isfinite(v) and PLAUSIBLE_MPP_RANGE[0] <= v <= PLAUSIBLE_MPP_RANGE[1] for v in s.mpp):
            bad.append(f"implausible MPP {s.mpp}")
        if s.mpp_source == "none":
            bad.append("MPP without a source")
        if s.mpp_source in RESOLUTION_TAG_SOURCES and not any("resolution tags" in w for w in s.warnings):
            bad.append("MPP from resolution tags without a warning")
    elif s.mpp_source != "none":
        bad.append(f"no MPP but source {s.mpp_source}")
    elif not any("no microns-per-pixel" in w for w in s.warnings):
        bad.append("no MPP and no warning about it")
    reads = [lambda: s.read_region((0, 0), 0, (64, 48)),
             lambda: s.read_region((s.dimensions[0] // 2, s.dimensions[1] // 2), s.level_count - 1, (40, 30)),
             lambda: s.get_thumbnail(64)]
    shapes = [(48, 64, 3), (30, 40, 3), None]
    if light:  # metadata mutants: one small read is enough
        reads, shapes = reads[:1], shapes[:1]
    else:
        for name in s.associated_image_names:
            reads.append(lambda name=name: s.associated_image(name))
            shapes.append(None)
    for fn, shape in zip(reads, shapes):
        try:
            a = fn()
        except SlideError as e:
            if "\n" in str(e):
                bad.append(f"multi-line SlideError {str(e)!r}")
            continue
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or (shape and a.shape != shape):
            bad.append(f"bad read {a.dtype} {a.shape}")
    # a region far larger than the file can hold is refused, not allocated
    try:
        s.read_region((0, 0), 0, (10**6, 10**6))
        bad.append("a 10^6 x 10^6 region was read")
    except SlideError:
        pass
    if ref is not None:
        try:
            w, h = s.dimensions
            got = s.read_region((0, 0), 0, (w, h))
            if got.shape != ref.shape or not np.array_equal(got, ref):
                # Not silent when a damaged instance was left out of a DICOM folder and the
                # slide says so (it then opens at the next level, with that level's spacing).
                said = any("left out" in w and "missing" in w for w in s.warnings)
                if not (said and got.shape != ref.shape):
                    bad.append("truncated file read without error but pixels differ from the original")
        except SlideError:
            pass
    return bad


def _child(cases_file: str) -> None:
    import resource
    import signal

    from imaging_assist.slides import open_slide
    from imaging_assist.slides.base import SlideError

    def vm_size() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
        return 0

    cases = json.load(open(cases_file))
    refs: dict[str, np.ndarray] = {}
    for key, (path, opener) in cases["refs"].items():
        with _opener(opener)(path) as s:
            refs[key] = s.read_region((0, 0), 0, s.dimensions)
    # warm up every backend once (first imports allocate thread pools, codecs, ...)
    for path, opener in cases["refs"].values():
        with _opener(opener)(path) as s:
            s.get_thumbnail(32)
    limit = vm_size() + CHILD_AS_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def on_alarm(*_):
        raise TimeoutError("case took too long")

    signal.signal(signal.SIGALRM, on_alarm)
    for case in cases["cases"]:
        print(json.dumps({"start": case["name"]}), flush=True)
        t0 = time.perf_counter()
        result = {"name": case["name"]}
        signal.alarm(CASE_SECONDS)
        try:
            try:
                s = _opener(case["opener"])(case["path"])
            except SlideError as e:
                msg = str(e)
                result["outcome"] = "error" if "\n" not in msg and msg else f"bad-message {msg!r}"
            else:
                with s:
                    problems = _check_slide(s, refs.get(case.get("ref")), case.get("light", False))
                result["outcome"] = "ok" if not problems else "bad: " + "; ".join(problems)
        except TimeoutError:
            result["outcome"] = "hang"
        except BaseException as e:  # noqa: BLE001 - exactly what the test looks for
            result["outcome"] = f"other-exception {type(e).__name__}: {str(e)[:200]}"
        finally:
            signal.alarm(0)
        result["seconds"] = round(time.perf_counter() - t0, 3)
        print(json.dumps(result), flush=True)


def _opener(name: str):
    if name == "open_slide":
        from imaging_assist.slides import open_slide
        return open_slide
    if name == "tifffile":
        from imaging_assist.slides.tiff_backend import TiffSlide
        return TiffSlide
    if name == "openslide":
        from imaging_assist.slides.openslide_backend import OpenSlideSlide
        return OpenSlideSlide
    raise ValueError(name)


# --------------------------------------------------------------------------- the test


def _build_cases(tmp) -> dict:
    from PIL import Image

    from imaging_assist.slides.dicom_writer import save_dicom_wsi
    from imaging_assist.slides.synth import make_levels, pattern_rgb, write_pyramid_tiff

    rng = np.random.default_rng(12)
    cases, refs = [], {}
    mdir = tmp / "m"
    mdir.mkdir()

    def add(name, data, opener, ref=None, suffix=".tif", light=False):
        p = mdir / (f"{len(cases):04d}" + suffix)
        p.write_bytes(data)
        cases.append({"name": name, "path": str(p), "opener": opener, "ref": ref, "light": light})

    # 1. the real Aperio region: through OpenSlide (open_slide) and through tifffile
    svs = need(SVS).read_bytes()
    refs["svs-openslide"] = (str(SVS), "open_slide")
    refs["svs-tifffile"] = (str(SVS), "tifffile")
    for opener, ref in (("open_slide", "svs-openslide"), ("tifffile", "svs-tifffile")):
        for n, b in _truncations(svs, f"svs-{opener}"):
            add(n, b, opener, ref, ".svs")
        for n, b in _flips(svs, f"svs-{opener}", rng, 6, 1280 * 1024):  # pixel data sits before the IFDs
            add(n, b, opener, None, ".svs")
        for n, b in _tiff_tag_edits(str(SVS), f"svs-{opener}", TIFF_TAG_VALUES):
            add(n, b, opener, None, ".svs")
        for n, b in _svs_mpp_edits(svs, f"svs-{opener}"):
            add(n, b, opener, None, ".svs", light=True)

    # 2. a tiled TIFF pyramid (zlib) and a striped one: tifffile backend, and OpenSlide generic-tiff
    levels = make_levels(pattern_rgb(300, 420), min_size=100)
    tiled = write_pyramid_tiff(tmp / "tiled.tif", levels, layout="chain", tile=64, mpp=0.5)
    import tifffile
    striped = str(tmp / "striped.tif")
    tifffile.imwrite(striped, levels[0], photometric="rgb", rowsperstrip=40, compression=None,
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER", metadata=None)
    refs["tiled"] = (tiled, "open_slide")
    refs["tiled-openslide"] = (tiled, "openslide")
    refs["striped"] = (striped, "open_slide")
    for src, key, opener in ((tiled, "tiled", "open_slide"), (striped, "striped", "open_slide"),
                             (tiled, "tiled-openslide", "openslide")):
        data = open(src, "rb").read()
        for n, b in _truncations(data, key):
            add(n, b, opener, key)
        for n, b in _flips(data, key, rng, 8, 4096):
            add(n, b, opener)
        for n, b in _tiff_tag_edits(src, key, TIFF_TAG_VALUES):
            add(n, b, opener)
        if key != "striped":  # absurd sizes of the smallest pyramid level
            last = len(levels) - 1
            for n, b in _tiff_tag_edits(src, key, {k: TIFF_TAG_VALUES[k] for k in
                                                   ("ImageWidth", "ImageLength", "TileWidth", "TileByteCounts")},
                                        page_index=last):
                add(n, b, opener)

    # 3. pathology tiles as plain images (JPEG; a PNG made from one)
    for path, key in ((need(JPEG_TILE), "lc25000"), (need(KATHER_TILE), "kather")):
        data = path.read_bytes()
        for n, b in _truncations(data, key):
            add(n, b, "open_slide", None, ".jpg")
        for n, b in _flips(data, key, rng, 4, 600):
            add(n, b, "open_slide", None, ".jpg")
        for n, b in _jpeg_sof_edits(data, key):
            add(n, b, "open_slide", None, ".jpg")
    png_path = tmp / "tile.png"
    Image.open(need(KATHER_TILE)).save(png_path)
    png = png_path.read_bytes()
    for n, b in _png_mutants(png, "png") + _truncations(png, "png"):
        add(n, b, "open_slide", None, ".png")

    # 4. a DICOM WSI written by dicom_writer: each mutant is a copy of the folder
    dlevels = make_levels(pattern_rgb(300, 400), min_size=100)
    dsrc = tmp / "dicom"
    save_dicom_wsi(dsrc, [(a.shape[1], a.shape[0]) for a in dlevels],
                   lambda lv, x, y, t: dlevels[lv][y:y + t, x:x + t], (0.5, 0.5), tile_size=128)
    refs["dicom"] = (str(dsrc), "open_slide")
    for n, fname, b in _dicom_mutants(str(dsrc), "dicom", rng):
        d = mdir / f"{len(cases):04d}_dicom"
        shutil.copytree(dsrc, d)
        (d / fname).write_bytes(b)
        cases.append({"name": n, "path": str(d), "opener": "open_slide",
                      "ref": "dicom" if "trunc" in n else None})
    return {"cases": cases, "refs": refs}


def test_fuzz_every_reader_with_mutated_real_files(tmp_path):
    t0 = time.perf_counter()
    spec = _build_cases(tmp_path)
    cases_file = tmp_path / "cases.json"
    cases_file.write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), HERE]), OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", str(cases_file)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=str(ROOT))
    results, started = {}, []
    for line in proc.stdout.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if "start" in r:
            started.append(r["start"])
        else:
            results[r["name"]] = r
    crashed = [n for n in started if n not in results]
    assert proc.returncode == 0 and not crashed, (
        f"child died (rc {proc.returncode}) in case {crashed}: {proc.stderr[-2000:]}")
    assert len(results) == len(spec["cases"])
    # nothing beside the one-line errors: no log records or Python warnings printed by the
    # libraries underneath (tifffile logs, pydicom warnings about damaged values)
    assert not proc.stderr.strip(), proc.stderr[-3000:]
    bad = {n: r["outcome"] for n, r in results.items() if r["outcome"] not in ("ok", "error")}
    slow = {n: r["seconds"] for n, r in results.items() if r["seconds"] > 3}
    assert not bad, "\n".join(f"{n}: {o}" for n, o in sorted(bad.items()))
    assert not slow, slow
    outcomes = [r["outcome"] for r in results.values()]
    # the mutations matter: many are refused, many still read
    assert outcomes.count("error") > 40 and outcomes.count("ok") > 40, (outcomes.count("error"), outcomes.count("ok"))
    print(f"{len(results)} cases, {outcomes.count('error')} refused, {time.perf_counter() - t0:.1f} s")


def _sparse_huge_tiff(path, side=10**6, rows_per_strip=16) -> str:
    """A ~1 MB TIFF that validly claims side x side RGB pixels: every strip is sparse (offset and
    byte count 0, i.e. never written), so the claim costs nothing on disk."""
    import tifffile
    tifffile.imwrite(path, shape=(side, side, 3), dtype=np.uint8, rowsperstrip=rows_per_strip,
                     photometric="rgb", metadata=None)   # a sparse (hole-filled) file on disk
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        first = int(min(page.dataoffsets))
        spans = [(t.valueoffset, t.count * {4: 4, 16: 8}[int(t.dtype)])
                 for t in (page.tags["StripOffsets"], page.tags["StripByteCounts"])]
    with open(path, "r+b") as f:
        f.truncate(first)
        for off, n in spans:
            f.seek(off)
            f.write(b"\0" * n)
    return str(path)


def test_huge_declared_tiff_reads_are_bounded(tmp_path):
    """A TIFF claiming 10^6 x 10^6 px: small reads are cheap (no whole segment is materialised
    for never-written strips), a 10^6 x 10^6 read and an overview are refused with one line."""
    import tracemalloc

    from imaging_assist.slides import SlideError, open_slide
    path = _sparse_huge_tiff(tmp_path / "huge.tif")
    assert os.path.getsize(path) < 2_000_000
    t0 = time.perf_counter()
    tracemalloc.start()
    try:
        with open_slide(path) as s:
            assert s.dimensions == (10**6, 10**6)
            a = s.read_region((500_000, 500_000), 0, (256, 256))
            assert a.shape == (256, 256, 3) and (a == 255).all()
            _, peak = tracemalloc.get_traced_memory()
            assert peak < 64 << 20, f"{peak / 2**20:.0f} MiB for a 256x256 read"
            with pytest.raises(SlideError, match="too large to read at once"):
                s.read_region((0, 0), 0, (10**6, 10**6))
            with pytest.raises(SlideError, match="no overview"):
                s.get_thumbnail(64)
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 5
    # one strip for the whole claimed image: refused when opened, nothing decoded
    one = _sparse_huge_tiff(tmp_path / "one_strip.tif", side=200_000, rows_per_strip=200_000)
    with pytest.raises(SlideError, match="one strip of 200000x200000 px would need") as e:
        open_slide(one)
    assert "\n" not in str(e.value)


def test_damaged_byte_count_is_refused_not_read(tmp_path):
    """A tile byte count of 2 GiB in a 100 kB TIFF: one-line error, no 2 GiB read buffer
    (tifffile backend), and no 2 GiB allocation inside OpenSlide (which aborted the process)."""
    import tracemalloc

    from imaging_assist.slides import SlideError, open_slide
    from imaging_assist.slides.openslide_backend import OpenSlideSlide
    from imaging_assist.slides.synth import make_levels, pattern_rgb, write_pyramid_tiff

    src = write_pyramid_tiff(tmp_path / "ok.tif", make_levels(pattern_rgb(300, 420), 100), tile=64)
    (name, data), = _tiff_tag_edits(src, "x", {"TileByteCounts": [2**31 - 1]})
    bad = tmp_path / "bad.tif"
    bad.write_bytes(data)
    tracemalloc.start()
    try:
        with pytest.raises(SlideError, match="beyond the end of the") as e:
            with open_slide(bad) as s:
                s.read_region((0, 0), 0, (64, 64))
        assert "\n" not in str(e.value)
        assert tracemalloc.get_traced_memory()[1] < 64 << 20
    finally:
        tracemalloc.stop()
    # OpenSlide is asked in a child: before the check, this aborted the whole process.
    code = ("import sys, resource; from imaging_assist.slides.openslide_backend import OpenSlideSlide as O\n"
            "from imaging_assist.slides import SlideError\n"
            "vm = int([l for l in open('/proc/self/status') if l.startswith('VmSize:')][0].split()[1]) * 1024\n"
            "resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), vm + (1 << 30)))\n"
            "try:\n  s = O(sys.argv[1]); s.read_region((0, 0), 0, (64, 64))\n"
            "except SlideError as e:\n  print('SlideError:', e)")
    r = subprocess.run([sys.executable, "-c", code, str(bad)], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0 and "SlideError:" in r.stdout and "beyond the end" in r.stdout, r.stderr[-500:]
    assert OpenSlideSlide  # imported above: the backend exists


def test_plain_image_size_claims_are_checked_against_the_file(tmp_path):
    """A PNG header claiming 10,000 x 10,000 px in a 40 kB file is refused before decoding (below
    Pillow's bomb limit it would allocate 300 MB first); genuine highly compressible images
    (uniform 1-bit / palette / grey / RGB) still open."""
    from PIL import Image

    from imaging_assist.slides import SlideError, open_slide
    png = tmp_path / "tile.png"
    Image.open(need(KATHER_TILE)).save(png)
    data = png.read_bytes()
    ihdr = struct.pack(">II", 10_000, 10_000) + data[24:29]
    bad = tmp_path / "claims.png"
    bad.write_bytes(data[:8] + _png_chunk(b"IHDR", ihdr) + data[33:])
    t0 = time.perf_counter()
    with pytest.raises(SlideError, match="more than a .*-byte PNG file can hold") as e:
        open_slide(bad)
    assert "\n" not in str(e.value) and time.perf_counter() - t0 < 1
    for mode, value in (("1", 1), ("P", 0), ("L", 255), ("RGB", (255, 255, 255))):
        p = tmp_path / f"uniform_{mode}.png"
        Image.new(mode, (3000, 3000), value).save(p)
        with open_slide(p) as s:
            assert s.dimensions == (3000, 3000)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--child":
    _child(sys.argv[2])
