"""Garbage files and engine errors on the thumbnail path get a reason the user sees: the
browser shows a "cannot display" tile whose tooltip is the one-line reason, the problems
list gets a line, and opening the series says it in the banner.  Built from real files."""

import os
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from _qt import open_window, wait_until as _wait  # noqa: E402
from conftest import DICOM, need  # noqa: E402

pytestmark = pytest.mark.gui

CR = DICOM / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm"
PALETTE = DICOM / "palette_color_testpattern" / "TestPattern_Palette.dcm"
LUT_KWS = [f"{c}PaletteColorLookupTable{p}" for c in ("Red", "Green", "Blue") for p in ("Descriptor", "Data")] + \
          [f"Segmented{c}PaletteColorLookupTableData" for c in ("Red", "Green", "Blue")] + ["PaletteColorLookupTableUID"]


def _save(ds, path, desc):
    ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SeriesDescription = generate_uid(), generate_uid(), desc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, implicit_vr=True, little_endian=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    good = pydicom.dcmread(need(CR), force=True)
    _save(good, root / "good.dcm", "good")
    pal = pydicom.dcmread(need(PALETTE))
    for kw in LUT_KWS:
        if kw in pal:
            delattr(pal, kw)
    pal.SeriesInstanceUID, pal.SOPInstanceUID, pal.SeriesDescription = generate_uid(), generate_uid(), "palette no LUT"
    pal.save_as(root / "palette_nolut.dcm")
    nan = pydicom.dcmread(need(CR), force=True)
    nan.RescaleSlope, nan.RescaleIntercept = "1", "NaN"
    _save(nan, root / "nan_intercept.dcm", "nan intercept")
    rows = pydicom.dcmread(need(CR), force=True)
    rows.Rows = 400  # the pixel data holds 440 rows
    _save(rows, root / "rows_mismatch.dcm", "rows mismatch")
    return root


@pytest.fixture(scope="module")
def win(qapp, tmp_path_factory, folder):
    w = open_window(tmp_path_factory, str(folder))
    assert _wait(lambda: w._thumb_job is None, 30)
    yield w
    w.close()


def _key(win, desc):
    (s,) = [s for s in win.index.image_series() if s.description == desc] or [None]
    return s.key if s is not None else None


def test_every_bad_file_has_a_visible_reason(win):
    problems = win.browser.problems.toPlainText()
    # files the header walk refuses are listed with their reason
    assert "nan_intercept.dcm" in problems and "RescaleIntercept" in problems
    # the reason is the engine's one line, naming what is wrong
    for desc, fname, words in (("palette no LUT", "palette_nolut.dcm", ("palette",)),
                               ("rows mismatch", "rows_mismatch.dcm", ("rows",))):
        key = _key(win, desc)
        if key is None:  # refused while scanning: then the problems list names it
            assert fname in problems
            continue
        it = win.browser._items[key]
        tip = it.toolTip(0)
        assert "cannot display" in tip.lower(), tip
        reason = win.browser.unviewable[key]
        assert reason and "\n" not in reason and all(w in reason.lower() for w in words), reason
        assert reason in tip
        # the tile is the "cannot display" tile, not the modality placeholder
        assert win.browser.tile_kind(key) == "cannot display"
        assert fname in problems and reason in problems
    # the good file has a real thumbnail
    assert win.browser.tile_kind(_key(win, "good")) == "thumbnail"


def test_opening_a_bad_series_says_why(win):
    for desc in ("palette no LUT", "rows mismatch"):
        key = _key(win, desc)
        if key is None:
            continue
        win.browser.seriesChosen.emit(key)
        assert _wait(lambda: win.load_state in ("error", "done") and win.current_key == key)
        assert win.load_state == "error"
        text = win.banner_text()
        assert "cannot be shown" in text and win.browser.unviewable[key] in text, text
        assert "\n" not in text
        # the error sign is a glyph the banner's font has (no empty box on machines without emoji)
        from PySide6.QtGui import QFontMetrics
        assert QFontMetrics(win.banner.font()).inFontUcs4(ord(text[0])), hex(ord(text[0]))
    # a good series still opens afterwards
    win.browser.seriesChosen.emit(_key(win, "good"))
    assert _wait(lambda: win.load_state == "done" and win.current_key == _key(win, "good"))
    assert np.isfinite(win.doc.volume.array).all()


