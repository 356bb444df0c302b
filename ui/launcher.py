"""The ``imaging-assist`` console script: the engine's CLI with the desktop viewer plugged in.

The engine (``imaging_assist``) never imports this package; this launcher imports the
engine's CLI and hands it a runner for ``view``, ``demo`` and the no-argument case.  Qt is
imported only when a window is opened, so ``scan``/``info``/``analyze`` start fast.
"""

from __future__ import annotations

import sys


def run_gui(path=None, screenshot=None, series=None, layout=None, run_models=False, slab=None, size=None) -> int:
    from .app import run_gui as _run
    return _run(path, screenshot=screenshot, series=series, layout=layout, run_models=run_models, slab=slab,
                size=size)


def main(argv: list[str] | None = None) -> int:
    from imaging_assist.cli import main as cli_main
    return cli_main(argv, run_gui=run_gui)


if __name__ == "__main__":
    sys.exit(main())
