from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT.parent / "shared" / "data" / "cifar10-sample"


@pytest.fixture
def root() -> Path:
    return ROOT
