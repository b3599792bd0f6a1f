"""Every real-Caffe case in shared/reference/oracle/layers, run through a resident Net in float32.

Each case is a small net of Input layers and the layers under test; the npz holds inputs,
parameters, the
outputs BVLC Caffe computed, and (when the case has a backward) top diffs and the resulting
gradients.
"""

import json

import numpy
import pytest
from numpy.testing import assert_allclose

from geeps_net.net import Net
from tests.conftest import REFERENCE

ORACLE = REFERENCE / "oracle" / "layers"
CASES = json.loads((ORACLE / "cases.json").read_text()) if ORACLE.is_dir() else {}
RTOL, ATOL = 1e-4, 1e-5


def load_case(name):
    """The case's Net (params set from the npz) and its arrays."""
    arrays = dict(numpy.load(ORACLE / name / "case.npz"))
    net = Net(ORACLE / name / "case.prototxt", phase=CASES[name]["phase"], seed=0)
    for key, value in arrays.items():
        if key.startswith("param/"):
            _, layer, i = key.split("/")
            net.params[layer][int(i)].data[...] = value
    return net, arrays


def run_case(name):
    """Forward (and backward) the case; returns (net, arrays)."""
    net, arrays = load_case(name)
    inputs = {k[3:]: v for k, v in arrays.items() if k.startswith("in/")}
    for blob in CASES[name].get("parameter_inputs", []):  # bottoms held by a Parameter layer
        layer = next(i for i, tops in enumerate(net.tops) if [t.name for t in tops] == [blob])
        net.params[net.layers[layer].name][0].data[...] = inputs.pop(blob)
    net.forward(**inputs)
    return net, arrays


def compare(got, want, what):
    assert got.shape == want.shape or got.size == want.size, (
        f"{what}: shape {got.shape} != {want.shape}"
    )
    assert_allclose(
        numpy.asarray(got).reshape(want.shape), want, rtol=RTOL, atol=ATOL, err_msg=what
    )


@pytest.mark.skipif(not CASES, reason="shared/reference/oracle not laid out beside the checkout")
@pytest.mark.parametrize("name", sorted(CASES))
def test_oracle_case(name):
    net, arrays = run_case(name)
    for key, want in arrays.items():
        kind, _, rest = key.partition("/")
        if kind == "out":
            compare(net.blobs[rest].data, want, key)
        elif kind == "param_after":
            layer, i = rest.split("/")
            compare(net.params[layer][int(i)].data, want, key)
    if not CASES[name].get("backward"):
        return
    net.clear_param_diffs()
    for key, value in arrays.items():
        if key.startswith("topdiff/"):
            net.blobs[key[8:]].diff[...] = value
    net.backward()
    for key, want in arrays.items():
        kind, _, rest = key.partition("/")
        if kind == "grad":
            compare(net.blobs[rest].diff, want, key)
        elif kind == "pgrad":
            layer, i = rest.split("/")
            compare(net.params[layer][int(i)].diff, want, key)
