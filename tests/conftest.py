"""Fixtures shared by several test files (opted into per file with ``pytest.mark.usefixtures``)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """On a shared 2-core machine OpenMP spinning makes 2-thread convs up to 100x slower; 1 is steady."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def yuface_one_omp_thread() -> Iterator[None]:
    """yuface's bundled libgomp reads OMP_NUM_THREADS when it is first loaded; spinning threads on a
    shared 2-core box make it 10x slower, so load it single-threaded."""
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import yuface  # noqa: F401
    except ImportError:
        pass
    yield
    if old is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = old
