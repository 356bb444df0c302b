"""``imaging-assist demo``: the bundled demo study, in the viewer or headless.

With a display the viewer opens on the demo folder and runs the registered models that fit
the series shown (the GUI side lives in ``imaging_assist_ui``).  Without one (or with
``--headless``) every series is loaded and analysed by every registered model whose card
fits it (:func:`imaging_assist.models.matching.match_card`, the rules of ``analyze`` and the
viewer), and ``report.json`` is written with

* per series: geometry, value range and warnings as ``info`` prints them, and a key image;
* per series and model (``analyses``): the item of ``results.json`` (docs/results_schema.md):
  probabilities with the card's threshold decisions, label maps (NIfTI, plus an 8-bit PNG for
  single images) with per-label areas, heat maps, and key images with the label map or heat
  map blended on the image.  Classifiers whose card names a Grad-CAM layer or an
  ``explanation_region`` (e.g. the lungs from ``cxr-lung-seg``) get a Grad-CAM heat map; with a
  region, also the share of the heat map's positive mass inside it (explain/regions.py).

Models that are missing, fail their sha256 check or fail on a series are one-line notes; a
MONAI bundle whose configs hold code is skipped (a note) until ``models trust`` marked it.
The console also says each analysis' warnings and an out-of-distribution flag, as ``analyze`` does.

``report.json`` lists the files the run wrote (``files``), and ``.imaging-assist-demo.json``
(:data:`MANIFEST`) records them with their size and modification time: a later demo run into the
same folder removes those it does not write again and that are unchanged (never a file the demo
did not write, whatever a ``report.json`` there lists).  The output folder must be new, empty
or hold only the demo's own earlier outputs (unchanged): other files there are refused in one
line, as ``anonymize`` refuses a folder that is not empty.  It may not be the demo folder or
inside it.  A display counts only when its server
answers (:func:`display_problem`: a stale ``ssh -X`` session leaves DISPLAY set): otherwise the
demo runs headless, with a note.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import warnings
from importlib import resources
from pathlib import Path

from .errors import UserError
from .jsonvalues import is_number
from .models.operating_point import format_probability


def demo_root() -> str:
    root = resources.files("imaging_assist") / "data" / "demo"
    if not root.is_dir():
        raise UserError(f"demo data missing from the installation ({root})")
    return str(root)


def attribution_path() -> str:
    """Sources, licences and attribution of the demo images (beside the demo folder)."""
    return str(Path(demo_root()).parent / "licenses" / "DEMO_ATTRIBUTION.md")


def has_display() -> bool:
    return os.environ.get("QT_QPA_PLATFORM", "") != "offscreen" and display_problem() is None


DISPLAY_PROBE_TIMEOUT_S = 0.5  # a TCP display (ssh -X: localhost:10) that does not answer at once


def display_problem() -> str | None:
    """Why no window can open here (one phrase), or None when one can.

    DISPLAY / WAYLAND_DISPLAY being set is not enough: a closed ``ssh -X`` session leaves
    DISPLAY naming a server that is gone, and Qt then aborts the process (SIGABRT) instead of
    returning an error.  So the server is asked for a connection first, as Qt's xcb / wayland
    plugins would connect (no X protocol is spoken: an answer is enough).  Windows and macOS
    open windows without these variables.  Also used by the viewer (``imaging_assist_ui.app``):
    this module imports nothing heavy at import time."""
    if sys.platform in ("win32", "darwin"):
        return None
    x, w = os.environ.get("DISPLAY"), os.environ.get("WAYLAND_DISPLAY")
    if not (x or w):
        return "DISPLAY and WAYLAND_DISPLAY are not set"
    if x and _x11_answers(x) is not False:
        return None
    if w and _wayland_answers(w):
        return None
    return " and ".join(f"{k}={v} does not answer" for k, v in (("DISPLAY", x), ("WAYLAND_DISPLAY", w)) if v)


def _connects(family, address, timeout: float = DISPLAY_PROBE_TIMEOUT_S) -> bool:
    import socket

    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(address)
        return True
    except (OSError, ValueError):  # refused, no such socket, timed out; a NUL in a path
        return False


def _x11_answers(display: str) -> bool | None:
    """Whether the X server of DISPLAY (``[host]:n[.screen]``) accepts a connection, where libxcb
    would connect: the local socket ``/tmp/.X11-unix/X<n>`` (and Linux's abstract socket of that
    name) without a host or with ``unix``, else TCP port 6000+n.  None for a form not known here
    (then Qt is left to try)."""
    import re
    import socket

    m = re.fullmatch(r"(?:([^/:]*)/)?([^/]*?):(\d+)(?:\.\d+)?", display.strip())
    if not m:
        return None
    proto, host, n = m.group(1), m.group(2), int(m.group(3))
    if proto == "unix" or host in ("", "unix"):
        path = f"/tmp/.X11-unix/X{n}"
        return _connects(socket.AF_UNIX, path) or (sys.platform.startswith("linux")
                                                   and _connects(socket.AF_UNIX, "\0" + path))
    try:
        infos = socket.getaddrinfo(host.strip("[]"), 6000 + n, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    return any(_connects(fam, addr) for fam, _, _, _, addr in infos[:2])


def _wayland_answers(name: str) -> bool:
    """Whether the Wayland compositor's socket (WAYLAND_DISPLAY: a path, or a name in
    XDG_RUNTIME_DIR) accepts a connection."""
    import socket

    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not os.path.isabs(name) and not runtime:
        return False
    return _connects(socket.AF_UNIX, os.path.join(runtime or "", name))


def write_key_image(vol, path: str) -> None:
    from PIL import Image

    from . import display
    k = vol.n_slices // 2
    img = display.render_slice(vol, k)
    Image.fromarray(img).save(path)


def series_source(vol, fallback: str) -> str:
    """Where a loaded volume came from: its file, or the folder common to its files."""
    paths = [p for p in (vol.source_paths or []) if p]
    if not paths:
        return fallback
    if len(paths) == 1:
        return paths[0]
    try:
        return os.path.commonpath(paths)
    except ValueError:
        return fallback


def _one_line(e) -> str:
    s = str(e).strip()
    first = next((ln.strip() for ln in s.splitlines() if ln.strip()), "")
    return first[:300] or type(e).__name__


# =========================================================================== models
def region_spec(card):
    """The card's ``explanation_region`` (model, labels, name) or None."""
    return getattr(card, "explanation_region", None)


