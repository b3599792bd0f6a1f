import sys
from pathlib import Path

import numpy
import pytest
from numpy.testing import assert_allclose

from geeps_net.errors import LayerError
from geeps_net.testing import LayerRig, check_gradient, forward_once, make_layer

HERE = Path(__file__).resolve().parent


def python_layer(module, cls, param_str="", name="py"):
    """A Python layer with bottom "x" and top "y" (a Python layer's blob counts are its class's)."""
    text = f'name: "{name}" type: "Python" bottom: "x" top: "y"'
    text += f' python_param {{ module: "{module}" layer: "{cls}"'
    return make_layer(text + (f' param_str: "{param_str}" }}' if param_str else " }"))


@pytest.fixture
def user_module(monkeypatch):
    """Make tests/layers/user_layer_module.py importable, as a user's PYTHONPATH would."""
    monkeypatch.syspath_prepend(str(HERE))
    return "user_layer_module"


def test_user_layer_with_param_and_param_str(xp, user_module):
    layer = python_layer(user_module, "ScaledMultiply", "k=2.5")
    x = numpy.random.default_rng(0).standard_normal((2, 3, 4))
    w = numpy.array([0.5, -1.0, 2.0])
    y = forward_once(xp, layer, x, params=[w])
    assert layer.param_str == "k=2.5" and layer.impl.k == 2.5
    assert [b.shape for b in layer.blobs] == [(3,)] and layer.blobs is layer.impl.blobs
    assert_allclose(y, 2.5 * w[None, :, None] * x)
    layer = python_layer(user_module, "ScaledMultiply", "k=-1.5")
    assert check_gradient(xp, layer, [(2, 3, 4)], params=[w]) == 24 + 3


def test_user_layer_sees_dtype_and_filler(xp, user_module):
    layer = python_layer(user_module, "ScaledMultiply", "k=1")
    rig = LayerRig(xp, layer, [numpy.ones((1, 2, 2))], dtype="float64")
    assert layer.impl.dtype == numpy.float64 and layer.blobs[0].dtype == numpy.float64
    assert_allclose(rig.forward()[0], numpy.ones((1, 2, 2)))  # constant-1 filler from the user
    with pytest.raises(LayerError, match='layer "py" \\(Python\\): param_str must be "k=<number>"'):
        LayerRig(xp, python_layer(user_module, "ScaledMultiply", "q=1"), [numpy.ones((1, 2))])


def test_duck_typed_user_layer(xp, user_module):
    layer = python_layer(user_module, "DuckSquare")
    x = numpy.random.default_rng(1).standard_normal((3, 4))
    assert_allclose(forward_once(xp, layer, x), x**2)
    assert layer.blobs == [] and layer.backward_reads >= {"bottom_data", "top_diff"}
    assert layer.num_bottoms == (0, None) and layer.allow_force_backward(0)
    check_gradient(xp, python_layer(user_module, "DuckSquare"), [(3, 4)])


def test_module_found_in_current_directory(monkeypatch, tmp_path):
    (tmp_path / "cwd_user_layer.py").write_text(
        "class Twice:\n"
        "    def __init__(self, layer_param, phase): pass\n"
        "    def reshape(self, bottoms, tops): tops[0].reshape(bottoms[0].shape)\n"
        "    def forward(self, xp, bottoms, tops): tops[0].data[...] = 2 * bottoms[0].data\n"
        "    def backward(self, xp, tops, propagate_down, bottoms):\n"
        "        bottoms[0].diff[...] = 2 * tops[0].diff\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "cwd_user_layer", raising=False)
    path_before = list(sys.path)
    assert_allclose(
        forward_once(numpy, python_layer("cwd_user_layer", "Twice"), [1.0, 2.0]), [2, 4]
    )
    assert sys.path == path_before  # the current directory was searched, not left on sys.path


@pytest.mark.parametrize(
    "module, cls, message",
    [
        ("no_such_user_module", "C", "no module named 'no_such_user_module'"),
        ("user_layer_module", "Missing", "module 'user_layer_module' has no class 'Missing'"),
        ("user_layer_module", "NOT_A_CLASS", "user_layer_module.NOT_A_CLASS is not a class"),
        ("user_layer_module", "NoForward", r"has no forward\(xp, bottoms, tops\)"),
        ("user_layer_module", "PycaffeStyle", r"forward\(self, bottom, top\) does not take"),
    ],
)
def test_bad_module_or_class_is_one_line(user_module, module, cls, message):
    with pytest.raises(LayerError, match=message) as info:
        python_layer(module, cls)
    text = str(info.value)
    assert text.startswith('layer "py" (Python): ') and "\n" not in text


def test_module_that_fails_to_import(monkeypatch, tmp_path):
    (tmp_path / "broken_user_layer.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(LayerError, match="importing module 'broken_user_layer' failed: Module"):
        python_layer("broken_user_layer", "C")


def test_python_param_needs_module_and_layer():
    with pytest.raises(LayerError, match="needs both `module` and `layer`"):
        make_layer('name: "py" type: "Python" python_param { module: "m" }')


def test_user_layer_in_a_net(user_module):
    from geeps_net.net import Net

    net = Net(
        'name: "n" force_backward: true layer { name: "in" type: "Input" top: "x"'
        " input_param { shape { dim: 2 dim: 3 dim: 2 } } }"
        ' layer { name: "py" type: "Python" bottom: "x" top: "y" loss_weight: 1'
        f' python_param {{ module: "{user_module}" layer: "ScaledMultiply" param_str: "k=2" }} }}'
    )
    x = numpy.random.default_rng(2).standard_normal((2, 3, 2))
    net.forward(x=x)
    assert net.loss == pytest.approx(2 * x.sum(), rel=1e-5)  # w starts at the user's filler, 1
    assert_allclose(net.backward()["x"], numpy.full(x.shape, 2.0))
    assert_allclose(net.params["py"][0].diff, 2 * x.sum(axis=(0, 2)), rtol=1e-5)
