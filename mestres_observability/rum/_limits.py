"""Bounded per-process state of the RUM endpoint: token buckets, recent report ids, log sampling.

Each structure holds at most a configured number of entries (least recently
used evicted), takes one lock per call, and lives in one worker process: with
several workers, each limits, de-duplicates and samples on its own.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from .._forksafe import renew_locks_after_fork

__all__ = ["ClientBuckets", "RecentIds", "TokenBucket", "client_key"]

Clock = Callable[[], float]


def client_key(address: str | None) -> str:
    """The rate-limit key of a client address: the address, an IPv6 one by its /64."""
    if not address:
        return "-"
    if ":" not in address:
        return address
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class TokenBucket:
    """One token bucket: ``rate`` tokens per second, at most ``burst`` stored.

    :meth:`take` answers 0.0 when a token was taken, else the seconds until
    the next one.
    """

    __slots__ = ("__weakref__", "_clock", "_lock", "_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()
        self._lock = threading.Lock()
        renew_locks_after_fork(self, "_lock")

    def take(self) -> float:
        """Take one token: 0.0, or the wait in seconds when none is left."""
        with self._lock:
            now = self._clock()
            tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if tokens >= 1.0:
                self._tokens = tokens - 1.0
                return 0.0
            self._tokens = tokens
            return (1.0 - tokens) / self.rate


class ClientBuckets:
    """One token bucket per client key, for at most ``clients`` keys (LRU).

    An evicted client starts again with a full bucket; the global bucket of the
    endpoint bounds what many distinct addresses can send together.
    """

    __slots__ = ("__weakref__", "_buckets", "_clock", "_lock", "burst", "clients", "rate")

    def __init__(self, rate: float, burst: float, clients: int,
                 clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clients = clients
        self._clock = clock
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()
        renew_locks_after_fork(self, "_lock")

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Take one token of ``key``'s bucket: 0.0, or the wait in seconds."""
        with self._lock:
            now = self._clock()
            buckets = self._buckets
            bucket = buckets.get(key)
            if bucket is None:
                if len(buckets) >= self.clients:
                    buckets.popitem(last=False)
                bucket = buckets[key] = [self.burst, now]
            else:
                buckets.move_to_end(key)
                bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
                bucket[1] = now
            if bucket[0] >= 1.0:
                bucket[0] -= 1.0
                return 0.0
            return (1.0 - bucket[0]) / self.rate


def retry_after(wait: float) -> str:
    """A ``Retry-After`` value (whole seconds, at least 1) for a wait in seconds."""
    return str(max(1, math.ceil(wait)))


class RecentIds:
    """The last ``size`` report ids seen (LRU): :meth:`seen` is true for a repeat."""

    __slots__ = ("__weakref__", "_ids", "_lock", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[Hashable, None] = OrderedDict()
        self._lock = threading.Lock()
        renew_locks_after_fork(self, "_lock")

    def __len__(self) -> int:
        return len(self._ids)

    def seen(self, key: Hashable) -> bool:
        """True when ``key`` was seen already; otherwise remember it and answer False."""
        with self._lock:
            ids = self._ids
            if key in ids:
                ids.move_to_end(key)
                return True
            if len(ids) >= self.size:
                ids.popitem(last=False)
            ids[key] = None
            return False
