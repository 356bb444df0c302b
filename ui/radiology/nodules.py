"""CT lung nodules in the viewer (issue 21): Shift+click (or ``N`` over) a nodule in any plane.

The click becomes a patient (LPS) point through the view's own geometry
(:meth:`SliceView.point_kji` -> :meth:`Volume.index_to_lps`), the engine's
:func:`imaging_assist.nodules.analysis.analyze_at` runs on a worker thread (its outcome comes
back through a queued Qt signal, so the window never waits), and the outcome is

* the 3-D mask as one label layer ("Nodules", one label per nodule) on all three planes,
* the 3-D heat map as one heat-map layer (hidden and flagged when the explanation failed its
  sanity check, or when the engine says the heat map is not meaningful),
* an entry in the Nodules dock: id, volume, long/short axis, mean HU, density impression,
  malignancy likelihood against its threshold (decision withheld when out of distribution),
  "Not for clinical use".  Clicking an entry moves every plane to its centre; Del removes it.

Nodules belong to their series (kept per series key while the session lasts, shown again when
the reader comes back to it), and every analysed nodule is handed to the session run log
(:mod:`imaging_assist_ui.ai.session_runs`) for the report and DICOM exports when the engine
offers that.

The heavy numpy work (cropping the full-grid mask and heat map to their bounding box) is done
on the worker; the GUI thread only pastes crops into the layer arrays.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (QDockWidget, QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QProgressBar,
                               QPushButton, QVBoxLayout, QWidget)

from imaging_assist.errors import UserError
from imaging_assist.layers import LABEL_PALETTE, HeatmapLayer, LabelLayer, Shape, ShapesLayer

from ..shared.text import one_line
from ..shared.theme import DOCK_MIN_WIDTH
from ..shared.theme import ERROR_FG, MUTED, WARN_FG
from .nodule_results import (Nodule, bbox, heat_flag, malignancy_card, nodule_run, operating_point_line,
                             sanity_flag, series_key, study_of)
from ..shared.workers import worker_thread

log = logging.getLogger(__name__)

ENTRY_ROLE = Qt.UserRole + 1
NOT_CLINICAL = "Research models — not for clinical use"
HELP_TEXT = "Shift+click a nodule (or press N over it) in any plane of a CT series to analyse it."
MASK_LAYER = "Nodules"
AXES_LAYER = "Nodule diameters"


def analyze(volume, point_lps, nodule_id=None, explain=True):
    """The engine call, at module level so that tests can wrap it (never replace it)."""
    from imaging_assist.nodules.analysis import analyze_at

    return analyze_at(volume, point_lps, nodule_id=nodule_id, explain=explain)


def _mm(v) -> str:
    return "—" if v is None else f"{float(v):.1f}"


def _shared_box(box, other):
    """The part of ``box`` inside the box ``other`` (volume grid), and the same part indexed in
    ``other``'s box; None when they do not meet."""
    inter = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(box, other))
    if not all(s.start < s.stop for s in inter):
        return None
    return inter, tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(inter, other))


class _Bridge(QObject):
    """The worker emits these; Qt delivers them on the GUI thread (queued)."""

    finished = Signal(int, str, object)   # token, status ("done", "none", "error"), payload


def _analyze_job(volume, point_lps, nodule_id, token, bridge):
    """Worker: run the engine, then cut the full-grid arrays down to their bounding box."""
    status, payload = "error", None
    try:
        r = analyze(volume, tuple(float(x) for x in point_lps), nodule_id=nodule_id, explain=True)
        if not getattr(r, "found", False):
            status, payload = "none", r
        else:
            mask = np.asarray(r.mask, bool)
            heat = None if getattr(r, "heatmap", None) is None else np.asarray(r.heatmap, np.float32)
            shape = tuple(volume.array.shape[:3])
            if mask.shape != shape or (heat is not None and heat.shape != shape):
                raise UserError(f"the engine's mask {mask.shape} is not on the volume grid {shape}")
            box = bbox(mask, heat)
            if box is None or not mask.any():
                status, payload = "none", r
            else:
                hm = None if heat is None else np.ascontiguousarray(heat[box])
                if hm is not None:
                    hm[~np.isfinite(hm)] = 0.0
                card = None
                try:
                    card = malignancy_card()
                    flag = sanity_flag(card) if hm is not None else ""
                except Exception as e:  # noqa: BLE001 - unknown is said, never taken as passed
                    flag = f"note: the Grad-CAM sanity check could not be read ({type(e).__name__})"
                if flag and flag not in r.warnings:
                    r.warnings.append(flag)
                local = np.ascontiguousarray(mask[box])
                # Only the bounding box is kept: full-grid copies held per nodule would cost
                # ~0.4 GB each on a 300-slice CT.  Exports rebuild the grid from the box.
                r.mask, r.heatmap = None, None
                status, payload = "done", (r, box, local, hm, card)
    except UserError as e:
        payload = one_line(e)
    except Exception as e:  # noqa: BLE001 - one line in the panel, details in the log
        log.debug("nodule analysis failed", exc_info=True)
        payload = f"{type(e).__name__}: {one_line(e)}"
    try:
        bridge.finished.emit(token, status, payload)
    except RuntimeError:  # the window was closed meanwhile
        pass
    return status


