"""``imaging-assist analyze PATH --model ID``: run a model on DICOM series, plain images or
whole-slide images and write ``DIR/results.json``.

Which series a model runs on is decided by :func:`imaging_assist.models.matching.match_card`
(the same rules as the demo and the viewer): first on the index (headers), then again on the
loaded volume (3D geometry and units are only known then).  Handlers return an exit code
(0 ok, 1 when some items failed) and raise ``UserError`` for one-line errors.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UserError
from ..safe_text import printable
from .common import (IG_STEPS_HELP, MAX_IG_STEPS, finish_run, int_at_least, item_failure, out_folder,
                     print_item_error)


def register(subparsers) -> None:
    a = subparsers.add_parser(
        "analyze", help="run a model on DICOM series or plain images and write DIR/results.json")
    a.add_argument("path", metavar="PATH", help="DICOM file/folder, image file or folder of "
                                                "PNG/JPEG/TIFF/BMP images")
    a.add_argument("--model", required=True, metavar="ID", help="model id or model folder")
    a.add_argument("--explain", nargs="?", const="gradcam", default=None, metavar="METHOD",
                   help="explain with gradcam (default), ig, saliency or occlusion")
    a.add_argument("--label", action="append", metavar="LABEL",
                   help="label to explain (repeatable; default: positive/top label or every "
                        "segmented structure)")
    a.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    a.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    a.add_argument("--out", required=True, metavar="DIR")
    a.add_argument("--ig-steps", type=int_at_least(1, MAX_IG_STEPS), default=32, help=IG_STEPS_HELP)
    a.add_argument("--no-faithfulness", action="store_true",
                   help="skip the deletion-AUC faithfulness score")
    a.add_argument("--json", action="store_true", help="print results.json to stdout")
    a.add_argument("--dicom", action="store_true",
                   help="also write DICOM SEG, Parametric Map, SR and Encapsulated PDF into DIR/dicom/")
    a.add_argument("--deidentify", action="store_true",
                   help="analyse a de-identified copy of PATH (PS3.15 basic profile, burned-in text "
                        "blacked out; as `anonymize`): results, report and DICOM objects carry no PHI")
    a.add_argument("--research-override", action="store_true",
                   help="run on series the model card does not fit (wrong modality, body part, "
                        "image kind, age or view): decisions withheld, the override recorded")
    n = a.add_argument_group("CT nodules (ct-nodule-malignancy, ct-nodule-seg; PATH a DICOM CT series "
                             "or NIfTI volumes)")
    n.add_argument("--at", action="append", metavar="X,Y,Z",  # "-31.2,0,0" too: cli.main._glue_coordinates
                   help="a nodule at this point, patient coordinates in mm (LPS; repeatable); a NIfTI "
                        "volume with no point is taken as a crop centred on its nodule")
    n.add_argument("--points", metavar="CSV", help="nodule points: a CSV with columns x,y,z[,id] (mm, LPS)")
    n.add_argument("--prior", metavar="RESULTS",
                   help="an older study's nodule analysis (results.json or its folder): each nodule's "
                        "growth since the prior nodule of the same id (give ids in --points), in "
                        "results.json, the report and the SR")
    g = a.add_argument_group("whole-slide images (models whose card has a \"slide\" block)")
    g.add_argument("--batch-size", type=int_at_least(1), default=32, help="tiles per forward pass (32)")
    g.add_argument("--top-tiles", type=int_at_least(0), default=3,
                   help="top tiles per class written with a Grad-CAM each (3)")
    g.add_argument("--heatmap-format", choices=["tif", "npz"], default="tif",
                   help="per-class heat maps as a pyramidal float32 TIFF (default) or NumPy .npz")
    a.set_defaults(func=cmd_analyze)


# =========================================================================== analyze
def _collect_inputs(path: Path, card, exclude=(), override: bool = False, unreadable: list | None = None):
    """([(kind, payload, stem)], notes): kind "image" (payload Path) or "series" (SeriesInfo).

    ``exclude``: slide files/folders analysed as slides (left out here); ``unreadable`` gets the
    folders that could not be read (the run then exits 1: it did not see everything)."""
    unreadable = [] if unreadable is None else unreadable
    from ..inference.inputs import collect_inputs
    from ..models.matching import SeriesFacts, match_card

    found = collect_inputs(path, exclude)
    items: list[tuple[str, object, str]] = []
    unreadable[:] = found.unreadable_folders
    notes = [f"{p}: {reason}" for p, reason in found.problems]
    if found.images:  # one plain 2D image each, no modality, no physical units: the same rules
        m = match_card(card, SeriesFacts(is_dicom=False, units="", loaded=False))
        if not m.ok and override:
            notes.append(f"{len(found.images)} plain image(s) run under --research-override: {m.reason}")
        if m.ok or override:
            items += [("image", p, stem) for p, stem in found.images]
        else:
            notes.append(f"{len(found.images)} plain image(s) skipped: {m.reason}")
    for s in found.results:
        notes.append(f"series {s.key} ({s.modality} {s.description}) skipped: a result object, "
                     "not an image")
    for s, stem in found.series:
        m = match_card(card, SeriesFacts.from_series(s))
        if not m.ok and override:
            notes.append(f"series {s.key} run under --research-override: {m.reason}")
        elif not m.ok:
            notes.append(f"series {s.key} ({s.modality} {s.description}) skipped: {m.reason}")
            continue
        items.append(("series", s, stem))
    return items, notes


def _lean(args) -> None:
    """Before anything imports MONAI: leave out torchvision and scipy.signal when only MONAI
    networks run (7.3 -> 5.1 s for one film here; :mod:`..models.lean`).  The CT nodule
    models run as a pair, whichever is named."""
    from ..models.lean import lean_imports
    from ..models.registry import Registry
    from ..nodules.run import NODULE_MODELS, is_nodule_model

    try:
        pair = is_nodule_model(Registry().get(args.model).card)
    except Exception:  # noqa: BLE001 - an unknown or broken model: cmd_analyze says so in one line
        return
    lean_imports([args.model, *NODULE_MODELS] if pair else [args.model], explain=args.explain is not None)


def cmd_analyze(args) -> int:
    if getattr(args, "own_process", False):
        _lean(args)
    import warnings as _w

    from tqdm import tqdm

    from ..explain.methods import ExplainConfig, canonical_method
    from ..inference.jobs import Cancelled
    from ..inference.pipelines import RunOptions, run_model
    from ..demo import series_source
    from ..inference.results import write_item_files
    from ..outputs import unique_stem
    from ..models.loaders import load_model
    from ..models.matching import match_card, series_facts

    from ..models.registry import Registry
    from ..privacy.deid import exit_on_sigterm

    # SIGTERM (kill, timeout, a supervisor's stop) ends the command through SystemExit, as Ctrl-C
    # does: the temporary folders are removed on the way out.  It ended the process at once, and
    # a per-study report (the patient's name, ID, birth date and the film) was left in /tmp.
    exit_on_sigterm()
    if getattr(args, "prior", None) and getattr(args, "deidentify", False):
        # the de-identified copy has no study date (PS3.15 basic profile), and the prior's dates and
        # series UID would carry identifying data into a result meant to have none
        raise UserError("--prior cannot be used with --deidentify (growth needs both studies' dates, which a "
                        "de-identified copy does not carry): compare the original analyses with "
                        "`imaging-assist nodule-growth`")
    from ..outputs import refuse_inside

    entry = Registry().get(args.model)
    refuse_inside(args.out, [args.path])  # before a de-identified copy stands in for the input
    if getattr(args, "deidentify", False):  # issue 16: every output made from a de-identified copy
        from ..privacy.deid import deidentified_input

        args.path = deidentified_input(args.path, echo=lambda m: print(m, file=sys.stderr))
    card = entry.card
    from ..nodules.run import is_nodule_model
    from .analyze_nodules import cmd_analyze_nodules

    if card is not None and is_nodule_model(card):  # a point in a CT: imaging_assist/nodules/run.py
        return cmd_analyze_nodules(args, card, Path(args.path).expanduser())
    if getattr(args, "at", None) or getattr(args, "points", None) or getattr(args, "prior", None):
        raise UserError(f"--at/--points/--prior are for the CT nodule models, not {args.model}")
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
    override = bool(getattr(args, "research_override", False))
    unreadable: list[str] = []
    items, notes = _collect_inputs(path, card, exclude=slides, override=override, unreadable=unreadable)

    def nothing_matches(why: list[str]) -> UserError:
        return UserError(f"nothing in {path} matches model {card.id} ({card.spatial_dims}D "
                         f"{'/'.join(card.modality)}{' ' + card.body_part if card.body_part else ''})"
                         + (f": {'; '.join(why[:3])}" if why else ""))

    if not items and not slides:
        raise nothing_matches(notes)
    unknown = [lab for lab in (args.label or []) if lab not in card.labels]
    if unknown:
        raise UserError(f"unknown label(s) {', '.join(map(repr, unknown))} for model {card.id} "
                        f"(labels: {', '.join(card.labels)})")
    from ..inference.device import resolve_device

    resolve_device(args.device)  # an unavailable --device: one error now, not one per item
    out_dir = out_folder(args.out)  # checked against the input by cmd_analyze (refuse_inside)
    model = load_model(card, "cpu")
    opts = RunOptions(device=args.device, precision=args.precision, explain=explain,
                      explain_labels=args.label)
    region = None  # card explanation_region: heat map mass inside a segmenter's structures
    if explain is not None and card.explanation_region is not None:
        from ..explain.regions import RegionExplainer

        region = RegionExplainer(card, device=args.device)
    results: list[dict] = []
    captured: dict[int, dict] = {}  # per item: what the PDF report needs from the loaded volume
    dicom_run = None
    if getattr(args, "dicom", False):
        from ..export.dicom import DicomRun

        dicom_run = DicomRun(out_dir, echo=lambda m: print(m, file=sys.stderr))
    skipped: list[str] = []  # items that the loaded volume showed not to fit the card
    failed = 0
    interrupted = False
    bar = tqdm(total=len(items), desc=f"{card.id}", unit="item", file=sys.stderr,
               disable=not sys.stderr.isatty() or not items, dynamic_ncols=True)
    used_stems: set[str] = set()
    try:
        for kind, payload, stem in items:
            stem = unique_stem(stem, used_stems)
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

                # the same rules as before loading, now with 3D geometry and units known
                m = match_card(card, series_facts(vol, payload if kind == "series" else None))
                overridden = list(m.reasons) if (not m.ok and override) else []
                if not m.ok and not overridden:
                    skipped.append(f"{src} skipped: {m.reason}")
                    bar.update(1)
                    continue

                with _w.catch_warnings(record=True) as caught:
                    _w.simplefilter("always")
                    res = run_model(model, vol, opts, progress=on_progress)
                    if region is not None:
                        region.apply(res, vol, progress=on_progress)
                for c in caught:
                    if issubclass(c.category, RuntimeWarning) and "out of memory" in str(c.message):
                        print(printable(f"warning: {c.message}"), file=sys.stderr)
                res.source = str(payload) if kind == "image" else series_source(vol, src)
                d = write_item_files(res, vol, out_dir, stem)
                d["source"] = res.source
                from ..inference.checks import apply_trust_checks

                apply_trust_checks(d, res, card, overridden, m.warnings)
                from ..export.report_pdf import capture

                captured[len(results)] = capture(d, vol, out_dir, res)
                results.append(d)
                if dicom_run is not None:  # DICOM SEG/PM/SR while the volume is in memory
                    dicom_run.add(kind, vol, res, d, stem, captured=captured[len(results) - 1])
                # above the progress bar on a terminal (tqdm.write): the line was printed only when
                # there was no bar, so on a terminal analyze said nothing but where it wrote
                bar.write(_summary(d), file=sys.stderr)
            except Cancelled:
                raise
            except Exception as e:  # noqa: BLE001
                # one item that cannot be done (a bad file; an image too large for this memory; a
                # defect only this file hits) is one failed item: the others are still analysed
                # and results.json written
                msg = item_failure(e, args)
                failed += 1
                results.append({"source": src, "model": card.id, "model_version": card.version,
                                "error": msg})
                print_item_error(src, msg)
            bar.update(1)
        if slides:
            failed += _analyze_slides(slides, model, args, out_dir, results, notes, used_stems)
    except KeyboardInterrupt:
        notes.append("interrupted by the user: results are partial")
        print("interrupted: writing partial results", file=sys.stderr)
        interrupted = True  # not a failed item: the summary counts the inputs never reached
    finally:
        bar.close()
    interrupted = interrupted or any(d.get("cancelled") for d in results)  # a slide cancelled by Ctrl-C
    notes += skipped
    if not results and skipped:
        raise nothing_matches(skipped)
    summary = card.summary()
    summary["sha256"] = dict(model.hashes)
    summary["intended_use"] = card.intended_use
    rc = finish_run(args, path, out_dir, results, summary, notes, captured, dicom_run, failed,
                    inputs=len(items) + len(slides) if interrupted else None)
    return rc or (1 if unreadable else 0)  # folders not read (named in the notes): not everything was seen


def _analyze_slides(slides, model, args, out_dir: Path, results: list, notes: list,
                    used_stems: set) -> int:
    """Tile each slide (see imaging_assist.slides.analysis); append items; return failures.

    The first Ctrl-C cancels after the current batch and writes what was done (partial
    heat maps, ``cancelled: true``); a second one stops at once."""
    import signal
    import threading

    from tqdm import tqdm

    from ..inference.device import resolve_device
    from ..slides.analysis import analyze_slide, ignored_options

    card = model.card
    notes += [n for n in ignored_options(args.precision, args.explain) if n not in notes]
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
            from ..outputs import unique_stem

            stem = unique_stem(Path(sp).stem if Path(sp).is_file() else Path(sp).name, used_stems)
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
            except Exception as e:  # noqa: BLE001 - one failed slide (a bad file, or a defect only it hits)
                msg = item_failure(e, args)
                failed += 1
                results.append({"source": str(sp), "kind": "slide", "model": card.id,
                                "model_version": card.version, "error": msg})
                print_item_error(sp, msg)
                continue
            finally:
                bar.close()
            results.append(d)
            for w in d["warnings"]:
                print(printable(f"warning: {Path(sp).name}: {w}"), file=sys.stderr)
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
    """One line per item; a flagged ``ood`` says "outside what this model was trained on"."""
    from ..explain.flags import flagged_text
    from ..validation.ood import summary_note

    line = _summary_line(d)
    lines = [line + summary_note(d, line)]
    lines += [f"warning: {d.get('source')}: {t}" for t in map(flagged_text, d.get("heatmaps") or []) if t]
    return "\n".join(map(printable, lines))  # the source path and labels come from files


def _summary_line(d: dict) -> str:
    if d.get("kind") == "slide":
        unit = "mm²" if d["area_unit"] == "mm2" else "px²"
        return (f"{d['source']}: {d['tiling']['n_tiles_run']} tissue tiles; "
                + ", ".join(f"{k} {v:.4g} {unit}" for k, v in d["areas"].items()))
    if "probabilities" in d:
        top = max(d["probabilities"], key=d["probabilities"].get)
        er = d.get("explanation_region")
        dec = (d.get("decision") or {}).get("text")
        if dec:  # most likely class first, then each decision with its test-split figures
            ranked = ", ".join(f"{k} {d['probabilities'][k]:.3f}" for k in d["decision"]["ranking"])
            tail = ""
            if er:
                from ..explain.regions import region_text

                tail = f"; {region_text(er)}"
            return f"{d['source']}: {ranked}; {dec}{tail}"
        if er:
            from ..explain.regions import region_text

            return f"{d['source']}: {top} {d['probabilities'][top]:.3f}; {region_text(er)}"
        return f"{d['source']}: {top} {d['probabilities'][top]:.3f}"
    sizes = d.get("volume_ml") or d.get("area_mm2") or d.get("area_px") or {}
    unit = "mL" if d.get("volume_ml") else ("mm²" if d.get("area_mm2") else "px")
    q = (d.get("quality") or {}).get("text")
    return (f"{d['source']}: " + ", ".join(f"{k} {v:g} {unit}" for k, v in sizes.items())
            + (f"; {q}" if q else ""))
