"""``imaging-assist batch`` (issue 19): the same results as ``analyze``, a corrupt file is one
failed row, resume after Ctrl-C, and Ray (in-process on loopback, and a two-node cluster
started here on 127.0.0.1, joined through ``--address`` and ``RAY_ADDRESS``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import DICOM, SHARED, need

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "imaging_assist"]
PNEUMONIA = SHARED / "cxr" / "pneumonia_kermany"


def _films(n: int) -> list[Path]:
    rows = (need(PNEUMONIA / "labels.csv")).read_text().splitlines()[1:]
    files = [PNEUMONIA / r.split(",")[0] for r in rows if r.split(",")[3] == "test"]
    # both classes: every 7th film of the test split, in a fixed order
    return files[::7][:n]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """8 chest films, the CR DICOM chest film, a truncated JPEG and a file that is not DICOM."""
    d = tmp_path_factory.mktemp("batch_in")
    for f in _films(8):
        shutil.copy(f, d / f.name)
    cr = d / "cr"
    shutil.copytree(need(DICOM / "cr_chest_monochrome1_fuji"), cr)
    good = _films(1)[0].read_bytes()
    (d / "truncated.jpeg").write_bytes(good[: len(good) // 3])
    (d / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 5)
    return d


class _Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _run(args, env=None, check_rc=None):
    """The CLI in this process (no interpreter + torch start per call: the suite stays lean)."""
    import contextlib
    import io

    from imaging_assist.cli.main import main

    saved = dict(os.environ)
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.update(env or {})
    so, se = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
            rc = main(list(args))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    p = _Result(rc, so.getvalue(), se.getvalue())
    if check_rc is not None:
        assert p.returncode == check_rc, f"rc {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def _run_sub(args, env, check_rc=None, timeout=900):
    """The CLI in its own process (a Ray driver keeps Ray's state out of this one)."""
    e = dict(os.environ)
    e.pop("RAY_ADDRESS", None)
    e.update(env)
    p = subprocess.run(CLI + list(args), capture_output=True, text=True, env=e, timeout=timeout, cwd=ROOT)
    if check_rc is not None:
        assert p.returncode == check_rc, f"rc {p.returncode}\n{p.stdout}\n{p.stderr[-3000:]}"
    return p


def _rows(out: Path) -> list[dict]:
    db = sqlite3.connect(str(out / "batch.sqlite"))
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute("SELECT * FROM results")]
    db.close()
    return rows


def _analyze(inputs: Path, model: str, out: Path) -> dict:
    p = _run(["analyze", str(inputs), "--model", model, "--out", str(out)])
    assert p.returncode in (0, 1), p.stderr
    doc = json.loads((out / "results.json").read_text())
    return {Path(it["source"]).resolve(): it for it in doc["items"] if "error" not in it}


def _check_equal(rows: list[dict], ref: dict, model: str, analyze_out: Path) -> int:
    """Every ok row of ``model`` equals analyze's item: probabilities within 1e-5, label maps
    identical, and the item's own results.json is analyze's item (same keys)."""
    from PIL import Image

    n = 0
    for r in rows:
        if r["model"] != model or r["status"] != "ok":
            continue
        item = json.loads(Path(r["results_json"]).read_text())["items"][0]
        a = ref[Path(item["source"]).resolve()]
        assert set(a) - {"content_hash"} <= set(item), set(a) ^ set(item)
        if "probabilities" in a:
            got = json.loads(r["probabilities"])
            assert got.keys() == a["probabilities"].keys()
            for k in got:
                assert abs(got[k] - a["probabilities"][k]) <= 1e-5, (r["source"], k)
            assert item["decision"]["text"] == a["decision"]["text"]
        if a.get("label_map"):
            mine = Path(r["label_map"])
            if mine.suffix == ".png":
                assert np.array_equal(np.asarray(Image.open(mine)),
                                      np.asarray(Image.open(analyze_out / a["label_map"]))), r["source"]
            else:
                import nibabel as nib

                x, y = nib.load(str(mine)), nib.load(str(analyze_out / a["label_map"]))
                assert np.array_equal(np.asarray(x.dataobj), np.asarray(y.dataobj))
                assert np.allclose(x.affine, y.affine)
            assert json.loads(r["areas"])["values"] == (a.get("area_px") or a.get("area_mm2")
                                                         or a.get("volume_ml"))
        assert (r["ood_score"] is None) == (a["ood"]["score"] is None)
        if r["ood_score"] is not None:
            assert abs(r["ood_score"] - a["ood"]["score"]) <= 1e-3
        n += 1
    assert n == len(ref), f"{model}: {n} ok rows, analyze has {len(ref)} items"
    return n


