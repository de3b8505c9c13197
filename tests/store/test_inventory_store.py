"""The inventory's storage contract, one suite run against the SQLite file and a real redis-server.

An entry is (key, namespace, owner, body): owner is the key of the workload that owns it (a
Pod's ReplicaSet, a ReplicaSet's Deployment), '' for a top-level workload; the body is opaque.
What is checked: round trips, lists by namespace and owner, exact (added, updated, removed)
counts, all-or-nothing replace (a bad entry, a closed connection, lost staging, a killed process
part-way through), persistence across store objects, two replicas, 20,000 entries, and
StoreUnavailable when the backend is down.
"""
from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Callable, Iterable

import pytest

from tests.builders import REPO
from tests.builders.stores import (  # noqa: F401
    free_port, make_store, redis_server, store, store_kind)
from webhook.store.base import Store, StoreUnavailable
from webhook.store.redis_store import STAGE_TTL_S, RedisStore
from webhook.store.sqlite import _SCHEMA, SQLiteStore

Entry = tuple[str, str, str, str]


# ------------------------------------------------------------------------------ helpers

def body(key: str, v: int = 0) -> str:
    ns, kind, name = key.split("/")
    return json.dumps({"kind": kind, "namespace": ns, "name": name, "v": v,
                       "containers": [{"path": "spec.containers[0].image",
                                       "image": f"registry.example/{name}:1",
                                       "digest": "sha256:" + "ab" * 32}],
                       "verdict": "pass"})


def fleet(namespaces: int, deployments: int, pods: int, *, v: int = 0,
          ns_prefix: str = "ns") -> list[Entry]:
    """Deployments (top-level) → one ReplicaSet each → `pods` Pods each, per namespace:
    namespaces × deployments × (2 + pods) entries."""
    out = []
    for n in range(namespaces):
        ns = f"{ns_prefix}{n:03d}"
        for d in range(deployments):
            dep = f"{ns}/Deployment/app{d:03d}"
            rs = f"{ns}/ReplicaSet/app{d:03d}-5f7c"
            out.append((dep, ns, "", body(dep, v)))
            out.append((rs, ns, dep, body(rs, v)))
            for p in range(pods):
                pod = f"{ns}/Pod/app{d:03d}-5f7c-{p:02d}"
                out.append((pod, ns, rs, body(pod, v)))
    return out


def snapshot(s: Store) -> list[tuple[str, str]]:
    return s.inv_list()


def expect_like(s: Store, entries: Iterable[Entry]) -> None:
    """The store holds exactly these entries, and every namespace / owner / (namespace, owner)
    list agrees with them."""
    entries = sorted(entries)
    assert s.inv_count() == len(entries)
    assert s.inv_list() == [(k, b) for k, _, _, b in entries]
    for ns in {e[1] for e in entries}:
        assert s.inv_list(namespace=ns) == [(k, b) for k, n, _, b in entries if n == ns]
    for owner in {e[2] for e in entries}:
        assert s.inv_list(owner=owner) == [(k, b) for k, _, o, b in entries if o == owner]
    for ns, owner in {(e[1], e[2]) for e in entries}:
        assert s.inv_list(namespace=ns, owner=owner) == [
            (k, b) for k, n, o, b in entries if n == ns and o == owner]


def redis_inv_keys(s: RedisStore) -> set[str]:
    return set(s.r.scan_iter(match=s.prefix + "inv*", count=1000))


def expect_redis_layout(s: RedisStore, entries: Iterable[Entry]) -> None:
    """Nothing but the live hashes and non-empty index sets, all without a TTL: no leftover
    staging, no stale index member, no empty set."""
    entries = list(entries)
    p = s.prefix + "inv"
    want = {p, p + ":nsof", p + ":ownerof"} if entries else set()
    want |= {f"{p}:ns:{e[1]}" for e in entries} | {f"{p}:owner:{e[2]}" for e in entries}
    done = {k for k in redis_inv_keys(s) if k.startswith(p + ":done:")}
    assert redis_inv_keys(s) - done == want
    members: dict[str, set[str]] = {}
    for k, ns, owner, _ in entries:
        members.setdefault(f"{p}:ns:{ns}", set()).add(k)
        members.setdefault(f"{p}:owner:{owner}", set()).add(k)
    pipe = s.r.pipeline(transaction=False)
    for name in members:
        pipe.smembers(name)
    for name in want:
        pipe.ttl(name)
    answers = pipe.execute()
    assert dict(zip(members, answers[:len(members)])) == members
    assert {k: t for k, t in zip(want, answers[len(members):]) if t != -1} == {}, "would expire"


