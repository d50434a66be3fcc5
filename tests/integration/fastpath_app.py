"""A Faust app on app/runtime/faust_fixes/fastpath.py that logs every event it gets: run as a child by test_fastpath.py.

Usage: python -m tests.integration.fastpath_app BOOTSTRAP GROUP TOPIC OUTFILE [FAIL_AT [BATCH]]
Each event becomes one line "partition offset value" in OUTFILE, written after its batch. With FAIL_AT,
the first batch holding that value raises instead (its events go to OUTFILE.failed), as a bug or a
failing store would: the batch must not count as processed, and the agent goes on. BATCH (default
100) is the take_events size; 1 makes the failed batch a single message. STREAMREC_FAUST_FASTPATH=false
runs it on Faust's own loop with the worker's default consumer instead. FASTPATH_APP_SEEK_EVERY_S
makes it seek every partition back to its committed offset that often, the way the blocked-partition repair does,
while it fetches (each seek logs "sought back"), for the first FASTPATH_APP_SEEK_FOR_S seconds
(default 15) of its first seek; then it only consumes, so it can catch up. SIGUSR1 writes the
consumer's state (app/runtime/faust_fixes/introspect.py, as `GET /debug/pipeline` shows it) to OUTFILE.state, for a test
that gives up on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import faust

from app.runtime.faust_fixes import acked_only_when_done, app_class, pipeline_state


def main(bootstrap: str, group: str, topic_name: str, out: Path, fail_at: int | None = None,
         batch_size: int = 100) -> None:
    (out.parent / f"{group}-data").mkdir(parents=True, exist_ok=True)
    fastpath = os.environ.get("STREAMREC_FAUST_FASTPATH", "true").lower() == "true"  # as the worker reads it
    app = app_class(fastpath)(group, broker=f"kafka://{bootstrap}", datadir=str(out.parent / f"{group}-data"),
                       web_enabled=False, topic_allow_declare=False, consumer_auto_offset_reset="earliest",
                       broker_rebalance_timeout=3.0, broker_heartbeat_interval=1.0, broker_session_timeout=10.0,
                       broker_commit_interval=0.5, stream_buffer_maxsize=256)  # small: the full-queue path runs
    topic = app.topic(topic_name, key_serializer="raw", value_serializer="raw")

    @app.agent(topic)
    async def record(stream: faust.StreamT) -> None:
        with out.open("a") as log:
            async for batch in stream.take_events(batch_size, 0.05):
                with acked_only_when_done(batch):
                    lines = [f"{e.message.partition} {e.message.offset} {e.value.decode()}\n" for e in batch]
                    failed = out.with_suffix(".failed")
                    if fail_at is not None and not failed.exists() and f"{fail_at}" in {e.value.decode() for e in batch}:
                        failed.write_text("".join(lines))
                        raise RuntimeError(f"planted failure in the batch holding {fail_at}")
                    log.writelines(lines)
                    log.flush()

    @app.task
    async def state_on_sigusr1() -> None:
        def write() -> None:
            out.with_suffix(".state").write_text(json.dumps(pipeline_state(app), default=str, indent=1))
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, write)

    seek_every = float(os.environ.get("FASTPATH_APP_SEEK_EVERY_S", "0"))
    seek_for = float(os.environ.get("FASTPATH_APP_SEEK_FOR_S", "15"))
    first_seek: list[float] = []  # monotonic time of the first seek, once there was one
    if seek_every:
        @app.timer(seek_every)
        async def seek_back() -> None:
            consumer = app.consumer
            if first_seek and time.monotonic() - first_seek[0] > seek_for:
                return
            for tp in sorted(consumer.assignment()):
                committed = consumer._committed_offset.get(tp)
                if tp.topic == topic_name and committed and await consumer.seek_between_fetches(tp, committed):
                    if not first_seek:
                        first_seek.append(time.monotonic())
                    logging.getLogger("fastpath_app").warning("sought back %s to %d", tp, committed)

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else None,
         int(sys.argv[6]) if len(sys.argv) > 6 else 100)
