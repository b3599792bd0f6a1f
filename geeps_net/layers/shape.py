"""Layers that move data without arithmetic: Concat, Slice, Split, Flatten, Reshape, Silence, Crop,
Tile, BatchReindex, Filter.

Blobs do not share memory here (the parameter server hands each blob its own buffer), so where Caffe
shares a bottom's data with a top (Reshape, Flatten, one-bottom Concat, Split) these layers copy
data forward and diffs backward.
"""

from __future__ import annotations

import math

from geeps_net.backend import scatter_add
from geeps_net.layer import TRAIN, Layer, register

_TOP_DIFF = frozenset({"top_diff"})


def canonical_axis(layer: Layer, blob, axis: int) -> int:
    """Caffe's CanonicalAxisIndex on `blob`; the layer's error when `axis` is out of range."""
    try:
        return blob.canonical_axis(axis)
    except ValueError as e:
        raise layer.error(str(e)) from None


def _legacy_axis(layer: Layer, param, legacy: str, blob) -> int:
    """`axis`, or the legacy unsigned field `legacy` (concat_dim / slice_dim) when it is set."""
    if param.HasField("axis") and param.HasField(legacy):
        raise layer.error(f"either axis or {legacy} should be specified; not both")
    if param.HasField(legacy):
        axis = getattr(param, legacy)
        if axis >= blob.num_axes:
            raise layer.error(f"{legacy} {axis} out of range for a {blob.num_axes}-D bottom")
        return axis
    return canonical_axis(layer, blob, param.axis)


def _along(axis: int, start: int, stop: int) -> tuple:
    """Index selecting [start, stop) on `axis` and everything on the other axes."""
    return (slice(None),) * axis + (slice(start, stop),)


@register("Concat")
class ConcatLayer(Layer):
    """Top = the bottoms joined along `axis` (default 1, legacy concat_dim); other dims agree."""

    num_bottoms = (1, None)
    backward_reads = _TOP_DIFF

    def reshape(self, bottoms, tops):
        first = bottoms[0]
        self.axis = _legacy_axis(self, self.layer_param.concat_param, "concat_dim", first)
        shape = list(first.shape)
        for i, blob in enumerate(bottoms[1:], 1):
            other = list(blob.shape)
            if len(other) != len(shape) or any(
                a != b for j, (a, b) in enumerate(zip(shape, other, strict=True)) if j != self.axis
            ):
                raise self.error(
                    f"bottom {i} has shape {blob.shape}; all must match {first.shape} "
                    f"except on axis {self.axis}"
                )
            shape[self.axis] += other[self.axis]
        tops[0].reshape(shape)

    def forward(self, xp, bottoms, tops):
        xp.concatenate([b.data for b in bottoms], axis=self.axis, out=tops[0].data)

    def backward(self, xp, tops, propagate_down, bottoms):
        start = 0
        for blob, wanted in zip(bottoms, propagate_down, strict=True):
            stop = start + blob.shape[self.axis]
            if wanted:
                blob.diff[...] = tops[0].diff[_along(self.axis, start, stop)]
            start = stop


