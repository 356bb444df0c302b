"""What a batch runs on: SOURCE arguments (folders, zips, DICOMDIRs, single files, slides)
expanded into :class:`Candidate` items, each with a content hash.

The selection rules are ``analyze``'s (:func:`imaging_assist.cli.analyze._collect_inputs`):
plain images by extension, everything else through the DICOM scanner
(:func:`imaging_assist.dicom.scan`, which also follows zips and DICOMDIRs), slides through
:func:`imaging_assist.slides.analysis.find_slide_inputs` for models whose card has a
``slide`` block, and :func:`imaging_assist.models.matching.match_card` on the headers.  The
folder walk and the DICOM scan run once per SOURCE whatever the number of models.

The content hash (sha256 over the bytes the item is decoded from: the image file, every
instance of a series in instance order (zip members read from the zip), every file of a
slide) is what makes a re-run resumable: an item is skipped when the table already has a
row for the same hash, model id and model version, wherever the file has moved since.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..dicom.archive import _READ_ERRORS as ZIP_READ_ERRORS
from ..dicom.archive import member_info
from ..dicom.header import HeaderError
from ..errors import UserError

HASH_CHUNK = 1 << 20


@dataclass
class Candidate:
    """One thing to analyse: ``kind`` "image" (payload: file path), "series" (payload: a
    :class:`~imaging_assist.dicom.index.SeriesInfo`) or "slide" (payload: file or folder)."""

    kind: str
    payload: object
    stem: str  # analyze's output stem (file names inside the item's folder)
    source: str  # what the user sees (the file, or "<SOURCE> (series <uid>)")
    models: list[str] = field(default_factory=list)  # model ids that fit it (match_card)
    overridden: dict = field(default_factory=dict)  # model id -> reasons (--research-override)
    match_warnings: dict = field(default_factory=dict)  # model id -> match_card warnings
    content_hash: str = ""

    @property
    def key(self) -> str:
        """Identity within one batch (the same file named by two SOURCEs is one item)."""
        if self.kind == "series":
            return "series:" + "|".join(r.display_path for r in self.payload.instances)
        return f"{self.kind}:{os.path.abspath(str(self.payload))}"

    def files(self) -> list[tuple[str, str | None]]:
        """(path, zip member or None) in a fixed order: the bytes the hash covers."""
        if self.kind == "series":
            return [(r.path, r.member) for r in self.payload.instances]
        p = str(self.payload)
        if os.path.isdir(p):
            def unreadable(e: OSError):  # Path.rglob would hash the folder short, without a word
                raise e  # content_hash: a failed row naming the folder
            return [(str(f), None) for f in sorted(Path(r) / n for r, _, names in os.walk(p, onerror=unreadable)
                                                   for n in names)
                    if f.is_file() and not f.name.startswith(".")]
        return [(p, None)]


def content_hash(c: Candidate) -> str:
    """sha256 of the item's bytes (see the module docstring); ``UserError`` when unreadable."""
    h = hashlib.sha256()
    h.update(c.kind.encode())
    zips: dict[str, zipfile.ZipFile] = {}
    counts: dict[str, Counter] = {}  # member names of each zip, counted once
    try:
        for path, member in c.files():
            h.update(b"\0")
            if member is None:
                with open(path, "rb") as f:
                    while chunk := f.read(HASH_CHUNK):
                        h.update(chunk)
            else:
                zf = zips.get(path) or zips.setdefault(path, zipfile.ZipFile(path))
                if path not in counts:
                    counts[path] = Counter(i.filename for i in zf.infolist())
                # the one member of that name (zf.open(name) would take the last of several)
                with zf.open(member_info(zf, member, counts[path])) as f:
                    while chunk := f.read(HASH_CHUNK):
                        h.update(chunk)
    except (*ZIP_READ_ERRORS, KeyError, HeaderError) as e:  # a damaged deflate stream is zlib.error, not OSError
        raise UserError(f"{c.source}: cannot be read to hash it ({e})") from None
    finally:
        for z in zips.values():
            z.close()
    return h.hexdigest()


def hash_all(cands: list[Candidate], workers: int = 4) -> list[tuple[Candidate, str]]:
    """Hash every candidate (threads: hashlib releases the GIL on large buffers).  Returns
    the (candidate, reason) pairs that could not be read; the others get ``content_hash``."""
    from concurrent.futures import ThreadPoolExecutor

    bad: list[tuple[Candidate, str]] = []

    def one(c):
        try:
            c.content_hash = content_hash(c)
        except UserError as e:
            bad.append((c, str(e)))

    with ThreadPoolExecutor(max(1, workers)) as ex:
        list(ex.map(one, cands))
    return bad


def collect(sources: list[str], cards: list, override: bool = False
            ) -> tuple[list[Candidate], list[str], list[tuple[str, str]]]:
    """(candidates, notes, problems) for every SOURCE and model card.

    ``problems``: (path, reason) for files the scanner could not read and folders the walk
    could not read: each becomes one failed row in the table (a corrupt file is a failed row
    with its reason, the batch goes on).  ``notes``: what was skipped and why (no model fits it)."""
    from ..inference.inputs import collect_inputs
    from ..models.matching import SeriesFacts, match_card

    out: dict[str, Candidate] = {}
    notes: list[str] = []
    problems: list[tuple[str, str]] = []
    slide_cards = []
    for card in cards:
        if card.raw.get("slide") is not None:
            from ..slides.analysis import slide_spec

            spec = slide_spec(card)
            if spec:
                slide_cards.append((card, spec))

    def add(c: Candidate, card, m) -> None:
        c = out.setdefault(c.key, c)
        if card.id not in c.models:
            c.models.append(card.id)
            if not m.ok:
                c.overridden[card.id] = list(m.reasons)
            c.match_warnings[card.id] = list(getattr(m, "warnings", []) or [])

    for s in sources:
        path = Path(s).expanduser()
        if not path.exists():
            raise UserError(f"{path}: no such file or folder")
        slides: set[str] = set()
        for card, spec in slide_cards:
            from ..slides.analysis import find_slide_inputs

            slide_paths = find_slide_inputs(path, spec["tile_px"])
            slides.update(os.path.abspath(p) for p in slide_paths)
            for sp in slide_paths:
                base = Path(sp).stem if Path(sp).is_file() else Path(sp).name
                c = Candidate("slide", sp, base, str(sp))
                c = out.setdefault(c.key, c)
                if card.id not in c.models:
                    c.models.append(card.id)

        found = collect_inputs(path, slides)
        problems += found.problems
        if found.images:
            facts = SeriesFacts(is_dicom=False, units="", loaded=False)
            for card in cards:
                m = match_card(card, facts)
                if not m.ok and not override:
                    notes.append(f"{path}: {len(found.images)} plain image(s) skipped for {card.id}: {m.reason}")
                    continue
                for p, stem in found.images:
                    add(Candidate("image", p, stem, str(p)), card, m)
        for se in found.results:
            notes.append(f"series {se.key} ({se.modality} {se.description}) skipped: a result "
                         "object, not an image")
        for se, stem in found.series:
            for card in cards:
                m = match_card(card, SeriesFacts.from_series(se))
                if not m.ok and not override:
                    notes.append(f"series {se.key} ({se.modality} {se.description}) skipped for "
                                 f"{card.id}: {m.reason}")
                    continue
                add(Candidate("series", se, stem, f"{path} (series {se.uid})"), card, m)
    return list(out.values()), notes, problems
