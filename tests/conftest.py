from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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


@pytest.fixture(autouse=True)
def restore_attdarts_logger():
    """The CLI commands configure the "attdarts" logger for a terminal (handlers, level, and
    `train` stops propagation); put it back after every test so that `caplog` in a later test
    still sees the records."""
    import logging

    logger = logging.getLogger("attdarts")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]
