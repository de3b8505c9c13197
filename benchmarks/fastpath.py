"""Section 1: the fast path (every image already scanned: a cache hit) against a bare Flask app.

Both servers run at once under the same gunicorn settings and take turns (B S, S B, …) so
drift on the shared machine hits both alike. Load: wrk (closed loop) for saturation and the
50-client run; our paced generator (open loop, latency from the scheduled send time) for the
fixed offered load. After every scapgate run its decision log is read back to prove that each
decision was a cache hit, then emptied (a line is ~3.5 KB).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from . import bodies, images, loadgen, profiling, servers
from .common import REPO, Section, f, fr, log, median, ratio

KYVERNO_P95_MS, KYVERNO_P99_MS = 103.0, 182.0
# The last commit before the work being measured, served beside today's in section 1e for the
# before/after figures: dd6c7dc is the flat webhook/ before the one-package-per-stage layout
# (issue 12); 877b0a7 was the code before issue 8's fast path. SCAPGATE_BENCH_BEFORE overrides.
# It reads today's store, so it is only comparable while the scan key is the same: the key
# changed with per-product content (288ff0f), so by default no `before` runs now.
BEFORE_COMMIT = os.environ.get("SCAPGATE_BENCH_BEFORE", "")
BEFORE_WHAT = "the commit before the work being measured"


@dataclass
class Plan:
    sat_rounds: int = 3
    sat_s: float = 4.0
    sat_conns: int = 32
    wrk_threads: int = 2
    paced_rounds: int = 3
    paced_s: float = 5.0
    paced_conns: int = 16
    c50_rounds: int = 1
    c50_s: float = 5.0
    exp_s: float = 3.0
    profile_s: float = 8.0
    exp_paced_s: float = 4.0
    variants: tuple = ("control", "before", "nomemo", "nolog", "nometrics")
    exp_rounds: int = 4
    paced_variants: tuple = ("control", "before", "nomemo")
    paced_exp_rounds: int = 2


@dataclass
class Ctx:
    work: Path
    registry: object
    certs: Path
    policy: Path
    env: dict
    body_paths: dict = field(default_factory=dict)
    hits: dict = field(default_factory=lambda: {"hit": 0, "other": 0, "examples": []})


def _check_hits(srv: servers.Server, ctx: Ctx) -> None:
    """Every decision of the run must be a cache hit with a pass verdict; then empty the log."""
    for d in srv.decisions():
        if d.get("cache") == "hit" and d.get("verdict") == "pass":
            ctx.hits["hit"] += 1
        else:
            ctx.hits["other"] += 1
            if len(ctx.hits["examples"]) < 3:
                ctx.hits["examples"].append({k: d.get(k) for k in ("cache", "verdict", "reason")})
    srv.truncate_log()


def _wrk(srv, ctx, body, conns, seconds, plan) -> dict:
    cpu0 = srv.cpu()
    r = loadgen.closed_loop(srv.port, ctx.body_paths[body], connections=conns,
                            threads=plan.wrk_threads, seconds=seconds)
    r["cpu_ms_per_req"] = 1000 * (srv.cpu() - cpu0) / max(1, r["requests"])
    if srv.name != "baseline":
        _check_hits(srv, ctx)
    if r["errors"]:
        log(f"{srv.name} {body}: {r['errors']} wrk errors ({r['status_errors']} non-2xx)")
    return r


def run(ctx: Ctx, plan: Plan) -> list[Section]:
    reg = ctx.registry
    refs = images.synthetic(ctx.work / "oci-synthetic", reg, 5)
    for name, data in bodies.bodies(refs).items():
        path = ctx.work / f"{name}.json"
        path.write_bytes(data)
        ctx.body_paths[name] = str(path)
    sizes = {k: Path(p).stat().st_size for k, p in ctx.body_paths.items()}
    log("fast path: starting scapgate serve and the baseline")
    srv = servers.start_scapgate(ctx.work / "scapgate", ctx.certs, policy=ctx.policy, env=ctx.env)
    base = servers.start_gunicorn_app("baseline", "benchmarks.baseline_app:create_app()",
                                      ctx.work / "baseline", ctx.certs)
    try:
        for name in ctx.body_paths:
            servers.warm(srv, Path(ctx.body_paths[name]).read_bytes())
        # touch every worker and thread of both servers before measuring
        for s in (base, srv):
            for name in ctx.body_paths:
                _wrk(s, ctx, name, plan.sat_conns, 2, plan)
        ctx.hits.update(hit=0, other=0)
        sat = _saturation(srv, base, ctx, plan)
        paced = _paced(srv, base, ctx, plan, sat)
        c50 = _c50(srv, base, ctx, plan)
        prof = _profile(srv, ctx, plan)
        exp = _experiments(srv, ctx, plan)
    finally:
        srv.stop()
        base.stop()
    return _sections(sat, paced, c50, prof, exp, ctx, plan, sizes)


def _saturation(srv, base, ctx, plan) -> dict:
    out = {b: {"scapgate": [], "baseline": []} for b in ctx.body_paths}
    for rnd in range(plan.sat_rounds):
        for body in ctx.body_paths:
            order = (base, srv) if rnd % 2 == 0 else (srv, base)
            for s in order:
                r = _wrk(s, ctx, body, plan.sat_conns, plan.sat_s, plan)
                out[body][s.name].append(r)
                log(f"saturation {body} {s.name}: {r['rps']:.0f} req/s")
    return out


def _paced(srv, base, ctx, plan, sat) -> dict:
    out = {}
    for body in ctx.body_paths:
        cap = median([r["rps"] for r in sat[body]["baseline"]])
        rate = 0.25 * cap
        out[body] = {"rate": rate, "scapgate": [], "baseline": []}
        for rnd in range(plan.paced_rounds):
            order = (base, srv) if rnd % 2 == 0 else (srv, base)
            for s in order:
                r = loadgen.paced(s.port, ctx.body_paths[body], rate=rate, seconds=plan.paced_s,
                                  connections=plan.paced_conns, ca=s.ca)
                if s.name != "baseline":
                    _check_hits(s, ctx)
                out[body][s.name].append(r)
                log(f"paced {body} {s.name} @{rate:.0f}/s: p50 {r['p50_ms']:.1f} ms "
                    f"p99 {r['p99_ms']:.1f} ms (achieved {r['achieved_rps']:.0f}/s)")
    return out


def _c50(srv, base, ctx, plan) -> dict:
    out = {b: {"scapgate": [], "baseline": []} for b in ctx.body_paths}
    for rnd in range(plan.c50_rounds):
        for body in ctx.body_paths:
            order = (base, srv) if rnd % 2 == 0 else (srv, base)
            for s in order:
                r = _wrk(s, ctx, body, 50, plan.c50_s, plan)
                out[body][s.name].append(r)
                log(f"50 clients {body} {s.name}: p95 {r['p95_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms")
    return out


def _profile(srv, ctx, plan) -> dict:
    """py-spy (--gil: the thread holding the GIL, i.e. where the CPU goes) on both gunicorn
    workers during a saturation run with the 5-container pod."""
    if not profiling.py_spy():
        return {}
    pids = srv.http_workers()
    handles = profiling.record(pids, plan.profile_s, ctx.work, gil=True)
    r = loadgen.closed_loop(srv.port, ctx.body_paths["pod5"], connections=plan.sat_conns,
                            threads=plan.wrk_threads, seconds=plan.profile_s + 2)
    files = profiling.wait_all(handles, plan.profile_s + 30)
    srv.truncate_log()
    summ = profiling.summarise(files)
    log(f"fast path profile: {summ['samples']} samples")
    return {"summary": summ, "rps_under_profiler": r["rps"]}


def _before_tree(dest: Path) -> Path | None:
    """The webhook package (and the policies/content it finds beside itself) at BEFORE_COMMIT."""
    import subprocess
    if (dest / "webhook").is_dir():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE_COMMIT, "webhook",
                                  "policies", "content"], capture_output=True, timeout=60,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return dest


def _experiments(srv, ctx, plan) -> dict:
    """Each candidate improvement as a variant app, all served at once beside `control` (the
    unpatched app served the same way), measured in rotating order so drift hits all alike."""
    out: dict = {}
    state = ctx.work / "scapgate" / "state"
    started = {}
    try:
        for variant in plan.variants:
            name = "v-" + variant.replace(",", "+")
            # own state dir (gunicorn control socket, metrics); scapgate's store, where every
            # result already is
            env = {**ctx.env, "SCAPGATE_BENCH_VARIANT": variant,
                   "SCAPGATE_POLICY": str(ctx.policy),
                   "SCAPGATE_STORE": f"sqlite:///{state / 'scapgate.db'}"}
            app, cwd = "benchmarks.variant_app:create_app()", None
            config = "python:webhook.serve.gunicorn_conf"
            if variant == "before":
                if not BEFORE_COMMIT:
                    log("SCAPGATE_BENCH_BEFORE is not set: the 'before' variant is skipped")
                    continue
                tree = _before_tree(ctx.work / "before")
                if tree is None:
                    log(f"no git history: the 'before' variant ({BEFORE_COMMIT}) is skipped")
                    continue
                # its own webhook package and gunicorn config come first on the path
                env["PYTHONPATH"], app, cwd = str(tree), "webhook:create_app()", tree
                env["SCAPGATE_POLICY"] = str(tree / "policies")   # in the format it reads
                config = "python:webhook.gunicorn_conf"     # that tree's flat layout
            vs = servers.start_gunicorn_app(name, app, ctx.work / "variants", ctx.certs,
                                            env=env, cwd=cwd, config=config)
            started[variant] = vs
            servers.warm(vs, Path(ctx.body_paths["pod5"]).read_bytes(), deadline_s=30)
            loadgen.closed_loop(vs.port, ctx.body_paths["pod5"], connections=plan.sat_conns,
                                threads=plan.wrk_threads, seconds=2)
            vs.truncate_log()
            out[variant] = {"rps": [], "cpu": [], "paced": []}
        names = list(started)
        for rnd in range(plan.exp_rounds):
            k = rnd % len(names)
            for variant in names[k:] + names[:k]:
                vs = started[variant]
                cpu0 = vs.cpu()
                r = loadgen.closed_loop(vs.port, ctx.body_paths["pod5"],
                                        connections=plan.sat_conns, threads=plan.wrk_threads,
                                        seconds=plan.exp_s)
                cpu = 1000 * (vs.cpu() - cpu0) / max(1, r["requests"])
                vs.truncate_log()
                out[variant]["rps"].append(r["rps"])
                out[variant]["cpu"].append(cpu)
                log(f"variant {variant}: {r['rps']:.0f} req/s, {cpu:.2f} CPU ms/review")
        # p50/p99 at half the control's capacity: loaded, but no variant is overloaded
        rate = 0.5 * median(out["control"]["rps"])
        paced = [v for v in plan.paced_variants if v in started]
        for rnd in range(plan.paced_exp_rounds):
            k = rnd % len(paced)
            for variant in paced[k:] + paced[:k]:
                vs = started[variant]
                r = loadgen.paced(vs.port, ctx.body_paths["pod5"], rate=rate,
                                  seconds=plan.exp_paced_s, connections=plan.paced_conns, ca=vs.ca)
                vs.truncate_log()
                out[variant]["paced"].append(r)
                log(f"variant {variant} @{rate:.0f}/s: p50 {r['p50_ms']:.1f} ms "
                    f"p99 {r['p99_ms']:.1f} ms")
        out["_rate"] = rate
    finally:
        for vs in started.values():
            vs.stop()
    return out


# -- report -----------------------------------------------------------------------------------

def _sections(sat, paced, c50, prof, exp, ctx, plan, sizes) -> list[Section]:  # noqa: C901
    secs = []
    a = Section("1a. Fast path, saturation throughput (cache hit)",
                intro=(f"wrk -t{plan.wrk_threads} -c{plan.sat_conns} -d{plan.sat_s:g}s, keep-alive "
                       f"TLS, {plan.sat_rounds} interleaved rounds per body; median of rounds. "
                       "scapgate = `scapgate serve` as `make run` starts it (2 gunicorn "
                       "workers × 16 threads of webhook/serve/gworker.py's gthread subclass, TLS, "
                       "policies/, scan workers); baseline = bare Flask app (parse the review, "
                       "answer allowed) under the same gunicorn config. Bodies: " +
                       ", ".join(f"{k} {v:,} bytes" for k, v in sizes.items()) + ". The load "
                       "repeats one object, as a ReplicaSet's pods do, so scapgate's decision "
                       "memo (1 s) answers most reviews; 1e measures today's code without it "
                       "(`nomemo`)."),
                headers=["body", "scapgate req/s", "baseline req/s", "ratio", "target ≥ 0.8",
                         "rounds scapgate", "rounds baseline", "CPU ms/review scapgate",
                         "CPU ms/review baseline", "baseline/scapgate CPU"])
    for body, d in sat.items():
        s = median([r["rps"] for r in d["scapgate"]])
        b = median([r["rps"] for r in d["baseline"]])
        q = ratio(s, b)
        sc = median([r["cpu_ms_per_req"] for r in d["scapgate"]])
        bc = median([r["cpu_ms_per_req"] for r in d["baseline"]])
        a.rows.append([body, f(s, 0), f(b, 0), fr(q), "met" if q >= 0.8 else "NOT met",
                       " / ".join(f(r["rps"], 0) for r in d["scapgate"]),
                       " / ".join(f(r["rps"], 0) for r in d["baseline"]), f(sc, 2), f(bc, 2),
                       fr(ratio(bc, sc))])
        a.target(f"1a saturation ratio ({body})", q >= 0.8, f"{fr(q)} ({f(s, 0)} vs {f(b, 0)} req/s)")
    a.notes.append("CPU ms/review: CPU time of the server's gunicorn workers during the run ÷ "
                   "reviews answered. Their ratio is what the throughput ratio would be on a "
                   "machine where the server had the cores to itself; it drifts far less than "
                   "req/s with the other suites' load.")
    a.notes.append(f"Decisions checked in scapgate's log over all its measured runs: "
                   f"{ctx.hits['hit']:,} cache hits with verdict pass, {ctx.hits['other']} other"
                   + (f" (e.g. {ctx.hits['examples']})" if ctx.hits["other"] else "") + ".")
    a.raw = sat
    secs.append(a)

    b_ = Section("1b. Fast path at a fixed offered load of 25 % of the baseline's capacity",
                 intro=(f"Open loop, wrk2 style (benchmarks/loadgen.py): {plan.paced_conns} "
                        f"keep-alive TLS connections, requests scheduled at a fixed rate, "
                        "latency measured from each request's scheduled send time (no "
                        f"coordinated omission); {plan.paced_s:g} s after 1 s warm-up, "
                        f"{plan.paced_rounds} interleaved rounds; median of rounds."),
                 headers=["body", "offered req/s", "= scapgate's capacity ×", "p50 scapgate ms", "p50 baseline ms",
                          "p50 ratio", "p99 scapgate ms", "p99 baseline ms", "p99 ratio",
                          "target ≤ 1.5"])
    for body, d in paced.items():
        s50 = median([r["p50_ms"] for r in d["scapgate"]])
        b50 = median([r["p50_ms"] for r in d["baseline"]])
        s99 = median([r["p99_ms"] for r in d["scapgate"]])
        b99 = median([r["p99_ms"] for r in d["baseline"]])
        q50, q99 = ratio(s50, b50), ratio(s99, b99)
        met = q50 <= 1.5 and q99 <= 1.5
        cap_s = median([r["rps"] for r in sat[body]["scapgate"]])
        b_.rows.append([body, f(d["rate"], 0), fr(ratio(d["rate"], cap_s)), f(s50, 2), f(b50, 2), fr(q50), f(s99, 2),
                        f(b99, 2), fr(q99), "met" if met else "NOT met"])
        b_.target(f"1b p50 ratio ({body})", q50 <= 1.5, f"{fr(q50)} ({f(s50, 2)} vs {f(b50, 2)} ms)")
        b_.target(f"1b p99 ratio ({body})", q99 <= 1.5, f"{fr(q99)} ({f(s99, 2)} vs {f(b99, 2)} ms)")
        errs = sum(r["errors"] + r["bad"] for side in ("scapgate", "baseline") for r in d[side])
        if errs:
            b_.notes.append(f"{body}: {errs} failed or non-allowed answers during the paced runs.")
    b_.raw = paced
    secs.append(b_)

    c = Section("1c. 50 concurrent clients, closed loop (as Kyverno's load test)",
                intro=(f"wrk -t{plan.wrk_threads} -c50 -d{plan.c50_s:g}s, {plan.c50_rounds} "
                       "interleaved rounds; median of rounds. Kyverno's published figures "
                       "(one replica, 50 clients): p95 103 ms, p99 182 ms — a different "
                       "machine and policy set, so only an order-of-magnitude reference."),
                headers=["body", "scapgate p95 ms", "scapgate p99 ms", "scapgate req/s",
                         "baseline p95 ms", "baseline p99 ms", "baseline req/s",
                         "p95 / Kyverno 103", "p99 / Kyverno 182", "p99 vs baseline"])
    for body, d in c50.items():
        s95 = median([r["p95_ms"] for r in d["scapgate"]])
        s99 = median([r["p99_ms"] for r in d["scapgate"]])
        b95 = median([r["p95_ms"] for r in d["baseline"]])
        b99 = median([r["p99_ms"] for r in d["baseline"]])
        c.rows.append([body, f(s95, 1), f(s99, 1),
                       f(median([r["rps"] for r in d["scapgate"]]), 0), f(b95, 1), f(b99, 1),
                       f(median([r["rps"] for r in d["baseline"]]), 0),
                       fr(s95 / KYVERNO_P95_MS), fr(s99 / KYVERNO_P99_MS), fr(ratio(s99, b99))])
        c.target(f"1c p95 under Kyverno's 103 ms ({body})", s95 <= KYVERNO_P95_MS, f"{f(s95, 1)} ms")
        c.target(f"1c p99 under Kyverno's 182 ms ({body})", s99 <= KYVERNO_P99_MS, f"{f(s99, 1)} ms")
    c.raw = c50
    secs.append(c)

    p = Section("1d. Where the fast path's time goes (py-spy --gil, both gunicorn workers, "
                "saturation, 5-container pod)")
    if prof:
        summ = prof["summary"]
        p.intro = (f"{summ['samples']:,} samples of the thread holding the GIL "
                   f"({plan.profile_s:g} s at {f(prof['rps_under_profiler'], 0)} req/s under "
                   "the profiler). Inclusive share of the samples per function; the request "
                   "handler's own parts first.")
        p.headers = ["function (inclusive)", "% of GIL samples"]
        wanted = ("webhook/", "json/", "logging/__init__.py:Logger.info",
                  "logging/__init__.py:StreamHandler", "flask/app.py:Flask.wsgi_app",
                  "gunicorn/workers/gthread.py:ThreadWorker.handle", "prometheus_client/",
                  "ssl.py:SSLSocket.send", "ssl.py:SSLSocket.recv", "concurrent/futures/")
        for name, share in profiling.top(summ, "inclusive", 400):
            if name.startswith(wanted):
                p.rows.append([name, f(share, 1)])
            if len(p.rows) >= 30:
                break
        p.extra_tables.append(("Self time (top 15)", ["function (self)", "% of GIL samples"],
                               [[n, f(s, 1)] for n, s in profiling.top(summ, "self", 15)]))
        p.raw = {"samples": summ["samples"], "inclusive": summ["inclusive"].most_common(80),
                 "self": summ["self"].most_common(40)}
    else:
        p.intro = "py-spy is not installed (requirements-dev.txt): no profile."
    secs.append(p)

    before = (f"`before` is the code of commit {BEFORE_COMMIT} (git archive: its own webhook "
              "package, gunicorn config and policies) reading the same store; " if BEFORE_COMMIT
              else "no `before` ran (SCAPGATE_BENCH_BEFORE names a commit whose scan keys "
                   "today's store holds); ")
    e = Section("1e. What is left: the same store served by variants of today's code"
                + (f" and by the code before this work ({BEFORE_COMMIT})" if BEFORE_COMMIT
                   else ""),
                intro=("`control` is today's scapgate (create_app() under today's gunicorn "
                       "config); " + before + "the other variants are today's app with one function "
                       "replaced at its seam (benchmarks/variant_app.py). wrk "
                       f"-c{plan.sat_conns}, 5-container pod, {plan.exp_rounds} × "
                       f"{plan.exp_s:g} s, rotating order; ratios against `control`, measured "
                       "in the same run."),
                headers=["variant", "CPU ms / review", "vs control", "rounds (CPU ms)",
                         "req/s", "vs control", f"p50 ms @ {f(exp.get('_rate', 0), 0)}/s",
                         "p99 ms", "p99 vs control"])
    ctl = median(exp["control"]["rps"]) if "control" in exp else float("nan")
    ctl_cpu = median(exp["control"]["cpu"]) if "control" in exp else float("nan")
    ctl99 = median([r["p99_ms"] for r in exp["control"]["paced"]]) if "control" in exp else float("nan")
    for variant, d in exp.items():
        if variant.startswith("_"):
            continue
        m = median(d["rps"])
        p50 = median([r["p50_ms"] for r in d["paced"]]) if d["paced"] else float("nan")
        p99 = median([r["p99_ms"] for r in d["paced"]]) if d["paced"] else float("nan")
        c = median(d["cpu"])
        e.rows.append([variant, f(c, 2), fr(ratio(c, ctl_cpu)),
                       " / ".join(f(x, 2) for x in d["cpu"]), f(m, 0),
                       fr(ratio(m, ctl)), f(p50, 2) if d["paced"] else "",
                       f(p99, 2) if d["paced"] else "", fr(ratio(p99, ctl99)) if d["paced"] else ""])
    e.notes.append((f"Variants: before = the code of {BEFORE_COMMIT} ({BEFORE_WHAT}); "
                    if BEFORE_COMMIT else "Variants: ") +
                   "nomemo = today's code without the decision memo (every review decided "
                   "afresh, as when every pod differs: the load here repeats one pod); nolog = "
                   "no decision log line and nometrics = no Prometheus counting (upper bounds "
                   "of what each still costs). "
                   "p50/p99: open loop (benchmarks/loadgen.py, pod5) at half the control's "
                   "saturation throughput.")
    e.raw = exp
    secs.append(e)
    return secs
