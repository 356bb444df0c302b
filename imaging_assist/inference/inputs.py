"""What in a file or folder is model input, for ``analyze`` and ``batch`` alike: plain 2D
images (one item each) and the DICOM series the scanner finds (zipped studies and DICOMDIRs
included), each with the stem its output files are named by.  Which model fits which input is
the caller's business (``models.matching.match_card``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

# Extensions that are never model input: not listed as unreadable images or DICOM.
NOT_IMAGES = {".csv", ".txt", ".json", ".md", ".xml", ".yml", ".yaml", ".npy", ".nii", ".gz",
              ".html", ".pdf", ".py"}


@dataclass
class FoundInputs:
    images: list[tuple[Path, str]] = field(default_factory=list)   # (file, output stem)
    series: list[tuple[object, str]] = field(default_factory=list)  # (SeriesInfo, output stem)
    results: list = field(default_factory=list)  # SEG / Parametric Map / SR / PDF series: never input
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable files

    @property
    def unreadable_folders(self) -> list[str]:
        """Folders the walk or the scan could not read (permissions): their files are not here."""
        return [p for p, why in self.problems if str(why).startswith(UNREADABLE_FOLDER)]


#: how a folder that cannot be read is named among the problems (the DICOM index says the same)
UNREADABLE_FOLDER = "cannot read folder"


def collect_inputs(path, exclude=()) -> FoundInputs:
    """The model inputs under ``path``; ``exclude``: files/folders handled elsewhere (slides)."""
    from .images import find_images, is_plain_image

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    ex = {os.path.abspath(p) for p in exclude}

    def keep(p) -> bool:
        a = os.path.abspath(p)
        return a not in ex and os.path.dirname(a) not in ex

    unreadable: list[tuple[str, str]] = []  # folders the walk cannot read: listed, never skipped silently
    if path.is_file():
        images = [path] if is_plain_image(path) and keep(path) else []
        others = [] if images or not keep(path) else [path]
        root = path.parent
    else:
        images = [p for p in find_images(path, unreadable) if keep(p)]
        others = [p for p in path.rglob("*") if p.is_file() and not is_plain_image(p)
                  and p.suffix.lower() not in NOT_IMAGES and not p.name.startswith(".") and keep(p)]
        root = path
    found = FoundInputs(problems=list(unreadable))
    for p in images:
        rel = p.relative_to(root) if p != root else Path(p.name)
        found.images.append((p, str(rel.with_suffix("")).replace(os.sep, "_")))
    if others:
        from ..dicom import scan

        index = scan(str(path))
        seen = {os.path.normpath(p) for p, _ in found.problems}  # the walk named it already
        found.problems += [(str(pr.path), str(pr.reason)) for pr in index.problems
                           if not is_plain_image(pr.path) and Path(pr.path).suffix.lower() not in NOT_IMAGES
                           and os.path.normpath(str(pr.path)) not in seen]
        for n, s in enumerate(index.all_series()):
            if getattr(s, "result_kind", None):
                found.results.append(s)
                continue
            num = s.number if getattr(s, "number", None) is not None else n + 1
            # The key (not the UID) names the output: a split series has several parts per UID.
            tag = s.key.split(".")[-1][-8:].replace(":", "-part")
            found.series.append((s, f"series_{num}_{tag}"))
    return found
