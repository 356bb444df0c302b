"""Corner text of the slice view: projection orientation letters and age on a real CR film,
letters follow a flipped display, and text stays readable over white pixels."""

import os

import numpy as np

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from _qt import open_window, wait_until  # noqa: E402
from conftest import ROOT  # noqa: E402

CXR = ROOT / "imaging_assist" / "data" / "demo" / "chest_xray" / "cxr_03_pa.dcm"


def _lum(img) -> np.ndarray:
    """Relative luminance (WCAG) of a QImage grab, as floats 0..1."""
    from PySide6.QtGui import QImage
    q = img.convertToFormat(QImage.Format_RGB32)
    a = np.frombuffer(q.constBits(), np.uint8).reshape(q.height(), q.bytesPerLine() // 4, 4)[:, :q.width(), :3]
    c = a[..., ::-1].astype(float) / 255.0  # BGRA -> RGB
    c = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return c @ np.array([0.2126, 0.7152, 0.0722])


def test_projection_letters_age_and_flip(tmp_path_factory):
    from imaging_assist.layers import Plane
    w = open_window(tmp_path_factory, str(CXR))
    view = w.view_area.single
    # the header is read off the GUI thread, then the view paints the letters
    assert wait_until(lambda: view.repaint() or view._orientation_labels, 20)
    # PatientOrientation L\F of a PA film: patient left on the right, feet down
    assert view._orientation_labels == {"right": "L", "left": "R", "bottom": "F", "top": "H"}
    tl = view.annotation_text()["tl"]
    assert any("Age 47 y" in s for s in tl), tl
    assert not any("orientation" in s for s in view.annotation_text()["bl"])
    # the letter is painted in the letter colour near the middle of the right edge
    lum = _lum(view.grab().toImage())
    h, wd = lum.shape
    img = view.grab().toImage()
    strip = [img.pixelColor(x, y) for x in range(wd - 30, wd) for y in range(h // 2 - 20, h // 2 + 10)]
    assert any(c.red() > 200 and 150 < c.green() < 220 and c.blue() < 140 for c in strip)
    view.set_plane(Plane(flip_h=True))
    view.repaint()
    assert view._orientation_labels["right"] == "R" and view._orientation_labels["left"] == "L"
    w.close()


def test_corner_text_is_readable_over_white_pixels(qtbot):
    from PySide6.QtGui import QFontMetricsF
    from imaging_assist.volume import Volume, WindowPreset
    from imaging_assist_ui.radiology.document import ViewerDocument
    from imaging_assist_ui.radiology.viewer import SliceView
    doc = ViewerDocument()
    vol = Volume(array=np.full((1, 256, 256), 255, np.uint8), spacing=(1, 1, 1), modality="CR",
                 has_geometry=False, description="white film")
    view = SliceView(doc)
    qtbot.addWidget(view)
    view.resize(800, 800)
    doc.set_volume(vol)
    doc.window = WindowPreset("test", 100.0, 10.0)  # 255 -> white
    view.fit()
    view.show()
    view.repaint()
    img = view.grab().toImage()
    lum = _lum(img)
    assert np.median(lum[300:500, 300:500]) > 0.95  # the image really is white under the text
    tr = view.annotation_text()["tr"]
    assert tr, "no corner text"
    # no letters, and the corner says why (never a guess)
    assert view._orientation_labels is None
    assert "No orientation letters: plain image, no DICOM header" in view.annotation_text()["bl"]
    fm = QFontMetricsF(view._font)
    # the first top-right line: its box, from the same metrics the view paints with
    s = tr[0]
    x1, y0 = int(view.width() - 8), int(8)
    x0, y1 = int(x1 - fm.horizontalAdvance(s)), int(y0 + fm.height())
    box = lum[y0:y1, x0:x1]
    text, ground = np.percentile(box, 99), np.median(box)
    ratio = (text + 0.05) / (ground + 0.05)
    assert ratio >= 4.5, f"text {text:.2f} over {ground:.2f}: contrast {ratio:.1f}:1"


def test_image_number_names_the_instance_number_where_it_differs(tmp_path_factory):
    """Images are stacked by position; a series numbered the other way round (feet first) shows
    each image's own InstanceNumber beside its place in the stack, as the PACS and reports cite it."""
    import pydicom

    from conftest import CT_PHANTOM, need

    src = sorted(need(CT_PHANTOM).glob("*"))[:6]
    d = tmp_path_factory.mktemp("reversed")
    z = {}
    for f in src:
        ds = pydicom.dcmread(str(f))
        z[f.name] = float(ds.ImagePositionPatient[2])
    order = sorted(z, key=z.get)  # the stack's order (lowest z first)
    for k, name in enumerate(order):
        ds = pydicom.dcmread(str(next(f for f in src if f.name == name)))
        ds.InstanceNumber = 100 - k
        ds.save_as(str(d / name))
    w = open_window(tmp_path_factory, str(d))
    view = w.view_area.single
    lines = []
    for k in range(6):
        w.doc.set_index(0, k)
        view.repaint()
        line = view.annotation_text()["tr"][-1]
        lines.append(line)
    n0 = int(lines[0].split("(Inst ")[1].rstrip(")"))
    assert lines[0].startswith("Im 1 / 6") and lines[5].startswith("Im 6 / 6"), lines
    # each image's own number, whichever end of the stack the numbering started from
    assert [int(s.split("(Inst ")[1].rstrip(")")) for s in lines] in ([100 - k for k in range(6)],
                                                                      [95 + k for k in range(6)]), lines
    assert n0 in (100, 95)
    w.close()
