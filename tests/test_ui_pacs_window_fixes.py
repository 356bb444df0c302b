"""The Query/Retrieve window against the real Orthanc (pytest-qt, offscreen): progress rows of a
retrieve of several studies, answers that arrive after the list changed, the study list tied to
its node, and person names written only in ideographic characters."""

import threading
import time

import pytest

from _orthanc import orthanc, pacs_home  # noqa: F401 - fixtures
from _qt import pump_until
from test_pacs_ui import CT_STUDY, MR_STUDY, window  # noqa: F401 - the window on the test Orthanc node

pytestmark = pytest.mark.gui


def _search(w):
    w.b_search.click()
    assert pump_until(lambda: w.b_search.isEnabled() and "stud" in w.status.text(), 30), \
        w.status.text()


def _rows(w):
    return {w.tree.topLevelItem(i).data(0, 256): w.tree.topLevelItem(i)
            for i in range(w.tree.topLevelItemCount())}


def test_cancelled_study_rows_are_not_marked_done_by_another_study(window, tmp_path):
    """MR (4) then CT (140), cancelled during the CT: the CT row says cancelled with what came."""
    w = window
    _search(w)
    rows = _rows(w)
    rows[MR_STUDY].setSelected(True)
    rows[CT_STUDY].setSelected(True)
    assert [s for s, _ in w.selection()] == [MR_STUDY, CT_STUDY]
    w.b_retrieve.click()
    ct = tmp_path / "retrieved" / CT_STUDY
    assert pump_until(lambda: len(list(ct.rglob("*.dcm"))) >= 5, 60), w.status.text()
    w.b_cancel.click()
    assert pump_until(lambda: w.transfer is None, 30)
    on_disk = len(list(ct.rglob("*.dcm")))
    assert 5 <= on_disk < 140
    states = sorted((bar.maximum(), bar.value(), item.text(2)) for item, bar in w.bars.values())
    assert states == [(4, 4, "done"), (140, on_disk, "cancelled")], (states, w.status.text())


def test_series_listing_answering_after_a_new_search_is_dropped(window, qtbot, monkeypatch):
    from imaging_assist.pacs import api
    real_find, answered = api.find, threading.Event()

    def slow_find(node, q, s=None, *a, **kw):
        if q.level != "series":
            return real_find(node, q, s, *a, **kw)
        time.sleep(1.5)  # a PACS under load: the series answer comes after the new list
        try:
            return real_find(node, q, s, *a, **kw)
        finally:
            answered.set()

    monkeypatch.setattr(api, "find", slow_find)
    w = window
    _search(w)
    n = w.tree.topLevelItemCount()
    with qtbot.captureExceptions() as errors:
        w.tree.topLevelItem(0).setExpanded(True)
        _search(w)  # the same filters again: the expanded row is replaced
        assert pump_until(answered.is_set, 30)
        pump_until(lambda: not any(j.running() for j in w._jobs), 10)
        pump_until(lambda: False, 0.5)  # the queued answer is handled
    assert not errors, errors
    assert w.tree.topLevelItemCount() == n
    assert all(w.tree.topLevelItem(i).childCount() == 0 for i in range(n))
    assert "stud" in w.status.text() and "error" not in w.status.styleSheet()


def test_study_list_belongs_to_the_node_it_came_from(window, monkeypatch):
    from imaging_assist.pacs import api
    real_find, calls = api.find, []

    def slow_find(node, q, s=None, *a, **kw):
        calls.append(node.name)
        if node.name == "orthanc" and q.level == "study":
            time.sleep(1.5)
        return real_find(node, q, s, *a, **kw)

    monkeypatch.setattr(api, "find", slow_find)
    w = window
    _search(w)
    assert w.tree.topLevelItemCount() == 3
    w.reload_nodes()  # the same node again (Settings… closed): the list stays
    assert w.tree.topLevelItemCount() == 3
    # another node chosen: the list of the first is gone (nothing to expand or retrieve there)
    w.node_box.setCurrentIndex(w.node_box.findData("orthanc-web"))
    assert w.tree.topLevelItemCount() == 0 and not w.b_retrieve.isEnabled()
    w.node_box.setCurrentIndex(w.node_box.findData("orthanc"))
    # a slow search of "orthanc"; the node changed and Enter pressed while it runs
    calls.clear()
    w.b_search.click()
    w.node_box.setCurrentIndex(w.node_box.findData("orthanc-web"))
    w.f_id.returnPressed.emit()  # a search runs: no second one
    assert pump_until(lambda: w.b_search.isEnabled(), 30)
    pump_until(lambda: False, 0.3)
    assert calls == ["orthanc"]
    assert w.tree.topLevelItemCount() == 0  # the answer of "orthanc" is not shown under "orthanc-web"
    # a search of the chosen node fills the list, and expanding asks that node
    _search(w)
    assert w.tree.topLevelItemCount() == 3 and calls[-1] == "orthanc-web"
    st = _rows(w)[MR_STUDY]
    st.setExpanded(True)
    assert pump_until(lambda: st.childCount() == 1, 30), w.status.text()
    assert calls[-1] == "orthanc-web"


