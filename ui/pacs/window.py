"""The Query/Retrieve window: filters, a study table that expands to series, retrieval of the
selection with per-series progress and cancel; the retrieved study opens in the browser (as
soon as its first instance has arrived, and again, complete, at the end).  Every network call
runs in a worker (:class:`.worker.Job`): the window never freezes."""

from __future__ import annotations

import os

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QDialog, QGridLayout, QHBoxLayout,
                               QHeaderView, QLabel, QLineEdit, QProgressBar, QPushButton,
                               QTreeWidget, QTreeWidgetItem, QVBoxLayout)

from imaging_assist.pacs.nodes import PacsError, load_settings
from imaging_assist.pacs.query import Query

from ..shared.text import reason_of
from ..shared.theme import ERROR_FG, MUTED
from .worker import Job

STUDY_COLS = ["Patient", "Patient ID", "Study date", "Description", "Modalities", "Series",
              "Instances"]
UID_ROLE = Qt.UserRole
KIND_ROLE = Qt.UserRole + 1


def retrieve_root() -> str:
    """Where retrieved studies go: ``data_dir()/retrieved/<study>/<series>/<sop>.dcm``."""
    from imaging_assist.userdirs import data_dir
    return os.path.join(data_dir(), "retrieved")


class PacsWindow(QDialog):
    """Non-modal.  ``studyArrived(path, complete)`` when a retrieved study can be opened."""

    studyArrived = Signal(str, bool)

    def __init__(self, parent=None, out_dir: str | None = None):
        super().__init__(parent)
        self.setWindowTitle("PACS: query / retrieve / send")
        self.setWindowFlag(Qt.Window, True)
        self.resize(1100, 700)
        self.out_dir = out_dir or retrieve_root()
        self._jobs: list[Job] = []
        self.transfer: Job | None = None
        self.settings = None
        self.last_result = None
        self._list_no = 0        # which study list is shown: answers for an older one are dropped
        self._list_node = None   # the node the shown list (or the running search) belongs to

        outer = QVBoxLayout(self)
        top = QHBoxLayout()
        top.addWidget(QLabel("Node"))
        self.node_box = QComboBox()
        self.node_box.setMinimumWidth(320)
        self.node_box.currentIndexChanged.connect(self._node_changed)
        top.addWidget(self.node_box)
        self.b_settings = QPushButton("Settings…")
        self.b_settings.clicked.connect(self.open_settings)
        self.b_test = QPushButton("Test")
        self.b_test.clicked.connect(self.test_node)
        self.b_send = QPushButton("Send to PACS…")
        self.b_send.clicked.connect(self.open_send)
        top.addWidget(self.b_settings)
        top.addWidget(self.b_test)
        top.addStretch(1)
        top.addWidget(self.b_send)
        outer.addLayout(top)

        grid = QGridLayout()
        self.f_patient, self.f_id, self.f_birth = QLineEdit(), QLineEdit(), QLineEdit()
        self.f_date, self.f_modality = QLineEdit(), QLineEdit()
        self.f_accession, self.f_description = QLineEdit(), QLineEdit()
        self.f_patient.setPlaceholderText("DOE* (wildcards * ?)")
        self.f_birth.setPlaceholderText("YYYYMMDD")
        self.f_date.setPlaceholderText("FROM-TO, e.g. 20240101-20241231")
        self.f_modality.setPlaceholderText("CT, MR…")
        fields = [("Patient name", self.f_patient), ("Patient ID", self.f_id),
                  ("Birth date", self.f_birth), ("Study date", self.f_date),
                  ("Modality", self.f_modality), ("Accession", self.f_accession),
                  ("Description", self.f_description)]
        for i, (label, w) in enumerate(fields):
            grid.addWidget(QLabel(label), i // 4, (i % 4) * 2)
            grid.addWidget(w, i // 4, (i % 4) * 2 + 1)
            w.returnPressed.connect(self.search)
        self.date_preset = QComboBox()
        self.date_preset.addItems(["Any date", "Today", "Last 7 days", "Last 30 days", "Last year"])
        self.date_preset.setToolTip("Fill the study date range")
        self.date_preset.currentIndexChanged.connect(self._date_preset)
        grid.addWidget(self.date_preset, 1, 6)
        self.b_search = QPushButton("Search")
        self.b_search.setDefault(True)
        self.b_search.clicked.connect(self.search)
        grid.addWidget(self.b_search, 1, 7)
        outer.addLayout(grid)

        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(STUDY_COLS)
        self.tree.setAlternatingRowColors(True)
        self.tree.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.tree.header().setSectionResizeMode(QHeaderView.Interactive)
        self.tree.itemExpanded.connect(self._expand)
        self.tree.itemDoubleClicked.connect(lambda it, col: (self.tree.clearSelection(),
                                                             it.setSelected(True), self.retrieve()))
        self.tree.itemSelectionChanged.connect(self._selection_changed)
        outer.addWidget(self.tree, 3)

        row = QHBoxLayout()
        self.b_retrieve = QPushButton("Retrieve selection")
        self.b_retrieve.setEnabled(False)
        self.b_retrieve.clicked.connect(self.retrieve)
        self.b_cancel = QPushButton("Cancel")
        self.b_cancel.setEnabled(False)
        self.b_cancel.clicked.connect(self.cancel)
        row.addWidget(self.b_retrieve)
        row.addWidget(self.b_cancel)
        self.dest = QLabel(f"into {self.out_dir}")
        self.dest.setStyleSheet(f"color: {MUTED};")
        row.addWidget(self.dest, 1)
        outer.addLayout(row)

        self.progress_tree = QTreeWidget()
        self.progress_tree.setHeaderLabels(["Series", "Progress", "State"])
        self.progress_tree.setRootIsDecorated(False)
        self.progress_tree.setMaximumHeight(170)
        self.progress_tree.setColumnWidth(0, 360)
        self.progress_tree.setColumnWidth(1, 280)
        outer.addWidget(self.progress_tree, 1)
        self.bars: dict[tuple[str, str], tuple[QTreeWidgetItem, QProgressBar]] = {}  # (study, series)

        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextFormat(Qt.PlainText)  # a remote node's error text: never markup
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        outer.addWidget(self.status)
        self.reload_nodes()

    # ------------------------------------------------------------------ helpers
    def say(self, text: str, error: bool = False) -> None:
        self.status.setText(text)
        self.status.setStyleSheet(f"color: {ERROR_FG};" if error else "")

    def reload_nodes(self) -> None:
        current = self.node_box.currentData()
        self.node_box.blockSignals(True)  # one _node_changed at the end: the same node keeps its list
        self.node_box.clear()
        try:
            self.settings = load_settings()
        except PacsError as e:
            self.settings = None
            error = reason_of(e)
        else:
            error = None
            for name, n in sorted(self.settings.nodes.items()):
                self.node_box.addItem(n.label(), name)
            if current:
                i = self.node_box.findData(current)
                if i >= 0:
                    self.node_box.setCurrentIndex(i)
        self.node_box.blockSignals(False)
        self._node_changed()
        if error:
            self.say(error, error=True)
        elif not self.settings.nodes:
            self.say("No PACS node configured yet: Settings… adds one.")

    def node(self):
        if self.settings is None or self.node_box.currentData() is None:
            raise PacsError("no PACS node chosen: add one in Settings…")
        return self.settings.nodes[self.node_box.currentData()]

    def _date_preset(self, i: int) -> None:
        import datetime
        days = {0: None, 1: 0, 2: 6, 3: 29, 4: 364}[i]
        if days is None:
            self.f_date.clear()
            return
        today = datetime.date.today()
        start = today - datetime.timedelta(days=days)
        self.f_date.setText(f"{start:%Y%m%d}-{today:%Y%m%d}")

    def query(self, level: str = "study", study_uid: str = "") -> Query:
        return Query(patient=self.f_patient.text(), patient_id=self.f_id.text(),
                     birth_date=self.f_birth.text(), date=self.f_date.text(),
                     modality=self.f_modality.text(), accession=self.f_accession.text(),
                     description=self.f_description.text() if level == "study" else "",
                     study_uid=study_uid, level=level).checked()

    def _run(self, fn, done, what: str, button=None, progress=None, failed=None) -> Job | None:
        """``fn`` on a worker thread; ``done``/``progress``/``failed`` connected before it starts
        (a worker that fails at once emitted before a later ``connect``: the slot never ran)."""
        job = Job(fn, self)

        def finish(result):
            if button is not None:
                button.setEnabled(True)
            done(result)

        def fail(msg):
            if button is not None:
                button.setEnabled(True)
            self.say(msg, error=True)

        job.done.connect(finish)
        job.failed.connect(fail)
        if progress is not None:
            job.progress.connect(progress)
        if failed is not None:
            job.failed.connect(failed)
        if button is not None:
            button.setEnabled(False)
        self.say(what)
        self._jobs = [j for j in self._jobs if j.running()] + [job]
        return job.start()

    # ------------------------------------------------------------------ query
    def test_node(self) -> None:
        from imaging_assist.pacs import api
        try:
            node, s = self.node(), self.settings
        except PacsError as e:
            self.say(reason_of(e), error=True)
            return
        self._run(lambda j: api.echo(node, s),
                  lambda t: self.say(f"{node.label()}: {'C-ECHO' if node.is_dimse else 'QIDO-RS'} "
                                     f"ok in {t * 1000:.0f} ms"),
                  f"testing {node.label()}…", self.b_test)

    def search(self) -> None:
        from imaging_assist.pacs import api
        if not self.b_search.isEnabled():  # a search runs (Enter in a filter field): one at a time
            return
        try:
            node, s, q = self.node(), self.settings, self.query()
        except PacsError as e:
            self.say(reason_of(e), error=True)
            return
        no = self._list_no
        self._run(lambda j: api.find(node, q, s), lambda rows: self._show_studies(rows, no),
                  f"searching {node.label()}…", self.b_search)

    def _node_changed(self, *_) -> None:
        """The study list belongs to the node chosen in the Node box: choosing another clears
        it, and what the old node still answers (a search, a series listing) is dropped."""
        name = self.node_box.currentData()
        if name == self._list_node:
            return
        self._list_node = name
        self._list_no += 1
        if self.tree.topLevelItemCount() or not self.b_search.isEnabled():
            self.tree.clear()
            self.say("")

    def _show_studies(self, rows: list[dict], no: int) -> None:
        if no != self._list_no:  # the node was changed while it searched
            return
        self._list_no += 1
        self.tree.clear()
        for r in rows:
            it = QTreeWidgetItem([_person(r["patient_name"]), r["patient_id"], _date(r["study_date"]),
                                  r["study_description"], r["modalities"], _n(r["n_series"]),
                                  _n(r["n_instances"])])
            it.setData(0, UID_ROLE, r["study_uid"])
            it.setData(0, KIND_ROLE, "study")
            it.setChildIndicatorPolicy(QTreeWidgetItem.ShowIndicator)
            self.tree.addTopLevelItem(it)
        for c in range(len(STUDY_COLS)):
            self.tree.resizeColumnToContents(c)
        notes = list(getattr(rows, "notes", ()) or ())
        more = (f" ({'; '.join(notes)})" if notes else
                f" (the first {len(rows)}: the node has more matches; narrow the filters)"
                if getattr(rows, "truncated", False) else "")
        self.say(f"{len(rows)} {'study' if len(rows) == 1 else 'studies'}{more}",
                 error=bool(more))

    def _expand(self, item: QTreeWidgetItem) -> None:
        """Expanding a study asks for its series (once)."""
        from imaging_assist.pacs import api
        if item.data(0, KIND_ROLE) != "study" or item.childCount():
            return
        try:
            node, s = self.node(), self.settings
            q = Query(study_uid=item.data(0, UID_ROLE), level="series").checked()
        except PacsError as e:
            self.say(reason_of(e), error=True)
            return
        no = self._list_no

        def show(rows):
            if no != self._list_no or item.childCount():  # the list was replaced, or listed twice
                return
            rows.sort(key=lambda r: (r["series_number"] is None, r["series_number"] or 0))
            for r in rows:
                desc = r["series_description"] or "(no description)"
                c = QTreeWidgetItem(["", "", "", f"{_n(r['series_number'])}  {desc}",
                                     r["modality"], "", _n(r["n_instances"])])
                c.setData(0, UID_ROLE, r["series_uid"])
                c.setData(0, KIND_ROLE, "series")
                item.addChild(c)
            if not rows:
                item.setChildIndicatorPolicy(QTreeWidgetItem.DontShowIndicator)
            self.say(f"{len(rows)} series in the study")

        self._run(lambda j: api.find(node, q, s), show, "listing series…")

    def _selection_changed(self) -> None:
        self.b_retrieve.setEnabled(bool(self.tree.selectedItems()) and self.transfer is None)

    # ------------------------------------------------------------------ retrieve
    def selection(self) -> list[tuple[str, list[str]]]:
        """[(study UID, [series UIDs] or [] for the whole study)] of the selected rows."""
        plan: dict[str, list[str] | None] = {}
        for it in self.tree.selectedItems():
            if it.data(0, KIND_ROLE) == "study":
                plan[it.data(0, UID_ROLE)] = None
            else:
                study = it.parent().data(0, UID_ROLE)
                if plan.get(study, []) is not None:
                    plan.setdefault(study, []).append(it.data(0, UID_ROLE))
        return [(k, v or []) for k, v in plan.items()]

    def retrieve(self) -> None:
        from imaging_assist.pacs import api
        if self.transfer is not None:  # one transfer at a time (Cancel stops it)
            return
        try:
            node, s = self.node(), self.settings
        except PacsError as e:
            self.say(reason_of(e), error=True)
            return
        plan = self.selection()
        if not plan:
            return
        out = self.out_dir
        self.progress_tree.clear()
        self.bars.clear()
        names = self._series_names()

        def work(job: Job):
            results = []
            for study, series in plan:
                if job.cancel.is_set():
                    break
                announced = []
                holder: dict = {}  # this study's sink: its per-series counts go with each message

                def on_instance(path, series_uid, study=study, announced=announced):
                    if not announced:  # the first image: the browser can show it now
                        announced.append(path)
                        job.progress.emit(("first", os.path.join(out, study), ""))

                def on_plan(sink, study=study, holder=holder):
                    holder["sink"] = sink
                    job.progress.emit(("plan", study, dict(sink.series_total),
                                       dict(sink._series_done)))

                def on_step(d, t, uid, study=study, holder=holder):
                    sink = holder.get("sink")
                    if sink is not None and uid:  # counted now, not when the GUI reads the message
                        job.progress.emit(("step", study, uid, *sink.series_progress(uid)))

                try:
                    res = api.get(node, study, out, series_uids=series, settings=s,
                                  progress=on_step, on_instance=on_instance, cancel=job.cancel,
                                  on_plan=on_plan)
                except PacsError as e:
                    results.append((study, e))
                    continue
                results.append((study, res))
            return results

        self._names = names
        self.transfer = self._run(work, self._retrieved, f"retrieving from {node.label()}…",
                                  progress=self._on_progress,
                                  failed=self._transfer_failed)  # (the error line itself: _run's)
        self.b_retrieve.setEnabled(False)
        self.b_cancel.setEnabled(True)

    def _series_names(self) -> dict[str, str]:
        names = {}
        for i in range(self.tree.topLevelItemCount()):
            st = self.tree.topLevelItem(i)
            for k in range(st.childCount()):
                c = st.child(k)
                names[c.data(0, UID_ROLE)] = f"{c.text(4)} {c.text(3).strip()}"
        return names

    def _on_progress(self, msg) -> None:
        kind = msg[0]
        if kind == "plan":
            study, totals, done = msg[1], msg[2], msg[3]
            for uid, total in totals.items():
                self._bar(study, uid, total).setValue(done.get(uid, 0))
        elif kind == "step":
            study, uid, d, t, failed = msg[1:]
            self._bar(study, uid, t).setValue(d)
            # a series whose instances all ended is "done" only when none of them failed
            self.bars[(study, uid)][0].setText(2, f"{failed} failed" if failed and d >= t else
                                               "done" if d >= t else "receiving")
        elif kind == "first":
            self.studyArrived.emit(msg[1], False)

    def _bar(self, study: str, uid: str, total: int) -> QProgressBar:
        """The progress row of one series of one study (``self.bars[(study, uid)]``)."""
        if (study, uid) not in self.bars:
            it = QTreeWidgetItem([self._names.get(uid, uid), "", "waiting"])
            self.progress_tree.addTopLevelItem(it)
            bar = QProgressBar()
            bar.setFormat("%v / %m")
            self.progress_tree.setItemWidget(it, 1, bar)
            self.bars[(study, uid)] = (it, bar)
        bar = self.bars[(study, uid)][1]
        bar.setMaximum(max(total, 1))
        return bar

    def cancel(self) -> None:
        if self.transfer is not None:
            self.transfer.cancel.set()
            self.b_cancel.setEnabled(False)
            self.say("cancelling… (files already complete are kept; retrieving again resumes)")

    def _transfer_failed(self, _msg) -> None:
        """The retrieve worker stopped on an error that is not one study's (said by _run): its rows
        that did not end are failed, and Retrieve can be pressed again."""
        self.transfer = None
        self.b_cancel.setEnabled(False)
        for item, _bar in self.bars.values():
            if item.text(2) != "done":
                item.setText(2, "failed")
        self._selection_changed()

    def _retrieved(self, results) -> None:
        self.transfer = None
        self.b_cancel.setEnabled(False)
        self._selection_changed()
        lines, error = [], False
        for study, res in results:
            failed = isinstance(res, Exception)
            state = ("failed" if failed else "cancelled" if res.cancelled else
                     "failed" if res.failures else "done")
            # the failures of each series (those found after the transfer included: an instance
            # listed but never received)
            lost: dict[str, int] = {}
            for f in ([] if failed else res.failures):
                lost[f.series_instance_uid] = lost.get(f.series_instance_uid, 0) + 1
            for (row_study, uid), (item, _bar) in self.bars.items():  # this study's rows only
                if row_study != study:
                    continue
                if lost.get(uid):
                    item.setText(2, f"{lost[uid]} failed")
                elif item.text(2) != "done":
                    item.setText(2, state)
            if failed:
                lines.append(reason_of(res))
                error = True
                continue
            self.last_result = res
            how = {"get": "C-GET", "move": "C-MOVE", "wado": "WADO-RS"}[res.method]
            text = (f"{res.written} instances by {how}, {res.skipped} already here, "
                    f"{len(res.failures)} failed" + (" — cancelled" if res.cancelled else ""))
            if res.failures:
                text += f" (first: {res.failures[0].reason})"
                error = True
            lines += [text] + [f"note: {n}" for n in res.notes]
            if res.written or res.skipped:
                self.studyArrived.emit(res.study_dir, not res.cancelled)
        self.say("  ·  ".join(lines) or "nothing retrieved", error=error)

    # ------------------------------------------------------------------ dialogs
    def open_settings(self) -> None:
        from .nodes_dialog import NodesDialog
        d = NodesDialog(self)
        d.saved.connect(self.reload_nodes)
        d.exec()
        self.reload_nodes()

    def open_send(self, paths: list[str] | None = None) -> None:
        from .send_dialog import SendDialog
        d = SendDialog(self, paths=paths if paths else _current_study_files(self.parent()))
        d.show()
        self._send_dialog = d

    def closeEvent(self, e) -> None:  # a transfer running in the background is cancelled
        if self.transfer is not None:
            self.transfer.cancel.set()
        super().closeEvent(e)


def _person(pn: str) -> str:
    """DICOM PN ``Family^Given^Middle^Prefix^Suffix`` as "Family, Given Middle" (as OHIF), from
    the first component group written (alphabetic, else ideographic, else phonetic)."""
    groups = (pn or "").split("=")
    group = next((g for g in groups if g.replace("^", "").strip()), "")
    parts = [p.strip() for p in group.split("^")]
    family, rest = parts[0], " ".join(p for p in parts[1:] if p)
    return f"{family}, {rest}" if family and rest else (family or rest)


def _n(v) -> str:
    return "" if v is None else str(v)


def _date(d: str) -> str:
    return f"{d[:4]}-{d[4:6]}-{d[6:]}" if len(d) == 8 and d.isdigit() else d


def _current_study_files(win) -> list[str]:
    """The files of the study shown in the main window (regular files, not zip members)."""
    loading = getattr(win, "loading", None)
    index = getattr(loading, "index", None)
    key = getattr(loading, "current_key", None)
    if index is None or key is None:
        return []
    series = index.find_series(key)
    study = index.study_of(series) if series else None
    if study is None:
        return []
    return [r.path for s in study.series for r in s.instances if getattr(r, "member", None) is None]


def show_pacs_window(win) -> PacsWindow:
    w = getattr(win, "_pacs_window", None)
    if w is None:
        w = PacsWindow(win)
        if hasattr(win, "open_path"):
            w.studyArrived.connect(lambda path, complete: win.open_path(path))
        win._pacs_window = w
    w.show()
    w.raise_()
    w.activateWindow()
    return w


def pacs_action(win) -> QAction:
    """File → PACS (query / retrieve / send)… for a main window."""
    a = QAction("&PACS (query / retrieve / send)…", win)
    a.setStatusTip("Query a PACS, retrieve studies into the browser, send studies and results")
    a.triggered.connect(lambda: show_pacs_window(win))
    win.a_pacs = a
    return a
