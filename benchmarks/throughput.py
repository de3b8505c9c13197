"""Section 5: distinct images through the scan workers, against one at a time.

Real `scapgate worker` processes (`python -m webhook worker --concurrency 1`, as
`scapgate serve` starts them) claim jobs from a SQLite store that this process fills through
ScanService.submit, as admissions do. One at a time = one worker process; the pool = the
default number of worker processes (one per core). Phases alternate one-at-a-time, pool,
one-at-a-time, on one state directory whose OCI cache already holds the shared base layer, so
every image is "cached base + one new layer" in every phase.
"""
from __future__ import annotations

import os
import time

from .common import PY, Proc, Section, f, fr, log, median, ratio


def _worker_env(ctx, state) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SCAPGATE_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(ctx.env)
    env["SCAPGATE_STATE_DIR"] = str(state)
    return env


def _phase(ctx, state, service, jobs, processes: int, label: str, deadline_s: float) -> dict:
    workers = [Proc([PY, "-m", "webhook", "worker", "--concurrency", "1", "--state-dir",
                     str(state), "--grace-s", "5"], env=_worker_env(ctx, state),
                    log_path=ctx.work / f"worker-{label}-{i}.log") for i in range(processes)]
    try:
        time.sleep(1.5)                       # let them import and reach their poll loop
        for w in workers:
            if not w.alive():
                raise RuntimeError(f"scan worker exited: {w.tail()}")
        t0 = time.perf_counter()
        for job in jobs:
            service.submit(job)
        kids = [j.key.id() for j in jobs]
        done: dict = {}
        while len(done) < len(kids):
            if time.perf_counter() - t0 > deadline_s:
                raise RuntimeError(f"{label}: only {len(done)}/{len(kids)} scans after "
                                   f"{deadline_s:.0f} s")
            time.sleep(0.25)
            done.update(service.store.get_many([k for k in kids if k not in done]))
        took = time.perf_counter() - t0
    finally:
        for w in workers:
            w.stop(timeout=20)
    from webhook.scan.results import ScanResult
    results = [ScanResult.from_json(b) for b in done.values()]
    bad = [r.error for r in results if r.state != "done"]
    per_scan = [sum(r.timings.values()) for r in results if r.state == "done"]
    log(f"throughput {label}: {len(jobs)} images in {took:.1f} s with {processes} worker(s)")
    return {"images": len(jobs), "seconds": took, "processes": processes,
            "per_scan_s": median(per_scan), "errors": bad[:3], "n_errors": len(bad)}


def run(ctx, plan) -> list[Section]:
    from webhook import policy as policy_mod
    from webhook.config import Settings
    from webhook.scan import engine
    from webhook.store.backends import open_store
    from webhook.store.scans import Job, ScanService

    from . import images
    reg = ctx.registry
    good = images.debootstrap("good")
    base = images.base_layer(good)
    pool_n = plan.pool_images
    seq_n = plan.seq_images
    names = ["warm"] + [f"seq{i:02d}" for i in range(seq_n)] + [f"pool{i:02d}" for i in range(pool_n)]
    built = images.derived(ctx.work / "oci-throughput", reg, base, names, repo="bench/many")
    state = ctx.work / "throughput-state"
    settings = Settings.from_env(state_dir=str(state))
    pipeline = engine.build_pipeline(settings)
    content = policy_mod.load_set(str(ctx.policy)).policies[0].content()
    service = ScanService(open_store("", str(state)), queue_limit=1000)

    def jobs(prefix):
        out = []
        for n in names:
            if n.startswith(prefix):
                ref, digest = built[n]
                pinned = f"{ref.rsplit(':', 1)[0]}@{digest}"
                out.append(Job(pipeline.key(digest, content), image=pinned, content=content))
        return out

    # warm the OCI cache with the shared base layer (not measured)
    _phase(ctx, state, service, jobs("warm"), 1, "warm-up", 300)
    seq_jobs = jobs("seq")
    half = max(1, len(seq_jobs) // 2)
    phases = {"one": [], "pool": None}
    phases["one"].append(_phase(ctx, state, service, seq_jobs[:half], 1, "one-at-a-time-1", 600))
    procs = plan.pool_processes or os.cpu_count() or 2
    phases["pool"] = _phase(ctx, state, service, jobs("pool"), procs, "pool", 900)
    if seq_jobs[half:]:
        phases["one"].append(_phase(ctx, state, service, seq_jobs[half:], 1, "one-at-a-time-2",
                                    600))
    service.close()
    one_imgs = sum(p["images"] for p in phases["one"])
    one_secs = sum(p["seconds"] for p in phases["one"])
    one_rate = 60.0 * one_imgs / one_secs
    pool = phases["pool"]
    pool_rate = 60.0 * pool["images"] / pool["seconds"]
    s = Section("5. Throughput: distinct images through the scan workers",
                intro=(f"{pool['images']} distinct images (debootstrap base layer + one own "
                       f"layer each) through {procs} `scapgate worker` processes (one per "
                       f"core, as `scapgate serve` starts them) vs {one_imgs} other such images "
                       "through one worker, one at a time, measured before and after the pool "
                       "run. Time from the first submit to the last stored result."),
                headers=["", "images", "seconds", "images / minute", "median scan s",
                         "ratio vs one at a time"])
    s.rows.append(["one at a time (1 worker)", str(one_imgs), f(one_secs, 1), f(one_rate, 1),
                   f(median([p["per_scan_s"] for p in phases["one"]]), 2), "1.00"])
    s.rows.append([f"pool ({procs} workers)", str(pool["images"]), f(pool["seconds"], 1),
                   f(pool_rate, 1), f(pool["per_scan_s"], 2), fr(ratio(pool_rate, one_rate))])
    errs = sum(p["n_errors"] for p in phases["one"]) + pool["n_errors"]
    if errs:
        s.notes.append(f"{errs} scans ended in an error: "
                       f"{[e for p in phases['one'] + [pool] for e in p['errors']][:3]}")
    s.notes.append(f"With {os.cpu_count()} cores the ideal speed-up is {procs}×; each scan is "
                   "CPU-bound (gzip, umoci, oscap), so the per-scan time grows when scans share "
                   "the cores.")
    s.raw = phases
    return [s]
