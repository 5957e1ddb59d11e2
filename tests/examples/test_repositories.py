"""Both fund repositories honour one contract; PostgreSQL's queries use their indexes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from examples.funds.model import Stage
from examples.funds.postgres import PostgresRepository, list_query
from examples.funds.repository import InMemoryRepository, Repository
from prodkit import Problem

STAGES = (Stage("seed", 18, 0.4, 0.1), Stage("a", 24, 0.5, 0.2))


def fields(name: str = "Fund", size: float = 100.0, description: str = "") -> dict[str, Any]:
    return {"name": name, "size": size, "description": description, "stages": STAGES}


@pytest.fixture(params=["memory", "postgres"])
async def repository(request: pytest.FixtureRequest) -> AsyncIterator[Repository]:
    if request.param == "memory":
        yield InMemoryRepository()
        return
    dsn = request.getfixturevalue("postgres_dsn")
    repo = await PostgresRepository.connect(dsn, min_size=1, max_size=4, summary_interval=0.05)
    try:
        yield repo
    finally:
        await repo.close()


def user() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


async def summary_of(repository: Repository, user_id: str) -> dict[str, Any]:
    if isinstance(repository, PostgresRepository):
        await repository.refresh_summaries(wait=True)
    return (await repository.summary(user_id)).to_json()


async def test_create_get_update_delete(repository: Repository) -> None:
    owner, other = user(), user()
    fund = await repository.create(owner, fields("Alpha", 10.5, "first"))
    assert fund.name == "Alpha"
    assert fund.stages == STAGES
    assert await repository.get(owner, fund.id) == fund
    assert await repository.get(other, fund.id) is None
    assert await repository.get(owner, "not-a-uuid") is None
    updated = await repository.update(
        owner, fund.id, {"name": "Beta", "stages": (Stage("x", 12, 0.2, 0.3),)}
    )
    assert updated is not None
    assert (updated.name, updated.size, updated.stages[0].name) == ("Beta", 10.5, "x")
    assert updated.irr != fund.irr
    assert updated.updated_at >= fund.updated_at
    assert await repository.update(other, fund.id, {"name": "stolen"}) is None
    assert await repository.delete(other, fund.id) is False
    assert await repository.delete(owner, fund.id) is True
    assert await repository.delete(owner, fund.id) is False
    assert await repository.get(owner, fund.id) is None


async def test_pagination_is_newest_first_and_complete(repository: Repository) -> None:
    owner = user()
    created = [await repository.create(owner, fields(f"f{i}")) for i in range(7)]
    await repository.create(user(), fields("someone else's"))
    deleted = created.pop(3)
    await repository.delete(owner, deleted.id)
    seen: list[str] = []
    cursor = None
    while True:
        page = await repository.list(owner, q=None, limit=3, cursor=cursor)
        seen.extend(f.id for f in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [f.id for f in reversed(created)]


async def test_search(repository: Repository) -> None:
    owner = user()
    await repository.create(owner, fields("Ocean Ventures", description="blue water"))
    await repository.create(owner, fields("Desert Capital", description="sand and sun"))
    hits = await repository.list(owner, q="ocean", limit=10, cursor=None)
    assert [f.name for f in hits.items] == ["Ocean Ventures"]
    hits = await repository.list(owner, q="sand sun", limit=10, cursor=None)
    assert [f.name for f in hits.items] == ["Desert Capital"]
    assert (await repository.list(owner, q="nothing", limit=10, cursor=None)).items == []


@pytest.mark.parametrize("blank", ["", " ", "    ", "\t\n "])
async def test_a_blank_search_is_no_filter_on_every_repository(
    repository: Repository, blank: str
) -> None:
    # Issue #16: "    " listed every fund from memory and none from PostgreSQL.
    owner = user()
    await repository.create(owner, fields("Ocean Ventures"))
    await repository.create(owner, fields("Desert Capital"))
    everything = await repository.list(owner, q=None, limit=10, cursor=None)
    searched = await repository.list(owner, q=blank, limit=10, cursor=None)
    assert [f.id for f in searched.items] == [f.id for f in everything.items]
    assert len(searched.items) == 2


async def test_bad_cursor_is_a_400_problem(repository: Repository) -> None:
    with pytest.raises(Problem) as info:
        await repository.list(user(), q=None, limit=10, cursor="bm90LWEtY3Vyc29y")
    assert info.value.status == 400


async def test_summary_matches_between_repositories(repository: Repository) -> None:
    owner = user()
    assert await summary_of(repository, owner) == {
        "total_funds": 0,
        "total_aum": 0,
        "avg_irr": None,
        "last_activity": None,
    }
    a = await repository.create(owner, fields(size=100))
    b = await repository.create(owner, fields(size=50.25))
    await repository.create(owner, fields(size=10))
    await repository.delete(owner, a.id)
    summary = await summary_of(repository, owner)
    assert summary["total_funds"] == 2
    assert summary["total_aum"] == 60.25
    assert summary["avg_irr"] == round(b.irr, 6)
    assert summary["last_activity"] is not None


@pytest.mark.postgres
async def test_summaries_refresh_in_the_background(postgres_dsn: str) -> None:
    import asyncio

    repo = await PostgresRepository.connect(
        postgres_dsn, min_size=1, max_size=2, summary_interval=0.05
    )
    try:
        owner = user()
        await repo.create(owner, fields(size=42))
        for _ in range(100):  # bounded: 5 s at most
            if (await repo.summary(owner)).total_funds == 1:
                break
            await asyncio.sleep(0.05)
        assert (await repo.summary(owner)).total_aum == 42
    finally:
        await repo.close()


@pytest.mark.postgres
async def test_list_and_search_use_their_indexes_on_100k_rows(postgres_dsn: str) -> None:
    import asyncpg

    # Migrations (idempotent) then 100,000 funds over 200 users, a rare word in a few.
    repo = await PostgresRepository.connect(postgres_dsn, min_size=1, max_size=1)
    conn = await asyncpg.connect(postgres_dsn)
    try:
        prefix = f"bulk-{uuid.uuid4().hex[:8]}"
        await conn.execute(
            """
            INSERT INTO funds (id, user_id, name, description, size, stages, irr, model_version,
                               created_at, updated_at, deleted_at)
            SELECT gen_random_uuid(), $1 || '-' || (g % 200), 'fund ' || g,
                   CASE WHEN g % 997 = 0 THEN 'zebra mandate' ELSE 'generalist mandate ' || (g % 50) END,
                   1000 + g, '[]'::jsonb, 0.1, 'stage-model-1',
                   now() - g * interval '1 minute', now(),
                   CASE WHEN g % 10 = 0 THEN now() END
            FROM generate_series(1, 100000) AS g
            """,
            prefix,
        )
        await conn.execute("ANALYZE funds")
        owner = f"{prefix}-7"

        async def plan(q: str | None, cursor: str | None = None) -> str:
            sql, args = list_query(owner, q=q, limit=20, cursor=cursor)
            rows = await conn.fetch("EXPLAIN " + sql, *args)
            return "\n".join(row[0] for row in rows)

        listing = await plan(None)
        assert "funds_user_newest_idx" in listing, listing
        assert "Seq Scan" not in listing, listing
        first = await repo.list(owner, q=None, limit=20, cursor=None)
        assert first.next_cursor is not None
        assert "funds_user_newest_idx" in await plan(None, first.next_cursor)
        search = await plan("zebra")
        # The full-text index, or the owner's index when the planner reckons the owner's few
        # hundred rows cheaper to filter (its choice moves with the statistics): an index either way.
        assert "funds_search_idx" in search or "funds_user_newest_idx" in search, search
        assert "Seq Scan" not in search, search
    finally:
        await conn.close()
        await repo.close()
