"""Generate ``imaging_assist/data/deid/ps3_15_table_e1_1.json``: DICOM PS3.15 Table E.1-1
(Application Level Confidentiality Profile Attributes) as data for :mod:`imaging_assist.privacy.deid`.

No package ships the standard's own DocBook XML and this machine has no network beyond PyPI, so
the table is assembled from two maintained, published transcriptions of it (read as data, never
imported or executed):

1. **Basic Profile column, DICOM 2026c**: ``dicom-anonymizer`` 2.1.0 (Kitware, BSD),
   ``dicomanonymizer/dicom_anonymization_databases/dicomfields_2026c.py``: one list of tags per
   action (D, Z, X, U, Z/D, X/Z, X/D, X/Z/D, X/Z/U*), including the masked groups (50xx curve
   data, 60xx overlay data and comments).  Parsed with :mod:`ast` (``literal_eval``), not imported.
2. **Option columns**: ``dicom-standard`` 0.1.0 (Innolitics, MIT),
   ``standard/confidentiality_profile_attributes.json``, parsed from the standard's HTML (2020
   edition).  Columns: Retain Longitudinal Temporal Information with Modified Dates, Retain Patient
   Characteristics, Retain Device Identity, Clean Descriptors (and the other options, kept for
   reference).  Attributes added to Table E.1-1 after 2020 have no option entry there; for those the
   modified-dates option is derived from the VR (DA/DT/TM -> C, which is what the standard does for
   every temporal attribute of the table), and no other option applies (conservative: the basic
   action stays).  Each row says where its options came from (``options_source``).

Usage: ``python scripts/gen_deid_table.py [--wheels DIR]`` (downloads the two wheels with
``pip download`` into a temporary folder unless ``--wheels`` holds them already).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "imaging_assist" / "data" / "deid" / "ps3_15_table_e1_1.json"
ANON = ("dicom-anonymizer", "2.1.0")
STD = ("dicom-standard", "0.1.0")
ANON_MEMBER = "dicomanonymizer/dicom_anonymization_databases/dicomfields_2026c.py"
STD_MEMBER = "dicom_standard-0.1.0.data/data/standard/confidentiality_profile_attributes.json"

CATEGORY_ACTION = {
    "D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z", "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*",
}
OPTION_KEYS = ("rtnLongModifDatesOpt", "rtnPatCharsOpt", "rtnDevIdOpt", "cleanDescOpt",
               "rtnLongFullDatesOpt", "rtnUIDsOpt", "rtnInstIdOpt", "cleanGraphOpt",
               "cleanStructContOpt", "rtnSafePrivOpt")


def _wheel(folder: Path, name: str, version: str) -> Path:
    stem = name.replace("-", "_") + "-" + version
    found = sorted(folder.glob(stem + "-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                        str(folder), f"{name}=={version}"], check=True)
        found = sorted(folder.glob(stem + "-*.whl"))
    if not found:
        raise SystemExit(f"{name}=={version} wheel not found in {folder}")
    return found[0]


def basic_profile(source: str) -> list[dict]:
    """Rows of the Basic Profile column from dicomfields_2026c.py, parsed, never executed."""
    names: dict[tuple, str] = {}
    # Each tag tuple carries the attribute name as a trailing comment; tuples split over lines
    # (black-formatted) carry it after the closing parenthesis.
    flat = re.sub(r"\(\s*\n\s*", "(", source)
    flat = re.sub(r",\s*\n\s*(?=0x)", ", ", flat)
    flat = re.sub(r",\s*\n\s*\)", ")", flat)
    for m in re.finditer(r"\((0x[0-9A-Fa-f]{4}(?:,\s*0x[0-9A-Fa-f]{4}){1,3})\),?\s*#\s*(.+)", flat):
        key = tuple(int(v, 16) for v in re.split(r",\s*", m.group(1)))
        names[key] = m.group(2).strip()
    rows = []
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List):
            target = node.targets[0].id
            if target not in CATEGORY_ACTION:
                continue
            for t in ast.literal_eval(node.value):
                t = tuple(t)
                if len(t) == 2:
                    tag = f"{t[0]:04X}{t[1]:04X}"
                    mask = None
                else:
                    g, e, gm, em = t
                    # masked tag: 'x' where the mask has 0 bits (whole nibbles here)
                    tag = "".join(
                        "x" if ((gm << 16 | em) >> (28 - 4 * i)) & 0xF == 0
                        else f"{((g << 16 | e) >> (28 - 4 * i)) & 0xF:X}" for i in range(8))
                    mask = f"{gm:04X}{em:04X}"
                rows.append({"tag": tag, "mask": mask, "name": names.get(t, ""),
                             "basic": CATEGORY_ACTION[target]})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheels", type=Path, help="folder holding (or receiving) the two wheels")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.wheels or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(_wheel(folder, *ANON)) as z:
            source = z.read(ANON_MEMBER).decode("utf-8")
        with zipfile.ZipFile(_wheel(folder, *STD)) as z:
            std = json.loads(z.read(STD_MEMBER).decode("utf-8"))

    from pydicom.datadict import dictionary_VR, keyword_for_tag

    by_id: dict[str, dict] = {}
    for r in std:
        by_id.setdefault(r["id"].upper().replace("X", "x"), r)
    rows = basic_profile(source)
    seen = set()
    out = []
    differs = []
    for r in rows:
        if r["tag"] in seen:
            continue
        seen.add(r["tag"])
        old = by_id.get(r["tag"])
        opts = {}
        if old is not None:
            opts = {k: old[k] for k in OPTION_KEYS if old.get(k)}
            src = "dicom-standard 0.1.0 (2020)"
            if old["basicProfile"] != r["basic"]:
                differs.append((r["tag"], old["basicProfile"], r["basic"]))
        else:
            src = "none in the 2020 table; dates option from VR"
        kw = ""
        vr = ""
        if r["mask"] is None:
            tag_int = int(r["tag"], 16)
            kw = keyword_for_tag(tag_int) or ""
            try:
                vr = dictionary_VR(tag_int)
            except KeyError:
                vr = ""
            if old is None and vr in ("DA", "DT", "TM"):
                opts["rtnLongModifDatesOpt"] = "C"
                opts["rtnLongFullDatesOpt"] = "K"
        out.append({"tag": r["tag"], "mask": r["mask"], "keyword": kw, "vr": vr,
                    "name": r["name"], "basic": r["basic"], "options": opts,
                    "options_source": src})
    out.sort(key=lambda r: r["tag"].replace("x", "0"))
    doc = {
        "title": "DICOM PS3.15 Table E.1-1 Application Level Confidentiality Profile Attributes",
        "basic_profile_source": f"{ANON[0]} {ANON[1]} {ANON_MEMBER} (DICOM 2026c)",
        "options_source": f"{STD[0]} {STD[1]} {STD_MEMBER} (DICOM 2020 edition)",
        "generator": "scripts/gen_deid_table.py",
        "rows": out,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    n_opt = sum(1 for r in out if r["options_source"].startswith("dicom-standard"))
    print(f"{len(out)} attributes -> {OUT.relative_to(ROOT)}; options from the 2020 table for "
          f"{n_opt}, derived for {len(out) - n_opt}; basic action changed since 2020 for "
          f"{len(differs)}: " + ", ".join(f"{t} {a}->{b}" for t, a, b in differs[:12]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
