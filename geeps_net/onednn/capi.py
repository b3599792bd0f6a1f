"""oneDNN's C API as ctypes sees it: types, the enum values used here, the functions' argument
types, and loading the library (once per process, or not at all)."""

from __future__ import annotations

import ctypes
import functools
import os
import site
import sys
from pathlib import Path

vp = ctypes.c_void_p
Dims = ctypes.c_int64 * 12  # dnnl_dims_t: DNNL_MAX_NDIMS entries

# Values from oneDNN 3.x's headers (dnnl_types.h, dnnl_common_types.h).
CPU_ENGINE, IN_ORDER_STREAM, F32 = 1, 1, 3
TAG_ANY, TAG_A, TAG_ABCD, TAG_ABCDE, TAG_NHWC = 1, 2, 5, 6, 22
FORWARD_TRAINING, CONV_DIRECT = 64, 1
POOL_AVG_INCLUDE_PADDING, POOL_AVG_EXCLUDE_PADDING = 767, 1023
QUERY_IMPL_INFO, Q_SCRATCHPAD = 8, 136
Q_SRC, Q_DIFF_SRC, Q_WEIGHTS, Q_DIFF_WEIGHTS, Q_DST, Q_DIFF_DST = range(129, 135)
ARG_SRC, ARG_DST, ARG_WEIGHTS, ARG_BIAS = 1, 17, 33, 41
ARG_DIFF_SRC, ARG_DIFF_DST, ARG_DIFF_WEIGHTS, ARG_DIFF_BIAS = 129, 145, 161, 169
ALLOCATE = vp(2**64 - 1)  # DNNL_MEMORY_ALLOCATE: the library allocates the buffer
SONAME = "libdnnl.so.3"


class ExecArg(ctypes.Structure):
    """dnnl_exec_arg_t: one argument of a primitive execution."""

    _fields_ = [("arg", ctypes.c_int), ("memory", vp)]


class OneDNNError(RuntimeError):
    """A oneDNN call failed (status code in the message)."""


def library_paths() -> list[str]:
    """Where pip's onednn-cpu-gomp wheel puts the library (the lib/ of the environment, of the
    base installation, of a `pip install --user`), then the dynamic loader's own search."""
    prefixes = (sys.prefix, sys.base_prefix, site.USER_BASE or "")
    paths = [Path(prefix) / "lib" / SONAME for prefix in prefixes if prefix]
    return [str(p) for p in paths if p.exists()] + [SONAME]


class Library:
    """The loaded library with its argument types declared, and one CPU engine."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        for name, argtypes in SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
        lib.dnnl_primitive_desc_query_md.restype = vp
        lib.dnnl_memory_desc_get_size.argtypes = [vp]
        lib.dnnl_memory_desc_get_size.restype = ctypes.c_size_t
        lib.dnnl_memory_desc_equal.restype = ctypes.c_int
        self.engine = vp()
        self.check(lib.dnnl_engine_create(ctypes.byref(self.engine), CPU_ENGINE, 0), "engine")

    @staticmethod
    def check(status: int, what: str) -> None:
        """Raise OneDNNError unless `status` is dnnl_success."""
        if status != 0:
            raise OneDNNError(f"oneDNN {what} failed with status {status}")

    def memory_desc(self, dims, tag: int) -> vp:
        """A float32 memory descriptor of `dims` in format `tag` (caller destroys it)."""
        md = vp()
        self.check(
            self.lib.dnnl_memory_desc_create_with_tag(
                ctypes.byref(md), len(dims), Dims(*dims), F32, tag
            ),
            f"memory descriptor {tuple(dims)}",
        )
        return md


SIGNATURES = {
    "dnnl_engine_create": [vp, ctypes.c_int, ctypes.c_size_t],
    "dnnl_engine_destroy": [vp],
    "dnnl_stream_create": [vp, vp, ctypes.c_uint],
    "dnnl_stream_destroy": [vp],
    "dnnl_stream_wait": [vp],
    "dnnl_memory_desc_create_with_tag": [vp, ctypes.c_int, Dims, ctypes.c_int, ctypes.c_int],
    "dnnl_memory_desc_destroy": [vp],
    "dnnl_memory_desc_equal": [vp, vp],
    "dnnl_memory_create": [vp, vp, vp, vp],
    "dnnl_memory_set_data_handle": [vp, vp],
    "dnnl_memory_destroy": [vp],
    "dnnl_primitive_desc_query_md": [vp, ctypes.c_int, ctypes.c_int],
    "dnnl_primitive_desc_query": [vp, ctypes.c_int, ctypes.c_int, vp],
    "dnnl_primitive_desc_destroy": [vp],
    "dnnl_primitive_create": [vp, vp],
    "dnnl_primitive_destroy": [vp],
    "dnnl_primitive_execute": [vp, vp, ctypes.c_int, vp],
    "dnnl_reorder_primitive_desc_create": [vp, vp, vp, vp, vp, vp],
    "dnnl_pooling_forward_primitive_desc_create": [vp, vp, ctypes.c_int, ctypes.c_int]
    + [vp] * 2
    + [Dims] * 5
    + [vp],
    "dnnl_pooling_backward_primitive_desc_create": [vp, vp, ctypes.c_int]
    + [vp] * 2
    + [Dims] * 5
    + [vp, vp],
    "dnnl_convolution_forward_primitive_desc_create": [vp, vp, ctypes.c_int, ctypes.c_int]
    + [vp] * 4
    + [Dims] * 4
    + [vp],
    "dnnl_convolution_backward_data_primitive_desc_create": [vp, vp, ctypes.c_int]
    + [vp] * 3
    + [Dims] * 4
    + [vp, vp],
    "dnnl_convolution_backward_weights_primitive_desc_create": [vp, vp, ctypes.c_int]
    + [vp] * 4
    + [Dims] * 4
    + [vp, vp],
}


@functools.cache
def library() -> Library | None:
    """The oneDNN library, loaded once per process; None when it is not installed or
    GEEPS_ONEDNN=0 turns it off."""
    if os.environ.get("GEEPS_ONEDNN", "1") == "0":
        return None
    # OpenMP threads that spin after a convolution keep a core from the next layer's chunk
    # threads (backend.split_work): LeNet 3,984 -> 4,754 img/s with passive waits. libgomp reads
    # this when it loads, which is with oneDNN unless something loaded it before.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    for path in library_paths():
        try:
            return Library(ctypes.CDLL(path))
        except (OSError, AttributeError, OneDNNError):
            continue
    return None


@functools.cache
def omp_set_num_threads():
    """libgomp's omp_set_num_threads (oneDNN's threads: this wheel runs on GNU OpenMP)."""
    try:
        fn = ctypes.CDLL("libgomp.so.1").omp_set_num_threads
    except (OSError, AttributeError):
        return lambda n: None
    fn.argtypes, fn.restype = [ctypes.c_int], None
    return fn