def _gradcam_possible(card) -> bool:
    if card.format == "torchscript":
        return False
    return not (card.format == "monai_bundle" and any(w.file.endswith(".ts") for w in card.weights))


class _Models:
    """The registry's usable entries; networks loaded (and sha256-checked) once, on demand."""

    def __init__(self, registry=None, device: str = "auto"):
        from .models.registry import Registry

        self.registry = registry or Registry()
        self.device = device
        self.notes: list[str] = []
        self.entries = []
        for e in self.registry.entries():
            if e.card is None:
                self.notes.append(f"model folder {e.folder} skipped: {_one_line(e.error or 'invalid card')}")
            elif e.shadowed_by:
                pass
            elif getattr(e, "contains_code", False) and not getattr(e, "trusted", False):
                # a bundle with code runs only after `models trust`, never on its own (the other
                # half of ModelEntry.runnable_without_prompt, the sha256 check, is done by
                # load_model before anything is built: a mismatch is a note on each series)
                self.notes.append(f"model {e.id} skipped: it contains code and is not trusted "
                                  f"(`imaging-assist models show {e.id}`, then `models trust {e.id}`)")
            else:
                self.entries.append(e)
        self._loaded: dict[str, object] = {}
        self._failed: dict[str, str] = {}
        self._regions: dict[str, object] = {}

    def matching(self, series, vol=None) -> list:
        """Entries whose card fits the series (:func:`imaging_assist.models.matching.match_card`,
        the rules of ``analyze`` and the viewer; on the loaded volume when given): segmenters
        first, by id."""
        from .models.matching import SeriesFacts, match_card, series_facts

        from .nodules.run import is_nodule_model

        facts = series_facts(vol, series) if vol is not None else SeriesFacts.from_series(series)
        # the CT nodule models run at a point (nodules.analysis.analyze_at), not on a whole series
        fits = [e for e in self.entries if match_card(e.card, facts).ok and not is_nodule_model(e.card)]
        return sorted(fits, key=lambda e: (e.card.task != "segmentation", e.card.id))

    def load(self, card):
        cid = card.id
        if cid in self._failed:
            raise UserError(self._failed[cid])
        if cid not in self._loaded:
            from .models.loaders import load_model

            try:
                self._loaded[cid] = load_model(card, "cpu")  # verifies every sha256 first
            except Exception as e:  # noqa: BLE001 - reported as one line
                self._failed[cid] = _one_line(e)
                raise UserError(self._failed[cid]) from None
        return self._loaded[cid]

    def region_explainer(self, card):
        """One RegionExplainer per classifier (it caches its segmenter); None if unavailable."""
        if card.id not in self._regions:
            try:
                from .explain.regions import RegionExplainer
            except ImportError:
                self._regions[card.id] = None
            else:
                self._regions[card.id] = RegionExplainer(card, registry=self.registry, load=self.load,
                                                         device=self.device)
        return self._regions[card.id]

    def summary(self) -> list[dict]:
        out = []
        for e in self.entries:
            c = e.card
            d = {"id": c.id, "version": c.version, "task": c.task, "modality": c.modality,
                 "body_part": c.body_part, "folder": str(e.folder), "source": e.source}
            if c.id in self._loaded:
                d["sha256_verified"] = True
            elif c.id in self._failed:
                d["error"] = self._failed[c.id]
            out.append(d)
        return out


