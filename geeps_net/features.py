"""Caffe's extract_features: named blobs of a trained net, image by image, into LMDBs of Datum.

    extract_features("lenet.caffemodel", "lenet_features.prototxt", ["ip1"], ["ip1_lmdb"], 10)

The net runs in the TEST phase, its data from its own data layer; each image's slice of each
blob becomes one Datum of float_data (channels, height, width: the blob's axes after the first,
as Caffe's legacy accessors give them) under keys b"%010d" in order, as Caffe writes them. A
Data layer reads the result back (a feature DB is a data set like any other).
"""

from __future__ import annotations

import contextlib
import logging

import numpy
from tqdm import tqdm

from geeps_net.backend import to_host
from geeps_net.datumdb import db_writer
from geeps_net.errors import DataError, NetError
from geeps_net.net import Net
from geeps_net.proto import caffe_pb2

log = logging.getLogger(__name__)


def extract_features(
    weights,
    model,
    blob_names: list[str],
    db_paths: list,
    num_batches: int,
    *,
    backend: str = "lmdb",
    xp=numpy,
    progress: bool = True,
    overwrite: bool = False,
) -> list[int]:
    """Run `num_batches` forward passes of `model` with `weights` and write blob i's per-image
    features to the new LMDB (or LevelDB: `backend`) `db_paths[i]`; returns the images written
    to each DB. No DB is left behind when anything fails."""
    if len(blob_names) != len(db_paths):
        raise DataError(
            f"{len(blob_names)} feature blobs but {len(db_paths)} dataset names: give one each"
        )
    if num_batches < 1:
        raise DataError(f"num_mini_batches {num_batches}: must be at least 1")
    with Net(model, caffe_pb2.TEST, weights, xp=xp).forward_only() as net:
        _check_blobs(net, blob_names)
        with contextlib.ExitStack() as stack:
            writers = [
                stack.enter_context(db_writer(p, backend, overwrite=overwrite)) for p in db_paths
            ]
            log.info("Extracting Features")
            bar = tqdm(range(num_batches), desc="extract_features", unit="batch",
                       disable=None if progress else True)  # fmt: skip
            counts = [0] * len(writers)  # images so far, per blob (as Caffe's image_indices)
            for _ in bar:
                net.forward()
                for i, (name, writer) in enumerate(zip(blob_names, writers)):
                    for features in to_host(net.blobs[name].data):
                        writer.put(b"%010d" % counts[i], feature_datum(features))
                        counts[i] += 1
    for name, count in zip(blob_names, counts):
        log.info("Extracted features of %d query images for feature blob %s", count, name)
    log.info("Successfully extracted the features!")
    return counts


def feature_datum(features: numpy.ndarray) -> bytes:
    """One image's features (the blob's axes after the first, at most 3) as a serialized Datum."""
    dims = (*features.shape, 1, 1, 1)[:3]
    datum = caffe_pb2.Datum(channels=dims[0], height=dims[1], width=dims[2])
    datum.float_data.extend(features.astype(numpy.float32, copy=False).ravel().tolist())
    return datum.SerializeToString()


def _check_blobs(net: Net, names: list[str]) -> None:
    for name in names:
        if name not in net.blobs:
            raise NetError(f'net "{net.name}": no blob "{name}" to extract (TEST phase)')
        if len(net.blobs[name].shape) > 4:
            raise NetError(f'net "{net.name}": blob "{name}" has more than 4 axes')
