"""Untrusted text is shown as written, never rendered as HTML (s23).

Qt renders a tooltip, a message box text or a QLabel in its default format as rich text when the
string looks like markup (``Qt.mightBeRichText``): a PatientName ``<span style="font-size:1px">
JONES</span>SMITH^JOHN`` showed as "SMITH JOHN", a SeriesDescription ``<img src=...>`` made Qt
load a local file into the study tree's tooltip, a GeoJSON class name spoofed the point counts,
an OME-XML unit added a fake "MPP ... (scanner calibrated)" line to the slide info panel, a slide
"H&E_x.svs" was named "H&amp;E_x.svs" in the AI panel.  Each place is checked in the real
windows offscreen, by the text Qt will show."""

import json
import os

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QTextDocument, Qt as GuiQt  # noqa: E402

from _qt import open_window, pump_until, wait_until  # noqa: E402
from conftest import CT_PHANTOM, need  # noqa: E402

pytestmark = pytest.mark.gui

PN = '<span style="font-size:1px">JONES</span>SMITH^JOHN'
PN_PRIOR = "<b>DOE</b>^JANE"
STUDY = "<b>HEAD</b> &lt;CT&gt;"
PRIOR = "<i>OLD</i>  HEAD"
SERIES = '<img src="/tmp/no-such-dir/pic.png">AXIAL'
UNIT = ("x'</p><p style='color:#e0e0e0'>MPP&nbsp;&nbsp;0.25 &times; 0.25 &micro;m/px (scanner calibrated)"
        "</p><p style='font-size:1px'>")
SLIDE = "H&E_&amp;_7.ome.tif"  # taken for markup: "&amp;" decoded, or escaped "H&amp;E" shown
CLASS = "<span style='font-size:1px'>Stroma</span>Tumor"


def shown(text: str, fmt=Qt.AutoText) -> str:
    """The text a reader sees: Qt's own rule for a tooltip / message box / label."""
    if fmt == Qt.PlainText or (fmt == Qt.AutoText and not GuiQt.mightBeRichText(text)):
        return text
    doc = QTextDocument()
    doc.setHtml(text)
    return doc.toPlainText().replace("\u2028", "\n")


def label_shows(lab) -> str:
    return shown(lab.text(), lab.textFormat())


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """3 CT slices whose header values hold markup, a prior of the same patient ID (another name),
    a plain image and a non-image file whose names hold markup."""
    import pydicom
    from pydicom.uid import generate_uid
    from PySide6.QtGui import QColor, QImage

    root = tmp_path_factory.mktemp("hostile")
    files = sorted(need(CT_PHANTOM).glob("*.dcm"))
    for sub, name, desc, date, n in (("now", PN, STUDY, "20240102", 3), ("prior", PN_PRIOR, PRIOR, "20200102", 1)):
        (root / sub).mkdir()
        st, se = generate_uid(), generate_uid()
        for i, f in enumerate(files[:n]):
            ds = pydicom.dcmread(f)
            ds.PatientName, ds.PatientID, ds.AccessionNumber = name, "ID<b>42</b>", "A1"
            ds.StudyDescription, ds.SeriesDescription, ds.StudyDate = desc, SERIES, date
            ds.StudyInstanceUID, ds.SeriesInstanceUID = st, se
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.save_as(root / sub / f"<i>s{i}.dcm")
    (root / "<u>notes.txt").write_text("hello\n")
    img = QImage(16, 16, QImage.Format_RGB32)
    img.fill(QColor("red"))
    img.save(str(root / "<b>scan.png"))
    return root


@pytest.fixture(scope="module")
def win(qapp, tmp_path_factory, study):
    mp = pytest.MonkeyPatch()
    mp.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path_factory.mktemp("data")))
    w = open_window(tmp_path_factory, str(study))
    w.tags.show()
    wait_until(lambda: w.tag_browser.tree.topLevelItemCount() > 0, 10)
    yield w
    w.close()
    mp.undo()


def _rows(tree):
    stack = [tree.topLevelItem(i) for i in range(tree.topLevelItemCount())]
    while stack:
        it = stack.pop(0)
        yield it
        stack += [it.child(i) for i in range(it.childCount())]


def test_plain_tip_is_one_helper_and_keeps_text_as_written():
    from imaging_assist_ui.ai import model_support
    from imaging_assist_ui.shared.text import plain_tip

    assert model_support.plain_tip is plain_tip  # one helper, shared
    assert plain_tip("Series 3\nCT  BRAIN") == "Series 3\nCT  BRAIN"  # nothing to escape: as it is
    for s in (PN + "\nsecond  line", STUDY, "R&amp;D", "a &lt; b"):
        assert shown(plain_tip(s)) == s, s