def _analyse(models: _Models, entry, series, vol, out: Path, stem: str) -> tuple[dict, list[str]]:
    """Run one model on one loaded series; (results.json item, notes)."""
    from .explain.methods import ExplainConfig
    from .inference.pipelines import RunOptions, run_model
    from .inference.results import save_label_png, write_item_files

    card = entry.card
    notes: list[str] = []
    model = models.load(card)
    spec = region_spec(card) if card.task == "classification" else None
    explain = None
    # classifiers get a Grad-CAM heat map where the card names its layer (or a region to measure)
    if card.task == "classification" and (spec is not None or card.gradcam_layer):
        if _gradcam_possible(card):
            explain = ExplainConfig("gradcam")
        else:
            notes.append(f"{card.id}: no Grad-CAM for a {card.format} model")
    res = run_model(model, vol, RunOptions(device=models.device, explain=explain))
    if explain is not None and res.heatmaps:
        explainer = models.region_explainer(card)
        if explainer is None:
            notes.append(f"{card.id}: heat map not measured in the {spec.name} (not available here)")
        else:
            er = explainer.apply(res, vol)
            if er and er.get("error"):
                notes.append(f"{card.id}: heat map inside the {spec.name} not measured: {er['error']}")
    res.source = series_source(vol, f"{demo_root()} (series {series.uid})")
    d = write_item_files(res, vol, out, stem)
    d["source"] = res.source
    # issue 14: the same trust checks as analyze and batch (decision with the card's test-split
    # figures, segmentation quality, explanation-region checks)
    from .inference.checks import apply_trust_checks
    from .models.matching import match_card, series_facts

    apply_trust_checks(d, res, card, [], match_card(card, series_facts(vol, series)).warnings)
    if card.task == "segmentation" and getattr(res, "label_map", None) is not None \
            and res.label_map.shape[0] == 1:  # a single image: the label map also as an 8-bit PNG
        f = f"{stem}_labels.png"
        save_label_png(res.label_map, out / f)
        d["label_map_png"] = f
    return d, notes


