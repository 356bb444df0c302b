"""What code a MONAI bundle contains, found WITHOUT running any of it.

A bundle config is data for :class:`monai.bundle.ConfigParser`, which runs Python: every
``$`` expression is ``eval``-ed (``$import x`` imports a module, and ConfigParser runs all
the ``$import`` lines of a file as soon as it resolves anything), ``_target_`` may name any
callable (``os.system``), ``_requires_`` runs other items first, ``_mode_: debug`` starts
pdb, ``%file::id`` pastes another file.  This module parses the configs with ``json`` /
``yaml.safe_load`` only and walks the tree; it never imports anything the bundle names.

What counts as *not* code: literal values, ``@id`` references, and ``_target_`` names of plain
building blocks -- MONAI networks (``monai.networks``), MONAI transforms (except those that
read/write files or call a named function: LoadImage, SaveImage, Lambda, ...), MONAI
inferers and ``torch.nn`` modules -- without arguments that name files, folders or URLs.

imaging-assist evaluates only ``network_def``, ``preprocessing``, ``postprocessing`` and
``inferer`` of the inference config and what they reference (``bundle_root`` and ``device``
are its own).  An item there is marked ``runs``; a bundle with such items needs the user's
trust (:mod:`.trust`).  A bundle without them is handed to ConfigParser as a *pruned* config
(:func:`run_plan`): only those parts, file transforms and disabled nodes left out whole, every
other ``_target_`` pinned to the class that was checked -- so nothing else of the bundle can run.
A trusted bundle runs its inference config as written, but also without its file transforms:
their arguments are never evaluated, trusted or not, as ``models show`` says.  Every
``_target_`` is checked, disabled or not (MONAI evaluates ``node::_target_`` before it looks
at ``_disabled_``).
"""

from __future__ import annotations

import ast
import functools
import json
import re
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelCardError

__all__ = ["CodeItem", "bundle_code", "code_that_runs", "run_plan", "RunPlan", "inference_config",
           "read_config_file", "IO_TRANSFORMS", "RUN_ROOTS"]

CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
RUN_ROOTS = ("network_def", "preprocessing", "postprocessing", "inferer")
PROVIDED = ("bundle_root", "device")  # set by imaging-assist, never taken from the bundle
IO_TRANSFORMS = {"LoadImage", "LoadImaged", "SaveImage", "SaveImaged", "SaveClassificationd",
                 "ClassificationSaver", "WriteFileMapping", "WriteFileMappingd"}
# transforms that call a function named or given in their arguments
_CALLING_TRANSFORMS = {"Lambda", "Lambdad", "RandLambda", "RandLambdad", "CuCIM", "CuCIMd",
                       "RandCuCIM", "RandCuCIMd", "TorchVision", "TorchVisiond",
                       "RandTorchVision", "RandTorchVisiond", "TorchIO", "TorchIOd",
                       "RandTorchIO", "RandTorchIOd"}
# argument names that point a plain building block at files, folders or downloads
_FILE_WORDS = {"path", "paths", "filepath", "url", "urls", "uri", "file", "files", "filename",
               "ckpt", "checkpoint", "dir", "dirname", "folder", "weights", "download", "load",
               "hub", "repo"}


def _file_arg(k: str) -> bool:
    """An argument name that points at files, folders, URLs or weights (``output_dir``,
    ``pretrained_path``, ``weights``...), by its ``_``-separated words."""
    return bool(_FILE_WORDS & set(k.lower().split("_")))


_DOWNLOAD_FLAGS = ("pretrained", "pretrained_backbone")
_SPECIAL_KEYS = {"_target_", "_disabled_", "_requires_", "_desc_", "_mode_"}
MAX_CONFIG_BYTES = 16 << 20
MAX_NODES = 500_000
MAX_FILES = 2000
# MONAI's reference syntax (monai.bundle.reference_resolver.ReferenceResolver.id_matcher),
# repeated here so that listing a bundle does not import MONAI for the references.
_REF = re.compile(r"@(?:\w*)(?:::\w*)*")
_REL_PREFIX = re.compile(r"(?:@|%)(?:::)+")


