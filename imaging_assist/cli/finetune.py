"""``imaging-assist finetune --model ID [--from-feedback] [--data DIR --labels CSV] --out DIR`` and
the model-version actions ``models compare ID A B``, ``models promote ID VERSION [--force
REASON]``, ``models rollback ID`` (registered into ``models`` by one call in cli/models.py).
Engine: :mod:`imaging_assist.monitoring.finetune` and :mod:`imaging_assist.monitoring.versions`."""

from __future__ import annotations

from pathlib import Path

from .common import int_at_least


def register(subparsers) -> None:
    a = subparsers.add_parser("finetune", help="fine-tune a model on your reader-confirmed cases -> a candidate version")
    a.add_argument("--model", required=True, metavar="ID")
    a.add_argument("--from-feedback", action="store_true",
                   help="use the readers' confirmed labels from the prediction log (images found in --data)")
    a.add_argument("--data", type=Path, metavar="DIR", help="folder of the local images")
    a.add_argument("--labels", type=Path, metavar="CSV",
                   help="CSV relative to DIR: file, label (and patient_id); for a segmenter file, mask (and patient_id), "
                        "the mask's pixel value being the label index")
    a.add_argument("--out", required=True, type=Path, metavar="DIR", help="new folder for the candidate model")
    a.add_argument("--epochs", type=int_at_least(1), default=6)
    a.add_argument("--train", choices=("head", "all"), default="all",
                   help="train every layer (default) or the classification head only (classifiers)")
    a.add_argument("--lr", type=float, default=None,
                   help="max learning rate (default 2e-3; head only 1e-2; segmenters 1e-3)")
    a.add_argument("--margin", type=float, default=None,
                   help="non-inferiority margin (default AUC 0.05, Dice 0.02; site: monitor.json)")
    a.add_argument("--replay", type=int_at_least(0), default=200, metavar="N",
                   help="images of the model's own validation split (segmenters: its training images) mixed in "
                        "(0: none)")
    a.add_argument("--original-test-max", type=int_at_least(10), default=None, metavar="N",
                   help="measure on at most N images of the original test split (default: all)")
    a.add_argument("--original-data", type=Path, metavar="DIR", help="the model's training data folder")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_finetune)


def register_versions(msub) -> None:
    """``models compare / promote / rollback`` (called from cli/models.py)."""
    s = msub.add_parser("compare", help="two versions of a model on the same local hold-out")
    s.add_argument("id", metavar="ID")
    s.add_argument("a", metavar="VERSION_A")
    s.add_argument("b", metavar="VERSION_B")
    s.add_argument("--holdout", type=Path, metavar="CSV",
                   help="file,label,patient_id (segmenters: file,mask,patient_id; default: the candidate's)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_models_compare)
    s = msub.add_parser("promote", help="make a candidate version active (only when not worse, unless --force)")
    s.add_argument("id", metavar="ID")
    s.add_argument("version", metavar="VERSION")
    s.add_argument("--force", metavar="REASON", help="promote although the non-inferiority check fails")
    s.set_defaults(func=cmd_models_promote)
    s = msub.add_parser("rollback", help="back to the previous active version (or the shipped one)")
    s.add_argument("id", metavar="ID")
    s.set_defaults(func=cmd_models_rollback)


def _fmt(d: dict) -> str:
    if "dice" in d:
        return f"Dice {d['dice']:.3f} [{d['dice_ci95'][0]:.3f}-{d['dice_ci95'][1]:.3f}]"
    return (f"AUC {d['auc']:.3f} [{d['auc_ci95'][0]:.3f}-{d['auc_ci95'][1]:.3f}], sens {d['sensitivity']:.2f}, "
            f"spec {d['specificity']:.2f}")


def _print_comparison(name: str, c: dict) -> None:
    print(f"{name}: {c['data']} ({c['patients']} patients)")
    print(f"  base      {_fmt(c['base'])}")
    print(f"  candidate {_fmt(c['candidate'])}")
    print(f"  {c.get('metric', 'AUC')} difference {c['diff']:+.3f} "
          f"(95% CI {c['diff_ci95'][0]:+.3f} to {c['diff_ci95'][1]:+.3f})")


def cmd_finetune(args) -> int:
    from ..monitoring.finetune import finetune
    from .common import print_json

    res = finetune(args.model, args.out, data=args.data, labels_csv=args.labels, from_feedback=args.from_feedback,
                   epochs=args.epochs, train=args.train, replay=args.replay,
                   original_test_max=args.original_test_max, original_data=args.original_data, seed=args.seed, lr=args.lr,
                   margin=args.margin,
                   log=(lambda s: None) if args.json else print)
    if args.json:
        print_json(res)
        return 0
    print(f"candidate {res['model_id']} {res['version']} written to {res['folder']}")
    for k, c in res["comparisons"].items():
        _print_comparison(k.replace("_", " "), c)
    ni = res["non_inferiority"]
    print(("passes" if ni["passes"] else "FAILS") + f" non-inferiority ({ni['rule']})"
          + ("" if ni["passes"] else ": " + "; ".join(ni["reasons"])))
    print(f"next: imaging-assist models promote {res['model_id']} {res['version']}. Not for clinical use.")
    return 0


def cmd_models_compare(args) -> int:
    from ..monitoring.finetune import compare
    from .common import print_json

    r = compare(args.id, args.a, args.b, args.holdout)
    if args.json:
        print_json(r)
    else:
        c = r["comparison"]
        _print_comparison(f"{args.id} {args.a} (base) vs {args.b} (candidate)", c)
    return 0


def cmd_models_promote(args) -> int:
    from ..monitoring.versions import promote

    r = promote(args.id, args.version, args.force)
    if r.get("unchanged"):
        print(r.get("message") or f"{r['model_id']}: {r['active']} is already active: nothing changed")
        return 0
    print(f"{r['model_id']}: {r['active']} is now active (was {r['previous'] or 'the shipped version'})"
          + (f"; FORCED: {args.force}" if r.get("forced") else ""))
    return 0


def cmd_models_rollback(args) -> int:
    from ..monitoring.versions import rollback

    r = rollback(args.id)
    print(f"{r['model_id']}: rolled back from {r['from']} to {r['active'] or 'the shipped version'}")
    return 0
