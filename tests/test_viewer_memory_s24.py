"""Memory of the viewer (session 24): a series opened and closed leaves nothing behind.

Every LoadJob used to stay a child of the window with its loader and so its whole volume (each
series ever opened stayed in memory until the window closed); close_study kept the cache (up to
1.5 GiB); the per-series store pinned every viewed volume beyond the cache limit; a thumbnail
arriving after close_study wrote into a deleted tree row (a RuntimeError traceback).
Offscreen, on small series."""

import gc
import os
import sys
import threading

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QCoreApplication, QEvent  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from _qt import open_window, pump_until, wait_until  # noqa: E402
from _synth import write_ct_series  # noqa: E402
from conftest import DICOM, SHARED, need  # noqa: E402

pytestmark = pytest.mark.gui

SMALL = DICOM / "ct_gantry_tilt_uneven_spacing_ge_subset"  # 8 real CT slices
SVS = SHARED / "pathology" / "wsi_aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"


def _settle():
    """Deferred deletes done and Python's cycles collected: what is left is really held."""
    for _ in range(3):
        QApplication.processEvents()
        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    gc.collect()


_BEFORE: list = []  # the volumes alive when the test started (other tests' in a full run): not counted


@pytest.fixture(autouse=True)
def _earlier_volumes():
    """Only the volumes a test leaves behind count: in the whole suite earlier tests (their
    windows, module fixtures) still hold volumes of their own."""
    _settle()
    _BEFORE[:] = _all_volumes()  # held here, so their ids are not reused meanwhile
    yield
    _BEFORE.clear()


def _all_volumes():
    from imaging_assist.volume import Volume
    return [o for o in gc.get_objects() if type(o) is Volume]  # isinstance wakes lazy modules


def _volumes():
    before = {id(o) for o in _BEFORE}
    return [o for o in _all_volumes() if id(o) not in before]


def _jobs(w):
    from imaging_assist_ui.radiology.loading import _ThreadJob
    return w.findChildren(_ThreadJob)


def _study(root, n_series=3, n=4, size=16):
    """One patient, one study, n_series small CT series (folders a, b, c...)."""
    uid = generate_uid()
    for i in range(n_series):
        write_ct_series(root / "abc"[i], [(0, 0, float(k)) for k in range(n)], rows=size, cols=size,
                        spacing=(1.0, 1.0), extra={"StudyInstanceUID": uid, "SeriesNumber": i + 1,
                                                   "SeriesDescription": f"series {i + 1}"})
    return root


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return _study(tmp_path_factory.mktemp("s") / "study")


@pytest.fixture(scope="module")
def win(qapp, tmp_path_factory, study):
    w = open_window(tmp_path_factory, str(study))
    yield w
    w.close()


def _open(w, path):
    w.open_path(str(path))
    assert wait_until(lambda: w.load_state == "done" and w.doc.volume is not None
                      and w.doc.volume.loaded.all()), w.last_error


def _show(w, key):
    w.browser.seriesChosen.emit(key)
    assert wait_until(lambda: w.load_state == "done" and w.current_key == key
                      and w.doc.volume is not None and w.doc.volume.loaded.all()), w.last_error


def test_opening_and_closing_a_series_again_and_again_keeps_no_volume(win):
    w = win
    for _ in range(5):
        _open(w, need(SMALL))
        assert wait_until(lambda: w.thumbs.job is None and w.loading._load_job is None)
        w.close_study()
        _settle()
    assert len(_volumes()) <= 2, "the volumes of the series closed are still in memory"
    from imaging_assist_ui.radiology.loading import LoadJob
    assert w.findChildren(LoadJob) == []  # each finished job is deleted (it held its volume)
    assert _jobs(w) == []  # scan / thumbnail jobs too


def test_close_study_empties_the_caches_and_the_browser(win, study):
    w = win
    _open(w, study)
    keys = [s.key for s in w.index.image_series()]
    for key in keys:
        _show(w, key)
    assert len(w.loading._cache) == 3 and w.loading._per_series
    w.close_study()
    _settle()
    assert not w.loading._cache and not w.loading._per_series
    assert w.browser._items == {} and w.browser.series_keys() == []
    assert w.doc.volume is None and len(_volumes()) <= 2


