"""Fast slide reading (issue 20) gives the same tiles and probabilities as the old reading path.

The old path is kept here as the oracle (``_old_read_tiles``: one ``read_level`` per row run,
serial, then ``tiles_to_batch``).  The new path decodes each batch's stored tiles once in
parallel (tifffile backend), reads the row runs in parallel threads (tifffile and OpenSlide
backends), converts straight into reused channels-last float buffers and hands them to the
model through a bounded queue.  Tolerances: tiles bit-exact; probabilities 1e-6 (the model sees
the same float values; only the memory layout of its input differs).
"""

from __future__ import annotations

import dataclasses
import math
import threading

import numpy as np
import pytest

from conftest import SHARED, need
from imaging_assist.slides import SlideReadError, open_slide, plan_tiles, run_tiles
from imaging_assist.slides import tiling
from imaging_assist.slides.synth import make_levels, tissue_phantom, write_pyramid_tiff
from imaging_assist.slides.tiling import read_tiles, tiles_to_batch

CMU1 = SHARED / "pathology" / "wsi_aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"


def _old_read_tiles(slide, plan, idx=None) -> np.ndarray:
    """The reading path before issue 20, verbatim in substance: serial, one region per run."""
    from PIL import Image

    cells = plan.cells if idx is None else plan.cells[idx]
    order = np.lexsort((cells[:, 1], cells[:, 0]))
    t = plan.tile_px
    out = np.empty((len(cells), t, t, 3), np.uint8)
    sx0, sy0 = plan.stride0
    lsx, lsy = plan.level_scale
    fx, fy = plan.downsample[0] / lsx, plan.downsample[1] / lsy
    kx, ky = round(fx), round(fy)
    integer = abs(fx - kx) < 1e-6 and abs(fy - ky) < 1e-6 and kx >= 1 and ky >= 1
    for r, c0, n, first in tiling._runs(cells[order]):
        bx0 = (plan.origin[0] + c0 * sx0) / lsx
        by0 = (plan.origin[1] + r * sy0) / lsy
        bx1, by1 = bx0 + n * t * fx, by0 + t * fy
        if integer and abs(bx0 - round(bx0)) < 1e-6 and abs(by0 - round(by0)) < 1e-6:
            region = slide.read_level(plan.level, int(round(bx0)), int(round(by0)), n * t * kx, t * ky)
            strip = region if (kx, ky) == (1, 1) else np.asarray(Image.fromarray(region).reduce((kx, ky)))
        else:
            m = int(math.ceil(max(fx, fy))) + 1
            ix, iy = int(math.floor(bx0)) - m, int(math.floor(by0)) - m
            region = slide.read_level(plan.level, ix, iy, int(math.ceil(bx1)) + m - ix,
                                      int(math.ceil(by1)) + m - iy)
            strip = np.asarray(Image.fromarray(region).resize(
                (n * t, t), Image.Resampling.BILINEAR, box=(bx0 - ix, by0 - iy, bx1 - ix, by1 - iy)))
        out[order[first:first + n]] = strip.reshape(t, n, t, 3).transpose(1, 0, 2, 3)
    return out


@pytest.fixture(scope="module")
def jpeg_pyramid(tmp_path_factory):
    """A 2,400 x 1,800 JPEG pyramid (MPP 0.25, 256 px stored tiles) with tissue blobs."""
    img, _, _ = tissue_phantom(1800, 2400, seed=3)
    p = write_pyramid_tiff(tmp_path_factory.mktemp("speed") / "phantom.tif", make_levels(img, 128),
                           tile=256, compression="jpeg", mpp=0.25)
    return p


@pytest.fixture(scope="module")
def svs():
    return str(need(CMU1))


def _probe_model(x):
    """Deterministic, position-sensitive stand-in (per-channel means and a corner pixel)."""
    import torch

    x = torch.as_tensor(x)
    m = x.mean(dim=(2, 3))
    return torch.softmax(torch.cat([m * 7, x[:, :, 3, 5]], 1), 1)


