"""``imaging-assist evaluate DATA --model ID --labels CSV --out DIR``: measure a model on a
site's own labelled images (:mod:`imaging_assist.validation.evaluate`); writes
``DIR/evaluation.json`` and ``DIR/evaluation.pdf``.  ``--save-site-threshold`` stores the
threshold for ``--target-sensitivity`` as this site's operating point
(:mod:`imaging_assist.models.site`), never in the shipped card."""

from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from ..safe_text import printable
from .common import int_at_least, out_folder


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must lie between 0 and 1 (got {text})")
    return v


def register(subparsers) -> None:
    a = subparsers.add_parser(
        "evaluate", help="measure a model on your own labelled images: DIR/evaluation.json + .pdf")
    a.add_argument("data", metavar="DATA", help="folder of DICOM files or PNG/JPEG/TIFF images")
    a.add_argument("--model", required=True, metavar="ID", help="model id or model folder")
    a.add_argument("--labels", required=True, metavar="CSV",
                   help="CSV keyed by file (name or path), sop_instance_uid or study_instance_uid, "
                        "with a 'label' column (segmenters: 'mask'); optional patient_id and "
                        "subgroup columns")
    a.add_argument("--out", required=True, metavar="DIR")
    a.add_argument("--group-by", action="append", default=[], metavar="COL",
                   help="subgroup column of the CSV, or sex, age_band, manufacturer, "
                        "view_position, institution from DICOM (repeatable)")
    a.add_argument("--target-sensitivity", type=_fraction, default=0.95, metavar="S",
                   help="choose a second threshold with at least this sensitivity (0.95)")
    a.add_argument("--positive", metavar="LABEL", help="the label evaluated (default: the card's "
                                                        "thresholded label)")
    a.add_argument("--bootstrap", type=int_at_least(100), default=1000, metavar="N",
                   help="bootstrap resamples for the intervals (1000)")
    a.add_argument("--force-small-site-threshold", dest="force", action="store_true",
                   help=f"save a site threshold even from fewer than {MIN_SITE_POSITIVES} positive patients")
    a.add_argument("--save-site-threshold", action="store_true",
                   help="save the target-sensitivity threshold as this site's operating point "
                        "(the app then uses it and says so)")
    a.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from tqdm import tqdm

    from ..validation.evaluate import evaluate
    from ..validation.evaluate_report import write_json, write_pdf

    out_dir = out_folder(args.out, sources=[args.data])
    bar = tqdm(total=0, desc="evaluate", unit="image", file=sys.stderr,
               disable=not sys.stderr.isatty(), dynamic_ncols=True)

    def prog(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        report = evaluate(args.data, args.model, args.labels, group_by=args.group_by,
                          target_sensitivity=args.target_sensitivity, n_boot=args.bootstrap,
                          positive=args.positive, progress=prog)
    finally:
        bar.close()
    if args.save_site_threshold:
        report["site_threshold"] = _save_site(report, args, out_dir)
    jp = write_json(report, out_dir)
    pp = write_pdf(report, out_dir)
    for n in report["notes"]:
        print(printable(f"note: {n}"), file=sys.stderr)  # notes name groups and files from the data
    print("\n".join(printable(ln) for ln in _summary(report).splitlines()))
    if report.get("site_threshold"):
        print(f"saved {report['site_threshold']['text']} ({report['site_threshold']['file']})")
    print(f"wrote {jp} and {pp}")
    return 0


MIN_SITE_POSITIVES = 20  # positive patients below which a site threshold is not saved (unless forced)


def _save_site(report: dict, args, out_dir) -> dict:
    from ..models.registry import Registry
    from ..models.site import save_site_threshold, site_text

    if "operating_points" not in report:
        raise UserError("--save-site-threshold is for classifiers (a segmenter has no threshold)")
    op = report["operating_points"]["target_sensitivity"]
    if op.get("threshold") is None:
        raise UserError(f"no site threshold saved: {op.get('note', 'no threshold')}")
    card = Registry().get(args.model).card
    label = report["positive_label"]
    if label not in (card.thresholds or {}):
        # a threshold on another label would add a second decision to every run (and the
        # prediction log, and the drift monitor, would follow that label's score instead)
        raise UserError(f"no site threshold saved: the card decides on {', '.join(card.thresholds) or 'no label'}, "
                        f"not {label}; evaluate with --positive {next(iter(card.thresholds), label)}")
    ov = op["overall"]
    n = report["data"]["n_clusters"]
    pos = ov.get("n_positive_clusters", ov.get("n_positive"))
    if isinstance(pos, int) and pos < MIN_SITE_POSITIVES and not getattr(args, "force", False):
        raise UserError(f"no site threshold saved: {pos} positive {report['data']['cluster_unit']} are too few to "
                        f"set a threshold on (at least {MIN_SITE_POSITIVES})")
    path, entry = save_site_threshold(
        card, report["positive_label"], op["threshold"], n,
        sensitivity=ov["sensitivity"]["value"], specificity=ov["specificity"]["value"],
        target_sensitivity=op["target"], data=f"{report['data']['n_analysed']} local images, "
                                              f"{args.labels}",
        evaluation=str(out_dir / "evaluation.json"))
    return {"file": str(path), "version": entry["version"], "threshold": entry["threshold"],
            "text": site_text(entry["threshold"], n, entry["date"])}


def _summary(r: dict) -> str:
    from ..validation.evaluate import fmt

    m = r["model"]
    lines = [f"{m['id']} {m['version']} on {r['data']['n_analysed']} images "
             f"({r['data']['n_clusters']} {r['data']['cluster_unit']})"]
    if "operating_points" in r:
        for key, op in r["operating_points"].items():
            if op.get("threshold") is None:
                lines.append(f"  {key}: {op.get('note')}")
                continue
            o = op["overall"]
            lines.append(f"  {key} threshold {op['threshold']:.4g}: AUC {fmt(o['AUC'])}, "
                         f"sensitivity {fmt(o['sensitivity'])}, specificity {fmt(o['specificity'])}, "
                         f"PPV {fmt(o['PPV'])}, NPV {fmt(o['NPV'])}")
    else:
        o = r["overall"]
        u = r["hd95_unit"]
        left = f" (mean of {o['n'] - o['n_empty']} of {o['n']}: {o['n_empty']} empty mask(s) left out)" \
            if o.get("n_empty") and o["n_empty"] < o["n"] else ""
        lines.append(f"  Dice {fmt(o['Dice'])}, HD95 {fmt(o['HD95_' + u], 1)} {u}{left}")
    if r["ood"].get("available"):
        lines.append(f"  {r['ood']['n_flagged']} of {r['ood']['n']} flagged out-of-distribution")
    return "\n".join(lines)
