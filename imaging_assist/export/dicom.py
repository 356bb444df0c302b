"""``write_dicom_results``: every DICOM result object of one analysed image or series.

One new series per object in the source's study: a SEG per label map (a segmenter's map,
and the structures behind a classifier's ``explanation_region``), a Parametric Map per heat
map, a Comprehensive 3D SR (TID 1500) per model, and the Encapsulated PDF of the report.
Objects are written into ``out_dir`` (the caller's ``DIR/dicom``), never into the source's
folder.  Inputs without a DICOM source (PNG/JPEG) raise :class:`DicomExportError` with the
one-line reason (the caller then writes the PDF only).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path


from ..outputs import written_beside
from ..privacy.audit import record_export
from . import dicom_common as dc
from .dicom_common import DicomExportError

__all__ = ["write_dicom_results", "plan_dicom_results", "DicomExportError", "WrittenObject",
           "NO_SOURCE_NOTE"]

NO_SOURCE_NOTE = ("DICOM result objects were not written: the input has no DICOM source "
                  "(plain PNG/JPEG/TIFF) for them to reference; the PDF report only")

SOP_NAMES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.30": "Parametric Map Storage",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR Storage",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF Storage",
}


def free_name(out_dir: Path, name: str) -> Path:
    """``out_dir/name.dcm``, or ``name_2.dcm``, ``name_3.dcm``... when taken (a link included):
    an earlier run's objects are never replaced."""
    p, k = out_dir / f"{name}.dcm", 2
    while os.path.lexists(p):
        p, k = out_dir / f"{name}_{k}.dcm", k + 1
    return p


@dataclass
class WrittenObject:
    path: Path
    kind: str  # "SEG", "PM", "SR", "PDF"
    sop_class_uid: str
    description: str

    @property
    def sop_class_name(self) -> str:
        return SOP_NAMES.get(self.sop_class_uid, self.sop_class_uid)

    def to_dict(self) -> dict:
        return {"file": str(self.path), "kind": self.kind, "sop_class_uid": self.sop_class_uid,
                "sop_class": self.sop_class_name, "description": self.description}


@dataclass
class _Plan:
    kind: str
    description: str
    item: int  # index into results
    extra: dict = field(default_factory=dict)


def _name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(s)).strip("._")[:60] or "x"


def _item_dict(res) -> dict:
    return res if isinstance(res, dict) else res.to_dict()


def has_dicom_source(volume) -> bool:
    return bool(volume is not None and getattr(volume, "headers", None))


def plan_dicom_results(volume, results, *, report_pdf=None, measurements=None) -> list[str]:
    """One line per object that :func:`write_dicom_results` would write (for the GUI's
    confirmation), or the one-line reason when none can be written."""
    if not has_dicom_source(volume):
        return [NO_SOURCE_NOTE]
    return [f"{p.kind}: {p.description}" for p in _plan(results, report_pdf, measurements)]


def _plan(results, report_pdf, measurements, items=None) -> list[_Plan]:
    plans: list[_Plan] = []
    models: dict[str, list[int]] = {}
    for n, res in enumerate(results):
        d = items[n] if items is not None else _item_dict(res)
        if d.get("error"):
            continue
        models.setdefault(str(d.get("model")), []).append(n)
        if getattr(res, "label_map", None) is not None and d.get("nodules") is not None:
            plans.append(_Plan("SEG", f"{d.get('model')} nodules ({', '.join(list(d.get('labels', {}).values())[1:])})",
                               n, {"nodules": True}))
        elif getattr(res, "label_map", None) is not None:
            plans.append(_Plan("SEG", f"{d.get('model')} label map ({', '.join(list(d.get('labels', {}).values())[1:])})", n))
        er = d.get("explanation_region") or {}
        if getattr(res, "region_map", None) is not None and er.get("labels"):
            plans.append(_Plan("SEG", f"{er.get('model')} {er.get('name', 'region')} for {d.get('model')} "
                                      f"({', '.join(er['labels'])})", n, {"region": True}))
        for h, hm in enumerate(getattr(res, "heatmaps", None) or []):
            plans.append(_Plan("PM", f"{d.get('model')} heat map {hm.label} ({hm.method})", n, {"heat": h}))
    for model, idx in models.items():
        plans.append(_Plan("SR", f"{model} measurement report (TID 1500)", idx[0], {"items": idx}))
    if measurements and not models:
        plans.append(_Plan("SR", "viewer measurements (TID 1500)", -1, {"items": []}))
    if report_pdf is not None:
        plans.append(_Plan("PDF", f"report {Path(report_pdf).name}", -1))
    return plans


