"""Measure an --enrich table's load time and memory: N entities of F doubles.

Produces N records (keys ``card-<i>``, values a JSON object of F float features) to a new
compacted topic, then, in a fresh process, loads it the way the worker does
(`pipeline.kafka.enrich.TableFeed`) and prints the load time, the table's own size
estimate and the process's resident memory before and after (VmRSS).

    .venv/bin/python scripts/enrich_memory.py --bootstrap-servers 127.0.0.1:39392 \\
        --entities 1000000 --features 20
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import uuid

import orjson
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.engine.enrich import EnrichSpec
from pipeline.kafka.enrich import TableFeed
from pipeline.metrics import NULL_SENSOR


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def produce(bootstrap: str, entities: int, features: int) -> str:
    topic = f"enrich-memory-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = NewTopic(topic, 4, 1, config={"cleanup.policy": "compact"})
    admin.create_topics([new])[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                         "queue.buffering.max.messages": 500_000})  # fmt: skip
    names = [f"f{j}" for j in range(features)]
    started = time.monotonic()
    for i in range(entities):
        value = orjson.dumps({n: (i * 0.001 + j) / 7.0 for j, n in enumerate(names)})
        while True:
            try:
                producer.produce(topic, value, f"card-{i}".encode())
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)
    print(f"produced {entities} entities to {topic} in {time.monotonic() - started:.1f} s")
    return topic


def load(bootstrap: str, topic: str) -> None:
    before = rss_bytes()
    feed = TableFeed(EnrichSpec("bench", topic, "card_id"), {"bootstrap.servers": bootstrap},
                     Consumer, NULL_SENSOR, max_bytes=1 << 40)  # fmt: skip
    feed.check(AdminClient({"bootstrap.servers": bootstrap}))
    started = time.monotonic()
    feed.load(lambda: False)
    seconds = time.monotonic() - started
    after = rss_bytes()
    print(
        f"loaded {len(feed.table)} entities in {seconds:.1f} s; estimate "
        f"{feed.table.nbytes / 1e6:.0f} MB; RSS {before / 1e6:.0f} MB before, "
        f"{after / 1e6:.0f} MB after (+{(after - before) / 1e6:.0f} MB)"
    )
    feed.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--load-only", metavar="TOPIC", help="load this topic and report")
    args = parser.parse_args()
    if args.load_only:
        load(args.bootstrap_servers, args.load_only)
        return
    topic = produce(args.bootstrap_servers, args.entities, args.features)
    cmd = [sys.executable, __file__, "--bootstrap-servers", args.bootstrap_servers,
           "--load-only", topic]  # fmt: skip
    subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
