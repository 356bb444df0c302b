"""Small helpers shared by the command modules (output only; no engine logic here)."""

from __future__ import annotations

import argparse
import json
import sys

from ..outputs import out_folder  # noqa: F401 - re-exported for the commands


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def fmt_table(rows: list[list[str]], header: list[str]) -> str:
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


def int_at_least(low: int):
    """argparse type: an integer >= low (``--ig-steps 0`` is refused here, not deep in Captum)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be at least {low} (got {v})")
        return v

    parse.__name__ = f"integer >= {low}"
    return parse