def test_study_tree_tooltips_and_labels_show_header_values_and_names_literally(win, study):
    from imaging_assist_ui.radiology.browser import CANNOT_DISPLAY

    b = win.browser
    tips = [shown(it.toolTip(0)) for it in _rows(b.tree)]
    assert any(t.startswith('<span style="font-size:1px">JONES</span>SMITH JOHN\nID ID<b>42</b>') for t in tips), tips
    assert any(t.startswith("<b>DOE</b> JANE\nID ID<b>42</b>") for t in tips), tips
    assert any(t.startswith("Study <b>HEAD</b> &lt;CT&gt;\n") for t in tips), tips
    assert any(t.startswith("Study <i>OLD</i>  HEAD\n") for t in tips), tips
    series = [t for t in tips if t.startswith("Series ")]
    assert series and all(t.split("\n")[0].endswith(": " + SERIES) for t in series), series
    assert any(t == str(study / "<b>scan.png") for t in tips), tips
    assert shown(b.summary.toolTip()) == str(study)
    assert "<u>notes.txt" in label_shows(b.other_label), b.other_label.text()
    assert shown(b.other_label.toolTip()) == "<u>notes.txt  (text)"
    # "cannot display" adds its line to the tooltip as it was
    key = win.current_key
    b.set_unviewable(key, "bad <thing>")
    tip = shown(b._items[key].toolTip(0))
    assert tip.startswith(f"Series 202: {SERIES}\n") and tip.endswith(f"\n⊘ {CANNOT_DISPLAY}: bad <thing>"), tip


def test_tag_browser_values_and_title_literal(win, study):
    tb = win.tag_browser
    values = {it.text(1): shown(it.toolTip(2)) for it in _rows(tb.tree)}
    assert values["PatientName"] == PN
    assert values["SeriesDescription"] == SERIES
    assert values["StudyDescription"] == STUDY
    assert values["PatientID"] == "ID<b>42</b>"
    assert "<i>s" in label_shows(tb.title), tb.title.text()
    assert shown(tb.title.toolTip()).endswith(".dcm") and "<i>s" in shown(tb.title.toolTip())


def test_priors_tooltip_and_title_literal(win):
    p = win.reading.priors
    assert p.list.count() == 1
    tip = shown(p.list.item(0).toolTip())
    assert tip.startswith("Study <i>OLD</i>  HEAD\n"), tip
    title = label_shows(p.title)
    assert "<b>DOE</b>" in title and "JONES</span>" in title, title


def test_layer_label_names_literal(win):
    from imaging_assist.layers import LabelLayer

    shape = win.doc.volume.array.shape[:3]
    layer = win.add_layer(LabelLayer("seg", np.ones(shape, np.uint8), names={1: "<b>Liver</b> &amp;"}))
    tips = [shown(it.toolTip(0)) for it in _rows(win.layers_panel.tree) if "Liver" in it.text(0)]
    win.doc.layers.remove(layer)
    assert tips and tips[0].startswith("<b>Liver</b> &amp; (value 1)"), tips


def test_banner_literal(win):
    win.show_banner("slices 1 <b>mm</b> &lt;thick&gt;")
    assert label_shows(win.banner) == "slices 1 <b>mm</b> &lt;thick&gt;"


def test_overlay_error_message_literal(win, study, monkeypatch):
    from imaging_assist_ui.main_window import overlays

    bad = study.parent / "<b>bad.npy"
    bad.write_bytes(b"not an array")
    said = []
    monkeypatch.setattr(overlays.QFileDialog, "getOpenFileName", lambda *a, **k: (str(bad), ""))
    monkeypatch.setattr(overlays.QMessageBox, "warning", lambda parent, title, text: said.append(text))
    overlays.load_overlay_dialog(win)
    assert said and "<b>bad.npy" in shown(said[0]), said


def test_pacs_status_literal(qapp, tmp_path):
    from imaging_assist_ui.pacs.window import PacsWindow

    w = PacsWindow(out_dir=str(tmp_path))
    w.say("C-FIND failed: <b>no</b> &lt;access&gt;", error=True)
    assert label_shows(w.status) == "C-FIND failed: <b>no</b> &lt;access&gt;"
    w.close()


def _ome(path):
    import tifffile

    unit = UNIT.replace("&", "&amp;").replace("<", "&lt;").replace("'", "&apos;")
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">
<Image ID="Image:0" Name="x"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" SizeX="512" SizeY="512"
 SizeC="3" SizeZ="1" SizeT="1" PhysicalSizeX="0.5" PhysicalSizeXUnit="{unit}" PhysicalSizeY="0.5">