def test_person_name_in_ideographic_or_phonetic_characters_only():
    from imaging_assist_ui.pacs.window import _person
    assert _person("Yamada^Tarou=山田^太郎=やまだ^たろう") == "Yamada, Tarou"
    assert _person("=山田^太郎=やまだ^たろう") == "山田, 太郎"
    assert _person("==やまだ^たろう") == "やまだ, たろう"
    assert _person("^=김^희중") == "김, 희중"
    assert _person("DOE^JOHN") == "DOE, JOHN"
    assert _person("") == "" and _person("==") == ""


def test_a_retrieve_worker_error_ends_the_transfer(window, monkeypatch):
    """The retrieve worker stopping on an error that is no study's (not a PacsError): the error
    is one line, the rows are failed and Retrieve can be pressed again (it stayed blocked)."""
    from imaging_assist.pacs import api

    def broken(*a, **kw):
        raise RuntimeError("disk went away")

    w = window
    _search(w)
    _rows(w)[MR_STUDY].setSelected(True)
    monkeypatch.setattr(api, "get", broken)
    w.b_retrieve.click()
    assert pump_until(lambda: w.transfer is None, 30), w.status.text()
    assert "disk went away" in w.status.text()
    assert w.b_retrieve.isEnabled() and not w.b_cancel.isEnabled()
    assert all(item.text(2) == "failed" for item, _bar in w.bars.values())


def test_a_series_with_failed_instances_is_not_done(window, monkeypatch):
    """One instance of the MR series could not be written and one never arrived: the series row
    says "2 failed" (it said "done": a failure was not tied to its series), and each failure names
    its series in the result."""
    from imaging_assist.pacs import transfer

    real_write, calls = transfer.InstanceSink.write, []

    def flaky_write(self, series_uid, sop_uid, chunks):
        calls.append(sop_uid)
        if len(calls) == 1:
            self.fail(sop_uid, "cannot write (test)", series_uid)
            return False
        if len(calls) == 2:
            return True  # accepted but lost: found missing after the transfer
        return real_write(self, series_uid, sop_uid, chunks)

    monkeypatch.setattr(transfer.InstanceSink, "write", flaky_write)
    w = window
    _search(w)
    _rows(w)[MR_STUDY].setSelected(True)
    w.b_retrieve.click()
    assert pump_until(lambda: w.transfer is None, 60), w.status.text()
    res = w.last_result
    assert sorted(f.reason for f in res.failures) == ["cannot write (test)", "not received from the node"]
    series = {uid for (_study, uid) in w.bars}
    assert len(series) == 1 and {f.series_instance_uid for f in res.failures} == series
    assert res.to_dict()["failures"][0]["series_instance_uid"] in series
    assert [item.text(2) for item, _bar in w.bars.values()] == ["2 failed"]
    assert "2 failed" in w.status.text()


def test_a_worker_that_fails_before_its_slots_are_connected_still_ends_the_transfer(window, monkeypatch):
    """The retrieve worker failing before Retrieve's handler had connected its slots (a loaded
    machine: the CI run): the transfer never ended and Retrieve stayed blocked.  Here the worker
    is made to finish before start() returns."""
    from imaging_assist.pacs import api
    from imaging_assist_ui.pacs import worker

    def broken(*a, **kw):
        raise RuntimeError("disk went away")

    real_start = worker.Job.start

    def start_and_wait(self):
        real_start(self)
        self.thread.join(10)
        return self

    w = window
    _search(w)
    _rows(w)[MR_STUDY].setSelected(True)
    monkeypatch.setattr(api, "get", broken)
    monkeypatch.setattr(worker.Job, "start", start_and_wait)
    w.b_retrieve.click()
    assert pump_until(lambda: w.transfer is None, 30), w.status.text()
    assert "disk went away" in w.status.text() and w.b_retrieve.isEnabled()
