#!/usr/bin/env bash
# Regenerate caffe.proto from the format reference and both *_pb2.py modules (needs grpcio-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
REF=${1:-../shared/reference/caffe_format.md}
python tools/make_caffe_proto.py "$REF" geeps_net/proto/caffe.proto
python -m grpc_tools.protoc -Igeeps_net/proto --python_out=geeps_net/proto \
  geeps_net/proto/caffe.proto geeps_net/proto/geeps.proto
