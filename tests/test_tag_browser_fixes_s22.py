"""The DICOM tags panel: a rewritten file is read again, the per-frame item of the frame on
screen is shown past the first 50, long and deeply nested values can be read and found, and a
TransferSyntaxUID that is not in the file says so - offscreen."""

import gc
import os
from types import SimpleNamespace

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from _qt import open_window, wait_until  # noqa: E402
from conftest import DICOM, need  # noqa: E402

pytestmark = pytest.mark.gui

CR = DICOM / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm"
ENHANCED_MR = DICOM / "mr_enhanced_multiframe_philips" / "IM_0027_fMAP.dcm"


@pytest.fixture(autouse=True)
def _collect_in_the_gui_thread(qapp):
    """Widgets a test leaves in reference cycles are deleted here, in the GUI thread (a garbage
    collection that a worker thread happens to run would delete them there: a crash)."""
    yield
    gc.collect()


def _rows(tb) -> dict:
    return {tb.tree.topLevelItem(i).text(1): tb.tree.topLevelItem(i) for i in range(tb.tree.topLevelItemCount())}


def _find(tb, name):
    def walk(it):
        if it.text(1) == name:
            return it
        for c in range(it.childCount()):
            r = walk(it.child(c))
            if r is not None:
                return r
    return next(filter(None, (walk(tb.tree.topLevelItem(i)) for i in range(tb.tree.topLevelItemCount()))), None)


def _write_cr(path, name, pid):
    ds = pydicom.dcmread(str(need(CR)), force=True)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.PatientName, ds.PatientID = name, pid
    ds.save_as(str(path), implicit_vr=True, little_endian=True)


def test_rewritten_file_is_read_again_when_its_folder_is_reopened(qapp, tmp_path, tmp_path_factory):
    folder = tmp_path / "study"
    folder.mkdir()
    f = folder / "cr.dcm"
    _write_cr(f, "SMITH^JOHN", "MRN12")
    w = open_window(tmp_path_factory, str(folder))
    try:
        w.show_tags()
        tb = w.tag_browser
        assert wait_until(lambda: "PatientName" in _rows(tb), 5)
        assert _rows(tb)["PatientName"].text(2) == "SMITH^JOHN"
        # rewritten in place with the same size and time stamp (the same file identity):
        # opening the folder again reads the header again
        st = os.stat(f)
        _write_cr(f, "ANON^ANON", "ANON1")
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert os.stat(f).st_size == st.st_size
        w.open_path(str(folder))
        assert wait_until(lambda: w.load_state == "done"), w.last_error
        w.show_tags()
        assert wait_until(lambda: _rows(tb).get("PatientName") and _rows(tb)["PatientName"].text(2) == "ANON^ANON", 5)
        assert _rows(tb)["PatientID"].text(2) == "ANON1"
    finally:
        from imaging_assist_ui.app import wait_for_workers
        w.close()
        wait_for_workers(timeout=60)  # then nothing but this test refers to the window


def test_tag_browser_cache_is_keyed_by_file_identity(qapp, tmp_path):
    from imaging_assist.dicom.header import read_record
    from imaging_assist_ui.radiology.tag_browser import TagBrowser
    f = tmp_path / "cr.dcm"
    _write_cr(f, "SMITH^JOHN", "MRN123")
    tb = TagBrowser()
    tb.show_record(read_record(str(f)))
    assert _rows(tb)["PatientName"].text(2) == "SMITH^JOHN"
    _write_cr(f, "ANON^ANON", "ANON0001")
    os.utime(f, (1e9, 1e9))
    tb.show_record(read_record(str(f)))  # the same path, another file: not the cached header
    assert _rows(tb)["PatientName"].text(2) == "ANON^ANON" and _rows(tb)["PatientID"].text(2) == "ANON0001"


