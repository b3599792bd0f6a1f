"""User layers that tests/layers/test_python_layer.py loads through `type: "Python"`.

Written as a user of geeps-net would write them: plain classes in a module on sys.path.
"""

from geeps_net.layer import Layer
from geeps_net.proto import caffe_pb2


class ScaledMultiply(Layer):
    """top[n, c, ...] = k * w[c] * bottom[n, c, ...]; w (C,) learnable, k from param_str "k=..."."""

    def setup(self, bottoms, tops):
        key, _, value = self.param_str.partition("=")
        if key.strip() != "k":
            raise self.error(f'param_str must be "k=<number>", got {self.param_str!r}')
        self.k = float(value)
        self.add_param((bottoms[0].shape[1],), caffe_pb2.FillerParameter(type="constant", value=1))

    def reshape(self, bottoms, tops):
        tops[0].reshape(bottoms[0].shape)

    def _w(self, ndim):
        return self.blobs[0].data.reshape((1, -1) + (1,) * (ndim - 2))

    def forward(self, xp, bottoms, tops):
        x = bottoms[0].data
        tops[0].data[...] = self.k * self._w(x.ndim) * x

    def backward(self, xp, tops, propagate_down, bottoms):
        x, dy = bottoms[0].data, tops[0].diff
        axes = (0,) + tuple(range(2, x.ndim))
        self.blobs[0].diff += self.k * (dy * x).sum(axis=axes)
        if propagate_down[0]:
            bottoms[0].diff[...] = self.k * self._w(x.ndim) * dy


class DuckSquare:
    """Not a Layer subclass: top = bottom ** 2, duck-typing the contract."""

    def __init__(self, layer_param, phase):
        self.layer_param = layer_param

    def reshape(self, bottoms, tops):
        tops[0].reshape(bottoms[0].shape)

    def forward(self, xp, bottoms, tops):
        tops[0].data[...] = bottoms[0].data ** 2

    def backward(self, xp, tops, propagate_down, bottoms):
        if propagate_down[0]:
            bottoms[0].diff[...] = 2 * bottoms[0].data * tops[0].diff


class PycaffeStyle:
    """Written for pycaffe (forward(bottom, top)): not this project's contract."""

    def __init__(self, layer_param, phase):
        pass

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


class NoForward:
    """Lacks forward."""

    def __init__(self, layer_param, phase):
        pass

    def reshape(self, bottoms, tops):
        pass

    def backward(self, xp, tops, propagate_down, bottoms):
        pass


NOT_A_CLASS = 3
