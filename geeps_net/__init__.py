"""geeps-net: a Caffe-compatible layer engine served by GeePS, a GPU-specialised parameter
server."""

__version__ = "0.1.0"