def test_per_frame_item_of_the_frame_on_screen_past_the_first_50(qapp):
    from PySide6.QtWidgets import QDockWidget, QMainWindow

    from imaging_assist.dicom.header import read_record
    from imaging_assist_ui.main_window.tags import TagsFollower
    from imaging_assist_ui.radiology.tag_browser import MAX_ITEMS_PER_SEQ, TagBrowser
    rec = read_record(str(need(ENHANCED_MR)))
    ds = pydicom.dcmread(str(ENHANCED_MR), stop_before_pixels=True)
    n = len(ds.PerFrameFunctionalGroupsSequence)
    assert rec.frames == n > MAX_ITEMS_PER_SEQ + 1
    win, tb = QMainWindow(), TagBrowser()
    dock = QDockWidget("Tags", win)
    dock.setWidget(tb)
    doc = SimpleNamespace(volume=SimpleNamespace(headers=[rec, rec], frames=[n - 1, 2], n_slices=2), position=[0])
    follower = TagsFollower(win, dock, tb, doc)
    follower.update_now()  # the last frame of the file is on screen
    assert tb.title.text().startswith(f"Image 1 of 2, frame {n}")
    pf = _rows(tb)["PerFrameFunctionalGroupsSequence"]
    labels = [pf.child(c).text(1) for c in range(pf.childCount())]
    assert labels[MAX_ITEMS_PER_SEQ] == f"… {n - MAX_ITEMS_PER_SEQ} more items"
    assert labels[-1] == f"Item {n} (frame on screen)" and len(labels) == MAX_ITEMS_PER_SEQ + 2
    row = pf.child(pf.childCount() - 1)
    assert pf.isExpanded() and row.isExpanded() and row.font(1).bold()
    last = ds.PerFrameFunctionalGroupsSequence[n - 1]
    div = "\\".join(str(x) for x in last.FrameContentSequence[0].DimensionIndexValues)
    tb.search.setText(div)
    assert tb.apply_filter() >= 1
    assert ("0020,9157", "DimensionIndexValues", div) in tb.visible_rows()
    tb.search.setText("")
    tb.apply_filter()
    # another frame of the same file: the added item goes, the third item is the one on screen
    doc.position[0] = 1
    follower.update_now()
    labels = [pf.child(c).text(1) for c in range(pf.childCount())]
    assert len(labels) == MAX_ITEMS_PER_SEQ + 1 and labels[2] == "Item 3 (frame on screen)"
    assert f"Item {n} (frame on screen)" not in labels and pf.child(2).isExpanded()
    win.close()


def _limits_file(path):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "TEST^LIMITS", "P1", "OT"
    ds.ImageComments = "A" * 170 + "ENDMARK"
    cur = Dataset()
    cur.CodeValue = "DEEPEST"
    for i in range(8):
        wrap = Dataset()
        wrap.ContentSequence = Sequence([cur])
        wrap.TextValue = f"level{7 - i}"
        cur = wrap
    ds.ContentSequence = cur.ContentSequence
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


def test_long_values_and_deep_sequences_can_be_read_and_found(qapp, tmp_path):
    from imaging_assist.dicom.header import read_record
    from imaging_assist_ui.radiology.tag_browser import TagBrowser
    tb = TagBrowser()
    tb.show_record(read_record(_limits_file(tmp_path / "tags.dcm")))
    it = _find(tb, "ImageComments")
    assert len(it.text(2)) == 161 and it.text(2).endswith("…")  # the column stays short
    assert it.toolTip(2).replace("\n", "").endswith("AAAENDMARK")
    # the depth limit says where it cuts; expanding the row shows what is below
    marker = _find(tb, "deeper levels not shown: expand to show")
    assert marker is not None and _find(tb, "CodeValue") is None
    seq_row = marker.parent()
    seq_row.setExpanded(True)
    assert _find(tb, "deeper levels not shown: expand to show") is None
    assert _find(tb, "CodeValue").text(2) == "DEEPEST"
    # the search finds the whole value and the deepest levels (read again: nothing expanded)
    tb.show_record(None)
    tb.show_record(read_record(str(tmp_path / "tags.dcm")))
    for word, name in (("ENDMARK", "ImageComments"), ("DEEPEST", "CodeValue"), ("level7", "TextValue")):
        tb.search.setText(word)
        assert tb.apply_filter() == 1, word
        assert name in [r[1] for r in tb.visible_rows()], word


def test_transfer_syntax_missing_from_the_file_is_shown_as_inferred(qapp, tmp_path):
    from imaging_assist.dicom.header import read_dataset, read_record
    from imaging_assist_ui.radiology.tag_browser import TagBrowser
    rec = read_record(str(need(CR)))  # no File Meta in this file
    assert "TransferSyntaxUID" not in (pydicom.dcmread(str(CR), force=True).file_meta or {})
    ds = read_dataset(rec, stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == rec.transfer_syntax  # what other callers get is kept
    tb = TagBrowser()
    tb.show_record(rec)
    row = _rows(tb)["TransferSyntaxUID"]
    assert row.text(0) == "0002,0010"
    assert row.text(2) == f"{rec.transfer_syntax} (inferred, not in the file)"
    # a file with File Meta shows its own, unmarked
    f = tmp_path / "cr.dcm"
    _write_cr(f, "SMITH^JOHN", "MRN123")
    tb.show_record(read_record(str(f)))
    assert _rows(tb)["TransferSyntaxUID"].text(2) == ImplicitVRLittleEndian
