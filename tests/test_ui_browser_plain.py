"""Folders of plain images (PNG/JPEG/TIFF/BMP) open in the viewer as in `analyze`; a mixed
folder lists its DICOM series and its plain images; other files are one quiet line."""

import os
import shutil

import numpy as np

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from _qt import open_window, wait_until  # noqa: E402
from conftest import DICOM, SHARED, need  # noqa: E402

KERMANY = SHARED / "cxr" / "pneumonia_kermany" / "test" / "NORMAL"


def _films(n):
    return sorted(need(KERMANY).glob("*.jpeg"))[:n]


def _grey(view) -> np.ndarray:
    from PySide6.QtGui import QImage
    img = view.grab().toImage().convertToFormat(QImage.Format_Grayscale8)
    return np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine())[:, :img.width()]


def test_folder_of_plain_images_opens_in_the_viewer(tmp_path_factory):
    from PIL import Image
    from imaging_assist.inference.images import read_image
    d = tmp_path_factory.mktemp("plain")
    films = _films(2)
    for f in films:
        shutil.copy(f, d / f.name)
    Image.open(films[0]).convert("L").save(d / "as_png.png")
    bmp = np.zeros((40, 60), np.uint8)
    bmp[10:30, 20:40] = 255
    Image.fromarray(bmp).save(d / "square.bmp")
    (d / "README.txt").write_text("Kermany et al. 2018, CC BY 4.0")
    data = films[1].read_bytes()
    (d / "truncated.jpeg").write_bytes(data[: len(data) // 3])
    w = open_window(tmp_path_factory, str(d))
    b = w.browser
    assert b.series_keys() == [] and len(b.image_keys()) == 5
    # tiles: a thumbnail for each readable image, "cannot display" (and a problem line) for the cut one
    cut = next(k for k in b.image_keys() if k.endswith("truncated.jpeg"))
    assert wait_until(lambda: all(b.tile_kind(k) != "placeholder" for k in b.image_keys()), 30)
    assert b.tile_kind(cut) == "cannot display"
    assert all(b.tile_kind(k) == "thumbnail" for k in b.image_keys() if k != cut)
    assert [p.path for p in b.problem_items] == [str(d / "truncated.jpeg")]
    assert [o.path.split("/")[-1] for o in b.other_files] == ["README.txt"]
    assert b.other_label.isVisible()
    assert b.other_label.text() == "1 other file, not an image: README.txt (licence/readme text)"
    # the first image is shown with analyze's reader: same pixels, no geometry
    first = sorted(os.listdir(d))[0]
    assert w.doc.volume.source_paths == [str(d / first)]
    ref = read_image(d / first)
    assert np.array_equal(w.doc.volume.array, ref.array) and not w.doc.volume.has_geometry
    view = w.view_area.single
    view.repaint()
    assert _grey(view).std() > 10  # a film on screen, not an empty view
    # the BMP, chosen from the tree: its white square is on screen at the right place
    key = next(k for k in b.image_keys() if k.endswith("square.bmp"))
    w.loading._series_chosen(key)
    assert wait_until(lambda: w.load_state == "done" and w.doc.volume.array.shape[1:] == (40, 60), 20)
    view.repaint()
    p = view.uv_to_screen(30, 20)
    q = view.uv_to_screen(5, 5)
    g = _grey(view)
    assert g[int(p.y()), int(p.x())] > 200 and g[int(q.y()), int(q.x())] < 50
    w.close()


def test_mixed_folder_lists_dicom_series_and_plain_images(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixed")
    shutil.copytree(need(DICOM / "cr_chest_monochrome1_fuji"), d / "cr")
    for f in _films(1):
        shutil.copy(f, d / f.name)
    w = open_window(tmp_path_factory, str(d))
    b = w.browser
    assert len(b.series_keys()) == 1 and len(b.image_keys()) == 1
    assert w.doc.volume.modality == "CR"  # the DICOM series is shown first
    assert "1 image" in b.summary.text()
    assert [o.reason for o in b.other_files] == ["licence/readme text"]
    w.loading._series_chosen(b.image_keys()[0])
    assert wait_until(lambda: w.load_state == "done" and w.doc.series is None, 20)
    assert w.doc.volume.description == _films(1)[0].name
    w.loading._series_chosen(b.series_keys()[0])
    assert wait_until(lambda: w.load_state == "done" and w.doc.volume.modality == "CR", 20)
    w.close()
