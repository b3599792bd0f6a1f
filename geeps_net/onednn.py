"""oneDNN's CPU convolutions through ctypes: the CPU's counterpart of cuDNN, for NumPy arrays.

oneDNN (the library PyTorch's CPU convolutions run on) ships as the `onednn-cpu-gomp` wheel, a
shared library with a C API and no Python binding; pip puts it in the environment's lib/. Its
JIT convolutions work in blocked layouts (16 channels a vector) and reach the cores' FMA peak,
where im2col and a GEMM top out at about half of it on CIFAR-10's 32 and 64 channels
(docs/benchmarks.md). Arrays stay NumPy arrays in Caffe's layouts (NCHW, OIHW): each
call reorders them into the layout the primitive chose and back, a memory-bound pass that costs
about 1% of the convolution.

Convolution2d holds the forward, backward-data and backward-weights primitives of one geometry.
`convolution()` makes one, or returns None when the library is missing, disabled
(GEEPS_ONEDNN=0) or declines the geometry: the caller then keeps its im2col path.
"""

from __future__ import annotations

import ctypes
import functools
import os
import site
import sys
import weakref
from pathlib import Path
from typing import NamedTuple

import numpy

_vp = ctypes.c_void_p
_Dims = ctypes.c_int64 * 12  # dnnl_dims_t: DNNL_MAX_NDIMS entries

# Values from oneDNN 3.x's headers (dnnl_types.h, dnnl_common_types.h).
_CPU_ENGINE, _IN_ORDER_STREAM, _F32 = 1, 1, 3
_TAG_ANY, _TAG_A, _TAG_ABCD, _TAG_ABCDE, _TAG_NHWC = 1, 2, 5, 6, 22
_FORWARD_TRAINING, _CONV_DIRECT = 64, 1
_POOL_AVG_INCLUDE_PADDING, _POOL_AVG_EXCLUDE_PADDING = 767, 1023
_QUERY_IMPL_INFO, _Q_SCRATCHPAD = 8, 136
_Q_SRC, _Q_DIFF_SRC, _Q_WEIGHTS, _Q_DIFF_WEIGHTS, _Q_DST, _Q_DIFF_DST = range(129, 135)
_ARG_SRC, _ARG_DST, _ARG_WEIGHTS, _ARG_BIAS = 1, 17, 33, 41
_ARG_DIFF_SRC, _ARG_DIFF_DST, _ARG_DIFF_WEIGHTS, _ARG_DIFF_BIAS = 129, 145, 161, 169
_ALLOCATE = _vp(2**64 - 1)  # DNNL_MEMORY_ALLOCATE: the library allocates the buffer
_SONAME = "libdnnl.so.3"
# Activations of convolutions whose outputs per group fill whole 16-lane blocks go in the
# blocked layout oneDNN picks; others channels-last (its brgconv kernels), where blocks would
# pad them. LeNet's conv2 (20 -> 50 channels, two threads, forward / both gradients, ms):
# blocked 1.82 / 4.03, channels-last 1.29 / 2.83; CIFAR-10 quick's conv2 (32 -> 32): blocked
# 4.9 / 9.9, channels-last 5.2-5.5 / 11.5.
OUTPUT_BLOCK = 16


class _ExecArg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", _vp)]


class OneDNNError(RuntimeError):
    """A oneDNN call failed (status code in the message)."""


class ConvSpec(NamedTuple):
    """One 2-D convolution: batch, channels, input and output sizes, kernel, stride, padding
    (left per axis), dilation (Caffe's: 1 = none), groups, whether it has a bias, and the
    OpenMP threads its primitives run on. oneDNN splits the work (and the weight gradient's
    sums) for the threads there are when a primitive is made, so the count is part of what
    makes one: made for one count and run on another, two identical runs could differ in the
    last bits."""

    num: int
    channels: int
    in_size: tuple[int, int]
    num_output: int
    out_size: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    dilation: tuple[int, int]
    group: int
    bias: bool
    threads: int

    def pad_right(self) -> tuple[int, int]:
        """oneDNN's right padding: what makes its output size Caffe's (floor division may drop
        the last window, so this can be below the left padding)."""
        return _pad_right(self.in_size, self.out_size, self.kernel, self.stride, self.pad,
                          self.dilation)  # fmt: skip


