"""``imaging-assist annotations PATH [--series KEY] [--export-sr F] [--export-gsps F] [--json]``:
the measurements and annotations saved for a series in the viewer (one JSON file per study in
the user data folder, :class:`imaging_assist.annotations.AnnotationStore`), listed with their
values recomputed from the pixels, and written as a TID 1500 SR or a presentation state (GSPS)
as the viewer's File menu writes them."""

from __future__ import annotations

from ..errors import UserError
from ..safe_text import printable
from .common import int_at_least, print_json


def register(sub) -> None:
    s = sub.add_parser("annotations", help="list a series' saved measurements and annotations; export them "
                                           "as DICOM SR or a presentation state (GSPS)")
    s.add_argument("path", metavar="PATH", help="folder, zip, DICOMDIR or file holding the series")
    s.add_argument("--series", metavar="KEY", help="series key or SeriesInstanceUID (see `scan`); needed when "
                                                   "PATH holds several image series")
    s.add_argument("--export-sr", metavar="OUT.dcm", help="write them as a TID 1500 SR (as File ▸ Export "
                                                          "measurements (DICOM SR))")
    s.add_argument("--export-gsps", metavar="OUT.dcm", help="write them as a Grayscale Softcopy Presentation State")
    s.add_argument("--stack", type=int_at_least(1), default=1, metavar="N",
                   help="stack N of a series that holds several (time points, echoes; `imaging-assist info` "
                        "lists them; default 1), as the viewer shows it")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_annotations)


def _series(index, key: str | None):
    images = index.image_series()
    if key:
        s = index.find_series(key) or next((x for x in images if x.key == key), None)
        if s is None or not s.is_image:
            raise UserError(f"no image series {key!r} here (`imaging-assist scan` lists the keys)")
        return s
    if len(images) == 1:
        return images[0]
    if not images:
        raise UserError("no image series here")
    raise UserError(f"{len(images)} image series here: choose one with --series KEY "
                    f"({', '.join(x.key for x in images[:4])}{', ...' if len(images) > 4 else ''})")


def cmd_annotations(args) -> int:
    import os

    from ..annotations import AnnotationStore
    from ..dicom import load_series, scan

    if not os.path.exists(args.path):
        raise UserError(f"{args.path}: no such file or folder")
    from ..dicom.loader import plan_series, stack_label
    from ..outputs import refuse_input_target

    for opt, out in (("--export-sr", args.export_sr), ("--export-gsps", args.export_gsps)):
        if out and os.path.isdir(out):
            raise UserError(f"{opt} {out} is a folder: name the file to write")
        if out:  # the folder or zip being read (before scanning it); its series' files come next
            refuse_input_target(out, [args.path], opt)
    index = scan(args.path)
    series = _series(index, args.series)
    for opt, out in (("--export-sr", args.export_sr), ("--export-gsps", args.export_gsps)):
        if out:  # a file of the series found elsewhere (a DICOMDIR's references, a file given alone)
            refuse_input_target(out, [], opt, files={r.path for r in series.instances})
    plans = plan_series(series)
    k = int(getattr(args, "stack", 1)) - 1
    if not 0 <= k < len(plans):
        raise UserError(f"--stack {k + 1}: the series holds {len(plans)} stack(s)")
    vol = load_series(series, stack=k)
    # saved under the stack's label, as the viewer keys them ("stack 1 of 2"; none for one stack)
    items, warnings = AnnotationStore().load(series.study_uid, series.key, stack_label(plans, k), volume=vol)
    for m in items:
        if m.axis == 0:
            m.compute_on(vol)
    written = {}
    for kind, out in (("sr", args.export_sr), ("gsps", args.export_gsps)):
        if not out:
            continue
        if not items:
            raise UserError("no saved measurements or annotations for this series: nothing to export")
        from ..export.dicom_common import DicomExportError
        from ..export.presentation_state import write_presentation_state
        from ..export.sr_measurements import write_measurement_sr
        write = write_presentation_state if kind == "gsps" else write_measurement_sr
        try:
            written[kind] = str(write(vol, items, out, warnings=warnings))
        except DicomExportError as e:
            raise UserError(str(e)) from None
        except OSError as e:  # the folder cannot be written, the disk is full: nothing is left behind
            raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    rows = [{"id": m.id, "kind": m.kind, "image": m.index + 1 if m.axis == 0 else None, "plane_axis": m.axis,
             "index": m.index, "points": [list(p) for p in m.points], "text": m.text,
             "values": (m.result.get("display_text") or m.result.get("text") or []) if m.axis == 0 else []}
            for m in items]
    if args.json:
        print_json({"series_uid": series.uid, "key": series.key, "study_uid": series.study_uid,
                    "items": rows, "written": written, "warnings": warnings})
        return 0
    # the description (a header value), texts and paths are shown escaped (printable): an ESC
    # sequence or a line break in them would act on the terminal or print a line of its own
    print(printable(f"Series      {series.description or '(no description)'}  key={series.key}"))
    print(f"Saved       {len(items)} measurement(s) and annotation(s)")
    for r in rows:
        where = f"image {r['image']}" if r["image"] else f"reformatted plane {r['plane_axis']}, slice {r['index'] + 1}"
        what = "; ".join(r["values"]) or r["text"] or ""
        print(f"  {r['id']:>3}  {r['kind']:<9} {where:<12} {printable(what)}")
    for kind, path in written.items():
        print(f"wrote {printable(path)} ({'presentation state (GSPS)' if kind == 'gsps' else 'DICOM SR'})")
    for w in warnings:
        print(f"warning: {printable(w)}")
    return 0
