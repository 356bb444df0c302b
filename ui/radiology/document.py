"""What every view shows: one volume, its window, overlays, measurements and the cursor
position (crosshair).  Views observe it through Qt signals."""

from __future__ import annotations

import math

from PySide6.QtCore import QObject, Signal

from imaging_assist import display
from imaging_assist.layers import Layer, LayerStack, Plane, standard_planes
from imaging_assist.measure import ROI_KINDS, Measurement, remeasure_where_acquired
from imaging_assist.volume import Volume, WindowPreset

from ..shared.render import SliceRenderer
from .series_results import SeriesResults, merge_structure
from ..shared.units import spacing_note


def spacing_known(vol: Volume) -> bool:
    """The loader's verdict (``Volume.spacing_known``), never a guess from warning texts."""
    return bool(vol.spacing_known)


class ViewerDocument(QObject):
    volumeChanged = Signal()
    sliceLoaded = Signal(int)          # k of a slice that just arrived
    loadFinished = Signal()
    windowChanged = Signal()
    displayChanged = Signal()          # invert, annotation/overlay/crosshair visibility
    layersChanged = Signal()
    measurementsChanged = Signal()
    selectionChanged = Signal()
    positionChanged = Signal(int)      # axis whose index changed (-1: several)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.volume: Volume | None = None
        self.renderer: SliceRenderer | None = None
        self.series = None
        self.patient = None
        self.study = None
        self.stack_label = ""
        self.window: WindowPreset | None = None
        self.default_window: WindowPreset | None = None
        self.invert = False
        self.show_annotations = True
        self.show_overlays = True
        self.show_crosshair = True
        self.smooth = True  # bilinear display interpolation (off: see the pixels)
        self.layers = LayerStack()
        self.layers.subscribe(self._on_layers)
        self.measurements: list[Measurement] = []
        self.selected: Measurement | None = None
        self.position = [0, 0, 0]  # crosshair / current slice per array axis (k, j, i)
        self.planes: list[Plane] = [Plane.native()]
        self.loading = False
        # results per series, shared by the viewports of one window: a grid viewport's document
        # is made with the grid (which holds the main document) as its parent
        main = getattr(parent, "main_doc", None)
        self.results_store: SeriesResults = getattr(main, "results_store", None) or SeriesResults()

    # ------------------------------------------------------------------ volume
    def set_volume(self, vol: Volume | None, series=None, patient=None, study=None, stack_label=""):
        if self.volume is not None:
            self.results_store.keep_layers(self)  # they come back with the series
        self.volume = vol
        self.series, self.patient, self.study, self.stack_label = series, patient, study, stack_label
        self.measurements = []
        self.selected = None
        self.layers.clear()
        self.invert = False
        if vol is None:
            self.renderer = None
            self.window = self.default_window = None
            self.volumeChanged.emit()
            return
        self.renderer = SliceRenderer(vol)
        self.default_window = self._initial_window(vol)
        self.window = self.default_window
        n = vol.array.shape[:3]
        loaded = vol.loaded
        from imaging_assist.viewing import start_index
        k = start_index(vol)  # where a reader starts: the first image of the series (not the middle)
        if loaded is not None and loaded.any() and not loaded[k]:
            import numpy as np
            k = int(np.argmax(loaded))
        self.position = [k, n[1] // 2, n[2] // 2]
        self.planes = standard_planes(vol.direction) if vol.has_geometry and n[0] > 1 and not vol.is_cine \
            else [Plane.native()]
        self.results_store.restore_layers(self)
        self.volumeChanged.emit()

    def _initial_window(self, vol: Volume) -> WindowPreset:
        if vol.is_color:
            return WindowPreset("Colour", 127.5, 256, source="auto")
        for p in vol.window_presets:
            if p.source in ("dicom", "voilut"):
                return p
        k = vol.n_slices // 2
        if vol.loaded is not None and vol.loaded.any() and not vol.loaded[k]:
            import numpy as np
            k = int(np.argmax(vol.loaded))
        return display.auto_window(vol.array[k])

    @property
    def mpr_available(self) -> bool:
        return len(self.planes) == 3

    def shape3(self) -> tuple[int, int, int]:
        return tuple(self.volume.array.shape[:3]) if self.volume is not None else (0, 0, 0)

    # ------------------------------------------------------------------ window
    def set_window(self, center: float, width: float, name: str = "", source: str = "user"):
        if self.volume is None:
            return
        center, width = float(center), float(width)
        if not (math.isfinite(center) and math.isfinite(width)):
            return  # e.g. a VOI LUT's NaN stand-in: it would show black; keep the current window
        fn = self.window.function if self.window is not None and self.window.source != "voilut" else "LINEAR"
        if self.volume.array.dtype.kind == "f":
            # float values (0..0.5) need windows narrower than 1: LINEAR_EXACT (display.auto_window)
            width = max(width, 1e-6)
            fn = "LINEAR_EXACT" if fn == "LINEAR" else fn
        else:
            width = max(1.0, width)
        self.window = WindowPreset(name or "Custom", center, width, source=source, function=fn)
        self.windowChanged.emit()

    def apply_preset(self, preset: WindowPreset):
        self.window = preset
        self.windowChanged.emit()

    def preset_by_name(self, name: str) -> WindowPreset | None:
        if self.volume is None:
            return None
        for p in self.volume.window_presets:
            if p.name.lower() == name.lower():
                return p
        if name.lower() == "auto":
            return display.auto_window(self.volume.array[self.position[0]])
        c = display.CT_PRESETS.get(name.capitalize())
        if c is not None:
            return WindowPreset(name.capitalize(), c[0], c[1])
        return None

    def reset_window(self):
        if self.default_window is not None:
            self.window = self.default_window
            self.windowChanged.emit()

    def set_invert(self, on: bool):
        self.invert = bool(on)
        self.displayChanged.emit()

    # ------------------------------------------------------------------ position
    def set_index(self, axis: int, index: int):
        if self.volume is None:
            return
        n = self.shape3()[axis]
        index = max(0, min(int(index), n - 1))
        if self.position[axis] != index:
            self.position[axis] = index
            self.positionChanged.emit(axis)

    def set_position(self, kji):
        if self.volume is None:
            return
        n = self.shape3()
        new = [max(0, min(int(round(v)), n[a] - 1)) for a, v in enumerate(kji)]
        if new != self.position:
            self.position = new
            self.positionChanged.emit(-1)

    # ------------------------------------------------------------------ layers
    def _on_layers(self, event, layer):
        self.layersChanged.emit()

    def add_layer(self, layer: Layer) -> Layer:
        if self.volume is not None and layer.is_raster:
            shape = tuple(self.volume.array.shape[:3])
            if tuple(layer.array.shape) != shape:
                raise ValueError(f"layer '{layer.name}' has shape {tuple(layer.array.shape)}, "
                                 f"the image volume {shape}")
        same = merge_structure(self.layers, layer)  # one layer per structure (series_results.py)
        return same if same is not None else self.layers.add(layer)

    # ------------------------------------------------------------------ measurements
    def add_measurement(self, m: Measurement):
        self.measurements.append(m)
        self.selected = m
        self.measurementsChanged.emit()
        self.selectionChanged.emit()

    def remove_measurement(self, m: Measurement):
        if m in self.measurements:
            self.measurements.remove(m)
            if self.selected is m:
                self.selected = None
            self.measurementsChanged.emit()
            self.selectionChanged.emit()

    def clear_measurements(self):
        self.measurements = []
        self.selected = None
        self.measurementsChanged.emit()
        self.selectionChanged.emit()

    def select(self, m: Measurement | None):
        if self.selected is not m:
            self.selected = m
            self.selectionChanged.emit()

    def plane_for_axis(self, axis: int) -> Plane:
        for p in self.planes:
            if p.axis == axis:
                return p
        return self.planes[0]

    def compute_measurement(self, m: Measurement) -> dict:
        vol = self.volume
        plane = self.plane_for_axis(m.axis)
        known = spacing_known(vol)
        spacing = plane.spacing2d(vol.spacing) if known else (1.0, 1.0)
        image = plane.extract(vol.array, m.index) if m.kind in ROI_KINDS else None
        units = vol.units or ""
        source = vol.spacing_source if known else "none"
        if getattr(vol, "calibrated_regions", None) and not known and m.axis == 0:
            # an ultrasound image's regions: mm inside one calibrated region, px elsewhere
            res = m.compute_on(vol, image)
            source = res.get("spacing_source") or source
        else:
            res = m.compute(image, spacing, units, "mm" if known else "px", spacing_source=source)
        remeasure_where_acquired(m, vol, plane)  # a tilted or uneven stack's reformatted planes
        # the label drawn on the image ("display_text") names the pixel size's source on its
        # length/area line; the engine's "text" stays as it is (its summary() adds the source)
        note = spacing_note(source)
        text = list(res.get("text") or [])
        if m.kind == "ruler" and text:
            text[0] = f"{text[0]} {note}"
        elif m.kind in ROI_KINDS and text:
            k = next((i for i, t in enumerate(text) if t.startswith("Area ")), len(text) - 1)
            text[k] = f"{text[k]} {note}"
        res["display_text"] = text
        return res
