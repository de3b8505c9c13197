"""Section 4: RSS of a process holding N cached results in scapgate's L1 (ScanService's TTLCache).

Each measurement runs in a fresh child process (`python -m benchmarks.memory --child MODE`):
imports done and the service built, then `empty` stops there (the baseline), `stock` stores N
results through the service's own path (ScanResult.from_json of a store body → _remember), as
an admission process fills its L1 from the shared store. The bodies are the realistic result
of a real scan (44 rules: 18 applicable + 26 notapplicable; notselected dropped), each with its
own digest, image, timings and scanned_at. `full` puts the parsed ScanResult in the L1 as it
is (what the L1 held before it kept slim results), `decidable` prototypes a further step: an
entry with only what a decision reads.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

from .common import PY, REPO, rss_mb


def _bodies(template: dict, n: int):
    """n store bodies: the template with its own digest, image, arf path, timings and time."""
    t = dict(template)
    t["key"] = {**t["key"], "digest": "@@DIGEST@@"}
    t["image"] = "registry.example.com/team-@@TEAM@@/app-@@I@@:1@@@DIGEST@@"
    t["arf_path"] = "/var/lib/scapgate/reports/@@KID@@.arf.xml.gz"
    t["timings"] = {k: "@@T%d@@" % j for j, k in enumerate(t["timings"])}
    t["scanned_at"] = "@@AT@@"
    text = json.dumps(t, separators=(",", ":"))
    for j in range(len(template["timings"])):
        text = text.replace(f'"@@T{j}@@"', f"%(t{j})s")
    text = text.replace('"@@AT@@"', "%(at)s")
    for name in ("DIGEST", "TEAM", "I", "KID"):
        text = text.replace(f"@@{name}@@", f"%({name.lower()})s")
    times = list(template["timings"].values())
    for i in range(n):
        h = hashlib.sha256(f"bench-{i}".encode()).hexdigest()
        vals = {"digest": "sha256:" + h, "team": i % 50, "i": i, "kid": h[::-1],
                "at": template["scanned_at"] + i}
        vals.update({f"t{j}": round(v * (1 + (i % 7) / 100), 3) for j, v in enumerate(times)})
        yield text % vals


class Decidable:
    """The decidable L1 entry prototype: only what a decision reads (policy.evaluate: state, error,
    permanent, score, failing rules, OVAL results; admission: scanned_at, the scan's duration
    for the retry estimate; the report route: arf_path). The full ScanResult stays in L2."""

    __slots__ = ("state", "error", "permanent", "score", "failed", "oval", "scanned_at",
                 "took_s", "arf_path")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


def _slim_from_json():
    """Parse a store body into a Decidable, sharing rule results between entries."""
    from webhook.scan.results import OvalResult, RuleResult
    rules: dict = {}
    empty: tuple = ()

    def from_json(text):
        d = json.loads(text)
        failed = tuple(rules.setdefault(tuple(r.values()), RuleResult(**r))
                       for r in d["rules"] if r["result"] not in ("pass", "notapplicable",
                                                                  "notchecked", "informational",
                                                                  "fixed"))
        return Decidable(state=d["state"], error=d["error"] or "", permanent=d["permanent"],
                         score=d["score"], failed=failed or empty,
                         oval=tuple(OvalResult(**{**o, "references": tuple(o.get("references", ()))})
                                    for o in d.get("oval", [])) or empty,
                         scanned_at=d["scanned_at"], took_s=sum(d["timings"].values()),
                         arf_path=d["arf_path"]), d["key"]
    return from_json


def child(mode: str, n: int, template_path: str) -> dict:
    from webhook.scan.results import ScanResult
    from webhook.store.scans import ScanService
    from webhook.store.sqlite import SQLiteStore
    with open(template_path) as fh:
        template = json.load(fh)
    tmp = tempfile.mkdtemp(prefix="scapgate-bench-mem-")
    service = ScanService(SQLiteStore(os.path.join(tmp, "scapgate.db")), l1_size=max(n, 1),
                          l1_ttl_s=3600)
    t0 = time.perf_counter()
    if mode == "full":
        for body in _bodies(template, n):
            res = ScanResult.from_json(body)
            with service._lock:                # the whole result, as parsed
                service._l1[res.key.id()] = res
    elif mode == "decidable":
        from webhook.scan.results import ScanKey
        slim = _slim_from_json()
        for body in _bodies(template, n):
            entry, key = slim(body)
            with service._lock:                # what _remember does, with the slim value
                service._l1[ScanKey(**key).id()] = entry
    elif mode == "stock":
        for body in _bodies(template, n):
            res = ScanResult.from_json(body)
            service._remember(res.key.id(), res)
    fill_s = time.perf_counter() - t0
    gc.collect()
    out = {"mode": mode, "n": len(service._l1), "rss_mb": rss_mb(), "fill_s": fill_s,
           "body_bytes": len(next(_bodies(template, 1)))}
    os.rmdir(tmp) if not os.listdir(tmp) else None
    return out


MODES = ("empty", "stock", "full", "decidable")


def measure(template_path: str, n: int, modes=MODES) -> dict:
    """One child per mode, run side by side (each measures only its own RSS)."""
    procs = {mode: subprocess.Popen([PY, "-m", "benchmarks.memory", "--child", mode, "--n",
                                     str(n), "--template", template_path],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    cwd=REPO) for mode in modes}
    out = {}
    for mode, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"memory child {mode} failed: {stderr[-1500:]}")
        out[mode] = json.loads(stdout.strip().splitlines()[-1])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.memory")
    p.add_argument("--child", choices=MODES, required=True)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--template", required=True, help="a ScanResult JSON body from the store")
    args = p.parse_args(argv)
    print(json.dumps(child(args.child, min(args.n, 1_000_000), args.template)))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def run(ctx, plan):
    """Section 4 from a real ScanResult body (the shared-layer section's scan, else any store
    under the work directory)."""
    import glob
    import sqlite3

    from .common import Section, f, fr, log, ratio
    body = getattr(ctx, "result_template", None)
    if not body:
        for db in sorted(glob.glob(str(ctx.work / "**" / "scapgate.db"), recursive=True)):
            row = sqlite3.connect(db).execute(
                "SELECT body FROM results WHERE body LIKE '%\"state\":\"done\"%' LIMIT 1").fetchone()
            if row:
                body = row[0]
                break
    if not body:                        # section run alone: scan a small image for one
        from . import images, scan
        ref = images.synthetic(ctx.work / "oci-memory", ctx.registry, 1, repo="bench/memory")[0]
        body = scan.run_child(ctx.work / "memory-state", ctx.policy, [ref],
                              ctx.registry.host)[0]["body"]
    path = ctx.work / "result-template.json"
    path.write_text(body)
    tmpl = json.loads(body)
    res = measure(str(path), plan.memory_n)
    empty, stock, full, slim = res["empty"], res["stock"], res["full"], res["decidable"]
    counts: dict = {}
    for r in tmpl["rules"]:
        counts[r["result"]] = counts.get(r["result"], 0) + 1
    s = Section(f"4. Memory: a process holding {plan.memory_n:,} cached results (L1)",
                intro=("Fresh child processes (benchmarks/memory.py): imports done and a "
                       "ScanService built; `empty` stops there (the baseline); `scapgate L1` "
                       "stores the results through ScanResult.from_json → ScanService._remember, "
                       "as an admission process fills its L1 from the store. Each result is a copy of "
                       "a real scan's (" + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
                       + f"; {empty['body_bytes']:,} bytes of JSON) with its own digest, image, "
                       "timings and time. `full`: the parsed ScanResult put in the L1 as it is "
                       "(what the L1 held before ScanResult.slim()); `decidable`: a prototype "
                       "of a further step, an entry with only what a decision reads (__slots__: "
                       "state, error, score, failing rules, OVAL, scanned_at, scan duration, ARF "
                       "path — no image string, ScanKey, os-release, tools or timings dict)."),
                headers=["process", "results", "RSS MB", "MB over empty", "bytes / result",
                         "ratio vs empty", "target < 200 MB"])
    for name, d in (("empty (baseline)", empty), ("scapgate L1 (ScanService._remember)", stock),
                    ("whole ScanResult per entry (before slim)", full),
                    ("decidable entry (prototype)", slim)):
        over = d["rss_mb"] - empty["rss_mb"]
        per = over * 1024 * 1024 / d["n"] if d["n"] else 0
        s.rows.append([name, f"{d['n']:,}", f(d["rss_mb"], 1), f(over, 1),
                       f(per, 0) if d["n"] else "—", fr(ratio(d["rss_mb"], empty["rss_mb"])),
                       ("met" if d["rss_mb"] < 200 else "NOT met") if d["n"] else ""])
    s.target(f"4 RSS with {plan.memory_n:,} results < 200 MB", stock["rss_mb"] < 200,
             f"{f(stock['rss_mb'], 0)} MB (empty {f(empty['rss_mb'], 0)} MB)")
    s.notes.append(f"Filling took {f(stock['fill_s'], 1)} s (scapgate), {f(full['fill_s'], 1)} s "
                   f"(whole) and {f(slim['fill_s'], 1)} s (decidable) in the child processes, "
                   "run side by side.")
    s.raw = res
    log(f"memory: empty {empty['rss_mb']:.0f} MB, stock {stock['rss_mb']:.0f} MB, "
        f"whole {full['rss_mb']:.0f} MB, decidable {slim['rss_mb']:.0f} MB")
    return [s]
