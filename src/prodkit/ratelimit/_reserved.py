"""Units a worker took from the shared store ahead of its requests, and refusals it can repeat.

A shared store that decides every request in Redis costs one round trip per request. When a
key has plenty of quota left, the Redis store takes a few more units than the request needs
(``reserve``: a share of the quota, never more than half of what is left) and hands them out
from this table with no round trip. Nothing is ever allowed that Redis did not grant: the
reserved units are counted in Redis the moment they are taken, so the limit holds across every
worker exactly as before. What a reservation can do is keep units idle in one worker while
another is refused; it is bounded three ways:

* a worker holds at most ``reserve`` times the quota per key (1 % by default), and never more
  than half of what Redis had left, so the last units of a quota are always decided in Redis;
* units still unused ``hold`` seconds after they were taken (1 s by default) are given back
  to Redis, and so are all of them when the store is closed;
* a worker that dies holding units loses them only as GCRA debt, which drains at the
  sustained rate: 1 % of the quota comes back within 1 % of the window.

A worker's unused units are the last ones the key's debt held when Redis last answered it, and
time drains that debt from the other end: once it has drained past a unit, the unit is gone.
It is neither handed out (a unit reserved a while ago and used now would let a burst through
on top of a full quota) nor given back (that would erase units other workers took since).

The table also remembers, for ``hold`` seconds at most, the debt Redis reported for a key, so
that a request that cannot fit (the debt only grows while nobody gives units back) is refused
without a round trip: a client far over its limit costs Redis one call per worker per
``hold``, not one per request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prodkit.ratelimit._policy import RateLimitPolicy
from prodkit.ratelimit._store import EPSILON, RateLimitDecision, decision


@dataclass(slots=True)
class _Held:
    """One key's reservation: units not yet handed out and the debt Redis last reported."""

    policy: RateLimitPolicy
    units: int
    #: The key's debt in Redis (seconds) at ``at``, this worker's unused units included.
    debt: float
    at: float
    expires: float


class Reservations:
    """The per-process table of reserved units, by store key (see the module docstring).

    Arguments:
        share: the share of a policy's quota taken ahead per round trip (0 for none).
        hold: seconds a reservation, or a remembered debt, is used before going back to Redis.
        max_keys: keys held at most; when full, requests are decided in Redis one by one.
        now: the clock, in seconds (only differences are used).
    """

    __slots__ = ("_held", "_now", "hold", "max_keys", "share")

    def __init__(self, share: float, hold: float, max_keys: int, now: Callable[[], float]) -> None:
        self.share = share
        self.hold = hold
        self.max_keys = max_keys
        self._now = now
        self._held: dict[str, _Held] = {}

    def __len__(self) -> int:
        return len(self._held)

    def take(self, key: str, policy: RateLimitPolicy, cost: int) -> RateLimitDecision | None:
        """Decide from the table, or ``None`` when only Redis can.

        Allowed when ``cost`` reserved units are at hand; refused when even this worker's
        unused units given back would not make room (Redis would refuse too).
        """
        held = self._held.get(key)
        if held is None:
            return None
        now = self._now()
        if now >= held.expires or held.policy is not policy:
            return None
        interval = policy.interval
        debt = held.debt - (now - held.at)
        if held.units * interval > debt + EPSILON:
            # Units whose place in the debt has drained are gone: a unit reserved a while ago
            # and handed out now must not make a burst larger than the quota allows.
            held.units = max(0, int(debt / interval + EPSILON))
        if held.units >= cost:
            held.units -= cost
            return decision(True, debt - held.units * interval, policy, cost)
        own = debt - held.units * interval
        if own + cost * interval > policy.ceiling:
            return decision(False, own, policy, cost)
        return None

    def ahead(self, policy: RateLimitPolicy) -> int:
        """Units to ask for beyond a request's cost (0 when the table is full)."""
        if len(self._held) >= self.max_keys:
            return 0
        return int(policy.quota * self.share)

    def release(self, key: str) -> float:
        """Forget ``key``; return its unused units, to give back with the next call."""
        held = self._held.pop(key, None)
        return 0 if held is None else self._returnable(held, self._now())

    @staticmethod
    def _returnable(held: _Held, now: float) -> float:
        """``held``'s unused units whose place in the key's debt has not drained yet.

        They are the last units of the debt Redis reported at ``held.at``: once time has
        drained the debt below them, they are back already, and giving them back as well
        would take units other workers took since off the debt.
        """
        pending = held.debt - (now - held.at)
        if pending <= 0.0:
            return 0
        # A part of a unit when only that part is still pending: what is left of the debt is
        # then what it would be had the worker never reserved.
        return min(held.units, pending / held.policy.interval)

    def record(self, key: str, policy: RateLimitPolicy, debt: float, units: int) -> None:
        """Remember what Redis answered: ``debt`` (seconds, reserved units included) and the
        ``units`` it reserved; merged with a reservation a concurrent call made meanwhile."""
        now = self._now()
        held = self._held.get(key)
        if held is not None and held.policy is policy and now < held.expires:
            held.debt = max(held.debt - (now - held.at), debt)
            held.units += units
            held.at = now
            held.expires = now + self.hold
        elif len(self._held) < self.max_keys:
            self._held[key] = _Held(policy, units, debt, now, now + self.hold)

    def expired(self) -> list[tuple[str, RateLimitPolicy, float]]:
        """Drop every reservation past its time; return those with units to give back."""
        now = self._now()
        gone = [key for key, held in self._held.items() if now >= held.expires]
        back = []
        for key in gone:
            held = self._held.pop(key)
            units = self._returnable(held, now)
            if units:
                back.append((key, held.policy, units))
        return back

    def clear(self) -> list[tuple[str, RateLimitPolicy, float]]:
        """Drop every reservation; return those with units to give back."""
        now = self._now()
        back = []
        for key, held in self._held.items():
            units = self._returnable(held, now)
            if units:
                back.append((key, held.policy, units))
        self._held.clear()
        return back


__all__ = ["Reservations"]
