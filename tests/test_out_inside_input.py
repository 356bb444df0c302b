"""Sources are read-only: an output folder that is the input folder or inside it is refused in one
line before anything is written (analyze overwrote a film of the folder with another film's label
map, and the next run over the folder analysed the heat-map key images as films)."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from conftest import SHARED, need
from imaging_assist.cli.main import main

KERMANY = SHARED / "cxr" / "pneumonia_kermany"


def _tree(root):
    return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


@pytest.fixture()
def films(tmp_path):
    d = tmp_path / "films"
    d.mkdir()
    for f in sorted(need(KERMANY / "test" / "NORMAL").iterdir())[:2]:
        shutil.copy(f, d / f.name)
    return d


@pytest.mark.parametrize("where", ["same", "inside", "symlink"])
@pytest.mark.parametrize("command", ["analyze", "evaluate"])
def test_out_among_the_inputs_is_refused_before_anything_is_written(films, tmp_path, capsys, where, command):
    out = {"same": films, "inside": films / "run1", "symlink": tmp_path / "link" / "run1"}[where]
    if where == "symlink":
        (tmp_path / "link").symlink_to(films)
    before = _tree(films)
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\n" + "".join(f"{p.name},normal\n" for p in films.iterdir()))
    argv = {"analyze": ["analyze", str(films), "--model", "cxr-pneumonia", "--out", str(out)],
            "evaluate": ["evaluate", str(films), "--model", "cxr-pneumonia", "--labels", str(labels),
                         "--out", str(out)]}[command]
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: --out ") and "inside the input" in err[0], err
    assert _tree(films) == before and not (films / "run1").exists()


def test_analyze_deidentify_checks_the_original_input(films, capsys):
    rc = main(["analyze", str(films), "--model", "cxr-pneumonia", "--deidentify", "--out", str(films / "o")])
    assert rc == 2 and "inside the input" in capsys.readouterr().err
    assert not (films / "o").exists()


def test_out_beside_the_inputs_is_fine(films, tmp_path):
    from imaging_assist.outputs import out_folder

    assert out_folder(tmp_path / "out", sources=[films]).is_dir()
    assert out_folder(tmp_path / "films_out", sources=[films]).is_dir()  # a name sharing the prefix
