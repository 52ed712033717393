from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TOT_CSV = SHARED / "data" / "game24" / "24.csv"


@pytest.fixture
def tot_csv() -> Path:
    if not TOT_CSV.is_file():  # CI and developer machines have ../shared beside the checkout
        pytest.fail(f"ToT's 24.csv not found at {TOT_CSV} (../shared must sit beside the repo)")
    return TOT_CSV