def expect_no_staging(s: Store) -> None:
    if isinstance(s, RedisStore):
        assert not [k for k in redis_inv_keys(s) if ":inv:tmp:" in k], "staging left behind"


class Tap:
    """Entries read once, in order; calls[i]() runs just before entry i is handed over — a way
    to act part-way through a replace without touching the store's code."""

    def __init__(self, entries: list, calls: dict[int, Callable[[], None]]):
        self.entries, self.calls, self.read = entries, calls, 0

    def __iter__(self):
        for i, e in enumerate(self.entries):
            if i in self.calls:
                self.calls[i]()
            self.read = i + 1
            yield e


@pytest.fixture
def replica(store_kind, request, tmp_path):
    """A second store object on the same SQLite file / Redis server: another replica."""
    s = make_store(store_kind, request, tmp_path)
    try:
        yield s
    finally:
        s.close()


# ------------------------------------------------------------------------------ round trips

def test_put_get_delete_round_trip(store):
    assert store.inv_get("a/Pod/x") is None and store.inv_count() == 0
    store.inv_put("a/Pod/x", "a", "", '{"v": 1}')
    assert store.inv_get("a/Pod/x") == '{"v": 1}'
    store.inv_put("a/Pod/x", "a", "", '{"v": 2}')                 # UPDATE replaces
    assert store.inv_get("a/Pod/x") == '{"v": 2}' and store.inv_count() == 1
    assert store.inv_delete("a/Pod/x") is True
    assert store.inv_delete("a/Pod/x") is False, "a second DELETE finds nothing"
    assert store.inv_get("a/Pod/x") is None and store.inv_count() == 0
    assert store.inv_list() == [] and store.inv_list(namespace="a") == []
    expect_like(store, [])
    if isinstance(store, RedisStore):
        expect_redis_layout(store, [])


def test_bodies_and_names_are_opaque_text(store):
    odd = [("ns/Pod/ünïcode", "ns", "", '{"msg": "naïve ☃ \\u0000"}'),
           ("k:with:colons", "a:ns:b", "owner:ns:x", "plain text, not JSON"),
           ("empty-ns", "", "", ""),
           ("big", "ns", "", "x" * 1_000_000),
           ("newline\nkey", "ns", "own\ner", "line1\nline2\x00end")]
    for e in odd:
        store.inv_put(*e)
    for k, _, _, b in odd:
        assert store.inv_get(k) == b
    expect_like(store, odd)
    assert store.inv_list(namespace="a:ns:b", owner="owner:ns:x") == [("k:with:colons",
                                                                      "plain text, not JSON")]
    assert store.inv_list(namespace="a") == [], "a namespace is matched whole, not as a prefix"


def test_put_rejects_what_is_not_text(store):
    for bad in [("k", "ns", "", {"a": 1}), ("k", "ns", None, "b"), (1, "ns", "", "b"),
                ("k", b"ns", "", "b")]:
        with pytest.raises(TypeError, match="must be str"):
            store.inv_put(*bad)
    assert store.inv_count() == 0


def test_list_by_namespace_by_owner_and_both(store):
    entries = fleet(2, 2, 3)                  # 2 ns × 2 deployments × (deploy + rs + 3 pods)
    for e in entries:
        store.inv_put(*e)
    assert store.inv_count() == 20
    assert [k for k, _ in store.inv_list(owner="")] == [
        "ns000/Deployment/app000", "ns000/Deployment/app001",
        "ns001/Deployment/app000", "ns001/Deployment/app001"]
    assert [k for k, _ in store.inv_list(owner="ns001/ReplicaSet/app001-5f7c")] == [
        "ns001/Pod/app001-5f7c-00", "ns001/Pod/app001-5f7c-01", "ns001/Pod/app001-5f7c-02"]
    assert [k for k, _ in store.inv_list(owner="ns000/Deployment/app000")] == [
        "ns000/ReplicaSet/app000-5f7c"]
    assert len(store.inv_list(namespace="ns000")) == 10
    assert [k for k, _ in store.inv_list(namespace="ns000", owner="")] == [
        "ns000/Deployment/app000", "ns000/Deployment/app001"]
    assert store.inv_list(namespace="ns001", owner="ns000/Deployment/app000") == []
    assert store.inv_list(namespace="nope") == [] and store.inv_list(owner="nope") == []
    expect_like(store, entries)