# --------------------------------------------------------------------------- tiles bit-exact
@pytest.mark.parametrize("mpp", [0.5, 0.7, 0.25])   # integer 2x level, resampled 1.4x, level 0 as stored
def test_synthetic_pyramid_tiles_equal_the_old_path(jpeg_pyramid, mpp):
    with open_slide(jpeg_pyramid) as s:
        assert s.backend == "tifffile" and s.concurrent_reads
        plan = plan_tiles(s, 64, mpp, tissue_mask="auto")
        assert len(plan) > 20
        idx = np.arange(len(plan))
        old = _old_read_tiles(s, plan, idx)
        s.clear_cache()
        new = read_tiles(s, plan, idx)
        np.testing.assert_array_equal(new, old)
        # unsorted, repeated indices land in their own slots too
        pick = np.array([len(plan) - 1, 0, 5, 5, 2])
        got = read_tiles(s, plan, pick)
        np.testing.assert_array_equal(got, _old_read_tiles(s, plan, pick))
        # Resampled tiles read in other company (other row runs) differ by float rounding at
        # most (Pillow resamples a run as one strip, in both paths): at most one grey level.
        assert np.abs(got.astype(int) - old[pick]).max() <= (0 if mpp != 0.7 else 1)


@pytest.mark.parametrize("mpp", [0.5, 0.7])         # SVS at 0.499 µm/px: as stored (within 0.5%), 1.4x
def test_real_svs_tiles_equal_the_old_path(svs, mpp):
    with open_slide(svs) as s:
        assert s.backend == "openslide" and s.concurrent_reads
        plan = plan_tiles(s, 224, mpp, tissue_mask="auto")
        assert plan.level == 0 and len(plan) > 10
        old = _old_read_tiles(s, plan)
        new = read_tiles(s, plan)
        np.testing.assert_array_equal(new, old)


def test_parallel_and_serial_reads_are_identical(jpeg_pyramid, monkeypatch):
    with open_slide(jpeg_pyramid) as s:
        plan = plan_tiles(s, 64, 0.7, tissue_mask=None)
        par = read_tiles(s, plan)
        s.clear_cache()
        monkeypatch.setattr(s, "concurrent_reads", False)
        monkeypatch.setattr(s, "prefetch_level", lambda level, rects: None)
        np.testing.assert_array_equal(read_tiles(s, plan), par)


# --------------------------------------------------------------------------- probabilities
def test_batches_equal_the_old_float_conversion(jpeg_pyramid):
    with open_slide(jpeg_pyramid) as s:
        plan = plan_tiles(s, 96, 0.7, tissue_mask="auto")
        idx = np.arange(min(40, len(plan)))
        buf = np.full((64, 96, 96, 3), np.nan, np.float32)
        x = tiling.read_batch_into(s, plan, idx, buf)
        assert x.shape == (len(idx), 3, 96, 96) and x.dtype == np.float32
        np.testing.assert_array_equal(x, tiles_to_batch(_old_read_tiles(s, plan, idx)))


@pytest.mark.parametrize("prefetch", [0, 2])
def test_heat_maps_equal_the_old_path_synthetic(jpeg_pyramid, prefetch):
    with open_slide(jpeg_pyramid) as s:
        plan = plan_tiles(s, 64, 0.5, tissue_mask="auto")
        ref = _probe_model(tiles_to_batch(_old_read_tiles(s, plan))).numpy()
        s.clear_cache()
        res = run_tiles(s, _probe_model, plan=plan, batch_size=7, prefetch=prefetch, as_tensor=True)
        assert res.n_tiles == len(plan) > 7 * 4   # several trips round the buffer ring
        np.testing.assert_allclose(res.probs, ref, rtol=0, atol=1e-6)
        hm = res.heatmaps
        np.testing.assert_allclose(hm[:, plan.cells[:, 0], plan.cells[:, 1]].T, ref, atol=1e-6)


def test_shipped_model_heat_maps_equal_the_old_path_on_the_real_svs(svs):
    """path-lung-tissue at its card's scale on the real SVS: new pipeline vs old reading."""
    from imaging_assist.models.registry import Registry
    from imaging_assist.slides.analysis import TileModel, slide_spec

    model = Registry().load("path-lung-tissue")
    spec = slide_spec(model.card)
    fn = TileModel(model, "cpu")
    with open_slide(svs) as s:
        plan = plan_tiles(s, spec["tile_px"], spec["mpp"], tissue_mask="auto")
        plan = dataclasses.replace(plan, cells=plan.cells[:12], tissue_fraction=plan.tissue_fraction[:12])
        ref = fn(tiles_to_batch(_old_read_tiles(s, plan))).numpy()
        res = run_tiles(s, fn, plan=plan, batch_size=8, as_tensor=True, device="cpu")
    np.testing.assert_allclose(res.probs, ref, rtol=0, atol=1e-5)
    assert (res.probs.argmax(1) == ref.argmax(1)).all()


