"""The quickstart workflow: a three-step research task and an order that waits for an event.

Run it with `python -m durable_trio quickstart` (starts a throwaway Postgres when
DURABLE_DATABASE_URL is unset) or directly: `python examples/quickstart.py` with
DURABLE_DATABASE_URL set.
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

import attrs
import trio
import trio.lowlevel

import durable_trio as dt


@attrs.frozen
class ResearchParams:
    query: str


@attrs.frozen
class ResearchResult:
    summary: str
    sources: list[str]


def find_sources(query: str) -> list[str]:
    return [f"https://example.org/{query}/{i}" for i in range(3)]


async def analyze(sources: list[str]) -> str:
    await trio.lowlevel.checkpoint()  # stands in for real async I/O (an HTTP call, a model...)
    return f"{len(sources)} sources agree"


@dt.task("research")
async def research(ctx: dt.TaskContext, params: ResearchParams) -> ResearchResult:
    sources = await ctx.step("find-sources", find_sources, params.query)
    analysis = await ctx.step("analyze", analyze, sources)
    summary = await ctx.step("summarize", lambda: f"{params.query}: {analysis}")
    return ResearchResult(summary=summary, sources=sources)


@attrs.frozen
class Order:
    order_id: str


@dt.task("ship-order")
async def ship_order(ctx: dt.TaskContext, order: Order) -> str:
    # Suspends without holding a worker slot until the warehouse says it is packed.
    packed = await ctx.await_event(f"packed:{order.order_id}", timeout=timedelta(days=7))
    return await ctx.step("ship", lambda: f"order {order.order_id} shipped in box {packed['box']}")


async def main(url: str | None = None) -> UUID:
    """Run both workflows; return the research task's id (`durable-trio quickstart` then
    shows it as `durable-trio tasks show ID` would)."""
    async with dt.Durable.connect(url, queue="quickstart") as client:
        client.register(research, ship_order)
        spawned = await client.spawn(
            research,
            ResearchParams("consensus"),
            options=dt.SpawnOptions(
                max_attempts=5, retry=dt.RetryStrategy.exponential(base=timedelta(seconds=1))
            ),
        )
        order = await client.spawn(ship_order, Order("A-17"))
        async with client.worker(dt.WorkerOptions(concurrency=8)):
            result = await client.wait_result(research, spawned.task_id, timeout=30)
            print(f"research -> {result}")
            await client.emit_event("packed:A-17", {"box": 42})
            print(f"order    -> {await client.wait_result(ship_order, order.task_id, timeout=30)}")
        info = await client.get_task(spawned.task_id)
        print(f"task {info.task_id} is {info.state.value} after {info.attempts} attempt(s)")
        return spawned.task_id


if __name__ == "__main__":
    trio.run(main)