def test_put_moves_an_entry_between_namespaces_and_owners(store):
    store.inv_put("k", "a", "rs-1", "v1")
    store.inv_put("other", "a", "rs-1", "o")
    store.inv_put("k", "b", "rs-2", "v2")       # same key, new namespace and owner
    assert store.inv_list(namespace="a") == [("other", "o")]
    assert store.inv_list(owner="rs-1") == [("other", "o")]
    assert store.inv_list(namespace="b") == [("k", "v2")] == store.inv_list(owner="rs-2")
    store.inv_delete("other")
    assert store.inv_list(namespace="a") == [] and store.inv_list(owner="rs-1") == []
    expect_like(store, [("k", "b", "rs-2", "v2")])
    if isinstance(store, RedisStore):
        expect_redis_layout(store, [("k", "b", "rs-2", "v2")])


def test_random_puts_deletes_and_replaces_keep_every_index_consistent(store):
    rnd = random.Random(16)
    model: dict[str, Entry] = {}
    keys = [f"k{i}" for i in range(60)]
    for step in range(400):
        op = rnd.random()
        k = rnd.choice(keys)
        if op < 0.6:
            e = (k, rnd.choice("abc"), rnd.choice(["", "o1", "o2", "k1"]), f"b{step}")
            store.inv_put(*e)
            model[k] = e
        elif op < 0.95:
            assert store.inv_delete(k) is (model.pop(k, None) is not None)
        else:
            new = {e[0]: e for e in (
                (rnd.choice(keys), rnd.choice("abcd"), rnd.choice(["", "o1", "o3"]),
                 rnd.choice(["b", f"c{step}"])) for _ in range(30))}
            added = len(new.keys() - model.keys())
            removed = len(model.keys() - new.keys())
            updated = sum(1 for k2 in new.keys() & model.keys() if new[k2] != model[k2])
            assert store.inv_replace(list(new.values())) == (added, updated, removed)
            model = new
        if step % 50 == 0:
            expect_like(store, model.values())
    expect_like(store, model.values())
    if isinstance(store, RedisStore):
        expect_redis_layout(store, model.values())


# ------------------------------------------------------------------------------ replace

def test_replace_counts_added_updated_removed_exactly(store):
    old = [("a/Pod/1", "a", "", "one"), ("a/Pod/2", "a", "", "two"),
           ("a/Pod/3", "a", "", "three"), ("b/Pod/4", "b", "rs", "four"),
           ("b/Pod/5", "b", "rs", "five")]
    assert store.inv_replace(old) == (5, 0, 0)
    expect_like(store, old)
    assert store.inv_replace(old) == (0, 0, 0), "the same inventory again changes nothing"
    assert store.inv_replace(reversed(old)) == (0, 0, 0), "order does not matter"
    new = [("a/Pod/1", "a", "", "one"),          # unchanged
           ("a/Pod/2", "a", "", "TWO"),          # body changed
           ("b/Pod/4", "b", "rs-2", "four"),     # owner changed (same body)
           ("b/Pod/5", "c", "rs", "five"),       # namespace changed (same body)
           ("c/Pod/6", "c", "", "six"),          # added
           ("c/Pod/7", "c", "", "seven")]        # added; a/Pod/3 removed
    assert store.inv_replace(new) == (2, 3, 1)
    expect_like(store, new)
    assert store.inv_get("a/Pod/3") is None
    assert store.inv_replace(iter(new[:2])) == (0, 0, 4), "any iterable, read once"
    assert store.inv_replace([]) == (0, 0, 2)
    expect_like(store, [])
    assert store.inv_replace([]) == (0, 0, 0)
    expect_no_staging(store)
    if isinstance(store, RedisStore):
        expect_redis_layout(store, [])


def test_replace_then_single_writes_work_on_the_replaced_inventory(store):
    store.inv_put("old", "x", "", "o")
    store.inv_replace([("k1", "a", "", "1"), ("k2", "a", "k1", "2")])
    store.inv_put("k3", "a", "k1", "3")
    assert store.inv_delete("k2") is True
    assert store.inv_delete("old") is False
    expect_like(store, [("k1", "a", "", "1"), ("k3", "a", "k1", "3")])
    if isinstance(store, RedisStore):
        expect_redis_layout(store, [("k1", "a", "", "1"), ("k3", "a", "k1", "3")])


