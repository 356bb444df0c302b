"""The ``imaging-assist`` command line: the parser and the one place errors become one line.

One module per command (``scan``, ``info``, ``view``, ``demo``, ``models``, ``analyze``), each
with ``register(subparsers)`` and its handler.  The command modules import the engine only
inside their handlers, so building the parser stays fast (no torch).  Every user-facing
failure is one line (``error: ...``, exit code 2); tracebacks only with ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import warnings

from .. import __version__
from ..errors import UserError
from . import (analyze, annotations, anonymize, audit, batch, demo, evaluate, finetune, info, log, models, monitor,
               nodule_growth, pacs, scan, view)
from .common import OneLineParser

COMMANDS = (scan, info, view, demo, models, analyze, evaluate, log, audit, batch, anonymize, monitor, pacs, finetune,
            annotations, nodule_growth)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand (``argv`` is accepted for compatibility; unused)."""
    p = OneLineParser(
        prog="imaging-assist",
        description="Imaging Assist: DICOM viewer and local AI analysis. NOT FOR CLINICAL USE.")
    p.add_argument("--version", action="version", version=f"imaging-assist {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return p


#: Options whose value is a point "X,Y,Z" that may start with a minus sign (LPS: every point on
#: the patient's right has a negative X): argparse takes "-31.2,0,0" for an option.
_COORDINATE_OPTIONS = ("--at",)


def _glue_coordinates(argv: list[str]) -> list[str]:
    """``--at -31.2,0,0`` as ``--at=-31.2,0,0`` (argparse refused it: "expected one argument")."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if a in _COORDINATE_OPTIONS and nxt is not None and re.fullmatch(r"-[\d.][\d.eE+\-]*(,\s*[-+]?[\d.eE+\-]+)*", nxt):
            out.append(f"{a}={nxt}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def main(argv: list[str] | None = None, run_gui=None) -> int:
    """Run the CLI.  ``run_gui(path, screenshot=, series=, layout=) -> int`` opens the viewer;
    the GUI launcher passes it, the engine alone has none.  ``argv`` None (the console script,
    ``python -m imaging_assist``): this process runs one command and ends, which lets
    ``analyze`` leave out imports its networks do not need (:mod:`..models.lean`); a caller
    passing a list (tests, another program) keeps every module importable."""
    _escape_unencodable_output()
    own_process = argv is None
    argv = _glue_coordinates(sys.argv[1:] if argv is None else list(argv))
    args = None
    try:
        # parsing inside the handling too: --help and a bad command line that cannot be
        # written are one line, never a traceback
        args = build_parser(argv).parse_args(argv)
        args.run_gui = run_gui
        args.own_process = own_process
        if not args.debug:
            # Our own checks report what matters (one line each, in the results' warnings); the
            # libraries' warnings and log records would only repeat them or speak of their internals
            # (MONAI bundle-config deprecations, optional decoders).  --debug shows everything.
            warnings.filterwarnings("ignore", module=r"(pydicom|monai)(\..*)?")
            logging.getLogger("monai").setLevel(logging.ERROR)
        if args.command is None:
            args.path = None
            func = view.cmd_view
        else:
            func = args.func
        return int(func(args) or 0)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # noqa: BLE001 - the user sees one line, never a traceback
        if args.debug if args is not None else "--debug" in argv:
            raise
        print(f"error: internal error ({type(e).__name__}: {one_line(e)}); run with --debug for details",
              file=sys.stderr)
        return 1


def _escape_unencodable_output() -> None:
    """A character the terminal's encoding cannot hold (PYTHONIOENCODING=ascii, LC_ALL=C without
    UTF-8 mode, a Latin-1 locale) is written as ``\\xb5`` (as Python already does on stderr)
    instead of ending the command with UnicodeEncodeError: the "µm" of ``info``, a patient
    "Müller" in ``scan``, the "▸" in ``--help``, an output folder's name printed after
    ``analyze`` wrote results.json but before report.pdf.  A file name's undecodable bytes
    (surrogateescape, as under LC_ALL=C) are still written back as they were."""
    import codecs

    def escape(e):
        if isinstance(e, UnicodeEncodeError) and "\udc80" <= e.object[e.start] <= "\udcff":
            return codecs.lookup_error("surrogateescape")(UnicodeEncodeError(
                e.encoding, e.object, e.start, e.start + 1, e.reason))
        return codecs.lookup_error("backslashreplace")(UnicodeEncodeError(
            e.encoding, e.object, e.start, e.start + 1, e.reason))

    codecs.register_error("imaging_assist.escape", escape)
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) in ("strict", "surrogateescape") and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="imaging_assist.escape")
            except ValueError:  # a closed or detached stream: nothing will be written to it
                pass


def one_line(e) -> str:
    """An error message on one line (its lines joined): the user never sees a multi-line error."""
    from ..safe_text import printable

    s = str(e).strip()
    # a header value or file name in the message: no terminal control sequence gets through
    return printable(" ".join(ln.strip() for ln in s.splitlines() if ln.strip()))


if __name__ == "__main__":
    sys.exit(main())