def nodule_points() -> dict:
    """{series UID: [{"id", "point_lps", ...}]}: the demo's nodules, from the LIDC readers' XML
    (written by scripts/make_demo_data.py beside the demo folder)."""
    p = Path(demo_root()).parent / "nodule_points.json"
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(d, dict):
        return {}
    out = {}  # only points the callers can use: a "point_lps" of three finite numbers
    for uid, pts in d.items():
        ok = [q for q in pts if isinstance(q, dict) and _lps_point(q.get("point_lps"))] \
            if isinstance(pts, list) else []
        if ok:
            out[uid] = ok
    return out


def _lps_point(v) -> bool:
    return isinstance(v, list) and len(v) == 3 and all(is_number(x) for x in v)


def _nodules(models: _Models, series, vol, out: Path, tag: str, entry: dict, captured: dict) -> None:
    """The CT nodule models at the demo series' nodules (nodule_points.json), when registered."""
    from .models.matching import match_card, series_facts
    from .nodules.analysis import MALIGNANCY_MODEL
    from .nodules.run import analyze_points, item_dict

    pts = nodule_points().get(series.uid) or []
    card = next((e.card for e in models.entries if e.card.id == MALIGNANCY_MODEL), None)
    if not pts:
        return
    if card is None:
        entry["notes"].append(f"{MALIGNANCY_MODEL} is not registered: the nodule of this series is not analysed")
        return
    m = match_card(card, series_facts(vol, series))
    if not m.ok:
        entry["notes"].append(f"{card.id}: {m.reason}")
        return
    try:
        run = analyze_points(vol, [(p.get("id"), p["point_lps"]) for p in pts], explain=True)
        d = item_dict(run, vol, out, f"{tag}_{card.id}", card,
                      series_source(vol, f"{demo_root()} (series {series.uid})"), "series")
        d["points_from"] = "the LIDC readers' nodule (centre of their >=2-of-4 consensus), nodule_points.json"
    except UserError as ex:
        entry["notes"].append(f"{card.id}: {_one_line(ex)}")
        return
    except Exception as ex:  # noqa: BLE001 - one line, never a traceback
        entry["notes"].append(f"{card.id} failed: {type(ex).__name__}: {_one_line(ex)}")
        return
    from .export.report_pdf import capture

    captured[len(captured)] = capture(d, vol, out, run)
    entry["analyses"].append(d)
    entry["notes"] = [n for n in entry["notes"] if not n.startswith("no registered model fits")]


def run_headless(out: str, registry=None, device: str = "auto", analyse: bool = True) -> dict:
    """Load every demo series, run the matching models, write report.json and key images."""
    from .outputs import out_folder

    out_dir = out_folder(out, sources=[demo_root()])  # never among the demo's own files
    previous = _previous_files(out_dir)  # refuses a folder holding anything else
    before = _listing(out_dir)
    try:
        return _run_headless(out_dir, previous, before, registry, device, analyse)
    finally:  # also after an error or Ctrl-C: what this run wrote so far is the demo's to remove
        after = _listing(out_dir)
        written = {n for n, st in after.items() if before.get(n) != st}
        _write_manifest(out_dir, {n: after[n] for n in (written | set(previous)) - {MANIFEST} if n in after})


