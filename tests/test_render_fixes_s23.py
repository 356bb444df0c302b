"""Rendering fixes of the session 23 audit: a palette of 8-bit entries stored in 16-bit words,
control characters and bidi overrides in the corner text, label colours (no grey, none alike),
and the heat-map legend clear of the corner text in short wide views."""

import colorsys
import os
from types import SimpleNamespace as NS

import numpy as np

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pydicom  # noqa: E402
from pydicom.pixels import apply_color_lut  # noqa: E402

from imaging_assist.colormaps import LABEL_PALETTE, label_color, label_lut  # noqa: E402
from imaging_assist.safe_text import printable  # noqa: E402
from test_pixels_fixes_s21 import _base, _load, _save  # noqa: E402


# ----------------------------------------------------------------------------- defect 1
def test_palette_of_8_bit_entries_in_16_bit_words_is_not_black(tmp_path):
    """LUT Descriptor [256, 0, 8] with 512 bytes of LUT Data (PS3.3 C.7.6.3.1.5 Note): the
    entries 0..255 were divided by 257 (index 240 showed [1, 0, 0] for [240, 15, 120])."""
    ds = _base(4, 4, 8, pi="PALETTE COLOR")
    idx = (np.arange(16, dtype=np.uint8) * 16).reshape(4, 4)
    ds.PixelData = idx.tobytes()
    ramp = np.arange(256, dtype=np.uint16)
    for i, vals in enumerate((ramp, 255 - ramp, ramp // 2)):
        ds.add_new(0x00281101 + i, "US", [256, 0, 8])
        ds.add_new(0x00281201 + i, "OW", vals.astype("<u2").tobytes())
    p = _save(ds, tmp_path / "s")
    vol = _load(tmp_path / "s")
    ref = apply_color_lut(pydicom.dcmread(p).pixel_array, pydicom.dcmread(p))
    assert ref.dtype == np.uint16 and ref.max() == 255  # pydicom: the entries as stored
    assert vol.array.dtype == np.uint8
    assert np.array_equal(vol.array[0], ref.astype(np.uint8))
    assert vol.array[0][3, 3].tolist() == [240, 15, 120]


# ----------------------------------------------------------------------------- defect 2
def test_printable_escapes_every_bidi_control():
    for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C]:
        out = printable(f"ID{chr(c)}47")
        assert out == f"ID\\u{c:04x}47", hex(c)
    assert printable("Müller  山田 太郎 محمد") == "Müller  山田 太郎 محمد"  # letters stay


def _view(qtbot, size=(900, 600)):
    from imaging_assist.volume import Volume, WindowPreset
    from imaging_assist_ui.radiology.document import ViewerDocument
    from imaging_assist_ui.radiology.viewer import SliceView
    doc = ViewerDocument()
    vol = Volume(array=np.zeros((3, 256, 256), np.int16), spacing=(1, 1, 1), modality="CT", units="HU",
                 slice_positions=np.arange(3.0))
    doc.set_volume(vol)
    doc.window = WindowPreset("w", 40, 80)
    view = SliceView(doc)
    qtbot.addWidget(view)
    view.resize(*size)
    view.fit()
    return doc, view


def test_corner_text_shows_control_characters_escaped(qtbot):
    """A bidi override in PatientID showed "ID 1174" for "ID 4711"; an ESC sequence, CR and LF
    in the name and descriptions reached the painter as they were."""
    doc, view = _view(qtbot)
    doc.patient = NS(name="DOE^JOHN\x1b[8m", id="ID4711\u202e", sex="M\u2066", birth_date="19700102")
    doc.study = NS(date="20240305", description="CT HEAD\rRIGHT SIDE")
    doc.series = NS(number=3, description="AX\u200fBRAIN")
    view.vol.description = "AX\nBRAIN"
    t = view.annotation_text()
    lines = [s for k in ("tl", "tr", "bl", "br") for s in t[k]]
    assert all(s.isprintable() for s in lines), [s for s in lines if not s.isprintable()]
    text = "\n".join(lines)
    for esc in ("\\x1b[8m", "ID4711\\u202e", "M\\u2066", "CT HEAD\\rRIGHT SIDE", "AX\\nBRAIN"):
        assert esc in text, esc
    assert not view.grab().isNull()  # and it paints


# ----------------------------------------------------------------------------- defect 3
def test_label_palette_has_no_grey_and_labels_1_to_255_differ():
    for n, c in enumerate(LABEL_PALETTE, 1):
        s = colorsys.rgb_to_hsv(*(x / 255 for x in c))[1]
        assert s >= 0.25, f"label {n}: {c} reads as grey / white on a grey image"
    assert (128, 128, 128) not in LABEL_PALETTE
    cols = np.array([label_color(i) for i in range(1, 256)], float)
    d = np.sqrt(((cols[:, None] - cols[None]) ** 2).sum(-1))
    np.fill_diagonal(d, 1e9)
    assert d.min() >= 30, np.unravel_index(np.argmin(d), d.shape)  # 34 now; 1.4 before (22 vs 166)
    hsv = np.array([colorsys.rgb_to_hsv(*(x / 255)) for x in cols[20:]])
    assert hsv[:, 1].min() >= 0.5 and hsv[:, 2].min() >= 0.6  # the extra colours: saturated, bright
    assert np.array_equal(label_lut(400)[1:], np.array([label_color(i) for i in range(1, 400)], np.uint8))
    assert label_color(256) != label_color(255) and label_color(300) == label_color(300)


# ----------------------------------------------------------------------------- defect 4
def _corner_boxes(view):
    """The corner lines' backings, placed as SliceView._paint_annotations places them."""
    from PySide6.QtCore import QRectF, Qt
    from PySide6.QtGui import QFontMetricsF
    fm = QFontMetricsF(view._font)
    lh, m, W, H = fm.height(), 8.0, view.width(), view.height()
    t, maxw = view.annotation_text(), W / 2 - m - 24
    out = []
    for key, right, bottom in (("tl", False, False), ("tr", True, False), ("bl", False, True), ("br", True, True)):
        for i, s in enumerate(reversed(t[key]) if bottom else t[key]):
            s = fm.elidedText(s, Qt.ElideRight, maxw)
            x = W - m - fm.horizontalAdvance(s) if right else m
            y = H - m - fm.descent() - i * lh if bottom else m + fm.ascent() + i * lh
            out.append((s, QRectF(x - 2, y - fm.ascent() - 1, fm.horizontalAdvance(s) + 4, lh + 2)))
    return out


def test_heat_legend_stays_clear_of_the_corner_text(qtbot):
    """At 700 x 260 the legend's title was drawn over the study line (9 of 110 window sizes)."""
    from imaging_assist.layers import HeatmapLayer
    doc, view = _view(qtbot)
    doc.patient = NS(name="VERYLONGFAMILYNAME^Firstname", id="PAT-0012345678", sex="F", birth_date="19610203")
    doc.study = NS(date="20240305", description="CT THORAX WITH CONTRAST")
    doc.series = NS(number=4, description="Lung 1.0 B70f")
    hm = np.random.default_rng(0).random((3, 256, 256)).astype(np.float32)
    doc.layers.add(HeatmapLayer("Grad-CAM: pneumonia", hm, vmin=0, vmax=1, threshold=0.2, method="Grad-CAM"))
    shown = 0
    for w, h in ((700, 260), (600, 200), (700, 210), (800, 250), (900, 300), (1100, 230), (1000, 600)):
        view.resize(w, h)
        view.fit()
        view.grab()  # paints
        r = view.legend_rect
        if (w, h) in ((700, 260), (1000, 600)):
            assert r is not None, (w, h)
        if r is None:
            continue
        shown += 1
        assert _inside(view, r), (w, h, r)
        over = [s for s, b in _corner_boxes(view) if b.intersects(r)]
        assert not over, ((w, h), r, over)
    assert shown >= 3


def _inside(view, r) -> bool:
    return r.top() >= 0 and r.bottom() <= view.height()
