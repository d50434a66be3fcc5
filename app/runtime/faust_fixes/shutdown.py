"""A graceful stop that cannot lose events and always ends (faults 3, 4 and 7, docs/RELIABILITY.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from typing import Any

import faust

from app.runtime.faust_fixes.consumer import CommitGate

logger = logging.getLogger(__name__)

COMMIT_TIMEOUT_S = 3.0
AGENTS_STOP_S = 3.0  # agents' share of the grace period; tables and the consumer stop after them
FORCED_EXIT_CODE = 70  # EX_SOFTWARE: the stop did not finish in time and was forced


class StreamRecWorker(faust.Worker):
    """faust.Worker whose SIGTERM and Ctrl-C commit the finished batches, close commits (fault 3), stop the
    agents before Faust closes their tables (fault 7), and end within `stop_grace_s` (fault 4)."""

    def __init__(self, *args: Any, stop_grace_s: float = 8.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop_grace_s = stop_grace_s
        self._stopping = False

    def _on_sigterm(self) -> None:
        self._stop_safely(signal.SIGTERM)

    def _on_sigint(self) -> None:  # Ctrl-C (the demo): the same safe stop
        self._stop_safely(signal.SIGINT)

    def _stop_safely(self, signum: signal.Signals) -> None:
        if self._stopping:
            return
        self._stopping = True
        watchdog = threading.Timer(self.stop_grace_s, self._force_exit)  # fault 4: a frozen broker blocks the stop
        watchdog.daemon = True
        watchdog.start()
        asyncio.ensure_future(self._commit_then_stop(signum), loop=self.loop)

    async def _commit_then_stop(self, signum: signal.Signals) -> None:
        consumer = self.app.consumer
        with contextlib.suppress(Exception):  # fault 3: only finished batches are acked now; nothing after
            await asyncio.wait_for(consumer.commit(), timeout=COMMIT_TIMEOUT_S)
        if isinstance(consumer, CommitGate):
            consumer.commits_closed = True
        else:
            logger.warning("consumer %s cannot close commits: a batch in flight may be acked", type(consumer))
        with contextlib.suppress(Exception):  # before Faust closes the tables under them (fault 7)
            await asyncio.wait_for(self.app.agents.stop(), timeout=AGENTS_STOP_S)
        logger.info("%s: committed completed batches, commits closed, agents stopped; stopping", signum.name)
        super()._on_sigterm()

    def _force_exit(self) -> None:
        logger.error("worker did not stop within %.1fs of SIGTERM: exiting now (uncommitted work is redelivered)",
                     self.stop_grace_s)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(FORCED_EXIT_CODE)
