"""Small helpers shared by the command modules (output only; no engine logic here)."""

from __future__ import annotations

import argparse
import json
import sys

from ..outputs import out_folder  # noqa: F401 - re-exported for the commands
from ..safe_text import printable


def item_failure(e: BaseException, args) -> str:
    """The one-line reason of an item that failed in a run of many (analyze's files, series,
    slides, nodules): the other items go on.  The errors a bad file or a small memory raises are
    said as they are; any other is a defect only this item hits ("internal error"), re-raised
    with ``--debug``."""
    from ..errors import UserError

    expected = isinstance(e, (UserError, MemoryError, OSError, ValueError, RuntimeError))
    if not expected and getattr(args, "debug", False):
        raise e
    if isinstance(e, UserError):
        return str(e)
    return (f"cannot be analysed ({'' if expected else 'internal error: '}{type(e).__name__}: "
            f"{' '.join(str(e).split())[:200]})")


def print_item_error(src, e) -> None:
    """``error: SOURCE: reason`` on stderr, naming the source once (many readers' messages
    already start with the path).  Shown escaped (:func:`printable`): file names and header
    values may hold ESC sequences or line breaks."""
    msg, src = str(e), str(src)
    print(printable(f"error: {msg}" if msg.startswith(src) else f"error: {src}: {msg}"), file=sys.stderr)


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def fmt_table(rows: list[list[str]], header: list[str]) -> str:
    """Aligned columns; the cells shown escaped (a PACS's patient names and descriptions are
    header values: no ESC sequence or line break reaches the terminal)."""
    rows = [[printable(c) for c in r] for r in rows]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]

    def line(r):
        return "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()

    return "\n".join([line(header)] + [line(r) for r in rows])


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line (``error: ...``, exit 2) like every other
    error, instead of the usage text plus the message."""

    def error(self, message):
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


#: ``--ig-steps`` at most: explain.methods.MAX_IG_STEPS (not imported: that module loads torch)
MAX_IG_STEPS = 1024
IG_STEPS_HELP = (f"integrated-gradients steps (32; 1 to {MAX_IG_STEPS}: the step weights alone take "
                 "O(n³) time to compute, and each step is one more pass through the model)")


def int_at_least(low: int, high: int | None = None):
    """argparse type: an integer >= low, and <= high when given (``--ig-steps 0`` is refused
    here, not deep in Captum)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be at least {low} (got {v})")
        if high is not None and v > high:
            raise argparse.ArgumentTypeError(f"must be at most {high} (got {v})")
        return v

    parse.__name__ = f"integer >= {low}" if high is None else f"integer from {low} to {high}"
    return parse


def finish_run(args, path, out_dir, results: list, summary: dict, notes: list, captured: dict,
               dicom_run, failed: int, inputs: int | None = None) -> int:
    """The end of every ``analyze`` run (images, series, slides, CT nodules): ``results.json``,
    the notes, the PDF report (always, issue 13; results.json stays whatever happens to it) and
    the DICOM objects when asked.  ``inputs``: given when the run was interrupted, the number of
    inputs it had (the items of ``results`` are those it reached).  Exit code 1 when anything
    failed or the run was interrupted."""
    from ..errors import UserError
    from ..export.report_pdf import build_report, write_report_pdf
    from ..inference.results import write_results_json

    try:
        p = write_results_json(results, out_dir, summary, {"notes": notes, "input": str(path)},
                               patient_ids=[(c.get("header") or {}).get("patient_id") for c in captured.values()])
    except OSError as e:  # a full disk: one line, no temporary file left (outputs.written_beside)
        for n in notes:
            print(f"note: {n}", file=sys.stderr)
        print(printable(f"error: cannot write {out_dir / 'results.json'}: {e.strerror or e} (nor the report, "
                        "made from it): free space and run again"), file=sys.stderr)
        if dicom_run is not None:  # the objects written during the run are said; no PDF object
            dicom_run.finish(None)
        return 1
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    if args.json:
        sys.stdout.write(p.read_text())
    else:
        # counted from the items (not len - failed): a Ctrl-C in the middle of the slides leaves
        # their failed count untold, and a cancelled slide is partial
        done = sum(1 for d in results if not d.get("error") and not d.get("cancelled"))
        print(f"wrote {p} ({done} of {len(results)} item(s) analysed)" if inputs is None else
              f"wrote {p} ({done} of {inputs} input(s) analysed: interrupted)")
    try:
        rp = write_report_pdf(build_report(json.loads(p.read_text(encoding="utf-8")), base_dir=out_dir,
                                           captured=captured, load_missing=False), out_dir / "report.pdf")
        print(f"wrote {rp}", file=sys.stderr if args.json else sys.stdout)
    except (UserError, OSError) as e:
        print(f"error: report.pdf not written: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        failed += 1
        try:  # an earlier run's report.pdf is not this results.json's (nor for the PDF object below)
            (out_dir / "report.pdf").unlink(missing_ok=True)
        except OSError:
            pass
    if dicom_run is not None:
        dicom_run.finish(out_dir / "report.pdf")
        failed += dicom_run.failed
    return 1 if failed or inputs is not None else 0