@pytest.fixture(scope="module")
def analyzed(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("analyze")
    return {m: (_analyze(inputs, m, out / m), out / m) for m in ("cxr-pneumonia", "cxr-lung-seg")}


def _check_failures(rows: list[dict]) -> None:
    bad = {Path(r["source"]).name: r for r in rows if r["status"] == "failed"}
    assert "truncated.jpeg" in bad and "not a readable" in bad["truncated.jpeg"]["error"], bad
    assert "broken.dcm" in bad and bad["broken.dcm"]["error"], bad
    for r in bad.values():
        assert "\n" not in r["error"] and "Traceback" not in r["error"]


# =========================================================================== local
def test_local_batch_equals_analyze_and_a_corrupt_file_is_one_failed_row(inputs, analyzed, tmp_path):
    out = tmp_path / "out"
    p = _run(["batch", str(inputs), "--model", "cxr-pneumonia", "--model", "cxr-lung-seg", "--out", str(out)],
             check_rc=1)  # 1: some items failed
    assert "Traceback" not in p.stderr
    rows = _rows(out)
    for m, (ref, aout) in analyzed.items():
        assert len(ref) >= 8
        _check_equal(rows, ref, m, aout)
    _check_failures(rows)
    # one row per item and model, keyed by content hash + model version; the per-item
    # results.json is analyze's format (not for clinical use, model summary with sha256)
    keys = [(r["content_hash"], r["model"], r["model_version"]) for r in rows]
    assert len(keys) == len(set(keys))
    ok = [r for r in rows if r["status"] == "ok"]
    doc = json.loads(Path(ok[0]["results_json"]).read_text())
    assert doc["not_for_clinical_use"] is True and doc["model"]["sha256"]
    assert all(r["decode_s"] is not None and r["run_s"] > 0 for r in ok)
    _check_batched(ok)
    # a second run does nothing new: every ok row is resumed by content hash + model version
    p2 = _run(["batch", str(inputs), "--model", "cxr-pneumonia", "--model", "cxr-lung-seg", "--out", str(out),
               "--json"], check_rc=1)
    r2 = json.loads(p2.stdout.strip().splitlines()[-1])
    assert r2["ok"] == 0 and r2["resumed"] == len(ok), r2


def test_local_worker_processes_equal_analyze(inputs, analyzed, tmp_path):
    """--processes 2 (what a large batch gets by default): the same rows as analyze, the bad
    files one failed row each, the rows made in the worker processes, not this one.  (Which
    worker makes how many is a race by design: the first one ready takes the next chunk, and
    on a busy machine it can take all of a small batch before the other has loaded its models;
    a worker that died would end the batch with an error instead.)"""
    out = tmp_path / "out"
    p = _run(["batch", str(inputs), "--model", "cxr-pneumonia", "--model", "cxr-lung-seg", "--out", str(out),
              "--processes", "2"], check_rc=1)
    assert "Traceback" not in p.stderr and "2 worker processes" in p.stderr, p.stderr
    rows = _rows(out)
    for m, (ref, aout) in analyzed.items():
        _check_equal(rows, ref, m, aout)
    _check_failures(rows)
    pids = {r["worker"].rsplit(":", 1)[1] for r in rows if r.get("worker")}
    assert 1 <= len(pids) <= 2 and str(os.getpid()) not in pids, pids
    _check_batched([r for r in rows if r["status"] == "ok"])


def _check_batched(ok: list[dict]) -> None:
    """The films went through the classifier several at a time (its card's
    inference.batch_size), and still equal analyze's one-by-one results (_check_equal)."""
    b = [json.loads(Path(r["results_json"]).read_text())["items"][0].get("batched") or 1
         for r in ok if r["model"] == "cxr-pneumonia"]
    assert max(b) >= 2, b


SVS = SHARED / "pathology" / "wsi_aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"


def _check_slide_equal(row: dict, ref: dict, ref_out: Path, parts: int, workers: int | None = None) -> None:
    """A slide row made in parts on several workers equals analyze's item of the same slide:
    heat maps within 1e-5, the same areas, top tiles and warnings."""
    from imaging_assist.slides.heatmap_io import read_heatmaps

    assert row["status"] == "ok", row
    it = json.loads(Path(row["results_json"]).read_text())["items"][0]
    assert it["tiling"]["parts"] == parts and it["tiling"]["n_tiles_run"] == ref["tiling"]["n_tissue_tiles"]
    if workers is not None:
        assert it["tiling"]["workers"] == workers, it["tiling"]
    for k in ("areas", "area_fraction", "warnings", "cancelled"):
        assert it[k] == ref[k], k
    for lab, tops in ref["top_tiles"].items():
        assert [(t["x"], t["y"]) for t in it["top_tiles"][lab]] == [(t["x"], t["y"]) for t in tops]
    a, _ = read_heatmaps(ref_out / ref["files"]["heatmaps"])
    b, _ = read_heatmaps(Path(json.loads(row["heatmaps"])[0]))
    np.testing.assert_allclose(np.nan_to_num(b, nan=-1), np.nan_to_num(a, nan=-1), atol=1e-5)
    assert abs(row["ood_score"] - ref["ood"]["score"]) <= 1e-5


@pytest.fixture(scope="module")
def analyzed_slide(tmp_path_factory):
    out = tmp_path_factory.mktemp("analyze_slide")
    _run(["analyze", str(need(SVS)), "--model", "path-lung-tissue", "--out", str(out), "--heatmap-format", "npz"],
         check_rc=0)
    return json.loads((out / "results.json").read_text())["items"][0], out


def test_one_slide_in_parts_on_worker_processes_equals_analyze(analyzed_slide, tmp_path):
    """Worker processes spread one slide's tiles (--tiles-per-task 8: 23 tissue tiles in 4
    parts, a multiple of the 2 workers); the row equals analyze's item of the slide, and both
    workers ran parts of it."""
    out = tmp_path / "out"
    p = _run(["batch", str(SVS), "--model", "path-lung-tissue", "--out", str(out), "--processes", "2",
              "--tiles-per-task", "8", "--heatmap-format", "npz"], check_rc=0)
    assert "2 worker processes" in p.stderr, p.stderr
    (row,) = _rows(out)
    ref, ref_out = analyzed_slide
    _check_slide_equal(row, ref, ref_out, parts=4, workers=2)
    assert row["worker"].rsplit(":", 1)[1] != str(os.getpid())


def test_a_slide_whose_tiles_cannot_be_decoded_is_one_failed_row_when_spread(tmp_path):
    """A slide whose tissue is found (a lower level) but whose tile level is damaged half-way:
    the parts that meet the damage fail, and the slide is one failed row with the reason."""
    import tifffile

    from imaging_assist.models.registry import Registry
    from imaging_assist.slides.analysis import plan_slide
    from imaging_assist.slides.synth import make_levels, tissue_phantom, write_pyramid_tiff

    rgb, _, _ = tissue_phantom(2400, 3200, seed=1)
    good = write_pyramid_tiff(tmp_path / "phantom.tif", make_levels(rgb, 256), tile=256, mpp=0.35,
                              compression="jpeg")
    with tifffile.TiffFile(good) as t:  # level 1: 0.7 µm/px, the model's tiles
        tiles = list(zip(t.pages[1].dataoffsets, t.pages[1].databytecounts))
    b = bytearray(Path(good).read_bytes())
    for o, c in tiles[len(tiles) // 2:]:
        b[o + c // 3:o + c // 3 + 64] = b"\xff\x0e" * 32
    src = tmp_path / "src"
    src.mkdir()
    (src / "damaged.tif").write_bytes(bytes(b))
    sp = plan_slide(src / "damaged.tif", Registry().get("path-lung-tissue").card)
    assert sp.plan.level == 1 and len(sp.plan) > 4  # planning works: the damage is in the tiles
    out = tmp_path / "out"
    p = _run(["batch", str(src), "--model", "path-lung-tissue", "--out", str(out), "--processes", "2",
              "--tiles-per-task", "2"], check_rc=1)
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert "Traceback" not in p.stderr and len(errors) == 1, p.stderr
    assert "damaged.tif: cannot decode level 1" in errors[0]
    (row,) = _rows(out)
    assert row["status"] == "failed" and "cannot decode level 1" in row["error"]


def test_schedule_spreads_a_slide_and_a_failed_part_fails_its_row():
    """The driver side of a spread slide: items in chunks, the slide's parts ahead of further
    items, finish once every part is back; a part that failed makes the slide one failed row."""
    from types import SimpleNamespace as NS

    from imaging_assist.batch.engines import Schedule
    from imaging_assist.slides.tiling import TilePlan

    def plan(n):
        return TilePlan((100, 100), 10, (1.0, 1.0), 0, (1.0, 1.0), (0.0, 0.0), (1, n),
                        np.stack([np.zeros(n, np.int32), np.arange(n, dtype=np.int32)], 1),
                        np.ones(n, np.float32), None)

    img = [(NS(kind="image", n=i), ["m"]) for i in range(3)]
    slide = (NS(kind="slide"), ["m"])
    for fail in (False, True):
        sched = Schedule(img[:2] + [slide] + img[2:], chunk=4, tiles_per_task=4)
        t = sched.next_task()
        assert t[0] == "units" and [u[0].n for u in t[1][0]] == [0, 1]  # a slide ends a chunk
        t_plan = sched.next_task()
        assert t_plan[0] == "plan"
        assert sched.done(t_plan, ({"status": None}, NS(plan=plan(10)), 0.5)) == []
        parts = [sched.next_task() for _ in range(3)]  # ahead of the last image, in plan order
        assert [(p[0], p[1][3], len(p[1][2])) for p in parts] == [("tiles", 0, 3), ("tiles", 3, 3), ("tiles", 6, 4)]
        assert parts[1][1][2].cells[:, 1].tolist() == [3, 4, 5]
        t = sched.next_task()
        assert t[0] == "units" and [u[0].n for u in t[1][0]] == [2] and sched.next_task() is None
        assert sched.done(parts[2], "cannot read a tile" if fail else NS(start=6)) == []
        assert sched.done(parts[0], NS(start=0)) == []
        rows = sched.done(parts[1], NS(start=3))
        if fail:
            assert rows == [{"status": "failed", "error": "cannot read a tile", "run_s": rows[0]["run_s"]}]
            assert sched.next_task() is None
        else:
            assert rows == []
            fin = sched.next_task()
            assert fin[0] == "finish" and [p.start for p in fin[1][3]] == [6, 0, 3]
            assert sched.done(fin, {"status": "ok"}) == [{"status": "ok"}]
    # parts: at most tiles_per_task, a multiple of the workers, even sizes
    assert Schedule([], 1, 256, workers=2).parts(740) == [(0, 185), (185, 370), (370, 555), (555, 740)]
    assert Schedule([], 1, 8, workers=2).parts(23) == [(0, 5), (5, 11), (11, 17), (17, 23)]
    assert Schedule([], 1, 256, workers=4).parts(3) == [(0, 1), (1, 2), (2, 3)]
    assert Schedule([], 1, 256, workers=3).parts(0) == [(0, 0)]
    # a slide that cannot be read is its failed row at once
    sched = Schedule([slide], chunk=4, tiles_per_task=4)
    t = sched.next_task()
    assert sched.done(t, ({"status": "failed"}, None, 0.1)) == [{"status": "failed"}] and sched.next_task() is None


def test_out_inside_a_source_and_unknown_model_are_one_line_errors(inputs, tmp_path):
    p = _run(["batch", str(inputs), "--model", "cxr-pneumonia", "--out", str(inputs / "o")], check_rc=2)
    assert p.stderr.startswith("error: --out") and len(p.stderr.strip().splitlines()) == 1
    assert not (inputs / "o").exists()  # refused before it was created: nothing left among the inputs
    p = _run(["batch", str(inputs), "--model", "no-such-model", "--out", str(tmp_path / "o")], check_rc=2)
    assert p.stderr.startswith("error:") and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("processes", ["1", "2"])
def test_ctrl_c_leaves_a_consistent_table_and_the_same_command_resumes(tmp_path, processes):
    src = tmp_path / "films"
    src.mkdir()
    films = _films(40)
    for f in films:
        shutil.copy(f, src / f.name)
    out = tmp_path / "out"
    args = ["batch", str(src), "--model", "cxr-pneumonia", "--explain", "gradcam", "--no-faithfulness",
            "--out", str(out), "--processes", processes]
    e = dict(os.environ)
    e.pop("RAY_ADDRESS", None)
    from imaging_assist.privacy import audit

    trail_before = len(audit.read_entries()) if audit.log_path().exists() else 0
    proc = subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e,
                            cwd=ROOT)
    db_path = out / "batch.sqlite"
    deadline = time.time() + 300
    n = 0
    while time.time() < deadline and proc.poll() is None:
        if db_path.exists():
            try:
                # read-only, never waiting on a lock: the poll must not sleep through the run
                db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=0.05)
                n = db.execute("SELECT count(*) FROM results").fetchone()[0]
                db.close()
            except sqlite3.OperationalError:
                n = 0
            if n >= 2:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the batch ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    so, se = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, se)
    assert "Traceback" not in se and "resume" in se
    db = sqlite3.connect(str(db_path))
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    state = db.execute("SELECT state FROM runs").fetchall()
    db.close()
    assert state == [("interrupted",)]
    rows = _rows(out)
    assert 2 <= len(rows) < len(films)
    for r in rows:  # every committed row is complete: its files exist
        assert r["status"] == "ok" and Path(r["results_json"]).is_file()
        assert json.loads(r["heatmaps"]) and all(Path(h).is_file() for h in json.loads(r["heatmaps"]))
    # every model run that wrote its results before the stop is in the audit trail, also those
    # of a worker's chunk cut short (held for one grouped append, flushed on SIGTERM)
    runs = [x for x in audit.read_entries()[trail_before:]
            if x and x["event"] == "model.run" and x["fields"].get("model") == "cxr-pneumonia"]
    written = list((out / "cxr-pneumonia").glob("*/results.json"))
    assert len(runs) >= len(written) >= len(rows), (len(runs), len(written), len(rows))
    assert audit.verify()[0]
    p = _run(args + ["--json"], check_rc=0)
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["resumed"] == len(rows) and res["ok"] == len(films) - len(rows), res
    final = _rows(out)
    assert len(final) == len(films) and {r["status"] for r in final} == {"ok"}


