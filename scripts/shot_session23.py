"""Screenshots of session 23's changed screens, into docs/screenshots/:

* ``corner_text_escaped.png``: a CT image whose PatientID ends in a right-to-left override
  (U+202E), whose name holds an ESC sequence and whose descriptions hold line breaks: the
  corner shows them escaped (``\\u202e``, ``\\x1b``, ``\\r``); before, the override drew the
  rest of the ID line backwards (the age and birth date read reversed).
* ``heat_legend_short_view.png``: a heat map in a short, wide viewport (700 x 260): the
  legend's bar shrinks between the top and bottom corner texts instead of drawing its title
  over the study line.
* ``label_colours_1_40.png``: a label map with labels 1 ... 40 in stripes: no grey (label 20
  was mid-grey, invisible over CT), no near-white, and labels above 20 distinct.
* ``slide_import_off_slide.png``: importing a GeoJSON made in another slide's coordinates:
  the status line and the Annotations panel say that its features lie off the slide.
* ``save_view_stamp.png``: what View > Save view as PNG writes: the viewport with the
  "Not for clinical use" line.
* ``monitor_other_versions.png``: the Monitor window of cxr-pneumonia over a log holding runs of
  two versions: only the active version's runs are compared with its reference, the others are
  counted in a note (before, they were pooled and judged against the active version's reference).
* ``tooltip_literal_name.png``: the study tree's patient tooltip of a PatientName holding HTML
  (``<span style="font-size:1px">JONES</span>SMITH^JOHN``): shown as written; before, Qt drew
  it as HTML and the reader saw "SMITH JOHN" with JONES shrunk to a dot.

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/shot_session23.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _screens import fresh_window, open_and_wait as _open, small_png, wait  # noqa: E402

SHARED = HERE.parents[1] / "shared" / "data"
OUT = HERE.parent / "docs" / "screenshots"
SVS = SHARED / "pathology" / "wsi_aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"


def control_char_ct(folder: Path) -> None:
    """One CT slice (a ramp) whose header text holds control characters."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "DOE^JOHN\x1b[8m"
    ds.PatientID = "ID4711\u202e"
    ds.PatientSex, ds.PatientBirthDate, ds.StudyDate = "M", "19700102", "20240305"
    ds.StudyDescription = "CT HEAD\rRIGHT SIDE"
    ds.SeriesDescription, ds.SeriesNumber = "AX\nBRAIN", 3
    ds.Modality, ds.Rows, ds.Columns = "CT", 256, 256
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelSpacing, ds.SliceThickness, ds.InstanceNumber = [0.8, 0.8], 1, 1
    ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [0, 0, 0]
    yy, xx = np.mgrid[:256, :256]
    img = 1024 + 40 + 150 * np.sin(xx / 20.0) * np.cos(yy / 25.0)
    ds.PixelData = img.astype(np.int16).tobytes()
    ds.save_as(folder / "x.dcm", enforce_file_format=True)


def bare_view(vol, size):
    """A SliceView on its own document (the widget each viewport is)."""
    from imaging_assist_ui.radiology.document import ViewerDocument
    from imaging_assist_ui.radiology.viewer import SliceView

    doc = ViewerDocument()
    doc.set_volume(vol)
    view = SliceView(doc)
    view.resize(*size)
    view.show()
    view.fit()
    return doc, view


def main() -> int:
    from PySide6.QtCore import Qt

    app, w, home = fresh_window("ia-shot23-")

    # --- corner text with control characters
    a = Path(home) / "ctrl"
    control_char_ct(a)
    _open(app, w, a)
    wait(app, lambda: False, 1.0)
    img = w.view_area.grab().toImage()
    print(small_png(img.copy(0, 0, min(img.width(), 900), 200), OUT / "corner_text_escaped.png"))

    # --- heat legend in a short wide view, and the label colours
    from types import SimpleNamespace as NS

    from imaging_assist.layers import HeatmapLayer, LabelLayer
    from imaging_assist.volume import Volume, WindowPreset

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256]
    ct = (40 + 120 * np.sin(xx / 18.0) * np.cos(yy / 22.0) + rng.normal(0, 15, (256, 256))).astype(np.int16)
    vol = Volume(array=ct[None], spacing=(1, 1, 1), modality="CT", units="HU", slice_positions=np.arange(1.0))
    doc, view = bare_view(vol, (700, 260))
    doc.apply_preset(WindowPreset("w", 40, 400))
    doc.patient = NS(name="VERYLONGFAMILYNAME^Firstname", id="PAT-0012345678", sex="F", birth_date="19610203")
    doc.study = NS(date="20240305", description="CT THORAX WITH CONTRAST")
    doc.series = NS(number=4, description="Lung 1.0 B70f")
    heat = np.exp(-(((xx - 150) / 40.0) ** 2 + ((yy - 110) / 30.0) ** 2)).astype(np.float32)[None]
    doc.layers.add(HeatmapLayer("Grad-CAM: pneumonia", heat, vmin=0, vmax=1, threshold=0.2, method="Grad-CAM"))
    wait(app, lambda: False, 0.5)
    print(small_png(view.grab().toImage(), OUT / "heat_legend_short_view.png"))
    view.close()

    labels = np.zeros((1, 256, 256), np.uint8)
    for k in range(40):  # 40 stripes of 6 px, labels 1 ... 40, with 0 between them
        labels[0, 8:248, 8 + 6 * k: 8 + 6 * k + 5] = k + 1
    doc2, view2 = bare_view(vol, (720, 560))
    doc2.apply_preset(WindowPreset("w", 40, 400))
    doc2.layers.add(LabelLayer("labels 1-40", labels, names={k: f"label {k}" for k in range(1, 41)}))
    wait(app, lambda: False, 0.5)
    print(small_png(view2.grab().toImage(), OUT / "label_colours_1_40.png"))
    view2.close()

    # --- Save view as PNG: what it writes (the view area and its footer line)
    from imaging_assist_ui.main_window.screenshots import with_footer

    _open(app, w, a)
    wait(app, lambda: False, 0.5)
    img = with_footer(w.view_area.grab()).toImage()
    print(small_png(img.scaledToWidth(int(img.width() * 0.6), Qt.SmoothTransformation), OUT / "save_view_stamp.png"))

    # --- a patient name holding HTML: the study tree's tooltip shows it as written
    from PySide6.QtWidgets import QApplication, QToolTip

    import pydicom

    h = Path(home) / "html_name"
    control_char_ct(h)
    f = h / "x.dcm"
    ds = pydicom.dcmread(f)
    ds.PatientName = '<span style="font-size:1px">JONES</span>SMITH^JOHN'
    ds.PatientID = "ID<b>42</b>"
    ds.save_as(f)
    _open(app, w, h)
    tree = w.browser.tree
    item = tree.topLevelItem(0)
    rect = tree.visualItemRect(item)
    QToolTip.showText(tree.viewport().mapToGlobal(rect.center()), item.toolTip(0), tree)
    wait(app, lambda: False, 0.8)
    tip = next((x for x in QApplication.topLevelWidgets()  # Qt's tooltip: a top-level QLabel
                if x.isVisible() and x.windowType() == Qt.ToolTip), None)
    if tip is not None:
        print(small_png(tip.grab().toImage(), OUT / "tooltip_literal_name.png"))
    QToolTip.hideText()

    # --- the Monitor window over runs of two versions (synthetic rows of the shipped reference)
    import time

    from bench_log import synthetic_rows

    from imaging_assist.models.registry import Registry
    from imaging_assist.monitoring import log as plog
    from imaging_assist.monitoring.reference import load_reference
    from imaging_assist_ui.monitor.monitor_panel import MonitorDialog

    card = Registry().get("cxr-pneumonia").card
    rows = synthetic_rows(load_reference(card), card, 120, 2.0, seed=3)
    t0 = time.time() - 2 * 86400
    lg = plog.open_log()
    for i, r in enumerate(rows):
        r = dict(r, time_unix=t0 + 1200.0 * i)
        if i % 3 == 0:
            r["model_version"] = "0.9.0"  # an earlier version's runs in the same log
        lg.add_run(r)
    dlg = MonitorDialog(model_id="cxr-pneumonia", window="1d")
    dlg.resize(1100, 760)
    dlg.show()
    wait(app, lambda: False, 1.0)
    print(small_png(dlg.grab().toImage(), OUT / "monitor_other_versions.png"))
    dlg.close()
    plog.close_all()

    # --- a slide: import of a GeoJSON in another slide's coordinates
    off = Path(home) / "other_slide.geojson"
    feats = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[40000, 30000], [41000, 30000],
                                                                                  [41000, 31000], [40000, 30000]]]},
              "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}},
             {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": [[42000, 32000], [42100, 32050]]},
              "properties": {"objectType": "annotation",
                             "classification": {"names": ["Tumor", "Positive"], "color": [180, 60, 60]}}}]
    off.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    w.open_path(str(SVS))
    assert wait(app, lambda: w.load_state == "done" and w.slide_page is not None and w.slide_page.tools.key, 60)
    wait(app, lambda: False, 1.0)
    w.slide_page.import_annotations(str(off))
    wait(app, lambda: False, 1.0)
    img = w.grab().toImage()
    print(small_png(img.scaledToWidth(int(img.width() * 0.75), Qt.SmoothTransformation),
                    OUT / "slide_import_off_slide.png"))
    w.close()
    wait(app, lambda: False, 2.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
