"""``imaging-assist view PATH``: the desktop viewer, through the runner the GUI launcher hands in."""

from __future__ import annotations

from ..errors import UserError


def register(sub) -> None:
    s = sub.add_parser("view", help="open the desktop viewer on PATH")
    s.add_argument("path", nargs="?")
    s.add_argument("--screenshot", metavar="OUT.png", help="save a screenshot of the window and exit")
    s.add_argument("--series", help="series UID or key to show first")
    s.add_argument("--layout", choices=["single", "mpr"], help="view layout")
    s.add_argument("--slab", metavar="MODE:MM",
                   help="thick slab in every view: mip, minip or avg over MM millimetres, e.g. mip:10")
    s.add_argument("--size", metavar="WxH", type=_size,
                   help="the window's size for --screenshot (default 1920x1080), e.g. 1280x720 for a laptop; "
                        "one smaller than the window can be (about 1220x580) is refused")
    s.set_defaults(func=cmd_view)


def _size(text: str) -> tuple[int, int]:
    import argparse

    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 1280x720") from None
    if not (640 <= w <= 7680 and 480 <= h <= 4320):
        raise argparse.ArgumentTypeError(f"{text!r}: width 640-7680 and height 480-4320 pixels")
    return w, h


def cmd_view(args) -> int:
    # The engine never imports the GUI: the `imaging-assist` launcher (imaging_assist_ui.launcher)
    # hands its runner in.  `python -m imaging_assist` alone is the headless CLI.
    run_gui = getattr(args, "run_gui", None)
    if run_gui is None:
        raise UserError("the desktop viewer is not available here: use the `imaging-assist` command "
                        "(or `python -m imaging_assist_ui`)")
    slab = None
    if getattr(args, "slab", None):
        from ..slab import Slab
        try:
            slab = Slab.parse(args.slab)
        except ValueError as e:
            raise UserError(str(e)) from None
    size = getattr(args, "size", None)
    if size and not getattr(args, "screenshot", None):
        raise UserError("--size is for --screenshot (an open window takes the screen's size)")
    kw = {"size": size} if size else {}
    return run_gui(getattr(args, "path", None), screenshot=getattr(args, "screenshot", None),
                   series=getattr(args, "series", None), layout=getattr(args, "layout", None), slab=slab, **kw)
