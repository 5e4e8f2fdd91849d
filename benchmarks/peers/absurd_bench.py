"""absurd peer: an AsyncAbsurd task with one ctx.step (a checkpointed one-step task).
Schema installed with `absurdctl init` (the schema bundled in the absurdctl package) and
`absurdctl create-queue bench`; tasks spawned one by one with AsyncAbsurd.spawn (absurd
has no batch spawn) before the worker starts; the worker is AsyncAbsurd.start_worker(
concurrency=C) with its defaults (one connection, poll_interval 0.25 s: absurd has no
LISTEN/NOTIFY wake-up). Completions: absurd.t_bench rows with state 'completed'."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from typing import Any

from _peer_common import parse_args, report, wait_count
from absurd_sdk import AsyncAbsurd

DONE = "SELECT count(*) FROM absurd.t_bench WHERE state = 'completed'"


def absurdctl(*argv: str) -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "absurdctl")
    subprocess.run([exe, *argv], check=True, capture_output=True, text=True)


async def main() -> None:
    args = parse_args()
    absurdctl("init", "-d", args.url)
    absurdctl("create-queue", "-d", args.url, "bench")
    app = AsyncAbsurd(args.url, queue_name="bench")

    @app.register_task("one_step")
    async def one_step(params: Any, ctx: Any) -> int:
        x = int(params["x"])

        async def work() -> int:
            return x + 1

        return await ctx.step("work", work)

    for i in range(args.n):
        await app.spawn("one_step", {"x": i})
    t0 = time.perf_counter()
    worker = asyncio.create_task(app.start_worker(concurrency=args.concurrency))
    done = await asyncio.to_thread(wait_count, args.url, DONE, args.n, args.timeout)
    seconds = time.perf_counter() - t0
    app.stop_worker()
    with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
        await asyncio.wait_for(worker, 30)
    await app.close()
    report("absurd", "absurd-sdk", args, done, seconds, absurdctl=_version("absurdctl"))


def _version(dist: str) -> str:
    from importlib import metadata

    return metadata.version(dist)


if __name__ == "__main__":
    asyncio.run(main())
