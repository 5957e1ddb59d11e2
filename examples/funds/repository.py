"""Fund storage: the repository protocol and the embedded in-memory implementation."""

from __future__ import annotations

import asyncio
import base64
import binascii
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from examples.funds.model import MODEL_VERSION, Stage, irr
from prodkit import FieldError, Problem

MAX_PAGE = 100


@dataclass(frozen=True, slots=True)
class Fund:
    """A stored fund."""

    id: str
    user_id: str
    name: str
    description: str
    size: float
    stages: tuple[Stage, ...]
    irr: float
    model_version: str
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """The public representation (no ``user_id``, no ``deleted_at``)."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "size": self.size,
            "stages": [stage.to_json() for stage in self.stages],
            "irr": self.irr,
            "model_version": self.model_version,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing and the cursor of the next (``None`` at the end)."""

    items: list[Fund]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Summary:
    """A caller's totals."""

    total_funds: int
    total_aum: float
    avg_irr: float | None
    last_activity: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "total_funds": self.total_funds,
            "total_aum": self.total_aum,
            "avg_irr": None if self.avg_irr is None else round(self.avg_irr, 6),
            "last_activity": None if self.last_activity is None else self.last_activity.isoformat(),
        }


#: Run inside a write's transaction, with its connection and the written fund, before the commit.
BeforeCommit = Callable[[Any, Fund], Awaitable[None]]
#: Given the write's commit (to await) and the written fund: what must happen around the commit.
CommitWith = Callable[[Awaitable[None], Fund], Awaitable[None]]


class Repository(Protocol):
    """What the service needs from storage; in-memory and PostgreSQL implement it.

    ``before_commit`` runs inside the write's database transaction, so that what it writes
    (the idempotency record) commits with the fund or not at all. A repository without
    transactions (the in-memory one, whose data dies with the process) does not call it.
    ``commit_with`` commits the write (the idempotency record of a store that cannot join
    the transaction is written while the commit is in flight).
    """

    async def create(
        self,
        user_id: str,
        fields: dict[str, Any],
        *,
        before_commit: BeforeCommit | None = None,
        commit_with: CommitWith | None = None,
    ) -> Fund: ...
    async def get(self, user_id: str, fund_id: str) -> Fund | None: ...
    async def update(
        self,
        user_id: str,
        fund_id: str,
        fields: dict[str, Any],
        *,
        before_commit: BeforeCommit | None = None,
        commit_with: CommitWith | None = None,
    ) -> Fund | None: ...
    async def delete(self, user_id: str, fund_id: str) -> bool: ...
    async def list(
        self, user_id: str, *, q: str | None, limit: int, cursor: str | None
    ) -> Page: ...
    async def summary(self, user_id: str) -> Summary: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


def encode_cursor(created_at: datetime, fund_id: str) -> str:
    """An opaque keyset cursor: the last item's (created_at, id)."""
    raw = f"{created_at.isoformat()}|{fund_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Parse a cursor or raise a 400 ``INVALID_CURSOR`` problem."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, fund_id = raw.partition("|")
        created_at = datetime.fromisoformat(stamp)
        if created_at.tzinfo is None:
            created_at = created_at.replace(tzinfo=UTC)
        created_at = created_at.astimezone(UTC)  # out of range near year 1 or 9999: a 400
        if str(uuid.UUID(fund_id)) != fund_id:
            raise ValueError("not a canonical fund id")
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError) as exc:
        raise Problem(
            400,
            "INVALID_CURSOR",
            "cursor is not one this service issued",
            errors=[FieldError("/query/cursor", "malformed cursor")],
        ) from exc
    return created_at, fund_id


def now() -> datetime:
    return datetime.now(UTC)


async def committed() -> None:
    """The commit of a repository without transactions: done as soon as written."""


def search_text(q: str | None) -> str | None:
    """The search to run for ``q``, or ``None`` for no filter.

    A blank ``q`` (``""``, ``"    "``) searches for nothing in particular, so it lists every
    fund, on every repository: PostgreSQL's ``plainto_tsquery`` would otherwise match no row
    while the in-memory search matched them all.
    """
    if q is None or not q.strip():
        return None
    return q


def matches_query(fund: Fund, q: str) -> bool:
    """The in-memory stand-in for full-text search: every word appears in name or description."""
    text = f"{fund.name} {fund.description}".lower()
    return all(word in text for word in q.lower().split())


@dataclass
class InMemoryRepository:
    """Funds in a dict: the default when no ``DATABASE_URL`` is set (single process only)."""

    funds: dict[str, Fund] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def create(
        self,
        user_id: str,
        fields: dict[str, Any],
        *,
        before_commit: BeforeCommit | None = None,
        commit_with: CommitWith | None = None,
    ) -> Fund:
        stamp = now()
        fund = Fund(
            id=str(uuid.uuid4()),
            user_id=user_id,
            name=fields["name"],
            description=fields.get("description", ""),
            size=fields["size"],
            stages=fields["stages"],
            irr=irr(fields["stages"]),
            model_version=MODEL_VERSION,
            created_at=stamp,
            updated_at=stamp,
        )
        async with self._lock:
            self.funds[fund.id] = fund
        if commit_with is not None:
            await commit_with(committed(), fund)
        return fund

    async def get(self, user_id: str, fund_id: str) -> Fund | None:
        fund = self.funds.get(fund_id)
        if fund is None or fund.user_id != user_id or fund.deleted_at is not None:
            return None
        return fund

    async def update(
        self,
        user_id: str,
        fund_id: str,
        fields: dict[str, Any],
        *,
        before_commit: BeforeCommit | None = None,
        commit_with: CommitWith | None = None,
    ) -> Fund | None:
        async with self._lock:
            fund = await self.get(user_id, fund_id)
            if fund is None:
                return None
            changes: dict[str, Any] = {**fields, "updated_at": now()}
            if "stages" in fields:
                changes["irr"] = irr(fields["stages"])
                changes["model_version"] = MODEL_VERSION
            updated = replace(fund, **changes)
            self.funds[fund_id] = updated
        if commit_with is not None:
            await commit_with(committed(), updated)
        return updated

    async def delete(self, user_id: str, fund_id: str) -> bool:
        async with self._lock:
            fund = await self.get(user_id, fund_id)
            if fund is None:
                return False
            self.funds[fund_id] = replace(fund, deleted_at=now(), updated_at=now())
            return True

    async def list(self, user_id: str, *, q: str | None, limit: int, cursor: str | None) -> Page:
        after = decode_cursor(cursor) if cursor else None
        q = search_text(q)
        rows = [
            f
            for f in self.funds.values()
            if f.user_id == user_id and f.deleted_at is None and (not q or matches_query(f, q))
        ]
        rows.sort(key=lambda f: (f.created_at, f.id), reverse=True)
        if after is not None:
            rows = [f for f in rows if (f.created_at, f.id) < after]
        page = rows[: limit + 1]
        more = len(page) > limit
        items = page[:limit]
        next_cursor = encode_cursor(items[-1].created_at, items[-1].id) if more and items else None
        return Page(items, next_cursor)

    async def summary(self, user_id: str) -> Summary:
        mine = [f for f in self.funds.values() if f.user_id == user_id]
        live = [f for f in mine if f.deleted_at is None]
        last = max((f.updated_at for f in mine), default=None)
        return Summary(
            total_funds=len(live),
            total_aum=round(sum(f.size for f in live), 2),
            avg_irr=(sum(f.irr for f in live) / len(live)) if live else None,
            last_activity=last,
        )

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
