"""The README's scenarios, end to end: a research task made of steps, an order that waits
days for a `packed:<order_id>` event (or gives up after a week), and a parent that fans
out to two children, one of which needs three attempts."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import attrs
import pytest

import durable_trio as dt
from durable_trio.testing import advance_clock, run_until_idle

# -- (a) research: three steps, a typed result ----------------------------------------


@attrs.frozen
class ResearchParams:
    query: str


@attrs.frozen
class Analysis:
    claims: list[str]
    confidence: float


@attrs.frozen
class ResearchResult:
    summary: str
    sources: list[str]
    confidence: float


class Research:
    def __init__(self, analyze_failures: int = 0) -> None:
        self.calls: list[str] = []
        self.analyze_failures = analyze_failures

        async def find_sources(query: str) -> list[str]:
            self.calls.append("find-sources")
            return [f"https://example.org/{query}/{i}" for i in range(3)]

        def analyze(sources: list[str]) -> Analysis:
            self.calls.append("analyze")
            if self.analyze_failures:
                self.analyze_failures -= 1
                raise ConnectionError("the analysis service is down")
            return Analysis([f"claim from {s}" for s in sources], confidence=0.75)

        async def summarize(analysis: Analysis) -> str:
            self.calls.append("summarize")
            return f"{len(analysis.claims)} claims agree"

        @dt.task("research")
        async def research(ctx: dt.TaskContext, params: ResearchParams) -> ResearchResult:
            sources = await ctx.step("find-sources", find_sources, params.query)
            analysis = await ctx.step("analyze", analyze, sources)
            assert isinstance(analysis, Analysis)  # typed from analyze's annotation
            summary = await ctx.step("summarize", summarize, analysis)
            return ResearchResult(summary, sources, analysis.confidence)

        self.task = research


async def test_research(client: dt.Durable) -> None:
    r = Research()
    client.register(r.task)
    spawned = await client.spawn(
        r.task,
        ResearchParams("consensus"),
        options=dt.SpawnOptions(
            max_attempts=5, retry=dt.RetryStrategy.exponential(base=timedelta(seconds=1))
        ),
    )
    await run_until_idle(client)
    result = await client.wait_result(r.task, spawned.task_id, timeout=10)
    assert result == ResearchResult(
        "3 claims agree", [f"https://example.org/consensus/{i}" for i in range(3)], 0.75
    )
    assert r.calls == ["find-sources", "analyze", "summarize"]


async def test_research_resumes_after_a_failed_step(client: dt.Durable) -> None:
    r = Research(analyze_failures=2)
    client.register(r.task)
    spawned = await client.spawn(
        r.task,
        ResearchParams("q"),
        options=dt.SpawnOptions(
            max_attempts=5, retry=dt.RetryStrategy.exponential(base=timedelta(seconds=1))
        ),
    )
    for _ in range(3):
        await run_until_idle(client)
        await advance_clock(client, 60)  # past any backoff
    result = await client.wait_result(r.task, spawned.task_id, timeout=10)
    assert result.summary == "3 claims agree"
    # find-sources ran once: its checkpoint was replayed by attempts 2 and 3.
    assert r.calls == ["find-sources", "analyze", "analyze", "analyze", "summarize"]
    assert (await client.get_task(spawned.task_id)).attempts == 3


# -- (b) an order that waits days for `packed:<order_id>` ------------------------------


@attrs.frozen
class Order:
    order_id: str
    amount_cents: int


@attrs.frozen
class Packed:
    boxes: int
    warehouse: str


@attrs.frozen
class OrderOutcome:
    status: str
    charged: int
    boxes: int = 0


class Orders:
    def __init__(self) -> None:
        self.effects: list[str] = []

        @dt.task("fulfil_order")
        async def fulfil_order(ctx: dt.TaskContext, order: Order) -> OrderOutcome:
            def charge() -> int:
                self.effects.append(f"charge {order.order_id}")
                return order.amount_cents

            charged = await ctx.step("charge", charge)
            try:
                packed = await ctx.await_event(
                    f"packed:{order.order_id}", timeout=timedelta(days=7), type=Packed
                )
            except dt.EventTimeout:
                await ctx.step("refund", lambda: self.effects.append(f"refund {order.order_id}"))
                return OrderOutcome("refunded", charged)
            await ctx.step("ship", lambda: self.effects.append(f"ship {order.order_id}"))
            return OrderOutcome("shipped", charged, packed.boxes)

        self.task = fulfil_order


async def test_order_waits_days_for_packing(client: dt.Durable) -> None:
    orders = Orders()
    client.register(orders.task)
    spawned = await client.spawn(orders.task, Order("42", 1999))
    other = await client.spawn(orders.task, Order("43", 500))
    await run_until_idle(client)
    assert (await client.get_task(spawned.task_id)).state is dt.TaskState.SLEEPING

    await advance_clock(client, timedelta(days=2))
    assert await run_until_idle(client) == 0  # nothing happens while it waits

    assert await client.emit_event("packed:42", {"boxes": 2, "warehouse": "north"}) == 1
    await run_until_idle(client)
    assert await client.wait_result(orders.task, spawned.task_id, timeout=10) == OrderOutcome(
        "shipped", 1999, 2
    )
    # The other order is untouched by order 42's event.
    assert (await client.get_task(other.task_id)).state is dt.TaskState.SLEEPING
    assert sorted(orders.effects) == ["charge 42", "charge 43", "ship 42"]  # runs interleave


async def test_order_times_out_after_seven_days(client: dt.Durable) -> None:
    orders = Orders()
    client.register(orders.task)
    spawned = await client.spawn(orders.task, Order("7", 100))
    await run_until_idle(client)
    await advance_clock(client, timedelta(days=6, hours=23))
    assert await run_until_idle(client) == 0
    await advance_clock(client, timedelta(hours=1, seconds=1))
    assert await run_until_idle(client) == 1
    assert await client.wait_result(orders.task, spawned.task_id, timeout=10) == OrderOutcome(
        "refunded", 100
    )
    # Packing news after the refund changes nothing.
    assert await client.emit_event("packed:7", {"boxes": 1, "warehouse": "late"}) == 0
    assert await run_until_idle(client) == 0
    assert orders.effects == ["charge 7", "refund 7"]


# -- (c) a parent with two children, one of which needs three attempts ---------------


@attrs.frozen
class Part:
    name: str


@attrs.frozen
class Combined:
    parts: list[str]
    attempts: list[int]


def make_family(tries: dict[str, int]) -> tuple[Any, Any]:
    @dt.task("build_part")
    async def build_part(ctx: dt.TaskContext, part: Part) -> Part:
        tries[part.name] = tries.get(part.name, 0) + 1
        if part.name == "flaky" and ctx.attempt < 3:
            raise ConnectionError(f"flaky part failed on attempt {ctx.attempt}")
        return Part(f"{part.name}@{ctx.attempt}")

    @dt.task("assemble")
    async def assemble(ctx: dt.TaskContext, p: None) -> Combined:
        steady = await ctx.spawn("steady", build_part, Part("steady"))
        flaky = await ctx.spawn(
            "flaky", build_part, Part("flaky"), options=dt.SpawnOptions(max_attempts=3)
        )
        a = await ctx.join("steady", steady)
        b = await ctx.join("flaky", flaky)
        assert isinstance(a, Part)
        assert isinstance(b, Part)
        return Combined([a.name, b.name], [ctx.attempt])

    return build_part, assemble


async def test_parent_joins_two_children_one_flaky(client: dt.Durable) -> None:
    tries: dict[str, int] = {}
    build_part, assemble = make_family(tries)
    client.register(build_part, assemble)
    spawned = await client.spawn(assemble, None)
    for _ in range(4):
        await run_until_idle(client)
        await advance_clock(client, 60)  # past the children's retry backoff
    result = await client.wait_result(assemble, spawned.task_id, timeout=10)
    assert result == Combined(["steady@1", "flaky@3"], [1])
    assert tries == {"steady": 1, "flaky": 3}
    async with client.store.pool.acquire() as conn:
        cur = await conn.execute(
            f'SELECT params, state, attempts FROM "{client.schema}".tasks'
            " WHERE parent_task_id = %s ORDER BY params->>'name'",
            (spawned.task_id,),
        )
        rows = await cur.fetchall()
    assert rows == [
        {"params": {"name": "flaky"}, "state": "completed", "attempts": 3},
        {"params": {"name": "steady"}, "state": "completed", "attempts": 1},
    ]


async def test_parent_fails_when_the_flaky_child_runs_out_of_attempts(
    client: dt.Durable,
) -> None:
    @dt.task("build_part")
    async def always_fails(ctx: dt.TaskContext, part: Part) -> Part:
        raise ConnectionError("never works")

    @dt.task("assemble", options=dt.SpawnOptions(max_attempts=1))
    async def assemble(ctx: dt.TaskContext, p: None) -> Part:
        flaky = await ctx.spawn(
            "flaky", always_fails, Part("flaky"), options=dt.SpawnOptions(max_attempts=3)
        )
        return await ctx.join("flaky", flaky)  # type: ignore[no-any-return]

    client.register(always_fails, assemble)
    spawned = await client.spawn(assemble, None)
    for _ in range(4):
        await run_until_idle(client)
        await advance_clock(client, 60)
    with pytest.raises(dt.TaskFailed) as info:
        await client.wait_result(assemble, spawned.task_id, timeout=10)
    assert info.value.error["type"] == "durable_trio._errors.ChildFailed"