def _pad_right(in_size, out_size, kernel, stride, pad, dilation) -> tuple[int, int]:
    """Per axis, the padding after the input that makes a window of `kernel` (dilated) at
    every `stride` from -pad give `out_size` windows."""
    return tuple(
        (o - 1) * s + d * (k - 1) + 1 - i - p
        for i, o, k, s, p, d in zip(in_size, out_size, kernel, stride, pad, dilation)
    )


class PoolSpec(NamedTuple):
    """One 2-D average pooling: batch, channels, input and output sizes, kernel, stride, left
    padding, whether a window's divisor counts the padding it covers, and the OpenMP threads
    (see ConvSpec). Caffe's AVE divides by the window clipped to the padded input: that is
    oneDNN's exclude-padding without padding, include-padding when no window reaches past the
    padding; other cases stay with the caller's own kernel."""

    num: int
    channels: int
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    include_padding: bool
    threads: int

    def pad_right(self) -> tuple[int, int]:
        """The right padding that gives this output size (ceil mode reaches past the input)."""
        return _pad_right(self.in_size, self.out_size, self.kernel, self.stride, self.pad, (1, 1))


def _library_paths() -> list[str]:
    """Where pip's onednn-cpu-gomp wheel puts the library (the lib/ of the environment, of the
    base installation, of a `pip install --user`), then the dynamic loader's own search."""
    prefixes = (sys.prefix, sys.base_prefix, site.USER_BASE or "")
    paths = [Path(prefix) / "lib" / _SONAME for prefix in prefixes if prefix]
    return [str(p) for p in paths if p.exists()] + [_SONAME]


