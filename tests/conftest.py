from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tests run on small shapes; keep them deterministic and off the user's cache.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RECSTACK_CACHE", str(tmp_path_factory.getbasetemp() / "recstack-cache"))


def shared_data(*parts: str) -> Path:
    """A file of ../shared/data. A missing sample fails the test with a clear message: these tests
    check the quality targets on real data and must not pass by being skipped."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"real data sample {path} is missing: ../shared/data must sit beside the checkout")
    return path
