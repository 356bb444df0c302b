"""A PACS query as a batch SOURCE: ``pacs://NODE?PatientID=...&Modality=CR&StudyDate=...``.

``NODE`` is a configured node name (``imaging-assist pacs nodes``; DIMSE or DICOMweb).  The
query runs at study level (C-FIND / QIDO-RS through :func:`imaging_assist.pacs.api.find`);
with ``Modality`` each matching study's series are queried too and only the series of that
modality are retrieved.  Retrieval (:func:`imaging_assist.pacs.api.get`: C-GET or C-MOVE,
or WADO-RS; atomic files, resumable, audited) goes into a cache folder inside the batch's
output folder (``OUT/pacs-cache/<node>/<study>/<series>/<sop>.dcm``), which then is an
ordinary folder SOURCE: same scanner, same content hashes, so a re-run fetches nothing that
is already there and analyses nothing already done.  Nothing leaves the machine; the
retrieved images stay under OUT (delete the cache folder when done).
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlsplit

from ..errors import UserError

PREFIX = "pacs://"

#: query key in the SOURCE -> :class:`imaging_assist.pacs.query.Query` field
KEYS = {"PatientID": "patient_id", "PatientName": "patient", "PatientBirthDate": "birth_date",
        "StudyDate": "date", "Modality": "modality", "AccessionNumber": "accession",
        "StudyDescription": "description", "StudyInstanceUID": "study_uid"}

#: most studies one SOURCE may retrieve (a query that matches the whole archive is a mistake)
MAX_STUDIES = 1000


def is_pacs_source(s: str) -> bool:
    return str(s).lower().startswith(PREFIX)


def parse(source: str):
    """(node name, :class:`~imaging_assist.pacs.query.Query`) of a ``pacs://`` SOURCE."""
    from ..pacs.query import Query

    u = urlsplit(source)
    node = u.netloc or u.path.strip("/")
    if not node:
        raise UserError(f"{source}: no node name (pacs://NODE?PatientID=...&Modality=...)")
    fields: dict[str, str] = {}
    for k, v in parse_qsl(u.query, keep_blank_values=True):
        if k not in KEYS:
            raise UserError(f"{source}: unknown query key {k!r} (known: {', '.join(KEYS)})")
        fields[KEYS[k]] = v
    if not fields:
        raise UserError(f"{source}: no query (e.g. pacs://{node}?PatientID=...&Modality=CR): a batch "
                        "does not retrieve a whole archive unasked")
    return node, Query(level="study", **fields).checked()


def retrieve(source: str, cache_root: str, echo=print) -> tuple[str, list[str]]:
    """Retrieve what ``source`` matches into ``cache_root/<node>``; returns (folder, notes).
    ``UserError`` (one line) for an unknown node, a bad query, an unreachable node or a
    query matching nothing."""
    from dataclasses import replace

    from ..pacs import api
    from ..pacs.nodes import PacsError, load_settings

    name, query = parse(source)
    settings = load_settings()
    if name not in settings.nodes:
        known = ", ".join(sorted(settings.nodes)) or "none configured"
        raise UserError(f"{source}: unknown PACS node {name!r} (configured: {known}; see "
                        "`imaging-assist pacs add-node`)")
    node = settings.nodes[name]
    folder = os.path.join(cache_root, _safe(name))
    notes: list[str] = []
    try:
        studies = api.find(node, query, settings, limit=MAX_STUDIES)
        if getattr(studies, "truncated", False):
            raise UserError(f"{source}: more than {MAX_STUDIES} studies match; narrow the query")
        if not studies:
            raise UserError(f"{source}: no study on {name} matches the query")
        n_inst = 0
        for st in studies:
            uid = st["study_uid"]
            series: list[str] = []
            if query.modality:
                rows = api.find(node, replace(query, level="series", study_uid=uid, description=""), settings)
                series = [r["series_uid"] for r in rows if r.get("series_uid")]
                if not series:
                    notes.append(f"{source}: study {uid} has no {query.modality} series")
                    continue
            res = api.get(node, uid, folder, series_uids=series, settings=settings)
            n_inst += res.written + res.skipped
            for f in res.failures:
                notes.append(f"{source}: study {uid}: instance {f.sop_instance_uid} not retrieved "
                             f"({f.reason})")
        echo(f"{source}: {len(studies)} study(ies), {n_inst} instance(s) in {folder}")
    except PacsError as e:
        raise UserError(f"{source}: {e}") from None
    return folder, notes


def _safe(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s) or "node"