# --------------------------------------------------------------------------- plumbing
def test_each_stored_tile_is_decoded_once(jpeg_pyramid):
    """The per-batch prefetch decodes every stored tile a batch needs once, in one pass; the
    row runs copy from the cache (no tile decoded twice in a whole run)."""
    with open_slide(jpeg_pyramid) as s:
        plan = plan_tiles(s, 80, 0.5, tissue_mask=None)       # 80 px tiles over 256 px stored tiles
        L = s._levels[plan.level]
        seen: list[int] = []
        orig = L.decode
        lock = threading.Lock()

        def counting(data, k, **kw):
            with lock:
                seen.append(k)
            return orig(data, k, **kw)

        L.decode = counting
        try:
            s.clear_cache()
            run_tiles(s, _probe_model, plan=plan, batch_size=9, as_tensor=True)
        finally:
            del L.decode
        assert len(seen) == len(set(seen)) == L.nseg


def test_model_returning_a_view_of_its_input_keeps_its_results(jpeg_pyramid):
    """Batch buffers are reused; outputs are copied, so a model returning a view is safe."""
    with open_slide(jpeg_pyramid) as s:
        plan = plan_tiles(s, 64, 0.5, tissue_mask=None)
        view_model = lambda x: np.asarray(x)[:, :, 10, 10]   # noqa: E731  (a view into the batch)
        res = run_tiles(s, view_model, plan=plan, batch_size=5, prefetch=2)
        ref = tiles_to_batch(_old_read_tiles(s, plan))[:, :, 10, 10]
        np.testing.assert_array_equal(res.probs, ref)


def test_torch_module_gets_tensors_on_its_device(jpeg_pyramid):
    import torch

    seen = []

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))

        def forward(self, x):
            seen.append((x.device.type, x.dtype, tuple(x.shape[1:])))
            return torch.softmax(x.mean(dim=(2, 3)) * self.w, 1)

    with open_slide(jpeg_pyramid) as s:
        res = run_tiles(s, M(), 48, 0.5, batch_size=16, tissue_mask=None)
    assert res.n_tiles > 16 and set(seen) == {("cpu", torch.float32, (3, 48, 48))}


