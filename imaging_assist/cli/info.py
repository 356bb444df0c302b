"""``imaging-assist info SERIES_PATH_OR_UID``: load one series (or open a slide, or check a heat-map
file) and print its geometry, values and warnings."""

from __future__ import annotations

import os

from ..errors import UserError
from ..safe_text import printable
from .common import int_at_least, print_json


def register(sub) -> None:
    s = sub.add_parser("info", help="load one series (or open a slide, or check a heat-map file) and print "
                                      "its geometry, values and warnings")
    s.add_argument("target", metavar="SERIES_PATH_OR_UID")
    s.add_argument("--series", help="series UID or key when the path holds several")
    s.add_argument("--root", help="where to look for a series UID (default: current folder)")
    s.add_argument("--stack", type=int_at_least(1), default=1, help="stack number for series with several (default 1)")
    s.add_argument("--slide", metavar="SLIDE", help="with a heat-map file: check that it was made for this slide "
                   "(as the viewer does before drawing it)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)


def resolve_series(target: str, root: str | None = None, series: str | None = None):
    """(index, SeriesInfo) for a path (file or folder) or a series UID / key under root."""
    from ..dicom import scan

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
    from ..dicom import load_series, plan_series
    from ..slides.cli import format_info, info_dict, is_slide_path
    from ..slides.base import heatmap_kind

    if os.path.isfile(args.target) and heatmap_kind(args.target):
        return print_heatmap_info(args.target, args.slide, as_json=args.json)
    if args.slide:
        raise UserError("--slide goes with a heat-map file (written by analyze on a slide)")
    if os.path.exists(args.target) and not args.series and is_slide_path(args.target):
        if args.json:
            print_json(info_dict(args.target))
        else:
            # the slide's properties are the vendor's text: each line shown escaped
            print("\n".join(printable(ln) for ln in format_info(args.target).split("\n")))
        return 0

    index, series = resolve_series(args.target, args.root, args.series)
    if series.result_kind:
        from .result_info import print_result_info
        return print_result_info(index, series, as_json=args.json)
    n_stacks = len(plan_series(series))
    vol = load_series(series, stack=args.stack - 1)
    geo = vol.geometry_dict()
    geo.update({"series_uid": series.uid, "key": series.key, "description": series.description,
                "stack": args.stack, "stacks": n_stacks, "instances": series.n_instances,
                "orientation": vol.orientation_labels() if vol.has_geometry else None})
    if args.json:
        print_json(geo)
        return 0
    # header values are shown escaped (printable): an ESC sequence or a line break in them
    # would act on the terminal or print a line of its own
    print(printable(f"Series      {series.description or '(no description)'}  [{vol.modality}]  uid={series.uid}"))
    if n_stacks > 1:
        print(f"Stack       {args.stack} of {n_stacks}")
    print(f"Shape       {' x '.join(map(str, vol.shape))}  (slices x rows x columns{' x RGB' if vol.is_color else ''})")
    # Placeholders (1 mm pixels, origin 0, identity direction) are never printed as if measured.
    src = getattr(vol, "spacing_source", "")
    volume3d = vol.has_geometry and vol.n_slices > 1
    if getattr(vol, "spacing_known", True):
        sp = vol.spacing if volume3d else vol.spacing[:2]
        print(f"Spacing     {', '.join(f'{s:.4g}' for s in sp)} mm  (column, row{', slice' if volume3d else ''}; "
              f"from {src or 'the file'})")
    else:
        slice_mm = f"; slices {vol.spacing[2]:.4g} mm apart" if volume3d else ""
        print(f"Spacing     unknown: lengths and areas in px (no usable pixel spacing){slice_mm}")
    if vol.has_geometry:
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
            print(f"Window      {printable(p.name)}  (VOI LUT from the file)")
        else:
            print(f"Window      {printable(p.name):<14} C={p.center:g} W={p.width:g}  ({p.source})")
    for w in vol.warnings:
        print(f"warning: {printable(w)}")
    return 0


def print_heatmap_info(path: str, slide: str | None, as_json: bool) -> int:
    """A heat-map file of ``analyze`` on a slide, checked as the viewer checks it before drawing."""
    from ..slides import open_slide
    from ..slides.annotations import slide_key
    from ..slides.heatmap_io import describe_heatmap

    dims = key = None
    if slide:
        with open_slide(slide) as s:
            dims = s.dimensions
        key = slide_key(slide)
    d = describe_heatmap(path, dims, key)
    d["slide"] = slide
    if as_json:
        print_json(d)
        return 0
    rows, cols = d["grid"]
    sx, sy = d["cell_level0_px"]
    smpp = d["slide_mpp"]
    mpp = f"; {sx * smpp[0]:.4g} x {sy * smpp[1]:.4g} µm" if smpp else ""
    w, h = d["slide_dimensions"]
    print(f"Heat map    {printable(os.path.basename(path))}  (imaging-assist heat-map format {d['format_version']}; "
          f"checksum {d['checksum']})")
    print(f"Grid        {rows} x {cols} cells of {sx:g} x {sy:g} level-0 px, from ({d['origin_level0_px'][0]:g}, "
          f"{d['origin_level0_px'][1]:g}){mpp}")
    ident = f", identity {d['slide_key']}" if d["slide_key"] else ", identity not recorded"
    print(f"Made for    a {w} x {h} px slide{ident}")
    for c in d["classes"]:
        rng = f"{c['min']:.3f} .. {c['max']:.3f}, mean {c['mean']:.3f}" if c["cells_with_a_tile"] else "no tile"
        print(f"Class       {printable(c['name'])}: {rng} over {c['cells_with_a_tile']:,} of {rows * cols:,} cells")
    if d["cancelled"]:
        print("Cancelled   yes: the run was stopped; cells without a tile are empty")
    if slide:
        print(f"Slide       {printable(slide)}: the heat map fits it")
    for w_ in d["warnings"] + d["load_warnings"]:
        print(f"warning: {printable(w_)}")
    return 0
