"""Two windows (two app instances, the viewer and a script) saving the annotations of one
study or slide never remove each other's items: a save takes the file's lock, reads the file
again and removes only what this window deleted (session 24 audit)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import imaging_assist
from imaging_assist.annotations import AnnotationStore
from imaging_assist.measure import Measurement
from imaging_assist.slides.annotations import Annotation, load_for_slide, save_for_slide, store_path

ST, SE = "1.2.3.study", "1.2.3.series"
SHAPE = {"shape": [1, 64, 64]}
KEY = "a" * 32


def _kinds(store_root, series=SE):
    items, _ = AnnotationStore(store_root).load(ST, series, shape=(1, 64, 64))
    return sorted(m.kind for m in items)


# ------------------------------------------------------------------ radiology: one series, two windows
def test_two_windows_on_one_series_keep_each_others_items(tmp_path):
    w1, w2 = AnnotationStore(tmp_path), AnnotationStore(tmp_path)
    shown1, _ = w1.load(ST, SE, shape=(1, 64, 64))
    shown2, _ = w2.load(ST, SE, shape=(1, 64, 64))
    shown1.append(Measurement("ruler", [(1, 1), (20, 20)]))
    w1.save(ST, SE, shown1, extra=SHAPE)
    shown2.append(Measurement("ellipse", [(30, 30), (40, 40)]))
    path, warn = w2.save(ST, SE, shown2, extra=SHAPE)
    assert _kinds(tmp_path) == ["ellipse", "ruler"]  # the ruler of window 1 is still there
    assert len(warn) == 1 and "another window" in warn[0] and "\n" not in warn[0]
    assert w2.save(ST, SE, shown2, extra=SHAPE)[1] == []  # said once, not on every save
    # each window removes only what it deleted
    shown2.clear()
    w2.save(ST, SE, shown2, extra=SHAPE)
    assert _kinds(tmp_path) == ["ruler"]
    shown1.clear()
    w1.save(ST, SE, shown1, extra=SHAPE)
    assert json.loads(path.read_text())["series"] == {}
    # the ids in the file are stable ones, not the per-process Measurement.id counter
    shown1.append(Measurement("ruler", [(2, 2), (9, 9)]))
    w1.save(ST, SE, shown1, extra=SHAPE)
    (item,) = json.loads(path.read_text())["series"][SE]["items"]
    assert isinstance(item["uid"], str) and len(item["uid"]) >= 16


def test_what_another_window_deleted_stays_deleted_and_the_window_sees_it_on_reading_again(tmp_path):
    w1, w2 = AnnotationStore(tmp_path), AnnotationStore(tmp_path)
    w1.save(ST, SE, [Measurement("ruler", [(1, 1), (20, 20)])], extra=SHAPE)
    shown2, _ = w2.load(ST, SE, shape=(1, 64, 64))
    # window 1 deletes its ruler (it had it: a real deletion) and draws an angle
    w1.save(ST, SE, [Measurement("angle", [(1, 1), (5, 5), (9, 1)])], extra=SHAPE)
    shown2.append(Measurement("text", [(5, 5)], text="note"))
    _, warn = w2.save(ST, SE, shown2, extra=SHAPE)  # still shows the ruler, not changed there
    assert len(warn) == 1 and warn[0].startswith("2 annotation(s)") and "another window" in warn[0]
    again, _ = w2.load(ST, SE, shape=(1, 64, 64))
    assert sorted(m.kind for m in again) == ["angle", "text"]
    w2.save(ST, SE, [m for m in again if m.kind != "angle"], extra=SHAPE)  # window 2 has it now: may delete it
    assert _kinds(tmp_path) == ["text"]


def test_an_item_moved_in_another_window_is_not_moved_back(tmp_path):
    w1, w2 = AnnotationStore(tmp_path), AnnotationStore(tmp_path)
    w1.save(ST, SE, [Measurement("ruler", [(1, 1), (20, 20)])], extra=SHAPE)
    (r1,), _ = w1.load(ST, SE, shape=(1, 64, 64))
    (r2,), _ = w2.load(ST, SE, shape=(1, 64, 64))
    r2.points = [(5.0, 5.0), (30.0, 30.0)]  # moved in window 2
    w2.save(ST, SE, [r2], extra=SHAPE)
    _, warn = w1.save(ST, SE, [r1, Measurement("ellipse", [(3, 3), (8, 8)])], extra=SHAPE)  # w1 draws
    assert len(warn) == 1 and "another window" in warn[0]
    w1.save(ST, SE, [r1, Measurement("ellipse", [(3, 3), (8, 8)])], extra=SHAPE)  # and again
    items, _ = AnnotationStore(tmp_path).load(ST, SE, shape=(1, 64, 64))
    assert sorted((m.kind, m.points[0]) for m in items) == [("ellipse", (3.0, 3.0)), ("ruler", (5.0, 5.0))]
    r1.points = [(7.0, 7.0), (9.0, 9.0)]  # window 1 moves it itself: its move is saved
    w1.save(ST, SE, [r1], extra=SHAPE)
    ruler = [m for m in AnnotationStore(tmp_path).load(ST, SE, shape=(1, 64, 64))[0] if m.kind == "ruler"]
    assert [m.points[0] for m in ruler] == [(7.0, 7.0)]


def test_items_of_an_older_file_without_uids_are_one_item_in_every_window(tmp_path):
    st = AnnotationStore(tmp_path)
    path, _ = st.save(ST, SE, [Measurement("ruler", [(1, 1), (20, 20)])], extra=SHAPE)
    doc = json.loads(path.read_text())
    for d in doc["series"][SE]["items"]:
        d.pop("uid")  # as an older version wrote it
    path.write_text(json.dumps(doc))
    w1, w2 = AnnotationStore(tmp_path), AnnotationStore(tmp_path)
    shown1, _ = w1.load(ST, SE, shape=(1, 64, 64))
    shown2, _ = w2.load(ST, SE, shape=(1, 64, 64))
    w2.save(ST, SE, shown2 + [Measurement("ellipse", [(3, 3), (8, 8)])], extra=SHAPE)
    note = Measurement("text", [(4, 4)], text="n")
    w1.save(ST, SE, shown1 + [note], extra=SHAPE)
    assert _kinds(tmp_path) == ["ellipse", "ruler", "text"]  # one ruler, not two
    w1.save(ST, SE, [note], extra=SHAPE)  # window 1 deletes the ruler
    assert _kinds(tmp_path) == ["ellipse", "text"]


# ------------------------------------------------------------------ processes at the same time
RACE = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    go = Path(sys.argv[3])
    while not go.exists():
        time.sleep(0.001)
    if sys.argv[1] == "study":
        from imaging_assist.annotations import AnnotationStore
        from imaging_assist.measure import Measurement
        store, items = AnnotationStore(), []
        for i in range(int(sys.argv[4])):
            items.append(Measurement("ruler", [(i, 0), (i, 10)]))
            store.save("1.2.3.study", sys.argv[2], items, extra={"shape": [1, 64, 64]})
    else:
        from imaging_assist.slides.annotations import Annotation, load_for_slide, save_for_slide
        items, _ = load_for_slide(sys.argv[5])
        for i in range(int(sys.argv[4])):
            items.append(Annotation("ruler", [(i, 0), (i, 10)], name=sys.argv[2]))
            save_for_slide(sys.argv[5], items)
""")