def test_damaged_tile_in_a_parallel_read_is_one_error(jpeg_pyramid, tmp_path):
    """A corrupt stored tile met by a worker thread stops the run with one SlideReadError."""
    import tifffile

    data = bytearray(open(jpeg_pyramid, "rb").read())
    with tifffile.TiffFile(jpeg_pyramid) as tif:
        page = tif.pages[1]                   # level 1 (2x), read at 0.5 µm/px
        off, cnt = page.dataoffsets[2], page.databytecounts[2]
    data[off + 20:off + cnt - 2] = b"\xff\xd9" * ((cnt - 22) // 2) + b"\x00" * ((cnt - 22) % 2)
    bad = tmp_path / "bad.tif"
    bad.write_bytes(bytes(data))
    with open_slide(str(bad)) as s:
        with pytest.raises(SlideReadError) as e:
            run_tiles(s, _probe_model, tile_px=64, mpp=0.5, tissue_mask=None, batch_size=8, as_tensor=True)
    assert "\n" not in str(e.value)


def test_cuda_path_gives_the_cpu_results_or_one_line_without_cuda(jpeg_pyramid):
    """On a CUDA machine: pinned buffers + side-stream copies give the CPU path's probabilities.
    Without CUDA: asking for it is one SlideError line (no traceback from pin_memory)."""
    import torch

    from imaging_assist.slides import SlideError

    with open_slide(jpeg_pyramid) as s:
        plan = plan_tiles(s, 64, 0.5, tissue_mask=None)
        cpu = run_tiles(s, _probe_model, plan=plan, batch_size=6, as_tensor=True, device="cpu")
        if torch.cuda.is_available():
            gpu = run_tiles(s, _probe_model, plan=plan, batch_size=6, as_tensor=True, device="cuda")
            np.testing.assert_allclose(gpu.probs, cpu.probs, atol=1e-5)
        else:
            with pytest.raises(SlideError, match="no CUDA device"):
                run_tiles(s, _probe_model, plan=plan, batch_size=6, as_tensor=True, device="cuda")


# --------------------------------------------------------------------------- uint8 until the model
def test_tiles_read_as_stored_go_straight_into_their_slots_edges_included(jpeg_pyramid):
    """Level 0 as stored, every grid tile (edge tiles overhang the slide): the direct copy from
    the decoded stored tiles (Slide.read_level_into) gives the old path's pixels."""
    with open_slide(jpeg_pyramid) as s:
        plan = plan_tiles(s, 112, 0.25, tissue_mask=None)
        assert plan.level == 0 and plan.downsample == (1.0, 1.0)
        w, h = s.dimensions
        assert w % 112 and h % 112                    # the last column and row overhang
        old = _old_read_tiles(s, plan)
        s.clear_cache()
        calls = []
        orig = s._read_level_into
        s._read_level_into = lambda *a: calls.append(a[:3]) or orig(*a)
        try:
            buf = np.zeros((len(plan), 112, 112, 3), np.uint8)
            np.testing.assert_array_equal(tiling.read_batch_u8_into(s, plan, np.arange(len(plan)), buf), old)
        finally:
            del s._read_level_into
        inside = int(((plan.rects0()[:, 0] + 112 <= w) & (plan.rects0()[:, 1] + 112 <= h)).sum())
        assert len(calls) == inside < len(plan)       # every inside tile took the direct path
        tile = buf[3]
        s.read_level_into(0, w - 50, h - 40, tile)    # overhang: background outside
        np.testing.assert_array_equal(tile, s.read_level(0, w - 50, h - 40, 112, 112))


class _Uint8Probe:
    """A model that takes uint8 tiles (run_tiles hands them over without a float pass)."""

    accepts_uint8 = True

    def __init__(self):
        self.dtypes = set()
        self.sizes = []

    def __call__(self, x):
        x = np.asarray(x)
        self.dtypes.add(x.dtype)
        self.sizes.append(len(x))
        return _probe_model(x.astype(np.float32) / np.float32(255)).numpy()


@pytest.mark.parametrize("mpp", [0.5, 0.7])
def test_uint8_model_gets_the_tiles_as_read_and_the_same_probabilities(jpeg_pyramid, mpp):
    with open_slide(jpeg_pyramid) as s:
        plan = plan_tiles(s, 64, mpp, tissue_mask="auto")
        tiles = _old_read_tiles(s, plan)
        ref = _probe_model(tiles_to_batch(tiles)).numpy()
        s.clear_cache()
        seen = []
        probe = _Uint8Probe()
        res = run_tiles(s, lambda x: seen.append(np.array(x)) or _probe_model(x).numpy(), plan=plan,
                        batch_size=7)
        assert all(b.dtype == np.float32 for b in seen)   # no attribute: float 0..1 as before
        s.clear_cache()
        res8 = run_tiles(s, probe, plan=plan, batch_size=7, model_batch=3)
        assert probe.dtypes == {np.dtype(np.uint8)} and max(probe.sizes) == 3
        np.testing.assert_allclose(res8.probs, res.probs, rtol=0, atol=1e-6)
        if mpp == 0.5:   # level 1 as stored: the old tiles exactly; at 0.7 a resampled tile may
            # differ by one grey level with other row-run company (see the first test)
            np.testing.assert_allclose(res.probs, ref, rtol=0, atol=1e-6)
            np.testing.assert_array_equal(np.concatenate(seen), tiles_to_batch(tiles))


def test_shipped_model_uint8_and_float_inputs_agree(svs):
    """TileModel's uint8 input (what run_tiles gives it) and the 0..1 float input agree."""
    import torch

    from imaging_assist.models.registry import Registry
    from imaging_assist.slides.analysis import TileModel, slide_spec

    model = Registry().load("path-lung-tissue")
    fn = TileModel(model, "cpu")
    assert fn.accepts_uint8
    with open_slide(svs) as s:
        plan = plan_tiles(s, slide_spec(model.card)["tile_px"], 0.7, tissue_mask="auto")
        tiles = read_tiles(s, plan, np.arange(6))
    p8 = fn(torch.from_numpy(tiles).permute(0, 3, 1, 2)).numpy()
    pf = fn(tiles_to_batch(tiles)).numpy()
    np.testing.assert_allclose(p8, pf, rtol=0, atol=1e-5)


def test_a_level_within_half_a_percent_is_read_as_stored_and_says_so(svs):
    """0.5 µm/px asked of the 0.499 µm/px scan: level 0 as stored (no resampling), the plan's
    µm/px and tile footprint are the scan's own, and the plan says so."""
    with open_slide(svs) as s:
        plan = plan_tiles(s, 224, 0.5, tissue_mask=None)
        assert plan.level == 0 and plan.downsample == (1.0, 1.0)
        assert plan.mpp == pytest.approx(s.mpp[0]) and plan.mpp != 0.5
        assert any("not resampled" in w for w in plan.warnings)
        runs = tiling._plan_runs(plan, plan.cells)
        assert runs and all(r.k == (1, 1) for r in runs)
        far = plan_tiles(s, 224, 0.51, tissue_mask=None)       # 2% away: resampled
        assert far.downsample[0] == pytest.approx(0.51 / s.mpp[0]) and not far.warnings


def test_map_grouped_keeps_order_and_raises_the_first_error_after_every_group():
    """slides.threads.map_grouped (tile decodes and copies): results in item order for any
    length and group count; an error in any group is raised only once all groups are done."""
    import threading
    import time as _time
    from concurrent.futures import ThreadPoolExecutor

    from imaging_assist.slides.threads import map_grouped

    pool = ThreadPoolExecutor(3)
    for n in range(0, 12):
        for g in (1, 2, 3, 4):
            assert map_grouped(lambda x: 2 * x, range(n), pool, g) == [2 * x for x in range(n)]
    done = []
    caller = threading.get_ident()
    threads = set()

    def job(x):
        threads.add(threading.get_ident())
        if x == 0:
            raise ValueError("bad tile 0")
        _time.sleep(0.01)
        done.append(x)
        return x

    with pytest.raises(ValueError, match="bad tile 0"):
        map_grouped(job, range(9), pool, 3)
    assert sorted(done) == [1, 2, 4, 5, 7, 8]  # the other groups ran to the end first
    assert caller in threads and len(threads) == 3  # the caller took a share
    pool.shutdown()


def test_batch_rings_serve_the_next_call_and_never_two_calls_at_once(jpeg_pyramid):
    """CPU batch buffers go back to a bounded pool after a call (no page faults on a fresh
    ring next time); a call running while another holds the ring gets a ring of its own;
    results are the same either way."""
    from imaging_assist.slides import tiling

    class Spy:
        accepts_uint8 = True

        def __init__(self, inner=None):
            self.bases, self.inner = set(), inner

        def __call__(self, x):
            a = np.asarray(x)
            self.bases.add(id(a.base if a.base is not None else a))
            if self.inner is not None:  # a second run inside this one: the ring is taken
                self.inner_res = run_tiles(s, self.inner, plan=plan, batch_size=5, prefetch=2)
                self.inner = None
            return a[:, :, 10, 10].astype(np.float32)

    with open_slide(jpeg_pyramid) as s:
        plan = plan_tiles(s, 64, 0.5, tissue_mask=None)
        tiling._RINGS.clear()
        a, b = Spy(), Spy()
        ra = run_tiles(s, a, plan=plan, batch_size=5, prefetch=2)
        rb = run_tiles(s, b, plan=plan, batch_size=5, prefetch=2)
        assert a.bases == b.bases  # the second call used the first call's buffers
        np.testing.assert_array_equal(ra.probs, rb.probs)
        inner = Spy()
        outer = Spy(inner)
        ro = run_tiles(s, outer, plan=plan, batch_size=5, prefetch=2)
        assert not (outer.bases & inner.bases)  # never the same buffers at once
        np.testing.assert_array_equal(ro.probs, ra.probs)
        np.testing.assert_array_equal(outer.inner_res.probs, ra.probs)
        idle = sum(x.nbytes for _, ring in tiling._RINGS for x in ring)
        assert 0 < idle <= tiling._RING_KEEP_BYTES