def test_thumbnail_path_fuzz_gives_a_thumbnail_or_a_one_line_reason(tmp_path):
    """Mutated real files (flipped bytes, truncations, absurd Rows/Columns/spacing, NaN): the
    browser's thumbnail path either makes a finite thumbnail of the right size or gives a
    one-line reason; nothing escapes as a traceback and nothing hangs."""
    from imaging_assist.dicom import scan
    from imaging_assist_ui.radiology.loading import thumbnail_array
    from imaging_assist_ui.shared.text import reason_of

    rng = np.random.default_rng(12)
    raw = need(CR).read_bytes()
    cases = []
    for n in range(12):  # flipped bytes anywhere (header and pixels)
        b = bytearray(raw)
        for pos in rng.integers(0, len(b), 8):
            b[pos] ^= 0xFF
        cases.append((f"flip{n}", bytes(b)))
    for frac in (0.1, 0.5, 0.9, 0.999):  # truncations
        cases.append((f"trunc{frac}", raw[: int(len(raw) * frac)]))
    for kw, v in (("Rows", 65535), ("Columns", 1), ("Rows", 0), ("PixelSpacing", ["nan", "nan"]),
                  ("PixelSpacing", ["0", "1e9"]), ("RescaleSlope", "inf"), ("BitsStored", 40)):
        ds = pydicom.dcmread(need(CR), force=True)
        setattr(ds, kw, v)
        p = tmp_path / "tmp.dcm"
        _save(ds, p, kw)
        cases.append((f"{kw}{len(cases)}", p.read_bytes()))
    shown = refused = 0
    for name, data in cases:
        d = tmp_path / name
        d.mkdir()
        (d / "a.dcm").write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idx = scan(str(d))
            for pr in idx.problems:
                assert pr.reason and "\n" not in pr.reason, (name, pr.reason)
            for s in idx.image_series():
                try:
                    img, aspect = thumbnail_array(s)
                except Exception as e:  # noqa: BLE001 - what the browser shows
                    reason = reason_of(e)
                    assert reason and "\n" not in reason and len(reason) <= 400, (name, reason)
                    refused += 1
                    continue
                assert img.dtype == np.uint8 and img.size > 0 and all(np.isfinite(aspect)) and min(aspect) > 0, name
                shown += 1
            # every mutated file is accounted for: a problem line, a thumbnail or a reason
            assert idx.problems or idx.image_series(), name
    assert shown > 0, (shown, refused)


def test_thumbnail_of_the_shown_series_failing_is_said_not_swallowed(qapp, monkeypatch):
    from types import SimpleNamespace

    import imaging_assist_ui.main_window.thumbnails as T

    said = []
    browser = SimpleNamespace(set_thumbnail=lambda *a: None)
    th = T.Thumbnails(browser, say=lambda text: said.append(text))

    def boom(*a, **k):
        raise ValueError("window width is not finite")
    monkeypatch.setattr(T.display, "render_slice", boom)
    vol = SimpleNamespace(n_slices=1, loaded=None, spacing=(1.0, 1.0, 1.0))
    th.from_volume("k", vol, None)
    assert said and "window width is not finite" in said[0] and "\n" not in said[0]
    assert "k" not in th.shown


def test_a_damaged_overlay_file_is_one_line_in_a_box(win, tmp_path, monkeypatch):
    """Overlays ▸ Load overlay from file with a damaged NIfTI / .npy: the loader's one line in a
    message box (it names the file once), no layer added."""
    import imaging_assist_ui.main_window.overlays as ov
    win.browser.seriesChosen.emit(_key(win, "good"))
    assert _wait(lambda: win.load_state == "done" and win.current_key == _key(win, "good"))
    (tmp_path / "junk.nii").write_bytes(b"junk" * 100)
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': '|u1', 'fortran_order': False, 'shape': (((, }")
    shown, n_layers = [], len(win.doc.layers)
    monkeypatch.setattr(ov.QMessageBox, "warning", staticmethod(lambda _w, title, text: shown.append((title, text))))
    for name in ("junk.nii", "junk.npy"):
        monkeypatch.setattr(ov.QFileDialog, "getOpenFileName",
                            staticmethod(lambda *a, n=name, **k: (str(tmp_path / n), "")))
        win.load_overlay_dialog()
    assert [t for t, _ in shown] == ["Overlay", "Overlay"], shown
    assert shown[0][1].startswith("Not loaded: junk.nii: not a readable NIfTI file (")
    assert shown[1][1].startswith("Not loaded: junk.npy: not a readable .npy file ("), shown[1]
    assert all("\n" not in text for _, text in shown)
    assert len(win.doc.layers) == n_layers
