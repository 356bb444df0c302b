"""Polish: the banner's symbol is a drawn icon (no glyph that needs an emoji font)."""

import os

import numpy as np

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _rgb(pixmap) -> np.ndarray:
    from PySide6.QtGui import QImage
    img = pixmap.toImage().convertToFormat(QImage.Format_RGBA8888)
    a = np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine() // 4, 4)
    return a[:, :img.width()]


def test_banner_symbol_is_an_icon_not_a_glyph(qtbot):
    from imaging_assist_ui.main_window.banner import WarningsBanner
    b = WarningsBanner()
    qtbot.addWidget(b)
    b.show()
    b.show_message("This series cannot be shown: bad pixels", error=True)
    assert b.text() == "This series cannot be shown: bad pixels"  # no glyph in the text
    px = _rgb(b.icon.pixmap())
    opaque = px[px[..., 3] > 200]
    assert len(opaque) > 40, "no icon drawn"
    assert (opaque[:, 0].astype(int) - opaque[:, 2] > 60).mean() > 0.3  # mostly red: an error
    err = px.copy()
    b.show_message("no pixel spacing", error=False)
    warn = _rgb(b.icon.pixmap())
    assert not np.array_equal(err, warn)  # a different (warning) icon
    assert b.label.objectName() == "Banner" and b.icon.isVisible()
    b.clear()
    assert b.text() == "" and not b.icon.isVisible()


def test_ai_panel_does_not_repeat_the_banner_warning(qtbot):
    """A series warning (shown in the banner) that comes back in a model result is said once:
    the AI panel points to the banner instead of repeating it."""
    from types import SimpleNamespace

    from PySide6.QtWidgets import QLabel
    from imaging_assist_ui.ai.model_panel import ModelPanel
    spacing = "no pixel spacing in the file (no PixelSpacing or ImagerPixelSpacing): distances are in pixels"
    lab = QLabel()
    qtbot.addWidget(lab)
    fake = SimpleNamespace(doc=SimpleNamespace(volume=SimpleNamespace(warnings=[spacing])), warnings=lab)
    ModelPanel._show_warnings(fake, [spacing, "outside what this model was trained on"])
    text = lab.text()
    assert "no pixel spacing" not in text
    assert "outside what this model was trained on" in text
    assert "1 warning about the series itself: see the banner above the image" in text
    ModelPanel._show_warnings(fake, [spacing])
    assert "no pixel spacing" not in lab.text() and "banner above the image" in lab.text()
