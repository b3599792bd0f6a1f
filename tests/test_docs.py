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
        for name in ("faq.md", "architecture.md", "prototxt.md", "quickstart.md", "python.md"):
            if f"({name}" in text:
                assert (ROOT / "docs" / name).is_file()


def python_blocks(doc: Path) -> list[str]:
    """The ```python blocks of a Markdown page, in order."""
    blocks, current = [], None
    for line in doc.read_text().splitlines():
        if current is None and line.strip() == "```python":
            current = []
        elif current is not None and line.strip() == "```":
            blocks.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def test_python_page_runs(tmp_path, monkeypatch):
    """docs/python.md's examples run as written, in order, in one namespace; the training one
    on the tiny test solver instead of LeNet's (which needs the Fashion-MNIST LMDBs)."""
    blocks = python_blocks(ROOT / "docs" / "python.md")
    assert len(blocks) == 3
    tiny = ROOT / "tests" / "bad_inputs" / "good" / "tiny_solver.prototxt"
    blocks[1] = blocks[1].replace("solvers/lenet_solver.prototxt", str(tiny))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block.replace('"models/', f'"{ROOT}/models/'), "python.md", "exec"), namespace)
    assert namespace["solver"].iter == 100 and (tmp_path / "lenet.caffemodel").is_file()
    assert namespace["label"] == 0 and namespace["pixels"].shape == (1, 4, 4)
