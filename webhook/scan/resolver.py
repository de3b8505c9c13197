"""Tag → platform manifest digest, cached, single-flight, bounded by the request's time budget.

Scans and results are keyed by digest, never by tag (tags move), so every admission resolves
its images first. A registry round trip costs ~50 ms and a burst of pods names the same few
images, so answers are reused for `resolve_ttl_s`; a digest-pinned reference (an index digest
→ this platform's manifest digest) cannot change and is kept much longer. An answer past half
its life is asked again in the background while it is still served, so a tag in steady use
never expires under a request; no answer is ever older than its TTL. Failures are never
cached: the next admission asks the registry again.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Callable

from .images import ImageRef
from .registry import Registry, Unreachable


class ResolveTimeout(Unreachable):
    """The registry did not answer within the time left in this admission (still asking)."""


@dataclass(frozen=True)
class Resolution:
    """digest: the platform manifest that is scanned; top: what the reference names;
    digests: (platform, manifest digest) for every listed platform the image offers (a plain
    manifest: one, platform "")."""

    digest: str
    top: str
    cached: bool = False
    digests: tuple[tuple[str, str], ...] = ()


class Resolver:
    """Caches Registry.resolve answers; one registry call per reference in flight."""

    def __init__(self, registry: Registry, *, ttl_s: float = 30.0, pinned_ttl_s: float = 86_400.0,
                 size: int = 10_000, platform: str | None = None, workers: int = 8,
                 platforms: tuple[str, ...] = (),
                 clock: Callable[[], float] = time.monotonic):
        self.registry = registry
        self.platform = platform
        self.platforms = tuple(platforms) or ((platform,) if platform else ())
        self._tags = _Answers(size, ttl_s, clock)
        self._pinned = _Answers(size, pinned_ttl_s, clock)
        self._clock = clock
        self._inflight: dict[tuple, Future] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="resolve")

    def start(self, ref: ImageRef, docker_config: dict | None = None,
              platforms: tuple[str, ...] | None = None) -> Future:
        """A future Resolution (for `platforms`, else the resolver's); already done on a cache
        hit. Errors come out of .result()."""
        platforms = tuple(platforms) if platforms else self.platforms
        key = (str(ref), platforms, _fingerprint(docker_config))
        cache = self._pinned if ref.digest else self._tags
        with self._lock:
            hit = cache.get(key)
            if hit is not None:
                done, born = hit    # a done Future, shared by every request that hits it
                if self._clock() - born > cache.ttl / 2 and key not in self._inflight:
                    # Past half its life: ask again in the background, so a busy tag never
                    # expires under a request (a registry round trip in the p99).
                    self._inflight[key] = self._pool.submit(self._ask, key, cache, ref,
                                                            docker_config, platforms)
                return done
            pending = self._inflight.get(key)
            if pending is None:
                pending = self._pool.submit(self._ask, key, cache, ref, docker_config,
                                            platforms)
                self._inflight[key] = pending
            return pending

    def resolve(self, ref: ImageRef, *, timeout_s: float,
                docker_config: dict | None = None) -> Resolution:
        """Wait at most timeout_s; raises RegistryError (ResolveTimeout when out of time)."""
        future = self.start(ref, docker_config)
        return wait(future, ref, timeout_s)

    def _ask(self, key: tuple, cache: "_Answers", ref: ImageRef,
             docker_config: dict | None, platforms: tuple[str, ...] = ()) -> Resolution:
        try:
            if len(platforms) > 1:
                digests, top = self.registry.resolve_all(ref, platforms,
                                                         docker_config=docker_config)
            else:
                platform = platforms[0] if platforms else None
                digest, top = self.registry.resolve(ref, docker_config=docker_config,
                                                    platform=platform)
                digests = ((platform or "", digest),)
            done: Future = Future()
            done.set_result(Resolution(digests[0][1], top, cached=True, digests=digests))
            with self._lock:
                cache.put(key, (done, self._clock()))
            return Resolution(digests[0][1], top, digests=digests)
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class _Answers:
    """Answers kept for `ttl` seconds, at most `size` (the oldest goes first). Not
    thread-safe: the Resolver holds its lock. A dict and one clock read per hit — a review
    asks once per image, and cachetools' TTLCache cost ~8 µs a lookup on this path."""

    def __init__(self, size: int, ttl: float, clock: Callable[[], float]):
        self.size, self.ttl, self.clock = size, ttl, clock
        self._d: dict = {}

    def get(self, key):
        hit = self._d.get(key)
        if hit is not None and self.clock() - hit[1] > self.ttl:
            del self._d[key]
            return None
        return hit

    def put(self, key, value) -> None:
        self._d.pop(key, None)
        while len(self._d) >= self.size:
            del self._d[next(iter(self._d))]
        self._d[key] = value

    def __len__(self) -> int:
        return len(self._d)


def wait(future: Future, ref: ImageRef, timeout_s: float) -> Resolution:
    """The future's Resolution, or ResolveTimeout when the budget runs out first."""
    try:
        return future.result(timeout=max(0.0, timeout_s))
    except FutureTimeout as e:
        raise ResolveTimeout(f"registry {ref.registry} did not answer for {ref} within "
                             f"{max(0.0, timeout_s):.1f} s (still asking; retry)") from e


def _fingerprint(docker_config: dict | None) -> str:
    """Separate cache entries per credential set without keeping the secret in the key."""
    if not docker_config:
        return ""
    raw = json.dumps(docker_config, sort_keys=True).encode()
    return hashlib.sha256(raw).hexdigest()[:16]
