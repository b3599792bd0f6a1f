"""What the oneDNN wrappers share: memories bound to NumPy arrays, reorders between Caffe's
layouts and the primitives' own, a stream, and the handles to release."""

from __future__ import annotations

import ctypes
import weakref

import numpy

from geeps_net.onednn import capi


def pad_right(in_size, out_size, kernel, stride, pad, dilation) -> tuple[int, int]:
    """Per axis, the padding after the input that makes a window of `kernel` (dilated) at
    every `stride` from -pad give `out_size` windows."""
    return tuple(
        (o - 1) * s + d * (k - 1) + 1 - i - p
        for i, o, k, s, p, d in zip(in_size, out_size, kernel, stride, pad, dilation)
    )


class Port:
    """One array argument of a primitive: a memory over the caller's plain NumPy array and,
    when the primitive chose another layout, the memory in that layout (`inner`, shared with
    the other ports of the same array kind and layout) and the reorder between them (`into`
    True: plain -> chosen, before the primitive runs; False: chosen -> plain, after)."""

    def __init__(self, owner: Primitives, kind: str, pd, query: int, into: bool) -> None:
        lib, plain = owner.lib.lib, owner.plain[kind]
        chosen = capi.vp(lib.dnnl_primitive_desc_query_md(pd, query, 0))
        self.user = owner.memory(plain, capi.vp(None))
        self.reorder, self.args = None, []
        if lib.dnnl_memory_desc_equal(plain, chosen):
            self.inner = self.user
            return
        self.inner = owner.inner_memory(kind, chosen)
        src, dst = (self.user, self.inner) if into else (self.inner, self.user)
        self.reorder = owner.reorder(*((plain, chosen) if into else (chosen, plain)))
        self.args = [(capi.ARG_SRC, src), (capi.ARG_DST, dst)]


class Primitives:
    """What every oneDNN wrapper here holds: the library, a stream, the handles to release when
    it goes, and the OpenMP thread count its primitives are made for (see ConvSpec)."""

    def __init__(self, lib: capi.Library, threads: int) -> None:
        self.lib, self.threads = lib, threads
        self._handles: list[tuple[str, capi.vp]] = []
        self._finalizer = weakref.finalize(self, destroy, lib.lib, self._handles)
        self._inner: dict[str, list[tuple[capi.vp, capi.vp]]] = {}  # kind -> (layout, memory)
        self._set_threads = capi.omp_set_num_threads()
        self._set_threads(threads)  # before any primitive is made: see ConvSpec
        self.stream = self._create(
            "dnnl_stream_create", "dnnl_stream_destroy", lib.engine, capi.IN_ORDER_STREAM
        )

    def _bind(self, memory, array) -> capi.vp:
        """`memory` (a plain layout's) pointed at `array`, C-contiguous float32 of its shape."""
        self.lib.lib.dnnl_memory_set_data_handle(memory, address(array))
        return memory

    def _bound(self, port: Port, array) -> capi.vp:
        """The memory the primitive writes for `port`, with the plain one bound to `array`."""
        self._bind(port.user, array)
        return port.inner

    def _into(self, port: Port, array) -> capi.vp:
        """The memory the primitive reads for `port`: `array`, reordered when it must be."""
        self._bind(port.user, array)
        if port.reorder is not None:
            self._execute(port.reorder, port.args)
        return port.inner

    def _out(self, port: Port) -> None:
        if port.reorder is not None:
            self._execute(port.reorder, port.args)

    def _execute(self, primitive, args) -> None:
        packed = (capi.ExecArg * len(args))(*(capi.ExecArg(k, m) for k, m in args))
        lib = self.lib.lib
        self.lib.check(
            lib.dnnl_primitive_execute(primitive, self.stream, len(args), packed), "execute"
        )
        self.lib.check(lib.dnnl_stream_wait(self.stream), "stream wait")

    def _create(self, create: str, destroy: str, *args) -> capi.vp:
        handle = capi.vp()
        self.lib.check(getattr(self.lib.lib, create)(ctypes.byref(handle), *args), create)
        self._handles.append((destroy, handle))
        return handle

    def _md(self, dims, tag: int) -> capi.vp:
        md = self.lib.memory_desc(dims, tag)
        self._handles.append(("dnnl_memory_desc_destroy", md))
        return md

    def _pd(self, create: str, *args) -> capi.vp:
        return self._create(create, "dnnl_primitive_desc_destroy", self.lib.engine, *args)

    def _primitive(self, pd) -> capi.vp:
        return self._create("dnnl_primitive_create", "dnnl_primitive_destroy", pd)

    def memory(self, md, handle) -> capi.vp:
        """A memory of `md` over `handle` (None: bound later)."""
        return self._create(
            "dnnl_memory_create", "dnnl_memory_destroy", md, self.lib.engine, handle
        )

    def inner_memory(self, kind: str, md) -> capi.vp:
        """A oneDNN-allocated memory in layout `md` for arrays of `kind` ('x', 'y', 'w'): one
        per layout, shared by the calls (each fills it before it reads it)."""
        known = self._inner.setdefault(kind, [])
        for layout, memory in known:
            if self.lib.lib.dnnl_memory_desc_equal(layout, md):
                return memory
        memory = self.memory(md, capi.ALLOCATE)
        known.append((md, memory))
        return memory

    def reorder(self, src_md, dst_md) -> capi.vp:
        """A reorder primitive from src_md's layout to dst_md's."""
        pd = self._create(
            "dnnl_reorder_primitive_desc_create",
            "dnnl_primitive_desc_destroy",
            *(src_md, self.lib.engine, dst_md, self.lib.engine, None),
        )
        return self._primitive(pd)


def address(array: numpy.ndarray) -> int:
    """The address oneDNN reads or writes `array` at; a strided view or another dtype would be
    read as the plain layout it is not, so they are refused."""
    if array.dtype != numpy.float32 or not array.flags.c_contiguous:
        raise ValueError(f"oneDNN needs C-contiguous float32, got {array.dtype} {array.strides}")
    return array.ctypes.data


def destroy(lib, handles) -> None:
    """Release oneDNN handles in reverse order of creation (primitives before their
    descriptors, memories before the stream)."""
    for name, handle in reversed(handles):
        getattr(lib, name)(handle)
    handles.clear()


def make(kind, spec):
    """kind(library, spec), or None when the library is unavailable or declines `spec`."""
    lib = capi.library()
    if lib is None:
        return None
    try:
        return kind(lib, spec)
    except capi.OneDNNError:
        return None
