"""Dropout: the one stochastic neuron layer; its mask is an internal blob, so the PS keeps it
from forward to backward like any other local data."""

from __future__ import annotations

import numpy

from geeps_net.layer import TRAIN, register
from geeps_net.layers.activation import NeuronLayer


@register("Dropout")
class DropoutLayer(NeuronLayer):
    """TRAIN: y = x * mask / (1 - ratio), mask ~ Bernoulli(1 - ratio) drawn from self.rng and kept
    in the internal "mask" blob; TEST: y = x. dx = dy * mask / (1 - ratio) (TRAIN), dy (TEST).
    """

    backward_reads = frozenset({"top_diff"})

    def setup(self, bottoms, tops):
        self.ratio = self.layer_param.dropout_param.dropout_ratio
        if not 0 <= self.ratio < 1:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio}")
        self.scale = 1.0 / (1.0 - self.ratio)

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        if self.phase == TRAIN:
            self.add_internal("mask", bottoms[0].shape, "bool")

    def forward(self, xp, bottoms, tops):
        x, y = bottoms[0].data, tops[0].data
        if self.phase != TRAIN:
            if y is not x:
                y[...] = x
            return
        mask = self.internals["mask"].data
        # Drawn on the host from the layer's seeded generator, so CPU and GPU runs repeat exactly.
        mask[...] = xp.asarray(self.rng.random(mask.shape, dtype=numpy.float32) >= self.ratio)
        xp.multiply(x, mask, out=y)
        y *= self.scale

    def backward(self, xp, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        dx, dy = bottoms[0].diff, tops[0].diff
        if self.phase != TRAIN:
            if dx is not dy:
                dx[...] = dy
            return
        xp.multiply(dy, self.internals["mask"].data, out=dx)
        dx *= self.scale
