"""Structural mutations of a valid JSON document, for fuzzing the small user-file readers
(tests/test_config_fuzz.py).

:func:`mutations` yields ``(name, bytes)``: every value at every path (lists visited at their
first and last item, the number of paths capped) replaced by a value of another type, every
key deleted, then whole-document replacements (other top-level types, deep nesting,
truncations, invalid UTF-8, a BOM, duplicate keys).  :func:`check_reader` runs a reader on
each and collects what escaped its contract.
"""

from __future__ import annotations

import copy
import json

# (name, value): json.dumps writes 1e400 as Infinity and nan as NaN (both accepted by json.loads);
# 10**400 stays an int that no float holds (float() and math.isfinite raise OverflowError)
REPLACEMENTS = [
    ("null", None), ("true", True), ("-1", -1), ("0", 0), ("1e400", 1e400),
    ("NaN", float("nan")), ("10**30", 10**30), ("10**400", 10**400), ('""', ""), ('"x"', "x"), ('"x\\ny"', "x\ny"),
    ("[]", []), ("{}", {}),
]
DEEP = 100_000  # nesting depth of the deep documents (json raises RecursionError on them)


def paths(doc, prefix: tuple = ()) -> list[tuple]:
    """Paths (tuples of keys / list indices) to every value below the root, depth first;
    a list contributes its first and last item only (a long list of numbers would only
    repeat the same mutations)."""
    out = []
    if isinstance(doc, dict):
        items = list(doc.items())
    elif isinstance(doc, list):
        idx = sorted({0, len(doc) - 1}) if doc else []
        items = [(i, doc[i]) for i in idx]
    else:
        return out
    for k, v in items:
        p = prefix + (k,)
        out.append(p)
        out.extend(paths(v, p))
    return out


def _capped(ps: list[tuple], cap: int | None) -> list[tuple]:
    if cap is None or len(ps) <= cap:
        return ps
    step = len(ps) / cap  # evenly spread, deterministic; shallow paths come first
    return [ps[int(i * step)] for i in range(cap)]


def set_at(doc, path: tuple, value):
    """A copy of ``doc`` with the value at ``path`` replaced (only the containers on the path
    are copied: the result is dumped at once, never changed)."""
    if not path:
        return value
    d = copy.copy(doc)
    d[path[0]] = set_at(doc[path[0]], path[1:], value)
    return d


def delete_at(doc, path: tuple):
    d = copy.copy(doc)
    if len(path) == 1:
        del d[path[0]]
    else:
        d[path[0]] = delete_at(doc[path[0]], path[1:])
    return d


def path_text(path: tuple) -> str:
    return "".join(f"[{k!r}]" for k in path) or "<root>"


def _dump(doc) -> bytes:
    return json.dumps(doc).encode("utf-8")  # no indent: the C encoder


def mutations(doc, cap: int | None = 60):
    """Yield (name, bytes) of mutated copies of ``doc`` (see the module doc)."""
    for p in _capped(paths(doc), cap):
        where = path_text(p)
        for rname, value in REPLACEMENTS:
            yield f"{where} = {rname}", _dump(set_at(doc, p, value))
        yield f"del {where}", _dump(delete_at(doc, p))
    yield from whole_document(doc)


def whole_document(doc):
    text = _dump(doc)
    for name, data in (("[]", b"[]"), ("null", b"null"), ("1", b"1"), ('"s"', b'"s"'), ("{}", b"{}"),
                       ("empty file", b""), ("[[[... unclosed, deep", b"[" * DEEP),
                       ('{"a":{"a":... deep', b'{"a":' * DEEP + b"1" + b"}" * DEEP),
                       ("[[[...]]] deep", b"[" * DEEP + b"]" * DEEP)):
        yield f"document = {name}", data
    for n in sorted({1, len(text) // 3, len(text) // 2, len(text) - 1}):
        yield f"truncated to {n} of {len(text)} bytes", text[:n]
    mid = len(text) // 2
    yield "invalid UTF-8 in the middle", text[:mid] + b"\xff\xfe\xc3" + text[mid:]
    yield "invalid UTF-8 at the start", b"\xff" + text
    yield "UTF-8 BOM prefix", b"\xef\xbb\xbf" + text
    yield "UTF-16 encoded", json.dumps(doc).encode("utf-16")
    yield "NUL bytes", text.replace(b", ", b",\x00", 3)
    if isinstance(doc, dict) and doc:
        k = next(iter(doc))
        for rname, value in (("null", None), ('"x"', "x"), ("[]", []), ("1e400", 1e400)):
            dup = json.dumps({k: value})[:-1].encode()
            yield f"duplicate key {k!r} = {rname} after", text.rstrip()[:-1] + b"," + dup[1:] + b"}"
            yield f"duplicate key {k!r} = {rname} before", dup + b"," + text.lstrip()[1:]


def one_line_problem(e: BaseException, allowed: tuple[type, ...]) -> str | None:
    """Why ``e`` escapes a reader whose contract is ``allowed`` (None: it keeps to it)."""
    if not isinstance(e, allowed):
        return f"{type(e).__name__}: {str(e)[:200]}"
    msg = str(e)
    if not msg.strip() or "\n" in msg or "\r" in msg:
        return f"{type(e).__name__} message is not one line: {msg[:200]!r}"
    return None


def check_reader(docs, write, call, allowed: tuple[type, ...], check=None) -> list[str]:
    """For each (name, bytes) of ``docs``: ``write(bytes)``, then ``call()``.  Returns the
    escapes, one line each: an exception outside ``allowed`` (or one whose message is not one
    line), or a result that ``check(result)`` finds wrong (it returns a reason or None)."""
    bad = []
    for name, data in docs:
        write(data)
        try:
            result = call()
        except Exception as e:  # noqa: BLE001 - what escapes is the finding
            why = one_line_problem(e, allowed)
            if why:
                bad.append(f"{name}: {why}")
            continue
        if check is not None:
            try:
                why = check(result)
            except Exception as e:  # noqa: BLE001 - a result the check cannot even look at
                why = f"result {type(e).__name__}: {e}"
            if why:
                bad.append(f"{name}: {why}")
    return bad
