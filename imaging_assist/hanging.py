"""Hanging protocols (no Qt): which layout a study opens in and which series goes into which
viewport, by modality and body part.

Built-in rules (used when the user has saved none that fits):

* CR / DX chest: 1×2, the current image beside the most recent prior (same patient);
* CT: axial + MPR (the MPR layout of the current series);
* MR: 2×2 of the study's series;
* anything else: 1×1.

The user saves the current layout as the protocol for a modality / body part; protocols are
stored as JSON in ``userdirs.config_dir() / "hanging_protocols.json"`` (written atomically).
A malformed file gives one warning line and the built-in rules, never a traceback.

A protocol may also give views a thick slab (``"slabs"``: one ``MODE:MM`` or null per view of
the layout, in the layout's order: 1 for 1×1, 3 for MPR (the acquired plane first), 2 or 4 for
the grids), e.g. a chest CT hung as MPR with a 10 mm axial MIP.

A viewport's source is one of ``current`` (the series that opened), ``prior`` (the series of
the patient's most recent other study that matches the current one, see
:func:`viewing.matching_series`) or ``next`` (the next image series of the current study not
shown yet).  A viewport whose source is missing is filled with the next series of the study;
when nothing is left the layout shrinks (a 1×2 with no prior is a 1×1) or, in a 2×2 of three
series, the last viewport stays empty (with a note).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import viewing
from .slab import Slab
from .userdirs import config_dir, locked, write_json_atomic

FILE_NAME = "hanging_protocols.json"
LAYOUTS = {"single": 1, "mpr": 1, "1x2": 2, "2x2": 4}
VIEWS = {"single": 1, "mpr": 3, "1x2": 2, "2x2": 4}  # views of a layout (MPR: one series, three planes)
SOURCES = ("current", "prior", "next")
MAX_PROTOCOLS = 500  # a larger file is not a protocol list someone saved by hand
MAX_FILE_BYTES = 1 << 20


@dataclass
class Protocol:
    """One rule: applies to series of ``modality`` (e.g. "CR" or "CR/DX") and ``body_part``
    ("" for any body part); opens ``layout`` with ``viewports`` sources."""

    name: str
    modality: str
    body_part: str = ""
    layout: str = "single"
    viewports: list[str] = field(default_factory=lambda: ["current"])
    builtin: bool = False
    slabs: list = field(default_factory=list)  # per view: "mip:10" or None; [] = none anywhere

    @property
    def modalities(self) -> set[str]:
        return {m.strip().upper() for m in self.modality.replace(",", "/").split("/") if m.strip()}

    @property
    def key(self) -> tuple[str, str]:
        return ("/".join(sorted(self.modalities)), self.body_part.strip().upper())

    def matches(self, modality: str, body_part: str) -> bool:
        mods = self.modalities
        if mods and "*" not in mods and (modality or "").strip().upper() not in mods:
            return False
        bp = self.body_part.strip().upper()
        return not bp or bp == (body_part or "").strip().upper()

    def to_dict(self) -> dict:
        d = {"name": self.name, "modality": self.modality, "body_part": self.body_part,
             "layout": self.layout, "viewports": list(self.viewports)}
        if any(self.slabs):
            d["slabs"] = list(self.slabs)
        return d

    def describe(self) -> str:
        where = f"{self.modality or 'any'}" + (f" / {self.body_part}" if self.body_part else " / any body part")
        lay = {"single": "1×1", "mpr": "axial + MPR"}.get(self.layout, self.layout.replace("x", "×"))
        slabs = [f"view {n} {sl.name} {sl.thickness_mm:g} mm"
                 for n, sl in ((n, Slab.parse(s)) for n, s in enumerate(self.slabs, 1) if s)]
        return (f"{where}: {lay} ({', '.join(self.viewports)})" + (f", {', '.join(slabs)}" if slabs else "")
                + ("  [built-in]" if self.builtin else ""))


BUILTIN = [
    Protocol("Chest radiograph: current beside the most recent prior", "CR/DX", "CHEST", "1x2",
             ["current", "prior"], builtin=True),
    Protocol("CT: axial + MPR", "CT", "", "mpr", ["current"], builtin=True),
    Protocol("MR: 2×2 of the study's series", "MR", "", "2x2", ["current", "next", "next", "next"], builtin=True),
]
FALLBACK = Protocol("1×1", "*", "", "single", ["current"], builtin=True)


def _protocol_from(d) -> Protocol:
    """A Protocol from one JSON entry; ValueError with the reason when it is not one."""
    if not isinstance(d, dict):
        raise ValueError("an entry is not an object")
    mod, bp, lay = d.get("modality"), d.get("body_part", ""), d.get("layout")
    vps = d.get("viewports")
    if not isinstance(mod, str) or not mod.strip() or len(mod) > 64:
        raise ValueError("an entry has no modality")
    if not isinstance(bp, str) or len(bp) > 64:
        raise ValueError(f"{mod}: body_part is not text")
    if not isinstance(lay, str) or lay not in LAYOUTS:
        raise ValueError(f"{mod}: layout {str(lay)[:20]!r} is not one of {', '.join(LAYOUTS)}")
    if not isinstance(vps, list) or not vps or any(v not in SOURCES for v in vps):
        raise ValueError(f"{mod}: viewports must be a list of {', '.join(SOURCES)}")
    if len(vps) != LAYOUTS[lay] or vps[0] != "current":
        raise ValueError(f"{mod}: layout {lay} needs {LAYOUTS[lay]} viewport(s), the first 'current'")
    name = d.get("name")
    name = name if isinstance(name, str) and name.strip() else f"{mod}" + (f" / {bp}" if bp else "")
    return Protocol(name[:120], mod.strip(), bp.strip(), lay, list(vps), slabs=_slabs_from(mod, lay, d.get("slabs")))


def _slabs_from(mod: str, layout: str, slabs) -> list:
    """The optional per-view slabs of an entry, checked: [] when absent."""
    if slabs is None:
        return []
    if not isinstance(slabs, list) or len(slabs) != VIEWS[layout]:
        raise ValueError(f"{mod}: slabs must be a list of {VIEWS[layout]} (one per view of {layout})")
    out = []
    for s in slabs:
        if s is not None and not isinstance(s, str):
            raise ValueError(f"{mod}: a slab is MODE:MM text or null")
        if s is not None:
            Slab.parse(s[:40])  # ValueError with the reason
        out.append(s if s is None else s.strip().lower())
    return out if any(out) else []


class ProtocolStore:
    """The user's protocols (JSON in the config folder) in front of the built-in rules.

    ``warning`` holds one line when the file could not be used (then only the built-in rules
    apply and the file is left untouched until the user saves a protocol)."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else config_dir() / FILE_NAME
        self.user: list[Protocol] = []
        self.warning = ""
        self.load()

    def load(self) -> list[Protocol]:
        self.user, self.warning = [], ""
        try:
            if not self.path.is_file():
                return self.user
            if self.path.stat().st_size > MAX_FILE_BYTES:
                raise ValueError(f"larger than {MAX_FILE_BYTES // 1024} KB")
            data = json.loads(self.path.read_text(encoding="utf-8"))
            items = data.get("protocols") if isinstance(data, dict) else None
            if not isinstance(items, list):
                raise ValueError('no "protocols" list')
            if len(items) > MAX_PROTOCOLS:
                raise ValueError(f"more than {MAX_PROTOCOLS} protocols")
            self.user = [_protocol_from(d) for d in items]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as e:
            self.user = []
            reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            self.warning = f"hanging protocols file {self.path} is not usable ({reason}): built-in rules used"
        return self.user

    def all(self) -> list[Protocol]:
        """User protocols first, then the built-in rules and the 1×1 fallback."""
        return list(self.user) + BUILTIN + [FALLBACK]

    def match(self, modality: str, body_part: str = "") -> Protocol:
        """The protocol for a series: a user protocol for this modality and body part, then one
        for the modality and any body part, then the built-in rules in the same order, then 1×1."""
        for group in (self.user, BUILTIN):
            for specific in (True, False):
                for p in group:
                    if bool(p.body_part.strip()) == specific and p.matches(modality, body_part):
                        return p
        return FALLBACK

    def save(self, protocol: Protocol) -> Path:
        """Add ``protocol`` (replacing the user's one with the same modality and body part).
        Under the file's lock the file is read again first: a protocol another window saved
        or removed since this one read it is not undone."""
        _protocol_from(protocol.to_dict())  # the same checks as on reading
        with locked(self.path):
            self.load()
            if self.warning:  # never overwrite a file we could not read: keep it beside
                bad = self.path.with_name(self.path.name + ".unreadable")
                try:
                    os.replace(self.path, bad)
                except OSError:
                    pass
                self.warning = ""
            self.user = [p for p in self.user if p.key != protocol.key] + [protocol]
            self._write()
        return self.path

    def remove(self, key: tuple[str, str]) -> bool:
        """Remove the user's protocol with ``key`` (modality set, body part); False if none
        (the file is read again under its lock first, as in :meth:`save`)."""
        with locked(self.path):
            self.load()
            if self.warning:  # a file we could not read is not written over
                return False
            n = len(self.user)
            self.user = [p for p in self.user if p.key != tuple(key)]
            if len(self.user) == n:
                return False
            self._write()
        return True

    def _write(self):
        data = {"version": 1, "protocols": [p.to_dict() for p in self.user]}
        write_json_atomic(self.path, data, indent=1)


