"""Two processes sharing the user's state (two windows, or the GUI and the CLI) lose none of each
other's changes: the trust store, the model versions state, the `models add` list, remembered
positions, the recent list, PACS nodes, hanging protocols and site thresholds are each read,
changed and written under the file's lock, through a temporary file of its own (session 24
audit, a-concurrency).

The hammer tests start real processes (``python -P``, this test's ``sys.path`` as PYTHONPATH:
the same tree as the test) that wait on a start file, so that their loops overlap."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
PNEUMONIA = ROOT / "weights" / "cxr-pneumonia"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """The user's config and data folders under tmp_path, here and in the processes started."""
    cfg, data = tmp_path / "config", tmp_path / "data"
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(cfg))
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(data))
    return tmp_path


def _hammer(tmp_path: Path, scripts: list[str], timeout: float = 60.0) -> list[str]:
    """Run each script in its own process, all released at once (each calls ``go()`` after its
    imports); their stdout (each must exit 0)."""
    go = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    prelude = textwrap.dedent(f"""
        import os, sys, time
        def go():  # called by the script once it imported what it needs
            open({str(tmp_path)!r} + "/ready-" + str(os.getpid()), "w").close()
            while not os.path.exists({str(go)!r}):
                time.sleep(0.002)
    """)
    procs = [subprocess.Popen([sys.executable, "-P", "-c", prelude + textwrap.dedent(s)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in scripts]
    end = time.monotonic() + timeout
    while len(list(tmp_path.glob("ready-*"))) < len(procs) and time.monotonic() < end:
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.01)
    go.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=max(1.0, end - time.monotonic()))
        assert p.returncode == 0, err[-2000:]
        outs.append(out)
    return outs


def _bundles(tmp_path: Path, tags: str, n: int) -> Path:
    """n model folders per tag (``A0``...), the shipped pneumonia model's files linked, each
    with its own card (another name: another hash)."""
    base = tmp_path / "bundles"
    card = json.loads((PNEUMONIA / "model.json").read_text())
    for tag in tags:
        for i in range(n):
            d = base / f"{tag}{i}"
            d.mkdir(parents=True)
            for f in ("model.safetensors", "ood.safetensors", "metrics.json"):
                os.link(PNEUMONIA / f, d / f)  # read only, never written
            (d / "model.json").write_text(json.dumps(dict(card, name=f"{card['name']} copy {tag}{i}")))
    return base


# ------------------------------------------------------------------ the trust store
def test_concurrent_trust_and_untrust_lose_no_trust_and_bring_back_no_withdrawn_one(home):
    from imaging_assist.models import trust

    n = 12
    base = _bundles(home, "AB", n)
    a = f"""
        from imaging_assist.models import trust
        go()
        for i in range(n):
            trust.trust(f"{base}/A{{i}}")
    """
    b = f"""
        from imaging_assist.models import trust
        go()
        done = 0
        for i in range(n):
            trust.trust(f"{base}/B{{i}}")
            done += trust.untrust(f"{base}/B{{i}}")
        print(done)
    """
    outs = _hammer(home, [f"n = {n}\n" + textwrap.dedent(s) for s in (a, b)])
    assert outs[1].strip() == str(n)  # every untrust said it forgot the bundle...
    folders = sorted(Path(r["folder"]).name for r in trust.trusted_bundles())
    # ...and none of them is trusted again; no trust of A was lost
    assert folders == sorted(f"A{i}" for i in range(n))
    assert all(trust.is_trusted(base / f"A{i}") for i in range(n))
    assert not any(trust.is_trusted(base / f"B{i}") for i in range(n))
    assert trust.trust_file().stat().st_mode & 0o777 == 0o600


# ------------------------------------------------------------------ model versions
def _versions_state(home: Path, models=("mA", "mB")) -> None:
    from imaging_assist.monitoring import versions

    st = {}
    for mid in models:
        c = {}
        for v in ("1.0.0+site.1", "1.0.0+site.2"):
            f = home / "cands" / mid / v
            f.mkdir(parents=True)
            (f / "model.json").write_text(json.dumps({"id": mid, "version": v}))
            (f / "metrics.json").write_text(json.dumps({"non_inferiority": {"metric": "AUC", "comparisons": {}}}))
            c[v] = {"folder": str(f), "base_version": "1.0.0"}
        st[mid] = {"candidates": c, "active": None, "history": []}
    versions.save_state(st)


