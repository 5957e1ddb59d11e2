"""The naming rules and default buckets that recording and business metrics share."""

from __future__ import annotations

import pytest

from prodkit.metrics import DEFAULT_BUCKETS, SIZE_BUCKETS


@pytest.mark.parametrize("buckets", [DEFAULT_BUCKETS, SIZE_BUCKETS])
def test_default_buckets_increase(buckets: tuple[float, ...]) -> None:
    assert list(buckets) == sorted(set(buckets))
    assert buckets[0] > 0


def test_size_buckets_run_from_64_bytes_to_16_mib() -> None:
    assert (SIZE_BUCKETS[0], SIZE_BUCKETS[-1]) == (64.0, 16 * 1024 * 1024)
