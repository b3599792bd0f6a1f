"""Elementwise activations ("neuron" layers): one bottom, one top of the same shape, in place allowed."""

from __future__ import annotations

from geeps_net.layer import Layer, register


class NeuronLayer(Layer):
    """Base of elementwise layers: top has the bottom's shape."""

    def reshape(self, bottoms, tops):
        tops[0].reshape(bottoms[0].shape)


@register("ReLU")
class ReLULayer(NeuronLayer):
    """y = x if x > 0 else negative_slope * x, elementwise (Caffe's ReLU). Safe in place."""

    backward_reads = frozenset({"bottom_data", "top_diff"})  # in place, x is y: same sign, same mask

    def setup(self, bottoms, tops):
        self.slope = self.layer_param.relu_param.negative_slope

    def forward(self, xp, bottoms, tops):
        x = bottoms[0].data
        if self.slope == 0:
            xp.maximum(x, 0, out=tops[0].data)
        else:
            tops[0].data[...] = xp.where(x > 0, x, self.slope * x)

    def backward(self, xp, tops, propagate_down, bottoms):
        if propagate_down[0]:
            x, dy = bottoms[0].data, tops[0].diff
            if self.slope == 0:
                bottoms[0].diff[...] = dy * (x > 0)
            else:
                bottoms[0].diff[...] = xp.where(x > 0, dy, self.slope * dy)
