import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    """The released-format fixtures: ../shared/reference beside the repository (HALTON_REFERENCE overrides)."""
    path = Path(os.environ.get("HALTON_REFERENCE", ROOT.parent / "shared" / "reference"))
    if not (path / "official_c2i_tiny.pth").is_file():
        pytest.fail(f"reference fixtures not found in {path}; set HALTON_REFERENCE")
    return path
