"""``imaging-assist demo``: the bundled demo study, in the viewer or headless.

With a display the viewer opens on the demo folder.  Without one (or with
``--headless``) every series is loaded and a report is written: ``report.json`` with
the geometry, value ranges and warnings of each series, and one key image (PNG) per
series; the command prints where.
"""

from __future__ import annotations

import json
import os
from importlib import resources

import numpy as np

from .errors import UserError


def demo_root() -> str:
    root = resources.files("imaging_assist") / "data" / "demo"
    if not root.is_dir():
        raise UserError(f"demo data missing from the installation ({root})")
    return str(root)


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and \
        os.environ.get("QT_QPA_PLATFORM", "") != "offscreen"


def write_key_image(vol, path: str) -> None:
    from PIL import Image

    from . import display
    k = vol.n_slices // 2
    img = display.render_slice(vol, k)
    Image.fromarray(img).save(path)


def run_headless(out: str) -> dict:
    from .dicom import load_series, scan
    os.makedirs(out, exist_ok=True)
    index = scan(demo_root())
    report = {"not_for_clinical_use": True, "source": demo_root(), "series": [],
              "problems": [p.to_dict() for p in index.problems]}
    for n, s in enumerate(index.image_series()):
        vol = load_series(s)
        png = os.path.join(out, f"series_{n + 1:02d}_{(s.modality or 'img').lower()}.png")
        write_key_image(vol, png)
        entry = {"key": s.key, "modality": s.modality, "description": s.description,
                 "instances": s.n_instances, "key_image": png}
        entry.update(vol.geometry_dict())
        report["series"].append(entry)
    path = os.path.join(out, "report.json")
    with open(path, "w") as fh:
        json.dump(report, fh, indent=2, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o))
    report["report_path"] = path
    return report


def run_demo(args) -> int:
    if has_display() and not getattr(args, "headless", False) and getattr(args, "run_gui", None):
        from .cli import cmd_view
        args.path = demo_root()
        args.screenshot = args.series = args.layout = None
        return cmd_view(args)
    out = os.path.abspath(getattr(args, "out", None) or "imaging-assist-demo")
    report = run_headless(out)
    print(f"No display: ran the headless demo on {len(report['series'])} series.")
    for s in report["series"]:
        print(f"  {s['modality']} {s['description']}: {' x '.join(map(str, s['shape']))}, "
              f"key image {s['key_image']}")
        for w in s["warnings"]:
            print(f"    warning: {w}")
    print(f"Report written to {report['report_path']}")
    return 0
