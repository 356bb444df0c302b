"""One batch item through ``analyze``'s own functions: decode, run, write.

:func:`decode` is ``analyze``'s loading step (``read_image`` / ``load_series``); it is the CPU
part the engines run ahead of the model.  :class:`ModelRunner` holds one loaded model (and
the card's region segmenter) and does, per item, exactly what ``analyze`` does in its loop
(:func:`imaging_assist.cli.analyze.cmd_analyze`): ``match_card`` on the loaded volume,
``run_model`` (+ ``RegionExplainer.apply``), ``write_item_files``, analyze's
``inference.checks.apply_trust_checks`` (research override, decision, segmentation quality), the match
warnings, and then writes the item's own ``results.json`` with the same model summary.  So
a batch result equals an interactive one (tested: tests/test_batch.py).  Slides go through
:func:`imaging_assist.slides.analysis.analyze_slide` as in ``analyze``.

Every item gets its own folder ``OUT/<model id>/<stem>-<hash[:12]>-v<model version>/`` (analyze's file names
inside); the row for the results table is returned by :meth:`ModelRunner.run`.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings as _w
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .sources import Candidate


@dataclass
class Settings:
    """What every worker needs (plain values: it crosses process boundaries under Ray)."""

    out_dir: str
    explain: str | None = None
    explain_labels: list[str] | None = None
    ig_steps: int = 32
    faithfulness: bool = True
    dicom: bool = False
    report: bool = False
    override: bool = False
    device: str = "auto"
    precision: str = "auto"
    slide_batch_size: int = 32
    top_tiles: int = 3
    heatmap_format: str = "tif"
    slide_tiles_per_task: int = 256  # worker engines: one slide's tiles in tasks of this many
    batch_size: int = 0  # images per forward pass across items; 0: the card's inference.batch_size
    torch_threads: int = 0  # 0: all CPUs but one (engines.model_threads)
    extra: dict = field(default_factory=dict)


def decode(c: Candidate):
    """The loaded Volume of an image or series (analyze's loading step); ``UserError`` (one
    line) when the file is bad.  Slides are not decoded here (their tiles are read while the
    model runs)."""
    if c.kind == "image":
        from ..inference.images import read_image

        return read_image(c.payload)
    if c.kind == "series":
        from ..dicom import load_series

        try:
            return load_series(c.payload)
        except UserError:
            raise
        except (OSError, ValueError, RuntimeError, MemoryError) as e:  # one line, never a traceback
            raise UserError(f"{c.source}: cannot be loaded ({type(e).__name__}: {e})") from None
    return None


def decode_timed(c: Candidate):
    """(volume or None, error string or "", seconds): never raises for a bad file."""
    t0 = time.perf_counter()
    try:
        return decode(c), "", time.perf_counter() - t0
    except UserError as e:
        return None, _one_line(e), time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - a bad file is one failed row, the batch goes on
        return None, f"{type(e).__name__}: {_one_line(e)}", time.perf_counter() - t0


def version_dir(version: str) -> str:
    """The folder name of a model version: the version itself when it is a safe file name,
    else its safe form with a short hash of the exact version (two versions never share one)."""
    import hashlib

    from ..inference.results import _stem

    v = str(version)
    s = _stem(v)
    return s if s == v else f"{s[:40]}-{hashlib.sha256(v.encode()).hexdigest()[:8]}"


def item_dir(out_dir, model_id: str, version: str, c: Candidate) -> Path:
    """``OUT/<model id>/<stem>-<hash12>-v<model version>``: one folder per content, model and
    model version (the table's key), so a new model version never replaces the files an
    older version's row names."""
    from ..inference.results import _stem

    return Path(out_dir) / _stem(model_id) / f"{_stem(c.stem)[:60]}-{c.content_hash[:12]}-v{version_dir(version)}"


def requested_outputs(settings: Settings) -> dict:
    """What the command asked of each item beyond the analysis (stored in the row as
    ``outputs``): a re-run asking for more does the item again (run.py)."""
    return {"explain": settings.explain, "explain_labels": sorted(settings.explain_labels or []) or None,
            "report": bool(settings.report), "dicom": bool(settings.dicom), "override": bool(settings.override)}


class ModelRunner:
    """One model loaded once; :meth:`run` does analyze's per-item work and returns the row."""

    def __init__(self, model_id: str, settings: Settings):
        """``model_id``: a registered id or a model folder (``Registry.get``); the batch driver
        gives the folder it resolved each ``--model`` to, so every worker runs that folder."""
        from ..explain.methods import ExplainConfig, canonical_method
        from ..inference.pipelines import RunOptions
        from ..models.loaders import load_model
        from ..models.registry import Registry

        self.settings = settings
        entry = Registry().get(model_id)
        self.card = entry.card
        self.model = load_model(self.card, "cpu")
        explain = None
        if settings.explain is not None:
            explain = ExplainConfig(canonical_method(settings.explain), ig_steps=settings.ig_steps,
                                    faithfulness=settings.faithfulness)
        self.opts = RunOptions(device=settings.device, precision=settings.precision, explain=explain,
                               explain_labels=settings.explain_labels)
        self.region = None
        if explain is not None and self.card.explanation_region is not None:
            from ..explain.regions import RegionExplainer

            self.region = RegionExplainer(self.card, device=settings.device)
        summary = self.card.summary()
        summary["sha256"] = dict(self.model.hashes)
        summary["intended_use"] = self.card.intended_use
        self.summary = summary

    @property
    def version(self) -> str:
        return str(self.card.version)

    @property
    def batch_size(self) -> int:
        """Images per shared forward pass: ``--batch-size``, else the card's
        ``inference.batch_size`` (1: each item alone)."""
        return int(self.settings.batch_size or self.card.inference.get("batch_size", 1) or 1)

    # ------------------------------------------------------------------ per item
    def run(self, c: Candidate, vol, decode_error: str = "", decode_s: float = 0.0) -> dict:
        """The results-table row of ``c`` (status ok / failed / skipped); never raises for a
        bad item (``Cancelled`` and ``KeyboardInterrupt`` pass)."""
        row, job = self.infer(c, vol, decode_error, decode_s)
        return row if job is None else self.write(row, job)

    def infer(self, c: Candidate, vol, decode_error: str = "", decode_s: float = 0.0):
        """First half of :meth:`run`: the model (holds the model's lock).  Returns (row, job):
        ``job`` None when the row is final, else what :meth:`write` needs (the engines run
        :meth:`write` of one item while the model runs on the next)."""
        return self.infer_many([(c, vol, decode_error, decode_s)])[0]

    def _row(self, c: Candidate, decode_s: float = 0.0) -> dict:
        return {"content_hash": c.content_hash, "model": self.card.id, "model_version": self.version,
                "kind": c.kind, "source": c.source, "stem": c.stem, "decode_s": round(decode_s, 4),
                "worker": f"{os.uname().nodename}:{os.getpid()}", "outputs": requested_outputs(self.settings)}

    def write(self, row: dict, job) -> dict:
        """Second half of :meth:`run`: files, analyze's checks, results.json, report, DICOM."""
        c, vol, res, m, overridden, t0 = job
        t = time.perf_counter()
        try:
            d, out = self._write_volume(c, vol, res, m, overridden, row)
        except Exception as e:  # noqa: BLE001 - a bad item is one failed row, the batch goes on
            return _failed(row, e, t0)
        row["write_s"] = round(time.perf_counter() - t, 4)
        row["run_s"] = round(row.get("infer_s", 0.0) + row["write_s"], 4)
        row.update(_row_from_item(d, out))
        row["status"] = "ok"
        return row

    def infer_many(self, items: list) -> list:
        """:meth:`infer` for decoded items ``(candidate, volume, decode error, decode seconds)``,
        the model's forward passes shared by several (``run_model_many``: the card's
        ``inference.batch_size`` or ``--batch-size`` images at a time).  Returns (row, job) per
        item, in order."""
        from ..inference.pipelines import run_model_many

        out: list = [None] * len(items)
        todo = []
        for i, (c, vol, err, ds) in enumerate(items):
            t0 = time.perf_counter()
            row = self._row(c, ds)
            if err:
                row.update(status="failed", error=err)
                out[i] = (row, None)
                continue
            try:
                if c.kind == "slide":
                    out[i] = (self._run_slide(c, row, t0), None)
                    continue
                fit = self._fit(c, vol, row)
            except Exception as e:  # noqa: BLE001 - a bad item is one failed row, the batch goes on
                out[i] = (_failed(row, e, t0), None)
                continue
            if fit is None:
                out[i] = (row, None)
            else:
                todo.append((i, c, vol, row, fit, t0))
        if not todo:
            return out
        t = time.perf_counter()
        with _w.catch_warnings(record=True) as caught:
            _w.simplefilter("always")
            results = run_model_many(self.model, [x[2] for x in todo], self.opts, self.batch_size)
            share = (time.perf_counter() - t) / len(todo)
            for (i, c, vol, row, (m, overridden), t0), res in zip(todo, results):
                tr = time.perf_counter()
                try:
                    if isinstance(res, BaseException):
                        raise res
                    if self.region is not None:
                        self.region.apply(res, vol)
                except Exception as e:  # noqa: BLE001 - a bad item is one failed row
                    out[i] = (_failed(row, e, t0), None)
                    continue
                row["infer_s"] = round(share + time.perf_counter() - tr, 4)
                out[i] = (row, (c, vol, res, m, overridden, t0))
        _print_oom(caught)
        return out

    def _fit(self, c: Candidate, vol, row: dict):
        """analyze's card matching on the loaded item: (match, overridden reasons), or None with
        the row marked skipped."""
        from ..models.matching import match_card, series_facts

        m = match_card(self.card, series_facts(vol, c.payload if c.kind == "series" else None))
        overridden = list(m.reasons) if (not m.ok and self.settings.override) else []
        if not m.ok and not overridden:
            row.update(status="skipped", error=f"skipped: {m.reason}")
            return None
        return m, overridden

    def _write_volume(self, c: Candidate, vol, res, m, overridden, row: dict):
        from ..demo import series_source
        from ..inference.results import write_item_files

        res.source = str(c.payload) if c.kind == "image" else series_source(vol, c.source)
        out = item_dir(self.settings.out_dir, self.card.id, self.version, c)
        _fresh(out)
        d = write_item_files(res, vol, out, c.stem)
        d["source"] = res.source
        from ..inference.checks import apply_trust_checks  # analyze's own checks, not a copy

        apply_trust_checks(d, res, self.card, overridden, m.warnings)
        self._finish(c, d, out, vol, res, row)
        return d, out

    def _run_slide(self, c: Candidate, row: dict, t0: float) -> dict:
        """A whole slide in this process (analyze_slide): its finished row."""
        from ..inference.device import resolve_device
        from ..slides.analysis import analyze_slide

        out = item_dir(self.settings.out_dir, self.card.id, self.version, c)
        _fresh(out)
        t = time.perf_counter()
        d = analyze_slide(c.payload, self.model, out, c.stem, device=str(resolve_device(self.settings.device)),
                          batch_size=self.settings.slide_batch_size, top_k=self.settings.top_tiles,
                          heatmap_format=self.settings.heatmap_format)  # a SlideError is a UserError
        row["infer_s"] = round(time.perf_counter() - t, 4)
        self._finish(c, d, out, None, None, row)
        row["run_s"] = round(time.perf_counter() - t0, 4)
        row.update(_row_from_item(d, out))
        row["status"] = "ok"
        return row

    # ------------------------------------------------------------------ one slide in parts
    # The worker engines spread one slide's tiles over their workers (engines.Schedule): one
    # worker plans it, several run parts of its tiles, one writes it: analyze_slide's three
    # steps (slides.analysis), so the item equals analyze's.
    def _tile_model(self):
        if getattr(self, "_tile_fn", None) is None:
            from ..inference.device import resolve_device
            from ..slides.analysis import TileModel

            self._tile_fn = TileModel(self.model, str(resolve_device(self.settings.device)))
        return self._tile_fn

    def slide_plan(self, c: Candidate):
        """(row, SlidePlan, seconds), or (failed row, None, seconds) when the slide cannot be read."""
        from ..slides.analysis import plan_slide

        row, t0 = self._row(c), time.perf_counter()
        try:
            sp = plan_slide(c.payload, self.card)
        except Exception as e:  # noqa: BLE001 - a bad slide is one failed row, the batch goes on
            return _failed(row, e, t0), None, time.perf_counter() - t0
        return row, sp, time.perf_counter() - t0

    def slide_tiles(self, c: Candidate, plan, start: int):
        """TileScores of a part of the plan (see slides.tiling.plan_part), or the error (one line)."""
        from ..slides.analysis import score_tiles

        try:
            return score_tiles(c.payload, plan, self._tile_model(), start=start,
                               batch_size=self.settings.slide_batch_size)
        except Exception as e:  # noqa: BLE001 - the slide's row says why
            return _failed({}, e, time.perf_counter())["error"]

    def slide_finish(self, c: Candidate, sp, parts, row: dict, before_s: float, tiles_wall_s: float) -> dict:
        """The slide's files, results.json, report (analyze's), and its row."""
        from ..slides.analysis import finish_slide

        t0 = time.perf_counter()
        try:
            out = item_dir(self.settings.out_dir, self.card.id, self.version, c)
            _fresh(out)
            d = finish_slide(sp, self._tile_model(), out, c.stem, parts, top_k=self.settings.top_tiles,
                             heatmap_format=self.settings.heatmap_format,
                             batch_size=self.settings.slide_batch_size, before_s=before_s,
                             tiles_wall_s=tiles_wall_s)
            row["infer_s"] = round(before_s + time.perf_counter() - t0, 4)
            self._finish(c, d, out, None, None, row)
            row["run_s"] = round(before_s + time.perf_counter() - t0, 4)
            row.update(_row_from_item(d, out))
            row["status"] = "ok"
            return row
        except Exception as e:  # noqa: BLE001 - a bad item is one failed row, the batch goes on
            return _failed(row, e, t0)

    def _finish(self, c: Candidate, d: dict, out: Path, vol, res, row: dict) -> None:
        """results.json of the item (as analyze writes it), then --report / --dicom."""
        from ..inference.results import write_results_json

        d["content_hash"] = c.content_hash
        if d.get("kind") == "slide":  # options a slide model does not honour: said, not dropped
            from ..slides.analysis import ignored_options

            said = ignored_options(self.settings.precision, self.settings.explain)
            d["warnings"] = list(d.get("warnings") or []) + [w for w in said if w not in (d.get("warnings") or [])]
        captured = {}
        if self.settings.report and vol is not None:
            from ..export.report_pdf import capture

            captured[0] = capture(d, vol, out, res)
        from ..privacy.audit import _ids_of

        p = write_results_json([d], out, self.summary, {"notes": [], "input": c.source},
                               patient_ids=[_ids_of(vol).get("patient_id")] if vol is not None else ())
        row["results_json"] = str(p)
        if self.settings.report:
            from ..export.report_pdf import build_report, write_report_pdf

            try:
                rp = write_report_pdf(build_report(json.loads(p.read_text(encoding="utf-8")), base_dir=out,
                                                   captured=captured, load_missing=vol is not None),
                                      out / "report.pdf")
                row["report"] = str(rp)
            except UserError as e:
                row["report_error"] = _one_line(e)
        if self.settings.dicom and vol is not None:
            from ..export.dicom import DicomRun

            msgs: list[str] = []
            run = DicomRun(out, echo=msgs.append)
            run.add(c.kind, vol, res, d, c.stem)
            run.finish(out / "report.pdf")
            row["dicom"] = [str(Path(w.path)) if hasattr(w, "path") else str(w) for w in run.written]
            if run.failed:
                row["dicom_error"] = "; ".join(m for m in msgs if m.startswith("error"))[:2000]
            elif msgs:
                row["dicom_notes"] = "; ".join(msgs)[:2000]


def _print_oom(caught) -> None:
    """The GPU fell back to the CPU: say so on stderr (the row's warnings say it too)."""
    for w in caught:
        if issubclass(w.category, RuntimeWarning) and "out of memory" in str(w.message):
            print(f"warning: {w.message}", file=sys.stderr)


def _failed(row: dict, e: BaseException, t0: float) -> dict:
    from ..inference.jobs import Cancelled

    if isinstance(e, (Cancelled, KeyboardInterrupt)):
        raise e
    msg = _one_line(e) if isinstance(e, UserError) else f"internal error ({type(e).__name__}: {_one_line(e)})"
    row.update(status="failed", error=msg, run_s=round(time.perf_counter() - t0, 4))
    return row


def _fresh(out: Path) -> None:
    """An item's folder starts empty: a run interrupted half-way left files but no row."""
    import shutil

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)


