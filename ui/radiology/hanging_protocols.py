"""Hanging protocols and remembered positions in the main window (issue 17).

* When a study opens (the first series of another study comes up in the first viewport) the
  protocol for its modality / body part (:mod:`imaging_assist.hanging`) sets the layout and
  fills the viewports (the others are emptied); an explicit ``view --layout`` wins.  The status
  bar names the protocol and says why a viewport stays empty.
* View → "Save layout as protocol for <modality> / <body part>" (also in the toolbar's Layout
  menu) stores the current layout; View → "Hanging protocols…" lists them and removes the
  user's.  Both switches (protocols on opening, remembered positions) are in the View menu
  and kept in the window's settings.
* Where the reader is in each series is noted (``imaging_assist.positions``, by
  SeriesInstanceUID, in the user data folder) and used by ``viewing.start_index``.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, QTimer
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QLabel, QListWidget, QListWidgetItem, QPushButton,
                               QVBoxLayout)

from imaging_assist import hanging, positions

KEY_ROLE = 0x0100 + 11
FLUSH_MS = 2000


def _truthy(v, default=True) -> bool:
    if v is None:
        return default
    return str(v).lower() in ("1", "true", "yes")


class HangingProtocols(QObject):
    def __init__(self, w, reading):
        super().__init__(w)
        self.w, self.reading = w, reading
        self.store = hanging.ProtocolStore()
        self.last = None          # (index id, study uid) last hung
        self.applied = None       # the last Hanging applied
        self._explicit = None
        s = w.settings
        self.enabled = _truthy(s.value("reading/hanging_protocols"))
        self.remember = _truthy(s.value("reading/remember_positions"))
        self.positions = positions.PositionStore()
        positions.activate(self.positions if self.remember else None)
        self._flush = QTimer(self)
        self._flush.setSingleShot(True)
        self._flush.setInterval(FLUSH_MS)
        self._flush.timeout.connect(self.positions.flush)
        w.installEventFilter(self)
        # actions
        A = w._act
        w.a_hang_on = A("Apply hanging protocols when a study opens", None, checkable=True,
                        tip="Layout and series per viewport by modality / body part when a study opens")
        w.a_hang_on.setChecked(self.enabled)
        w.a_hang_on.toggled.connect(self._set_enabled)
        w.a_hang_save = A("Save layout as protocol…", self.save_current,
                          tip="Open studies of this modality / body part in the current layout")
        w.a_hang_list = A("Hanging protocols…", self.show_dialog)
        w.a_remember = A("Open series where I left them", None, checkable=True,
                         tip="A series seen before opens at its last slice / frame (first open: the first image)")
        w.a_remember.setChecked(self.remember)
        w.a_remember.toggled.connect(self._set_remember)
        reading.layout_menu.addSeparator()
        reading.layout_menu.addActions([w.a_hang_save, w.a_hang_list])
        for m in w.menuBar().actions():
            if m.text().replace("&", "") == "View":
                menu = m.menu()
                before = w.a_link
                menu.insertSeparator(before)
                menu.insertActions(before, [w.a_hang_save, w.a_hang_list, w.a_hang_on, w.a_remember])
                menu.insertSeparator(before)
        docs = [w.doc] + [c.doc for c in w.view_area.grid.cells[1:]]
        for d in docs:
            d.positionChanged.connect(lambda axis, d=d: self._moved(d, axis))
        w.doc.volumeChanged.connect(self._main_volume)
        self._update_save_text()

    # ------------------------------------------------------------------ settings
    def _set_enabled(self, on: bool):
        self.enabled = bool(on)
        self.w.settings.setValue("reading/hanging_protocols", "true" if on else "false")

    def _set_remember(self, on: bool):
        self.remember = bool(on)
        self.w.settings.setValue("reading/remember_positions", "true" if on else "false")
        positions.activate(self.positions if on else None)

    # ------------------------------------------------------------------ positions
    def _moved(self, doc, axis: int):
        if not self.remember or doc.volume is None or axis not in (0, -1):
            return
        self.positions.remember(doc.volume, doc.position[0])
        self._flush.start()

    def eventFilter(self, obj, ev):
        if obj is self.w and ev.type() == QEvent.Close:
            self.positions.flush()
            if positions.active() is self.positions:  # a closed window remembers nothing more
                positions.activate(None)
        return False

    # ------------------------------------------------------------------ applying
    def _current(self):
        w = self.w
        index = w.loading.index
        s = index.find_series(w.current_key) if (index is not None and w.current_key) else None
        return index, s

    def _main_volume(self):
        self._update_save_text()
        w = self.w
        if w.doc.volume is None:
            return
        index, s = self._current()
        if s is None:
            return
        st = index.study_of(s)
        key = (id(index), st.uid if st is not None else s.key)
        if key == self.last:
            return
        self.last = key
        self._explicit = w.loading._pending_layout  # `view --layout X`: the reader asked for X
        self.apply(s.key)  # at once (not deferred): code that sets a layout after loading wins

    def apply(self, key: str | None = None):
        """Hang the study of the shown series by its protocol; returns the Hanging or None."""
        w = self.w
        index, s = self._current()
        if not self.enabled or s is None or (key is not None and s.key != key):
            return None
        if self._explicit:
            self._explicit = None
            return None
        p = self.store.match(s.modality, s.body_part)
        h = hanging.plan(p, index, s)
        self.reading.fill_suppressed = True
        try:
            got = w.view_area.layout_mode if w.view_area.layout_mode == h.layout else w.set_layout(h.layout)
            for n, k in enumerate(h.keys[1:], 1):
                cell = w.view_area.grid.cells[n]
                if cell.doc.series is None or cell.doc.series.key != k:
                    self.reading.load_into(n, k)
            # a viewport without a series of this study is empty, as in a fresh layout: it never
            # keeps the previous study's (or patient's) series, hidden ones neither (a 1×1 / MPR
            # study switched to a grid gets its viewports filled from this study and its priors)
            for cell in w.view_area.grid.cells[len(h.keys):]:
                self.reading.empty_cell(cell)
        finally:
            self.reading.fill_suppressed = False
        self._apply_slabs(h)
        self.applied = h
        notes = list(h.notes) + ([f"MPR not possible: {got}"] if got != h.layout else [])
        msg = f"Hanging protocol: {p.name}" + (f" ({'; '.join(notes)})" if notes else "")
        if self.store.warning:
            msg = self.store.warning
        elif p is hanging.FALLBACK and not notes:
            # plain 1×1: nothing to say, and the previous study's protocol is no longer what shows
            if w.statusBar().currentMessage().startswith("Hanging protocol:"):
                w.statusBar().clearMessage()
            return h
        w.statusBar().showMessage(msg, 10000)
        return h

    def _apply_slabs(self, h) -> None:
        """The protocol's thick slabs, view by view (a protocol without slabs leaves the views
        as they are; ``view --slab`` wins over the first study's protocol, as ``--layout`` does)."""
        w = self.w
        if not h.slabs or w.slab_controls.consume_explicit():
            return
        from imaging_assist.slab import Slab
        for v, text in zip(w.view_area.views(), h.slabs):
            v.set_slab(Slab.parse(text) if text else None)
        w.slab_controls.sync(w.active_view())

    # ------------------------------------------------------------------ saving
    def _target(self) -> tuple[str, str]:
        _, s = self._current()
        return (s.modality.strip().upper(), s.body_part.strip().upper()) if s is not None else ("", "")

    def _update_save_text(self):
        mod, bp = self._target()
        a = self.w.a_hang_save
        a.setEnabled(bool(mod))
        a.setText(f"Save layout as protocol for {mod} / {bp or 'any body part'}" if mod
                  else "Save layout as protocol…")

    def save_current(self):
        """Store the current layout as the protocol for the shown series' modality / body part."""
        w = self.w
        index, s = self._current()
        if s is None:
            w.statusBar().showMessage("Open a series first", 5000)
            return None
        mode = w.view_area.layout_mode
        sources = ["current"]
        if mode in ("1x2", "2x2"):
            sources += [hanging.source_of(index, s, c.doc.series) for c in w.view_area.grid.visible_cells()[1:]]
        mod, bp = self._target()
        p = hanging.protocol_from_layout(mode, sources, mod, bp, slabs=[v.slab for v in w.view_area.views()])
        try:
            path = self.store.save(p)
        except (OSError, ValueError) as e:
            w.statusBar().showMessage(f"Could not save the protocol: {e}", 10000)
            return None
        w.statusBar().showMessage(f"Saved: studies of {p.describe()} — in {path}", 10000)
        return p

    def show_dialog(self):
        dlg = ProtocolsDialog(self.store, self.w)
        dlg.exec()
        return dlg