def test_concurrent_promotions_and_rollbacks_are_all_recorded_without_error(home):
    from imaging_assist.monitoring import versions

    _versions_state(home)
    n = 15
    common = f"""
        import collections
        from imaging_assist.monitoring import versions
        n, errs = {n}, collections.Counter()
        go()
    """
    a = common + """
        for i in range(n):
            try:
                versions.promote("mA", "1.0.0+site.%d" % (1 + i % 2), force_reason="test")
            except Exception as e:
                errs[f"{type(e).__name__}: {e}"] += 1
        print(dict(errs))
    """
    b = common + """
        for i in range(n):
            try:
                versions.promote("mB", "1.0.0+site.%d" % (1 + i % 2), force_reason="test")
                versions.rollback("mB")
            except Exception as e:
                errs[f"{type(e).__name__}: {e}"] += 1
        print(dict(errs))
    """
    outs = _hammer(home, [a, b])
    assert [o.strip() for o in outs] == ["{}", "{}"]  # no FileNotFoundError, no UserError
    st = versions.load_state()
    acts = {mid: [h["action"] for h in st[mid]["history"]] for mid in st}
    assert acts["mA"].count("promote") == n  # no promotion lost...
    assert acts["mB"].count("promote") == n and acts["mB"].count("rollback") == n  # ...nor rollback
    assert st["mA"]["active"] == "1.0.0+site.%d" % (1 + (n - 1) % 2)
    assert st["mB"]["active"] is None and st["mB"]["stack"] == []
    assert not list((home / "config").glob("*.tmp")) and not list((home / "config").glob(".model_versions-*"))


def test_a_reader_never_sees_a_torn_model_versions_file(home):
    """Three writers of the state file, and the registry's reader (promoted_sources) beside them:
    the reader sees the old file or the new one, never half of one (the old shared temporary
    file was renamed into place while the other writer was still writing it)."""
    from imaging_assist.monitoring import versions

    _versions_state(home)
    st = versions.load_state()
    for mid in st:  # ~50 kB: each write takes a little while
        st[mid]["history"] += [{"time_utc": "2026-01-01T00:00:00", "action": "candidate",
                                "version": "1.0.0+site.1", "reason": "x" * 100}] * 200
    versions.save_state(st)
    writer = f"""
        import collections
        from imaging_assist.monitoring import versions
        errs = collections.Counter()
        go()
        for i in range(15):
            try:
                versions.promote(MID, "1.0.0+site.%d" % (1 + i % 2), force_reason="test")
            except Exception as e:
                errs[type(e).__name__] += 1
        open(f"{home}/done-{{TAG}}", "w").close()
        print(dict(errs))
    """
    reader = f"""
        import collections, json
        from imaging_assist.monitoring import versions
        bad, reads = collections.Counter(), 0
        go()
        end = time.time() + 8
        while time.time() < end and len([f for f in os.listdir("{home}") if f.startswith("done-")]) < 3:
            try:  # the file as it is, as fast as it goes
                json.loads(versions.state_path().read_text(encoding="utf-8"))
            except ValueError as e:
                bad[f"torn: {{e}}"[:60]] += 1
            if reads % 10 == 0:  # and as the registry reads it
                good, refused = versions.promoted_sources()
                for k, v in refused.items():
                    bad[(k, v[:100])] += 1
            reads += 1
        print(reads, dict(bad))
    """
    outs = _hammer(home, [f"MID, TAG = {m!r}, {i}\n" + textwrap.dedent(writer)
                          for i, m in enumerate(("mA", "mB", "mA"))] + [reader])
    # the writers: no temporary file renamed away under them (FileNotFoundError), no torn read
    assert [o.strip() for o in outs[:3]] == ["{}", "{}", "{}"]
    reads, bad = outs[3].strip().split(" ", 1)
    assert int(reads) > 10 and bad == "{}"  # the reader: every read a whole file


