"""Consistent, nested per-scorer sampling of completed traces.

Every scorer has its own ``sample_rate`` (MLflow's ``ScorerSamplingConfig(sample_rate=...)``). Deciding with
``random()`` per scorer would give each scorer an unrelated subset, so two scorers at 20 % would share only 4 %
of their traces and cross-scorer comparisons would be impossible. Instead the decision is a pure function of the
trace, following the OpenTelemetry "TraceState: Probability Sampling" scheme:

* the trace's randomness ``R`` is a 56-bit integer: the ``rv`` sub-key of the ``ot`` entry of the W3C tracestate
  when present (``ot=rv:<14 hex digits>``), else the low 56 bits of the 16-byte trace id (bytes 9..15, big-endian);
* a trace is sampled at ``rate`` when ``R >= threshold(rate)``, with ``threshold(rate) = round((1 - rate) * 2**56)``
  clamped to ``[0, 2**56]`` - so 1.0 samples everything, 0.0 nothing.

Because the same ``R`` is compared against a threshold that only falls as the rate rises, sampling is *nested*:
a trace sampled at 20 % is sampled by every scorer at 20 % or more, and all sidecar replicas agree.

Non-random trace ids. Test suites and some home-grown tracers use sequential or mostly-zero ids
(``00000000000000000000000000000001``, ``0x11111111...``). Their low 56 bits are tiny or patterned, which would
make a 50 % scorer sample none of them (or all). The low 56 bits are treated as degenerate when bytes 9..15 hold
fewer than 3 distinct byte values, or when bytes 9 and 10 are both zero (``R < 2**40``: counters up to 2**40);
then ``R`` is instead 56 bits of a BLAKE2b hash of the whole id keyed with the fixed constant ``_SALT``. Still a
pure function of the id, so consistency and nesting hold. A random id is hashed with probability about 2**-16,
which changes the observed rate by a factor of at most about 1 + 2**-16. Sequential ids whose low bytes are large
(a counter starting at 2**50) cannot be told apart from random ones and sample in runs; such ids should carry
``ot=rv:`` in their tracestate.
"""

from __future__ import annotations

import hashlib
import math
import re

__all__ = ["RANDOMNESS_BITS", "ConsistentSampler", "randomness", "sampled", "session_randomness", "threshold"]

RANDOMNESS_BITS = 56
_SPACE = 1 << RANDOMNESS_BITS  # 2**56
_SALT = b"tracejudge/sampling/v1"  # fixed: changing it changes which traces every deployment samples
_DEGENERATE_BELOW = 1 << 40  # R with bytes 9 and 10 both zero
_RV_SHAPE = re.compile(r"[0-9a-fA-F]{14}")


def threshold(rate: float) -> int:
    """The rejection threshold for ``rate``: sample when ``R >= threshold(rate)``. 1.0 -> 0, 0.0 -> 2**56."""
    _check_rate(rate)
    return min(_SPACE, max(0, round((1.0 - rate) * _SPACE)))


def randomness(trace_id: bytes | str, tracestate: str = "") -> int:
    """The 56-bit randomness of a trace: ``rv`` from tracestate, else the trace id's low 56 bits (or their hash).

    ``trace_id`` is the 16 raw bytes or their 32-digit hex form. A malformed ``rv`` is ignored (the id is used).
    """
    rv = _rv_from_tracestate(tracestate)
    if rv is not None:
        return rv
    raw = _trace_id_bytes(trace_id)
    low = int.from_bytes(raw[9:], "big")
    if len(set(raw[9:])) < 3 or low < _DEGENERATE_BELOW:
        return int.from_bytes(hashlib.blake2b(raw, digest_size=7, key=_SALT).digest(), "big")
    return low


def session_randomness(session_id: str) -> int:
    """The 56-bit randomness of a conversation: a keyed BLAKE2b hash of its session id (session ids are any
    text, often sequential). Multi-turn scorers sample a session when it is >= their threshold: consistent across
    the session's traces and replicas, and nested across scorers, like traces."""
    return int.from_bytes(hashlib.blake2b(session_id.encode(), digest_size=7, key=_SALT).digest(), "big")


def sampled(trace_id: bytes | str, rate: float, tracestate: str = "") -> bool:
    """Whether a scorer with ``sample_rate=rate`` scores this trace (0 <= rate <= 1, else ValueError)."""
    return randomness(trace_id, tracestate) >= threshold(rate)


class ConsistentSampler:
    """One scorer's sampler: the threshold is computed (and the rate validated) once, at registration."""

    __slots__ = ("rate", "threshold")

    def __init__(self, rate: float) -> None:
        self.threshold = threshold(rate)
        self.rate = float(rate)

    def sampled(self, trace_id: bytes | str, tracestate: str = "") -> bool:
        return randomness(trace_id, tracestate) >= self.threshold

    def __repr__(self) -> str:
        return f"ConsistentSampler(rate={self.rate!r})"


def _check_rate(rate: float) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or math.isnan(rate) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"sample rate must be a number between 0.0 and 1.0, got {rate!r}")


def _trace_id_bytes(trace_id: bytes | str) -> bytes:
    raw = bytes.fromhex(trace_id) if isinstance(trace_id, str) else bytes(trace_id)
    if len(raw) != 16:
        raise ValueError(f"trace id must be 16 bytes, got {len(raw)}")
    return raw


def _rv_from_tracestate(tracestate: str) -> int | None:
    """``rv`` of the ``ot`` list-member (``ot=th:c;rv:9b8233f7e3a151``), or None when absent or malformed."""
    if "ot=" not in tracestate:
        return None
    for member in tracestate.split(","):
        key, sep, value = member.strip().partition("=")
        if sep and key == "ot":
            for field in value.split(";"):
                name, colon, digits = field.partition(":")
                if colon and name == "rv":
                    return int(digits, 16) if _RV_SHAPE.fullmatch(digits) else None
            return None
    return None
