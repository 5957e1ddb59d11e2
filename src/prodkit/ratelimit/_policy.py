"""Rate-limit policies, ``"100/minute"`` parsing, and the IETF ``RateLimit`` header fields.

Header syntax follows draft-ietf-httpapi-ratelimit-headers (revisions 08 to 11): both fields
are Structured Field Lists (RFC 9651) of policy names as quoted strings with parameters::

    RateLimit-Policy: "default";q=100;w=60
    RateLimit: "default";r=42;t=12

``q`` is the quota, ``w`` the window in seconds, ``r`` the remaining quota units and ``t`` the
seconds until the quota resets (see :class:`~prodkit.ratelimit.RateLimitDecision` for what
"reset" means for the GCRA).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field

from prodkit._core.exceptions import ConfigurationError

#: Units accepted by :func:`parse_rate`, in seconds.
RATE_UNITS: dict[str, int] = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}

_RATE = re.compile(r"\s*(\d+)\s*(?:/|per)\s*(\d+)?\s*([a-z]+?)s?\s*\Z", re.IGNORECASE)
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")
# A route named as it reads: ``/``-separated segments of letters, digits, ``.`` and ``-``.
_PLAIN_ROUTE = re.compile(r"(?:/[A-Za-z0-9.-]+)+\Z")
_WORDS = re.compile(r"[A-Za-z0-9.-]+")
# Room kept at the end of a route's name for the ``:N`` of its second and later policies.
_INDEX_ROOM = 4
# A float error of a few nanoseconds must not turn 12 into 13 when rounding seconds up.
_CEIL_SLACK = 1e-6


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    """A quota of requests per window, for one client key.

    Arguments:
        quota: requests a client may make in one ``window``; also the largest burst.
        window: the window in whole seconds (the ``w`` parameter of ``RateLimit-Policy``).
        name: the policy's name in the headers and metrics (default ``"default"``; ``"login"``,
            say): letters, digits and ``_ . : -``, at most 64 characters.
    """

    quota: int
    window: int
    name: str = "default"
    #: ``RateLimit-Policy`` list member, computed once.
    header: str = field(init=False, repr=False, compare=False)
    #: Seconds between two requests at the sustained rate (``window / quota``), computed once:
    #: every decision reads it, and a property would be a Python call each time.
    interval: float = field(init=False, repr=False, compare=False)
    #: The most debt (seconds) a request may leave: the window plus a float slack of a
    #: thousandth of a unit (at least a microsecond). Arrival times near the epoch lose about
    #: 2e-7 s per step to rounding; over a long quota (``1000/day``) that would refuse the last
    #: unit, and a thousandth of a unit can never let one more through.
    ceiling: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.quota, bool) or not isinstance(self.quota, int) or self.quota < 1:
            raise ConfigurationError(
                f"rate limit quota must be a positive integer, not {self.quota!r}"
            )
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ConfigurationError(
                f"rate limit window must be a positive whole number of seconds, not {self.window!r}"
            )
        if not _NAME.match(self.name):
            raise ConfigurationError(
                f"rate limit policy name {self.name!r} must be 1-64 characters from "
                "A-Z a-z 0-9 _ . : -"
            )
        object.__setattr__(self, "header", f'"{self.name}";q={self.quota};w={self.window}')
        object.__setattr__(self, "interval", self.window / self.quota)
        object.__setattr__(self, "ceiling", self.window + max(1e-6, self.interval / 1000))

    @classmethod
    def parse(cls, rate: str, name: str = "default") -> RateLimitPolicy:
        """Build a policy from ``"100/minute"`` (see :func:`parse_rate`)."""
        quota, window = parse_rate(rate)
        return cls(quota, window, name)


def parse_rate(rate: str) -> tuple[int, int]:
    """Parse ``"100/minute"`` into ``(quota, window_seconds)``.

    Accepts a count per ``second``, ``minute``, ``hour`` or ``day`` (also ``s``/``sec``,
    ``m``/``min``, ``h``, ``d``, plurals, ``per`` instead of ``/``, and a multiplier:
    ``"1000/5 minutes"``). Raises :class:`~prodkit.ConfigurationError` with the accepted forms
    otherwise, so a bad ``RATE_LIMIT`` environment variable stops the service at start-up.
    """
    found = _RATE.match(rate) if isinstance(rate, str) else None
    unit = found.group(3).lower() if found else ""
    if found is None or unit not in RATE_UNITS:
        raise ConfigurationError(
            f"rate {rate!r} is not a rate; write a count per second, minute, hour or day, "
            "for example '100/minute', '10/second', '5000/hour' or '1000/5 minutes'"
        )
    quota = int(found.group(1))
    multiplier = int(found.group(2) or 1)
    if quota < 1 or multiplier < 1:
        raise ConfigurationError(f"rate {rate!r}: the count and multiplier must be at least 1")
    return quota, multiplier * RATE_UNITS[unit]


def to_policy(value: RateLimitPolicy | str, name: str = "default") -> RateLimitPolicy:
    """Accept a policy or a rate string (``"100/minute"``) wherever a policy is expected."""
    if isinstance(value, RateLimitPolicy):
        return value
    if isinstance(value, str):
        return RateLimitPolicy.parse(value, name)
    raise ConfigurationError(
        f"expected a RateLimitPolicy or a rate such as '100/minute', not {type(value).__name__}"
    )


def route_policy_name(template: str, index: int = 0) -> str:
    """The name of a policy given as a string for route ``template`` (``index``: its position).

    Two different templates, or two positions, never get the same name, so they never share a
    quota or a store key:

    * a plain template, ``/``-separated segments of letters, digits, ``.`` and ``-``, at most
      55 characters long, reads as it is, ``_`` standing for ``/``: ``/api/login`` is
      ``route:api_login`` (only ``/api/login`` can give that name);
    * any other template (``/api/funds/{id}``, ``/api_login``, ``/a/``, ``/``, a long one) is
      its words cut to 37 characters, a colon and 16 hex digits of the SHA-256 of the exact
      template: ``route:api_funds_id:5f1c…``. The second colon keeps these apart from plain
      names;
    * the second and later policies of a route add ``:2``, ``:3`` ... (a decimal number, never
      16 hex digits, so never mistaken for a digest).
    """
    readable = "_".join(_WORDS.findall(template))
    name = f"route:{readable}"
    if not _PLAIN_ROUTE.match(template) or len(name) > 64 - _INDEX_ROOM:
        digest = hashlib.sha256(template.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        name = f"route:{readable[:37] or 'root'}:{digest}"
    return name if index == 0 else f"{name}:{index + 1}"


def ceil_seconds(seconds: float) -> int:
    """Whole seconds, rounded up, never negative (for ``t`` and ``Retry-After``)."""
    if seconds <= 0:
        return 0
    return math.ceil(seconds - _CEIL_SLACK)


__all__ = [
    "RATE_UNITS",
    "RateLimitPolicy",
    "ceil_seconds",
    "parse_rate",
    "route_policy_name",
    "to_policy",
]