class NodulePanel(QWidget):
    """The dock's widget: help line, busy bar, one-line status, the list, Delete, the disclaimer."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.help = QLabel(HELP_TEXT)
        self.help.setWordWrap(True)
        self.help.setStyleSheet(f"color: {MUTED};")
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)  # indeterminate: a busy indicator
        self.busy.setTextVisible(False)
        self.busy.hide()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.list = QListWidget()
        self.list.setObjectName("NodulesList")
        self.list.setWordWrap(True)
        self.list.setAlternatingRowColors(True)
        self.list.setSpacing(2)
        self.delete_btn = QPushButton("Delete")
        self.delete_btn.setToolTip("Remove the selected nodule (Del)")
        self.delete_btn.setEnabled(False)
        self.compare_btn = QPushButton("Compare with prior…")
        self.compare_btn.setToolTip("The selected nodule's growth since the same nodule in an older study of this "
                                    "patient (analyse it there first): volume change, doubling time")
        self.compare_btn.setEnabled(False)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.compare_btn)
        row.addStretch(1)
        row.addWidget(self.delete_btn)
        self.disclaimer = QLabel(NOT_CLINICAL)
        self.disclaimer.setStyleSheet(f"color: {ERROR_FG}; font-weight: 600;")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 4, 6, 6)
        lay.setSpacing(4)
        lay.addWidget(self.help)
        lay.addWidget(self.busy)
        lay.addWidget(self.status)
        lay.addWidget(self.list, 1)
        lay.addLayout(row)
        lay.addWidget(self.disclaimer)


class NoduleTool(QObject):
    """The main window's nodule component (``win.nodules``)."""

    analysed = Signal(object)   # the Nodule added or updated
    noneFound = Signal(str)     # the one line shown
    failed = Signal(str)        # the one line shown
    busyChanged = Signal(bool)

    def __init__(self, win):
        super().__init__(win)
        self.w = win
        self.doc = win.doc
        self.by_series: dict[str, list[Nodule]] = {}
        self._numbers: dict[str, int] = {}  # last nodule number given per series
        self._layers: dict[str, tuple] = {}  # series key -> (label layer, heat-map layer or None)
        self._demo_done: set[str] = set()  # series whose demo nodules were analysed (GUI demo)
        self._queue: list[tuple] = []
        self._token = 0
        self._ctx: dict | None = None
        self.job = None
        self.last_line = ""
        self.history: list[Nodule] = []   # every analysis in order (tests and the log read it)
        self._bridge = _Bridge(self)
        self._bridge.finished.connect(self._on_finished)
        self.panel = NodulePanel()
        self.list = self.panel.list
        self.list.itemClicked.connect(self._jump_item)
        self.list.itemActivated.connect(self._jump_item)
        self.list.currentItemChanged.connect(self._selection_changed)
        self.panel.delete_btn.clicked.connect(self.delete_selected)
        self.panel.compare_btn.clicked.connect(self.compare_menu)
        # Del in the list: the window's Delete action hands it here while the list has the focus
        # (a shortcut of the list's own was ambiguous with that action's Del: Qt fired neither)
        self.dock = QDockWidget("Nodules", win)
        self.dock.setObjectName("NodulesDock")
        self.dock.setWidget(self.panel)
        self.dock.setMinimumWidth(DOCK_MIN_WIDTH)
        win.addDockWidget(Qt.RightDockWidgetArea, self.dock)
        md = getattr(win, "measure_dock", None)
        if md is not None:
            win.tabifyDockWidget(md, self.dock)
        self.dock.hide()
        for a in win.menuBar().actions():
            if a.menu() is not None and a.text() == "&View":
                a.menu().addAction(self.dock.toggleViewAction())
        for v in win.view_area.all_views():
            v.pointPicked.connect(self._picked)
        self.doc.volumeChanged.connect(self._on_volume)
        win.loadFinished.connect(self._on_loaded)

    # ================================================================== state
    @property
    def busy(self) -> bool:
        return self.job is not None

    def nodules(self) -> list[Nodule]:
        """The nodules of the shown series."""
        vol = self.doc.volume
        return list(self.by_series.get(series_key(vol), [])) if vol is not None else []

    def mask_layer(self):
        return next((l for l in self.doc.layers if getattr(l, "nodule_layer", "") == "mask"), None)

    def heat_layer(self):
        return next((l for l in self.doc.layers if getattr(l, "nodule_layer", "") == "heat"), None)

    def _say(self, text: str, kind: str = "info") -> None:
        self.last_line = text
        col = {"problem": ERROR_FG, "warn": WARN_FG}.get(kind, "")
        self.panel.status.setStyleSheet(f"color: {col};" if col else "")
        self.panel.status.setText(text)
        self.panel.status.setToolTip(text)
        try:
            self.w.statusBar().showMessage(text, 10000)
        except RuntimeError:
            pass

    def _show_dock(self):
        self.dock.show()
        self.dock.raise_()

    # ================================================================== clicking
    def why_not(self) -> str:
        """Why the shown series cannot be analysed ("" when it can)."""
        vol = self.doc.volume
        if vol is None:
            return "open a CT series first"
        if (vol.modality or "").upper() != "CT":
            return (f"nodule analysis is for CT series; this one is {vol.modality or 'not DICOM'}"
                    if vol.modality else "nodule analysis is for CT series; this image has no modality")
        if not vol.has_geometry or vol.array.ndim != 3 or vol.array.shape[0] < 2:
            return "nodule analysis needs a CT volume with 3-D geometry (several parallel slices)"
        if vol.loaded is not None and not bool(vol.loaded.all()):
            return "the series is still loading: wait until every slice is read"
        return ""

    def _picked(self, view, kji):
        """A view's Shift+click / N: the point in array coordinates on that view's plane."""
        vol = self.doc.volume
        if getattr(view, "doc", self.doc) is not self.doc:  # a view of another series (a grid viewport)
            self._show_dock()
            self._say("Nodule: analyse it in the single or MPR view of its series (this view shows "
                      "another series than the window's).", "warn")
            return
        why = self.why_not()
        if why:
            self._show_dock()
            self._say(f"Nodule: {why}.", "warn")
            return
        k, j, i = (float(x) for x in kji)
        lps = tuple(float(x) for x in vol.index_to_lps(i, j, k))
        self.doc.set_position((k, j, i))  # every plane shows the clicked point
        self.analyse_at(lps)

    def lps_to_kji(self, lps, vol=None) -> tuple[float, float, float]:
        vol = vol or self.doc.volume
        i, j, k = vol.lps_to_index(lps)
        return float(k), float(j), float(i)

    def analyse_at(self, lps) -> bool:
        """Analyse the nodule at a patient point (LPS, mm) of the shown series; queued while
        another analysis runs.  False (with one line) when the series cannot be analysed."""
        why = self.why_not()
        if why:
            self._say(f"Nodule: {why}.", "warn")
            return False
        vol = self.doc.volume
        self._show_dock()
        if self.busy:
            self._queue.append((vol, tuple(lps)))
            self._say(f"Queued: the nodule at {self._lps_text(lps)} (one analysis at a time).")
            return True
        self._start(vol, tuple(lps))
        return True

    @staticmethod
    def _lps_text(lps) -> str:
        return "(" + ", ".join(f"{x:.1f}" for x in lps) + ") mm"

    def _existing_at(self, vol, lps) -> Nodule | None:
        """The nodule of this series whose mask holds the point (a second click on it)."""
        k, j, i = (int(round(x)) for x in self.lps_to_kji(lps, vol))
        for n in self.by_series.get(series_key(vol), []):
            b = n.box
            if all(s.start <= x < s.stop for s, x in zip(b, (k, j, i))):
                if n.mask[k - b[0].start, j - b[1].start, i - b[2].start]:
                    return n
        return None

    def _start(self, vol, lps):
        key = series_key(vol)
        again = self._existing_at(vol, lps)
        if again is not None:
            nid, number = again.id, again.number
        else:
            number = self._numbers.get(key, 0) + 1
            nid = f"N{number}"
        self._token += 1
        self._ctx = {"volume": vol, "lps": lps, "key": key, "number": number, "id": nid,
                     "again": again, "t0": time.perf_counter()}
        self.panel.busy.show()
        self._say(f"Analysing {nid} at {self._lps_text(lps)}…")
        self.busyChanged.emit(True)
        # A plain thread, not imaging_assist.inference.jobs.submit: importing that package pulls
        # torch in on the GUI thread (seconds on the first click); the worker imports it instead.
        # No cancel: one analysis takes about a second.
        self.job = worker_thread(_analyze_job, f"nodule {nid}", (vol, lps, nid, self._token, self._bridge))
        self.job.start()

    # ================================================================== results
    def _on_finished(self, token, status, payload):
        if token != self._token or self._ctx is None:
            return
        ctx, self._ctx, self.job = self._ctx, None, None
        vol, key = ctx["volume"], ctx["key"]
        dt = time.perf_counter() - ctx["t0"]
        if status == "done":
            r, box, mask, heat, card = payload
            again = ctx["again"] or self._existing_after(key, r, vol)
            number = again.number if again is not None else ctx["number"]
            if again is not None and getattr(r, "id", None) != again.id:
                r.id = again.id  # a click beside a listed nodule found that one: keep its id
            if again is None:
                self._numbers[key] = max(self._numbers.get(key, 0), number)
            c = getattr(r, "center_lps", None)
            center = self.lps_to_kji(c, vol) if c is not None else tuple(
                float(s.start + x) for s, x in zip(box, np.argwhere(mask).mean(axis=0)))
            n = Nodule(number, r, key, box, mask, heat, center, heat_flag(r), tuple(vol.array.shape[:3]), card,
                       facts=study_of(vol))
            if getattr(again, "linked_prior", None) is not None:  # re-analysed: the link holds, new numbers
                n.linked_prior = again.linked_prior
                self._growth(n, n.linked_prior)
            lst = self.by_series.setdefault(key, [])
            if again is not None and again in lst:
                lst[lst.index(again)] = n
            else:
                lst.append(n)
            relinked = self._relink(again, n) if again is not None else ""
            self.history.append(n)
            self._log_run(vol, n)
            cur = self.doc.volume
            # the series on screen, on the same grid: reading it again (the reader left and came
            # back while the engine ran) makes a new Volume, already refreshed without this nodule
            if (cur is not None and series_key(cur) == key and tuple(cur.array.shape[:3]) == n.shape
                    and np.allclose(np.asarray(cur.affine, float), np.asarray(vol.affine, float))):
                self._place(cur, n, again)
                self._select(n)
            what = "updated" if again is not None else "added"
            self._say(f"{n.id} {what} in {dt:.1f} s." + relinked + (f" ⚠ {n.heat_flag}." if n.heat_flag else ""),
                      "warn" if n.heat_flag else "info")
            self._finish_busy()
            self.analysed.emit(n)
        elif status == "none":
            reason = one_line(getattr(payload, "reason", "") or "")
            where = self._lps_text(ctx["lps"])
            if not reason or reason.lower().startswith("no nodule found"):
                rest = reason.split(":", 1)[1].strip() if ":" in reason else ""
                text = f"No nodule found at {where}" + (f": {rest}" if rest else ".")
            else:  # refused (not a CT in HU, point outside the series...): not "no nodule"
                text = f"Not analysed at {where}: {reason}"
            self._say(text, "warn")
            self._finish_busy()
            self.noneFound.emit(text)
        else:
            text = f"Nodule analysis failed: {payload or 'unknown error'}"
            self._say(text, "problem")
            self._finish_busy()
            self.failed.emit(text)

    def _finish_busy(self):
        if self._queue:
            vol, lps = self._queue.pop(0)
            if vol is self.doc.volume:
                self._start(vol, lps)
                return
            self._queue.clear()
        self.panel.busy.hide()
        self.busyChanged.emit(False)

    def _existing_after(self, key, r, vol) -> Nodule | None:
        """A click beside a listed nodule that found the same one: its centre in that mask."""
        c = getattr(r, "center_lps", None)
        return None if c is None else self._existing_at(vol, c)

    def _log_run(self, vol, n: Nodule | None = None) -> None:
        """The series' nodules into the session's run log (the report and the DICOM export read
        it): one run of the malignancy model per series, its key views taken now."""
        try:
            from imaging_assist.export.report_pdf import capture
            from imaging_assist.nodules.analysis import MALIGNANCY_MODEL

            from ..ai.session_runs import Run, session_runs

            log_ = session_runs(self.w)
            key = (series_key(vol), MALIGNANCY_MODEL)
            for x in self._series_nodules(vol):
                x.overlaps = []  # nodule_run says them again for those it takes
            nods = [x for x in self._series_nodules(vol) if x.card is not None]
            if not nods:
                log_.runs.pop(key, None)
                return
            card = nods[-1].card
            run = nodule_run(vol, nods, card)
            log_.runs[key] = Run(run, run.item, card, capture(run.item, vol, result=run))
        except Exception as e:  # noqa: BLE001 - exports are secondary: say it, keep the nodule
            log.debug("the run log did not take the nodules", exc_info=True)
            self._say(f"{n.id if n else 'Nodules'}: not added to the report/DICOM exports "
                      f"({type(e).__name__}: {one_line(e)})", "warn")

    # ================================================================== layers and list
    # One label layer and one heat-map layer per series, whose arrays are edited inside each
    # nodule's bounding box only: a whole-volume rebuild on the GUI thread would take seconds
    # on a 300-slice CT.  The label layer is re-made over the same array (cheap) when the set
    # of names changes; the heat map is edited in place.
    def _series_nodules(self, vol) -> list[Nodule]:
        shape = tuple(vol.array.shape[:3])
        return [n for n in self.by_series.get(series_key(vol), []) if n.shape == shape]

    def _refresh(self) -> None:
        """Layers and list of the shown series, reusing its layer arrays when they are there."""
        vol = self.doc.volume
        self.list.clear()
        if vol is None:
            return
        nods = self._series_nodules(vol)
        key = series_key(vol)
        mask, heat = self._layers.get(key, (None, None))
        shape = tuple(vol.array.shape[:3])
        if mask is not None and mask.shape != shape:
            mask = heat = None
        if not nods:
            self._drop_layers(key)
        else:
            if mask is None:  # first nodule of the series, or its volume was read again
                labels = np.zeros(shape, np.uint8 if max(n.number for n in nods) < 256 else np.uint16)
                for n in nods:
                    labels[n.box][n.mask] = n.number
                mask = self._label_layer(labels, nods, None)
                heat = None
                for n in nods:
                    heat = self._paint_heat(heat, n, shape)
                self._layers[key] = (mask, heat)
            for layer in (heat, mask):  # the outline drawn over the heat map
                if layer is not None and layer not in self.doc.layers:
                    self.w.add_layer(layer)
        for n in nods:
            self._add_item(n)
        self._sync_axes(vol)

    def _sync_axes(self, vol) -> None:
        """The series' "Nodule diameters" layer: each nodule's long and short axis drawn on its
        slice of largest area, where they were measured (the calipers a reader checks them by),
        in the nodule's outline colour; rebuilt whole (a few lines), keeping its visibility."""
        old = [l for l in self.doc.layers if getattr(l, "nodule_layer", "") == "axes"]
        visible, opacity = (old[0].visible, old[0].opacity) if old else (True, 1.0)
        for layer in old:
            self.doc.layers.remove(layer)
        shapes = []
        for n in self._series_nodules(vol):
            r, m = n.result, getattr(n.result, "measurements", None) or {}
            color = LABEL_PALETTE[(n.number - 1) % len(LABEL_PALETTE)]
            for key, name, label in (
                    ("long_axis_ends_lps", f"{n.id} long axis {_mm(r.long_axis_mm)} mm",
                     [f"{n.id}  {_mm(r.long_axis_mm)} × {_mm(r.short_axis_mm)} mm"]),
                    ("short_axis_ends_lps", f"{n.id} short axis {_mm(r.short_axis_mm)} mm", [])):
                ends = m.get(key) or []
                if len(ends) == 2:
                    shapes.append(Shape([self.lps_to_kji(p, vol) for p in ends], label=label, color=color,
                                        name=name))
        if shapes:
            layer = ShapesLayer(AXES_LAYER, shapes, visible=visible, opacity=opacity)
            layer.nodule_layer = "axes"
            self.w.add_layer(layer)

    def _label_layer(self, labels, nods, old) -> LabelLayer:
        colors = {n.number: LABEL_PALETTE[(n.number - 1) % len(LABEL_PALETTE)] for n in nods}
        layer = LabelLayer(MASK_LAYER, labels, names={n.number: n.id for n in nods}, colors=colors,
                           opacity=0.5 if old is None else old.opacity,
                           mode="outline" if old is None else old.mode,
                           visible=True if old is None else old.visible)
        layer.nodule_layer = "mask"
        return layer

    def _paint_heat(self, heat, n: Nodule, shape):
        """Paste a nodule's heat map into the series' heat layer (made on first use)."""
        if n.heat is None or not float(n.heat.max(initial=0.0)) > 0:
            return heat
        if heat is None:
            arr = np.zeros(shape, np.float32)
            arr[n.box] = n.heat
            # Grad-CAM display as the AI panel shows it (ui/ai/model_support.heat_display): 0..max,
            # under 20 % hidden; the engine's nodule maps are scaled to 0..1
            hi = max(1e-6, float(n.heat.max()))
            heat = HeatmapLayer("Nodule Grad-CAM", arr, method="Grad-CAM",  # default colormap, fading
                                vmin=0.0, vmax=hi, threshold=0.2 * hi)
            heat.nodule_layer = "heat"
            heat.flag = ""
        else:
            np.maximum(heat.array[n.box], n.heat, out=heat.array[n.box])
            hi = max(heat.vmax, float(n.heat.max()))
            heat.vmax, heat.threshold = hi, 0.2 * hi
            heat._changed()  # the array was edited in place: redraw (Layer's own notification)
        if n.heat_flag and not heat.flag:  # the explanation failed its check: hidden, and said so
            heat.flag = n.heat_flag
            heat.name = heat.name + " ⚠ sanity check failed"
            heat.visible = False
        return heat

    def _place(self, vol, n: Nodule, old: Nodule | None) -> None:
        """Show a new (or re-analysed) nodule of the shown series: box-local edits."""
        key = series_key(vol)
        mask, heat = self._layers.get(key, (None, None))
        if mask is None or mask.shape != tuple(vol.array.shape[:3]):
            self._layers.pop(key, None)
            self._refresh()
            return
        if old is not None:
            self._erase(vol, old)
            mask, heat = self._layers.get(key, (None, None))
            if mask is None:
                self._refresh()
                return
        labels = mask.array
        if n.number > np.iinfo(labels.dtype).max:
            self._layers.pop(key, None)
            self._refresh()
            return
        labels[n.box][n.mask] = n.number
        nods = self._series_nodules(vol)
        new_mask = self._label_layer(labels, nods, mask)
        new_heat = self._paint_heat(heat, n, labels.shape)
        self._swap(key, mask, new_mask, heat, new_heat)
        self.list.clear()
        for x in nods:
            self._add_item(x)
        self._sync_axes(vol)

    def _erase(self, vol, n: Nodule) -> None:
        """Take a nodule out of the layers (its box only; other nodules' masks and heat put back)."""
        key = series_key(vol)
        mask, heat = self._layers.get(key, (None, None))
        if mask is None:
            return
        sub = mask.array[n.box]
        sub[sub == n.number] = 0
        others = [m for m in self._series_nodules(vol) if m is not n and m.number != n.number]
        if not others:
            self._drop_layers(key)
            return
        for m in others:  # overlapping masks: the voxels it had taken go back (in list order, as _refresh)
            part = _shared_box(n.box, m.box)
            if part is not None:
                inter, local = part
                mask.array[inter][m.mask[local]] = m.number
        if heat is not None:
            heat.array[n.box] = 0.0
            for m in others:  # overlapping boxes: put their maps back inside the cleared box
                part = _shared_box(n.box, m.box)
                if m.heat is not None and part is not None:
                    inter, local = part
                    np.maximum(heat.array[inter], m.heat[local], out=heat.array[inter])
            heat._changed()
        self._swap(key, mask, self._label_layer(mask.array, others, mask), heat, heat)

    def _swap(self, key, mask, new_mask, heat, new_heat) -> None:
        stack = self.doc.layers
        if mask is not new_mask:
            if mask in stack:
                i = stack.index_of(mask)
                stack.remove(mask)
                stack.add(new_mask, i)
            else:
                self.w.add_layer(new_mask)
        if new_heat is not None and new_heat not in stack:  # under the outline
            self.w.add_layer(new_heat)
            stack.move(new_heat, stack.index_of(new_mask))
        self._layers[key] = (new_mask, new_heat)

    def _drop_layers(self, key) -> None:
        for layer in self._layers.pop(key, (None, None)):
            if layer is not None and layer in self.doc.layers:
                self.doc.layers.remove(layer)

    def _add_item(self, n: Nodule) -> None:
        lines = n.lines()
        if n.heat_flag:
            lines.append("⚠ " + n.heat_flag)
        lines += ["⚠ " + w for w in n.overlaps]
        for w in getattr(n.result, "warnings", None) or []:
            low = str(w).lower()
            if ("sanity check" in low and "fail" in low) or "outside what the model was trained on" in low:
                continue  # said once above (hidden heat map / withheld decision)
            lines.append(("" if low.startswith("note:") else "⚠ ") + one_line(w))
        item = QListWidgetItem("\n".join(lines))
        item.setData(ENTRY_ROLE, n)
        r, g, b = LABEL_PALETTE[(n.number - 1) % len(LABEL_PALETTE)]
        from .layers_panel import swatch

        item.setIcon(swatch((r, g, b)))
        tip = [f"{n.id}: click to show its centre in every plane.", n.result.text if hasattr(n.result, "text") else ""]
        op = operating_point_line(n.result)
        if op:
            tip.append(f"Threshold: {op}")
        ood = getattr(n.result, "ood", None) or {}
        if isinstance(ood, dict) and ood.get("flagged") and ood.get("reasons"):
            tip.append("Outside the training data: " + "; ".join(map(str, ood["reasons"])))
        tip.append(NOT_CLINICAL + ".")
        item.setToolTip("\n".join(t for t in tip if t))
        ood = getattr(n.result, "ood", None) or {}
        if isinstance(ood, dict) and ood.get("flagged"):
            item.setForeground(QColor(WARN_FG))
        self.list.addItem(item)

    def _select(self, n: Nodule) -> None:
        for row in range(self.list.count()):
            if self.list.item(row).data(ENTRY_ROLE) is n:
                self.list.setCurrentRow(row)
                return

    def entry_lines(self) -> list[str]:
        """The list as shown, one string per line."""
        out = []
        for row in range(self.list.count()):
            out += self.list.item(row).text().splitlines()
        return out

    def _jump_item(self, item) -> None:
        n = item.data(ENTRY_ROLE) if item is not None else None
        if n is not None:
            self.jump_to(n)

    def jump_to(self, n: Nodule) -> None:
        """Every plane to the nodule's centre."""
        if self.doc.volume is None:
            return
        self.doc.set_position(n.center_kji)

    def delete(self, n: Nodule) -> None:
        lst = self.by_series.get(n.series, [])
        if n in lst:
            lst.remove(n)
        relinked = self._relink(n, None)
        vol = self.doc.volume
        if vol is not None:
            self._erase(vol, n)
            self._log_run(vol)
            self.list.clear()
            for x in self._series_nodules(vol):
                self._add_item(x)
            self._sync_axes(vol)
        self._say(f"{n.id} deleted." + relinked)

    # ================================================================== growth
    def _selection_changed(self, *_):
        on = self.list.currentItem() is not None
        self.panel.delete_btn.setEnabled(on)
        self.panel.compare_btn.setEnabled(on)

    def selected(self) -> Nodule | None:
        item = self.list.currentItem()
        return item.data(ENTRY_ROLE) if item is not None else None

    def priors_of(self, n: Nodule) -> list[Nodule]:
        """Nodules analysed this session on an older study of the same patient (newest first);
        one under another patient name or birth date for the same Patient ID is said (warning)."""
        f = n.facts
        if not f.get("patient_id") or not f.get("study_date"):
            return []
        out = [m for key, lst in self.by_series.items() if key != n.series for m in lst
               if m.facts.get("patient_id") == f["patient_id"] and m.facts.get("study_date")
               and m.facts["study_date"] < f["study_date"] and m.facts.get("study_uid") != f.get("study_uid")]
        out = sorted(out, key=lambda m: (m.facts["study_date"], m.id), reverse=True)
        if not out:
            return out
        # the same Patient ID under another name or birth date (a typo, or another patient) is
        # offered, and said: the names are the loaded index's (the facts keep no name)
        from imaging_assist import viewing

        index = getattr(getattr(self.w, "loading", None), "index", None)
        studies = {st.uid: st for p in (index.patients if index is not None else []) for st in p.studies}
        who = {uid: viewing.study_identity(index, studies[uid]) for uid in
               {x.facts.get("study_uid") for x in [n, *out]} if uid in studies}
        here, said = who.get(f.get("study_uid")), []
        for m in out:
            there = who.get(m.facts.get("study_uid"))
            note = viewing.identity_note(there, here) if here is not None and there is not None else ""
            if note:
                said.append(f"{m.id} of {m.facts['study_date']}: {note}")
        if said:
            self._say(f"{n.id}: " + "; ".join(said), "warn")
        return out

    def compare_menu(self) -> None:
        """Pick the same nodule in a prior study (the reader links them; nothing is registered)."""
        from PySide6.QtWidgets import QMenu

        n = self.selected()
        if n is None:
            return
        priors = self.priors_of(n)
        if not priors:
            why = ("this series has no study date" if not n.facts.get("study_date") else
                   "no nodule of an older study of this patient was analysed in this session: open the prior, "
                   "Shift+click the same nodule there, come back and compare")
            self._say(f"{n.id}: no prior to compare with ({why}).", "warn")
            return
        menu = QMenu(self.panel)
        for m in priors:
            v = getattr(m.result, "volume_mm3", None)
            a = menu.addAction(f"{m.id} · {m.facts['study_date']} · {m.facts.get('series') or m.series}"
                               + (f" · {v:,.0f} mm³" if v is not None else ""))
            a.triggered.connect(lambda _c=False, m=m: self.link(n, m))
        self._menu = menu  # tests pick from it
        menu.popup(self.panel.compare_btn.mapToGlobal(self.panel.compare_btn.rect().bottomLeft()))

    @staticmethod
    def _growth(n: Nodule, prior: Nodule):
        """Compute and keep ``n``'s growth since ``prior`` (``n.result.growth``, the results.json
        entry); that dict, or the one-line reason it cannot be computed."""
        from imaging_assist.nodules.growth import compare

        try:
            d = compare(prior.result.to_dict(), prior.facts, n.result.to_dict(), n.facts)
        except ValueError as e:
            n.result.growth = None
            return one_line(e)
        n.result.growth = d
        return d

    def _relink(self, prior: Nodule, new: Nodule | None) -> str:
        """The nodules linked to ``prior`` when it is deleted (``new`` None: their growth goes) or
        analysed again as ``new`` (their growth is computed again against it), in their entries
        and in the session run log the report and the DICOM export read.  What was done, as a
        sentence for the status line ("" when nothing was linked)."""
        from imaging_assist.nodules.analysis import MALIGNANCY_MODEL

        from ..ai.session_runs import session_runs

        said, linked = [], [m for lst in self.by_series.values() for m in lst if m.linked_prior is prior]
        for m in linked:
            g = self._growth(m, new) if new is not None else None
            m.linked_prior = new if isinstance(g, dict) else None
            if new is None:
                m.result.growth = None
            said.append(f"{m.id}'s growth " + ("computed again" if isinstance(g, dict) else
                                               f"removed ({g})" if g else "removed"))
            run = session_runs(self.w).runs.get((m.series, MALIGNANCY_MODEL))
            for nd in (run.item.get("nodules") or []) if run is not None else []:
                if isinstance(nd, dict) and nd.get("id") == m.id:
                    if m.result.growth:
                        nd["growth"] = dict(m.result.growth)
                    else:
                        nd.pop("growth", None)
        vol = self.doc.volume
        if vol is not None and any(m.series == series_key(vol) for m in linked):  # shown: their entries
            self.list.clear()
            for x in self._series_nodules(vol):
                self._add_item(x)
        return "".join(f" {x}." for x in said)

    def link(self, n: Nodule, prior: Nodule):
        """``n``'s growth since ``prior``: shown in its entry, in the report and the exports."""
        g = self._growth(n, prior)
        n.linked_prior = None if isinstance(g, str) else prior  # refused: an earlier link's growth is gone too
        vol = self.doc.volume
        if vol is not None and series_key(vol) == n.series:
            self.list.clear()
            for x in self._series_nodules(vol):
                self._add_item(x)
            self._select(n)
            self._log_run(vol, n)
        if isinstance(g, str):
            self._say(f"{n.id}: not compared ({g}).", "warn")
            return None
        self._say(f"{n.id} {n.growth_line}" + "".join(f" ⚠ {w}." for w in g["warnings"]),
                  "warn" if g["warnings"] else "info")
        return g

    def delete_selected(self) -> None:
        item = self.list.currentItem()
        n = item.data(ENTRY_ROLE) if item is not None else None
        if n is not None:
            self.delete(n)

    # ================================================================== series
    def _on_volume(self):
        """A new series: the layers went with the old one; its nodules come back once loaded."""
        self._queue.clear()
        self.list.clear()
        if self.busy:
            self._say("The series changed: the running analysis is kept for its own series.")

    def _on_loaded(self, ok: bool):
        # the window may have put the series' layers back itself: rebuild them and the list
        if ok and self.doc.volume is not None:
            self._refresh()
            self._demo_points()

    def _demo_points(self) -> None:
        """The GUI demo (``win.autorun``): the demo CT's nodule, from the LIDC readers' XML
        (``imaging_assist.demo.nodule_points``), is analysed once per series, as a click would."""
        vol = self.doc.volume
        if getattr(self.w, "autorun", None) is None or vol is None or self.why_not():
            return
        key = series_key(vol)
        if key in self._demo_done:
            return
        self._demo_done.add(key)
        from imaging_assist.demo import nodule_points

        for p in nodule_points().get(vol.series_uid) or []:
            self.analyse_at([float(x) for x in p["point_lps"]])
