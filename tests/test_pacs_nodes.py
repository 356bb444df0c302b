"""PACS nodes: config file (0600), --node parsing, secrets never shown; query filter checks."""

import os
import stat

import pytest

from imaging_assist.pacs.nodes import (Node, PacsError, Settings, add_node, config_path,
                                       load_settings, parse_node, remove_node, save_settings)
from imaging_assist.pacs.query import Query, normalise_date

SECRET = "s3cr3t-Pa55"
TOKEN = "tok-ABCDEF-123456"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "cfg"))
    return tmp_path / "cfg"


def test_config_file_is_0600_and_round_trips(home):
    add_node(Node("web", "dicomweb", url="https://pacs.example/dicom-web/", auth="basic",
                  username="rad", password=SECRET))
    add_node(Node("bearer", "dicomweb", url="http://h:8042/dicom-web", auth="bearer", token=TOKEN))
    add_node(Node("pacs", "dimse", ae_title="ORTHANC", host="10.0.0.5", port=104))
    p = config_path()
    assert p == home / "pacs.json"
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    s = load_settings()
    assert s.nodes["web"].password == SECRET and s.nodes["web"].url == "https://pacs.example/dicom-web"
    assert s.nodes["pacs"].port == 104 and s.ae_title == "IMAGING_ASSIST"
    remove_node("bearer")
    assert set(load_settings().nodes) == {"web", "pacs"}
    with pytest.raises(PacsError, match="no configured node named 'nope'"):
        remove_node("nope")


def test_secrets_never_in_repr_display_or_public_dict(home):
    for n in (Node("w", "dicomweb", url="http://h/dicom-web", auth="basic", username="u", password=SECRET),
              Node("b", "dicomweb", url="http://h/dicom-web", auth="bearer", token=TOKEN)):
        n.validate()
        for text in (repr(n), str(n), n.display(), n.label(), repr(n.public_dict()), repr([n])):
            assert SECRET not in text and TOKEN not in text, text
    assert "***" in Node("w", "dicomweb", url="http://h", auth="basic", username="u",
                         password=SECRET).display()


def test_parse_node_forms(home):
    s = Settings(nodes={"main": Node("main", "dimse", ae_title="MAIN", host="pacs", port=11112)})
    assert parse_node("main", s).ae_title == "MAIN"
    n = parse_node("ORTHANC@127.0.0.1:4242", s)
    assert (n.kind, n.ae_title, n.host, n.port) == ("dimse", "ORTHANC", "127.0.0.1", 4242)
    n = parse_node("PACS@[::1]:104", s)
    assert n.host == "::1"
    w = parse_node("http://localhost:8042/dicom-web/", s)
    assert w.kind == "dicomweb" and w.url == "http://localhost:8042/dicom-web"
    for bad, msg in [("nowhere", "unknown node 'nowhere'"), ("A@h:70000", "invalid port"),
                     ("TOO_LONG_AE_TITLE_X@h:104", "unknown node"),
                     ("http://user:pw@h/dicom-web", "credentials")]:
        with pytest.raises(PacsError, match=msg):
            parse_node(bad, s)


def test_broken_config_is_one_line(home):
    home.mkdir(parents=True)
    (home / "pacs.json").write_text("{not json")
    with pytest.raises(PacsError, match="cannot read PACS settings"):
        load_settings()
    (home / "pacs.json").write_text(
        '{"nodes": {"x": {"kind": "dimse", "ae_title": "A", "host": "h", "port": 0}}}')
    with pytest.raises(PacsError, match="invalid port 0"):
        load_settings()


def test_save_replaces_atomically_and_keeps_0600(home):
    p = save_settings(Settings(ae_title="ME", storage_port=11200))
    os.chmod(p, 0o644)  # someone loosened it: the next save tightens it again
    save_settings(load_settings())
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert load_settings().storage_port == 11200
    assert not [f for f in home.iterdir() if f.name.startswith(".pacs-")]


def test_query_filters_are_checked():
    assert normalise_date("2024-01-31") == "20240131"
    assert normalise_date("20240101-") == "20240101-"
    assert normalise_date("-20241231") == "-20241231"
    for bad in ("2024", "20241301", "yesterday", "-"):
        with pytest.raises(PacsError, match="invalid date"):
            Query(date=bad).checked()
    with pytest.raises(PacsError, match="no backslash"):
        Query(patient="A\\B").checked()
    q = Query(patient="DOE*", modality="ct", level="series").checked()
    assert q.filters() == {"PatientName": "DOE*", "Modality": "CT"}
    assert "SeriesInstanceUID" in q.return_keys() and "ModalitiesInStudy" not in q.return_keys()
