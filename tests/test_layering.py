"""Every import arrow in the engine points down.

cli -> demo / inference / explain / slides / models / dicom; never the reverse.  ``models/``
holds cards, registry, loaders and matching only (nothing from inference, explain, slides,
cli or demo), and nothing in ``imaging_assist/`` imports Qt or the GUI package.
Checked on the source with ``ast`` (imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PKG = ROOT / "imaging_assist"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in the file (relative ones resolved)."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, node.lineno))
            # `from . import cli` / `from .. import demo`: the names are modules too
            out += [(f"{target}.{a.name}", node.lineno) for a in node.names]
    return out


def _engine_files():
    return sorted(p for p in PKG.rglob("*.py") if "data" not in p.relative_to(PKG).parts)


def _hits(prefixes, files):
    bad = []
    for f in files:
        for target, line in _imports(f):
            if any(target == p or target.startswith(p + ".") for p in prefixes):
                bad.append(f"{f.relative_to(ROOT)}:{line} imports {target}")
    return bad


def test_the_import_walker_sees_relative_and_function_level_imports():
    # the checker itself: demo.py imports these inside functions, with relative names
    seen = {t for t, _ in _imports(PKG / "demo.py")}
    assert {"imaging_assist.models.matching", "imaging_assist.dicom", "imaging_assist.errors"} <= seen
    seen = {t for t, _ in _imports(PKG / "cli" / "main.py")}  # `from . import analyze, ...`
    assert {"imaging_assist.cli.analyze", "imaging_assist.errors"} <= seen


def test_no_engine_package_imports_the_cli():
    files = [f for f in _engine_files() if not _module_name(f).startswith("imaging_assist.cli")
             and _module_name(f) != "imaging_assist.__main__"]
    assert _hits(["imaging_assist.cli"], files) == []


def test_models_imports_nothing_above_it():
    files = [f for f in _engine_files() if _module_name(f).startswith("imaging_assist.models")]
    assert files
    above = ["imaging_assist." + p for p in ("inference", "explain", "slides", "cli", "demo")]
    assert _hits(above, files) == []
    assert not (PKG / "models" / "cli.py").exists()


def test_engine_never_imports_the_gui():
    assert _hits(["PySide6", "imaging_assist_ui", "shiboken6"], _engine_files()) == []


def test_the_cli_package_has_one_module_per_command():
    from imaging_assist.cli import build_parser, main  # noqa: F401 - the public entry points

    for name in ("scan", "info", "view", "demo", "models", "analyze", "main"):
        assert (PKG / "cli" / f"{name}.py").is_file(), name
