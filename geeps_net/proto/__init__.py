"""Protocol buffer modules: caffe_pb2 (BVLC Caffe 1.0's caffe.proto) and geeps_pb2 (PS config).

Regenerate with `bash tools/gen_proto.sh` after editing a .proto file.
"""