def _run_headless(out_dir: Path, previous: dict, before: dict, registry, device, analyse) -> dict:
    from .dicom import scan

    index = scan(demo_root())
    report = {"not_for_clinical_use": True, "results_schema_version": 1, "source": demo_root(),
              "attribution": attribution_path(),
              "out": str(out_dir.resolve()), "series": [], "models": [], "notes": [],
              "problems": [p.to_dict() for p in index.problems]}
    models = None
    if analyse:
        try:
            models = _Models(registry, device)
            report["notes"] += models.notes
            if not models.entries:
                report["notes"].append("no models are registered: the series are shown without analysis "
                                       "(add models with `imaging-assist models add PATH`)")
        except Exception as e:  # noqa: BLE001 - the demo still shows the series
            report["notes"].append(f"models not available: {_one_line(e)}")
            models = None
    captured: dict[int, dict] = {}  # per analysis: what the PDF report needs from the volume
    with warnings.catch_warnings(record=True):
        # as in analyze: what the models' runs warn about is in each result's warnings (printed
        # by run_demo), or was said once already (the prediction log's logger); Python's own
        # display of the same warning would add a second copy naming a source line
        warnings.simplefilter("always")
        _analyse_series(index, models, out_dir, report, captured)
    if models is not None:
        report["models"] = models.summary()
    after = _listing(out_dir)
    # the files this run wrote (new, or changed since it began): removed by the next demo run
    # into this folder when it does not write them again; report.json and report.pdf come next
    report["files"] = sorted({n for n, st in after.items() if before.get(n) != st} | {"report.json", "report.pdf"})
    path = out_dir / "report.json"
    text = json.dumps(report, indent=2, default=_json_default)
    from .outputs import written_beside  # a new temporary file (never a planted link), removed on any error

    with written_beside(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    report["report_path"] = str(path)
    _remove_stale(out_dir, {n: st for n, st in previous.items() if n not in report["files"]})
    # the PDF report beside report.json (issue 13); a failure is a note, report.json stays
    from .export.report_pdf import build_report, write_report_pdf
    try:
        report["report_pdf"] = str(write_report_pdf(
            build_report(report, base_dir=out_dir, captured=captured, load_missing=False),
            out_dir / "report.pdf"))
    except UserError as e:
        report["notes"].append(f"report.pdf not written: {_one_line(e)}")
        # an earlier run's PDF is not this report
        _remove_stale(out_dir, {n: st for n, st in previous.items() if n == "report.pdf"})
    return report


def _listing(folder: Path) -> dict:
    """{name: (inode, mtime_ns, size)} of the plain files in ``folder``."""
    out = {}
    try:
        with os.scandir(folder) as it:
            for f in it:
                if f.is_file(follow_symlinks=False):
                    st = f.stat(follow_symlinks=False)
                    out[f.name] = (st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:
        pass
    return out


# the demo's record of the files it wrote into its output folder: its own name, so that no other
# tool's file (a report.json listing "files") is ever taken for it
MANIFEST = ".imaging-assist-demo.json"


def _previous_files(folder: Path) -> dict:
    """{name: (size, mtime_ns)} of the files an earlier demo run wrote into ``folder`` and that
    are unchanged since (its :data:`MANIFEST`).  A one-line UserError when ``folder`` holds
    anything else: the demo would overwrite or mix with files it did not write."""
    try:
        files = json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, RecursionError, AttributeError):
        files = None
    own = {}
    for name, rec in (files.items() if isinstance(files, dict) else ()):
        # plain names only: a list edited to name ../something or a sub-folder removes nothing
        if name in ("", ".", "..") or "\0" in name or os.path.basename(name) != name or \
                (os.altsep and os.altsep in name) or not isinstance(rec, dict):
            continue
        st = (rec.get("size"), rec.get("mtime_ns"))
        if _stat(folder / name) == st:
            own[name] = st
    try:
        others = sorted(n for n in os.listdir(folder) if n not in own and n not in (MANIFEST, MANIFEST + ".tmp"))
    except OSError as e:
        raise UserError(f"cannot read the output folder {folder}: {e.strerror or e}") from None
    if others:
        raise UserError(f"the output folder {folder} holds files the demo did not write "
                        f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}): choose a new or "
                        "empty folder (the demo replaces only its own earlier outputs)")
    return own


def _stat(p: Path):
    """(size, mtime_ns) of the plain file ``p`` (not a link); None when it is none."""
    try:
        st = p.lstat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None