def test_sqlite_replace_touches_only_changed_rows(tmp_path):
    s = SQLiteStore(str(tmp_path / "s.db"), clock=iter([100.0, 200.0]).__next__)
    s.inv_replace([("k1", "a", "", "1"), ("k2", "a", "", "2")])
    s.inv_replace([("k1", "a", "", "1"), ("k2", "a", "", "2b")])
    assert dict(s._read("SELECT key, updated FROM inventory")) == {"k1": 100.0, "k2": 200.0}
    s.close()


BAD_AT = 15_000


@pytest.mark.parametrize("bad,error", [
    (lambda e: (e[0], e[1], e[2], {"not": "a str"}), TypeError),
    (lambda e: (e[0], e[1], e[2], None), TypeError),
    (lambda e: ("new000/Deployment/app000", e[1], e[2], e[3]), ValueError),  # a repeated key
    (lambda e: e[:3], TypeError),
], ids=["dict-body", "none-body", "duplicate-key", "three-fields"])
def test_replace_failing_half_way_keeps_the_old_inventory_whole(store, bad, error):
    old = fleet(3, 10, 3)
    store.inv_replace(old)
    before = snapshot(store)
    new = fleet(40, 50, 8, v=1, ns_prefix="new")                # 40 × 50 × 10 = 20,000
    new[BAD_AT] = bad(new[BAD_AT])
    tap = Tap(new, {})
    with pytest.raises(error, match=f"entry {BAD_AT}"):
        store.inv_replace(tap)
    assert tap.read == BAD_AT + 1, "the failure came half way, after 15 chunks were written"
    assert snapshot(store) == before
    expect_like(store, old)
    expect_no_staging(store)
    if isinstance(store, RedisStore):
        expect_redis_layout(store, old)


def test_a_replace_in_progress_is_invisible_to_another_replica(store, replica):
    old = fleet(2, 5, 3)
    store.inv_replace(old)
    new = fleet(10, 20, 8, v=1)                                   # 2,000 entries
    seen = []
    tap = Tap(new, {1500: lambda: seen.append(
        (replica.inv_count(), replica.inv_list(namespace="ns000"), replica.inv_get(new[0][0])))})
    assert store.inv_replace(tap) == (1950, 50, 0)
    count, listed, got = seen[0]
    assert count == len(old) and listed == [(k, b) for k, n, _, b in sorted(old) if n == "ns000"]
    assert got == body(new[0][0], 0), "the replica still read the old body"
    expect_like(replica, new)


def test_connection_closed_half_way_never_leaves_a_mix(store):
    old = fleet(2, 5, 3)
    store.inv_replace(old)
    new = fleet(10, 20, 8, v=1)
    try:
        store.inv_replace(Tap(new, {1500: store.close}))
    except StoreUnavailable:
        # SQLite: the transaction died with its connection, and SQLite rolled it back.
        assert isinstance(store, SQLiteStore)
        expect_like(store, old)
    else:
        # Redis: the staging is on the server; the pool reconnects and the switch happens.
        assert isinstance(store, RedisStore)
        expect_like(store, new)
        expect_redis_layout(store, new)
    expect_no_staging(store)


def test_redis_refuses_to_switch_to_incomplete_staging(redis_server):
    s = RedisStore(redis_server.url)
    old = fleet(2, 5, 3)
    s.inv_replace(old)
    new = fleet(10, 20, 8, v=1)

    def expire_staging():                     # as if the staging TTL had passed meanwhile
        s.r.delete(*[k for k in redis_inv_keys(s) if ":inv:tmp:" in k])

    with pytest.raises(StoreUnavailable, match="staging incomplete"):
        s.inv_replace(Tap(new, {1500: expire_staging}))
    expect_like(s, old)
    expect_redis_layout(s, old)
    s.close()


def test_redis_switch_retried_after_it_ran_returns_its_counts(redis_server, monkeypatch):
    """A connection lost after the switch script ran makes redis-py send it again: the second
    run finds the finished marker instead of refusing the now-missing staging."""
    s = RedisStore(redis_server.url)
    s.inv_replace([("a", "n", "", "1")])
    real = s._inv_switch

    def twice(**kw):
        real(**kw)
        return real(**kw)

    monkeypatch.setattr(s, "_inv_switch", twice)
    assert s.inv_replace([("a", "n", "", "2"), ("b", "n", "", "3")]) == (1, 1, 0)
    expect_like(s, [("a", "n", "", "2"), ("b", "n", "", "3")])
    s.close()