@dataclass
class Hanging:
    """What to show: the layout and the series key of each viewport (first: the current)."""

    protocol: Protocol
    layout: str
    keys: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def slabs(self) -> list:
        """Slab per view of the layout hung (a shrunk grid keeps its first views'), [] for none."""
        s = self.protocol.slabs
        return list(s[:VIEWS[self.layout]]) if s else []


#: Projection radiography: a CR film's prior may be a DX film and the other way round.
PROJECTION = {"CR", "DX"}


def plan(protocol: Protocol, index, series) -> Hanging:
    """Resolve ``protocol`` for ``series`` of a StudyIndex: the series key per viewport.

    Missing sources are replaced by the next series of the study (with a note); when there
    are fewer series than viewports the layout shrinks (2×2 → 1×2 → 1×1), and a 2×2 of three
    series says that its last viewport stays empty."""
    keys, notes = [series.key], []
    here = index.study_of(series) if index is not None else None
    others = [s for s in (here.series if here else []) if s.is_image and s.key != series.key]
    # the most recent prior study holding a series of the current one's modality (the newest
    # prior may hold only a CT beside a chest film: it is not the film's prior)
    priors = viewing.prior_studies(index, series)
    mod = getattr(series, "modality", "") or ""
    films = []
    for st in priors:
        m = viewing.matching_series(st, series)
        if m is not None and (not mod or m.modality == mod or {m.modality, mod} <= PROJECTION):
            films.append((st, m))
    # of those, one of the same body part first (a hand film made between two chest films is
    # not the chest's prior), then one whose body part is not recorded, then any other
    bp = viewing.body_part(series)

    def rank(film):
        pb = viewing.body_part(film[1])
        return 0 if bp and pb == bp else (1 if not (bp and pb) else 2)
    prior_study, prior = min(films, key=rank, default=(None, None))  # min keeps the most recent of a rank
    if protocol.layout in ("single", "mpr"):
        return Hanging(protocol, protocol.layout, keys, notes)
    for src in protocol.viewports[1:]:
        s = None
        if src == "prior":
            s = prior if prior is not None and prior.key not in keys else None
            if s is not None:
                notes += _prior_notes(index, series, prior_study, prior)
            elif here is not None and viewing.date_note(here) and viewing.other_studies(index, series):
                notes.append(f"current study: {viewing.date_note(here)}; which study is older is unknown, "
                             "so none is hung as its prior")
            else:
                notes.append(f"no prior {mod} study of this patient is loaded (earlier studies hold other "
                             "modalities)" if priors else "no prior study of this patient is loaded")
                notes += [f"a study dated in the future ({viewing.parse_date(st.date).isoformat()}) is not taken "
                          "as a prior: check its date" for st in viewing.other_studies(index, series)
                          if viewing.in_future(st)]
        if s is None:
            s = next((o for o in others if o.key not in keys), None)
        if s is not None:
            keys.append(s.key)
    layout = "2x2" if len(keys) > 2 and protocol.layout == "2x2" else ("1x2" if len(keys) >= 2 else "single")
    if layout != protocol.layout:
        notes.append(f"only {len(keys)} series to show: {layout.replace('x', '×') if layout != 'single' else '1×1'}")
    elif len(keys) < LAYOUTS[layout]:  # only a 2×2 of three series: the viewer empties viewport 4
        notes.append(f"only {len(keys)} series to show: viewport {len(keys) + 1} stays empty")
    return Hanging(protocol, layout, keys[:LAYOUTS[layout]], notes)