def _write_manifest(folder: Path, listing: dict) -> None:
    """Record the demo's files in ``folder`` (``listing``: :func:`_listing`'s entries)."""
    files = {n: {"size": st[2], "mtime_ns": st[1]} for n, st in sorted(listing.items())}
    path = folder / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    try:
        tmp.write_text(json.dumps({"written_by": "imaging-assist demo", "files": files}, indent=1),
                       encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass  # without it the next run refuses the folder rather than removing anything


def _remove_stale(folder: Path, files: dict) -> None:
    """Remove ``files`` ({name: (size, mtime_ns)}) that are still as the demo wrote them."""
    for name in sorted(files):
        p = folder / name
        try:
            if _stat(p) == files[name]:
                p.unlink()
        except OSError:
            pass  # left as it is: only a leftover


def _analyse_series(index, models, out_dir: Path, report: dict, captured: dict) -> None:
    from .dicom import load_series

    for n, s in enumerate(index.image_series()):
        vol = load_series(s)
        tag = f"series_{n + 1:02d}_{(s.modality or 'img').lower()}"
        png = out_dir / f"{tag}.png"
        write_key_image(vol, str(png))
        entry = {"key": s.key, "modality": s.modality, "description": s.description,
                 "body_part": s.body_part, "patient": str(s._first("PatientName")),
                 "instances": s.n_instances, "key_image": str(png), "analyses": [], "notes": []}
        entry.update(vol.geometry_dict())
        if models is not None:
            fits = models.matching(s, vol)
            if not fits and models.entries:
                entry["notes"].append(f"no registered model fits this series ({s.modality or '?'}"
                                      f"{' ' + s.body_part if s.body_part else ''}, "
                                      f"{'3D' if vol.n_slices > 1 else '2D'})")
            for e in fits:
                stem = f"{tag}_{e.card.id}"
                try:
                    d, notes = _analyse(models, e, s, vol, out_dir, stem)
                    from .export.report_pdf import capture

                    captured[len(captured)] = capture(d, vol, out_dir)
                    entry["analyses"].append(d)
                    entry["notes"] += notes
                except UserError as ex:
                    entry["notes"].append(f"{e.card.id}: {_one_line(ex)}")
                except Exception as ex:  # noqa: BLE001 - one line, never a traceback
                    entry["notes"].append(f"{e.card.id} failed: {type(ex).__name__}: {_one_line(ex)}")
            _nodules(models, s, vol, out_dir, tag, entry, captured)
        report["series"].append(entry)


def _json_default(o):
    import numpy as np  # not at import time: the viewer imports display_problem from here

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# =========================================================================== printing
def analysis_lines(d: dict) -> list[str]:
    """One line per finding / structure / heat map of a results.json item."""
    if d.get("nodules") is not None:
        from .nodules.run import summary_lines

        return summary_lines(d)
    lines = []
    decision = d.get("decision") or {}
    if decision.get("text"):  # most likely class first, decisions with their test-split figures
        probs = d.get("probabilities") or {}
        lines.append(", ".join(f"{k} {probs[k]:.3f}" for k in decision.get("ranking") or probs))
        lines += [x["text"] for x in decision.get("labels") or [] if x.get("text")]
    for lab, p in (() if decision.get("text") else (d.get("probabilities") or {}).items()):
        dec = (d.get("decisions") or {}).get(lab)
        if dec:
            lines.append(f"{lab} {format_probability(p, dec['threshold'])} "
                         f"{'≥' if dec['positive'] else '<'} {dec['threshold']:g} → "
                         f"{'positive' if dec['positive'] else 'negative'}")
        else:
            lines.append(f"{lab} {p:.3f}")
    sizes = d.get("area_mm2") or d.get("area_px")
    if d.get("task") == "segmentation" and sizes:
        unit = "mm²" if d.get("area_mm2") else "px"
        lines.append(", ".join(f"{k} {v:,.0f} {unit}" for k, v in sizes.items() if k != "background"))
    if (d.get("quality") or {}).get("text"):
        lines.append(d["quality"]["text"])
    from .explain.flags import flagged_text

    for h in d.get("heatmaps") or []:
        lines.append(f"{h['method']} heat map of {h['label']}")
        if flagged_text(h):  # the engine's verdict, as analyze and the viewer say it
            lines.append(flagged_text(h))
    er = d.get("explanation_region")
    if er and not er.get("error"):
        try:
            from .explain.regions import region_text

            lines.append(region_text(er))
        except ImportError:
            pass
    return lines


def first_series_key() -> str | None:
    """The series the viewer shows first: the first of the study browser (a chest X-ray, which
    the shipped models analyse), not the viewer's default (the largest series, the CT)."""
    from .dicom import scan

    series = scan(demo_root()).image_series()
    return series[0].key if series else None


def _lean() -> None:
    """The headless demo in its own process runs the registry's models and ends: leave out what
    MONAI networks do not need, as ``analyze`` does (:mod:`.models.lean`; nothing is left out
    when any registered model is another kind)."""
    from .models.lean import lean_imports
    from .models.registry import Registry

    try:
        ids = [e.card.id for e in Registry().entries() if e.card is not None]
    except Exception:  # noqa: BLE001 - a registry problem is the demo's to report, not this shortcut's
        return
    lean_imports(ids, explain=True)


def run_demo(args) -> int:
    run_gui = getattr(args, "run_gui", None)
    if not getattr(args, "headless", False) and run_gui and os.environ.get("QT_QPA_PLATFORM", "") != "offscreen":
        why = display_problem()
        if why is None:
            return run_gui(demo_root(), screenshot=None, series=first_series_key(), layout=None, run_models=True)
        if "does not answer" in why:  # set, but no server: say why no window opens
            print(f"note: no display ({why}): running the headless demo instead", flush=True)
    out = os.path.abspath(getattr(args, "out", None) or "imaging-assist-demo")
    device = getattr(args, "device", None) or "auto"
    if device != "auto":  # an unavailable --device: one error now, not a note per model and series
        from .inference.device import resolve_device

        resolve_device(device)
    registry = None
    if getattr(args, "models", None):
        from .models.registry import Registry

        folder = Path(args.models).expanduser().resolve()
        if not folder.is_dir():
            raise UserError(f"{args.models} is not a folder")
        registry = Registry(sources=[(folder, "added")])
    elif getattr(args, "own_process", False):
        _lean()
    report = run_headless(out, registry=registry, device=device)
    from .validation.ood import summary_note
    print(f"{'No display: ran' if not getattr(args, 'headless', False) else 'Ran'} the headless demo on "
          f"{len(report['series'])} series. Not for clinical use.")
    for s in report["series"]:
        print(f"  {s['modality']} {s['description']}: {' x '.join(map(str, s['shape']))}, "
              f"key image {s['key_image']}")
        for w in s["warnings"]:
            print(f"    warning: {w}")
        for d in s["analyses"]:
            print(f"    {d['model']} {d.get('model_version', '')}".rstrip() + ":")
            lines = analysis_lines(d)
            # what report.json and the PDF say too: the item's warnings and its nodules' (not those
            # of the series, printed above, nor a line already said, e.g. failed quality checks),
            # and the OOD flag as analyze says it (unless a line or warning says it already)
            warns = list(d.get("warnings") or []) + [w for nd in d.get("nodules") or []
                                                     for w in nd.get("warnings") or []]
            warns = [w for w in dict.fromkeys(warns) if w not in s["warnings"] and w not in lines]
            ood = summary_note(d, "\n".join(lines + warns)).lstrip("; ")
            lines += ([ood] if ood else []) + [f"warning: {w}" for w in warns]
            for ln in lines:
                print(f"      {ln}")
            for k in d.get("key_images") or []:
                print(f"      key image {os.path.join(report['out'], k)}")
        for note in s["notes"]:
            print(f"    note: {note}")
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"Demo images: sources and licences in {report['attribution']}")
    print(f"Report written to {report['report_path']}")
    if report.get("report_pdf"):
        print(f"PDF report written to {report['report_pdf']}")
    return 0