def _row_from_item(d: dict, out: Path) -> dict:
    """The table's columns from a results.json item (paths absolute)."""
    def p(f):
        return str(out / f) if f else None

    r: dict = {"task": d.get("task"), "series_uid": d.get("series_uid"),
               "warnings": list(d.get("warnings") or []),
               "timings": d.get("timings_s")}
    if "probabilities" in d:
        r["probabilities"] = d["probabilities"]
        dec = d.get("decision") or {}
        r["decision"] = dec.get("text")
        r["most_likely"] = dec.get("most_likely") or (max(d["probabilities"], key=d["probabilities"].get)
                                                      if d["probabilities"] else None)
        r["decision_states"] = {x.get("label"): x.get("state") for x in dec.get("labels", []) if isinstance(x, dict)}
    ood = d.get("ood") or {}
    r["ood_score"] = ood.get("score")
    r["ood_flagged"] = ood.get("flagged")
    if d.get("kind") == "slide":
        r["areas"] = {"unit": d.get("area_unit"), "values": d.get("areas")}
    else:
        for k, unit in (("volume_ml", "mL"), ("area_mm2", "mm2"), ("area_px", "px")):
            if d.get(k):
                r["areas"] = {"unit": unit, "values": d[k]}
                break
    if d.get("quality"):
        r["quality"] = (d["quality"] or {}).get("text")
    r["label_map"] = p(d.get("label_map"))
    r["heatmaps"] = [p(h.get("file")) for h in d.get("heatmaps") or [] if isinstance(h, dict)]
    from ..explain.flags import flagged_text

    # a flagged map (the viewer hides it) is said in the table too, not only in the item's results.json
    r["warnings"] += [t for t in map(flagged_text, d.get("heatmaps") or []) if t]
    if d.get("kind") == "slide" and (d.get("files") or {}).get("heatmaps"):  # the per-class heat-map file
        r["heatmaps"] = [p(d["files"]["heatmaps"])]
    r["key_images"] = [p(k) for k in d.get("key_images") or [] if isinstance(k, str)]
    r["item_dir"] = str(out)
    return r


def _one_line(e) -> str:
    s = str(e).strip()
    return " ".join(ln.strip() for ln in s.splitlines() if ln.strip())