def test_per_series_state_does_not_pin_volumes_beyond_the_cache(win, study, monkeypatch):
    from imaging_assist_ui.main_window import series_loading
    monkeypatch.setattr(series_loading, "CACHE_BYTES", 1)  # the cache keeps only the last volume
    w = win
    _open(w, study)
    keys = [s.key for s in w.index.image_series()]
    for key in keys + keys:
        _show(w, key)
    _settle()
    assert len(w.loading._cache) == 1
    assert all(not any(hasattr(x, "array") for x in saved) for saved in w.loading._per_series.values())
    assert len(_volumes()) <= 2, "volumes of series viewed before are still held"


def test_measurements_come_back_with_a_cached_series_and_not_after_a_new_read(win, study, monkeypatch):
    from imaging_assist.measure import Measurement
    from imaging_assist_ui.main_window import series_loading
    w = win
    _open(w, study)
    a, b, c = [s.key for s in w.index.image_series()]
    _show(w, a)
    w.doc.measurements.append(Measurement("ruler", [(1.0, 1.0), (9.0, 9.0)], 0, 0))
    _show(w, b)
    assert w.doc.measurements == []
    _show(w, a)  # from the cache: the same volume, its ruler back
    assert [m.kind for m in w.doc.measurements] == ["ruler"]
    # read again after leaving the cache: it starts clean (as before), and nothing stays for it
    monkeypatch.setattr(series_loading, "CACHE_BYTES", 1)
    _show(w, c)  # read: the cache is trimmed to it
    assert (a, 0) not in w.loading._cache and (a, 0) not in w.loading._per_series
    _show(w, a)
    assert w.doc.measurements == []


def test_grid_viewports_keep_no_volume_after_the_study_closes(win, study):
    from imaging_assist_ui.radiology.loading import LoadJob
    w = win
    _open(w, study)
    w.set_layout("1x2")  # viewport 2 loads the next series on its own LoadJob (reading.load_into)
    try:
        cell = w.reading.grid.cells[1]
        assert wait_until(lambda: w.reading.loading_done() and cell.doc.volume is not None
                          and cell.doc.volume.loaded.all()), w.statusBar().currentMessage()
        assert cell.doc.series.key != w.current_key
        w.close_study()
        _settle()
        assert cell.doc.volume is None and not w.loading._cache
        assert w.findChildren(LoadJob) == [] and len(_volumes()) <= 2
    finally:
        w.set_layout("single")


def test_a_thumbnail_arriving_after_close_study_raises_nothing(win, study, monkeypatch):
    from imaging_assist_ui.radiology import loading
    gate, entered = threading.Event(), threading.Event()
    real = loading.thumbnail_array

    def held(series, *a, **k):
        entered.set()
        gate.wait(20)
        return real(series, *a, **k)
    monkeypatch.setattr(loading, "thumbnail_array", held)
    errors = []
    old_except, old_unraisable = sys.excepthook, sys.unraisablehook
    sys.excepthook = lambda t, e, tb: errors.append(e)
    sys.unraisablehook = lambda u: errors.append(u.exc_value)
    try:
        w = win
        _open(w, study)
        try:
            assert wait_until(lambda: entered.is_set(), 20)  # another series' tile is being made
            job = w.thumbs.job
            w.close_study()
            gate.set()
            job._thread.join(20)
            _settle()
            pump_until(lambda: False, 0.3)
        finally:
            gate.set()
    finally:
        sys.excepthook, sys.unraisablehook = old_except, old_unraisable
    assert errors == []


def test_slide_jobs_are_deleted_when_they_end(win):
    from imaging_assist_ui.slides.slide_page import _Job
    w = win
    for _ in range(3):
        w.open_path(str(need(SVS)))
        page = w.slide_page
        assert pump_until(lambda: w.load_state == "done" and page.slide is not None, 30), w.last_error
        assert pump_until(lambda: page._open_job is None, 30)  # label and macro read: the job is over
    page.close_slide()
    _settle()
    assert page.findChildren(_Job) == []  # each open's job is deleted when it ends
