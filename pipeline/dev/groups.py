"""`pipeline topics` and `pipeline groups`: what is on the cluster, and how far behind each
consumer group is, without Kafka's shell scripts or kcat.

``topics`` lists each topic with its partitions, replication and records held (the sum of
each partition's end minus its start: what a reader from the beginning would see, before
compaction). ``groups`` lists the groups with their type and state; ``groups describe G``
prints one line per partition the group has committed or is assigned: the committed offset,
the end (the last stable offset, which a read_committed reader such as the worker can
reach) and the lag between them, and the member that holds it, as
``kafka-consumer-groups.sh --describe`` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from confluent_kafka import ConsumerGroupTopicPartitions, IsolationLevel, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from pipeline.errors import KafkaError
from pipeline.kafka.topics import admin_client, reach

__all__ = [
    "GroupPartition",
    "GroupState",
    "describe_group",
    "group_state",
    "list_groups",
    "list_topics",
]

_TIMEOUT_S = 15.0
_EARLIEST = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
_LATEST = OffsetSpec.latest()  # type: ignore[no-untyped-call]
_INTERNAL = ("__consumer_offsets", "__transaction_state", "__share_group_state", "__cluster")


@dataclass(frozen=True, slots=True)
class GroupPartition:
    """One partition of a group: where it committed, where the partition ends, who holds it."""

    topic: str
    partition: int
    committed: int | None
    end: int
    member: str | None

    @property
    def lag(self) -> int | None:
        return None if self.committed is None else max(self.end - self.committed, 0)


def list_topics(
    bootstrap_servers: str, kafka: Mapping[str, str], out: TextIO, *, internal: bool = False
) -> int:
    """Print one line per topic: name, partitions, replication factor, records held."""
    admin = admin_client(bootstrap_servers, kafka)
    meta = reach(admin, bootstrap_servers)
    names = sorted(t for t in meta.topics if internal or not t.startswith(_INTERNAL))
    tps = [TopicPartition(t, p) for t in names for p in sorted(meta.topics[t].partitions)]
    starts = _offsets(admin, tps, _EARLIEST)
    ends = _offsets(admin, tps, _LATEST)
    rows = []
    for name in names:
        parts = meta.topics[name].partitions
        replicas = max((len(p.replicas) for p in parts.values()), default=0)
        held = sum(ends[(name, p)] - starts[(name, p)] for p in parts)
        rows.append((name, str(len(parts)), str(replicas), str(held)))
    _table(out, ("TOPIC", "PARTITIONS", "REPLICAS", "RECORDS"), rows)
    return 0


def list_groups(bootstrap_servers: str, kafka: Mapping[str, str], out: TextIO) -> int:
    """Print one line per group: id, type (consumer, share, classic), state."""
    admin = admin_client(bootstrap_servers, kafka)
    reach(admin, bootstrap_servers)
    listed = admin.list_consumer_groups(request_timeout=_TIMEOUT_S).result(_TIMEOUT_S)
    rows = [
        (g.group_id, _name(getattr(g, "type", None)), _name(g.state))
        for g in sorted(listed.valid, key=lambda g: g.group_id)
    ]
    _table(out, ("GROUP", "TYPE", "STATE"), rows)
    return 0


def describe_group(
    bootstrap_servers: str, kafka: Mapping[str, str], group: str, out: TextIO
) -> int:
    """Print the group's state and members, then one line per partition with its lag."""
    admin = admin_client(bootstrap_servers, kafka)
    reach(admin, bootstrap_servers)
    state = group_state(admin, group)
    total = sum(p.lag or 0 for p in state.partitions)
    out.write(f"group {group}: {state.state}, {state.members} members, lag {total}\n")
    rows = [
        (p.topic, str(p.partition), _shown(p.committed), str(p.end), _shown(p.lag),
         p.member or "-")
        for p in state.partitions
    ]  # fmt: skip
    _table(out, ("TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "MEMBER"), rows)
    return 0


@dataclass(frozen=True, slots=True)
class GroupState:
    """A consumer group's state, member count and partitions."""

    state: str
    members: int
    partitions: list[GroupPartition]


def group_state(admin: AdminClient, group: str) -> GroupState:
    """`group`'s state, and every partition it committed or holds with its committed offset
    and end.

    Raises:
        KafkaError: the group cannot be described, or is unknown (it never committed and
            has no members).
    """
    described = admin.describe_consumer_groups([group], request_timeout=_TIMEOUT_S)[group]
    try:
        description = described.result(_TIMEOUT_S)
    except Exception as exc:  # the admin API's KafkaException, or a group of another type
        raise KafkaError(f"cannot describe group {group!r}: {exc}") from exc
    holder = {
        (tp.topic, tp.partition): f"{m.client_id}@{m.host}"
        for m in description.members
        for tp in (m.assignment.topic_partitions if m.assignment else [])
    }
    request = [ConsumerGroupTopicPartitions(group)]
    committed = admin.list_consumer_group_offsets(request, request_timeout=_TIMEOUT_S)[group]
    offsets = {(tp.topic, tp.partition): tp.offset
               for tp in committed.result(_TIMEOUT_S).topic_partitions or []}  # fmt: skip
    keys = sorted(set(offsets) | set(holder))
    if not keys:
        raise KafkaError(
            f"group {group!r} has no committed offsets and no members: is the name right? "
            "`pipeline groups` lists the groups"
        )
    ends = _offsets(admin, [TopicPartition(t, p) for t, p in keys], _LATEST)
    partitions = [
        GroupPartition(t, p, _offset_or_none(offsets.get((t, p))), ends[(t, p)],
                       holder.get((t, p)))
        for t, p in keys
    ]  # fmt: skip
    return GroupState(_name(description.state), len(description.members), partitions)


def _offsets(
    admin: AdminClient, tps: Sequence[TopicPartition], spec: OffsetSpec
) -> dict[tuple[str, int], int]:
    """Each partition's offset at `spec` (read_committed, so the end is the last stable
    offset)."""
    if not tps:
        return {}
    futures = admin.list_offsets(
        {tp: spec for tp in tps},
        isolation_level=IsolationLevel.READ_COMMITTED,
        request_timeout=_TIMEOUT_S,
    )
    return {(tp.topic, tp.partition): f.result(_TIMEOUT_S).offset for tp, f in futures.items()}


def _offset_or_none(offset: int | None) -> int | None:
    return offset if offset is not None and offset >= 0 else None


def _shown(value: int | None) -> str:
    return "-" if value is None else str(value)


def _name(value: Any) -> str:
    """An admin enum's name in lower case (``STABLE`` -> ``stable``), or ``-``."""
    name = getattr(value, "name", None)
    return str(name).lower() if name else "-"


def _table(out: TextIO, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    lines = [tuple(header), *(tuple(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        out.write("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n")