<Channel ID="Channel:0:0" SamplesPerPixel="3"/><TiffData/></Pixels></Image></OME>"""
    img = np.random.default_rng(0).integers(0, 255, (512, 512, 3)).astype(np.uint8)
    tifffile.imwrite(path, img, photometric="rgb", description=xml, tile=(256, 256), metadata=None)
    return str(path)


@pytest.fixture(scope="module")
def page(win, tmp_path_factory):
    path = _ome(tmp_path_factory.mktemp("slide") / SLIDE)
    win.open_path(path)
    assert pump_until(lambda: win.load_state == "done" and win.slide_page is not None
                      and win.slide_page.slide is not None and win.slide_page.slide.path == path, 60), win.last_error
    return win.slide_page


def test_slide_info_panel_literal(page):
    lines = label_shows(page.info_text).splitlines()
    assert lines[lines.index("File") + 1] == SLIDE, lines
    assert not any("scanner calibrated" in ln and "PhysicalSizeXUnit" not in ln for ln in lines), lines
    assert any(ln.startswith(f'⚠ OME PhysicalSizeXUnit "{UNIT}"') for ln in lines), lines


def test_ai_panel_names_the_slide_as_named(win, page):
    panel = win.model_panel
    win.model_dock.show()
    if not panel._catalog_loaded:
        panel.refresh()
    assert pump_until(lambda: panel._catalog_loaded and "7.ome.tif" in panel.series_label.text(), 60)
    assert label_shows(panel.series_label).startswith(f"Slide: {SLIDE} — slide models only"), panel.series_label.text()


def test_point_counts_and_import_message_literal(page, tmp_path):
    gj = tmp_path / "<b>pts.geojson"
    pts = lambda n, x0: [[x0 + 10 * i, 100 + (i % 7) * 10] for i in range(n)]  # noqa: E731
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": pts(2, 50)},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}},
        {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": pts(4, 200)},
         "properties": {"objectType": "annotation", "classification": {"name": CLASS}}}]}))
    page.import_annotations(str(gj))
    assert label_shows(page.annotations_panel.counts) == f"Points: Tumor 2, {CLASS} 4"
    assert "<b>pts.geojson" in label_shows(page.tissue_status), page.tissue_status.text()


def test_slide_import_error_message_literal(page, tmp_path, monkeypatch):
    from imaging_assist_ui.slides import slide_page

    bad = tmp_path / "<b>bad.geojson"
    bad.write_text("{not json")
    said = []
    monkeypatch.setattr(slide_page.QFileDialog, "getOpenFileName", lambda *a, **k: (str(bad), ""))
    monkeypatch.setattr(slide_page.QMessageBox, "warning", lambda parent, title, text: said.append(text))
    page.import_annotations_dialog()
    assert said and "<b>bad.geojson" in shown(said[0]), said


def test_feedback_findings_from_card_labels_literal(qapp, monkeypatch):
    from types import SimpleNamespace

    from imaging_assist.monitoring import feedback
    from imaging_assist_ui.monitor.feedback_box import FeedbackBox

    monkeypatch.setattr(feedback, "run_matches", lambda *a, **k: True)
    monkeypatch.setattr(feedback, "latest_feedback", lambda *a, **k: {})
    lab = "Pneumonia: negative (0.04)<span style='font-size:1px'>"
    res = SimpleNamespace(probabilities={lab: 0.97}, decisions={lab: {"positive": True}}, labels=[lab],
                          prediction_log_id=1, prediction_log_ref={})
    box = FeedbackBox()
    box.set_result(res)
    assert label_shows(box.rows[lab]["label"]) == f"▶ {lab}: POSITIVE (0.97)"
    box.close()


def test_pacs_dialogs_status_literal(qapp, tmp_path):
    """The Nodes and Send dialogs' status lines quote server replies and file names."""
    from imaging_assist_ui.pacs.nodes_dialog import NodesDialog
    from imaging_assist_ui.pacs.send_dialog import SendDialog

    text = "C-ECHO failed: <b>refused</b> &lt;AE&gt;"
    d = NodesDialog()
    d._say(text, error=True)
    assert label_shows(d.status) == text
    d.close()
    (tmp_path / "s").mkdir()
    s = SendDialog(paths=[str(tmp_path / "s")])
    s.say(text, error=True)
    assert label_shows(s.status) == text
    s.close()


def test_plain_tip_escapes_bidi_and_control_characters_but_keeps_line_breaks():
    """A PatientID ending in U+202E drew the rest of a tooltip line backwards ("ID 4711" then the
    sex and birth date reversed), as it did in the corner text."""
    from PySide6.QtGui import QTextDocument

    from imaging_assist_ui.shared.text import plain_tip

    tip = plain_tip("SMITH JOHN\nID ID4711\u202e, M, born 1970-01-02\x1b[8m")
    doc = QTextDocument()
    doc.setHtml(tip) if "<qt" in tip else doc.setPlainText(tip)
    shown = doc.toPlainText()
    assert "\u202e" not in shown and "\x1b" not in shown, repr(shown)
    assert shown.split("\n") == ["SMITH JOHN", "ID ID4711\\u202e, M, born 1970-01-02\\x1b[8m"], repr(shown)
