"""The ``imaging-assist`` command line.

Subcommands: ``scan``, ``info``, ``view``, ``demo`` here, plus ``models`` and ``analyze``
registered by :mod:`imaging_assist.models.cli`.  Every user-facing failure is one line
(``error: ...``) and a non-zero exit code; tracebacks only with ``--debug``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from . import __version__
from .errors import UserError


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


# --------------------------------------------------------------------------- scan
def cmd_scan(args) -> int:
    from .dicom import scan
    from .progress import progress_bar

    from .slides.cli import scan_slides

    with progress_bar("Reading headers", unit="file", enabled=not args.json) as bar:
        index = scan(args.paths, progress=bar)
    slides, slide_problems = scan_slides(args.paths)
    # A slide file is not "unreadable DICOM": list it once, as a slide (or a slide problem).
    slide_paths = {os.path.realpath(x.path) for x in slides} | {os.path.realpath(p) for p, _ in slide_problems}
    index.problems = [p for p in index.problems if os.path.realpath(p.path) not in slide_paths]
    from .dicom.index import Problem
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
        _print_json(out)
        return 0
    print(f"{index.n_files} files, {len(index.all_series())} series, {len(slides)} slides, "
          f"{len(index.problems)} problems")
    for p in index.patients:
        print(f"Patient {p.name or '(no name)'}  id={p.id or '-'}  sex={p.sex or '-'}  born={p.birth_date or '-'}")
        for st in p.studies:
            print(f"  Study {st.date or '-'} {st.description or '(no description)'}  uid={st.uid}")
            for s in st.series:
                size = f"{s.rows}x{s.cols}" if s.is_image else "no images"
                print(f"    Series {s.number if s.number is not None else '-':>4}  {s.modality or '--':<3} "
                      f"{s.description or '(no description)':<34} {s.n_instances:>5} inst "
                      f"{s.n_frames:>5} frames  {size:<9} body={s.body_part or '-'}  key={s.key}")
                for w in s.warnings:
                    print(f"      warning: {w}")
    if slides:
        print("Slides:")
        for x in slides:
            print(f"  {x.path}: {x.one_line()}")
    if index.problems:
        print("Problems:")
        for pr in index.problems:
            print(f"  {pr.path}: {pr.reason}")
    return 0


# --------------------------------------------------------------------------- info
def resolve_series(target: str, root: str | None = None, series: str | None = None):
    """(index, SeriesInfo) for a path (file or folder) or a series UID / key under root."""
    from .dicom import scan

    if os.path.exists(target):
        index = scan(target)
        chosen = None
        if series:
            chosen = index.find_series(series)
            if chosen is None:
                raise UserError(f"no series {series!r} in {target}")
        elif os.path.isfile(target):
            chosen = index.find_series(target)
        if chosen is None:
            images = index.image_series()
            if len(images) == 1:
                chosen = images[0]
            elif not images:
                why = f" ({index.problems[0].reason})" if index.problems else ""
                raise UserError(f"no readable image series in {target}{why}")
            else:
                keys = ", ".join(f"{s.key} ({s.modality} {s.description})".strip() for s in images[:6])
                raise UserError(f"{target} holds {len(images)} image series; choose one with --series: {keys}")
        return index, chosen
    if not all(c.isdigit() or c in ".:" for c in target):
        raise UserError(f"{target}: no such file or folder")
    index = scan(root or ".")
    chosen = index.find_series(target)
    if chosen is None:
        raise UserError(f"{target!r} is neither a path nor a series UID found under {root or '.'}")
    return index, chosen


def cmd_info(args) -> int:
    from .dicom import load_series, plan_series
    from .slides.cli import format_info, info_dict, is_slide_path

    if os.path.exists(args.target) and not args.series and is_slide_path(args.target):
        if args.json:
            _print_json(info_dict(args.target))
        else:
            print(format_info(args.target))
        return 0

    index, series = resolve_series(args.target, args.root, args.series)
    n_stacks = len(plan_series(series))
    vol = load_series(series, stack=args.stack - 1)
    geo = vol.geometry_dict()
    geo.update({"series_uid": series.uid, "key": series.key, "description": series.description,
                "stack": args.stack, "stacks": n_stacks, "instances": series.n_instances,
                "orientation": vol.orientation_labels() if vol.has_geometry else None})
    if args.json:
        _print_json(geo)
        return 0
    print(f"Series      {series.description or '(no description)'}  [{vol.modality}]  uid={series.uid}")
    if n_stacks > 1:
        print(f"Stack       {args.stack} of {n_stacks}")
    print(f"Shape       {' x '.join(map(str, vol.shape))}  (slices x rows x columns{' x RGB' if vol.is_color else ''})")
    print(f"Spacing     {', '.join(f'{s:.4g}' for s in vol.spacing)} mm  (column, row, slice)")
    print(f"Origin      {', '.join(f'{s:.4f}' for s in vol.origin)} mm  (LPS)")
    d = geo["direction"]
    print(f"Direction   i=({', '.join(f'{r[0]:.4f}' for r in d)})  j=({', '.join(f'{r[1]:.4f}' for r in d)})  "
          f"k=({', '.join(f'{r[2]:.4f}' for r in d)})")
    print(f"Dtype       {vol.array.dtype}")
    lo, hi = geo["value_range"]
    print(f"Values      {lo:g} .. {hi:g} {vol.units}".rstrip())
    print(f"Photometric {vol.photometric}{'  (displayed inverted)' if vol.photometric == 'MONOCHROME1' else ''}")
    if vol.is_cine:
        print(f"Cine        {vol.n_slices} frames, frame time {vol.frame_time_ms or '?'} ms")
    if vol.has_geometry:
        o = vol.orientation_labels()
        print(f"Orientation left={o['left']} right={o['right']} top={o['top']} bottom={o['bottom']}")
    else:
        print("Geometry    none (no patient position): 2D image(s)")
    for p in vol.window_presets:
        if p.source == "voilut":
            print(f"Window      {p.name}  (VOI LUT from the file)")
        else:
            print(f"Window      {p.name:<14} C={p.center:g} W={p.width:g}  ({p.source})")
    for w in vol.warnings:
        print(f"warning: {w}")
    return 0


# --------------------------------------------------------------------------- view / gui
def cmd_view(args) -> int:
    # The engine never imports the GUI: the `imaging-assist` launcher (imaging_assist_ui.launcher)
    # hands its runner in.  `python -m imaging_assist` alone is the headless CLI.
    run_gui = getattr(args, "run_gui", None)
    if run_gui is None:
        raise UserError("the desktop viewer is not available here: use the `imaging-assist` command "
                        "(or `python -m imaging_assist_ui`)")
    return run_gui(getattr(args, "path", None), screenshot=getattr(args, "screenshot", None),
                   series=getattr(args, "series", None), layout=getattr(args, "layout", None))


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(args)


# --------------------------------------------------------------------------- main
FAST_COMMANDS = {"scan", "info", "view", "demo"}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imaging-assist",
        description="Imaging Assist: DICOM viewer and local AI analysis. NOT FOR CLINICAL USE.")
    p.add_argument("--version", action="version", version=f"imaging-assist {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("scan", help="index DICOM files (folder, zip, DICOMDIR, files) by patient/study/series")
    s.add_argument("paths", nargs="+", metavar="PATH")
    s.add_argument("--json", action="store_true", help="print the whole index as JSON")
    s.set_defaults(func=cmd_scan)

    s = sub.add_parser("info", help="load one series (or open a slide) and print its geometry, values and warnings")
    s.add_argument("target", metavar="SERIES_PATH_OR_UID")
    s.add_argument("--series", help="series UID or key when the path holds several")
    s.add_argument("--root", help="where to look for a series UID (default: current folder)")
    s.add_argument("--stack", type=int, default=1, help="stack number for series with several (default 1)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("view", help="open the desktop viewer on PATH")
    s.add_argument("path", nargs="?")
    s.add_argument("--screenshot", metavar="OUT.png", help="save a screenshot of the window and exit")
    s.add_argument("--series", help="series UID or key to show first")
    s.add_argument("--layout", choices=["single", "mpr"], help="view layout")
    s.set_defaults(func=cmd_view)

    s = sub.add_parser("demo", help="open the bundled demo (headless: write the analysis and say where)")
    s.add_argument("--out", help="output folder for the headless analysis")
    s.add_argument("--headless", action="store_true", help="never open a window")
    s.add_argument("--models", metavar="DIR", help="use only the models in DIR (default: the registry)")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where the headless analysis runs")
    s.set_defaults(func=cmd_demo)

    # The model commands import torch (seconds): only when they may be used.
    first = next((a for a in (argv or []) if not a.startswith("-")), None)
    if first not in FAST_COMMANDS and not (first is None and argv and "--version" in argv):
        if first is not None or "-h" in (argv or []) or "--help" in (argv or []):
            from .models.cli import register
            register(sub)
    return p


def main(argv: list[str] | None = None, run_gui=None) -> int:
    """Run the CLI.  ``run_gui(path, screenshot=, series=, layout=) -> int`` opens the viewer;
    the GUI launcher passes it, the engine alone has none."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    args.run_gui = run_gui
    if not args.debug:
        # Our own checks report what matters; pydicom's parse warnings would only repeat them.
        warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")
    if args.command is None:
        args.path = None
        func = cmd_view
    else:
        func = args.func
    try:
        return int(func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # noqa: BLE001 - the user sees one line, never a traceback
        if args.debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"error: internal error ({type(e).__name__}: {msg}); run with --debug for details",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
