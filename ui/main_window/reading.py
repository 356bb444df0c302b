"""Reading-day parts of the main window (issue 17): grid layouts (1×2, 2×2) with a series per
viewport, the patient's priors opened beside the current study, reading mode (F11: only the
images and their corner text), docks that hide themselves when empty; it installs the cine bar
(radiology/cine.py) and the hanging protocols / remembered positions
(radiology/hanging_protocols.py)."""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QDockWidget, QMenu, QToolButton

from imaging_assist import viewing
from imaging_assist.dicom.loader import stack_label

from ..radiology.loading import LoadJob
from ..radiology.priors import PriorsPanel


class Reading:
    def __init__(self, w):
        self.w = w
        self.grid = w.view_area.grid
        self.fill_suppressed = False  # a hanging protocol fills the viewports itself
        self._jobs: dict[int, LoadJob] = {}
        self._saved: dict | None = None  # what reading mode hid, to show it again
        self._study = None  # the study of the series last shown in the first viewport
        self.grid.say = lambda text: w.statusBar().showMessage(text, 8000)
        self.grid.seriesDropped.connect(self.load_into)
        for c in self.grid.cells[1:]:
            c.doc.positionChanged.connect(lambda axis: w._sync_slider())
        # actions: layouts on the toolbar and in View, keys Ctrl+1 / Ctrl+2 / Ctrl+4 / Ctrl+3
        A = w._act
        w.a_1x2 = A("1×2 (current beside another series)", None, "Ctrl+2", checkable=True)
        w.a_2x2 = A("2×2 (four series)", None, "Ctrl+4", checkable=True)
        w.a_1x2.triggered.connect(lambda: w.set_layout("1x2"))  # triggered, not toggled: no loop on setChecked
        w.a_2x2.triggered.connect(lambda: w.set_layout("2x2"))
        w.a_single.actionGroup().addAction(w.a_1x2)
        w.a_single.actionGroup().addAction(w.a_2x2)
        w.a_1x2.setIconText("1×2")
        w.a_2x2.setIconText("2×2")
        # one "Layout" button on the toolbar (1×1 / 1×2 / 2×2 / MPR) instead of four: the
        # toolbar keeps room for the stack selector at 1600 px
        tb = w.toolbar
        self.layout_menu = QMenu("Layout", w)
        self.layout_menu.addActions([w.a_single, w.a_1x2, w.a_2x2, w.a_mpr])
        self.layout_button = QToolButton()
        self.layout_button.setMenu(self.layout_menu)
        self.layout_button.setPopupMode(QToolButton.InstantPopup)
        self.layout_button.setToolTip("Layout: 1×1 (Ctrl+1), 1×2 (Ctrl+2), 2×2 (Ctrl+4), MPR (Ctrl+3)")
        self.layout_button.setText("Layout 1×1")
        tb.insertWidget(w.a_single, self.layout_button)
        tb.removeAction(w.a_single)
        tb.removeAction(w.a_mpr)
        w.a_link = A("Link the active viewport by hand", None, "Ctrl+L", checkable=True,
                     tip="Scroll the active viewport with the others although the frames of reference differ")
        w.a_link.triggered.connect(self.toggle_manual_link)
        w.a_reading = w.a_full  # F11
        w.a_full.setText("Reading mode (images only)")
        w.a_full.triggered.disconnect()
        w.a_full.triggered.connect(self.toggle_reading_mode)
        w.a_full.setToolTip("Reading mode: only the images and their corner text  (F11)")
        for m in w.menuBar().actions():
            if m.text().replace("&", "") == "View":
                menu = m.menu()
                menu.insertActions(w.a_mpr, [w.a_1x2, w.a_2x2])
                menu.insertAction(w.a_mpr, w.a_link)
        w.view_area.layoutChanged.connect(self._layout_changed)
        # window presets (combo, menu, keys 1-7 / 9) act on the active viewport's series
        w.view_area.activeViewChanged.connect(self._active_view)
        for c in self.grid.cells[1:]:
            c.doc.windowChanged.connect(lambda d=c.doc: w.presets.doc is d and w.presets.window_changed())
        # display switches (T annotations, O overlays, S smooth) hold for every viewport
        for action, attr in ((w.a_annot, "show_annotations"), (w.a_overlays, "show_overlays"),
                             (w.a_smooth, "smooth")):
            action.toggled.connect(lambda on, attr=attr: self._set_display(attr, on))
        # priors dock, under the studies; hidden while there is no prior
        self.priors = PriorsPanel()
        self.priors.openBeside.connect(self.open_prior)
        self.priors_dock = QDockWidget("Priors (same patient)", w)
        self.priors_dock.setObjectName("PriorsDock")
        self.priors_dock.setWidget(self.priors)
        w.addDockWidget(Qt.LeftDockWidgetArea, self.priors_dock, Qt.Vertical)  # below the studies, not a tab
        self.priors_dock.hide()
        w.doc.volumeChanged.connect(self._main_volume)
        # cine bar (step, loop / bounce, the file's frame rate, keys), hanging protocols and
        # remembered positions
        from ..radiology.cine import install as install_cine
        self.cine = install_cine(w)
        from ..radiology.hanging_protocols import HangingProtocols
        self.hanging = w.hanging = HangingProtocols(w, self)
        # studies and AI results side by side, not two tabs of one dock: the AI models dock
        # goes to the right, above Overlays (where its results arrive as layers)
        md = getattr(w, "model_dock", None)
        if md is not None:
            w.addDockWidget(Qt.RightDockWidgetArea, md)
            w.splitDockWidget(md, w.layers_dock, Qt.Vertical)
        # side bars collapse (Ctrl+B): every dock goes, the toolbar and corner text stay
        self._collapsed: list | None = None
        w.a_side_bars = A("Collapse side bars", None, "Ctrl+B", checkable=True,
                          tip="Hide the docks on both sides (again: bring them back)")
        w.a_side_bars.toggled.connect(self.collapse_side_bars)
        for m in w.menuBar().actions():
            if m.text().replace("&", "") == "View":
                m.menu().insertAction(w.a_full, w.a_side_bars)

    # ------------------------------------------------------------------ layouts
    def _layout_changed(self, mode):
        self.w.a_1x2.setChecked(mode == "1x2")
        self.w.a_2x2.setChecked(mode == "2x2")
        self.layout_button.setText("Layout " + {"single": "1×1", "mpr": "MPR"}.get(mode, mode.replace("x", "×")))
        if mode in ("1x2", "2x2") and not self.fill_suppressed:
            self.fill_empty()

    def fill_empty(self):
        """Empty viewports get the next series: first the priors' matching series, then the
        other series of the current study (browser order)."""
        index = self.w.loading.index
        cur = index.find_series(self.w.current_key) if (index and self.w.current_key) else None
        if cur is None:
            return
        shown = {c.doc.series.key for c in self.grid.visible_cells() if c.doc.series is not None}
        shown |= {job.series.key for n, job in self._jobs.items()}
        shown.add(cur.key)
        cands = [viewing.matching_series(st, cur) for st in viewing.prior_studies(index, cur)]
        here = index.study_of(cur)
        cands += [s for s in (here.series if here else []) if s.is_image]
        for cell in self.grid.empty_cells():
            if cell.number in self._jobs:
                continue
            s = next((s for s in cands if s is not None and s.key not in shown), None)
            if s is None:
                return
            shown.add(s.key)
            self.load_into(cell.number, s.key)

    def load_into(self, number: int, key: str):
        """Show series ``key`` in viewport ``number`` (0: the window's current series)."""
        w = self.w
        index = w.loading.index
        s = index.find_series(key) if index else None
        if s is None or not s.is_image:
            w.statusBar().showMessage("This series has no images to show", 5000)
            return
        if number == 0:
            w.loading._series_chosen(key)
            return
        cell = self.grid.cells[number]
        old = self._jobs.pop(number, None)
        if old is not None:
            old.cancel()
        pat, st = index.patient_of(s), index.study_of(s)
        cached = w.loading._cache.get((key, 0))
        if cached is not None:
            cell.doc.set_volume(cached[0], s, pat, st, stack_label(cached[1], 0))
            return
        job = LoadJob(s, 0, w)

        def live(fn):
            return lambda *a: (self._jobs.get(number) is job) and fn(*a)

        # the stack's label keys its saved measurements, as in the main view (``stack 1 of 2``)
        label = lambda: stack_label(job.plans, 0)  # noqa: E731

        def first(vol, k):
            cell.doc.set_volume(vol, s, pat, st, label())

        def done(vol):
            self._jobs.pop(number, None)
            if cell.doc.volume is not vol:
                cell.doc.set_volume(vol, s, pat, st, label())
            cell.doc.loadFinished.emit()
            cell.view._img_cache = None
            cell.view.update()
            if not job.cancelled:
                w.loading._cache[(key, 0)] = (vol, job.plans)
                w.loading._trim_cache()

        def failed(msg):
            self._jobs.pop(number, None)
            w.statusBar().showMessage(f"Viewport {number + 1}: this series cannot be shown: {msg}", 10000)

        job.first.connect(live(first))
        job.sliceLoaded.connect(live(lambda k: cell.doc.volume is not None and cell.doc.sliceLoaded.emit(k)))
        job.done.connect(live(done))
        job.failed.connect(live(failed))
        self._jobs[number] = job
        job.start()

    def _active_view(self, view):
        p = self.w.presets
        if view is not None and p.doc is not view.doc:
            p.doc = view.doc
            p.rebuild()

    def _set_display(self, attr: str, on: bool):
        for c in self.grid.cells[1:]:
            setattr(c.doc, attr, bool(on))
            c.doc.displayChanged.emit()

    def loading_done(self) -> bool:
        return not self._jobs

    def stop(self) -> None:
        """Every viewport's load stops (the window closes: nothing is left to show it)."""
        for job in self._jobs.values():
            job.cancel()
        self._jobs.clear()

    # ------------------------------------------------------------------ priors
    def empty_cell(self, cell):
        """Viewport ``cell`` shows nothing (as in a fresh layout); its loading stops."""
        job = self._jobs.pop(cell.number, None)
        if job is not None:
            job.cancel()
        if cell.doc.volume is not None:
            cell.doc.set_volume(None)

    def _drop_stale_cells(self):
        """Viewports showing a series of another index (a folder opened since, or the study
        closed) are emptied: a series of another patient must never stay beside the new one.
        So when another patient's series comes up, viewports showing or loading a series of
        any other patient are emptied too (hidden ones included: a later 1×2 / 2×2 shows them).
        A series of another patient the reader drops beside the current one is allowed (its
        viewport says "another patient"): it stays while that patient's series are opened."""
        w = self.w
        index = w.loading.index
        cur = index.find_series(w.current_key) if (index and w.current_key and w.doc.volume is not None) else None
        here = index.study_of(cur) if cur is not None else None
        mine = ([here] if here is not None else []) + viewing.other_studies(index, cur)  # the patient's studies
        ours = lambda st: any(st is m for m in mine)  # noqa: E731
        new_patient = not ours(self._study)
        self._study = here
        for c in self.grid.cells[1:]:
            s = c.doc.series if c.doc.volume is not None else None
            stale = w.doc.volume is None or index is None or (
                c.doc.volume is not None and (s is None or index.find_series(s.key) is not s))
            if not stale and new_patient:
                job = self._jobs.get(c.number)
                stale = any(not ours(index.study_of(x)) for x in (s, job and job.series) if x is not None)
            if stale:
                self.empty_cell(c)

    def _main_volume(self):
        w = self.w
        QTimer.singleShot(0, self._hide_empty_docks)
        self._drop_stale_cells()
        index = w.loading.index
        cur = index.find_series(w.current_key) if (index and w.current_key and w.doc.volume is not None) else None
        studies = self.priors.set_current(index, cur) if cur is not None else []
        if cur is None:
            self.priors.set_current(None, None)
        self.priors_dock.setVisible(bool(studies) and self._saved is None)

    def open_prior(self, study_uid: str):
        """The prior's series that matches the current one, in a 1×2 layout beside it."""
        w = self.w
        index = w.loading.index
        cur = index.find_series(w.current_key) if (index and w.current_key) else None
        st = next((st for st in viewing.other_studies(index, cur) if st.uid == study_uid), None)
        s = viewing.matching_series(st, cur) if st is not None else None
        if s is None:
            w.statusBar().showMessage("That study has no images to show", 5000)
            return
        if w.view_area.layout_mode not in ("1x2", "2x2"):
            w.set_layout("1x2")
        target = next((c for c in self.grid.visible_cells()[1:] if c.doc.series is not None
                       and c.doc.series.key == s.key), None)
        if target is None:
            target = next((c for c in self.grid.empty_cells() if c.number not in self._jobs), None) \
                or self.grid.visible_cells()[1]
            self.load_into(target.number, s.key)

    def toggle_manual_link(self, on: bool):
        av = self.grid.active
        if av is None or av.grid_cell == 0 or self.w.view_area.layout_mode not in ("1x2", "2x2"):
            self.w.a_link.setChecked(False)
            self.w.statusBar().showMessage("Click a viewport other than the first, then link it", 5000)
            return
        note = self.grid.set_manual_link(av.grid_cell, on)
        if note:
            self.w.statusBar().showMessage(note, 10000)

    # ------------------------------------------------------------------ screen space
    def _docks(self):
        w = self.w
        return [d for d in w.findChildren(QDockWidget) if d.parent() is w]

    def _hide_empty_docks(self):
        """Overlays / Measurements docks show themselves when something is added; when a
        series without any comes up they go, so the image gets the room."""
        w = self.w
        if w.pages.currentIndex() != 1 or w.doc.volume is None:
            return
        if not len(w.doc.layers):
            w.layers_dock.hide()
        if not w.doc.measurements:
            w.measure_dock.hide()

    def collapse_side_bars(self, on: bool):
        """Hide every visible dock (left and right) so the images take the width; off: show
        the same docks again.  A dock opened meanwhile stays open."""
        if on and self._collapsed is None:
            self._collapsed = [d for d in self._docks() if d.isVisible()]
            for d in self._collapsed:
                d.hide()
        elif not on and self._collapsed is not None:
            for d in self._collapsed:
                d.show()
            self._collapsed = None
        for v in self.w.view_area.views():
            v.fit()

    @property
    def reading_mode(self) -> bool:
        return self._saved is not None

    def toggle_reading_mode(self):
        """F11: full screen with only the images and their corner text (warnings banner too:
        a data warning is never hidden; and one line "Not for clinical use" under them, the
        status bar's); F11 again brings everything back as it was."""
        w = self.w
        if self._saved is None:
            self._saved = {"docks": [d for d in self._docks() if d.isVisible()],
                           "toolbar": w.toolbar.isVisible(), "menu": w.menuBar().isVisible(),
                           "status": w.statusBar().isVisible(), "bar": w.slider_bar.isVisible(),
                           "full": w.isFullScreen()}
            for d in self._docks():
                d.hide()
            for x in (w.toolbar, w.menuBar(), w.statusBar(), w.slider_bar):
                x.hide()
            w.reading_note.show()  # the status bar's "Not for clinical use", under the images
            w.showFullScreen()
        else:
            s, self._saved = self._saved, None
            w.reading_note.hide()
            for d in s["docks"]:
                d.show()
            w.toolbar.setVisible(s["toolbar"])
            w.menuBar().setVisible(s["menu"])
            w.statusBar().setVisible(s["status"])
            w.slider_bar.setVisible(s["bar"])
            if not s["full"]:
                w.showNormal()
        for v in w.view_area.views():
            v.fit()
