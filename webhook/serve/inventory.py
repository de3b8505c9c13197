"""`scapgate inventory list|import`: what the gate knows is running, and reconciling it.

`import` reads `kubectl get pods,deployments,statefulsets,daemonsets,jobs,cronjobs,replicasets
-A -o json` (a List, or several objects) and makes the inventory equal to it: every object is
judged the way an admission would judge a CREATE of it — stored results decide, missing scans
are queued, nothing waits — and the whole inventory is replaced in one transaction, so a
failed import changes nothing. It prints what was added, updated and removed.

Bounded input: the file is read up to MAX_IMPORT_BYTES, objects up to MAX_OBJECTS; anything
else is a clear error and the inventory stays as it was.
"""
from __future__ import annotations

import json
import sys
import time

from ..admission import inventory as inv
from ..admission.budget import Budget
from ..admission.decide import decide
from ..admission.workload import POD_SPEC_PATHS
from .views import policy_report_list, rows

MAX_IMPORT_BYTES = 256 << 20
MAX_OBJECTS = 100_000
GATED = frozenset(kind for _, kind in POD_SPEC_PATHS)
GROUPS = {kind: (group, "v1", kind.lower() + "s") for group, kind in POD_SPEC_PATHS}


class ImportError_(ValueError):
    """The import file cannot be used; nothing was changed."""


def objects_of(text: bytes) -> list[dict]:
    """The objects of `kubectl get … -o json` output (a List) or a single object."""
    if len(text) > MAX_IMPORT_BYTES:
        raise ImportError_(f"the import is larger than {MAX_IMPORT_BYTES} bytes")
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ImportError_(f"not JSON: {e}") from e
    items = doc.get("items") if isinstance(doc, dict) and "items" in doc else [doc]
    if not isinstance(items, list):
        raise ImportError_("'items' is not a list")
    if len(items) > MAX_OBJECTS:
        raise ImportError_(f"more than {MAX_OBJECTS} objects")
    out = []
    for i, obj in enumerate(items):
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
            raise ImportError_(f"items[{i}] is not a Kubernetes object")
        if obj.get("kind") in GATED:
            out.append(obj)
    return out


def review_of(obj: dict) -> dict:
    """The CREATE request kube-apiserver would have sent for this object."""
    kind = obj["kind"]
    group, version, resource = GROUPS.get(kind, ("", "v1", kind.lower() + "s"))
    meta = obj["metadata"]
    return {"uid": f"import-{meta.get('uid') or meta.get('name')}",
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "namespace": meta.get("namespace") or "", "name": meta.get("name") or "",
            "operation": "CREATE", "userInfo": {"username": "scapgate-inventory-import"},
            "object": obj, "oldObject": None, "dryRun": False}


def judge_all(objects: list[dict], deps, now: float) -> list[tuple[str, str, str, str]]:
    """The entry each object would leave at admission (no waiting for scans)."""
    entries = {}
    for obj in objects:
        req = review_of(obj)
        decision = decide(req, deps, Budget(0.0))
        # what exists is recorded whatever its verdict: the inventory says what runs
        decision.response = {**decision.response, "allowed": True}
        found = inv.entry(req, decision, now)
        if found is not None:
            entries[found[0]] = found
    return sorted(entries.values())


def register(subparsers) -> None:
    p = subparsers.add_parser("inventory", help="what runs: list, or reconcile from kubectl")
    sub = p.add_subparsers(dest="inventory_cmd", required=True)
    ls = sub.add_parser("list", help="workloads the gate admitted, with their verdicts")
    ls.add_argument("--namespace")
    ls.add_argument("--verdict", help="pass, fail, pending, error, unsupported, stale-feed")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--state-dir")
    ls.add_argument("--store")
    ls.set_defaults(fn=cmd_list)
    rp = subparsers.add_parser("report", help="PolicyReports of what runs (kubectl apply "
                               "--server-side -f -)")
    rp.add_argument("--format", choices=["policyreport"], default="policyreport")
    rp.add_argument("--all", action="store_true", help="also pass and skip results")
    rp.add_argument("--namespace")
    rp.add_argument("--state-dir")
    rp.add_argument("--store")
    rp.set_defaults(fn=cmd_report)
    im = sub.add_parser("import", help="make the inventory equal to `kubectl get … -o json`")
    im.add_argument("file", help="the JSON file, or - for stdin")
    im.add_argument("--policy")
    im.add_argument("--state-dir")
    im.add_argument("--store")
    im.set_defaults(fn=cmd_import)


def _settings(args):
    from ..config import Settings
    return Settings.from_env(state_dir=args.state_dir, store=args.store,
                             policy=getattr(args, "policy", None))


def cmd_list(args) -> int:
    from ..store.backends import open_store
    settings = _settings(args)
    store = open_store(settings.store, settings.state_dir)
    try:
        found = [r for r in rows(store, args.namespace)
                 if not args.verdict or r.get("verdict") == args.verdict]
    finally:
        store.close()
    if args.json:
        print(json.dumps(found, indent=1))
        return 0
    print(f"{'NAMESPACE':<20} {'KIND':<12} {'NAME':<32} {'VERDICT':<11} {'PODS':>4}  IMAGES")
    for r in found:
        imgs = ", ".join(f"{i['image']}={i['state']}" for i in r.get("images", [])[:3])
        print(f"{r['namespace']:<20} {r['kind']:<12} {r['name']:<32} {r['verdict']:<11} "
              f"{r['replicas']:>4}  {imgs}")
    return 0


def cmd_import(args) -> int:
    from .app import create_app
    settings = _settings(args)
    try:
        raw = (sys.stdin.buffer.read(MAX_IMPORT_BYTES + 1) if args.file == "-"
               else open(args.file, "rb").read(MAX_IMPORT_BYTES + 1))
        objects = objects_of(raw)
    except (OSError, ImportError_) as e:
        print(f"scapgate inventory import: {e}; the inventory is unchanged", file=sys.stderr)
        return 2
    app = create_app(settings)
    deps = app.extensions["scapgate"]
    store = deps.service.store
    before = {k: json.loads(b) for k, b in store.inv_list()}
    entries = judge_all(objects, deps, time.time())
    added, updated, removed = store.inv_replace(entries)
    after = {e[0] for e in entries}
    for k in sorted(after - set(before)):
        print(f"added    {k}")
    for k in sorted(set(before) - after):
        print(f"removed  {k}")
    print(f"scapgate inventory import: {len(objects)} objects, {added} added, {updated} "
          f"updated, {removed} removed")
    return 0


def cmd_report(args) -> int:
    from ..store.backends import open_store
    settings = _settings(args)
    store = open_store(settings.store, settings.state_dir)
    try:
        print(json.dumps(policy_report_list(store, args.namespace, all_results=args.all),
                         indent=1))
    finally:
        store.close()
    return 0