class ProtocolsDialog(QDialog):
    """The protocols in use: the user's (removable) above the built-in rules."""

    def __init__(self, store: hanging.ProtocolStore, parent=None):
        super().__init__(parent)
        self.store = store
        self.setWindowTitle("Hanging protocols")
        self.resize(620, 360)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        self.list = QListWidget()
        self.remove_btn = QPushButton("Remove")
        self.remove_btn.clicked.connect(self.remove_selected)
        self.list.currentItemChanged.connect(lambda *a: self._selection())
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        buttons.rejected.connect(self.reject)
        buttons.addButton(self.remove_btn, QDialogButtonBox.ActionRole)
        lay = QVBoxLayout(self)
        lay.addWidget(self.note)
        lay.addWidget(self.list, 1)
        lay.addWidget(buttons)
        self.refresh()

    def refresh(self):
        self.list.clear()
        for p in self.store.all():
            it = QListWidgetItem(p.describe())
            it.setData(KEY_ROLE, None if p.builtin else list(p.key))
            self.list.addItem(it)
        self.note.setText((self.store.warning + "\n" if self.store.warning else "")
                          + f"First match wins: yours ({self.store.path}), then the built-in rules. "
                          "Save one from View → Save layout as protocol.")
        self._selection()

    def _selection(self):
        it = self.list.currentItem()
        self.remove_btn.setEnabled(it is not None and it.data(KEY_ROLE) is not None)

    def remove_selected(self) -> bool:
        it = self.list.currentItem()
        key = it.data(KEY_ROLE) if it is not None else None
        if not key:
            return False
        try:
            ok = self.store.remove(tuple(key))
        except OSError as e:  # the file's lock held elsewhere for 10 s, or a folder not writable
            self.refresh()
            self.note.setText(f"Could not remove the protocol: {e.strerror or e}")
            return False
        self.refresh()
        return ok