@dataclass(frozen=True)
class CodeItem:
    """One piece of code in a bundle.

    ``file``: path inside the bundle; ``key``: MONAI id of the item (``a::b::0``);
    ``text``: the expression, target or file; ``kind``: ``expression``, ``import``,
    ``target``, ``requires``, ``mode``, ``macro``, ``file argument`` or ``python file``;
    ``runs``: evaluated when imaging-assist loads the bundle (so it needs trust)."""

    file: str
    key: str
    text: str
    kind: str
    runs: bool

    def __str__(self) -> str:
        t = " ".join(self.text.split())
        t = t if len(t) <= 160 else t[:157] + "..."
        return f"{self.file} {self.key}: {t}" if self.key else f"{self.file}: {t}"

    def to_dict(self) -> dict:
        return {"file": self.file, "key": self.key, "text": self.text, "kind": self.kind,
                "runs": self.runs}


# --------------------------------------------------------------------------- reading
def inference_config(folder: Path) -> Path:
    for n in CONFIG_NAMES:
        p = Path(folder) / "configs" / n
        if p.is_file():
            return p
    raise ModelCardError(f"MONAI bundle {folder} has no configs/inference.json or .yaml")


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r}")
        d[k] = v
    return d


def read_config_file(path: Path, data: bytes | None = None):
    """Parse a bundle config (JSON, or YAML with ``yaml.safe_load``: no Python tags).

    Duplicate keys are refused (MONAI and a plain reader could disagree on which wins).
    Every problem is one :class:`ModelCardError` line naming the file."""
    path = Path(path)
    try:
        if data is None:
            if not path.is_file():
                raise ModelCardError(f"bundle config {path} is not a regular file")
            with open(path, "rb") as f:
                data = f.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ModelCardError(f"bundle config {path} is too big (more than "
                                 f"{MAX_CONFIG_BYTES >> 20} MiB)")
        text = data.decode("utf-8")
        if path.suffix.lower() == ".json":
            return json.loads(text, object_pairs_hook=_no_duplicates)
        import yaml

        return yaml.safe_load(text)
    except ModelCardError:
        raise
    except OSError as e:
        raise ModelCardError(f"cannot read bundle config {path}: {e.strerror or e}") from None
    except RecursionError:
        raise ModelCardError(f"cannot read bundle config {path}: nested too deeply") from None
    except Exception as e:  # noqa: BLE001 - json/yaml/unicode errors have many types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelCardError(f"cannot read bundle config {path}: {first}") from None


def config_files(folder: Path) -> list[Path]:
    """Every JSON/YAML file under ``configs/`` (recursively), sorted."""
    root = Path(folder) / "configs"
    out = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in CONFIG_SUFFIXES and p.is_file():
            out.append(p)
            if len(out) > MAX_FILES:
                raise ModelCardError(f"bundle {folder}: more than {MAX_FILES} config files")
    return out


# --------------------------------------------------------------------------- targets
def _monai_class(target: str):
    """The class a plain ``_target_`` names, or None when it is not an allowed building block."""
    if not isinstance(target, str) or not re.fullmatch(r"[A-Za-z_][\w.]{0,200}", target):
        return None
    return _resolve_target(target)


@functools.lru_cache(maxsize=1024)
def _resolve_target(target: str):
    import importlib
    import inspect

    try:
        import monai.inferers as minf
        import monai.networks as mnw  # noqa: F401 - blocks, layers, nets
        import monai.networks.nets as mnets
        import monai.transforms as mt
        import torch.nn as tnn
    except Exception:  # noqa: BLE001 - without MONAI nothing is a known building block
        return None
    name = target.rsplit(".", 1)[-1]
    obj = None
    if "." not in target:
        for mod in (mnets, mt, minf):
            obj = getattr(mod, target, None)
            if obj is not None:
                break
    else:
        modname, _, attr = target.rpartition(".")
        if not (modname.startswith(("monai.networks.", "monai.transforms.", "monai.inferers.",
                                    "torch.nn."))
                or modname in ("monai.networks", "monai.transforms", "monai.inferers", "torch.nn")):
            return None
        try:
            mod = importlib.import_module(modname)
        except Exception:  # noqa: BLE001
            return None
        obj = getattr(mod, attr, None)
    if not inspect.isclass(obj):
        return None
    mod = obj.__module__ or ""
    if name in IO_TRANSFORMS or name in _CALLING_TRANSFORMS or mod.startswith("monai.transforms.io"):
        return None
    if mod.startswith("monai.networks.") and issubclass(obj, tnn.Module):
        return obj
    if mod.startswith("torch.nn.") and issubclass(obj, tnn.Module):
        return obj
    if mod.startswith("monai.transforms.") and issubclass(obj, mt.Transform):
        return obj
    if mod.startswith("monai.inferers.") and issubclass(obj, minf.Inferer):
        return obj
    return None


