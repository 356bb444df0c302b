"""``imaging-assist batch SOURCE... --model ID [--model ID2 ...] --out DIR``: analyse a whole
archive (folders, zips, DICOMDIRs, slides) into ``DIR/batch.sqlite`` plus analyze's files and
``results.json`` per item (``DIR/<model>/<item>-<hash>/``).  Resumable: the same command
again skips what is done for the same content and model version.  Engine:
:mod:`imaging_assist.batch` (docs/scaling.md).
"""

from __future__ import annotations

import os
import sys

from ..errors import UserError
from ..safe_text import printable
from .common import IG_STEPS_HELP, MAX_IG_STEPS, int_at_least


def register(subparsers) -> None:
    b = subparsers.add_parser(
        "batch", help="run models over whole archives into DIR/batch.sqlite (resumable; local or Ray)")
    b.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="folders, zips, DICOMDIRs, DICOM/image files, whole-slide images, or a PACS "
                        "query pacs://NODE?PatientID=...&Modality=CR&StudyDate=YYYYMMDD-YYYYMMDD "
                        "(a configured node; retrieved into DIR/pacs-cache first)")
    b.add_argument("--model", action="append", required=True, metavar="ID",
                   help="model id or model folder (repeat for several models)")
    b.add_argument("--out", required=True, metavar="DIR")
    b.add_argument("--deidentify", action="store_true",
                   help="run on de-identified copies of the DICOM sources (PS3.15 basic profile, "
                        "burned-in text blacked out; as `anonymize`): results, reports and DICOM "
                        "objects carry no PHI; non-DICOM files are left out")
    b.add_argument("--explain", nargs="?", const="gradcam", default=None, metavar="METHOD",
                   help="explain with gradcam (default), ig, saliency or occlusion")
    b.add_argument("--label", action="append", metavar="LABEL", help="label to explain (repeatable)")
    b.add_argument("--dicom", action="store_true",
                   help="also write DICOM SEG, Parametric Map and SR per item (DIR/<model>/<item>/dicom/)")
    b.add_argument("--report", action="store_true", help="also write report.pdf per item")
    b.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: one process, decoding overlapped with the model (default); "
                        "ray: Ray tasks and model actors, in-process or on a cluster")
    b.add_argument("--address", metavar="HOST:PORT",
                   help="join this Ray cluster (default: RAY_ADDRESS, else Ray in this process)")
    b.add_argument("--actors", type=int_at_least(1), default=None,
                   help="Ray model actors (default: one per GPU, else one per CPU)")
    b.add_argument("--chunk", type=int_at_least(1), default=16, help="items per Ray task (16)")
    b.add_argument("--decoders", type=int_at_least(1), default=2,
                   help="local: decoding threads (2)")
    b.add_argument("--processes", type=int_at_least(0), default=0,
                   help="--engine local: worker processes (0, the default: one per CPU from 200 "
                        "items up, a slide file of 64 MB or more counting as 200; else 1)")
    b.add_argument("--torch-threads", type=int_at_least(1), default=None,
                   help="torch threads per model worker (default: CPUs minus one)")
    b.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    b.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    b.add_argument("--ig-steps", type=int_at_least(1, MAX_IG_STEPS), default=32, help=IG_STEPS_HELP)
    b.add_argument("--no-faithfulness", action="store_true")
    b.add_argument("--research-override", action="store_true",
                   help="run on items the model card does not fit: decisions withheld, recorded")
    b.add_argument("--batch-size", type=int_at_least(1), default=None,
                   help="images per forward pass: slide tiles (default 32), and images of several "
                        "items together for a classifier (default: its card's inference.batch_size)")
    b.add_argument("--tiles-per-task", type=int_at_least(1), default=256,
                   help="worker processes / Ray: one slide's tiles go to the workers in tasks of "
                        "this many (256)")
    b.add_argument("--top-tiles", type=int_at_least(0), default=3)
    b.add_argument("--heatmap-format", choices=["tif", "npz"], default="tif")
    b.add_argument("--json", action="store_true", help="print the run's counts as JSON on stdout")
    b.set_defaults(func=cmd_batch)


