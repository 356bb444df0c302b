"""Fuzzing the small user-file readers with structurally mutated files (tests/_fuzz_json.py):
each mutation either reads into sane, typed values or gives the reader's documented one-line
error (a ``UserError`` subclass) or warning; never another exception, a traceback, a hang or a
runaway allocation.  Each test names every mutation that escaped."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from _fuzz_json import check_reader, mutations, one_line_problem
from conftest import ROOT, SHARED, need
from imaging_assist.errors import UserError

LIDC_XML = SHARED / "ct" / "lidc_idri_0001_slab" / "annotations_69.xml"


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    cfg, data = tmp_path / "config", tmp_path / "data"
    cfg.mkdir()
    data.mkdir()
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(cfg))
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(data))
    return SimpleNamespace(cfg=cfg, data=data, tmp=tmp_path)


def _writer(path: Path, mode: int | None = None):
    def write(data: bytes):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if mode is not None:
            os.chmod(path, mode)
    return write


def _real(x, lo=-math.inf, hi=math.inf) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) < 1e308 and lo <= x <= hi


def _one_line(s) -> bool:
    return isinstance(s, str) and "\n" not in s and "\r" not in s


def _report(bad: list[str], what: str):
    assert not bad, f"{len(bad)} mutation(s) of {what} escaped:\n" + "\n".join(bad[:40])


# --------------------------------------------------------------------------- 1. PACS nodes
def test_pacs_settings(dirs):
    from imaging_assist.pacs import nodes as N

    ca = dirs.tmp / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    s = N.Settings(ae_title="ME", storage_port=11113, nodes={
        "main": N.Node("main", "dimse", ae_title="PACS", host="pacs.local", port=104, tls_ca=str(ca)),
        "web": N.Node("web", "dicomweb", url="https://pacs.example/dicom-web", auth="basic",
                      username="u", password="p"),
        "tok": N.Node("tok", "dicomweb", url="http://x.example/dw", auth="bearer", token="t", timeout=5)})
    path = N.save_settings(s)
    doc = json.loads(path.read_text())
    assert N.load_settings().to_dict() == s.to_dict()

    def check(st):
        if not (N._AE_RE.match(st.ae_title) and _real(st.storage_port, 1, 65535)
                and isinstance(st.storage_port, int)):
            return f"own settings {st.ae_title!r} / {st.storage_port!r}"
        for n in st.nodes.values():
            for k, f in N.Node.__dataclass_fields__.items():
                v = getattr(n, k)
                if f.type == "str" and not isinstance(v, str):
                    return f"node {n.name}: {k} = {v!r}"
            if not (isinstance(n.port, int) and _real(n.timeout, 1e-3, 1e6)):
                return f"node {n.name}: port {n.port!r}, timeout {n.timeout!r}"
            n.display(), repr(n), n.public_dict()

    _report(check_reader(mutations(doc), _writer(path), N.load_settings, (N.PacsError,), check), "pacs.json")


# --------------------------------------------------------------------------- 2. hanging protocols
def test_hanging_protocols(dirs):
    from imaging_assist import hanging as H

    path = dirs.cfg / H.FILE_NAME
    st = H.ProtocolStore(path)
    st.save(H.protocol_from_layout("1x2", ["current", "prior"], "CR/DX", "CHEST"))
    st.save(H.protocol_from_layout("2x2", ["current", "next", "next", "prior"], "MR"))
    doc = json.loads(path.read_text())
    assert len(H.ProtocolStore(path).user) == 2

    def check(store):
        if not _one_line(store.warning):
            return f"warning {store.warning!r}"
        for p in store.user:
            if not (isinstance(p.name, str) and isinstance(p.modality, str) and isinstance(p.body_part, str)
                    and p.layout in H.LAYOUTS and all(v in H.SOURCES for v in p.viewports)):
                return f"protocol {p!r}"
        store.match("CR", "CHEST"), store.match("MR"), [p.describe() for p in store.all()]

    _report(check_reader(mutations(doc), _writer(path), lambda: H.ProtocolStore(path), (), check),
            "hanging_protocols.json")


# --------------------------------------------------------------------------- 3. reading positions
def test_positions(dirs):
    from imaging_assist.positions import PositionStore

    path = dirs.data / "positions.json"
    vols = [SimpleNamespace(headers=[{"SeriesInstanceUID": f"1.2.{i}"}], n_slices=10 + i) for i in range(2)]
    st = PositionStore(path)
    for i, v in enumerate(vols):
        st.remember(v, 3 + i)
    assert st.flush()
    doc = json.loads(path.read_text())

    def check(store):
        if not _one_line(store.warning):
            return f"warning {store.warning!r}"
        for uid, v in store._items.items():
            if not (isinstance(v["index"], int) and isinstance(v["n"], int) and _real(v["t"])):
                return f"item {uid}: {v!r}"
        [store.recall(v) for v in vols]
        store.remember(vols[0], 1)
        if not store.flush():
            return "flush failed"

    _report(check_reader(mutations(doc), _writer(path), lambda: PositionStore(path), (), check),
            "positions.json")


# --------------------------------------------------------------------------- 4. site thresholds
def test_site_thresholds(dirs):
    from imaging_assist.models.card import Threshold
    from imaging_assist.models import site as S

    card = SimpleNamespace(id="fuzz-model", labels=["pos", "neg"], version="1.0", weights=[],
                           thresholds={"pos": Threshold(0.5)})
    S.save_site_threshold(card, "pos", 0.62, 412, sensitivity=0.9, specificity=0.8, date="2026-12-04")
    p, _ = S.save_site_threshold(card, "pos", 0.6, 500, data="local", date="2026-12-05")
    doc = json.loads(p.read_text())
    assert S.site_thresholds(card)[0]["pos"].threshold == 0.6

    def check_read(res):
        (th, notes), (eff, eff_notes) = res
        for lab, t in th.items():
            if not (_real(t.threshold, 0, 1) and isinstance(t.n_studies, int) and t.n_studies >= 0
                    and _one_line(t.note) and _one_line(t.date)
                    and all(x is None or _real(x, 0, 1) for x in (t.sensitivity, t.specificity))):
                return f"{lab}: {t!r}"
        if not all(_one_line(n) for n in notes + list(eff_notes.values())):
            return f"notes {notes!r}"
        if not all(_real(t.threshold, 0, 1) for t in eff.values()):
            return f"effective {eff!r}"

    read = lambda: (S.site_thresholds(card), S.effective_thresholds(card))  # noqa: E731
    bad = check_reader(mutations(doc), _writer(p), read, (), check_read)

    def save():
        S.save_site_threshold(card, "pos", 0.55, 10, date="2027-01-01")
        return S.site_thresholds(card)

    def check_saved(res):
        th, notes = res
        if "pos" not in th or th["pos"].threshold != 0.55:
            return f"the new point is not used: {th!r} {notes!r}"

    bad += ["save: " + b for b in check_reader(mutations(doc, cap=25), _writer(p), save, (), check_saved)]
    _report(bad, "a site threshold file")


# --------------------------------------------------------------------------- 5. trust store
def test_trust_store(dirs):
    from imaging_assist.models import trust as T
    from imaging_assist.models.errors import ModelTrustError

    rec = {"hash": "ab" * 32, "id": "bundle", "folder": str(dirs.tmp / "b"), "config_hash": "cd" * 32,
           "weights": {"model.pt": "ef" * 32}, "trusted_at": "2026-01-01T00:00:00+00:00"}
    T._write_store({"version": 1, "bundles": [rec]})
    path = T.trust_file()
    doc = json.loads(path.read_text())
    assert T.trusted_bundles() == [rec]
    write = _writer(path, 0o600)
    nobundle = dirs.tmp / "nobundle"
    nobundle.mkdir()

    def check_list(recs):
        if not (isinstance(recs, list) and all(isinstance(r, dict) for r in recs)):
            return f"records {recs!r}"[:200]
        T.is_trusted(nobundle)

    def check_store(d):
        if not (isinstance(d, dict) and isinstance(d.get("bundles"), list)):
            return f"store {d!r}"[:200]

    bad = check_reader(mutations(doc), write, T.trusted_bundles, (), check_list)
    bad += ["strict: " + b for b in check_reader(mutations(doc), write, lambda: T._read_store(True),
                                                   (ModelTrustError,), check_store)]
    bad += ["untrust: " + b for b in check_reader(mutations(doc, cap=20), write, lambda: T.untrust(nobundle),
                                                    (ModelTrustError,))]
    _report(bad, "trusted_bundles.json")


# --------------------------------------------------------------------------- 6. annotations
def test_annotation_store(dirs):
    from imaging_assist.annotations import AnnotationStore
    from imaging_assist.measure import Measurement

    store = AnnotationStore(dirs.data / "annotations")
    study, series, shape = "1.2.3", "1.2.3.4", (10, 64, 64)
    items = [Measurement("ruler", [(1.5, 2.0), (30.0, 40.0)], 0, 3),
             Measurement("text", [(5.0, 5.0)], 0, 2, text="a note"),
             Measurement("polygon", [(1.0, 1.0), (20.0, 1.0), (10.0, 15.0)], 1, 4)]
    path, w = store.save(study, series, items)
    assert not w
    doc = json.loads(path.read_text())
    assert len(store.load(study, series, shape=shape)[0]) == 3

    def read():
        return store.load(study, series, shape=shape), store.load(study, series), store.save(study, series, items[:1])

    def check(res):
        for got, warnings in res[:2]:
            for m in got:
                if not (isinstance(m, Measurement) and isinstance(m.axis, int) and isinstance(m.index, int)
                        and m.axis in (0, 1, 2) and m.index >= 0 and isinstance(m.text, str)
                        and all(math.isfinite(c) for p in m.points for c in p)):
                    return f"item {m!r}"
            if not all(_one_line(x) for x in warnings):
                return f"warnings {warnings!r}"
        if not all(_one_line(x) for x in res[2][1]):
            return f"save warnings {res[2][1]!r}"

    _report(check_reader(mutations(doc, cap=80), _writer(path), read, (), check), "an annotations file")


# --------------------------------------------------------------------------- 7. monitoring
def _thresholds_ok(th) -> str | None:
    from imaging_assist.monitoring.reference import DEFAULT_THRESHOLDS

    for k in DEFAULT_THRESHOLDS:
        if not _real(th.get(k)):
            return f"threshold {k} = {th.get(k)!r}"
    for k in ("psi_bins", "min_n"):
        if not isinstance(th[k], int):
            return f"threshold {k} = {th[k]!r}"


def test_monitor_reference_and_thresholds(dirs):
    from imaging_assist.monitoring import drift
    from imaging_assist.monitoring.reference import DEFAULT_THRESHOLDS, REFERENCE_FILE, load_reference, thresholds

    folder = dirs.tmp / "model"
    folder.mkdir()
    src = ROOT / "weights" / "cxr-pneumonia" / REFERENCE_FILE
    doc = json.loads(src.read_text())
    card = SimpleNamespace(id=doc["model_id"], folder=folder)
    path = folder / REFERENCE_FILE
    rng = np.random.default_rng(0)
    cur = rng.uniform(0, 1, 40)

    def read():
        ref = load_reference(card)
        return ref, thresholds(ref)

    def check(res):
        ref, th = res
        why = _thresholds_ok(th)
        if why:
            return why
        if not isinstance(ref, dict):
            return f"reference {type(ref).__name__}"
        # what the monitor does with it (only with what the mutation changed: the tests are slow)
        same = th == thresholds(doc)
        for part, use in (("values", lambda k, v: drift._dist(k, v, cur, th, "input")),
                          ("categories", lambda k, v: drift._categories(k, v, ["GE"] * 40, th)),
                          ("rates", lambda k, v: drift._rate(k, v, (cur > 0.5).astype(float), th, "output"))):
            for k, v in (ref.get(part) or {}).items():
                if not same or v != doc[part].get(k):
                    use(k, v)
        auc = ref.get("auc")
        if auc is not None and not _real(auc, 0, 1):
            return f"auc {auc!r}"

    bad = check_reader(mutations(doc), _writer(path), read, (UserError,), check)

    path.write_text(json.dumps(doc))
    site = dirs.cfg / "monitor.json"
    mdoc = {"thresholds": dict(DEFAULT_THRESHOLDS, psi=0.25), "non_inferiority_margins": {"AUC": 0.04, "Dice": 0.03}}
    site.write_text(json.dumps(mdoc))
    assert read()[1]["psi"] == 0.25
    bad += ["monitor.json: " + b for b in check_reader(mutations(mdoc), _writer(site), read, (UserError,), check)]
    _report(bad, "a monitor reference / monitor.json")


def test_monitor_margins(dirs):
    from imaging_assist.monitoring import versions as V

    site = dirs.cfg / "monitor.json"
    mdoc = {"thresholds": {"psi": 0.25}, "non_inferiority_margins": {"AUC": 0.04, "Dice": 0.03}}
    site.write_text(json.dumps(mdoc))
    assert V.margin_for("Dice") == 0.03

    def check(ms):
        if not all(_real(m, 0, 1) for m in ms):
            return f"margins {ms!r}"

    bad = check_reader(mutations(mdoc), _writer(site), lambda: (V.margin_for("AUC"), V.margin_for("Dice")),
                       (UserError,), check)
    _report(bad, "monitor.json (margins)")


def test_model_versions_state(dirs, monkeypatch):
    from imaging_assist.monitoring import versions as V

    monkeypatch.setattr(V, "_event", lambda *a, **k: None)  # the log and audit trail: not fuzzed here
    cands = []
    for i in (1, 2):
        f = dirs.data / f"cand{i}"
        f.mkdir()
        (f / "model.json").write_text("{}")  # a model folder (a promoted one is checked to be)
        (f / "metrics.json").write_text(json.dumps({"non_inferiority": {
            "metric": "AUC", "margin": 0.05, "comparisons": {"local": {"diff": 0.01, "diff_ci95": [0.0, 0.02]}}}}))
        v = V.next_version("m", "1.0.0")
        V.register_candidate("m", v, f, "1.0.0", {})
        cands.append((v, f))
    V.promote("m", cands[0][0])
    V.promote("m", cands[1][0])
    path = V.state_path()
    doc = json.loads(path.read_text())
    assert V.promoted_sources() == ([cands[1][1].resolve()], {})

    def read():
        pf, blocked = V.promoted_sources()  # what the registry reads: never raises, refuses per model
        if any("\n" in str(m) for m in blocked.values()):
            raise AssertionError(f"refusal not one line: {blocked!r}")
        out = [pf]
        for fn in (lambda: V.load_state(), lambda: V.next_version("m", "1.0.0"),
                   lambda: V.candidate_folder("m", cands[0][0]), lambda: V.status("m"),
                   lambda: V.rollback("m"), lambda: V.register_candidate("m", "1.0.0+site.9", cands[0][1], "1.0.0", {}),
                   lambda: V.promote("m", "1.0.0+site.9")):
            try:
                out.append(fn())
            except UserError as e:
                why = one_line_problem(e, (UserError,))
                if why:
                    raise AssertionError(why) from None
        return out

    def check(res):
        pf = res[0]
        if not (isinstance(pf, list) and all(isinstance(f, Path) and f.is_dir() and f.is_absolute() for f in pf)):
            return f"promoted folders {pf!r}"

    bad = check_reader(mutations(doc, cap=50), _writer(path), read, (), check)

    # the candidate's metrics.json, read by promote
    path.write_text(json.dumps(doc))
    mpath = cands[0][1] / "metrics.json"
    mdoc = json.loads(mpath.read_text())

    def promote():
        path.write_text(json.dumps(doc))
        return V.promote("m", cands[0][0])

    bad += ["metrics.json: " + b for b in check_reader(mutations(mdoc), _writer(mpath), promote, (UserError,))]
    _report(bad, "model_versions.json / metrics.json")


# --------------------------------------------------------------------------- 9. sanity.json, nodule_points.json
def test_recorded_sanity(dirs):
    from imaging_assist.explain import flags
    from imaging_assist.explain.sanity import SANITY_FILE, recorded_sanity, sanity_warning

    doc = json.loads((ROOT / "weights" / "cxr-pneumonia" / SANITY_FILE).read_text())
    doc["methods"]["integrated_gradients"]["passed"] = False  # a failed method's warning is formatted too
    folder = dirs.tmp / "model"
    folder.mkdir()
    card = SimpleNamespace(id="m", folder=folder)
    path = folder / SANITY_FILE

    def read():
        rec = recorded_sanity(card)
        ws = [sanity_warning(card, m) for m in doc["methods"]]
        ws += [w for m in rec for w in flags.heatmap_flags(SimpleNamespace(method=m), card=card, sanity=rec)]
        return rec, ws, {k: bool(v.get("passed")) for k, v in rec.items()}

    def check(res):
        rec, ws, _ = res
        if not (isinstance(rec, dict) and all(isinstance(k, str) and isinstance(v, dict) for k, v in rec.items())):
            return f"recorded {rec!r}"[:200]
        if not all(w is None or _one_line(w) for w in ws):
            return f"warnings {ws!r}"[:300]

    read()
    path.write_text(json.dumps(doc))
    assert read()[1][1] and "failed" in read()[1][1]
    _report(check_reader(mutations(doc, cap=40), _writer(path), read, (), check), "sanity.json")


def test_demo_nodule_points(dirs, monkeypatch):
    from imaging_assist import demo

    root = dirs.tmp / "pkgdata" / "demo"
    root.mkdir(parents=True)
    monkeypatch.setattr(demo, "demo_root", lambda: str(root))
    doc = json.loads((ROOT / "imaging_assist" / "data" / "nodule_points.json").read_text())
    path = root.parent / "nodule_points.json"
    uid = next(iter(doc))

    def read():
        pts = demo.nodule_points()
        # what the demo and the viewer do with it
        return pts, [[float(x) for x in p["point_lps"]] for p in pts.get(uid) or []], \
            [(p.get("id"), p["point_lps"]) for p in pts.get(uid) or []]

    def check(res):
        pts, lps, _ = res
        if not (isinstance(pts, dict) and all(isinstance(v, list) for v in pts.values())):
            return f"points {pts!r}"[:200]
        if not all(len(p) == 3 and all(math.isfinite(c) for c in p) for p in lps):
            return f"point {lps!r}"

    path.write_text(json.dumps(doc))
    assert read()[1]
    _report(check_reader(mutations(doc), _writer(path), read, (), check), "nodule_points.json")


# --------------------------------------------------------------------------- 8. LIDC reader XML
_NUMERIC_TAGS = ("xCoord", "yCoord", "imageZposition", "malignancy")
_TEXT_TAGS = ("imageSOP_UID", "inclusion", "noduleID", "SeriesInstanceUid", "servicingRadiologistID")
_GARBAGE = ["abc", "NaN", "-inf", "1e400", "-1e30", "99999999999999999999999", "  ", "1,5", "&amp;", "TRUE\nFALSE",
            "-1", "70000"]
_TEXT_GARBAGE = ["abc", "  ", "&amp;", "TRUE\nFALSE"]


def _xml_mutations(full: str):
    """(name, bytes): values of the first elements of each tag replaced, elements removed
    (in the file cut after its first reading session: a third of the parsing time), then on the
    whole file truncations, bit flips, an entity bomb, deep nesting, a huge coordinate list."""
    text = full[:full.index("</readingSession>") + len("</readingSession>")] + "\n</LidcReadMessage>\n"
    for tag in _NUMERIC_TAGS + _TEXT_TAGS:
        ms = list(re.finditer(rf"<{tag}>([^<]*)</{tag}>", text))
        assert ms, tag
        for m in (ms[0], ms[len(ms) // 2]) if tag == "xCoord" else ms[:1]:
            for g in _GARBAGE if tag in _NUMERIC_TAGS else _TEXT_GARBAGE:
                yield f"<{tag}> #{ms.index(m)} = {g!r}", (text[:m.start(1)] + g + text[m.end(1):]).encode()
            yield f"<{tag}> #{ms.index(m)} removed", (text[:m.start()] + text[m.end():]).encode()
            yield f"<{tag}> #{ms.index(m)} emptied", (text[:m.start()] + f"<{tag}/>" + text[m.end():]).encode()
    for tag in ("edgeMap", "roi", "locus", "characteristics", "ResponseHeader", "unblindedReadNodule"):
        m = re.search(rf"<{tag}>.*?</{tag}>", text, re.S)
        if m:
            yield f"<{tag}> removed", (text[:m.start()] + text[m.end():]).encode()
            inner = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.S)
            yield f"<{tag}> text only", (text[:inner.start(1)] + "x" + text[inner.end(1):]).encode()
    text = full
    data = text.encode()
    for n in (0, 10, len(data) // 3, len(data) // 2, len(data) - 5):
        yield f"truncated to {n} bytes", data[:n]
    rng = np.random.default_rng(0)
    for i in range(6):
        b = bytearray(data)
        for pos in rng.integers(0, len(b), 20):
            b[pos] ^= 1 << int(rng.integers(0, 8))
        yield f"bit flips #{i}", bytes(b)
    head = '<?xml version="1.0"?>\n<!DOCTYPE LidcReadMessage [\n<!ENTITY a0 "lollollollol">\n' + "".join(
        f'<!ENTITY a{i} "{("&a" + str(i - 1) + ";") * 10}">\n' for i in range(1, 10)) + "]>\n"
    yield "billion laughs", (head + text.split("?>", 1)[1].replace("<xCoord>", "<xCoord>&a9;", 1)).encode()
    yield "external entity", ('<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY e SYSTEM "file:///etc/passwd">]>\n'
                              + text.split("?>", 1)[1].replace("<xCoord>", "<xCoord>&e;", 1)).encode()
    deep = 200_000
    yield "deep nesting", (text.split("</LidcReadMessage>")[0] + "<readingSession>" + "<a>" * deep
                           + "</a>" * deep + "</readingSession></LidcReadMessage>").encode()
    m = re.search(r"<edgeMap>.*?</edgeMap>", text, re.S)
    yield "20,000 more edgeMaps in one roi", (text[:m.end()] + m.group(0) * 20_000 + text[m.end():]).encode()
    yield "UTF-16 without declaration change", text.encode("utf-16")
    yield "unknown encoding declared", text.replace('encoding="UTF-8"', 'encoding="bogus"', 1).encode()
    yield "multi-byte encoding declared", text.replace('encoding="UTF-8"', 'encoding="EUC-JP"', 1).encode()
    yield "no namespace", text.replace('xmlns="http://www.nih.gov"', "", 1).encode()
    yield "empty root", b'<LidcReadMessage xmlns="http://www.nih.gov"/>'


@pytest.fixture(scope="module")
def slab():
    from imaging_assist.dicom import load_series, scan

    return load_series(scan(str(need(LIDC_XML.parent))).all_series()[0])


def test_lidc_reader_xml(tmp_path, slab):
    from imaging_assist.nodules import lidc_xml

    text = need(LIDC_XML).read_text(encoding="utf-8")
    path = tmp_path / "annotations.xml"

    def check_msg(msg):
        for mk in msg.marks:
            for r in mk.rois:
                if not (isinstance(r.z, float) and r.points.dtype.kind == "f" and r.points.ndim == 2
                        and np.isfinite(r.points).all() and np.abs(r.points).max(initial=0) <= 65536):
                    return f"roi z={r.z!r} points {r.points[:2]!r}"

    docs = list(_xml_mutations(text))
    bad = check_reader(docs, _writer(path), lambda: lidc_xml.parse(path), (UserError,), check_msg)

    def check_nodules(nods):
        for n in nods:
            if not all(m.shape == slab.shape[:3] for m in n.masks.values()):
                return f"{n.id}: masks of another shape"

    # onto the loaded slab (what the viewer and scripts call), for the mutations that change
    # which slice a contour goes on or what it fills (each one costs ~0.1 s)
    keep = {"<xCoord> #0 = '-1'", "<imageSOP_UID> #0 = 'abc'", "<imageSOP_UID> #0 removed",
            "<imageZposition> #0 = '1e400'", "<imageZposition> #0 = '-1e30'", "<imageZposition> #0 removed",
            "<inclusion> #0 = 'abc'", "<roi> removed", "<roi> text only", "<edgeMap> removed",
            "<edgeMap> text only", "20,000 more edgeMaps in one roi"}
    sub = [(n, d) for n, d in docs if n in keep]
    assert len(sub) == len(keep)
    bad += ["load_for_volume: " + b for b in check_reader(
        sub, _writer(path), lambda: lidc_xml.load_for_volume(path, slab), (UserError,), check_nodules)]
    _report(bad, LIDC_XML.name)