def _prior_notes(index, series, study, prior) -> list[str]:
    """What the reader must check about the prior hung beside ``series``: another name or birth
    date under the same Patient ID, another or an unrecorded body part, an unknown date."""
    notes = [n for n in (viewing.patient_note(index, series, study),) if n]
    bp, pb = viewing.body_part(series), viewing.body_part(prior)
    if bp and pb and bp != pb:
        notes.append(f"the prior is of another body part ({pb}, current {bp}): check")
    elif not (bp and pb):
        notes.append(f"body part not recorded (prior {pb or '?'}, current {bp or '?'}): check the prior is "
                     "the same exam")
    if viewing.date_note(study):
        notes.append(f"the prior has {viewing.date_note(study)}: it may not be the older study")
    return notes


def protocol_from_layout(layout: str, sources: list[str], modality: str, body_part: str = "",
                         slabs: list | None = None) -> Protocol:
    """A protocol that reproduces the current layout (``sources`` per viewport, see
    :func:`source_of`; ``slabs``: each view's :class:`Slab` or None) for ``modality`` /
    ``body_part``."""
    n = LAYOUTS.get(layout)
    if n is None:
        raise ValueError(f"layout {layout!r}")
    vps = (["current"] + [s if s in SOURCES else "next" for s in sources[1:n]] + ["next"] * n)[:n]
    name = f"{modality}" + (f" / {body_part}" if body_part else "") + f": {layout}"
    views = (list(slabs or []) + [None] * VIEWS[layout])[:VIEWS[layout]]
    texts = [None if s is None else f"{s.mode}:{s.thickness_mm:g}" for s in views]
    return Protocol(name, modality, body_part, layout, vps, slabs=texts if any(texts) else [])


def source_of(index, current, shown) -> str:
    """How a viewport showing series ``shown`` relates to ``current``: 'prior' when it belongs
    to another study of the same patient, else 'next'."""
    if shown is None or index is None:
        return "next"
    st = index.study_of(shown)
    return "prior" if st is not None and st in viewing.prior_studies(index, current) else "next"