def cmd_batch(args) -> int:
    import json

    from ..batch.item import Settings
    from ..batch.run import run_batch
    from ..explain.names import canonical_method  # no torch: a driver that only schedules never loads it
    from ..privacy.deid import exit_on_sigterm

    # SIGTERM (kill, a supervisor's terminate(), docker stop) does what Ctrl-C does: the worker
    # processes are stopped, the run is marked interrupted, exit 130, and atexit removes the
    # --deidentify temporary folders.  By default it ended this process alone: its workers
    # (a model each) stayed as orphans for ever and the run stayed 'running'.
    exit_on_sigterm(interrupt=True)
    if args.deidentify:  # issue 16: every output made from de-identified data, as analyze does
        if args.engine == "ray" and (args.address or os.environ.get("RAY_ADDRESS")):
            raise UserError("--deidentify with a Ray cluster: the copies would exist on this machine "
                            "only; run `imaging-assist anonymize` onto a folder every node mounts, "
                            "then batch that folder")
        from ..batch.pacs_source import is_pacs_source, retrieve
        from ..privacy.deid import deidentified_input

        def err(m):  # the de-identification's lines name the input files: shown escaped
            print(printable(m), file=sys.stderr)

        local = []
        tmp = None
        for s in args.sources:  # a PACS query is retrieved first, then de-identified like a folder
            if is_pacs_source(s):
                if tmp is None:  # the identified originals stay out of OUT; removed at exit
                    import atexit
                    import shutil
                    import tempfile

                    tmp = tempfile.mkdtemp(prefix="ia-pacs-")
                    atexit.register(shutil.rmtree, tmp, True)  # also on SIGTERM (above)
                folder, notes = retrieve(s, tmp, echo=err)
                for n in notes:
                    err(f"note: {n}")
                s = folder
            local.append(s)
        args.sources = [deidentified_input(s, echo=err) for s in local]
    explain = canonical_method(args.explain) if args.explain is not None else None
    if args.label and explain is None:
        explain = "gradcam"
    settings = Settings(out_dir=args.out, explain=explain, explain_labels=args.label,
                        ig_steps=args.ig_steps, faithfulness=not args.no_faithfulness,
                        dicom=args.dicom, report=args.report, override=args.research_override,
                        device=args.device, precision=args.precision, slide_batch_size=args.batch_size or 32,
                        batch_size=args.batch_size or 0,
                        top_tiles=args.top_tiles, heatmap_format=args.heatmap_format,
                        torch_threads=args.torch_threads or 0, slide_tiles_per_task=args.tiles_per_task)
    if getattr(args, "own_process", False) and args.engine == "local":
        # a small batch runs its models in this process: leave out what MONAI networks do not
        # need, as analyze does (the worker processes of a large one do it themselves)
        from ..models.lean import lean_imports

        lean_imports(args.model, explain=explain is not None)
    import shlex

    command = shlex.join(["imaging-assist", "batch", *map(str, args.sources)]
                         + [f"--model={m}" for m in args.model] + [f"--out={args.out}", f"--engine={args.engine}"]
                         + (["--explain=" + explain] if explain else []))
    r = run_batch([os.fspath(s) for s in args.sources], args.model, settings, engine=args.engine,
                  address=args.address, command=command, decoders=args.decoders, chunk=args.chunk,
                  actors=args.actors, processes=args.processes)
    line = (f"{r['ok']} ok, {r['failed']} failed, {r['skipped']} skipped, {r['resumed']} already done"
            + (f", {r['duplicates']} duplicate(s) of other items" if r.get("duplicates") else "")
            + (f", {r['rerun']} done item(s) run again" if r.get("rerun") else "")
            + f"; {r['seconds']:.1f} s" + (f" ({r['items_per_s']:.2f} items/s)" if r["items_per_s"] else "")
            + f"; table {r['table']}")
    if args.json:
        print(json.dumps(r))
        print(line, file=sys.stderr)
    else:
        print(line)
    if r["state"] == "interrupted":
        print("interrupted: the finished rows are in the table; run the same command again to resume",
              file=sys.stderr)
        return 130
    return 1 if r["failed"] else 0
