"""``info`` for result objects (SEG, Parametric Map, SR, Encapsulated PDF): what they hold and
where they land on the series they refer to (imaging_assist.dicom.result_objects)."""

from __future__ import annotations

import os

from ..errors import UserError
from .common import print_json



def _print(*parts) -> None:
    """print() with the control characters of values read from files shown escaped (a
    description or label could otherwise move the cursor or fake a line)."""
    from ..safe_text import printable

    print(*(printable(p) for p in parts))

def _with_sources(index, series):
    """An index holding the series ``series`` refers to: ``index``, or (given the object's own
    file) the index of the folder that holds it."""
    if any(index.find_series(uid) is not None for uid in series.references):
        return index
    rec = series.instances[0]
    folder = os.path.dirname(os.path.abspath(rec.path))
    if series.references and rec.member is None and os.path.realpath(index.root) != folder:
        from ..dicom import scan
        return scan(folder)
    return index


def _source_volume(index, series):
    from ..dicom import load_series
    from ..dicom.result_objects import KIND_NAMES
    index = _with_sources(index, series)
    for uid in series.references:
        src = index.find_series(uid)
        if src is not None and src.is_image:
            return load_series(src)
    what = KIND_NAMES[series.result_kind]
    if series.references:
        raise UserError(f"this {what} refers to series {series.references[0]}, which is not found "
                        "beside it (scan the folder that holds both)")
    raise UserError(f"this {what} names no series it refers to: cannot place it")


def _placed_regions(index, series, report) -> dict:
    """The SR's regions as the viewer draws them (imaging_assist.dicom.sr_regions) on the series
    it refers to: image number, kind and (k, j, i) points; none when that series is not here."""
    if not any(it.regions for it in report.items):
        return {"regions_placed": [], "region_warnings": []}
    from ..dicom.sr_regions import place_regions
    try:
        vol = _source_volume(index, series)
    except UserError as e:
        return {"regions_placed": None, "region_warnings": [f"regions not placed: {e}"]}
    layer, warns = place_regions(report, vol)
    placed = [{"label": s.label, "image": int(round(s.position[0])) + 1, "kind": s.kind, "closed": s.closed,
               "points_kji": [[round(float(v), 3) for v in p] for p in s.points]}
              for s in (layer.shapes if layer is not None else [])]
    return {"regions_placed": placed, "region_warnings": warns}


def result_dict(index, series) -> dict:
    from ..dicom.result_objects import KIND_NAMES, PDF, SR, read_result
    kind = series.result_kind
    rec = series.instances[0]
    out = {"series_uid": series.uid, "key": series.key, "description": series.description,
           "result_kind": kind, "kind_name": KIND_NAMES[kind], "references": list(series.references),
           "instances": series.n_instances, "warnings": list(series.warnings)}
    if kind == PDF:
        return out
    if kind == SR:
        report = read_result(rec)
        out.update(report.to_dict())
        # name each referenced image by its series number and instance number (headers only)
        where = {}
        for s in _with_sources(index, series).all_series():
            for r in s.instances:
                where[str(r.get("SOPInstanceUID"))] = (f"series {s.number if s.number is not None else '-'} "
                                                      f"image {r.get('InstanceNumber', '?')}")
        for it in out["items"]:
            it["where"] = next((where[u] for u, _ in it["references"] if u in where), None)
        out.update(_placed_regions(index, series, report))
    else:
        vol = _source_volume(index, series)
        obj = read_result(rec, vol)
        out.update(obj.to_dict())
        out["source_shape"] = list(vol.shape)
    out["kind"] = kind
    return out


def print_result_info(index, series, as_json: bool = False) -> int:
    d = result_dict(index, series)
    if as_json:
        print_json(d)
        return 0
    _print(f"Series      {series.description or '(no description)'}  [{series.modality}]  uid={series.uid}")
    _print(f"Result      {d['kind_name']}; refers to series "
          f"{', '.join(d['references']) or '(none named)'}")
    if d["result_kind"] == "SEG":
        _print(f"Type        {d['segmentation_type']} on a {' x '.join(map(str, d['source_shape']))} grid")
        for s in d["segments"]:
            extra = f"  ({s['type']})" if s["type"] and s["type"] != s["label"] else ""
            _print(f"Segment {s['number']:>3} {s['label']}{extra}: {s['voxels']} voxels"
                  f"{'  ' + s['algorithm'] if s['algorithm'] else ''}")
    elif d["result_kind"] == "PR":
        _print(f"Label       {d['label']}: {len(d['annotations'])} annotations on this series")
        for a in d["annotations"]:
            _print(f"  {a['kind']:<11} {a['name']}  [image {a['image']}]")
    elif d["result_kind"] == "PM":
        rng = d["value_range"]
        rng_s = f"{rng[0]:g} .. {rng[1]:g}" if rng else "no values"
        _print(f"Values      {rng_s} {d['units']}".rstrip() + f"  ({d['label'] or 'no label'})")
    elif d["result_kind"] == "SR":
        _print(f"Title       {d['title']}")
        for it in d["items"]:
            v = f"{it['value']} {it['unit']}".strip()
            g = f"{it['group']}: " if it["group"] else ""
            if it.get("where"):
                refs = f"  [{it['where']}]"
            elif it["references"]:
                refs = f"  [image {it['references'][0][0]}, not found here]"
            elif it["point_lps"]:
                refs = "  [at " + ", ".join(f"{v:.1f}" for v in it["point_lps"]) + " mm LPS]"
            else:
                refs = ""
            _print(f"  {it['kind']:<11} {g}{it['name']} = {v}{refs}")
        for r in d.get("regions_placed") or []:
            shape = "point(s)" if r["kind"] == "points" else "outline" if r["closed"] else "line"
            _print(f"  region      {r['label'][0]}: {shape} of {len(r['points_kji'])} points on image {r['image']}")
        for w in d.get("region_warnings") or []:
            _print(f"warning: {w}")
    for w in d["warnings"]:
        _print(f"warning: {w}")
    return 0