def _full_name(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _target_name(d: dict) -> str:
    t = d.get("_target_")
    return t.rsplit(".", 1)[-1] if isinstance(t, str) else ""


def _io_target(t) -> bool:
    """A file transform named plainly (``LoadImaged``, ``monai.transforms.LoadImaged``): only
    such a name makes a node a file transform that is left out.  ``"$os.system(...) and
    monai.transforms.LoadImaged"`` also ends in ``.LoadImaged``, but it is an expression."""
    if not (isinstance(t, str) and re.fullmatch(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*){0,20}", t)):
        return False
    mod, _, name = t.rpartition(".")
    return name in IO_TRANSFORMS and (mod in ("", "monai.transforms") or mod.startswith("monai.transforms."))


def _is_io(d) -> bool:
    return isinstance(d, dict) and _io_target(d.get("_target_"))


def _disabled(d: dict) -> bool:
    """``_disabled_`` as MONAI reads it (ConfigComponent.is_disabled)."""
    v = d.get("_disabled_", False)
    return v.lower().strip() == "true" if isinstance(v, str) else bool(v)


# --------------------------------------------------------------------------- walking
class _Walk:
    def __init__(self, file: str):
        self.file = file
        self.items: list[CodeItem] = []
        self.nodes = 0

    def add(self, key, text, kind, runs):
        self.items.append(CodeItem(self.file, key, str(text), kind, runs))

    def tick(self):
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise ModelCardError(f"bundle config {self.file} is too large to check "
                                 f"(more than {MAX_NODES} values)")

    def scan(self, node, key: str, runs) -> None:
        """runs(key) -> bool tells whether the item at ``key`` is evaluated."""
        self.tick()
        if isinstance(node, str):
            if node.startswith("$"):
                self.add(key, node, "import" if _is_import(node) else "expression", runs(key))
            elif node.startswith("%"):
                self.add(key, node, "macro", runs(key))
            return
        if isinstance(node, dict):
            if "_target_" in node:
                t = node["_target_"]
                disabled = _disabled(node)
                # checked in a disabled node too: MONAI's ReferenceResolver evaluates
                # "node::_target_" (a "$" expression) before instantiate() looks at _disabled_
                if (not isinstance(t, str) or t.startswith(("$", "@", "%"))
                        or _monai_class(t) is None):
                    self.add(_join(key, "_target_"), t if isinstance(t, str) else repr(t)[:200],
                             "target", runs(key))
                if "_requires_" in node:
                    self.add(_join(key, "_requires_"), json.dumps(node["_requires_"])[:400]
                             if not isinstance(node["_requires_"], str) else node["_requires_"],
                             "requires", runs(key))
                if node.get("_mode_", "default") != "default":
                    self.add(_join(key, "_mode_"), str(node["_mode_"]), "mode", runs(key))
                if "_debug_" in node:
                    self.add(_join(key, "_debug_"), str(node["_debug_"]), "mode", runs(key))
                if not disabled:
                    for k, v in node.items():
                        if isinstance(k, str) and _class_by_name(k, v):
                            # MONAI imports it by name (PatchInferer(merger_cls="x") calls
                            # pydoc.locate("x"): any module is imported, its top level runs)
                            self.add(_join(key, k), f"{k}={v}", "class by name", runs(key))
                        if (isinstance(k, str) and k not in _SPECIAL_KEYS and _file_arg(k)
                                and v not in (None, False, "", [], {})
                                and k not in _DOWNLOAD_FLAGS):
                            self.add(_join(key, k), f"{k}={json.dumps(v, default=str)[:200]}",
                                     "file argument", runs(key))
            for k, v in node.items():
                if k == "_target_":
                    continue
                if k == "_requires_":  # listed above as one item
                    continue
                self.scan(v, _join(key, str(k)), runs)
            return
        if isinstance(node, list):
            for i, v in enumerate(node):
                self.scan(v, _join(key, str(i)), runs)


def _class_by_name(k: str, v) -> bool:
    """An argument that names a class for MONAI to find by name (``*_cls`` / ``*_class``):
    code unless it is one of MONAI's own mergers, which are looked up without an import."""
    if not (k.endswith(("_cls", "_class")) and isinstance(v, str)) or v.startswith(("$", "@", "%")):
        return False
    try:
        import inspect

        import monai.inferers.merger as merger

        return not (re.fullmatch(r"[A-Za-z_]\w{0,100}", v) and inspect.isclass(getattr(merger, v, None)))
    except Exception:  # noqa: BLE001 - without MONAI nothing is known to be safe
        return True


def _join(a: str, b: str) -> str:
    return f"{a}::{b}" if a else b


def _is_import(expr: str) -> bool:
    if "import" not in expr:
        return False
    try:
        n = ast.parse(expr[1:].strip())
    except SyntaxError:
        return False
    return bool(n.body) and isinstance(n.body[0], (ast.Import, ast.ImportFrom))


def _resolve_relative(id_: str, value: str) -> str:
    """``@##A`` -> absolute id, as ConfigParser.resolve_relative_ids does."""
    value = value.replace("#", "::")
    cur = id_.split("::")
    for p in sorted(set(_REL_PREFIX.findall(value)), reverse=True):
        sym = p[0]
        n = p[1:].count("::")
        if n > len(cur):
            continue  # ConfigParser refuses it; nothing to follow
        new = "" if n == len(cur) else "::".join(cur[:-n]) + "::"
        value = value.replace(p, sym + new)
    return value


def _refs(node, key: str, out: set[str], counter: _Walk) -> None:
    """Top-level keys that ``node`` (at id ``key``) refers to (``@`` and ``%`` without a
    file); file transforms are skipped (they are disabled before parsing)."""
    counter.tick()
    if isinstance(node, str):
        if "@" in node or node.startswith("%") or "#" in node:
            v = _resolve_relative(key, node)
            if v.startswith("$"):
                ids = [m[1:] for m in _REF.findall(v)]
            else:
                ids = [v[1:]] if _REF.fullmatch(v) else []
            if v.startswith("%") and not re.search(r"\.(json|ya?ml)", v, re.IGNORECASE):
                ids.append(v[1:])
            for i in ids:
                out.add(i.split("::")[0])
        return
    if _is_io(node):
        return
    if isinstance(node, dict):
        for k, v in node.items():
            _refs(v, _join(key, str(k)), out, counter)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _refs(v, _join(key, str(i)), out, counter)


def _closure(tree: dict, file: str) -> set[str]:
    """Top-level keys of the inference config that imaging-assist evaluates."""
    counter = _Walk(file)
    seen: set[str] = set()
    todo = [k for k in RUN_ROOTS if k in tree]
    while todo:
        k = todo.pop()
        if k in seen or k in PROVIDED:
            continue
        seen.add(k)
        found: set[str] = set()
        _refs(tree.get(k), k, found, counter)
        todo.extend(x for x in found if x in tree or x == "_meta_")
    return seen


def _io_paths(node, key: str, out: list[str]) -> None:
    if _is_io(node):
        out.append(key)
        return
    if isinstance(node, dict):
        for k, v in node.items():
            _io_paths(v, _join(key, str(k)), out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _io_paths(v, _join(key, str(i)), out)


def _without_io(node):
    """A copy of ``node`` with every file-transform node replaced whole by None.  A trusted
    bundle runs as written, but ConfigParser resolves every sub-item of a node it builds:
    LoadImaged(reader="$os.system(...)"), SaveImaged(output_dir="@dir") would evaluate their
    arguments, which ``models show`` and the trust prompt list as never run.  imaging-assist
    loads and saves the images itself (and drops these transforms after building), so
    nothing of them reaches ConfigParser, trusted or not."""
    if _is_io(node):
        return None
    if isinstance(node, dict):
        return {k: _without_io(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_without_io(v) for v in node]
    return node


def _io_names(node, out: list[str]) -> None:
    """Names of the file transforms in ``node`` (for the note that they were left out)."""
    if _is_io(node):
        out.append(_target_name(node))
    elif isinstance(node, dict):
        for v in node.values():
            _io_names(v, out)
    elif isinstance(node, list):
        for v in node:
            _io_names(v, out)


def _runs_fn(keys: set[str], skipped: list[str]):
    def runs(key: str) -> bool:
        top = key.split("::")[0]
        if top not in keys:
            return False
        return not any(key == s or key.startswith(s + "::") for s in skipped)
    return runs


# --------------------------------------------------------------------------- public
def bundle_code(folder: str | Path) -> list[CodeItem]:
    """Every piece of code in the bundle's config files (and its Python files), nothing run.

    ``runs`` is True for the items imaging-assist would evaluate: those need the user's
    trust (``imaging-assist models trust ID``).  Raises :class:`ModelCardError` for a config
    that cannot be read."""
    folder = Path(folder)
    inf = inference_config(folder)
    meta_runs = False
    io_nodes: list[str] = []  # ids of the inference config's file transforms (_without_io)
    items: list[CodeItem] = []
    metadata_items: list[CodeItem] = []
    for p in config_files(folder):
        rel = p.relative_to(folder).as_posix()
        tree = read_config_file(p)
        w = _Walk(rel)
        if p == inf and isinstance(tree, dict):
            keys = _closure(tree, rel)
            meta_runs = "_meta_" in keys
            skipped: list[str] = []
            for k in keys:
                _io_paths(tree.get(k), k, skipped)
            w.scan(tree, "", _runs_fn(keys, skipped))
            items.extend(w.items)
            for k, v in tree.items():  # file transforms anywhere: never given to ConfigParser
                _io_paths(v, str(k), io_nodes)
        else:
            w.scan(tree, "", lambda key: False)
            (metadata_items if p.name == "metadata.json" else items).extend(w.items)
    if meta_runs:  # the inference config refers to @_meta_::...: metadata items run too
        metadata_items = [CodeItem(i.file, i.key, i.text, i.kind, True) for i in metadata_items]
    items.extend(metadata_items)
    if any(i.runs for i in items):
        # a bundle that needs trust runs, once trusted, its inference config as written with its
        # metadata (bundle.parse_bundle), and ConfigParser executes every "$import" of both as it
        # parses them, used or not: they run too, and the trust prompt must not say otherwise
        # (not those inside a file transform: run_plan leaves those nodes out of that config too)
        inf_rel = inf.relative_to(folder).as_posix()

        def in_io(i: CodeItem) -> bool:
            return i.file == inf_rel and any(i.key == n or i.key.startswith(n + "::") for n in io_nodes)

        items = [CodeItem(i.file, i.key, i.text, i.kind, True)
                 if (not i.runs and i.kind == "import" and i.file in (inf_rel, "configs/metadata.json")
                     and not in_io(i)) else i
                 for i in items]
    for sub in ("configs", "scripts"):
        root = folder / sub
        if root.is_dir():
            for p in sorted(root.rglob("*.py"))[:MAX_FILES]:
                rel = p.relative_to(folder).as_posix()
                items.append(CodeItem(rel, "", f"Python file ({rel}); runs only when a config "
                                               "item imports it", "python file", False))
    return items


def code_that_runs(folder: str | Path) -> list[CodeItem]:
    """The items of :func:`bundle_code` that loading the bundle would evaluate."""
    return [i for i in bundle_code(folder) if i.runs]


@dataclass
class RunPlan:
    """How a bundle is handed to ConfigParser.

    ``code``: items that would run (non-empty: the bundle needs trust); ``config``: the
    inference config as read (from the same bytes that were hashed), file transforms replaced
    whole by None (what a trusted bundle runs); ``pruned``: the
    config reduced to what runs, file transforms disabled and targets pinned (only when
    ``code`` is empty); ``notes``: what was changed."""

    code: list[CodeItem]
    config: dict
    pruned: dict | None
    download_flags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def run_plan(folder: str | Path, config_bytes: bytes | None = None,
             meta: dict | None = None) -> RunPlan:
    """Check the inference config and build the pruned config for a run without trust."""
    folder = Path(folder)
    inf = inference_config(folder)
    rel = inf.relative_to(folder).as_posix()
    tree = read_config_file(inf, config_bytes)
    if not isinstance(tree, dict):
        raise ModelCardError(f"bundle config {inf} must be a mapping at the top level")
    keys = _closure(tree, rel)
    skipped: list[str] = []
    for k in keys:
        _io_paths(tree.get(k), k, skipped)
    w = _Walk(rel)
    w.scan(tree, "", _runs_fn(keys, skipped))
    code = [i for i in w.items if i.runs]
    if "_meta_" in keys and meta is not None:
        mw = _Walk("configs/metadata.json")
        mw.scan(meta, "", lambda key: True)
        code += mw.items
    runs = _runs_fn(keys, skipped)
    for k in keys:
        _check_sizes(tree.get(k), k, rel, runs, tree)
    flags: list[str] = []
    for k in keys:
        _download_flags(tree.get(k), k, flags)
    # what a trusted bundle runs: the config as written, less its file transforms (_without_io)
    plan = RunPlan(code, {k: _without_io(v) for k, v in tree.items()}, None, flags)
    if code:
        names: list[str] = []  # the same note as a pruned run
        for k in keys:
            _io_names(tree.get(k), names)
        if names:
            plan.notes.append("left out file transforms: " + ", ".join(names))
        return plan
    pruned: dict = {k: deepcopy(tree[k]) for k in keys if k in tree}
    if "_meta_" in keys and meta is not None:
        pruned["_meta_"] = deepcopy(meta)
    dropped: list[str] = []
    for k in list(pruned):
        pruned[k] = _prepare(pruned[k], dropped)
    if dropped:
        plan.notes.append("left out file transforms: " + ", ".join(dropped))
    plan.pruned = pruned
    return plan


# Literal sizes in what runs, bounded like a card's (card.MAX_SIDE / MAX_INPUT_VOXELS, with
# room for 3D bundles: 512^3): a code-free bundle must not ask for a runaway allocation.
_SIZE_ARGS = ("spatial_size", "roi_size", "patch_size", "img_size")
_MAX_SIDE = 4096
_MAX_VOXELS = 1 << 27
_MIN_PIXDIM = 1e-3  # mm
_BATCH_ARGS = ("sw_batch_size", "batch_size", "num_samples")
_MAX_BATCH = 256


_MAX_ZOOM = 16.0  # Zoom(d) / RandZoom(d) factors: a 4096^2 image at most 16x per side


def _deref(v, tree: dict | None, depth: int = 0):
    """``v`` with a plain reference ("@id", "@a::b") replaced by the value it names, so that a
    size behind a reference is checked like a literal one (``{"big": [100000]*3}, "roi_size":
    "@big"`` passed)."""
    if not (isinstance(v, str) and tree is not None and depth < 10 and re.fullmatch(r"@[\w]+(?:::[\w]+)*", v)):
        return v
    node = tree
    for part in v[1:].split("::"):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return v
    return _deref(node, tree, depth + 1)


def _check_sizes(node, key: str, file: str, runs, tree: dict | None = None) -> None:
    import math

    if isinstance(node, list):
        for i, v in enumerate(node):
            _check_sizes(v, _join(key, str(i)), file, runs, tree)
        return
    if not isinstance(node, dict):
        return
    if "_target_" in node and runs(key):
        def bad(arg, msg):
            raise ModelCardError(f"bundle config {file} {_join(key, arg)}: {msg}; "
                                 "the bundle was not run")
        node = {k: (_deref(v, tree) if not isinstance(v, list) else [_deref(x, tree) for x in v])
                for k, v in node.items()}
        for arg in ("zoom", "min_zoom", "max_zoom"):
            v = node.get(arg)
            vals = [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else v
            if isinstance(vals, list) and vals and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                       for x in vals):
                if any(not math.isfinite(x) or x > _MAX_ZOOM for x in vals):
                    bad(arg, f"{str(v)[:60]} exceeds the limit of {_MAX_ZOOM:g} per dimension")
        for arg in _SIZE_ARGS:
            v = node.get(arg)
            vals = [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else v
            if isinstance(vals, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                              for x in vals) and vals:
                pos = [x for x in vals if x > 0]
                if any(not math.isfinite(x) for x in vals) or any(x > _MAX_SIDE for x in pos):
                    bad(arg, f"{str(v)[:60]} exceeds the limit of {_MAX_SIDE} per dimension")
                if math.prod(pos) > _MAX_VOXELS:
                    bad(arg, f"{str(v)[:60]} asks for more than {_MAX_VOXELS} voxels")
        v = node.get("pixdim")
        vals = [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        if isinstance(vals, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                          for x in vals):
            if any(not math.isfinite(x) or 0 < x < _MIN_PIXDIM for x in vals):
                bad("pixdim", f"{str(v)[:60]}: spacings must be finite and at least {_MIN_PIXDIM} mm")
        for arg in _BATCH_ARGS:
            v = node.get(arg)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not (
                    math.isfinite(v) and v <= _MAX_BATCH):
                bad(arg, f"{str(v)[:30]} exceeds the limit of {_MAX_BATCH}")
    for k, v in node.items():
        _check_sizes(v, _join(key, str(k)), file, runs, tree)


def _prepare(node, dropped: list[str]):
    """Leave out file transforms and disabled nodes, pin every other target to the class that
    was checked."""
    if isinstance(node, dict):
        if _is_io(node) or ("_target_" in node and _disabled(node)):
            # replaced whole (None is what MONAI makes of a disabled node): nothing of it, not
            # even its _target_, reaches ConfigParser, which evaluates sub-items first
            if _is_io(node):
                dropped.append(_target_name(node))
            return None
        out = {k: _prepare(v, dropped) for k, v in node.items()}
        if "_target_" in out:
            cls = _monai_class(out["_target_"])
            if cls is None:  # run_plan only prepares configs without code items
                raise ModelCardError(f"internal check: target {out['_target_']!r} is not allowed")
            out["_target_"] = _full_name(cls)
        return out
    if isinstance(node, list):
        return [_prepare(v, dropped) for v in node]
    return node


def _download_flags(node, key: str, out: list[str]) -> None:
    """Ids of ``pretrained``/``pretrained_backbone`` that are true (switched off: the bundle's
    own weights replace them and nothing is downloaded): written as true, or left out where the
    class defaults to True (EfficientNetBN, ResNetFeatures, MILModel...)."""
    if isinstance(node, dict):
        if _is_io(node) or ("_target_" in node and _disabled(node)):
            return  # never built (left out of the pruned config)
        cls = _monai_class(node["_target_"]) if "_target_" in node else None
        for flag in _DOWNLOAD_FLAGS if cls is not None else ():
            if flag not in node and _default(cls, flag) is True:
                out.append(_join(key, flag))
        for k, v in node.items():
            if k in _DOWNLOAD_FLAGS and v not in (False, None):  # true, or "@ref" to a true
                out.append(_join(key, k))
            else:
                _download_flags(v, _join(key, str(k)), out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _download_flags(v, _join(key, str(i)), out)


def _default(cls, arg: str):
    """The default of the constructor argument ``arg`` of ``cls`` (None when it has none)."""
    import inspect

    try:
        p = inspect.signature(cls).parameters.get(arg)
    except (TypeError, ValueError):
        return None
    return None if p is None or p.default is inspect.Parameter.empty else p.default
