"""Read-only views of the inventory, shared by the CLI and the console listener."""
from __future__ import annotations

import json


def rows(store, namespace: str | None = None) -> list[dict]:
    """Workloads with their pods folded in: an owned object counts as a replica of its owner
    when the owner is recorded."""
    entries = {k: json.loads(b) for k, b in store.inv_list(namespace=namespace)}
    replicas: dict[str, int] = {}
    for e in entries.values():
        if e.get("owner") and e["owner"] in entries:
            replicas[e["owner"]] = replicas.get(e["owner"], 0) + 1
    out = []
    for k, e in entries.items():
        if e.get("owner") in entries:
            continue
        out.append({**e, "key": k, "replicas": replicas.get(k, 0)})
    return out


def policy_report_list(store, namespace: str | None = None, *, all_results: bool = False) -> dict:
    """A v1 List of PolicyReports, one per namespace, of the workloads in the inventory (an
    owned object whose owner is recorded is reported through its owner)."""
    from ..admission.reports import policy_reports, workload_of
    workloads = [workload_of(r) for r in rows(store, namespace)]
    return {"apiVersion": "v1", "kind": "List",
            "items": policy_reports(workloads, all_results=all_results)}
