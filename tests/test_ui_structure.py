"""The desktop app's layout: every ui/ subpackage is installed (listed in pyproject's packages,
so a wheel, not only the editable install, carries it), the UI keeps no copy of the engine's
model matching, and the main window stays a composition of small components."""

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UI = ROOT / "ui"


def test_every_ui_subpackage_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert cfg["package-dir"]["imaging_assist_ui"] == "ui"
    listed = {p for p in cfg["packages"] if p.startswith("imaging_assist_ui")}
    found = {"imaging_assist_ui" + "".join("." + part for part in d.relative_to(UI).parts)
             for d in [UI, *UI.rglob("*")] if d.is_dir() and (d / "__init__.py").is_file()}
    assert found == listed, (found - listed, listed - found)
    # the workspaces
    assert {"imaging_assist_ui.radiology", "imaging_assist_ui.slides", "imaging_assist_ui.ai",
            "imaging_assist_ui.shared", "imaging_assist_ui.main_window"} <= found


def test_no_ui_copy_of_the_matching_rules():
    for p in UI.rglob("*.py"):
        tree = ast.parse(p.read_text())
        defs = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert not defs & {"SeriesFacts", "series_facts", "match_card", "Match"}, p


def test_main_window_is_composed_of_small_components():
    mw = UI / "main_window"
    for p in mw.glob("*.py"):
        assert len(p.read_text().splitlines()) <= 450, p
    cls = next(n for n in ast.parse((mw / "window.py").read_text()).body
               if isinstance(n, ast.ClassDef) and n.name == "MainWindow")
    assert sum(isinstance(n, ast.FunctionDef) for n in cls.body) <= 60
