"""Results belong to a series (issue 17): the overlay layers and the AI panel's outcome of every
series the reader has looked at in this window, keyed by the study index's series key (a part of a
split series is a series of its own) and stack, so that
they come back when the reader returns to the series - after another series, or after a layout
change - instead of living in a panel's widgets.

One store per main window, shared by the documents of its viewports (``ViewerDocument``).
The most recent :data:`KEEP_SERIES` series are kept (label maps of a CT are large).

One layer per structure: a label layer whose structures (label names) and masks equal those
of a layer already shown - e.g. the lungs that ``cxr-pneumonia``'s explanation region gets
from ``cxr-lung-seg``, after ``cxr-lung-seg`` itself ran - is not added again; the existing
layer lists both sources (``layer.sources``) and is drawn as an outline when the newcomer was
one (the heat map under it stays readable).  When two models outline the same structures
differently, both layers stay, each named by its model: choosing one silently would hide a
disagreement the reader should see.  A merged layer keeps every model that made it
(``layer.owners``): a new run of one of them takes only its own part away (:func:`drop_model`).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from imaging_assist.layers import LabelLayer, Layer

KEEP_SERIES = 16


def series_key(doc) -> str | None:
    """The key of ``doc``'s series: the study index's series key and the stack label, as the
    annotations are kept (annotation_tools.study_key).  One SeriesInstanceUID that the index split
    into parts (a second acquisition, another pixel size) is "uid:1", "uid:2"..., each part with
    the same ``vol.series_uid``: keyed by the UID alone, one part's results came back on the other.
    A volume outside an index (a plain image) is keyed by its UID or first file.  The volume
    remembers its key (:func:`volume_key`) for those that only hold the volume."""
    vol = doc.volume
    if vol is None:
        return None
    s = doc.series
    uid = (getattr(s, "key", None) or getattr(s, "uid", None) or getattr(vol, "series_uid", "")
           or (vol.source_paths[0] if vol.source_paths else ""))
    if not uid:
        return None
    key = f"{uid}|{doc.stack_label or ''}"
    vol.shown_series_key = (id(vol), key)  # what it was shown as (a copy of it is not this volume)
    return key


def volume_key(vol) -> str | None:
    """The key of the series ``vol`` is shown as (:func:`series_key`); for a volume no document
    showed, its SeriesInstanceUID (or first file), as a series outside an index is keyed."""
    shown = getattr(vol, "shown_series_key", None)
    if shown and shown[0] == id(vol):
        return shown[1]
    paths = getattr(vol, "source_paths", None)
    uid = getattr(vol, "series_uid", "") or (paths[0] if paths else "")
    return f"{uid}|" if uid else None


class SeriesResults:
    def __init__(self):
        self._d: OrderedDict[str, dict] = OrderedDict()

    def _entry(self, key: str) -> dict:
        e = self._d.setdefault(key, {"layers": [], "shape": None, "panel": None,
                                     "results_list": {"items": [], "keys": set()}})
        self._d.move_to_end(key)
        while len(self._d) > KEEP_SERIES:
            self._d.popitem(last=False)
        return e

    # ------------------------------------------------------------------ layers
    def keep_layers(self, doc) -> None:
        """Remember the layers shown on ``doc``'s series (called before it changes series)."""
        key = series_key(doc)
        if key is None:
            return
        e = self._entry(key)
        mine = list(doc.layers.layers)
        # a layer is drawn by one viewport at a time: those of this series that another viewport
        # shows now stay kept (a layer the reader removed here has no owner and goes)
        elsewhere = [l for l in e["layers"] if l._owner is not None and l._owner is not doc.layers
                     and l not in mine]
        e["layers"] = mine + elsewhere
        e["shape"] = tuple(doc.volume.array.shape[:3])

    def restore_layers(self, doc) -> list[Layer]:
        """The layers kept for ``doc``'s (new) series, on the same voxel grid; added to it."""
        key = series_key(doc)
        e = self._d.get(key) if key else None
        if not e or e["shape"] != tuple(doc.volume.array.shape[:3]):
            return []
        self._d.move_to_end(key)
        out = []
        for layer in e["layers"]:
            if layer._owner is None:  # not shown by another viewport right now
                out.append(doc.layers.add(layer, index=len(doc.layers)))  # kept order, not re-sorted
        return out

    # ------------------------------------------------------------------ Results list
    def results_list(self, doc) -> dict:
        """The Results dock's entries of ``doc``'s series (``items``: specs of list entries, ``keys``:
        result series already read); a scratch dict when the series has no key."""
        key = series_key(doc)
        return self._entry(key)["results_list"] if key else {"items": [], "keys": set()}

    # ------------------------------------------------------------------ AI panel
    def keep_panel(self, doc, state: dict) -> None:
        """The AI panel's outcome of a run on ``doc``'s series (html, warnings, status, result)."""
        key = series_key(doc)
        if key is not None:
            self._entry(key)["panel"] = dict(state)

    def panel(self, doc) -> dict | None:
        key = series_key(doc)
        e = self._d.get(key) if key else None
        return None if not e else e["panel"]


