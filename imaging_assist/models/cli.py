"""``imaging-assist models ...`` and ``imaging-assist analyze ...``.

``register(subparsers)`` is called by :mod:`imaging_assist.cli`.  Handlers return an exit
code (0 ok, 1 when some items or models failed) and raise ``UserError`` for one-line errors.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..errors import UserError

_NOT_IMAGES = {".csv", ".txt", ".json", ".md", ".xml", ".yml", ".yaml", ".npy", ".nii", ".gz",
               ".html", ".pdf", ".py", ".zip"}


def register(subparsers) -> None:
    m = subparsers.add_parser("models", help="list, add and verify AI models")
    msub = m.add_subparsers(dest="models_command", metavar="ACTION")
    m.set_defaults(func=lambda args: (m.print_help(), 2)[1])

    s = msub.add_parser("list", help="show id, task, modality, version, source and verification")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--no-verify", action="store_true", help="do not hash the weights")
    s.set_defaults(func=cmd_models_list)

    s = msub.add_parser("add", help="add a folder of models (or one model folder / MONAI bundle)")
    s.add_argument("path", metavar="PATH")
    s.set_defaults(func=cmd_models_add)

    s = msub.add_parser("verify", help="check the sha256 of every weights file")
    s.add_argument("ids", nargs="*", metavar="ID", help="models to check (default: all)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_models_verify)

    a = subparsers.add_parser(
        "analyze", help="run a model on DICOM series or plain images and write DIR/results.json")
    a.add_argument("path", metavar="PATH", help="DICOM file/folder, image file or folder of "
                                                "PNG/JPEG/TIFF images")
    a.add_argument("--model", required=True, metavar="ID", help="model id or model folder")
    a.add_argument("--explain", nargs="?", const="gradcam", default=None, metavar="METHOD",
                   help="explain with gradcam (default), ig, saliency or occlusion")
    a.add_argument("--label", action="append", metavar="LABEL",
                   help="label to explain (repeatable; default: positive/top label or every "
                        "segmented structure)")
    a.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    a.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    a.add_argument("--out", required=True, metavar="DIR")
    a.add_argument("--ig-steps", type=int, default=32, help="integrated-gradients steps (32)")
    a.add_argument("--no-faithfulness", action="store_true",
                   help="skip the deletion-AUC faithfulness score")
    a.add_argument("--json", action="store_true", help="print results.json to stdout")
    g = a.add_argument_group("whole-slide images (models whose card has a \"slide\" block)")
    g.add_argument("--batch-size", type=int, default=32, help="tiles per forward pass (32)")
    g.add_argument("--top-tiles", type=int, default=3,
                   help="top tiles per class written with a Grad-CAM each (3)")
    g.add_argument("--heatmap-format", choices=["tif", "npz"], default="tif",
                   help="per-class heat maps as a pyramidal float32 TIFF (default) or NumPy .npz")
    a.set_defaults(func=cmd_analyze)


# =========================================================================== models
def _registry():
    from .registry import Registry

    return Registry()


def _fmt_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header)] + [line(r) for r in rows])


def cmd_models_list(args) -> int:
    reg = _registry()
    entries = reg.entries()
    if not args.no_verify:
        for e in entries:
            if e.card is not None:
                reg.verify_entry(e)
    if args.json:
        json.dump({"models": [e.to_dict() for e in entries],
                   "sources": [{"folder": str(f), "source": s} for f, s in reg.sources()]},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not entries:
        print("no models found; add one with `imaging-assist models add PATH` (searched: "
              + ", ".join(str(f) for f, _ in reg.sources()) + ")")
        return 0
    rows = []
    for e in entries:
        c = e.card
        ver = {True: "yes", False: "NO", None: "-"}[e.verified]
        if e.error:
            rows.append([e.id, "-", "-", "-", e.source, "invalid"])
            continue
        rows.append([e.id + (" (shadowed)" if e.shadowed_by else ""), f"{c.task} {c.spatial_dims}D",
                     "/".join(c.modality) + (f" {c.body_part}" if c.body_part else ""), c.version,
                     e.source, ver])
    print(_fmt_table(rows, ["ID", "TASK", "MODALITY", "VERSION", "SOURCE", "VERIFIED"]))
    for e in entries:
        if e.error:
            print(f"warning: {e.error}", file=sys.stderr)
        elif e.verified is False:
            bad = next(v for v in e.verify if not v.ok)
            print(f"warning: {bad.message}", file=sys.stderr)
    return 0


def cmd_models_add(args) -> int:
    reg = _registry()
    entries = reg.add_folder(args.path)
    for e in entries:
        if e.error:
            print(f"warning: {e.error}", file=sys.stderr)
        else:
            print(f"added {e.card.id} {e.card.version} ({e.card.task}, {'/'.join(e.card.modality)}) "
                  f"from {e.folder}")
    return 0


def cmd_models_verify(args) -> int:
    reg = _registry()
    entries = [reg.get(i) for i in args.ids] if args.ids else [e for e in reg.entries() if e.card]
    failed = 0
    out = []
    for e in entries:
        reg.verify_entry(e)
        out.append(e.to_dict())
        if not e.verified:
            failed += 1
    if args.json:
        json.dump({"models": out}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for e in entries:
            for v in e.verify:
                print(f"{e.id}: {v.file}: {'ok (' + v.algorithm + ')' if v.ok else 'FAILED: ' + v.message}")
        if not entries:
            print("no models to verify")
    return 1 if failed else 0


# =========================================================================== analyze
def _collect_inputs(path: Path, card, exclude=()):
    """([(kind, payload, stem)], notes): kind "image" (payload Path) or "series" (SeriesInfo).

    ``exclude``: slide files/folders analysed as slides (left out here)."""
    from ..inference.images import find_images, is_plain_image

    items: list[tuple[str, object, str]] = []
    notes: list[str] = []
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    ex = {os.path.abspath(p) for p in exclude}

    def keep(p) -> bool:
        a = os.path.abspath(p)
        return a not in ex and os.path.dirname(a) not in ex

    if path.is_file():
        images = [path] if is_plain_image(path) and keep(path) else []
        others = [] if images or not keep(path) else [path]
        root = path.parent
    else:
        images = [p for p in find_images(path) if keep(p)]
        others = [p for p in path.rglob("*") if p.is_file() and not is_plain_image(p)
                  and p.suffix.lower() not in _NOT_IMAGES and not p.name.startswith(".") and keep(p)]
        root = path
    if images and card.spatial_dims == 3:
        notes.append(f"{len(images)} plain image(s) skipped: model {card.id} is 3D")
        images = []
    for p in images:
        rel = p.relative_to(root) if p != root else Path(p.name)
        items.append(("image", p, str(rel.with_suffix("")).replace(os.sep, "_")))
    if others:
        try:
            from ..dicom import scan
        except ImportError:
            raise UserError("DICOM input needs imaging_assist.dicom, which is not available") from None
        index = scan(str(path))
        for pr in index.problems:
            if not is_plain_image(pr.path) and Path(pr.path).suffix.lower() not in _NOT_IMAGES:
                notes.append(f"{pr.path}: {pr.reason}")
        for n, s in enumerate(index.all_series()):
            why = _series_mismatch(card, s)
            if why:
                notes.append(f"series {s.key} ({s.modality} {s.description}) skipped: {why}")
                continue
            num = s.number if getattr(s, "number", None) is not None else n + 1
            # The key (not the UID) names the output: a split series has several parts per UID.
            tag = s.key.split(".")[-1][-8:].replace(":", "-part")
            items.append(("series", s, f"series_{num}_{tag}"))
    return items, notes


def _series_mismatch(card, s) -> str | None:
    if hasattr(s, "is_image") and not s.is_image:
        return "no images"
    mods = [m.upper() for m in card.modality]
    mod = (s.modality or "").upper()
    if mod and mod not in mods and "OT" not in mods:
        return f"model {card.id} is for {'/'.join(mods)}"
    bp = (getattr(s, "body_part", "") or "").upper()
    if card.body_part and bp and card.body_part not in bp and bp not in card.body_part:
        return f"body part {bp}, model is for {card.body_part}"
    n = (getattr(s, "n_instances", 1) or 1) * max(1, getattr(s, "n_frames", 1) or 1)
    if card.spatial_dims == 3 and n < 2:
        return f"model {card.id} is 3D and the series has a single image"
    return None


def _common_source(vol, fallback: str) -> str:
    paths = [p for p in (vol.source_paths or []) if p]
    if not paths:
        return fallback
    if len(paths) == 1:
        return paths[0]
    try:
        return os.path.commonpath(paths)
    except ValueError:
        return fallback


def cmd_analyze(args) -> int:
    import warnings as _w

    from tqdm import tqdm

    from ..explain.methods import ExplainConfig, canonical_method
    from ..inference.jobs import Cancelled
    from ..inference.pipelines import RunOptions, run_model
    from ..inference.results import write_item_files, write_results_json
    from .loaders import load_model

    entry = _registry().get(args.model)
    card = entry.card
    explain = None
    if args.explain is not None:
        explain = ExplainConfig(canonical_method(args.explain), ig_steps=args.ig_steps,
                                faithfulness=not args.no_faithfulness)
    path = Path(args.path).expanduser()
    slides = []
    spec = None
    if card.raw.get("slide") is not None and path.exists():
        from ..slides.analysis import find_slide_inputs, slide_spec

        spec = slide_spec(card)
        slides = find_slide_inputs(path, spec["tile_px"]) if spec else []
    items, notes = _collect_inputs(path, card, exclude=slides)
    if not items and not slides:
        why = "; ".join(notes[:3])
        raise UserError(f"nothing in {path} matches model {card.id} ({card.spatial_dims}D "
                        f"{'/'.join(card.modality)}{' ' + card.body_part if card.body_part else ''})"
                        + (f": {why}" if why else ""))
    model = load_model(card, "cpu")
    opts = RunOptions(device=args.device, precision=args.precision, explain=explain,
                      explain_labels=args.label)
    region = None  # card explanation_region: heat map mass inside a segmenter's structures
    if explain is not None and card.explanation_region is not None:
        from ..explain.regions import RegionExplainer

        region = RegionExplainer(card, device=args.device)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    failed = 0
    bar = tqdm(total=len(items), desc=f"{card.id}", unit="item", file=sys.stderr,
               disable=not sys.stderr.isatty() or not items, dynamic_ncols=True)
    used_stems: set[str] = set()
    try:
        for kind, payload, stem in items:
            base = stem
            k = 1
            while stem in used_stems:
                k += 1
                stem = f"{base}_{k}"
            used_stems.add(stem)
            src = str(payload) if kind == "image" else f"{path} (series {payload.uid})"
            try:
                if kind == "image":
                    from ..inference.images import read_image

                    vol = read_image(payload)
                else:
                    from ..dicom import load_series

                    vol = load_series(payload)

                def on_progress(f, msg, _bar=bar):
                    _bar.set_postfix_str(f"{msg[:40]} {int(100 * f)}%", refresh=False)
                    _bar.update(0)

                with _w.catch_warnings(record=True) as caught:
                    _w.simplefilter("always")
                    res = run_model(model, vol, opts, progress=on_progress)
                    if region is not None:
                        region.apply(res, vol, progress=on_progress)
                for c in caught:
                    if issubclass(c.category, RuntimeWarning) and "out of memory" in str(c.message):
                        print(f"warning: {c.message}", file=sys.stderr)
                res.source = str(payload) if kind == "image" else _common_source(vol, src)
                d = write_item_files(res, vol, out_dir, stem)
                d["source"] = res.source
                results.append(d)
                if bar.disable:
                    print(_summary(d), file=sys.stderr)
            except Cancelled:
                raise
            except UserError as e:
                failed += 1
                results.append({"source": src, "model": card.id, "model_version": card.version,
                                "error": str(e)})
                print(f"error: {src}: {e}", file=sys.stderr)
            bar.update(1)
        if slides:
            failed += _analyze_slides(slides, model, args, out_dir, results, notes, used_stems)
    except KeyboardInterrupt:
        notes.append("interrupted by the user: results are partial")
        print("interrupted: writing partial results", file=sys.stderr)
        failed += 1
    finally:
        bar.close()
    summary = card.summary()
    summary["sha256"] = dict(model.hashes)
    summary["intended_use"] = card.intended_use
    p = write_results_json(results, out_dir, summary, {"notes": notes, "input": str(path)})
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    if args.json:
        sys.stdout.write(p.read_text())
    else:
        print(f"wrote {p} ({len(results) - failed} of {len(results)} item(s) analysed)")
    return 1 if failed else 0


def _analyze_slides(slides, model, args, out_dir: Path, results: list, notes: list,
                    used_stems: set) -> int:
    """Tile each slide (see imaging_assist.slides.analysis); append items; return failures.

    The first Ctrl-C cancels after the current batch and writes what was done (partial
    heat maps, ``cancelled: true``); a second one stops at once."""
    import signal
    import threading

    from tqdm import tqdm

    from ..inference.device import resolve_device
    from ..slides.analysis import analyze_slide
    from ..slides.reader import SlideError

    card = model.card
    device = str(resolve_device(args.device))
    cancel = threading.Event()
    old = None

    def on_sigint(signum, frame):
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        print("\ncancelling after the current batch of tiles (Ctrl-C again to stop now)",
              file=sys.stderr)

    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGINT, on_sigint)
    failed = 0
    try:
        for sp in slides:
            base = Path(sp).stem if Path(sp).is_file() else Path(sp).name
            stem, k = base, 1
            while stem in used_stems:
                k += 1
                stem = f"{base}_{k}"
            used_stems.add(stem)
            bar = tqdm(total=0, desc=f"{card.id} {Path(sp).name}"[:60], unit="tile", file=sys.stderr,
                       disable=not sys.stderr.isatty(), dynamic_ncols=True)

            def prog(done, total, _bar=bar):
                _bar.total = total
                _bar.n = done
                _bar.refresh()

            try:
                d = analyze_slide(sp, model, out_dir, stem, device=device, batch_size=args.batch_size,
                                  top_k=args.top_tiles, heatmap_format=args.heatmap_format,
                                  progress=prog, cancel=cancel)
            except (UserError, SlideError) as e:
                failed += 1
                results.append({"source": str(sp), "kind": "slide", "model": card.id,
                                "model_version": card.version, "error": str(e)})
                print(f"error: {sp}: {e}", file=sys.stderr)
                continue
            finally:
                bar.close()
            results.append(d)
            for w in d["warnings"]:
                print(f"warning: {Path(sp).name}: {w}", file=sys.stderr)
            print(_summary(d), file=sys.stderr)
            if d["cancelled"]:
                notes.append("interrupted by the user: results are partial")
                failed += 1
                break
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
    return failed


def _summary(d: dict) -> str:
    if d.get("kind") == "slide":
        unit = "mm²" if d["area_unit"] == "mm2" else "px²"
        return (f"{d['source']}: {d['tiling']['n_tiles_run']} tissue tiles; "
                + ", ".join(f"{k} {v:.4g} {unit}" for k, v in d["areas"].items()))
    if "probabilities" in d:
        top = max(d["probabilities"], key=d["probabilities"].get)
        er = d.get("explanation_region")
        if er:
            from ..explain.regions import region_text

            return f"{d['source']}: {top} {d['probabilities'][top]:.3f}; {region_text(er)}"
        return f"{d['source']}: {top} {d['probabilities'][top]:.3f}"
    sizes = d.get("volume_ml") or d.get("area_mm2") or d.get("area_px") or {}
    unit = "mL" if d.get("volume_ml") else ("mm²" if d.get("area_mm2") else "px")
    return f"{d['source']}: " + ", ".join(f"{k} {v:g} {unit}" for k, v in sizes.items())
