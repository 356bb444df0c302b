"""``imaging-assist log export --csv [FILE] [--table runs|feedback|corrections|events]``: the
prediction log (:mod:`imaging_assist.monitoring.log`) as CSV for analysis; ``log path`` prints
where the database is.  Nothing leaves the machine: the CSV goes to FILE or standard output."""

from __future__ import annotations

import sys

from ..errors import UserError
from ..safe_text import printable


def register(subparsers) -> None:
    a = subparsers.add_parser("log", help="the local prediction log: export it as CSV, show its path")
    sub = a.add_subparsers(dest="log_command", metavar="ACTION")
    e = sub.add_parser("export", help="write the log as CSV (standard output without FILE)")
    e.add_argument("--csv", nargs="?", const="-", default="-", metavar="FILE",
                   help="CSV file to write (default: standard output)")
    e.add_argument("--table", choices=("runs", "feedback", "corrections", "events"), default="runs",
                   help="which table (default: runs, one row per model run)")
    e.set_defaults(func=cmd_log_export)
    p = sub.add_parser("path", help="print where the prediction log is")
    p.set_defaults(func=cmd_log_path)
    a.set_defaults(func=lambda args: (a.print_help(), 0)[1])


def cmd_log_path(args) -> int:
    from ..monitoring.log import db_path

    print(db_path())
    return 0


def cmd_log_export(args) -> int:
    from pathlib import Path

    from ..monitoring.log import db_path, open_log

    if not db_path().exists():
        raise UserError(f"no prediction log yet at {db_path()} (it is written by the first model run)")
    lg = open_log()
    if args.csv in (None, "-"):
        # on standard output (a terminal, or a pipe into one): control characters of the header
        # values shown escaped; --csv FILE keeps them as they are
        n = lg.export_csv(sys.stdout, args.table, escape_controls=True)
        print(f"{n} rows", file=sys.stderr)
        return 0
    out = Path(args.csv)
    if out.exists() and out.is_dir():
        raise UserError(f"{out} is a folder; give a file name for the CSV")
    if out.resolve() == db_path().resolve():
        raise UserError("the CSV would overwrite the prediction log itself")
    try:
        with open(out, "w", newline="", encoding="utf-8") as f:
            n = lg.export_csv(f, args.table)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    print(f"{n} rows written to {printable(out)}")
    return 0
