"""``imaging-assist monitor [--model ID [--version V]] [--since DATE] [--window DAYS|N] [--json]``: input and
output drift, agreement with readers and performance on reader-confirmed cases, per window,
from the local prediction log (:mod:`imaging_assist.monitoring.drift`): the runs of the model's active
version (or of ``--version``), against that version's reference (runs of other versions are counted in a note).  Alerts are printed,
put in the JSON (``alerts``), recorded once in the log's events and in the audit trail.
Exit code 0 without alerts, 3 with alerts (so a scheduled job can act on it)."""

from __future__ import annotations


def register(subparsers) -> None:
    a = subparsers.add_parser("monitor", help="drift of inputs and outputs, agreement with readers, per window")
    a.add_argument("--model", metavar="ID",
                   help="one model (default: every model in the log); the runs of its active version are compared")
    a.add_argument("--version", metavar="V",
                   help="with --model: that version's runs, against its own reference (a candidate, or a "
                        "version rolled back; default: the active version)")
    a.add_argument("--since", metavar="DATE", help="only runs from this date (YYYY-MM-DD, UTC)")
    a.add_argument("--window", metavar="DAYS|N", default=None,
                   help="window: days as e.g. 7d (default), or a number of consecutive runs, e.g. 200")
    a.add_argument("--json", action="store_true", help="print the full report as JSON")
    a.set_defaults(func=cmd_monitor)


def cmd_monitor(args) -> int:
    from ..monitoring.drift import monitor, summary_lines
    from .common import print_json

    rep = monitor(args.model, args.since, args.window, version=args.version)
    if args.json:
        print_json(rep)
    else:
        print("\n".join(summary_lines(rep)))
    return 3 if rep["alerts"] else 0