KILLER = """
import sys, time
sys.path.insert(0, {repo!r})
from tests.store.test_inventory_store import fleet, Tap
from webhook.store.backends import open_store
s = open_store({url!r}, "")
def stop():
    print("half way", flush=True)
    time.sleep(60)
s.inv_replace(Tap(fleet(40, 50, 8, v=1, ns_prefix="new"), {{{at}: stop}}))
print("finished", flush=True)
"""


def test_a_process_killed_half_way_leaves_the_old_inventory(store):
    old = fleet(3, 10, 3)
    store.inv_replace(old)
    url = f"sqlite:///{store.path}" if isinstance(store, SQLiteStore) else store.url
    proc = subprocess.Popen([sys.executable, "-c", KILLER.format(repo=str(REPO), url=url,
                                                                 at=BAD_AT)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line == "half way\n", proc.stderr.read() if proc.poll() is not None else line
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    expect_like(store, old)
    if isinstance(store, RedisStore):
        staging = [k for k in redis_inv_keys(store) if ":inv:tmp:" in k]
        assert staging, "the dead process staged 15 chunks"
        assert all(0 < store.r.ttl(k) <= STAGE_TTL_S for k in staging), "…that expire"
        store.r.delete(*staging)
        expect_redis_layout(store, old)
    else:
        store.inv_put("after", "x", "", "the file is not left locked")
        assert store.inv_count() == len(old) + 1


# ------------------------------------------------------------------------------ persistence

def test_entries_survive_reopening_the_store(store_kind, request, tmp_path):
    first = make_store(store_kind, request, tmp_path)
    entries = fleet(2, 3, 2)
    first.inv_replace(entries)
    first.inv_put("extra", "ns000", "", "e")
    first.inv_delete(entries[0][0])
    first.close()
    again = make_store(store_kind, request, tmp_path)
    expect_like(again, entries[1:] + [("extra", "ns000", "", "e")])
    again.close()


def test_an_existing_sqlite_file_gains_the_inventory(tmp_path):
    path = tmp_path / "old.db"
    old_schema = _SCHEMA.split("CREATE TABLE IF NOT EXISTS inventory")[0]
    with sqlite3.connect(path) as c:                       # a file from before the inventory
        c.executescript(old_schema)
        c.execute("INSERT INTO results VALUES ('kid', 'result', 1.0, 1, 1.0)")
    c.close()
    s = SQLiteStore(str(path))
    assert s.get("kid") == "result"
    s.inv_put("k", "ns", "", "b")
    assert s.inv_list(namespace="ns") == [("k", "b")]
    names = {r[0] for r in s._read("SELECT name FROM sqlite_master")}
    assert {"inventory", "inventory_namespace", "inventory_owner"} <= names
    s.close()


def test_two_replicas_see_each_others_writes(store, replica):
    store.inv_put("a", "ns", "", "from-1")
    assert replica.inv_get("a") == "from-1"
    assert replica.inv_replace([("a", "ns", "", "from-2"), ("b", "ns", "a", "b2")]) == (1, 1, 0)
    assert store.inv_list(namespace="ns") == [("a", "from-2"), ("b", "b2")]
    assert store.inv_list(owner="a") == [("b", "b2")]
    assert store.inv_delete("b") is True
    assert replica.inv_count() == 1 and replica.inv_get("b") is None


def test_concurrent_writes_from_two_replicas_lose_nothing(store, replica):
    def write(s: Store, who: str):
        for i in range(150):
            s.inv_put(f"{who}/{i}", f"ns{i % 3}", f"o{i % 5}", f"{who}-{i}")
            if i % 10 == 0:
                s.inv_delete(f"{who}/{i}")

    threads = [threading.Thread(target=write, args=(s, f"{name}{t}"))
               for s, name in ((store, "r1-"), (replica, "r2-")) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    want = [(f"{w}/{i}", f"ns{i % 3}", f"o{i % 5}", f"{w}-{i}")
            for w in (f"r{r}-{t}" for r in (1, 2) for t in range(3))
            for i in range(150) if i % 10]
    expect_like(store, want)
    if isinstance(store, RedisStore):
        expect_redis_layout(store, want)


# ------------------------------------------------------------------------------ scale

def test_20000_entries_replaced_and_listed(store):
    first = fleet(50, 40, 8)                                     # 50 × 40 × 10 = 20,000
    assert len(first) == 20_000
    assert store.inv_replace(first) == (20_000, 0, 0)
    assert store.inv_count() == 20_000
    everything = store.inv_list()
    assert len(everything) == 20_000 and everything == sorted(everything)
    assert len(store.inv_list(namespace="ns007")) == 400
    assert len(store.inv_list(owner="")) == 2_000
    assert len(store.inv_list(owner="ns007/ReplicaSet/app003-5f7c")) == 8
    assert len(store.inv_list(namespace="ns007", owner="")) == 40

    # A reconcile: namespaces 0-4 gone (2,000), 5-9 changed (2,000), 50-54 new (2,000).
    second = [e for e in fleet(55, 40, 8)[2_000:]]
    second = [(k, n, o, body(k, 1)) if "ns005" <= n <= "ns009" else (k, n, o, b)
              for k, n, o, b in second]
    assert store.inv_replace(second) == (2_000, 2_000, 2_000)
    assert store.inv_count() == 20_000
    assert store.inv_list(namespace="ns000") == []
    assert len(store.inv_list(namespace="ns054")) == 400
    assert store.inv_get("ns005/Pod/app000-5f7c-00") == body("ns005/Pod/app000-5f7c-00", 1)
    assert store.inv_replace(second) == (0, 0, 0)
    if isinstance(store, RedisStore):
        expect_redis_layout(store, second)


def test_sqlite_filtered_lists_read_through_their_index(tmp_path):
    s = SQLiteStore(str(tmp_path / "s.db"))
    s.inv_replace(fleet(3, 3, 2))
    for where, index in (("namespace = 'ns001'", "inventory_namespace"),
                         ("owner = ''", "inventory_owner")):
        plan = " ".join(r[-1] for r in s._read(
            f"EXPLAIN QUERY PLAN SELECT key, body FROM inventory WHERE {where} ORDER BY key"))
        assert f"USING INDEX {index}" in plan and "TEMP B-TREE" not in plan, plan
    s.close()


def test_redis_filtered_lists_read_only_their_members(redis_server):
    s = RedisStore(redis_server.url)
    s.inv_replace(fleet(20, 10, 8))                            # 2,000 entries
    s.r.config_resetstat()
    assert len(s.inv_list(namespace="ns003")) == 100
    assert len(s.inv_list(owner="ns003/ReplicaSet/app001-5f7c")) == 8
    stats = s.r.info("commandstats")
    assert "cmdstat_hgetall" not in stats and "cmdstat_hvals" not in stats
    assert stats["cmdstat_hmget"]["calls"] == 2, "one HMGET per ≤ 500 members"
    s.close()


# ------------------------------------------------------------------------------ outages

def every_inventory_call(s: Store) -> list[tuple[str, Callable[[], object]]]:
    return [("inv_put", lambda: s.inv_put("k", "ns", "", "b")),
            ("inv_delete", lambda: s.inv_delete("k")),
            ("inv_get", lambda: s.inv_get("k")),
            ("inv_list", lambda: s.inv_list()),
            ("inv_list ns", lambda: s.inv_list(namespace="ns")),
            ("inv_list both", lambda: s.inv_list(namespace="ns", owner="")),
            ("inv_count", lambda: s.inv_count()),
            ("inv_replace", lambda: s.inv_replace(fleet(2, 2, 2))),
            ("inv_replace empty", lambda: s.inv_replace([]))]


def test_redis_on_a_closed_port_raises_store_unavailable_fast():
    s = RedisStore(f"redis://127.0.0.1:{free_port()}/0")
    t0 = time.monotonic()
    for name, call in every_inventory_call(s):
        with pytest.raises(StoreUnavailable, match=r"Redis store redis://127\.0\.0\.1"):
            call()
    assert time.monotonic() - t0 < 5, "an outage must fail fast"
    s.close()


def test_redis_going_down_raises_store_unavailable_then_recovers(redis_server):
    s = RedisStore(redis_server.url)
    s.inv_put("k", "ns", "", "b")
    redis_server.stop()
    for name, call in every_inventory_call(s):
        with pytest.raises(StoreUnavailable):
            call()
    redis_server.start()
    assert s.inv_count() == 0                        # no persistence in tests: a fresh Redis
    assert s.inv_replace([("k", "ns", "", "b")]) == (1, 0, 0)
    s.close()


def test_sqlite_unusable_raises_store_unavailable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    s = SQLiteStore(str(blocker / "scapgate.db"))
    for name, call in every_inventory_call(s):
        with pytest.raises(StoreUnavailable, match="SQLite store"):
            call()
