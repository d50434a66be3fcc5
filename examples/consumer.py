"""A downstream consumer of reco.recommendations: keep every user's latest list (docs/CONSUMING.md).

Run:  python examples/consumer.py --bootstrap 127.0.0.1:9092 [--group my-app] [--idle-exit 10] [--json]

It depends only on aiokafka and the record's documented JSON form, not on StreamRec's code. Rules it
follows: the key is the user id; keep a list only if its `version` is higher than the one you hold (the
topic is at-least-once, so a list can arrive twice or, after a rebalance, an older copy after a newer
one); a null value (tombstone) means the user was erased: drop what you hold.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from aiokafka import AIOKafkaConsumer

TOPIC = "reco.recommendations"


async def consume(bootstrap: str, group: str | None, idle_exit_s: float | None) -> dict[str, dict]:
    latest: dict[str, dict] = {}
    consumer = AIOKafkaConsumer(TOPIC, bootstrap_servers=bootstrap, group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=group is not None)
    await consumer.start()
    last_message = time.monotonic()
    try:
        while idle_exit_s is None or time.monotonic() - last_message < idle_exit_s:
            batches = await consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                for message in messages:
                    last_message = time.monotonic()
                    user_id = message.key.decode()
                    if message.value is None:  # tombstone: the user was erased
                        latest.pop(user_id, None)
                        continue
                    record = json.loads(message.value)
                    held = latest.get(user_id)
                    if held is None or record["version"] > held["version"]:
                        latest[user_id] = record
    finally:
        await consumer.stop()
    return latest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--group", default=None, help="consumer group (omit: read everything, commit nothing)")
    parser.add_argument("--idle-exit", type=float, default=None, help="exit after S seconds without messages")
    parser.add_argument("--json", action="store_true", help="print {user_id: latest list} as JSON at exit")
    args = parser.parse_args()
    try:
        latest = asyncio.run(consume(args.bootstrap, args.group, args.idle_exit))
    except KeyboardInterrupt:
        return 0
    if args.json:
        json.dump(latest, sys.stdout)
    else:
        for user_id, record in sorted(latest.items()):
            top = ", ".join(f"{item['item_id']} ({item['reason']})" for item in record["items"][:3])
            print(f"{user_id} v{record['version']} [{record['scene']}] {top}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
