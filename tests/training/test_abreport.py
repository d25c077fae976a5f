"""The A/B report's sample-ratio check: its chi-square tail, without scipy."""

from __future__ import annotations

import pytest
from scipy.stats import chi2

from training.abreport import chi2_sf


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 8, 11])
def test_chi2_sf_matches_scipy(df: int) -> None:
    for x in (1e-3, 0.5, 1.0, 3.84, 10.0, 50.0, 300.0):
        assert chi2_sf(x, df) == pytest.approx(float(chi2.sf(x, df)), abs=1e-12, rel=1e-9)


def test_chi2_sf_edges() -> None:
    assert chi2_sf(0.0, 3) == 1.0
    with pytest.raises(ValueError, match="degree of freedom"):
        chi2_sf(1.0, 0)