def test_engine_ray_without_ray_is_one_line(monkeypatch, inputs, tmp_path, capsys):
    from imaging_assist.cli.main import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    rc = main(["batch", str(inputs), "--model", "cxr-pneumonia", "--engine", "ray", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "pip install" in err[0] and "--engine local" in err[0]


# =========================================================================== Ray
def _load_ray_local():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_ray_local", ROOT / "scripts" / "_ray_local.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_ray_local = _load_ray_local()  # start and stop only our own Ray (scripts/_ray_local.py)


def _our_pids(tag: str) -> set[int]:
    """Processes of this test's Ray cluster."""
    return _ray_local.pids_of(tag)


def _stop(tag: str) -> None:
    """Stop only our cluster (never `ray stop`: it would stop every Ray on this machine)."""
    _ray_local.stop(tag)


# The second node on the same machine keeps to 127.0.0.1 too: `ray start` turns
# --node-ip-address 127.0.0.1 into the machine's address (resolve_ip_for_localhost) on a
# worker node; the test keeps the whole cluster on loopback by not resolving it.
_WORKER_START = ("import sys, ray._private.services as s; s.resolve_ip_for_localhost = lambda h: h; "
                 "from ray.scripts.scripts import main; sys.argv = ['ray'] + sys.argv[1:]; main()")


@pytest.fixture(scope="module")
def ray_cluster():
    """A two-node Ray cluster on 127.0.0.1 (1 CPU, 1 GB memory, 100 MB object store each)."""
    tmp = tempfile.mkdtemp(prefix="iab-", dir="/tmp")  # short: Ray's socket paths must fit
    common = ["--num-cpus", "1", "--memory", str(1 << 30), "--object-store-memory", str(100 << 20)]
    try:
        address, auth, env = _ray_local.start_head(tmp, common)
        node = subprocess.run([sys.executable, "-c", _WORKER_START, "start", "--address", address,
                               "--node-ip-address", "127.0.0.1", "--temp-dir", tmp, "--disable-usage-stats"]
                              + common, env=env, capture_output=True, text=True, timeout=180)
        assert node.returncode == 0, node.stderr[-2000:]
        yield address, tmp, auth
    finally:
        _stop(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def _listening(pids: set[int]) -> list[str]:
    import psutil

    out = []
    for c in psutil.net_connections(kind="inet"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            out.append(c.laddr.ip)
    return out


def test_ray_cluster_two_nodes_by_address_and_ray_address_equals_analyze(ray_cluster, inputs, analyzed,
                                                                        analyzed_slide, tmp_path):
    address, tag, auth = ray_cluster
    ips = _listening(_our_pids(tag))
    assert ips and all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for ip in ips), ips
    out = tmp_path / "by_address"
    p = _run_sub(["batch", str(inputs), "--model", "cxr-pneumonia", "--model", "cxr-lung-seg", "--out", str(out),
                  "--engine", "ray", "--address", address, "--chunk", "2"], auth, check_rc=1)
    assert "ray: 2 node(s), 2 CPU(s)" in p.stderr, p.stderr  # the cluster, not a Ray of its own
    rows = _rows(out)
    for m, (ref, aout) in analyzed.items():
        _check_equal(rows, ref, m, aout)
    _check_failures(rows)
    workers = {r["worker"] for r in rows if r["status"] == "ok"}
    assert len(workers) == 2, workers  # one model actor on each node
    # RAY_ADDRESS names the cluster just as well
    out2 = tmp_path / "by_env"
    p = _run_sub(["batch", str(inputs), "--model", "cxr-pneumonia", "--out", str(out2), "--engine", "ray",
                  "--chunk", "4"], dict(auth, RAY_ADDRESS=address), check_rc=1)
    assert "ray: 2 node(s), 2 CPU(s)" in p.stderr, p.stderr
    ref, aout = analyzed["cxr-pneumonia"]
    _check_equal(_rows(out2), ref, "cxr-pneumonia", aout)
    # one slide's tiles in four parts on the actors of both nodes
    out3 = tmp_path / "slide"
    _run_sub(["batch", str(SVS), "--model", "path-lung-tissue", "--out", str(out3), "--engine", "ray",
              "--address", address, "--tiles-per-task", "8", "--heatmap-format", "npz"], auth, check_rc=0)
    (row,) = _rows(out3)
    ref, ref_out = analyzed_slide
    _check_slide_equal(row, ref, ref_out, parts=4, workers=2)


def test_ray_in_process_listens_on_loopback_only_and_stops(tmp_path):
    """Ray started by the command: loopback only, usage statistics off, engines.START_CONFIG in
    its system config; no dashboard head process (engines._without_dashboard_head); stop_ray
    kills the autoscaler monitor before ray.shutdown (which would otherwise wait a second for
    it: see engines.stop_ray), and leaves no process and no temporary folder behind."""
    code = ("import json, os, psutil\n"
            "from imaging_assist.batch.engines import init_ray, stop_ray\n"
            "_, tmp = init_ray(None)\n"
            "import ray\n"
            "me = psutil.Process()\n"
            "pids = {me.pid} | {c.pid for c in me.children(recursive=True)}\n"
            "ips = sorted({c.laddr.ip for c in psutil.net_connections('inet') "
            "if c.status == psutil.CONN_LISTEN and c.pid in pids})\n"
            "node = ray.nodes()[0]['NodeManagerAddress']\n"
            "cfg = ray._private.state.state.get_system_config()\n"
            "from imaging_assist.batch.engines import START_CONFIG\n"
            "cfg_ok = all(cfg.get(k) == v for k, v in START_CONFIG.items())\n"
            "from ray._private import worker\n"
            "monitor = worker._global_node.all_processes['monitor'][0].process\n"
            "dash = ['dashboard' in worker._global_node.all_processes] + [' '.join(c.cmdline()) for c in "
            "me.children(recursive=True) if 'dashboard.py' in ' '.join(c.cmdline())]\n"
            "from ray._private.node import Node\n"
            "restored = Node.start_api_server.__name__ == 'start_api_server'\n"
            "seen = []\n"
            "down = ray.shutdown\n"
            "ray.shutdown = lambda: (seen.append(monitor.poll()), down())\n"
            "stop_ray(tmp)\n"
            "left = [c.pid for c in me.children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]\n"
            "print(json.dumps({'ips': ips, 'node': node, 'usage': os.environ.get('RAY_USAGE_STATS_ENABLED'), "
            "'monitor_at_shutdown': seen, 'left': left, 'tmp_left': os.path.exists(tmp), 'cfg_ok': cfg_ok, "
            "'dash': dash, 'restored': restored, 'auth': os.environ.get('RAY_AUTH_MODE')}))\n")
    e = dict(os.environ)
    e.pop("RAY_ADDRESS", None)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["node"] == "127.0.0.1" and r["usage"] == "0"
    # token authentication on (Ray's default for a new local cluster); Ray's warning line about
    # it stays out of the command's output
    assert r["auth"] == "token" and "Token authentication" not in p.stderr + p.stdout, p.stderr[-2000:]
    assert r["ips"] and all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip in r["ips"]), r
    assert r["cfg_ok"], r  # engines.START_CONFIG reached the cluster's system config
    assert r["dash"] == [False] and r["restored"], r  # no dashboard head; Ray's class as it was
    assert r["monitor_at_shutdown"] == [-9], r  # killed before ray.shutdown began
    assert not r["left"] and not r["tmp_left"], r
    assert "Terminated with signal" not in p.stderr  # the monitor's SIGTERM report never ran


def test_dicom_and_report_per_item(tmp_path):
    """--dicom and --report: each item folder gets analyze's report.pdf and DICOM objects,
    and the row lists them."""
    out = tmp_path / "out"
    _run(["batch", str(need(DICOM / "cr_chest_monochrome1_fuji")), "--model", "cxr-lung-seg", "--out", str(out),
          "--dicom", "--report"], check_rc=0)
    (r,) = _rows(out)
    assert r["status"] == "ok" and Path(r["report"]).is_file()
    assert Path(r["report"]).read_bytes()[:5] == b"%PDF-"
    dcm = json.loads(r["dicom"])
    assert any(p.endswith("_SEG.dcm") for p in dcm) and any(p.endswith("_SR.dcm") for p in dcm)
    assert all(Path(p).is_file() for p in dcm)


def test_zip_source_and_svs_slide(tmp_path):
    """A zip of a DICOM study is read through the scanner (hash over the zip member), and a
    whole-slide image goes through analyze_slide: one row each."""
    import zipfile

    z = tmp_path / "study.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in need(DICOM / "cr_chest_monochrome1_fuji").iterdir():
            zf.write(f, f"study/{f.name}")
    slide = need(SHARED / "pathology" / "wsi_aperio_cmu1_small_region" / "CMU-1-Small-Region.svs")
    out = tmp_path / "out"
    _run(["batch", str(z), str(slide), "--model", "cxr-lung-seg", "--model", "path-lung-tissue", "--out", str(out)],
         check_rc=0)
    rows = {r["kind"]: r for r in _rows(out)}
    assert rows["series"]["status"] == "ok" and rows["series"]["model"] == "cxr-lung-seg"
    assert np.asarray(json.loads(rows["series"]["areas"])["values"]["right_lung"]) > 0
    s = rows["slide"]
    assert s["status"] == "ok" and s["model"] == "path-lung-tissue"
    assert json.loads(s["areas"])["values"] and all(Path(h).is_file() for h in json.loads(s["heatmaps"]))