# ------------------------------------------------------------------ `models add`
def test_concurrent_models_add_keeps_every_folder(home):
    from imaging_assist.models.registry import Registry, added_hashes

    n = 4
    base = _bundles(home, "AB", n)
    script = f"""
        from imaging_assist.models import bundle_code, trust  # noqa: F401 - imported before the start
        from imaging_assist.models.registry import Registry
        go()
        for i in range({n}):
            Registry().add_folder(f"{base}/{{TAG}}{{i}}")
    """
    _hammer(home, [f"TAG = {t!r}\n" + textwrap.dedent(script) for t in "AB"])
    want = sorted(str(base / f"{t}{i}") for t in "AB" for i in range(n))
    assert sorted(str(f) for f in Registry().added_folders()) == want
    assert sorted(added_hashes()) == want


# ------------------------------------------------------------------ remembered positions
class _Vol:
    def __init__(self, uid, n):
        self.headers, self.n_slices = [{"SeriesInstanceUID": uid}], n


def test_two_windows_keep_each_others_positions_and_the_newer_one_of_a_series(home):
    from imaging_assist.positions import PositionStore

    a, b = PositionStore(), PositionStore()  # both loaded when their window opened
    a.remember(_Vol("1.2.840.1", 100), 57)
    assert a.flush()
    b.remember(_Vol("1.2.840.2", 200), 120)
    assert b.flush()
    c = PositionStore()
    assert c.recall(_Vol("1.2.840.1", 100)) == 57 and c.recall(_Vol("1.2.840.2", 200)) == 120
    # both windows on one series: the position set last wins, whichever window flushes last
    b.remember(_Vol("1.2.840.1", 100), 10)
    time.sleep(0.01)
    a.remember(_Vol("1.2.840.1", 100), 80)
    assert a.flush() and b.flush()
    assert PositionStore().recall(_Vol("1.2.840.1", 100)) == 80
    assert b.recall(_Vol("1.2.840.1", 100)) == 80  # window b now knows it too
    # a series forgotten in one window is not brought back by the file's older entry
    a.forget("1.2.840.2")
    assert a.flush()
    assert PositionStore().recall(_Vol("1.2.840.2", 200)) is None


def test_two_processes_flushing_positions_lose_none(home):
    from imaging_assist.positions import PositionStore

    n = 30
    script = f"""
        from imaging_assist.positions import PositionStore
        class V:
            def __init__(self, uid, n): self.headers = [{{"SeriesInstanceUID": uid}}]; self.n_slices = n
        s = PositionStore()
        go()
        for i in range({n}):
            s.remember(V(f"1.2.{{TAG}}.{{i}}", 100), i)
            assert s.flush(), s.warning
    """
    _hammer(home, [f"TAG = {t}\n" + textwrap.dedent(script) for t in (1, 2)])
    s = PositionStore()
    assert [s.recall(_Vol(f"1.2.{t}.{i}", 100)) for t in (1, 2) for i in range(n)] == [i for _ in (1, 2) for i in range(n)]


# ------------------------------------------------------------------ the recent list (GUI)
_RECENT = """
import sys, time
from PySide6.QtWidgets import QApplication
app = QApplication([])
from imaging_assist_ui.main_window.recent import RecentStudies, WelcomePage
from imaging_assist_ui.app import _settings
s = _settings(); r = RecentStudies(s, WelcomePage())
for line in sys.stdin:
    parts = line.split()
    if parts[0] == "add":
        r.add(parts[1])
        for _ in range(3):
            app.processEvents(); time.sleep(0.02)
    elif parts[0] == "quit":
        s.sync(); print("bye", flush=True); break
    print("|".join(r.paths()), flush=True)
"""


