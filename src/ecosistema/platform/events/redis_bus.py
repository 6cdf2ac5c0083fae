"""Redis Streams backend: one stream, a consumer group per consumer name."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Collection
from typing import Any, cast

import structlog
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from ecosistema.platform.events.bus import DeliveryLoops, Handler, run_broadcast_handler, wants
from ecosistema.platform.events.envelope import EventEnvelope

log = structlog.get_logger(__name__)

Entry = tuple[bytes, dict[bytes, bytes]]


class RedisStreamsBus:
    """Appends envelopes to the stream ``<stream>:events`` and reads them per consumer group.

    A new group starts at id ``0``: it receives every event still in the stream, like a NATS
    consumer with deliver-all, so one created after events were published (a first deploy, a
    new subscription) misses none of them; idempotent consumers make any replay harmless.
    An entry is acknowledged (``XACK``) only after the handler returns. One the handler failed
    on, or whose process died mid-handling, stays pending and is claimed again (``XAUTOCLAIM``)
    once idle for ``claim_idle`` seconds, so that also bounds how long a handler may run.
    The stream is capped near ``max_len`` entries (approximate ``MAXLEN``).

    A broadcast subscriber reads with plain ``XREAD`` (no group) from the stream's last entry
    at the time it subscribed, so it creates nothing in Redis and sees only later events.
    """

    def __init__(
        self,
        url: str,
        *,
        stream: str = "ecosistema",
        max_len: int = 1_000_000,
        claim_idle: float = 30.0,
        block: float = 2.0,
        batch_size: int = 32,
        stop_grace: float = 10.0,
    ) -> None:
        self.url = url
        self.key = f"{stream}:events"
        self.max_len = max_len
        self.claim_idle = claim_idle
        self.block = block
        self.batch_size = batch_size
        self.stop_grace = stop_grace
        self.member = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._redis: Redis | None = None
        self._groups: list[str] = []
        self._loops = DeliveryLoops()

    @property
    def redis(self) -> Redis:
        """The client; the bus must be started."""
        if self._redis is None:
            raise RuntimeError("RedisStreamsBus is not started")
        return self._redis

    async def start(self) -> None:
        """Connect and check the server answers."""
        if self._redis is not None:
            return
        self._loops = DeliveryLoops()
        self._redis = Redis.from_url(self.url, decode_responses=False)
        await self._redis.ping()

    async def stop(self) -> None:
        """Let running handlers finish, leave the groups cleanly, and disconnect."""
        await self._loops.stop(self.stop_grace)
        if self._redis is None:
            return
        for group in self._groups:
            await self._leave(group)
        self._groups.clear()
        redis, self._redis = self._redis, None
        await redis.aclose()  # type: ignore[attr-defined]

    async def _leave(self, group: str) -> None:
        # A member holding pending entries stays, so another one can claim them.
        try:
            mine = await self.redis.xpending_range(
                self.key, group, min="-", max="+", count=1, consumername=self.member
            )
            if not mine:
                await self.redis.xgroup_delconsumer(self.key, group, self.member)  # type: ignore[no-untyped-call]
        except Exception as exc:
            log.debug("redis_leave_group_failed", group=group, error=repr(exc))

    async def publish(self, envelope: EventEnvelope) -> None:
        """Append the envelope to the stream."""
        await self.redis.xadd(
            self.key,
            {"id": envelope.id, "type": envelope.type, "envelope": envelope.to_bytes()},
            maxlen=self.max_len,
            approximate=True,
        )

    async def subscribe(self, consumer: str, types: Collection[str], handler: Handler) -> None:
        """Create the consumer group if needed and start delivering to ``handler``."""
        try:
            await self.redis.xgroup_create(self.key, consumer, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.append(consumer)
        self._loops.spawn(
            self._deliver(consumer, frozenset(types), handler), name=f"redis-{consumer}"
        )

    async def subscribe_broadcast(self, types: Collection[str], handler: Handler) -> None:
        """Start delivering every event of ``types`` appended from now on to ``handler``."""
        last = cast(list[Entry], await self.redis.xrevrange(self.key, count=1))
        # After the newest entry there is; from the start when the stream does not exist yet.
        after = last[0][0] if last else b"0-0"
        self._loops.spawn(self._broadcast(after, frozenset(types), handler), name="redis-broadcast")

    async def _broadcast(self, after: bytes, wanted: frozenset[str], handler: Handler) -> None:
        while not self._loops.closing:
            try:
                response = await self.redis.xread(
                    {self.key: after}, count=self.batch_size, block=int(self.block * 1000)
                )
            except Exception as exc:  # connection trouble: resume after the last entry seen
                log.warning("redis_broadcast_read_failed", error=repr(exc))
                await asyncio.sleep(1.0)
                continue
            for _key, entries in cast(list[tuple[bytes, list[Entry]]], response or []):
                for entry_id, fields in entries:
                    after = entry_id
                    with self._loops.handling():
                        try:
                            envelope = EventEnvelope.from_bytes(fields[b"envelope"])
                        except (KeyError, ValidationError) as exc:
                            log.error("event_unreadable", consumer="broadcast", error=repr(exc))
                            continue
                        if wants(wanted, envelope.type):
                            await run_broadcast_handler(handler, envelope)

    async def _deliver(self, group: str, wanted: frozenset[str], handler: Handler) -> None:
        loop = asyncio.get_running_loop()
        claim_from = b"0-0"
        next_claim = 0.0
        while not self._loops.closing:
            try:
                if loop.time() >= next_claim:
                    claim_from, claimed = await self._claim(group, claim_from)
                    await self._handle_all(group, claimed, wanted, handler)
                    if claim_from == b"0-0":
                        next_claim = loop.time() + self.claim_idle / 2
                response = await self.redis.xreadgroup(
                    group,
                    self.member,
                    {self.key: ">"},
                    count=self.batch_size,
                    block=int(self.block * 1000),
                )
                for _key, entries in cast(list[tuple[bytes, Any]], response or []):
                    await self._handle_all(group, entries, wanted, handler)
            except Exception as exc:  # connection trouble: entries stay pending, nothing is lost
                log.warning("redis_read_failed", consumer=group, error=repr(exc))
                await asyncio.sleep(1.0)

    async def _claim(self, group: str, start: bytes) -> tuple[bytes, list[Entry]]:
        result: list[Any] = await self.redis.xautoclaim(
            self.key,
            group,
            self.member,
            min_idle_time=int(self.claim_idle * 1000),
            start_id=start,
            count=self.batch_size,
        )
        cursor, entries = result[0], result[1]
        # Entries trimmed from the stream while pending come back without fields.
        return cursor, [(entry_id, fields) for entry_id, fields in entries if fields]

    async def _handle_all(
        self, group: str, entries: list[Entry], wanted: frozenset[str], handler: Handler
    ) -> None:
        for entry_id, fields in entries:
            with self._loops.handling():
                if await self._handle(group, fields, wanted, handler):
                    await self.redis.xack(self.key, group, entry_id)  # type: ignore[no-untyped-call]

    async def _handle(
        self, group: str, fields: dict[bytes, bytes], wanted: frozenset[str], handler: Handler
    ) -> bool:
        """Run the handler; True when the entry is done with (handled, skipped or unreadable)."""
        try:
            envelope = EventEnvelope.from_bytes(fields[b"envelope"])
        except (KeyError, ValidationError) as exc:
            log.error("event_unreadable", consumer=group, error=repr(exc))
            return True
        if not wants(wanted, envelope.type):
            return True
        try:
            await handler(envelope)
        except Exception as exc:
            log.warning(
                "consumer_failed",
                consumer=group,
                event_type=envelope.type,
                event_id=envelope.id,
                retry_in=self.claim_idle,
                error=repr(exc),
            )
            return False
        return True

    async def ping(self) -> None:
        """Raise unless Redis answers."""
        await self.redis.ping()

    async def lag(self) -> dict[str, int]:
        """Per consumer group: entries not yet delivered plus those delivered but unacknowledged."""
        try:
            groups = await self.redis.xinfo_groups(self.key)  # type: ignore[no-untyped-call]
        except ResponseError:  # no stream yet
            groups = []
        info = {_text(g["name"]): g for g in groups}
        out: dict[str, int] = {}
        for group in self._groups:
            g = info.get(group)
            if g is None:
                out[group] = 0
                continue
            undelivered = g.get("lag")
            if undelivered is None:  # Redis cannot tell (before 7.0, or after deletions)
                undelivered = len(
                    await self.redis.xrange(  # type: ignore[arg-type]
                        self.key, min=b"(" + g["last-delivered-id"], max="+", count=10_000
                    )
                )
            out[group] = int(undelivered) + int(g["pending"])
        return out

    async def delete_stream(self) -> None:
        """Remove the stream and its consumer groups (tests and resets)."""
        await self.redis.delete(self.key)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
