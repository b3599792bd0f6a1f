"""Write the supported-layer table of docs/prototxt.md from the layer registry, so it stays true.

    python tools/layer_table.py           # rewrite the table between docs/prototxt.md's markers
    python tools/layer_table.py --check   # exit 1 if the committed table differs

Every type BVLC Caffe registers is listed: "supported" when geeps_net.layer.LAYER_TYPES has it (with
the module that implements it and its layer test file), "declined" otherwise, with the
reason. Types this project adds beyond Caffe are listed as "extra".
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "prototxt.md"
BEGIN, END = "<!-- layer-table:begin -->", "<!-- layer-table:end -->"

# The type strings BVLC Caffe registers (1.0, plus Clip and Swish from after 1.0).
CAFFE_TYPES = """AbsVal Accuracy ArgMax BatchNorm BatchReindex Bias BNLL Clip Concat ContrastiveLoss
Convolution Crop Data Deconvolution Dropout DummyData ELU Eltwise Embed EuclideanLoss Exp Filter
Flatten HDF5Data HDF5Output HingeLoss Im2col ImageData InfogainLoss InnerProduct Input Log LRN LSTM
LSTMUnit MemoryData MultinomialLogisticLoss MVN Parameter Pooling Power PReLU Python Recurrent
Reduction ReLU Reshape RNN Scale Sigmoid SigmoidCrossEntropyLoss Silence Slice Softmax
SoftmaxWithLoss Split SPP Swish TanH Threshold Tile WindowData""".split()

DECLINED = {
    "Recurrent": "abstract base in Caffe, never instantiated: use RNN or LSTM",
}
# Registered so a net naming them fails at setup with a clear error, but not implemented.
REFUSED_AT_SETUP = {
    "WindowData": "R-CNN window files; registered only to refuse with an error naming the layer",
}


def test_file(type_name: str, module: str) -> str | None:
    """The layer test file for a type: the implementing module's own test file when it names the
    type as a string literal, else the first tests/layers file that does."""
    quoted = re.compile(rf"""["']{re.escape(type_name)}["'\\]""")
    own = ROOT / "tests" / "layers" / f"test_{module.rsplit('.', 1)[-1]}.py"
    candidates = [own, *sorted((ROOT / "tests" / "layers").glob("test_*.py"))]
    for path in candidates:
        if path.is_file() and quoted.search(path.read_text()):
            return str(path.relative_to(ROOT))
    return None


def table() -> str:
    """The Markdown table (no markers)."""
    sys.path.insert(0, str(ROOT))
    import geeps_net.layers  # noqa: F401  (registers every built-in layer)
    from geeps_net.layer import LAYER_TYPES

    rows = ["| Caffe type | status | implemented in | test |", "|---|---|---|---|"]
    for name in sorted(set(CAFFE_TYPES) | set(LAYER_TYPES), key=str.lower):
        cls = LAYER_TYPES.get(name)
        if cls is None:
            reason = DECLINED.get(name, "not implemented yet")
            rows.append(f"| {name} | declined: {reason} | | |")
            continue
        status = "supported" if name in CAFFE_TYPES else "extra (not in Caffe)"
        if name in REFUSED_AT_SETUP:
            status = f"declined: {REFUSED_AT_SETUP[name]}"
        module = cls.__module__
        test = test_file(name, module)
        test = f"`{test}`" if test else "none"
        rows.append(f"| {name} | {status} | `{module.replace('.', '/')}.py` | {test} |")
    return "\n".join(rows) + "\n"


def with_table(doc: str) -> str:
    """`doc` with the text between the markers replaced by the current table."""
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    return doc[:start] + "\n" + table() + doc[end:]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    doc = DOC.read_text()
    new = with_table(doc)
    if args.check:
        if new != doc:
            print(f"{DOC}: out of date: run python tools/layer_table.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