def test_two_windows_adding_recent_studies_keep_both(home):
    ini = home / "recent.ini"
    env = dict(os.environ, IMAGING_ASSIST_SETTINGS=str(ini), QT_QPA_PLATFORM="offscreen",
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    a, b = (subprocess.Popen([sys.executable, "-P", "-c", _RECENT], cwd=home, env=env, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(2))

    def cmd(p, line):
        p.stdin.write(line + "\n")
        p.stdin.flush()
        return p.stdout.readline().strip()

    try:
        assert cmd(a, "noop") == "" and cmd(b, "noop") == ""  # both windows read the (empty) list
        cmd(a, "add /data/a1")
        cmd(b, "add /data/b1")
        assert cmd(a, "add /data/a2") == "/data/a2|/data/b1|/data/a1"  # b1 of the other window kept
        assert cmd(b, "add /data/b2") == "/data/b2|/data/a2|/data/b1|/data/a1"  # and a2 in b
        assert cmd(a, "quit") == "bye" and cmd(b, "quit") == "bye"
    finally:
        for p in (a, b):
            p.stdin.close()
            p.wait(timeout=30)


# ------------------------------------------------------------------ PACS nodes
def test_concurrent_pacs_node_changes_are_all_kept(home):
    from imaging_assist.pacs.nodes import config_path, load_settings

    n = 12
    script = f"""
        from imaging_assist.pacs.nodes import Node, add_node, remove_node
        go()
        for i in range({n}):
            add_node(Node(name=f"{{TAG}}{{i}}", kind="dimse", ae_title="PACS", host="localhost", port=104 + i))
            add_node(Node(name=f"{{TAG}}x{{i}}", kind="dimse", ae_title="PACS", host="localhost", port=104))
            remove_node(f"{{TAG}}x{{i}}")
    """
    _hammer(home, [f"TAG = {t!r}\n" + textwrap.dedent(script) for t in "AB"])
    nodes = load_settings().nodes
    assert sorted(nodes) == sorted(f"{t}{i}" for t in "AB" for i in range(n))
    assert config_path().stat().st_mode & 0o777 == 0o600


def test_our_ae_title_saved_beside_another_process_adding_nodes_loses_none(home):
    """`pacs settings --ae-title` and the PACS window's Save set our AE title / port through
    update_settings, under the same lock: before, they read the settings, and wrote them back
    without the nodes another process added meanwhile."""
    from imaging_assist.pacs.nodes import load_settings

    n = 12
    adder = f"""
        from imaging_assist.pacs.nodes import Node, add_node
        go()
        for i in range({n}):
            add_node(Node(name=f"A{{i}}", kind="dimse", ae_title="PACS", host="localhost", port=104 + i))
    """
    setter = f"""
        from imaging_assist.pacs.nodes import update_settings
        go()
        for i in range({n}):
            update_settings(ae_title=f"US{{i}}", storage_port=11112 + i)
    """
    _hammer(home, [textwrap.dedent(adder), textwrap.dedent(setter)])
    s = load_settings()
    assert sorted(s.nodes) == sorted(f"A{i}" for i in range(n))
    assert (s.ae_title, s.storage_port) == (f"US{n - 1}", 11112 + n - 1)


def test_the_cli_sets_our_ae_title_and_keeps_the_nodes(home, capsys):
    from imaging_assist.cli.main import main
    from imaging_assist.pacs.nodes import Node, add_node, load_settings

    add_node(Node(name="P1", kind="dimse", ae_title="PACS", host="localhost", port=104))
    assert main(["pacs", "settings", "--ae-title", "READER1"]) == 0
    assert "our AE title READER1" in capsys.readouterr().out
    s = load_settings()
    assert s.ae_title == "READER1" and sorted(s.nodes) == ["P1"]
    assert main(["pacs", "settings", "--ae-title", "BAD AE TITLE WAY TOO LONG"]) != 0
    assert load_settings().ae_title == "READER1"


# ------------------------------------------------------------------ hanging protocols
def test_two_windows_saving_hanging_protocols_keep_both(home):
    from imaging_assist.hanging import Protocol, ProtocolStore

    w1, w2 = ProtocolStore(), ProtocolStore()  # both read the (missing) file when opened
    w1.save(Protocol("chest", "CR", "CHEST", "1x2", ["current", "prior"]))
    w2.save(Protocol("ct", "CT", "", "mpr", ["current"]))
    assert sorted(p.modality for p in ProtocolStore().user) == ["CR", "CT"]
    assert w2.remove(("CR", "CHEST"))  # saved by the other window: w2 sees it on reading again
    assert [p.modality for p in ProtocolStore().user] == ["CT"]
    assert not w1.remove(("CR", "CHEST"))
    assert [p.modality for p in ProtocolStore().user] == ["CT"]


# ------------------------------------------------------------------ site thresholds
def test_concurrent_site_thresholds_are_all_kept_and_numbered_apart(home):
    from imaging_assist.models.site import site_file

    n = 15
    script = f"""
        from types import SimpleNamespace
        from imaging_assist.models.site import save_site_threshold
        card = SimpleNamespace(id="m", labels=["pos"], version="1.0.0", weights=[])
        go()
        for i in range({n}):
            save_site_threshold(card, "pos", 0.5, 100 + i, data=TAG)
    """
    _hammer(home, [f"TAG = {t!r}\n" + textwrap.dedent(script) for t in "AB"])
    vs = json.loads(site_file("m").read_text())["versions"]
    assert sorted((v["data"], v["n_studies"]) for v in vs) == sorted((t, 100 + i) for t in "AB" for i in range(n))
    assert sorted(v["version"] for v in vs) == list(range(1, 2 * n + 1))


def test_a_lock_held_elsewhere_is_one_line_of_the_callers_error_never_a_hang(tmp_path):
    from imaging_assist.errors import UserError
    from imaging_assist.userdirs import locked

    f = tmp_path / "state.json"
    holder = subprocess.Popen([sys.executable, "-P", "-c", textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = {[p for p in sys.path if p]!r}
        from imaging_assist.userdirs import locked
        with locked({str(f)!r}):
            print("held", flush=True)
            time.sleep(30)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(UserError, match=r"^cannot write .*state\.json: .*state\.json\.lock is held by another "
                                            r"process for 0 s: try again$"):
            with locked(f, timeout_s=0.3, error=UserError):
                pass
        assert time.monotonic() - t0 < 5
        with pytest.raises(OSError):  # without ``error``: the OSError itself
            with locked(f, timeout_s=0.1):
                pass
    finally:
        holder.kill()
        holder.wait()
    with locked(f, timeout_s=1, error=UserError):  # free again once its holder is gone
        pass


def test_a_site_threshold_whose_file_is_held_is_one_user_error_line(home, monkeypatch):
    """Before: `evaluate --save-site-threshold` said "internal error (OSError: …)"."""
    from types import SimpleNamespace

    from imaging_assist.errors import UserError
    from imaging_assist.models import site
    from imaging_assist.userdirs import locked

    real = site.locked
    monkeypatch.setattr(site, "locked", lambda p, error=None: real(p, timeout_s=0.2, error=error))
    card = SimpleNamespace(id="m", labels=["pos"], version="1.0.0", weights=[])
    with locked(site.site_file("m")):  # another open file: flock conflicts within one process too
        with pytest.raises(UserError, match=r"^cannot write .*: .* is held by another process"):
            site.save_site_threshold(card, "pos", 0.5, 100)
    assert site.save_site_threshold(card, "pos", 0.5, 100)[1]["version"] == 1


def test_removing_a_protocol_whose_file_is_held_is_said_in_the_dialog(home, qapp, monkeypatch):
    from imaging_assist.hanging import Protocol, ProtocolStore
    from imaging_assist_ui.radiology.hanging_protocols import ProtocolsDialog

    store = ProtocolStore()
    store.save(Protocol("chest", "CR", "CHEST", "1x2", ["current", "prior"]))
    dlg = ProtocolsDialog(store)
    dlg.list.setCurrentRow(0)

    def held(key):
        raise OSError(11, "protocols.json.lock is held by another process for 10 s: try again")

    monkeypatch.setattr(store, "remove", held)
    assert dlg.remove_selected() is False  # before: the OSError escaped the button's slot
    assert dlg.note.text() == ("Could not remove the protocol: protocols.json.lock is held by another process "
                               "for 10 s: try again")
    dlg.close()
