"""Normalization and per-channel affine layers: BatchNorm, Scale, Bias, MVN (Caffe's semantics)."""

from __future__ import annotations

from geeps_net.layer import TEST, Layer, register
from geeps_net.layers.shape import canonical_axis
from geeps_net.proto import caffe_pb2


@register("BatchNorm")
class BatchNormLayer(Layer):
    """y = (x - mean_c) / sqrt(var_c + eps) per channel c (axis 1), over N and the spatial axes.

    Learnable blobs (all zero at start, never updated by the solver): 0 mean sum (C), 1 variance sum
    (C), 2 moving-average factor (1). TRAIN without use_global_stats uses the batch's (biased)
    statistics and folds them into the blobs: b2 = maf*b2 + 1; b0 = maf*b0 + mean;
    b1 = maf*b1 + m/(m-1)*var (m = N*H*W). Global stats: mean = b0/b2, var = b1/b2 (0 if b2 = 0).
    Internal blobs: "std" (C) = sqrt(var + eps), and "x_norm" (= y) when batch statistics are used.
    """

    backward_reads = frozenset({"top_diff"})  # x_norm and std are internal blobs

    def setup(self, bottoms, tops):
        param = self.layer_param.batch_norm_param
        self.use_global_stats = (
            param.use_global_stats if param.HasField("use_global_stats") else self.phase == TEST
        )
        self.maf, self.eps = param.moving_average_fraction, param.eps
        self.channels = 1 if bottoms[0].num_axes == 1 else bottoms[0].shape[1]
        for shape in ((self.channels,), (self.channels,), (1,)):
            self.add_param(shape)
        # The statistics are not learned: lr_mult 0 for each, as Caffe sets (and insists on).
        specs = self.layer_param.param
        for i in range(3):
            if i < len(specs):
                if specs[i].lr_mult != 0:
                    raise self.error("cannot configure batch normalization statistics as params")
            else:
                specs.add(lr_mult=0.0)

    def reshape(self, bottoms, tops):
        if bottoms[0].num_axes > 1 and bottoms[0].shape[1] != self.channels:
            raise self.error(f"bottom shape {bottoms[0].shape}: expected {self.channels} channels")
        tops[0].reshape(bottoms[0].shape)
        n = bottoms[0].shape[0] if bottoms[0].num_axes else 1
        self.view = (n, self.channels, bottoms[0].count // max(n * self.channels, 1))
        self.add_internal("std", (self.channels,))
        if not self.use_global_stats:
            self.add_internal("x_norm", bottoms[0].shape)

    def forward(self, xp, bottoms, tops):
        x = bottoms[0].data.reshape(self.view)
        b0, b1, b2 = (blob.data for blob in self.blobs)
        if self.use_global_stats:
            scale = xp.where(b2 == 0, 0, 1 / xp.where(b2 == 0, 1, b2))
            mean, var = scale * b0, scale * b1
        else:
            mean = x.mean(axis=(0, 2))
            var = ((x - mean[:, None]) ** 2).mean(axis=(0, 2))
            m = self.view[0] * self.view[2]
            b2 *= self.maf
            b2 += 1
            b0 *= self.maf
            b0 += mean
            b1 *= self.maf
            b1 += (m / (m - 1) if m > 1 else 1) * var
        std = self.internals["std"].data
        std[...] = xp.sqrt(var + self.eps)
        y = ((x - mean[:, None]) / std[:, None]).reshape(tops[0].shape)
        if not self.use_global_stats:
            self.internals["x_norm"].data[...] = y
        tops[0].data[...] = y

    def backward(self, xp, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        dy = tops[0].diff.reshape(self.view)
        std = self.internals["std"].data[:, None]
        if self.use_global_stats:
            dx = dy / std  # the statistics are constants here
        else:
            y = self.internals["x_norm"].data.reshape(self.view)
            mean_dy = dy.mean(axis=(0, 2))[:, None]
            mean_dy_y = (dy * y).mean(axis=(0, 2))[:, None]
            dx = (dy - mean_dy - mean_dy_y * y) / std
        bottoms[0].diff[...] = dx.reshape(bottoms[0].shape)


def _param_shape(layer, bottom, axis: int, num_axes: int) -> tuple:
    """Shape of a learned Scale/Bias blob: bottom.shape[axis : axis + num_axes]; -1: to the end."""
    axis = canonical_axis(layer, bottom, axis)
    if num_axes < -1:
        raise layer.error(f"num_axes {num_axes}: must be >= 0, or -1 to the end of bottom 0")
    if num_axes >= 0 and bottom.num_axes < axis + num_axes:
        raise layer.error(
            f"a blob of {num_axes} axes from axis {axis} extends past bottom shape {bottom.shape}"
        )
    return bottom.shape[axis:] if num_axes == -1 else bottom.shape[axis : axis + num_axes]


def _broadcast_view(layer, bottom, axis: int, shape) -> tuple:
    """(outer, dim, inner): the view of bottom that broadcasts against a blob of `shape` laid on
    bottom axes from `axis` on; a scalar blob always uses axis 0, as Caffe does."""
    axis = 0 if len(shape) == 0 else canonical_axis(layer, bottom, axis)
    if bottom.shape[axis : axis + len(shape)] != tuple(shape):
        raise layer.error(
            f"shape {tuple(shape)} does not match bottom {bottom.shape} at axis {axis}"
        )
    dim = bottom.count_range(axis, axis + len(shape))
    return bottom.count_range(0, axis), dim, bottom.count_range(axis + len(shape))


class _AffineLayer(Layer):
    """Scale and Bias: y = x (op) broadcast(p), p a learned blob or the second bottom."""

    num_bottoms = (1, 2)

    def operand(self, bottoms):
        """The blob combined with x: bottom 1 when given, else learned blob 0."""
        return bottoms[1] if len(bottoms) > 1 else self.blobs[0]

    def reduce_to(self, g, blob, accumulate: bool) -> None:
        """Sum g (outer, dim, inner) over outer and inner into `blob`'s diff (+= for a param)."""
        total = g.sum(axis=(0, 2)).reshape(blob.shape)
        if accumulate:
            blob.diff[...] += total
        else:
            blob.diff[...] = total


@register("Bias")
class BiasLayer(_AffineLayer):
    """y = x + broadcast(b); b is learned blob 0 (shape bottom.shape[axis : axis + num_axes], filler
    default constant 0) or bottom 1 (laid on bottom 0 from `axis`)."""

    backward_reads = frozenset({"top_diff"})

    def setup(self, bottoms, tops):
        param = self.layer_param.bias_param
        if len(bottoms) == 1:
            self.add_param(_param_shape(self, bottoms[0], param.axis, param.num_axes), param.filler)

    def reshape(self, bottoms, tops):
        b = self.operand(bottoms)
        self.view = _broadcast_view(self, bottoms[0], self.layer_param.bias_param.axis, b.shape)
        tops[0].reshape(bottoms[0].shape)

    def forward(self, xp, bottoms, tops):
        b = self.operand(bottoms).data.reshape(1, self.view[1], 1)
        x = bottoms[0].data.reshape(self.view)
        tops[0].data[...] = (x + b).reshape(tops[0].shape)

    def backward(self, xp, tops, propagate_down, bottoms):
        dy = tops[0].diff.reshape(self.view)
        if len(bottoms) == 1:
            self.reduce_to(dy, self.blobs[0], accumulate=True)
        elif propagate_down[1]:
            self.reduce_to(dy, bottoms[1], accumulate=False)
        if propagate_down[0] and bottoms[0] is not tops[0]:
            bottoms[0].diff[...] = tops[0].diff


@register("Scale")
class ScaleLayer(_AffineLayer):
    """y = x * broadcast(s) (+ broadcast(b) with bias_term). s is learned blob 0 (shape
    bottom.shape[axis : axis + num_axes], num_axes -1 = to the end, 0 = scalar; filler default
    constant 1) or bottom 1; the bias is the next learned blob (same shape, bias_filler). In place,
    x is kept in the internal blob "bottom_copy" for the gradient of s."""

    backward_reads = frozenset({"bottom_data", "top_diff"})

    def setup(self, bottoms, tops):
        param = self.layer_param.scale_param
        if len(bottoms) == 1:
            filler = param.filler
            if not param.HasField("filler"):
                filler = caffe_pb2.FillerParameter(type="constant", value=1)  # identity
            self.add_param(_param_shape(self, bottoms[0], param.axis, param.num_axes), filler)
        if param.bias_term:
            shape = bottoms[1].shape if len(bottoms) > 1 else self.blobs[0].shape
            self.add_param(shape, param.bias_filler)

    def reshape(self, bottoms, tops):
        s = self.operand(bottoms)
        self.view = _broadcast_view(self, bottoms[0], self.layer_param.scale_param.axis, s.shape)
        tops[0].reshape(bottoms[0].shape)
        if bottoms[0] is tops[0]:
            self.add_internal("bottom_copy", bottoms[0].shape)

    def forward(self, xp, bottoms, tops):
        x = bottoms[0].data
        if bottoms[0] is tops[0]:
            self.internals["bottom_copy"].data[...] = x
        y = x.reshape(self.view) * self.operand(bottoms).data.reshape(1, self.view[1], 1)
        if self.layer_param.scale_param.bias_term:
            y += self.blobs[-1].data.reshape(1, self.view[1], 1)
        tops[0].data[...] = y.reshape(tops[0].shape)

    def backward(self, xp, tops, propagate_down, bottoms):
        dy = tops[0].diff.reshape(self.view)
        if self.layer_param.scale_param.bias_term:
            self.reduce_to(dy, self.blobs[-1], accumulate=True)
        s = self.operand(bottoms)
        learned = len(bottoms) == 1
        if learned or propagate_down[1]:
            x = self.internals["bottom_copy"] if bottoms[0] is tops[0] else bottoms[0]
            self.reduce_to(dy * x.data.reshape(self.view), s, accumulate=learned)
        if propagate_down[0]:
            dx = dy * s.data.reshape(1, self.view[1], 1)
            bottoms[0].diff[...] = dx.reshape(bottoms[0].shape)


@register("MVN")
class MVNLayer(Layer):
    """Per item (and per channel unless across_channels): y = x - mean, then with
    normalize_variance (default) y /= (sqrt(var) + eps), eps added after the root.
    Internal blob "std" = sqrt(var) + eps."""

    def setup(self, bottoms, tops):
        param = self.layer_param.mvn_param
        self.normalize, self.eps = param.normalize_variance, param.eps
        reads = {"top_data", "top_diff"} if self.normalize else {"top_diff"}
        self.backward_reads = frozenset(reads)

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        num = shape[0] if shape else 1
        if not self.layer_param.mvn_param.across_channels:
            num *= shape[1] if len(shape) > 1 else 1
        self.view = (num, bottoms[0].count // max(num, 1))
        tops[0].reshape(shape)
        if self.normalize:
            self.add_internal("std", (num, 1))

    def forward(self, xp, bottoms, tops):
        x = bottoms[0].data.reshape(self.view)
        y = x - x.mean(axis=1, keepdims=True)
        if self.normalize:
            std = self.internals["std"].data
            std[...] = xp.sqrt((y * y).mean(axis=1, keepdims=True)) + self.eps
            y /= std
        tops[0].data[...] = y.reshape(tops[0].shape)

    def backward(self, xp, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        dy = tops[0].diff.reshape(self.view)
        dx = dy - dy.mean(axis=1, keepdims=True)
        if self.normalize:
            # Caffe's formula: (dy - mean(dy) - mean(dy * y) * y) / std; it treats eps as if it
            # were inside the root, which differs from the exact gradient by O(eps / std).
            y = tops[0].data.reshape(self.view)
            dx -= (dy * y).mean(axis=1, keepdims=True) * y
            dx /= self.internals["std"].data
        bottoms[0].diff[...] = dx.reshape(bottoms[0].shape)