class _Library:
    """The loaded library with its argument types declared, and one CPU engine."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
        lib.dnnl_primitive_desc_query_md.restype = _vp
        lib.dnnl_memory_desc_get_size.argtypes = [_vp]
        lib.dnnl_memory_desc_get_size.restype = ctypes.c_size_t
        lib.dnnl_memory_desc_equal.restype = ctypes.c_int
        self.engine = _vp()
        self.check(lib.dnnl_engine_create(ctypes.byref(self.engine), _CPU_ENGINE, 0), "engine")

    @staticmethod
    def check(status: int, what: str) -> None:
        """Raise OneDNNError unless `status` is dnnl_success."""
        if status != 0:
            raise OneDNNError(f"oneDNN {what} failed with status {status}")

    def memory_desc(self, dims, tag: int) -> _vp:
        """A float32 memory descriptor of `dims` in format `tag` (caller destroys it)."""
        md = _vp()
        self.check(
            self.lib.dnnl_memory_desc_create_with_tag(
                ctypes.byref(md), len(dims), _Dims(*dims), _F32, tag
            ),
            f"memory descriptor {tuple(dims)}",
        )
        return md


_SIGNATURES = {
    "dnnl_engine_create": [_vp, ctypes.c_int, ctypes.c_size_t],
    "dnnl_engine_destroy": [_vp],
    "dnnl_stream_create": [_vp, _vp, ctypes.c_uint],
    "dnnl_stream_destroy": [_vp],
    "dnnl_stream_wait": [_vp],
    "dnnl_memory_desc_create_with_tag": [_vp, ctypes.c_int, _Dims, ctypes.c_int, ctypes.c_int],
    "dnnl_memory_desc_destroy": [_vp],
    "dnnl_memory_desc_equal": [_vp, _vp],
    "dnnl_memory_create": [_vp, _vp, _vp, _vp],
    "dnnl_memory_set_data_handle": [_vp, _vp],
    "dnnl_memory_destroy": [_vp],
    "dnnl_primitive_desc_query_md": [_vp, ctypes.c_int, ctypes.c_int],
    "dnnl_primitive_desc_query": [_vp, ctypes.c_int, ctypes.c_int, _vp],
    "dnnl_primitive_desc_destroy": [_vp],
    "dnnl_primitive_create": [_vp, _vp],
    "dnnl_primitive_destroy": [_vp],
    "dnnl_primitive_execute": [_vp, _vp, ctypes.c_int, _vp],
    "dnnl_reorder_primitive_desc_create": [_vp, _vp, _vp, _vp, _vp, _vp],
    "dnnl_pooling_forward_primitive_desc_create": [_vp, _vp, ctypes.c_int, ctypes.c_int]
    + [_vp] * 2
    + [_Dims] * 5
    + [_vp],
    "dnnl_pooling_backward_primitive_desc_create": [_vp, _vp, ctypes.c_int]
    + [_vp] * 2
    + [_Dims] * 5
    + [_vp, _vp],
    "dnnl_convolution_forward_primitive_desc_create": [_vp, _vp, ctypes.c_int, ctypes.c_int]
    + [_vp] * 4
    + [_Dims] * 4
    + [_vp],
    "dnnl_convolution_backward_data_primitive_desc_create": [_vp, _vp, ctypes.c_int]
    + [_vp] * 3
    + [_Dims] * 4
    + [_vp, _vp],
    "dnnl_convolution_backward_weights_primitive_desc_create": [_vp, _vp, ctypes.c_int]
    + [_vp] * 4
    + [_Dims] * 4
    + [_vp, _vp],
}


@functools.cache
def library() -> _Library | None:
    """The oneDNN library, loaded once per process; None when it is not installed or
    GEEPS_ONEDNN=0 turns it off."""
    if os.environ.get("GEEPS_ONEDNN", "1") == "0":
        return None
    # OpenMP threads that spin after a convolution keep a core from the next layer's chunk
    # threads (backend.split_work): LeNet 3,984 -> 4,754 img/s with passive waits. libgomp reads
    # this when it loads, which is with oneDNN unless something loaded it before.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    for path in _library_paths():
        try:
            return _Library(ctypes.CDLL(path))
        except (OSError, AttributeError, OneDNNError):
            continue
    return None


@functools.cache
def _omp_set_num_threads():
    """libgomp's omp_set_num_threads (oneDNN's threads: this wheel runs on GNU OpenMP)."""
    try:
        fn = ctypes.CDLL("libgomp.so.1").omp_set_num_threads
    except (OSError, AttributeError):
        return lambda n: None
    fn.argtypes, fn.restype = [ctypes.c_int], None
    return fn


class _Port:
    """One array argument of a primitive: a memory over the caller's plain NumPy array and,
    when the primitive chose another layout, the memory in that layout (`inner`, shared with
    the other ports of the same array kind and layout) and the reorder between them (`into`
    True: plain -> chosen, before the primitive runs; False: chosen -> plain, after)."""

    def __init__(self, owner: _Primitives, kind: str, pd, query: int, into: bool) -> None:
        lib, plain = owner.lib.lib, owner.plain[kind]
        chosen = _vp(lib.dnnl_primitive_desc_query_md(pd, query, 0))
        self._set_handle = lib.dnnl_memory_set_data_handle
        self.user = owner.memory(plain, _vp(None))
        self.reorder, self.args = None, []
        if lib.dnnl_memory_desc_equal(plain, chosen):
            self.inner = self.user
            return
        self.inner = owner.inner_memory(kind, chosen)
        src, dst = (self.user, self.inner) if into else (self.inner, self.user)
        self.reorder = owner.reorder(*((plain, chosen) if into else (chosen, plain)))
        self.args = [(_ARG_SRC, src), (_ARG_DST, dst)]

    def bind(self, array: numpy.ndarray) -> None:
        """Point the plain memory at `array` (C-contiguous float32 of the plain shape)."""
        self._set_handle(self.user, _address(array))


class _Primitives:
    """What every oneDNN wrapper here holds: the library, a stream, the handles to release when
    it goes, and the OpenMP thread count its primitives are made for (see ConvSpec)."""

    def __init__(self, lib: _Library, threads: int) -> None:
        self.lib, self.threads = lib, threads
        self._handles: list[tuple[str, _vp]] = []
        self._finalizer = weakref.finalize(self, _destroy, lib.lib, self._handles)
        self._inner: dict[str, list[tuple[_vp, _vp]]] = {"x": [], "y": [], "w": []}
        self._set_threads = _omp_set_num_threads()
        self._set_threads(threads)  # before any primitive is made: see ConvSpec
        self.stream = self._create(
            "dnnl_stream_create", "dnnl_stream_destroy", lib.engine, _IN_ORDER_STREAM
        )

    def _bind(self, memory, array) -> _vp:
        self.lib.lib.dnnl_memory_set_data_handle(memory, _address(array))
        return memory

    def _bound(self, port: _Port, array) -> _vp:
        """The memory the primitive writes for `port`, with the plain one bound to `array`."""
        port.bind(array)
        return port.inner

    def _into(self, port: _Port, array) -> _vp:
        """The memory the primitive reads for `port`: `array`, reordered when it must be."""
        port.bind(array)
        if port.reorder is not None:
            self._execute(port.reorder, port.args)
        return port.inner

    def _out(self, port: _Port) -> None:
        if port.reorder is not None:
            self._execute(port.reorder, port.args)

    def _execute(self, primitive, args) -> None:
        packed = (_ExecArg * len(args))(*(_ExecArg(k, m) for k, m in args))
        lib = self.lib.lib
        self.lib.check(
            lib.dnnl_primitive_execute(primitive, self.stream, len(args), packed), "execute"
        )
        self.lib.check(lib.dnnl_stream_wait(self.stream), "stream wait")

    def _create(self, create: str, destroy: str, *args) -> _vp:
        handle = _vp()
        self.lib.check(getattr(self.lib.lib, create)(ctypes.byref(handle), *args), create)
        self._handles.append((destroy, handle))
        return handle

    def _md(self, dims, tag: int) -> _vp:
        md = self.lib.memory_desc(dims, tag)
        self._handles.append(("dnnl_memory_desc_destroy", md))
        return md

    def _pd(self, create: str, *args) -> _vp:
        return self._create(create, "dnnl_primitive_desc_destroy", self.lib.engine, *args)

    def _primitive(self, pd) -> _vp:
        return self._create("dnnl_primitive_create", "dnnl_primitive_destroy", pd)

    def memory(self, md, handle) -> _vp:
        """A memory of `md` over `handle` (None: bound later)."""
        return self._create(
            "dnnl_memory_create", "dnnl_memory_destroy", md, self.lib.engine, handle
        )

    def inner_memory(self, kind: str, md) -> _vp:
        """A oneDNN-allocated memory in layout `md` for arrays of `kind` ('x', 'y', 'w'): one
        per layout, shared by the calls (each fills it before it reads it)."""
        for known, memory in self._inner[kind]:
            if self.lib.lib.dnnl_memory_desc_equal(known, md):
                return memory
        memory = self.memory(md, _ALLOCATE)
        self._inner[kind].append((md, memory))
        return memory

    def reorder(self, src_md, dst_md) -> _vp:
        """A reorder primitive from src_md's layout to dst_md's."""
        pd = self._create(
            "dnnl_reorder_primitive_desc_create",
            "dnnl_primitive_desc_destroy",
            *(src_md, self.lib.engine, dst_md, self.lib.engine, None),
        )
        return self._primitive(pd)


class Convolution2d(_Primitives):
    """The oneDNN primitives of one convolution geometry (ConvSpec): forward, data gradient and
    weight gradients. Arrays in Caffe's layouts: x (N, C, H, W), weights (O, C/group, kh, kw),
    bias (O,), y (N, O, out_h, out_w), all C-contiguous float32.

    Calls on one object must not overlap (its blocked copies are shared between them); a layer
    owns its own."""

    def __init__(self, lib: _Library, spec: ConvSpec) -> None:
        super().__init__(lib, spec.threads)
        self.spec = spec
        wanted = self._descriptors()
        fwd_pd, data_pd, weights_pd = self._pds = self._primitive_descs(*wanted)
        self.fwd, self.bwd_data, self.bwd_weights = map(self._primitive, self._pds)
        self.ports = {
            "x": _Port(self, "x", fwd_pd, _Q_SRC, into=True),
            "w": _Port(self, "w", fwd_pd, _Q_WEIGHTS, into=True),
            "y": _Port(self, "y", fwd_pd, _Q_DST, into=False),
            "bd_dy": _Port(self, "y", data_pd, _Q_DIFF_DST, into=True),
            "bd_w": _Port(self, "w", data_pd, _Q_WEIGHTS, into=True),
            "bd_dx": _Port(self, "x", data_pd, _Q_DIFF_SRC, into=False),
            "bw_x": _Port(self, "x", weights_pd, _Q_SRC, into=True),
            "bw_dy": _Port(self, "y", weights_pd, _Q_DIFF_DST, into=True),
            "bw_dw": _Port(self, "w", weights_pd, _Q_DIFF_WEIGHTS, into=False),
        }
        self.bias = self.memory(self.plain["b"], _vp(None)) if spec.bias else None

    def _descriptors(self):
        """Sets self.plain, the memory descriptors of Caffe's layouts (x, y, w, b); returns
        those the primitives are asked for: x, w, y in the layout oneDNN may choose
        (activations channels-last when blocks would pad them, see OUTPUT_BLOCK)."""
        s = self.spec
        n, c, o, g = s.num, s.channels, s.num_output, s.group
        if g == 1:
            w_dims, w_tag = (o, c) + s.kernel, _TAG_ABCD
        else:
            w_dims, w_tag = (g, o // g, c // g) + s.kernel, _TAG_ABCDE
        x_dims, y_dims = (n, c) + s.in_size, (n, o) + s.out_size
        self.plain = {
            "x": self._md(x_dims, _TAG_ABCD),
            "y": self._md(y_dims, _TAG_ABCD),
            "w": self._md(w_dims, w_tag),
            "b": self._md((o,), _TAG_A),
        }
        layout = _TAG_ANY if (o // g) % OUTPUT_BLOCK == 0 else _TAG_NHWC
        return self._md(x_dims, layout), self._md(w_dims, _TAG_ANY), self._md(y_dims, layout)

    def _primitive_descs(self, x, w, y):
        """The forward, data-gradient and weight-gradient primitive descriptors."""
        s = self.spec
        geometry = (
            _Dims(*s.stride),
            _Dims(*(d - 1 for d in s.dilation)),  # oneDNN counts the gaps: 0 = dense
            _Dims(*s.pad),
            _Dims(*s.pad_right()),
        )
        bias = self.plain["b"] if s.bias else _vp(None)
        fwd = self._pd(
            "dnnl_convolution_forward_primitive_desc_create",
            *(_FORWARD_TRAINING, _CONV_DIRECT, x, w, bias, y, *geometry, None),
        )
        data = self._pd(
            "dnnl_convolution_backward_data_primitive_desc_create",
            *(_CONV_DIRECT, x, w, y, *geometry, fwd, None),
        )
        weights = self._pd(
            "dnnl_convolution_backward_weights_primitive_desc_create",
            *(_CONV_DIRECT, x, w, bias, y, *geometry, fwd, None),
        )
        return fwd, data, weights

    def implementation(self) -> str:
        """oneDNN's name for the forward's kernel (e.g. 'jit:avx512_core')."""
        out = ctypes.c_char_p()
        query = self.lib.lib.dnnl_primitive_desc_query
        query(self._pds[0], _QUERY_IMPL_INFO, 0, ctypes.byref(out))
        return (out.value or b"").decode()

    def buffer_bytes(self) -> int:
        """Host bytes oneDNN holds for this geometry between calls: the arrays in the layouts
        its primitives work in (made once, not per call), and the largest scratchpad."""
        size = self.lib.lib.dnnl_memory_desc_get_size
        inner = sum(size(md) for kind in self._inner.values() for md, _ in kind)
        query = self.lib.lib.dnnl_primitive_desc_query_md
        return inner + max(size(_vp(query(pd, _Q_SCRATCHPAD, 0))) for pd in self._pds)

    def forward(self, x, w, b, y) -> None:
        """y = conv(x, w) + b (b None without a bias term)."""
        self._set_threads(self.spec.threads)
        p = self.ports
        args = [
            (_ARG_SRC, self._into(p["x"], x)),
            (_ARG_WEIGHTS, self._into(p["w"], w)),
            (_ARG_DST, self._bound(p["y"], y)),
        ]
        if self.spec.bias:
            args.append((_ARG_BIAS, self._bind(self.bias, b)))
        self._execute(self.fwd, args)
        self._out(p["y"])

    def backward(self, x, w, dy, dx, dw, db) -> None:
        """The gradients of y = conv(x, w) + b for top diff dy: dw and db (None without a bias
        term), overwritten (the caller adds them to the blobs' diffs), and dx when not None."""
        self._set_threads(self.spec.threads)
        p = self.ports
        dy_inner = self._into(p["bw_dy"], dy)
        args = [
            (_ARG_SRC, self._into(p["bw_x"], x)),
            (_ARG_DIFF_DST, dy_inner),
            (_ARG_DIFF_WEIGHTS, self._bound(p["bw_dw"], dw)),
        ]
        if self.spec.bias:
            args.append((_ARG_DIFF_BIAS, self._bind(self.bias, db)))
        self._execute(self.bwd_weights, args)
        self._out(p["bw_dw"])
        if dx is None:
            return
        # Both gradients usually take dy in one layout: then its blocked copy is already made.
        same = p["bd_dy"].inner.value == dy_inner.value and p["bd_dy"].reorder is not None
        args = [
            (_ARG_DIFF_DST, dy_inner if same else self._into(p["bd_dy"], dy)),
            (_ARG_WEIGHTS, self._into(p["bd_w"], w)),
            (_ARG_DIFF_SRC, self._bound(p["bd_dx"], dx)),
        ]
        self._execute(self.bwd_data, args)
        self._out(p["bd_dx"])


class AvgPooling2d(_Primitives):
    """oneDNN's average pooling forward and backward for one PoolSpec, on Caffe's NCHW arrays
    in place (no reorders: its plain-layout kernels measured 0.29 ms against 1.13 for NumPy's on
    CIFAR-10 quick's pool2)."""

    def __init__(self, lib: _Library, spec: PoolSpec) -> None:
        super().__init__(lib, spec.threads)
        self.spec = spec
        x = self._md((spec.num, spec.channels) + spec.in_size, _TAG_ABCD)
        y = self._md((spec.num, spec.channels) + spec.out_size, _TAG_ABCD)
        alg = _POOL_AVG_INCLUDE_PADDING if spec.include_padding else _POOL_AVG_EXCLUDE_PADDING
        geometry = (
            _Dims(*spec.stride),
            _Dims(*spec.kernel),
            _Dims(0, 0),
            _Dims(*spec.pad),
            _Dims(*spec.pad_right()),
        )
        fwd_pd = self._pd(
            "dnnl_pooling_forward_primitive_desc_create",
            *(_FORWARD_TRAINING, alg, x, y, *geometry, None),
        )
        bwd_pd = self._pd(
            "dnnl_pooling_backward_primitive_desc_create", *(alg, x, y, *geometry, fwd_pd, None)
        )
        self.fwd, self.bwd = self._primitive(fwd_pd), self._primitive(bwd_pd)
        self.x, self.y = self.memory(x, _vp(None)), self.memory(y, _vp(None))

    def forward(self, x, y) -> None:
        """y = the window averages of x."""
        self._set_threads(self.threads)
        self._execute(
            self.fwd, [(_ARG_SRC, self._bind(self.x, x)), (_ARG_DST, self._bind(self.y, y))]
        )

    def backward(self, dy, dx) -> None:
        """dx = each window's dy shared out over the window (dx overwritten)."""
        self._set_threads(self.threads)
        args = [(_ARG_DIFF_DST, self._bind(self.y, dy)), (_ARG_DIFF_SRC, self._bind(self.x, dx))]
        self._execute(self.bwd, args)


def _address(array: numpy.ndarray) -> int:
    """The address oneDNN reads or writes `array` at; a strided view or another dtype would be
    read as the plain layout it is not, so they are refused."""
    if array.dtype != numpy.float32 or not array.flags.c_contiguous:
        raise ValueError(f"oneDNN needs C-contiguous float32, got {array.dtype} {array.strides}")
    return array.ctypes.data


def _destroy(lib, handles) -> None:
    """Release oneDNN handles in reverse order of creation (primitives before their
    descriptors, memories before the stream)."""
    for destroy, handle in reversed(handles):
        getattr(lib, destroy)(handle)
    handles.clear()


def convolution(spec: ConvSpec) -> Convolution2d | None:
    """oneDNN primitives for `spec`, or None when the library is unavailable or has no
    implementation for it (the caller keeps its own kernels)."""
    return _make(Convolution2d, spec)


def avg_pooling(spec: PoolSpec) -> AvgPooling2d | None:
    """oneDNN's average pooling for `spec`, or None (as convolution())."""
    return _make(AvgPooling2d, spec)


def _make(kind, spec):
    lib = library()
    if lib is None:
        return None
    try:
        return kind(lib, spec)
    except OneDNNError:
        return None