def _race(tmp_path, what, n=40, procs=3):
    env = dict(os.environ, IMAGING_ASSIST_DATA_DIR=str(tmp_path / "data"))
    # the tree this test imported (the child must not pick another one up from its folder)
    here = str(Path(imaging_assist.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([here] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    go = tmp_path / "go"
    kids = [subprocess.Popen([sys.executable, "-c", RACE, what, f"s{k}", str(go), str(n), KEY],
                             env=env, cwd=tmp_path) for k in range(procs)]
    import time
    time.sleep(3.0)  # every child imported and waiting
    go.touch()
    assert [p.wait(120) for p in kids] == [0] * procs
    return env


def test_three_processes_saving_one_study_lose_nothing(tmp_path, monkeypatch):
    env = _race(tmp_path, "study")
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", env["IMAGING_ASSIST_DATA_DIR"])
    s = AnnotationStore()
    doc = json.loads(s.path_for("1.2.3.study").read_text())
    assert {k: len(v["items"]) for k, v in doc["series"].items()} == {"s0": 40, "s1": 40, "s2": 40}


def test_three_processes_saving_one_slide_lose_nothing(tmp_path, monkeypatch):
    env = _race(tmp_path, "slide")
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", env["IMAGING_ASSIST_DATA_DIR"])
    anns, _ = load_for_slide(KEY)
    assert {n: sum(a.name == n for a in anns) for n in ("s0", "s1", "s2")} == {"s0": 40, "s1": 40, "s2": 40}


# ------------------------------------------------------------------ slides: two windows
def test_two_windows_on_one_slide_keep_each_others_annotations(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path))
    win1, _ = load_for_slide(KEY)
    win2, _ = load_for_slide(KEY)
    win1.append(Annotation("polygon", [(0, 0), (100, 0), (100, 100)], name="Tumor"))
    save_for_slide(KEY, win1)
    win2.append(Annotation("polygon", [(500, 500), (600, 500), (600, 600)], name="Stroma"))
    save_for_slide(KEY, win2)
    assert sorted(a.name for a in load_for_slide(KEY)[0]) == ["Stroma", "Tumor"]
    win2.clear()  # window 2 deletes its only annotation: window 1's stays, and so does the file
    save_for_slide(KEY, win2)
    assert [a.name for a in load_for_slide(KEY)[0]] == ["Tumor"] and store_path(KEY).exists()
    # window 1 edits its own: saved, nothing of window 2's comes back
    win1[0].label = "edited"
    save_for_slide(KEY, win1)
    assert [(a.name, a.label) for a in load_for_slide(KEY)[0]] == [("Tumor", "edited")]
    win1.clear()  # and deletes it: nothing is left, the file goes
    save_for_slide(KEY, win1)
    assert not store_path(KEY).exists()


def test_a_slide_annotation_moved_in_another_window_is_not_moved_back(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path))
    save_for_slide(KEY, [Annotation("ruler", [(0, 0), (10, 0)], name="Region")])
    win1, _ = load_for_slide(KEY)
    win2, _ = load_for_slide(KEY)
    win2[0].points = [(50.0, 50.0), (90.0, 50.0)]
    save_for_slide(KEY, win2)
    win1.append(Annotation("points", [(3, 3)], name="Tumor"))
    save_for_slide(KEY, win1)
    got = {a.kind: a.points for a in load_for_slide(KEY)[0]}
    assert got == {"ruler": [(50.0, 50.0), (90.0, 50.0)], "points": [(3.0, 3.0)]}


def test_an_unreadable_slide_file_is_not_written_over(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path))
    p = store_path(KEY)
    p.parent.mkdir(parents=True)
    p.write_text("{not json")
    try:
        save_for_slide(KEY, [Annotation("ruler", [(0, 0), (10, 0)])])
        raise AssertionError("saved over an unreadable file")
    except OSError as e:
        assert "not written over" in str(e) and "\n" not in str(e)
    assert p.read_text() == "{not json"


# ------------------------------------------------------------------ the viewer keeps one store
def test_the_viewer_keeps_one_store_so_it_knows_what_it_deleted(tmp_path, monkeypatch):
    from imaging_assist_ui.radiology.annotation_tools import AnnotationController

    monkeypatch.setattr(AnnotationController, "store", None)
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path))
    st = AnnotationController.the_store()
    assert AnnotationController.the_store() is st and st.root == tmp_path / "annotations"
    ruler = Measurement("ruler", [(1, 1), (20, 20)])
    AnnotationController.the_store().save(ST, SE, [ruler], extra=SHAPE)
    AnnotationController.the_store().save(ST, SE, [], extra=SHAPE)  # deleted in the viewer
    assert _kinds(tmp_path / "annotations") == []
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "other"))
    assert AnnotationController.the_store().root == tmp_path / "other" / "annotations"  # follows the folder
