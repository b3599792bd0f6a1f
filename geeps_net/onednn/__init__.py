"""oneDNN's CPU convolutions and average pooling through ctypes: the CPU's counterpart of cuDNN,
for NumPy arrays.

oneDNN (the library PyTorch's CPU convolutions run on) ships as the `onednn-cpu-gomp` wheel, a
shared library with a C API and no Python binding; pip puts it in the environment's lib/. Its
JIT convolutions work in blocked layouts (16 channels a vector) and reach the cores' FMA peak,
where im2col and a GEMM top out at about half of it on CIFAR-10's 32 and 64 channels
(docs/benchmarks.md). Arrays stay NumPy arrays in Caffe's layouts (NCHW, OIHW): each
call reorders them into the layout the primitive chose and back, a memory-bound pass that costs
about 1% of the convolution.

capi.py loads the library; primitives.py holds what the wrappers share; convolution.py and
pooling.py are the wrappers. `convolution()` and `avg_pooling()` make one, or return None when
the library is missing, disabled (GEEPS_ONEDNN=0) or declines the geometry: the caller then
keeps its own kernels.
"""

from geeps_net.onednn.capi import OneDNNError, library, omp_set_num_threads
from geeps_net.onednn.convolution import OUTPUT_BLOCK, Convolution2d, ConvSpec, convolution
from geeps_net.onednn.pooling import AvgPooling2d, PoolSpec, avg_pooling

__all__ = [
    "OUTPUT_BLOCK",
    "AvgPooling2d",
    "ConvSpec",
    "Convolution2d",
    "OneDNNError",
    "PoolSpec",
    "avg_pooling",
    "convolution",
    "library",
    "omp_set_num_threads",
]
