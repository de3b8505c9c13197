"""The Redis store: the same contract as SQLiteStore, for replicas sharing results and a queue.

Every queue change is one Lua script, so it is atomic on the server without WATCH loops, and
its clock is Redis' own TIME: leases mean the same thing to every replica whatever their clocks.
Layout (all keys share the `{scapgate}` hash tag, so a Redis Cluster keeps them in one slot):

    {scapgate}:r:<kid>   hash   body, scanned_at, final, stored_at     (results, no TTL)
    {scapgate}:j:<kid>   hash   payload, state, token, owner, attempts, enqueued_at
    {scapgate}:due       zset   kid → ready time (ready) or lease expiry (running)
    {scapgate}:c:<name>  string shared counters (INCRBY)

Run Redis with `maxmemory-policy noeviction` (or enough memory): evicting a job hash would drop
a queued scan.
"""
from __future__ import annotations

import functools
import time
from typing import Iterable

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .base import Claim, JobInfo, Store, StoreUnavailable, new_token

PREFIX = "{scapgate}:"
_NOW = "local t = redis.call('TIME'); local now = tonumber(t[1]) + tonumber(t[2]) / 1000000\n"

_ENQUEUE = _NOW + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'exists' end
local r = redis.call('HMGET', KEYS[3], 'final', 'scanned_at')
if r[1] == '1' and tonumber(r[2]) > tonumber(ARGV[4]) then return 'exists' end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return 'full' end
if r[1] == '0' then redis.call('DEL', KEYS[3]) end
redis.call('HSET', KEYS[1], 'payload', ARGV[2], 'state', 'ready', 'attempts', 0, 'owner', '',
           'enqueued_at', now)
redis.call('ZADD', KEYS[2], now, ARGV[1])
return 'queued'
"""

_CLAIM = _NOW + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1)
if #due == 0 then return false end
local kid = due[1]
local jk = ARGV[4] .. kid
if redis.call('EXISTS', jk) == 0 then redis.call('ZREM', KEYS[1], kid) return false end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), kid)
local attempts = redis.call('HINCRBY', jk, 'attempts', 1)
redis.call('HSET', jk, 'state', 'running', 'token', ARGV[2], 'owner', ARGV[3])
return {kid, redis.call('HGET', jk, 'payload'), attempts}
"""

_RENEW = _NOW + """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('ZADD', KEYS[2], 'XX', now + tonumber(ARGV[2]), ARGV[3])
return 1
"""

_COMPLETE = _NOW + """
redis.call('HSET', KEYS[3], 'body', ARGV[3], 'scanned_at', ARGV[4], 'final', ARGV[5],
           'stored_at', now)
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""

_REQUEUE = _NOW + """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'ready', 'owner', '')
redis.call('HDEL', KEYS[1], 'token')
if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[1], 'attempts', -1) end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[2])
return 1
"""


def _unavailable(fn):
    """Every Redis failure (refused, timeout, loading, OOM, read-only replica) means the same
    thing to an admission: the store cannot answer now."""
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except redis.RedisError as e:
            raise StoreUnavailable(f"Redis store {self.safe_url}: {e}") from e
    return wrapper


class RedisStore(Store):
    """Redis behind the Store interface; thread-safe and fork-safe (redis-py's pool reconnects
    in a forked child)."""

    def __init__(self, url: str, *, connect_timeout_s: float = 0.5, timeout_s: float = 2.0,
                 prefix: str = PREFIX):
        self.url = url
        self.safe_url = _without_password(url)
        self.prefix = prefix
        # One quick retry reconnects a pooled connection that died with a Redis restart.
        self.r = redis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=connect_timeout_s,
            socket_timeout=timeout_s, retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 1))
        self._enqueue = self.r.register_script(_ENQUEUE)
        self._claim = self.r.register_script(_CLAIM)
        self._renew = self.r.register_script(_RENEW)
        self._complete = self.r.register_script(_COMPLETE)
        self._requeue = self.r.register_script(_REQUEUE)
        self.due_key = prefix + "due"

    def _r(self, kid: str) -> str:
        return f"{self.prefix}r:{kid}"

    def _j(self, kid: str) -> str:
        return f"{self.prefix}j:{kid}"

    # results
    @_unavailable
    def get(self, kid: str) -> str | None:
        return self.r.hget(self._r(kid), "body")

    @_unavailable
    def get_many(self, kids: Iterable[str]) -> dict[str, str]:
        kids = list(kids)
        if not kids:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for kid in kids:
            pipe.hget(self._r(kid), "body")
        return {k: v for k, v in zip(kids, pipe.execute()) if v is not None}

    @_unavailable
    def put(self, kid: str, body: str, *, scanned_at: float, final: bool = True) -> None:
        self.r.hset(self._r(kid), mapping={"body": body, "scanned_at": repr(float(scanned_at)),
                                           "final": int(final), "stored_at": time.time()})

    # queue
    @_unavailable
    def enqueue(self, kid: str, payload: str, *, limit: int, newer_than: float = -1.0) -> str:
        return self._enqueue(keys=[self._j(kid), self.due_key, self._r(kid)],
                             args=[kid, payload, limit, repr(float(newer_than))])

    @_unavailable
    def claim(self, owner: str, lease_s: float) -> Claim | None:
        token = new_token()
        out = self._claim(keys=[self.due_key], args=[lease_s, token, owner, self.prefix + "j:"])
        if not out:
            return None
        kid, payload, attempts = out
        return Claim(kid=kid, payload=payload, token=token, attempt=int(attempts), owner=owner)

    @_unavailable
    def renew(self, claim: Claim, lease_s: float) -> bool:
        return self._renew(keys=[self._j(claim.kid), self.due_key],
                           args=[claim.token, lease_s, claim.kid]) == 1

    @_unavailable
    def complete(self, claim: Claim, body: str, *, scanned_at: float, final: bool = True) -> bool:
        return self._complete(keys=[self._j(claim.kid), self.due_key, self._r(claim.kid)],
                              args=[claim.token, claim.kid, body, repr(float(scanned_at)),
                                    int(final)]) == 1

    @_unavailable
    def retry(self, claim: Claim, delay_s: float) -> bool:
        return self._requeue(keys=[self._j(claim.kid), self.due_key],
                             args=[claim.token, claim.kid, delay_s, 0]) == 1

    @_unavailable
    def release(self, claim: Claim) -> bool:
        return self._requeue(keys=[self._j(claim.kid), self.due_key],
                             args=[claim.token, claim.kid, 0, 1]) == 1

    @_unavailable
    def depth(self) -> int:
        return self.r.zcard(self.due_key)

    @_unavailable
    def job(self, kid: str) -> JobInfo | None:
        pipe = self.r.pipeline(transaction=True)
        pipe.hmget(self._j(kid), "state", "attempts", "owner")
        pipe.zscore(self.due_key, kid)
        (state, attempts, owner), due = pipe.execute()
        if state is None:
            return None
        return JobInfo(kid=kid, state=state, due=float(due or 0), attempts=int(attempts or 0),
                       owner=owner or "")

    # counters and health
    @_unavailable
    def incr(self, name: str, n: int = 1) -> int:
        return self.r.incrby(f"{self.prefix}c:{name}", n)

    @_unavailable
    def counter(self, name: str) -> int:
        return int(self.r.get(f"{self.prefix}c:{name}") or 0)

    @_unavailable
    def ping(self) -> None:
        self.r.ping()

    def close(self) -> None:
        self.r.close()


def _without_password(url: str) -> str:
    """Store URLs go into logs and errors; their password must not."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"
