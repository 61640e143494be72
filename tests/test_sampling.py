"""Consistent, nested sampling (scoring/sampling.py)."""

from __future__ import annotations

import hashlib
import math
import random
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracejudge.scoring.sampling import ConsistentSampler, randomness, sampled, threshold

IDS_PER_EXAMPLE = 2_000


def random_ids(seed: int, n: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(16) for _ in range(n)]


def sequential_ids(n: int, start: int = 0) -> list[bytes]:
    return [(start + i).to_bytes(16, "big") for i in range(n)]


def within_binomial_tolerance(hits: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(hits - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1


rates = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(p1=rates, p2=rates, seed=st.integers(min_value=0, max_value=2**32))
def test_sampling_is_nested(p1: float, p2: float, seed: int) -> None:
    low, high = sorted((p1, p2))
    ids = random_ids(seed, IDS_PER_EXAMPLE)
    at_low = {trace_id for trace_id in ids if sampled(trace_id, low)}
    at_high = {trace_id for trace_id in ids if sampled(trace_id, high)}
    assert at_low <= at_high


@settings(max_examples=30, deadline=None)
@given(p1=rates, p2=rates, start=st.integers(min_value=0, max_value=2**40))
def test_sampling_is_nested_for_degenerate_ids(p1: float, p2: float, start: int) -> None:
    low, high = sorted((p1, p2))
    ids = sequential_ids(IDS_PER_EXAMPLE, start)
    assert {i for i in ids if sampled(i, low)} <= {i for i in ids if sampled(i, high)}


@pytest.mark.parametrize("p", [0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99])
def test_observed_rate_matches_configured_rate(p: float) -> None:
    ids = random_ids(1234, 20_000)
    hits = sum(sampled(trace_id, p) for trace_id in ids)
    assert within_binomial_tolerance(hits, len(ids), p), hits


@settings(max_examples=20, deadline=None)
@given(p=st.floats(min_value=0.02, max_value=0.98), seed=st.integers(min_value=0, max_value=2**32))
def test_observed_rate_property(p: float, seed: int) -> None:
    ids = random_ids(seed, IDS_PER_EXAMPLE)
    hits = sum(sampled(trace_id, p) for trace_id in ids)
    assert within_binomial_tolerance(hits, len(ids), p, sigmas=5.0), (hits, p)


@given(trace_id=st.binary(min_size=16, max_size=16))
def test_rate_zero_samples_nothing_and_one_samples_everything(trace_id: bytes) -> None:
    assert not sampled(trace_id, 0.0)
    assert sampled(trace_id, 1.0)
    assert sampled(trace_id, 1)
    assert not sampled(trace_id, 0)


def test_thresholds_are_exact_integers() -> None:
    assert threshold(1.0) == 0
    assert threshold(0.0) == 2**56
    assert threshold(0.5) == 2**55
    assert threshold(0.25) == 3 * 2**54
    assert all(isinstance(threshold(p), int) for p in (0.0, 0.1, 1 / 3, 1.0))


@pytest.mark.parametrize("rate", [-0.01, 1.0001, float("nan"), float("inf"), True, "0.5", None])
def test_invalid_rates_are_rejected(rate: object) -> None:
    with pytest.raises(ValueError):
        sampled(bytes(16), cast(Any, rate))
    with pytest.raises(ValueError):
        ConsistentSampler(cast(Any, rate))


def test_randomness_is_the_low_56_bits_of_a_random_id() -> None:
    trace_id = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
    assert randomness(trace_id) == 0xCE929D0E0E4736
    assert randomness(trace_id.hex()) == randomness(trace_id)
    assert randomness(trace_id.hex().upper()) == randomness(trace_id)
    # R = 0xce92.. is about 0.807 * 2**56: sampled at rates above ~0.193, not below
    assert sampled(trace_id, 0.2)
    assert not sampled(trace_id, 0.19)


@pytest.mark.parametrize("bad", [b"", bytes(8), bytes(17), "abcd"])
def test_trace_ids_must_be_16_bytes(bad: bytes | str) -> None:
    with pytest.raises(ValueError):
        randomness(bad)


def test_tracestate_rv_overrides_the_trace_id() -> None:
    always = bytes.fromhex("0af7651916cd43dd84fffefdfcfbfaf9")  # R close to 2**56 from the id
    assert sampled(always, 0.001)
    state = "vendor=abc,ot=th:0;rv:00000000000001 , other=x"
    assert randomness(always, state) == 1
    assert not sampled(always, 0.999, state)
    assert sampled(always, 1.0, state)
    assert randomness(bytes(16), "ot=rv:ffffffffffffff") == 2**56 - 1
    assert sampled(bytes(16), 1e-9, "ot=rv:ffffffffffffff")
    assert randomness(bytes(16), "ot=rv:80000000000000") == 2**55


@pytest.mark.parametrize(
    "state",
    ["", "ot=th:8", "ot=rv:123", "ot=rv:zzzzzzzzzzzzzz", "ot=rv:0000000000000000", "xot=rv:00000000000001", "rv:1"],
)
def test_absent_or_malformed_rv_falls_back_to_the_trace_id(state: str) -> None:
    trace_id = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
    assert randomness(trace_id, state) == 0xCE929D0E0E4736


def test_sequential_ids_still_sample_at_the_rate() -> None:
    ids = sequential_ids(20_000)
    for p in (0.05, 0.3, 0.5, 0.9):
        hits = sum(sampled(trace_id, p) for trace_id in ids)
        assert within_binomial_tolerance(hits, len(ids), p), (p, hits)


@pytest.mark.parametrize(
    "make",
    [
        lambda i: i.to_bytes(16, "big"),  # counter in the low bytes
        lambda i: (i << 64).to_bytes(16, "big"),  # counter in the high half, low half zero
        lambda i: (i % 256).to_bytes(1, "big") * 16,  # one repeated byte
        lambda i: i.to_bytes(8, "big") + bytes(8),
    ],
)
def test_mostly_zero_and_patterned_ids_sample_at_the_rate(make: object) -> None:
    ids = {make(i) for i in range(5_000)}  # type: ignore[operator]
    hits = sum(sampled(trace_id, 0.5) for trace_id in ids)
    assert within_binomial_tolerance(hits, len(ids), 0.5), hits


def test_degenerate_ids_use_the_documented_salted_hash() -> None:
    trace_id = (7).to_bytes(16, "big")
    digest = hashlib.blake2b(trace_id, digest_size=7, key=b"tracejudge/sampling/v1").digest()
    assert randomness(trace_id) == int.from_bytes(digest, "big")
    assert randomness(trace_id) < 2**56


def test_consistent_sampler_agrees_with_sampled() -> None:
    sampler = ConsistentSampler(0.3)
    assert sampler.threshold == threshold(0.3)
    assert repr(sampler) == "ConsistentSampler(rate=0.3)"
    for trace_id in random_ids(7, 500):
        assert sampler.sampled(trace_id) == sampled(trace_id, 0.3)
        assert sampler.sampled(trace_id, "ot=rv:00000000000000") is False
