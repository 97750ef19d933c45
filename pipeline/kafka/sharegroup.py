"""The share-group settings a share worker agrees with the broker before it joins the group.

The broker, not the worker, decides when a record stops coming back: after its
``share.delivery.count.limit``-th delivery (a group setting, 5 by default) fails, it
archives the record, and no worker sees it again. So the worker sets that limit to
``--max-delivery-attempts`` + 1: each of the attempts runs the record, and the last delivery
the broker makes is the one on which the worker writes the dead letter instead. Setting it
(rather than only reading it) keeps one flag in charge, as ``--offset-reset`` is for
``share.auto.offset.reset``; the broker applies a changed limit to records already in
flight. Where the worker may not change it (an ACL, or a limit above the broker's
``group.share.max.delivery.count.limit``, 10 by default), it reads the group's limit and
refuses to start if the broker would archive a record before the worker dead-letters it.
"""

from __future__ import annotations

import logging

from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from pipeline.errors import ConfigError, KafkaError

__all__ = ["agree_delivery_limit", "set_offset_reset"]

log = logging.getLogger("pipeline.worker")
DELIVERY_LIMIT = "share.delivery.count.limit"
_TIMEOUT_S = 30.0


def set_offset_reset(admin: AdminClient, group: str, reset: str) -> None:
    """Map --offset-reset to the share group's ``share.auto.offset.reset``."""
    try:
        _set(admin, group, "share.auto.offset.reset", reset)
    except Exception as exc:  # an ACL or an old broker: the group keeps its own setting
        log.warning(
            "could not set share.auto.offset.reset=%s on share group %s (%s); it keeps "
            "its current setting (the broker's default is latest)",
            reset,
            group,
            exc,
        )


def agree_delivery_limit(admin: AdminClient, group: str, attempts: int) -> int:
    """Set the group's ``share.delivery.count.limit`` to `attempts` + 1 and return that
    delivery count: the last delivery the broker makes, on which the worker dead-letters.

    Raises:
        ConfigError: the limit could not be set, and the group's own archives a record
            after `attempts` deliveries or fewer, before the worker would dead-letter it.
        KafkaError: the limit could neither be set nor read.
    """
    last = attempts + 1
    try:
        _set(admin, group, DELIVERY_LIMIT, str(last))
        return last
    except Exception as exc:  # an ACL, or above the broker's maximum: see what the group has
        refused = exc
    limit = _read_limit(admin, group, refused)
    if limit <= attempts:
        raise ConfigError(
            f"share group {group} archives a record after {DELIVERY_LIMIT}={limit} "
            f"deliveries, so with --max-delivery-attempts {attempts} a record that keeps "
            f"failing would be lost, not dead-lettered; the worker could not raise the limit "
            f"to {last} ({refused}). Pass --max-delivery-attempts {limit - 1} or less, or "
            f"set the group's {DELIVERY_LIMIT} to {last} or more"
        ) from refused
    log.warning(
        "could not set %s=%d on share group %s (%s); it keeps %d, and the worker "
        "dead-letters a record on delivery %d",
        DELIVERY_LIMIT,
        last,
        group,
        refused,
        limit,
        last,
    )
    return last


def _set(admin: AdminClient, group: str, name: str, value: str) -> None:
    entry = ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ResourceType.GROUP, group, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=_TIMEOUT_S)


def _read_limit(admin: AdminClient, group: str, refused: Exception) -> int:
    try:
        futures = admin.describe_configs([ConfigResource(ResourceType.GROUP, group)])
        configs = next(iter(futures.values())).result(timeout=_TIMEOUT_S)
        return int(configs[DELIVERY_LIMIT].value)
    except Exception as exc:
        raise KafkaError(
            f"could neither set nor read share group {group}'s {DELIVERY_LIMIT} (setting it: "
            f"{refused}; reading it: {exc}); without it the worker cannot dead-letter a "
            "record before the broker archives it. Allow this principal ALTER_CONFIGS and "
            "DESCRIBE_CONFIGS on the group, or use a consumer group"
        ) from exc
