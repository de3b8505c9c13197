"""The inventory judged again when what decides a verdict changes (see InventoryJudge)."""
from __future__ import annotations

import json
import time


class InventoryJudge:
    """A thread in each webhook process that judges the inventory again when what decides a
    verdict changed: the policy set (a reload), the content it names, the day (waivers expire
    and results pass maxScanAge by date), and every `bucket_s` (CVE evaluations of a new feed
    land over minutes). It looks every `interval_s`; a shared counter keyed by that state lets
    one process of one replica do each pass (admission.inventory.rejudge)."""

    def __init__(self, store, deps, *, interval_s: float = 30.0, bucket_s: float = 600.0,
                 clock=time.time):
        self.store, self.deps = store, deps
        self.interval_s, self.bucket_s, self.clock = interval_s, bucket_s, clock
        self.last: dict = {}

    def state(self, now: float) -> dict:
        pset = self.deps.policies()
        contents = []
        for p in pset.policies:
            try:
                contents.append(p.content().digest)
            except Exception:                  # unusable content: judged as error
                contents.append("error")
        return {"policy": [p.sha256 for p in pset.policies], "content": contents,
                "date": time.strftime("%Y-%m-%d", time.gmtime(now)),
                "bucket": int(now // self.bucket_s)}

    def tick(self):
        from ..admission import inventory as inv
        import hashlib
        now = self.clock()
        st = self.state(now)
        changed = [k for k in ("policy", "content", "date", "bucket")
                   if self.last.get(k) != st[k]]
        if not changed:
            return None
        trigger = "start" if not self.last else changed[0]
        self.last = st
        once = hashlib.sha256(json.dumps(st, sort_keys=True).encode()).hexdigest()
        from . import logs
        return inv.rejudge(self.store, self.deps, trigger=trigger, now=now, once_key=once,
                           emit=logs.event)

    def run(self, stop) -> None:
        import logging
        log = logging.getLogger("scapgate.inventory")
        while not stop.wait(self.interval_s):
            try:
                out = self.tick()
                if out is not None and not out.skipped:
                    from . import metrics
                    metrics.observe_rejudge(out)
                    log.info("inventory.rejudged trigger=%s entries=%d images=%d changed=%d "
                             "pending=%d seconds=%.2f", out.trigger, out.entries, out.images,
                             len(out.changed), out.pending, out.seconds)
            except Exception:
                log.exception("inventory.rejudge_failed")

    def start(self):
        import threading
        stop = threading.Event()
        threading.Thread(target=self.run, args=(stop,), name="inventory-judge",
                         daemon=True).start()
        return stop
