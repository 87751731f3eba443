from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT.parent / "shared" / "data" / "cifar10-sample"


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def one_thread():
    """Two shared cores: one intra-op torch thread avoids oversubscription, which made tiny
    models 5-30x slower. torch is imported here, not at module level, so front-end tests never
    load it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
