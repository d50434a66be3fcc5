"""User ids in logs: hashed unless debug logging is on (issue 5, security).

Logs travel further than the data (aggregators, tickets, screenshots), so a user id is written as a
short keyed-free hash that still lets an operator correlate lines of one user. With DEBUG enabled on
the logger doing the writing, the raw id is shown, because that is when someone is debugging one user.
"""

from __future__ import annotations

import hashlib
import logging


def user_ref(user_id: str, logger: logging.Logger | None = None) -> str:
    """`user_id` as it may appear in a log line of `logger` (the root logger if None)."""
    if (logger or logging.getLogger()).isEnabledFor(logging.DEBUG):
        return user_id
    digest = hashlib.blake2b(user_id.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()
    return f"u:{digest}"
