"""What a worker's stream machinery is doing right now: the answer to "why is the lag not moving?".

Served at ``GET /debug/pipeline`` (localhost by default, like every endpoint) and dumped by the
reliability tests when a topic does not drain. Faust keeps this state in private attributes of its
consumer, conductor, producer buffer and agents; reading them is read-only and each part is guarded,
so a change in Faust turns a field into an error string, not a failed request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import faust

from app.runtime.faust_fixes.consumer import stream_channels
from app.runtime.faust_fixes.offsets import lowest_per_partition


def _guarded(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except Exception as exc:  # noqa: BLE001 - a private attribute renamed in another Faust version
        return f"unavailable: {type(exc).__name__}: {exc}"


def _partitions(consumer: Any) -> dict[str, dict]:
    fetched = getattr(consumer, "fetched", None)
    unacked = lowest_per_partition(consumer._in_flight())
    out: dict[str, dict] = {}
    for tp in sorted(consumer.assignment()):
        acked = consumer._acked.get(tp) or []
        out[f"{tp.topic}/{tp.partition}"] = {
            "committed": consumer._committed_offset.get(tp),
            "read": consumer._read_offset.get(tp),
            "acked_pending": len(acked),
            "first_acked": min(acked) if acked else None,
            "lowest_unacked_in_memory": unacked.get(tp),
            "paused": tp in consumer._paused_partitions,
            "fetched_runs": fetched.runs(tp)[:4] if fetched is not None else None,
        }
    return out


def _channels(app: faust.App) -> list[dict]:
    return [{"topics": sorted(getattr(c, "topics", ()) or ()), "queued": c.queue.qsize(),
             "maxsize": c.queue.maxsize} for c in stream_channels(app)]


def _agents(app: faust.App) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for name, agent in app.agents.items():
        actors = []
        for actor in list(agent._actors):
            task = actor.actor_task
            state = "none" if task is None else ("running" if not task.done() else
                                                 ("cancelled" if task.cancelled() else
                                                  f"done: {task.exception()!r}"))
            actors.append({"task": state})
        out[name.rsplit(".", 1)[-1]] = actors
    return out


def _await_chain(task: asyncio.Task, depth: int = 12) -> str:
    """Where a task is suspended: its coroutine's await chain, outermost first (what py-spy cannot show)."""
    links, coro = [], task.get_coro()
    while coro is not None and len(links) < depth:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            links.append(type(coro).__name__)
            break
        links.append(f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_code.co_name}:{frame.f_lineno}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return " > ".join(links)


def _tasks(limit: int = 200) -> list[str]:
    return sorted(_await_chain(task) for task in list(asyncio.all_tasks())[:limit])


def pipeline_state(app: faust.App) -> dict[str, Any]:
    """A JSON-able snapshot of the consumer, its queues, the producer buffer and the agents."""
    consumer = app.consumer
    return {
        "at": time.time(),
        "rebalancing": bool(app.rebalancing),
        "flow_active": _guarded(app.flow_control.is_active),
        "consumer_generation": app.consumer_generation_id,
        "fetch_rounds": getattr(consumer, "fetch_rounds", None),
        "repairs": getattr(consumer, "repairs", None),
        "gaps": getattr(consumer, "gaps", None),
        "rereads": getattr(consumer, "rereads", None),
        "producer_buffer": _guarded(lambda: app.producer.buffer.size),
        "partitions": _guarded(lambda: _partitions(consumer)),
        "channels": _guarded(lambda: _channels(app)),
        "agents": _guarded(lambda: _agents(app)),
        "tasks": _guarded(_tasks),
    }
