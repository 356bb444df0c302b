"""Each item of `imaging-assist analyze` writes its own files, and one item that cannot be done
is one failed item: names that become the same file name ("film 1.png", "film_1.png") no
longer overwrite each other's label maps, and an image that runs out of memory leaves the other
items' results and results.json."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED, need

JSRT = SHARED / "cxr" / "lung_masks_jsrt" / "images"


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    src = sorted(need(JSRT).glob("*.png"))[:2]
    d = tmp_path_factory.mktemp("in")
    shutil.copy(src[0], d / "film 1.png")
    # the second film another size, so a mix-up shows in the written file's shape
    Image.open(src[1]).convert("L").resize((200, 260)).save(d / "film_1.png")
    long = "x" * 90
    shutil.copy(src[0], d / f"{long}_a.png")
    Image.open(src[1]).convert("L").resize((180, 240)).save(d / f"{long}_b.png")
    return d


def test_items_whose_names_become_the_same_file_name_keep_their_own_files(films, tmp_path, capsys):
    from imaging_assist.cli import main

    out = tmp_path / "out"
    assert main(["analyze", str(films), "--model", "cxr-lung-seg", "--out", str(out)]) == 0
    items = json.loads((out / "results.json").read_text())["items"]
    assert len(items) == 4
    maps = [it["label_map"] for it in items]
    assert len(set(m.lower() for m in maps)) == 4, maps
    for it in items:
        lm = np.asarray(Image.open(out / it["label_map"]))
        assert list(lm.shape) == it["shape"][1:3], (it["source"], it["label_map"], lm.shape, it["shape"])
        counts = np.bincount(lm.ravel(), minlength=3)[1:].tolist()
        assert counts == [it["area_px"]["right_lung"], it["area_px"]["left_lung"]], it["source"]


def test_one_item_out_of_memory_is_one_failed_item(films, tmp_path, monkeypatch, capsys):
    from imaging_assist.cli import main
    from imaging_assist.inference import results as R

    real = R.write_item_files

    def write(res, vol, out_dir, stem, *a, **k):
        if "film_1" == stem:
            raise MemoryError("Unable to allocate 1003. MiB for an array with shape (10240, 12840)")
        return real(res, vol, out_dir, stem, *a, **k)

    monkeypatch.setattr(R, "write_item_files", write)
    out = tmp_path / "out"
    assert main(["analyze", str(films), "--model", "cxr-lung-seg", "--out", str(out)]) == 1
    items = json.loads((out / "results.json").read_text())["items"]
    bad = [it for it in items if it.get("error")]
    assert len(items) == 4 and len(bad) == 1
    assert bad[0]["error"].startswith("cannot be analysed (MemoryError") and "\n" not in bad[0]["error"]
    assert "Traceback" not in capsys.readouterr().err
