"""Layer base class and the registry that maps Caffe's `type` strings to layer classes.

A layer declares shapes and state and computes into buffers it is handed; it never allocates blob
memory:
tops, learnable blobs and internal (forward-to-backward) blobs are declared and bound from outside,
by `Net`
when it runs resident and by the parameter server when it trains.
"""

from __future__ import annotations

import numpy

from geeps_net.blob import Blob
from geeps_net.errors import LayerError, NetError
from geeps_net.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST

LAYER_TYPES: dict[str, type[Layer]] = {}

Blobs = list[Blob]


def register(type_name: str):
    """Class decorator: make `type_name` (Caffe's type string) build this class. Refuses
    duplicates."""

    def decorate(cls):
        if type_name in LAYER_TYPES:
            raise ValueError(f"layer type {type_name!r} registered twice")
        cls.type = type_name
        LAYER_TYPES[type_name] = cls
        return cls

    return decorate


def create_layer(layer_param, phase: int) -> Layer:
    """Instantiate the registered class for `layer_param.type`; unknown types list the known
    ones."""
    import geeps_net.layers  # noqa: F401  (registers every built-in layer)

    try:
        cls = LAYER_TYPES[layer_param.type]
    except KeyError:
        known = ", ".join(sorted(LAYER_TYPES))
        raise NetError(
            f'layer "{layer_param.name}": unknown type "{layer_param.type}" (known: {known})'
        ) from None
    return cls(layer_param, phase)


class Layer:
    """One node of a Net. Declares shapes and state; computes into buffers it is handed.

    Subclasses set `num_bottoms`/`num_tops` (an exact count, or (min, max) with max None = any),
    say what
    their backward reads, and implement `reshape`, `forward` and (unless `has_backward` is False)
    `backward`.
    """

    type = ""
    num_bottoms: int | tuple = 1
    num_tops: int | tuple = 1
    # What backward reads besides internals: any of "bottom_data", "top_data", "top_diff".
    backward_reads = frozenset({"bottom_data", "top_diff"})
    has_backward = True
    is_loss = False  # loss layers weigh top 0 by 1 unless loss_weight says otherwise
    no_gradient_bottoms: tuple[
        int, ...
    ] = ()  # bottoms that never take a gradient (labels, indices)
    reshape_reads_data = (
        False  # True when top shapes depend on bottom values (Filter): no fixed plan
    )

    def __init__(self, layer_param, phase: int = TRAIN) -> None:
        self.layer_param, self.phase, self.name = layer_param, phase, layer_param.name
        self.blobs: Blobs = []  # learnable; declared by setup through add_param
        self.fillers: list = []  # FillerParameter (or None = zeros) per learnable blob
        self.internals: dict[str, Blob] = {}  # forward-to-backward state; add_internal in reshape
        self.dtype = numpy.dtype("float32")  # compute dtype; float64 in gradient checks
        self.rng = numpy.random.default_rng(0)  # the Net hands each layer its own seeded generator
        self.shard = (0, 1)  # (worker k, of N workers): data layers read every N-th record from k
        # Per bottom, whether backward computes its diff (the Net sets it once it knows; None:
        # unknown, so keep everything backward may need, as a lone layer under test does).
        self.propagate_down: tuple[bool, ...] | None = None

    def __repr__(self) -> str:
        return f'<{type(self).__name__} "{self.name}">'

    def error(self, message: str) -> LayerError:
        """A LayerError naming this layer, to raise: `raise self.error("...")`."""
        return LayerError(f'layer "{self.name}" ({self.type}): {message}')

    # -- the contract ---------------------------------------------------------------------------

    def setup(self, bottoms: Blobs, tops: Blobs) -> None:
        """Read options and declare learnable blobs; called once before the first reshape."""

    def reshape(self, bottoms: Blobs, tops: Blobs) -> None:
        """Shape the tops and internals from the bottoms' shapes."""
        raise NotImplementedError

    def forward(self, xp, bottoms: Blobs, tops: Blobs) -> None:
        """Write the tops' data from the bottoms' data (and learnable blobs)."""
        raise NotImplementedError

    def backward(self, xp, tops: Blobs, propagate_down: list[bool], bottoms: Blobs) -> None:
        """Write the bottoms' diff where propagate_down asks, and accumulate into param diffs."""
        if self.has_backward and any(propagate_down):
            raise NotImplementedError(f"{self.type} backward")

    def close(self) -> None:
        """Release what the layer holds outside blobs (prefetch threads, open databases)."""

    # -- helpers for subclasses -----------------------------------------------------------------

    def check_blob_counts(self, bottoms: Blobs, tops: Blobs) -> None:
        """Raise unless the bottom and top counts fit `num_bottoms` / `num_tops`."""
        for what, blobs, rule in (
            ("bottom", bottoms, self.num_bottoms),
            ("top", tops, self.num_tops),
        ):
            lo, hi = (rule, rule) if isinstance(rule, int) else rule
            if len(blobs) < lo or (hi is not None and len(blobs) > hi):
                want = str(lo) if lo == hi else f"{lo} to {hi if hi is not None else 'any'}"
                raise self.error(f"takes {want} {what} blob(s), got {len(blobs)}")

    def add_param(self, shape, filler=None) -> Blob:
        """Declare learnable blob i (in Caffe's order) with its shape and initial filler."""
        blob = Blob(f"{self.name}/{len(self.blobs)}", shape, self.dtype)
        self.blobs.append(blob)
        self.fillers.append(filler)
        return blob

    def add_internal(self, name: str, shape, dtype=None) -> Blob:
        """Declare (or reshape) an internal blob that forward writes and backward reads."""
        dtype = self.dtype if dtype is None else dtype
        blob = self.internals.get(name)
        if blob is None or blob.dtype != numpy.dtype(dtype):
            blob = self.internals[name] = Blob(f"{self.name}/{name}", shape, dtype)
        else:
            blob.reshape(shape)
        return blob

    def allow_force_backward(self, bottom_index: int) -> bool:
        """False for bottoms such as labels that never take a gradient."""
        return bottom_index not in self.no_gradient_bottoms


def enum_name(message, field: str) -> str:
    """Name of the enum value set in `message.field` (e.g. pooling_param.pool -> "MAX")."""
    descriptor = message.DESCRIPTOR.fields_by_name[field].enum_type
    return descriptor.values_by_number[getattr(message, field)].name