# ---------------------------------------------------------------------- one layer per structure
def _norm(name: str) -> str:
    return str(name).replace("_", " ").strip().lower()


def _source(layer) -> str:
    model = layer.name.split(":", 1)[0].strip() if ":" in layer.name else layer.name
    owner = getattr(layer, "model_id", None)
    return model if not owner or owner == model else f"{owner}'s region"


def _structures(layer: LabelLayer) -> dict[str, int]:
    return {_norm(info.name): v for v, info in layer.labels.items()}


def same_structures(a: LabelLayer, b: LabelLayer) -> bool:
    """Same label names with the same voxels (whatever values the two maps use for them)."""
    sa, sb = _structures(a), _structures(b)
    if set(sa) != set(sb) or a.array.shape != b.array.shape:
        return False
    return all(np.array_equal(a.array == sa[n], b.array == sb[n]) for n in sa)


def _owners(layer) -> dict[str, str]:
    """Model id -> source (as ``sources`` lists it) of every result ``layer`` shows (None: not a
    model's, e.g. a SEG file read from the study)."""
    owners = getattr(layer, "owners", None)
    return owners if owners is not None else {getattr(layer, "model_id", None): _source(layer)}


def merge_structure(stack, layer: Layer) -> Layer | None:
    """The layer of ``stack`` that already shows ``layer``'s structures (now listing its source),
    or None when ``layer`` is new."""
    if not isinstance(layer, LabelLayer):
        return None
    for old in stack.layers:
        if isinstance(old, LabelLayer) and old is not layer and same_structures(old, layer):
            sources = list(getattr(old, "sources", None) or [_source(old)])
            if _source(layer) not in sources:
                sources.append(_source(layer))
            old.sources = sources
            owners = dict(_owners(old))
            for mid, src in _owners(layer).items():
                owners.setdefault(mid, src)
            old.owners = owners  # a new run of one of them takes only its part away (drop_model)
            if ":" in layer.name and ":" in old.name:  # "cxr-lung-seg: lungs": name it by the structure
                old.name = layer.name.split(":", 1)[1].strip().capitalize()
            if layer.mode == "outline":
                old.mode = "outline"
            stack._emit("moved", old)  # listeners rebuild (the Overlays panel shows the sources)
            return old
    return None


def drop_model(stack, model_id: str) -> None:
    """A new run of ``model_id`` replaces its overlays: the layers only it made go; a layer that
    another model's result was merged into stays, without this model's source (the other
    model's result still stands)."""
    for layer in list(stack.layers):
        owners = _owners(layer)
        if model_id not in owners:
            continue
        rest = {m: src for m, src in owners.items() if m != model_id}
        if not rest:
            stack.remove(layer)
            continue
        gone = owners[model_id]
        layer.owners = rest
        layer.model_id = next(iter(rest))
        layer.sources = [src for src in (getattr(layer, "sources", None) or []) if src != gone] \
            or list(rest.values())
        stack._emit("moved", layer)


# ---------------------------------------------------------------------- the AI panel's outcome
def keep_outcome(panel, card, html: str, warnings: list[str]) -> None:
    """After a run on the shown series: its findings (the panel's HTML) and warnings, per model."""
    doc = panel.doc
    store = doc.results_store
    state = store.panel(doc) or {"runs": OrderedDict()}
    runs = state["runs"]
    runs.pop(card.id, None)  # a re-run replaces the model's earlier outcome, as its overlays
    runs[card.id] = {"html": html, "warnings": list(warnings), "result": panel.last_result, "card": card}
    store.keep_panel(doc, state)


def last_outcome(panel) -> dict | None:
    """The newest run kept for the shown series (html, warnings, result, card), or None."""
    state = panel.doc.results_store.panel(panel.doc)
    runs = list((state or {}).get("runs", {}).values())
    return runs[-1] if runs else None


def restore_outcome(panel) -> bool:
    """On returning to a series: the outcome of every model run on it, newest first."""
    state = panel.doc.results_store.panel(panel.doc)
    runs = list((state or {}).get("runs", {}).items())
    if not runs:
        return False
    panel.results.setHtml("<hr>".join(r["html"] for _, r in reversed(runs)))
    panel._show_warnings([w for _, r in runs for w in r["warnings"]])
    panel.last_result = runs[-1][1]["result"]
    if panel.state != "listing":  # the catalogue thread's answer turns "listing" into "idle"
        panel.state = "done"
    ids = ", ".join(mid for mid, _ in reversed(runs))
    panel.status.setText(f"Earlier results on this series: {ids}")
    panel.status.setToolTip("kept with the series since the run (issue 17): its overlays are back too")
    return True