@register("Slice")
class SliceLayer(Layer):
    """Tops = consecutive pieces of the bottom along `axis` (legacy slice_dim), cut at `slice_point`
    (k - 1 increasing indices for k tops), or equal pieces when no slice_point is given."""

    num_tops = (1, None)
    backward_reads = _TOP_DIFF

    def reshape(self, bottoms, tops):
        param = self.layer_param.slice_param
        self.axis = _legacy_axis(self, param, "slice_dim", bottoms[0])
        length = bottoms[0].shape[self.axis]
        points = list(param.slice_point)
        if points:
            if len(points) != len(tops) - 1:
                raise self.error(
                    f"{len(points)} slice_point(s) for {len(tops)} tops; need tops - 1"
                )
            if (
                any(b <= a for a, b in zip([0, *points], points, strict=False))
                or points[-1] > length
            ):
                raise self.error(
                    f"slice_point {points} must increase strictly within (0, {length}] on axis "
                    f"{self.axis}"
                )
            sizes = [b - a for a, b in zip([0, *points], [*points, length], strict=True)]
        else:
            if length % len(tops):
                raise self.error(
                    f"{len(tops)} tops do not evenly divide the slice axis ({length}); "
                    "give slice_point"
                )
            sizes = [length // len(tops)] * len(tops)
        for top, size in zip(tops, sizes, strict=True):
            shape = list(bottoms[0].shape)
            shape[self.axis] = size
            top.reshape(shape)

    def forward(self, xp, bottoms, tops):
        start = 0
        for top in tops:
            stop = start + top.shape[self.axis]
            top.data[...] = bottoms[0].data[_along(self.axis, start, stop)]
            start = stop

    def backward(self, xp, tops, propagate_down, bottoms):
        if propagate_down[0]:
            xp.concatenate([t.diff for t in tops], axis=self.axis, out=bottoms[0].diff)


@register("Split")
class SplitLayer(Layer):
    """Each top = a copy of the bottom; bottom diff = the sum of the top diffs (Net-inserted)."""

    num_tops = (1, None)
    backward_reads = _TOP_DIFF

    def reshape(self, bottoms, tops):
        if any(top is bottoms[0] for top in tops):
            raise self.error("does not allow in-place computation")
        for top in tops:
            top.reshape(bottoms[0].shape)

    def forward(self, xp, bottoms, tops):
        for top in tops:
            top.data[...] = bottoms[0].data

    def backward(self, xp, tops, propagate_down, bottoms):
        if propagate_down[0]:
            diff = bottoms[0].diff
            diff[...] = tops[0].diff
            for top in tops[1:]:
                diff += top.diff


class _CopyReshapeLayer(Layer):
    """Top = the bottom's values in another shape (Caffe shares memory; here data/diff copy)."""

    backward_reads = _TOP_DIFF

    def reshape(self, bottoms, tops):
        if bottoms[0] is tops[0]:
            raise self.error("does not allow in-place computation")
        tops[0].reshape(self.top_shape(bottoms[0]))

    def top_shape(self, bottom) -> list[int]:
        raise NotImplementedError

    def forward(self, xp, bottoms, tops):
        tops[0].data[...] = bottoms[0].data.reshape(tops[0].shape)

    def backward(self, xp, tops, propagate_down, bottoms):
        if propagate_down[0]:
            bottoms[0].diff[...] = tops[0].diff.reshape(bottoms[0].shape)


@register("Flatten")
class FlattenLayer(_CopyReshapeLayer):
    """Collapses axes `axis`..`end_axis` (defaults 1, -1) into one: (N, C, H, W) -> (N, C*H*W)."""

    def top_shape(self, bottom):
        param = self.layer_param.flatten_param
        start = canonical_axis(self, bottom, param.axis)
        end = canonical_axis(self, bottom, param.end_axis)
        return [*bottom.shape[:start], bottom.count_range(start, end + 1), *bottom.shape[end + 1 :]]


@register("Reshape")
class ReshapeLayer(_CopyReshapeLayer):
    """Replaces bottom axes [axis, axis + num_axes) by reshape_param.shape: a dim of 0 copies the
    bottom's dim at that position, one dim of -1 is inferred from the count."""

    def setup(self, bottoms, tops):
        dims = list(self.layer_param.reshape_param.shape.dim)
        if dims.count(-1) > 1:
            raise self.error(f"shape {dims} has more than one -1 dim; at most one may be inferred")
        if any(d < -1 for d in dims):
            raise self.error(f"shape {dims}: dims must be >= -1")
        self.dims = dims

    def top_shape(self, bottom):
        param = self.layer_param.reshape_param
        n = bottom.num_axes
        start = param.axis if param.axis >= 0 else n + param.axis + 1
        if not 0 <= start <= n:
            raise self.error(f"axis {param.axis} out of range for a {n}-D bottom")
        if param.num_axes < -1:
            raise self.error(f"num_axes {param.num_axes}: must be >= 0, or -1 for all")
        end = n if param.num_axes == -1 else start + param.num_axes
        if end > n:
            raise self.error(f"axis + num_axes = {end} is out of range for a {n}-D bottom")
        new = list(self.dims)
        for i, d in enumerate(new):
            if d == 0:
                if start + i >= n:
                    raise self.error(
                        f"shape dim {i} is 0 but bottom has no axis {start + i} to copy"
                    )
                new[i] = bottom.shape[start + i]
        if -1 in new:
            known = math.prod(bottom.shape[:start]) * math.prod(bottom.shape[end:])
            known *= math.prod(d for d in new if d != -1)
            if known == 0 or bottom.count % known:
                raise self.error(
                    f"bottom count ({bottom.count}) is not divisible by the product of the "
                    f"specified dimensions ({known})"
                )
            new[new.index(-1)] = bottom.count // known
        shape = [*bottom.shape[:start], *new, *bottom.shape[end:]]
        if math.prod(shape) != bottom.count:
            raise self.error(
                f"output shape {shape} does not hold the bottom's {bottom.count} values"
            )
        return shape


@register("Silence")
class SilenceLayer(Layer):
    """Consumes its bottoms and produces nothing; backward writes zero diffs."""

    num_bottoms = (1, None)
    num_tops = 0
    backward_reads = frozenset()

    def reshape(self, bottoms, tops):
        pass

    def forward(self, xp, bottoms, tops):
        pass

    def backward(self, xp, tops, propagate_down, bottoms):
        for blob, wanted in zip(bottoms, propagate_down, strict=True):
            if wanted:
                blob.diff[...] = 0


@register("Crop")
class CropLayer(Layer):
    """Top = bottom0 cropped, on every axis >= `axis` (default 2), to bottom1's size, starting at
    `offset` (none: 0; one value: every cropped axis; else one per cropped axis). Bottom 1 only
    gives the size."""

    num_bottoms = 2
    backward_reads = _TOP_DIFF
    no_gradient_bottoms = (1,)

    def reshape(self, bottoms, tops):
        data, ref = bottoms
        param = self.layer_param.crop_param
        start = canonical_axis(self, data, param.axis)
        offsets = list(param.offset)
        cropped = data.num_axes - start
        if len(offsets) > 1 and len(offsets) != cropped:
            raise self.error(
                f"{len(offsets)} offsets for {cropped} cropped axes (from axis {start})"
            )
        if ref.num_axes != data.num_axes:
            raise self.error(f"bottom shapes {data.shape} and {ref.shape} differ in axis count")
        self.index = [slice(None)] * start
        for i in range(start, data.num_axes):
            offset = offsets[0] if len(offsets) == 1 else offsets[i - start] if offsets else 0
            if data.shape[i] - offset < ref.shape[i]:
                raise self.error(
                    f"the crop for axis {i} is out of bounds: size {ref.shape[i]} at offset "
                    f"{offset} in {data.shape[i]}"
                )
            self.index.append(slice(offset, offset + ref.shape[i]))
        self.index = tuple(self.index)
        tops[0].reshape([*data.shape[:start], *ref.shape[start:]])

    def forward(self, xp, bottoms, tops):
        tops[0].data[...] = bottoms[0].data[self.index]

    def backward(self, xp, tops, propagate_down, bottoms):
        if propagate_down[0]:
            bottoms[0].diff[...] = 0
            bottoms[0].diff[self.index] = tops[0].diff


@register("Tile")
class TileLayer(Layer):
    """Repeats the whole blob from `axis` on `tiles` times: shape[axis] *= tiles."""

    backward_reads = _TOP_DIFF

    def reshape(self, bottoms, tops):
        param = self.layer_param.tile_param
        if not param.HasField("tiles"):
            raise self.error("tile_param.tiles must be specified")
        if param.tiles <= 0:
            raise self.error(f"tiles {param.tiles}: must be positive")
        axis = canonical_axis(self, bottoms[0], param.axis)
        self.outer, self.inner = bottoms[0].count_range(0, axis), bottoms[0].count_range(axis)
        shape = list(bottoms[0].shape)
        shape[axis] *= param.tiles
        tops[0].reshape(shape)

    def forward(self, xp, bottoms, tops):
        tiles = self.layer_param.tile_param.tiles
        x = bottoms[0].data.reshape(self.outer, 1, self.inner)
        tops[0].data[...] = xp.broadcast_to(x, (self.outer, tiles, self.inner)).reshape(
            tops[0].shape
        )

    def backward(self, xp, tops, propagate_down, bottoms):
        if propagate_down[0]:
            dy = tops[0].diff.reshape(self.outer, -1, self.inner)
            bottoms[0].diff[...] = dy.sum(axis=1).reshape(bottoms[0].shape)


@register("BatchReindex")
class BatchReindexLayer(Layer):
    """top[i] = bottom0[int(idx[i])] for a 1-D index bottom; gradient by scatter-add."""

    num_bottoms = 2
    backward_reads = frozenset({"bottom_data", "top_diff"})  # the indices
    no_gradient_bottoms = (1,)

    def reshape(self, bottoms, tops):
        if bottoms[1].num_axes != 1:
            raise self.error(f"index bottom must be 1-D, got shape {bottoms[1].shape}")
        tops[0].reshape([bottoms[1].shape[0], *bottoms[0].shape[1:]])

    def indices(self, xp, bottoms):
        idx = bottoms[1].data.astype(xp.int64)  # truncation, as static_cast<int>
        n = bottoms[0].shape[0]
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise self.error(f"index out of range [0, {n}): {idx.tolist()}")
        return idx

    def forward(self, xp, bottoms, tops):
        tops[0].data[...] = bottoms[0].data[self.indices(xp, bottoms)]

    def backward(self, xp, tops, propagate_down, bottoms):
        if propagate_down[0]:
            bottoms[0].diff[...] = 0
            scatter_add(xp, bottoms[0].diff, self.indices(xp, bottoms), tops[0].diff)


@register("Filter")
class FilterLayer(Layer):
    """Tops = the items n of bottoms 0..k-1 whose selector (the last bottom, shape (N) or
    (N, 1, ...)) is non-zero. Top shapes depend on the selector's values; it takes no gradient."""

    num_bottoms = (2, None)
    num_tops = (1, None)
    backward_reads = frozenset({"bottom_data", "top_diff"})  # the selector
    reshape_reads_data = True

    def __init__(self, layer_param, phase: int = TRAIN) -> None:
        super().__init__(layer_param, phase)
        if layer_param.bottom:
            self.no_gradient_bottoms = (len(layer_param.bottom) - 1,)

    def setup(self, bottoms, tops):
        if len(tops) != len(bottoms) - 1:
            raise self.error(
                f"takes one top per filtered bottom: {len(bottoms) - 1}, got {len(tops)}"
            )
        self.no_gradient_bottoms = (len(bottoms) - 1,)

    def reshape(self, bottoms, tops):
        selector = bottoms[-1]
        if selector.num_axes < 1 or any(d != 1 for d in selector.shape[1:]):
            raise self.error(f"selector shape {selector.shape}: all dims but the first must be 1")
        n = selector.shape[0]
        for i, blob in enumerate(bottoms[:-1]):
            if blob.num_axes < 1 or blob.shape[0] != n:
                raise self.error(
                    f"bottom {i} shape {blob.shape}: first dim must be the selector's {n}"
                )
        if selector.data is not None:  # unbound (net building): every item passes, as Caffe's first
            n = int((selector.data != 0).sum())
        for top, blob in zip(tops, bottoms[:-1], strict=True):
            top.reshape([n, *blob.shape[1:]])

    def selected(self, xp, bottoms, tops):
        idx = xp.nonzero(bottoms[-1].data.reshape(-1) != 0)[0]
        if idx.size != tops[0].shape[0]:
            raise self.error(
                f"selector passes {idx.size} items but tops were shaped for {tops[0].shape[0]}"
            )
        return idx

    def forward(self, xp, bottoms, tops):
        idx = self.selected(xp, bottoms, tops)
        for top, blob in zip(tops, bottoms[:-1], strict=True):
            top.data[...] = blob.data[idx]

    def backward(self, xp, tops, propagate_down, bottoms):
        idx = self.selected(xp, bottoms, tops)
        for top, blob, wanted in zip(tops, bottoms, propagate_down, strict=False):
            if wanted:
                blob.diff[...] = 0
                blob.diff[idx] = top.diff
