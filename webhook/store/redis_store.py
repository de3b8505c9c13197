"""The Redis store: the same contract as SQLiteStore, for replicas sharing results and a queue.

Every queue change is one Lua script, so it is atomic on the server without WATCH loops, and
its clock is Redis' own TIME: leases mean the same thing to every replica whatever their clocks.
Layout (all keys share the `{scapgate}` hash tag, so a Redis Cluster keeps them in one slot):

    {scapgate}:r:<kid>   hash   body, scanned_at, final, stored_at     (results, no TTL)
    {scapgate}:j:<kid>   hash   payload, state, token, owner, attempts, enqueued_at
    {scapgate}:due       zset   kid → ready time (ready) or lease expiry (running)
    {scapgate}:c:<name>  string shared counters (INCRBY)

    {scapgate}:inv                  hash  key → body                  (the inventory)
    {scapgate}:inv:nsof             hash  key → namespace             (to unindex a moved or
    {scapgate}:inv:ownerof          hash  key → owner                  deleted entry)
    {scapgate}:inv:ns:<namespace>   set   keys in that namespace
    {scapgate}:inv:owner:<owner>    set   keys with that owner ('' → top-level workloads)
    {scapgate}:inv:tmp:<token>:…    the same, staged by inv_replace (expire after an hour)
    {scapgate}:inv:done:<token>     string a finished replace's counts (a retried switch)

inv_put and inv_delete are one Lua script each (old index entries found and dropped with the
new ones written). inv_replace stages the new contents under temporary keys with pipelines,
invisible to readers, then one short Lua script checks the staging is complete, counts the
differences and RENAMEs the staged keys over the live ones: a failure before the switch leaves
the old inventory whole (the staging is deleted, or expires if the process died).

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

from .base import (Claim, JobInfo, Store, StoreUnavailable, check_inv_entry, inv_chunks,
                   job_image, new_token)

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

# -- inventory ---------------------------------------------------------------------------------
# KEYS: inv, nsof, ownerof. ARGV: index prefix ({p}inv:), key, namespace, owner, body.
_INV_PUT = """
local p, k = ARGV[1], ARGV[2]
local ns, owner = redis.call('HGET', KEYS[2], k), redis.call('HGET', KEYS[3], k)
if ns and ns ~= ARGV[3] then redis.call('SREM', p .. 'ns:' .. ns, k) end
if owner and owner ~= ARGV[4] then redis.call('SREM', p .. 'owner:' .. owner, k) end
redis.call('HSET', KEYS[1], k, ARGV[5])
redis.call('HSET', KEYS[2], k, ARGV[3])
redis.call('HSET', KEYS[3], k, ARGV[4])
redis.call('SADD', p .. 'ns:' .. ARGV[3], k)
redis.call('SADD', p .. 'owner:' .. ARGV[4], k)
return 1
"""

# KEYS: inv, nsof, ownerof. ARGV: index prefix, key.
_INV_DELETE = """
local p, k = ARGV[1], ARGV[2]
if redis.call('HEXISTS', KEYS[1], k) == 0 then return 0 end
local ns, owner = redis.call('HGET', KEYS[2], k), redis.call('HGET', KEYS[3], k)
if ns then redis.call('SREM', p .. 'ns:' .. ns, k) end
if owner then redis.call('SREM', p .. 'owner:' .. owner, k) end
redis.call('HDEL', KEYS[1], k)
redis.call('HDEL', KEYS[2], k)
redis.call('HDEL', KEYS[3], k)
return 1
"""

# KEYS: inv, one or two index sets. Returns key1, body1, key2, body2, … of their members (one
# snapshot: an entry moved between namespaces by a concurrent put is seen in one place only).
_INV_LIST = """
local ks
if #KEYS == 3 then ks = redis.call('SINTER', KEYS[2], KEYS[3])
else ks = redis.call('SMEMBERS', KEYS[2]) end
local out = {}
for i = 1, #ks, 500 do
  local part = {}
  for j = i, math.min(i + 499, #ks) do part[#part + 1] = ks[j] end
  local bodies = redis.call('HMGET', KEYS[1], unpack(part))
  for j = 1, #part do
    if bodies[j] then out[#out + 1] = part[j]; out[#out + 1] = bodies[j] end
  end
end
return out
"""

# KEYS: inv, nsof, ownerof (live), then the same three staged, then the done marker.
# ARGV: live index prefix ({p}inv:), staged prefix ({p}inv:tmp:<token>:), entry count.
# Only reads, DEL, RENAME, PERSIST and one SET: nothing here can fail half way for memory.
_INV_SWITCH = """
local done = redis.call('GET', KEYS[7])
if done then return cjson.decode(done) end
local n = tonumber(ARGV[3])
for i = 4, 6 do
  if redis.call('HLEN', KEYS[i]) ~= n then
    return redis.error_reply('inventory staging incomplete (expired or deleted): not switched')
  end
end
local function tbl(key)
  local flat, t = redis.call('HGETALL', key), {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end
local old_body, old_ns, old_owner = tbl(KEYS[1]), tbl(KEYS[2]), tbl(KEYS[3])
local new_body, new_ns, new_owner = tbl(KEYS[4]), tbl(KEYS[5]), tbl(KEYS[6])
local added, updated, kept = 0, 0, 0
for k, body in pairs(new_body) do
  local was = old_body[k]
  if not was then added = added + 1
  else
    kept = kept + 1
    if was ~= body or old_ns[k] ~= new_ns[k] or old_owner[k] ~= new_owner[k] then
      updated = updated + 1
    end
  end
end
local removed = redis.call('HLEN', KEYS[1]) - kept
local function each_index(ns_of, owner_of, fn)
  local seen = {}
  for _, ns in pairs(ns_of) do
    if not seen['ns:' .. ns] then seen['ns:' .. ns] = true; fn('ns:' .. ns) end
  end
  for _, owner in pairs(owner_of) do
    if not seen['owner:' .. owner] then seen['owner:' .. owner] = true; fn('owner:' .. owner) end
  end
end
local function move(src, dst)
  if redis.call('EXISTS', src) == 1 then
    redis.call('RENAME', src, dst)
    redis.call('PERSIST', dst)
  else
    redis.call('DEL', dst)
  end
end
each_index(old_ns, old_owner, function(name) redis.call('DEL', ARGV[1] .. name) end)
each_index(new_ns, new_owner, function(name) move(ARGV[2] .. name, ARGV[1] .. name) end)
for i = 1, 3 do move(KEYS[i + 3], KEYS[i]) end
local out = {added, updated, removed}
redis.call('SET', KEYS[7], cjson.encode(out), 'EX', 3600)
return out
"""
STAGE_TTL_S = 3600       # staging left by a process that died mid-replace goes away by itself


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
        self._inv_put = self.r.register_script(_INV_PUT)
        self._inv_delete = self.r.register_script(_INV_DELETE)
        self._inv_list = self.r.register_script(_INV_LIST)
        self._inv_switch = self.r.register_script(_INV_SWITCH)
        self.inv_key = prefix + "inv"
        self.inv_index = prefix + "inv:"            # + "ns:<namespace>" / "owner:<owner>"

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

    @_unavailable
    def jobs(self, limit: int = 20) -> list[JobInfo]:
        """The `due` set holds every job; the oldest by enqueued_at among the first
        4 × limit by due (a bounded read: ready jobs are due in queue order)."""
        kids = self.r.zrange(self.due_key, 0, max(0, 4 * int(limit)) - 1, withscores=True)
        if not kids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for kid, _ in kids:
            pipe.hmget(self._j(kid), "state", "attempts", "owner", "enqueued_at", "payload")
        out = []
        for (kid, due), (state, attempts, owner, enq, payload) in zip(kids, pipe.execute()):
            if state is None:
                continue
            out.append(JobInfo(kid=kid, state=state, due=float(due), attempts=int(attempts or 0),
                               owner=owner or "", enqueued_at=float(enq or 0),
                               image=job_image(payload or "")))
        return sorted(out, key=lambda j: j.enqueued_at)[:max(0, int(limit))]

    # inventory
    def _inv_keys(self, base: str) -> list[str]:
        """The three hashes of an inventory rooted at `base` (live: {p}inv; staged: …:h)."""
        return [base, base + ":nsof", base + ":ownerof"]

    @_unavailable
    def inv_put(self, key: str, namespace: str, owner: str, body: str) -> None:
        check_inv_entry(key, namespace, owner, body)
        self._inv_put(keys=self._inv_keys(self.inv_key),
                      args=[self.inv_index, key, namespace, owner, body])

    @_unavailable
    def inv_delete(self, key: str) -> bool:
        return self._inv_delete(keys=self._inv_keys(self.inv_key),
                                args=[self.inv_index, key]) == 1

    @_unavailable
    def inv_get(self, key: str) -> str | None:
        return self.r.hget(self.inv_key, key)

    @_unavailable
    def inv_list(self, namespace: str | None = None,
                 owner: str | None = None) -> list[tuple[str, str]]:
        sets = []
        if namespace is not None:
            sets.append(f"{self.inv_index}ns:{namespace}")
        if owner is not None:
            sets.append(f"{self.inv_index}owner:{owner}")
        if not sets:                                 # everything is what it returns
            return sorted(self.r.hgetall(self.inv_key).items())
        flat = self._inv_list(keys=[self.inv_key, *sets])
        return sorted(zip(flat[0::2], flat[1::2]))

    @_unavailable
    def inv_count(self) -> int:
        return self.r.hlen(self.inv_key)

    @_unavailable
    def inv_replace(self, entries) -> tuple[int, int, int]:
        token = new_token()
        stage = f"{self.inv_index}tmp:{token}:"
        staged = self._inv_keys(stage + "h")
        indexes: set[str] = set()                    # "ns:<ns>" / "owner:<owner>" staged
        n = 0
        try:
            for chunk in inv_chunks(entries):
                by_index: dict[str, list[str]] = {}
                for key, namespace, owner, _ in chunk:
                    by_index.setdefault(f"ns:{namespace}", []).append(key)
                    by_index.setdefault(f"owner:{owner}", []).append(key)
                pipe = self.r.pipeline(transaction=False)
                pipe.hset(staged[0], mapping={k: b for k, _, _, b in chunk})
                pipe.hset(staged[1], mapping={k: ns for k, ns, _, _ in chunk})
                pipe.hset(staged[2], mapping={k: o for k, _, o, _ in chunk})
                for name, keys in by_index.items():
                    pipe.sadd(stage + name, *keys)
                for name in [*staged, *(stage + i for i in by_index.keys() - indexes)]:
                    pipe.expire(name, STAGE_TTL_S)
                pipe.execute()
                indexes |= by_index.keys()
                n += len(chunk)
            out = self._inv_switch(
                keys=[*self._inv_keys(self.inv_key), *staged, f"{self.inv_index}done:{token}"],
                args=[self.inv_index, stage, n])
        except BaseException:
            self._inv_discard(staged + [stage + i for i in indexes])
            raise
        added, updated, removed = (int(x) for x in out)
        return added, updated, removed

    def _inv_discard(self, names: list[str]) -> None:
        """Best effort: what is left expires anyway."""
        try:
            for i in range(0, len(names), 500):
                self.r.delete(*names[i:i + 500])
        except redis.RedisError:
            pass

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
