"""The decision memo: one decision for the identical reviews of one ReplicaSet's pods."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import orjson

from .review import Request
from .workload import Container, annotations_of, node_arches

Decision = Any        # model.Decision; not imported, because model.Deps holds a Memo


class Memo:
    """Decisions reused for requests with the same inputs, for Deps.memo_s (1 s by default).

    A ReplicaSet scaling to 50 replicas sends 50 reviews that differ only in pod names and
    uids; they get one decision. The key is every input decide() reads — operation,
    subresource, kind, namespace, each container's path and image, the user and groups, the
    annotations (break-glass), the owner references (inherited break-glass) and today's date
    (waiver expiry) — plus the policy set in force (a reload is a new set). Only pass and fail
    decisions whose every result was a cache hit are kept: pending, error, stale and
    break-glass decisions are made afresh each time. Within memo_s a moved tag or a landed
    rescan is not seen — the tag resolver itself keeps answers 30 s."""

    SIZE = 4096

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._d: dict = {}
        self._lock = threading.Lock()

    def get(self, key, pset) -> Decision | None:
        with self._lock:
            hit = self._d.get(key)
        if hit is None:
            return None
        expires, kept_pset, decision = hit
        if kept_pset is not pset or self.clock() > expires:
            return None
        return decision

    def put(self, key, pset, decision: Decision, ttl_s: float) -> None:
        with self._lock:
            if len(self._d) >= self.SIZE:
                now = self.clock()
                self._d = {k: v for k, v in self._d.items() if v[0] >= now}
                if len(self._d) >= self.SIZE:
                    self._d.clear()
            self._d[key] = (self.clock() + ttl_s, pset, decision)


def memo_key(req: Request, containers: list[Container], namespace: str, today) -> tuple | None:
    """Every input of the decision (see Memo), or None when one cannot be keyed."""
    obj = req.get("object") if isinstance(req.get("object"), dict) else {}
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    kind = req["kind"]
    try:
        return (req["operation"], req.get("subResource") or "", kind.get("group") or "",
                kind.get("version") or "", kind.get("kind"), namespace, tuple(containers),
                orjson.dumps(req.get("userInfo"), option=orjson.OPT_SORT_KEYS),
                orjson.dumps(annotations_of(req), option=orjson.OPT_SORT_KEYS),
                orjson.dumps(meta.get("ownerReferences"), option=orjson.OPT_SORT_KEYS), today,
                node_arches(kind, obj))
    except (TypeError, ValueError, orjson.JSONEncodeError):
        return None


def reusable(decision: Decision) -> bool:
    return decision.verdict in ("pass", "fail") and all(
        c.cache == "hit" and c.resolve in ("hit", "miss") and not c.notes and c.glass is None
        for c in decision.checks if c.policy)
