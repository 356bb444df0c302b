"""``imaging-assist anonymize IN OUT``: de-identify DICOM files (PS3.15 Annex E Basic Application
Level Confidentiality Profile and options; burned-in text found by OCR and blacked out) into a
new folder mirroring IN's tree (names pseudonymised unless --keep-names; :mod:`imaging_assist.privacy.deid`).  Prints the summary; writes
``OUT/deidentification_summary.json``.  Exit 0 when every DICOM file was written (files that are
not DICOM are listed and never copied), 1 when a DICOM file was left out (listed with its
reason), 2 on a user error."""

from __future__ import annotations

import os
import sys

from .common import int_at_least, print_json


def register(subparsers) -> None:
    a = subparsers.add_parser(
        "anonymize", help="de-identify DICOM files (PS3.15 basic profile + options) into a new folder")
    a.add_argument("input", metavar="IN", help="DICOM file or folder (only read, never written)")
    a.add_argument("output", metavar="OUT", help="new or empty folder (mirrors IN's tree, names pseudonymised)")
    a.add_argument("--retain-modified-dates", action="store_true",
                   help="Retain Longitudinal Temporal Information with Modified Dates: every date "
                        "moved by one keyed offset per patient (intervals kept); default: removed")
    a.add_argument("--retain-patient-characteristics", action="store_true",
                   help="Retain Patient Characteristics (sex, age, size, weight, ...)")
    a.add_argument("--retain-device-identity", action="store_true",
                   help="Retain Device Identity (station name, serial numbers, ...)")
    a.add_argument("--clean-descriptors", action="store_true",
                   help="Clean Descriptors: keep descriptions/comments with identifying values cut "
                        "out (default: removed)")
    a.add_argument("--no-pixel-cleaning", action="store_true",
                   help="do not OCR burned-in text: files that may carry it are then left out")
    a.add_argument("--keep-names", action="store_true",
                   help="keep the input's file and folder names (default: keyed pseudonyms, "
                        "since names often carry patient names or dates)")
    a.add_argument("--workers", type=int_at_least(1), default=min(2, os.cpu_count() or 1),
                   help="processes for the header work (default: 2)")
    a.add_argument("--json", action="store_true", help="print the summary as JSON")
    a.set_defaults(func=cmd_anonymize)


def cmd_anonymize(args) -> int:
    from tqdm import tqdm

    from ..privacy.deid import Options, deidentify_tree

    opts = Options(modified_dates=args.retain_modified_dates,
                   patient_characteristics=args.retain_patient_characteristics,
                   device_identity=args.retain_device_identity,
                   clean_descriptors=args.clean_descriptors,
                   clean_pixels=not args.no_pixel_cleaning)
    bar = tqdm(total=0, desc="anonymize", unit="file", file=sys.stderr,
               disable=not sys.stderr.isatty(), dynamic_ncols=True)

    def prog(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        summary = deidentify_tree(args.input, args.output, opts, progress=prog,
                                  workers=args.workers, keep_names=args.keep_names)
    finally:
        bar.close()
    if args.json:
        print_json(summary.to_dict())
    else:
        print("\n".join(summary.lines()))
    return 1 if any(not r.not_dicom for r in summary.left_out) else 0
