"""``imaging-assist scan PATH... [--json]``: index DICOM files and whole-slide images."""

from __future__ import annotations

import os

from ..errors import UserError
from ..safe_text import printable
from .common import print_json


def register(sub) -> None:
    s = sub.add_parser("scan", help="index DICOM files (folder, zip, DICOMDIR, files) by patient/study/series")
    s.add_argument("paths", nargs="+", metavar="PATH")
    s.add_argument("--json", action="store_true", help="print the whole index as JSON")
    s.set_defaults(func=cmd_scan)


def cmd_scan(args) -> int:
    from ..dicom import scan
    from ..progress import progress_bar

    from ..slides.cli import scan_slides

    missing = [p for p in args.paths if not os.path.exists(p)]
    if len(missing) == len(args.paths):  # some missing among others: listed under problems
        raise UserError(f"{missing[0]}: no such file or folder")
    with progress_bar("Reading headers", unit="file", enabled=not args.json) as bar:
        index = scan(args.paths, progress=bar)
    slides, slide_problems = scan_slides(args.paths)
    # A slide file is not "unreadable DICOM": list it once, as a slide (or a slide problem).
    slide_paths = {os.path.realpath(x.path) for x in slides} | {os.path.realpath(p) for p, _ in slide_problems}
    index.problems = [p for p in index.problems if os.path.realpath(p.path) not in slide_paths]
    from ..dicom.index import Problem
    index.problems += [Problem(p, r) for p, r in slide_problems]
    index.problems.sort(key=lambda p: p.path)
    # DICOM WSI instances are shown as slides, not as image series.
    if slides:
        wsi = {os.path.realpath(x.path) for x in slides}
        for pat in index.patients:
            for st in pat.studies:
                st.series = [se for se in st.series if not any(
                    os.path.realpath(r.path) in wsi or os.path.realpath(os.path.dirname(r.path)) in wsi
                    for r in se.instances)]
    if args.json:
        out = index.to_dict()
        out["slides"] = [x.to_dict() for x in slides]
        print_json(out)
        return 0
    print(f"{index.n_files} files, {len(index.all_series())} series, {len(slides)} slides, "
          f"{len(index.problems)} problems")
    for p in index.patients:
        # header values and paths are shown escaped: an ESC sequence or a line break in them
        # would act on the terminal or print a line of its own (a fake "Patient" line)
        print(printable(f"Patient {p.name or '(no name)'}  id={p.id or '-'}  sex={p.sex or '-'}  "
                        f"born={p.birth_date or '-'}"))
        for st in p.studies:
            print(printable(f"  Study {st.date or '-'} {st.description or '(no description)'}  uid={st.uid}"))
            for s in st.series:
                if s.result_kind:  # SEG / Parametric Map / SR / PDF: a result of another series
                    from ..dicom.result_objects import KIND_NAMES
                    refs = f"refers to series {', '.join(s.references)}" if s.references else "no series referenced"
                    what = f"{KIND_NAMES[s.result_kind]} (result), {refs}"
                else:
                    size = f"{s.rows}x{s.cols}" if s.is_image else "no images"
                    what = (f"{s.n_instances:>5} inst {s.n_frames:>5} frames  {size:<9} "
                            f"body={s.body_part or '-'}")
                print(printable(f"    Series {s.number if s.number is not None else '-':>4}  {s.modality or '--':<3} "
                                f"{s.description or '(no description)':<34} {what}  key={s.key}"))
                for w in s.warnings:
                    print(f"      warning: {printable(w)}")
    if slides:
        print("Slides:")
        for x in slides:
            print(printable(f"  {x.path}: {x.one_line()}"))
    if index.problems:
        print("Problems:")
        for pr in index.problems:
            print(printable(f"  {pr.path}: {pr.reason}"))
    return 0
