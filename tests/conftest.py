"""Shared fixtures: `xp` runs a test on NumPy, and on CuPy too under `-m gpu` when a GPU is
present."""

from pathlib import Path

import numpy
import pytest

from geeps_net.backend import gpu_available

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


def _xp_params():
    params = [pytest.param(numpy, id="numpy")]
    marks = [pytest.mark.gpu]
    if not gpu_available():
        marks.append(pytest.mark.skip(reason="no CUDA device: the CuPy run needs a GPU"))
    params.append(pytest.param("cupy", id="cupy", marks=marks))
    return params


@pytest.fixture(params=_xp_params())
def xp(request):
    """The array module under test: numpy, or cupy on a GPU machine."""
    if request.param == "cupy":
        import cupy

        return cupy
    return request.param


@pytest.fixture
def reference():
    """Path to ../shared/reference (real Caffe files and oracle cases); skips if not laid out."""
    if not REFERENCE.is_dir():
        pytest.skip(f"reference files not found at {REFERENCE}")
    return REFERENCE
