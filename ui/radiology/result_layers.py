"""Result objects of a study shown with the series they refer to.

When a series has finished loading, every SEG that refers to it becomes a label-map layer
(one layer per segment when segments overlap, with a warning), every Parametric Map a
heat-map layer, the findings and measurements of every SR an entry of the "Results"
list (activating an entry shows its image), and the regions of its measurement groups a
shapes layer drawn on the slices they lie in; a softcopy presentation state's annotations
(a reading workstation's arrows, outlines and notes) are a shapes layer too.  Reading and
placing is the engine's (:mod:`imaging_assist.dicom.result_objects`, ``sr_regions``,
``presentation_state``); a result that does not fit the series is one
line in the list and the status bar, never a traceback.  Choosing a result series in the
study browser shows the series it refers to with the result over it.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Qt
from PySide6.QtWidgets import QDockWidget, QListWidget, QListWidgetItem

from imaging_assist.dicom.presentation_state import read_presentation_state
from imaging_assist.dicom.result_objects import (KIND_NAMES, PARAMETRIC_MAP, PDF, PR, SEG, SR, ResultObjectError,
                                                 other_patient, read_parametric_map, read_segmentation, read_sr)
from imaging_assist.dicom.sr_regions import own_measurement_regions, place_regions

from .series_results import series_key

SLICE_ROLE = Qt.UserRole + 1
WINDOW_ROLE = Qt.UserRole + 2


class ResultLayers(QObject):
    """The main window's result-object component (``win.results``)."""

    def __init__(self, win):
        super().__init__(win)
        self.w = win
        self.list = QListWidget()
        self.list.setObjectName("ResultsList")
        self.list.setWordWrap(True)
        self.list.itemActivated.connect(self._jump)
        self.list.itemClicked.connect(self._jump)
        self.dock = QDockWidget("Results", win)
        self.dock.setObjectName("ResultsDock")
        self.dock.setWidget(self.list)
        win.addDockWidget(Qt.RightDockWidgetArea, self.dock)
        self.dock.hide()
        self.messages: list[str] = []  # one-line problems and warnings, newest last
        self._shown_key = None  # the series whose entries the list shows
        self._sr_layers = []  # the SR region layers added, for _hide_own
        self._hidden_as_own: set[int] = set()  # id() of SR regions hidden as the reader's own measurements
        win.loadFinished.connect(self._loaded)
        win.doc.measurementsChanged.connect(self._hide_own)

    # ------------------------------------------------------------------ applying
    def _loaded(self, ok: bool) -> None:
        if ok:
            self.show_results_of_current()

    def show_results_of_current(self) -> None:
        index, vol = self.w.loading.index, self.w.doc.volume
        if index is None or vol is None:
            return
        series = index.find_series(self.w.current_key) if self.w.current_key else None
        if series is None:
            return
        results = index.results_for(series)
        done = vol.__dict__.setdefault("_results_applied", set())
        # issue 17: what this series showed before comes back (series_results.py) - its layers
        # with the document, its list entries from the store - and is not read a second time
        done.update(getattr(l, "result_key", None) for l in self.w.doc.layers if getattr(l, "result_key", None))
        kept = self.w.doc.results_store.results_list(self.w.doc)
        key = series_key(self.w.doc)
        if key != self._shown_key:  # another series: its own list
            self._shown_key = key
            self.list.clear()
            for spec in kept["items"]:
                self._add(spec, keep=False)
            if kept["items"]:
                self.dock.show()
        done.update(kept["keys"])
        for r in [r for r in results if r.key not in done]:
            done.add(r.key)
            kept["keys"].add(r.key)
            self._apply(r, vol)

    def _add(self, spec: dict, keep: bool = True) -> None:
        """One list entry from its spec (text, tooltip, slice, bold, enabled); kept with the series."""
        item = QListWidgetItem(spec["text"])
        if spec.get("tooltip"):
            item.setToolTip(spec["tooltip"])
        if spec.get("slice") is not None:
            item.setData(SLICE_ROLE, spec["slice"])
        elif spec.get("window"):
            item.setData(WINDOW_ROLE, spec["window"])
        else:
            item.setFlags(Qt.ItemIsEnabled)
        if spec.get("bold"):
            f = item.font()
            f.setBold(True)
            item.setFont(f)
        self.list.addItem(item)
        if keep:
            self.w.doc.results_store.results_list(self.w.doc)["items"].append(spec)

    def _say(self, text: str, problem: bool) -> None:
        self.messages.append(text)
        self._add({"text": ("⊘ " if problem else "⚠ ") + text, "tooltip": text})
        self.dock.show()
        self.w.statusBar().showMessage(text, 10000)

    def _apply(self, result_series, vol) -> None:
        kind = result_series.result_kind
        name = result_series.description or KIND_NAMES.get(kind, kind or "")
        for rec in result_series.instances:
            try:
                if kind == SEG:
                    seg = read_segmentation(rec, vol)
                    for layer in seg.layers():
                        layer.result_key = result_series.key
                        self.w.add_layer(layer)
                    for warning in seg.warnings:
                        self._say(f"{name}: {warning}", problem=False)
                elif kind == PARAMETRIC_MAP:
                    pm = read_parametric_map(rec, vol)
                    layer = pm.layer()
                    layer.result_key = result_series.key
                    self.w.add_layer(layer)
                    for warning in pm.warnings:
                        self._say(f"{name}: {warning}", problem=False)
                elif kind == SR:
                    report = read_sr(rec)
                    why = other_patient(report.patient_id, vol)
                    if why:  # its findings are not listed on this patient's series either
                        raise ResultObjectError(f"the structured report {why}")
                    self._add_report(report, vol, name, result_series.key)
                elif kind == PR:
                    self._add_presentation_state(read_presentation_state(rec, vol, result_series.description),
                                                 vol, name, result_series.key)
            except ResultObjectError as e:
                self._say(f"{KIND_NAMES.get(kind, kind)} {name!r} not shown: {e}", problem=True)
            except Exception as e:  # noqa: BLE001 - a reader bug must not take the viewer down
                self._say(f"{KIND_NAMES.get(kind, kind)} {name!r} not shown: {type(e).__name__}: {e}",
                          problem=True)

    def _add_presentation_state(self, ps, vol, name: str, key=None) -> None:
        """A reader's annotations saved by another workstation: drawn as a layer, listed per
        image (click: show it)."""
        shapes = ps.layer.shapes if ps.layer is not None else []
        self._add({"text": f"{ps.label} ({name}): {len(shapes)} annotation{'s' if len(shapes) != 1 else ''}",
                   "bold": True})
        for s in shapes:
            k = int(round(s.position[0]))
            self._add({"text": f"[{k + 1}] {s.text()}", "slice": k,
                       "tooltip": f"image {k + 1} of {vol.n_slices}: click to show it"})
        # its windows join the series' window presets; its entry here applies the first
        presets = vol.window_presets
        for wp in ps.windows:
            if not any(p.name == wp.name and p.center == wp.center and p.width == wp.width for p in presets):
                presets.append(wp)
        if ps.windows:
            wp = ps.windows[0]
            self._add({"text": f"{wp.name}: W {wp.width:g} L {wp.center:g} (click: apply)", "window": wp.to_dict(),
                       "tooltip": "The presentation state's window; also in Image ▸ Window presets"})
            presets_ui = getattr(self.w, "presets", None)
            if presets_ui is not None:
                presets_ui.rebuild()
        if ps.layer is not None:
            ps.layer.result_key = key
            self.w.add_layer(ps.layer)
        for warning in ps.warnings:
            self._say(f"{name}: {warning}", problem=False)
        self.dock.show()

    def _add_report(self, report, vol, name: str, key=None) -> None:
        self._add({"text": f"{report.title} ({name})", "bold": True})
        for it, k in zip(report.items, report.slices_in(vol)):
            self._add({"text": ("" if k is None else f"[{k + 1}] ") + it.text(), "slice": k,
                       "tooltip": "refers to no image of this series" if k is None
                       else f"image {k + 1} of {vol.n_slices}: click to show it"})
        # the groups' regions drawn where they lie (a layer: hidden and shown like the others)
        layer, warnings = place_regions(report, vol, name)
        if layer is not None:
            layer.result_key = key
            self.w.add_layer(layer)
            self._sr_layers.append(layer)
            self._hide_own()
        for warning in report.warnings + warnings:
            self._say(f"{name}: {warning}", problem=False)
        self.dock.show()

    def _hide_own(self) -> None:
        """An SR exported from the reader's own measurements into the study folder would draw
        each of them a second time (dashed) over the editable one: those regions are hidden,
        once, and said so; their ticks in the Overlays panel show them again.  A measurement
        moved or deleted since brings its exported region back."""
        layers = [x for x in self._sr_layers if any(x is y for y in self.w.doc.layers)]
        self._sr_layers = layers
        live = {id(sh) for layer in layers for sh in layer.shapes}
        self._hidden_as_own &= live  # shapes of removed layers: their ids may be reused
        for layer in layers:
            dup = set(own_measurement_regions(layer, self.w.doc.measurements))
            newly = 0
            for n, sh in enumerate(layer.shapes):
                if n in dup and id(sh) not in self._hidden_as_own:
                    self._hidden_as_own.add(id(sh))
                    sh.visible, newly = False, newly + 1
                elif n not in dup and id(sh) in self._hidden_as_own:
                    self._hidden_as_own.discard(id(sh))
                    sh.visible = True
            if newly:
                self._say(f"{layer.name}: {newly} region{'s are' if newly > 1 else ' is'} your own "
                          f"measurement{'s' if newly > 1 else ''}, exported earlier: drawn once, as yours "
                          "(tick one in Overlays to see the exported copy)", problem=False)

    def _jump(self, item: QListWidgetItem) -> None:
        k = item.data(SLICE_ROLE)
        if k is not None and self.w.doc.volume is not None:
            self.w.doc.set_index(0, int(k))
        wd = item.data(WINDOW_ROLE)
        if wd and self.w.doc.volume is not None:  # a presentation state's window
            presets = self.w.doc.volume.window_presets
            p = next((p for p in presets
                      if p.name == wd["name"] and p.center == wd["center"] and p.width == wd["width"]), None)
            if p is None:  # the series was read again since: its presets are the file's
                from imaging_assist.volume import WindowPreset
                p = WindowPreset(**wd)
                presets.append(p)
                if getattr(self.w, "presets", None) is not None:
                    self.w.presets.rebuild()
            self.w.doc.apply_preset(p)

    # ------------------------------------------------------------------ choosing a result series
    def open_result(self, result_series) -> None:
        """The browser chose a result series: show the series it refers to, with it."""
        index = self.w.loading.index
        if result_series.result_kind == PDF:
            self.w.statusBar().showMessage(f"{result_series.description or 'Encapsulated PDF'}: a PDF "
                                           "document stored in DICOM, not an image to show", 8000)
            return
        for uid in result_series.references:
            target = index.find_series(uid) if index else None
            if target is not None and target.is_image:
                if target.key == self.w.current_key and self.w.doc.volume is not None:
                    self.show_results_of_current()
                else:
                    self.w.load_series(target.key)
                return
        what = KIND_NAMES.get(result_series.result_kind, "result")
        ref = result_series.references[0] if result_series.references else None
        self._say(f"{what} {result_series.description!r} refers to "
                  + (f"series {ref}, which is not in this study" if ref else "no series")
                  + ": nothing to show it on", problem=True)
