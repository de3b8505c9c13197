"""Read-only views of the inventory, shared by the CLI and the console listener."""
from __future__ import annotations

import contextlib
import gc
from collections import Counter

import orjson


@contextlib.contextmanager
def _no_gc():
    """No cyclic garbage collection while 10,000 entries are parsed: they are acyclic, and
    the collections their allocations trigger would scan the whole heap of a webhook process
    (its cached results) again and again — half a console page's time. Re-enabled after, only
    when it was enabled before (a concurrent reader leaves it as it found it)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def rows(store, namespace: str | None = None) -> list[dict]:
    """Workloads with their pods folded in: an owned object counts as a replica of its owner
    when the owner is recorded. One read of the store, parsed with orjson (the parse is most
    of a console page's time on 10,000 workloads); an entry that does not parse is left out.
    Each row is the entry itself with "key" and "replicas" added."""
    listed = store.inv_list(namespace=namespace)
    entries: dict[str, dict] = {}
    with _no_gc():
        for key, body in listed:
            try:
                e = orjson.loads(body)
            except orjson.JSONDecodeError:
                continue
            if isinstance(e, dict):
                entries[key] = e
    replicas = Counter(e.get("owner") for e in entries.values() if e.get("owner") in entries)
    out = []
    for key, e in entries.items():
        if e.get("owner") in entries:
            continue
        e["key"], e["replicas"] = key, replicas.get(key, 0)
        out.append(e)
    return out


def policy_report_list(store, namespace: str | None = None, *, all_results: bool = False) -> dict:
    """A v1 List of PolicyReports, one per namespace, of the workloads in the inventory (an
    owned object whose owner is recorded is reported through its owner)."""
    from ..admission.reports import policy_reports, workload_of
    workloads = [workload_of(r) for r in rows(store, namespace)]
    return {"apiVersion": "v1", "kind": "List",
            "items": policy_reports(workloads, all_results=all_results)}
