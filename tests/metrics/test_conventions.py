"""The naming rules and default buckets that recording and business metrics share."""

from __future__ import annotations

import pytest

from prodkit import ConfigurationError
from prodkit.metrics import DEFAULT_BUCKETS, SIZE_BUCKETS
from prodkit.metrics._conventions import check_prefix


@pytest.mark.parametrize("prefix", ["", "svc_", "prodkit_", "ns:sub_", "_private_"])
def test_prefixes_that_can_start_a_metric_name(prefix: str) -> None:
    check_prefix(prefix)


# https://prometheus.io/docs/concepts/data_model/#metric-names-and-labels
@pytest.mark.parametrize("prefix", ["1bad", "bad prefix", "svc-", "é_", "svc_\n"])
def test_prefixes_that_cannot(prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="metric_prefix"):
        check_prefix(prefix)


@pytest.mark.parametrize("buckets", [DEFAULT_BUCKETS, SIZE_BUCKETS])
def test_default_buckets_increase(buckets: tuple[float, ...]) -> None:
    assert list(buckets) == sorted(set(buckets))
    assert buckets[0] > 0


def test_size_buckets_run_from_64_bytes_to_16_mib() -> None:
    assert (SIZE_BUCKETS[0], SIZE_BUCKETS[-1]) == (64.0, 16 * 1024 * 1024)
