"""The docs stay true: the layer table matches the registry, and the zoo list matches models/."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_layer_table_is_current(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import layer_table

    doc = layer_table.DOC.read_text()
    assert layer_table.with_table(doc) == doc, "run python tools/layer_table.py"


def test_layer_table_lists_every_caffe_type(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import layer_table

    text = layer_table.table()
    for name in layer_table.CAFFE_TYPES:
        assert f"| {name} | " in text
    assert "| Recurrent | declined" in text


def test_quickstart_names_every_zoo_model():
    quickstart = (ROOT / "docs" / "quickstart.md").read_text()
    for model in sorted(p.name for p in (ROOT / "models").iterdir() if p.is_dir()):
        assert f"`{model}`" in quickstart, model


def test_doc_links_resolve():
    for doc in (ROOT / "docs").glob("*.md"):
        text = doc.read_text()
        for name in ("faq.md", "architecture.md", "prototxt.md", "quickstart.md"):
            if f"({name}" in text:
                assert (ROOT / "docs" / name).is_file()