def _check_out_dir(out_dir: Path, datasets) -> None:
    out = os.path.realpath(out_dir)
    for ds in datasets:
        f = getattr(ds, "filename", None)
        if isinstance(f, (str, os.PathLike)) and f:
            src = os.path.realpath(os.path.dirname(os.fspath(f)))
            if out == src or out.startswith(src + os.sep):
                raise DicomExportError(f"{out_dir} is inside the source folder {src}: DICOM results are "
                                       "never written beside the source; choose another output folder")


def _os_reason(e: BaseException) -> str:
    """The operating system's words for a failed write ("No space left on device"): pydicom
    re-raises an OSError with the formatted traceback as its message, the original error is in
    the chain."""
    seen, x = set(), e
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        if isinstance(x, OSError) and x.strerror:
            return x.strerror
        x = x.__cause__ or x.__context__
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def write_dicom_results(volume, results, out_dir, *, report_pdf=None, measurements=None,
                        warnings: list | None = None, prefix: str = "",
                        items: list[dict] | None = None, deidentify=None,
                        deid_key: bytes | None = None, failures: list | None = None) -> list[WrittenObject]:
    """Write the DICOM result objects of ``results`` (InferenceResult objects of one
    ``volume``) into ``out_dir``; returns what was written.

    ``report_pdf``: the report to encapsulate; ``measurements``: the viewer's
    :class:`imaging_assist.measure.Measurement` list (GUI export); ``warnings`` collects
    what was assumed (e.g. a local code for a label SNOMED CT has no code for here).
    ``deidentify``: a :class:`imaging_assist.privacy.deid.Options`: every object is made from
    de-identified source headers (PS3.15 basic profile + those options, the site key's UIDs and
    patient pseudonym, as ``anonymize`` gives the source files) and marked de-identified; the
    ``report_pdf`` must then be a de-identified report too (the caller builds it).  The objects'
    own dates (content, instance creation, contribution) go through the same profile: removed or
    dummied, or with Modified Dates shifted by the patient's offset.  Sources that are already
    de-identified (the copy ``analyze --deidentify`` analyses) get the same treatment and marks.
    ``failures``: when given, an object that cannot be built is one line there and the others
    are still written (``analyze --dicom``); without it the first such object raises."""
    from .encapsulated_pdf import build_encapsulated_pdf
    from .parametric_map import build_parametric_map
    from .seg import build_seg
    from .sr import build_sr

    warnings = warnings if warnings is not None else []
    if not has_dicom_source(volume):
        raise DicomExportError(NO_SOURCE_NOTE)
    datasets = dc.source_datasets(volume)
    if deidentify is None:  # a name read in a doubtful character set is copied as read: said
        warnings.extend(w for w in dc.charset_warnings(volume) if w not in warnings)
    since = date.today()
    offset = None  # the patient's day offset, when it is known here (see deidentify_result_dates)
    if deidentify is not None:
        from ..privacy.deid import deidentify_headers

        offset = deidentify_headers(datasets, deidentify, key=deid_key)
    else:
        deidentify = _deidentified_source(datasets)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, datasets)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DicomExportError(f"cannot create the output folder {out_dir}: {e.strerror or e}") from None
    results = list(results)
    # the results.json items when the caller has them (they carry what was added after the
    # run: ood, withheld decisions, warnings); else the results' own dicts
    items = list(items) if items is not None else [_item_dict(r) for r in results]
    if len(items) != len(results):
        raise ValueError("items and results differ in length")
    plans = _plan(results, report_pdf, measurements, items)
    written: list[WrittenObject] = []
    segs: dict[int, object] = {}
    region_segs: dict[int, object] = {}  # the explanation region's structures, per classifier item
    pms: dict[int, list] = {}
    stem = _name(prefix) + "_" if prefix else ""

    def save(ds, kind, desc, name):
        p = free_name(out_dir, f"{stem}{name}")
        if deidentify is not None:
            _deidentify_result(ds, deidentify, since, offset)
        try:
            # under a temporary name, renamed when complete: a disk that fills up must not leave a
            # truncated object under its final name (one that readers would take as a result)
            with written_beside(p) as tmp:
                ds.save_as(tmp, enforce_file_format=True) if kind == "PDF" else ds.save_as(tmp)
        except OSError as e:
            raise DicomExportError(f"cannot write {p}: {_os_reason(e)}") from None
        written.append(WrittenObject(p, kind, str(ds.SOPClassUID), desc))
        record_export(kind, p, volume)  # the audit trail (never raises)

    def make(plan, sn):
        if plan.kind == "SEG":
            res, d = results[plan.item], items[plan.item]
            if plan.extra.get("region"):
                er = d["explanation_region"]
                seg = build_seg(volume, res.region_map, ["background"] + list(er["labels"]),
                                model_id=er.get("model", "region"), model_version=er.get("model_version", ""),
                                series_number=sn, datasets=datasets, warnings=warnings)
                region_segs[plan.item] = seg
                save(seg, "SEG", plan.description, f"{_name(er.get('model', 'region'))}_region_SEG")
            elif plan.extra.get("nodules"):  # CT nodules: one segment per nodule, tracked in the SR
                found = sorted((x for x in d["nodules"] if x.get("found")), key=lambda x: x["label_value"])
                seg = build_seg(volume, res.label_map, d["labels"], model_id=d["model"],
                                model_version=d["model_version"], series_number=sn, datasets=datasets,
                                warnings=warnings, code_labels=["background"] + ["nodule"] * len(found),
                                tracking=[(f"nodule {x['id']}", x["tracking_uid"]) for x in found])
                segs[plan.item] = seg
                save(seg, "SEG", plan.description, f"{_name(d['model'])}_nodules_SEG")
            else:
                seg = build_seg(volume, res.label_map, d["labels"], model_id=d["model"],
                                model_version=d["model_version"], series_number=sn, datasets=datasets,
                                warnings=warnings)
                segs[plan.item] = seg
                save(seg, "SEG", plan.description, f"{_name(d['model'])}_SEG")
        elif plan.kind == "PM":
            res, d = results[plan.item], items[plan.item]
            hm = res.heatmaps[plan.extra["heat"]]
            said = (d.get("heatmaps") or [])[plan.extra["heat"]:][:1]  # its results.json entry
            flags = said[0].get("flags") if said and isinstance(said[0], dict) else None
            pm = build_parametric_map(volume, hm.array, label=hm.label, method=hm.method,
                                      model_id=d["model"], model_version=d["model_version"],
                                      series_number=sn, datasets=datasets, warnings=warnings,
                                      flags=flags)
            pms.setdefault(plan.item, []).append(pm)
            save(pm, "PM", plan.description, f"{_name(d['model'])}_PM_{_name(hm.label)}_{_name(hm.method)}")
        elif plan.kind == "SR":
            idx = plan.extra["items"]
            model_items = [items[i] for i in idx]
            sr = build_sr(volume, model_items, segs={j: segs[i] for j, i in enumerate(idx) if i in segs},
                          region_segs={j: region_segs[i] for j, i in enumerate(idx) if i in region_segs},
                          pms=[p for i in idx for p in pms.get(i, [])],
                          measurements=measurements if plan is _first_sr(plans) else None,
                          datasets=datasets, series_number=sn, warnings=warnings)
            save(sr, "SR", plan.description, f"{_name(model_items[0]['model']) if model_items else 'viewer'}_SR")
        elif plan.kind == "PDF":
            ds = build_encapsulated_pdf(report_pdf, datasets, series_number=sn)
            save(ds, "PDF", plan.description, "report_PDF")

    for number, plan in enumerate(plans, 1):
        try:
            with dc.building(plan.kind):
                make(plan, dc.series_number_after(datasets, number))
        except DicomExportError as e:
            if failures is None:
                raise
            failures.append(str(e))  # e.g. a SEG highdicom cannot build: the SR and PM still go
    return written


