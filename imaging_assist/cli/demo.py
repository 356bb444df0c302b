"""``imaging-assist demo``: the bundled demo study (the work is in :mod:`imaging_assist.demo`)."""

from __future__ import annotations


def register(sub) -> None:
    s = sub.add_parser("demo", help="open the bundled demo (headless: write the analysis and say where)")
    s.add_argument("--out", help="output folder for the headless analysis")
    s.add_argument("--headless", action="store_true", help="never open a window")
    s.add_argument("--models", metavar="DIR", help="use only the models in DIR (default: the registry)")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where the headless analysis runs")
    s.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from ..demo import run_demo

    return run_demo(args)