def _deidentified_source(datasets):
    """The options the sources were de-identified with (their marks say so), else None."""
    from ..privacy.deid import source_options

    return source_options(datasets[0]) if datasets else None


def _deidentify_result(ds, opts, since, offset) -> None:
    """A result object made from de-identified sources: its own dates through the same profile
    (they are stamped with the real day it was built) and the de-identification marks."""
    from ..privacy.deid import deidentify_result_dates, mark_deidentified

    deidentify_result_dates(ds, opts, since, offset)
    mark_deidentified(ds, opts)


def _first_sr(plans):
    for p in plans:
        if p.kind == "SR":
            return p
    return None


class DicomRun:
    """``analyze --dicom``: the objects of each analysed item as it is done (while its
    Volume is in memory), at the end an Encapsulated PDF per study of that study's own
    report (under its patient: never another patient's results); prints what it wrote, and
    one line for what it could not write."""

    def __init__(self, out_dir, echo=print):
        self.dir = Path(out_dir) / "dicom"
        self.echo = echo
        # study UID -> a header-only stand-in volume, with the study's items and their captures
        self.sources: dict[str, object] = {}
        self.written: list[WrittenObject] = []
        self.failed = 0
        self._said_plain = False

    def add(self, kind: str, volume, res, item: dict, stem: str, captured: dict | None = None) -> None:
        """``captured``: what :func:`.report_pdf.capture` took of the item for the report (its
        study's own report, for its Encapsulated PDF, then shows the same key views)."""
        if kind != "series" or not has_dicom_source(volume):
            if not self._said_plain:
                self.echo(f"note: {NO_SOURCE_NOTE}")
                self._said_plain = True
            return
        notes: list[str] = []
        ok = True
        try:
            failures: list[str] = []
            objs = write_dicom_results(volume, [res], self.dir, prefix=stem, items=[item], warnings=notes,
                                       failures=failures)
        except (DicomExportError, OSError) as e:  # one line; results.json and the PDF stay
            self.failed += 1
            self.echo(f"error: DICOM objects for {stem} not written: {e}")
            ok = False
        if ok:
            for f in failures:
                self.failed += 1
                self.echo(f"error: {stem}: {f}")
            self.written += objs
            for n in dict.fromkeys(notes):
                self.echo(f"note: {stem}: {n}")
        try:
            uid = str(dc.source_datasets(volume)[0].StudyInstanceUID)
        except DicomExportError:
            return
        if uid not in self.sources:
            from types import SimpleNamespace

            self.sources[uid] = SimpleNamespace(headers=list(volume.headers), items=[], captured=[],
                                                written=False)
        if captured is None:
            from .report_pdf import study_header

            captured = {"header": study_header(volume)}
        # every item of the study is in its report; the study gets the PDF object when the
        # objects of one of its items could be written
        study = self.sources[uid]
        study.items.append(item)
        study.captured.append(captured)
        study.written = study.written or ok

    def finish(self, report_pdf) -> None:
        import tempfile

        if report_pdf is not None and Path(report_pdf).is_file():
            doc = self._results_doc()
            with tempfile.TemporaryDirectory(prefix="imaging-assist-report-") as tmp:
                for n, stand_in in enumerate((s for s in self.sources.values() if s.written), 1):
                    self._write_pdf(n, stand_in, report_pdf, doc, Path(tmp) / f"report_{n}.pdf")
        if self.written:
            kinds = ", ".join(f"{sum(o.kind == k for o in self.written)} {k}"
                              for k in ("SEG", "PM", "SR", "PDF") if any(o.kind == k for o in self.written))
            self.echo(f"wrote {len(self.written)} DICOM object(s) in {self.dir} ({kinds})")

    def _write_pdf(self, n: int, stand_in, report_pdf, doc: dict | None, tmp_pdf: Path) -> None:
        """The Encapsulated PDF of one study (the ``n``-th), of its own report."""
        from ..errors import UserError
        from .encapsulated_pdf import build_encapsulated_pdf

        try:
            datasets = dc.source_datasets(stand_in)
            since = date.today()
            pdf = self._study_report(report_pdf, doc, stand_in, tmp_pdf)
            ds = build_encapsulated_pdf(pdf, datasets, series_number=dc.series_number_after(datasets, 99))
            opts = _deidentified_source(datasets)  # analyze --deidentify: a de-identified copy
            if opts is not None:
                _deidentify_result(ds, opts, since, None)
        except UserError as e:  # DicomExportError, and a report that cannot be built (ReportError)
            self.failed += 1
            self.echo(f"error: Encapsulated PDF not written: {e}")
            return
        # a new name as every other object (report_PDF_2.dcm beside an earlier run's), never in place
        p = free_name(self.dir, "report_PDF")
        try:
            with written_beside(p) as tmp:  # never through a link named like it; never half-written
                ds.save_as(tmp, enforce_file_format=True)
        except OSError as e:
            self.failed += 1
            self.echo(f"error: Encapsulated PDF not written: {p}: {e.strerror or e}")
            return
        self.written.append(WrittenObject(p, "PDF", str(ds.SOPClassUID), "report"))
        record_export("PDF", p, datasets=datasets)  # the audit trail (never raises)

    def _results_doc(self) -> dict | None:
        """The run's results.json (beside ``DIR/dicom``), None when it cannot be read."""
        import json

        try:
            doc = json.loads((self.dir.parent / "results.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) and isinstance(doc.get("items"), list) else None

    def _study_report(self, report_pdf, doc: dict | None, study, out: Path) -> Path:
        """The report for one study's Encapsulated PDF: the run's ``report_pdf`` when every item
        of the run is this study's, else a report of this study's items only written to ``out``
        (the object goes under this study's patient: another patient's results must not be in it)."""
        import json

        from ..inference.results import _json_default
        from .report_pdf import build_report, write_report_pdf

        if doc is not None and len(doc["items"]) == len(study.items):
            return Path(report_pdf)
        sub = dict(doc or {})
        sub["items"] = json.loads(json.dumps(study.items, default=_json_default))
        # the run's notes are left out: they name the run's other inputs (skipped files, folders
        # not read), which may be another patient's
        sub["notes"] = ["this report holds the results of this study only; the run's report.pdf holds "
                        "those of every input and the run's notes"]
        report = build_report(sub, base_dir=self.dir.parent, load_missing=False,
                              captured=dict(enumerate(study.captured)))
        return write_report_pdf(report, out)
