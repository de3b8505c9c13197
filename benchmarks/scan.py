"""Sections 2 and 3: the cold scan against the same steps run as plain commands, and a scan of
an image that shares its base layer with one already scanned.

Cold scan: `scapgate scan` (a fresh state directory: nothing cached) against skopeo inspect,
skopeo copy, umoci raw unpack and oscap xccdf eval with the flags scapgate uses, on the same
debootstrap Debian 12 image from the same registry, in alternating order. Per stage and end
to end, plus one real first admission of the unscanned image through `scapgate serve`.

Shared layers: scans run in one long-lived process the way a `scapgate worker` runs them
(`python -m benchmarks.scan --child STATE REF…`), so what a worker keeps between scans is kept.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import PY, REPO, SCAPGATE, Section, f, fr, log, median, pct, ratio

STAGES = ("resolve", "fetch", "unpack", "identify", "prepare", "evaluate", "parse", "store")
IDENTIFY_CALLS = 200          # identify() calls timed directly on the unpacked good root
PROFILE = "xccdf_org.ssgproject.content_profile_standard"
_PROGRESS = re.compile(r"^scapgate: (\w+)\s+([\d.]+) s$")


def _children_cpu() -> float:
    """CPU seconds (user + system) of every descendant this process has waited for."""
    import resource
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _env(registry_host: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCAPGATE_")}
    env["SCAPGATE_INSECURE_REGISTRIES"] = registry_host
    return env


def scapgate_scan(ref: str, state: Path, policy: Path, registry_host: str, *,
                  memory: bool = False, timeout: float = 300, env: dict | None = None) -> dict:
    """One `scapgate scan` process, timed; its progress lines give the stage times. With
    memory=True the result also has "memory": peak RSS (MiB) of the process tree (see
    _run_watched)."""
    argv = [SCAPGATE, "scan", ref, "--policy", str(policy), "--state-dir", str(state),
            "--json"]
    t0, c0 = time.perf_counter(), _children_cpu()
    mem = None
    run_env = {**_env(registry_host), **(env or {})}
    if memory:
        proc, mem = _run_watched(argv, env=run_env, timeout=timeout)
    else:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=run_env, cwd=REPO)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - c0
    stages = {}
    for line in proc.stderr.splitlines():
        m = _PROGRESS.match(line.strip())
        if m:
            stages[m.group(1)] = float(m.group(2))
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"scapgate scan exited {proc.returncode}: {proc.stderr[-1200:]}")
    out = {"stages": stages, "total": wall, "cpu": cpu,
           "verdict": "allow" if proc.returncode == 0 else "deny"}
    try:
        out["unpack"] = json.loads(proc.stdout)["result"].get("unpack", {})
    except (ValueError, KeyError, TypeError):
        out["unpack"] = {}
    if mem is not None:
        out["memory"] = mem
    return out


def _vm_hwm_kb(pid: int) -> tuple[str, int] | None:
    """(command name, VmHWM kB) of a live process; None once it is gone."""
    try:
        with open(f"/proc/{pid}/comm") as fh:
            comm = fh.read().strip()
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return comm, int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _run_watched(argv: list[str], *, env: dict, timeout: float,
                 interval: float = 0.01) -> tuple[subprocess.CompletedProcess, dict]:
    """Run argv like subprocess.run(capture_output=True, text=True), and measure memory two
    ways: every `interval` s a thread reads VmHWM (the kernel's own peak-RSS high-water mark,
    so a sample misses only growth in the last `interval` of a process's life) of the process
    and all its descendants, kept per command name (scapgate's Python, skopeo, umoci, oscap);
    and os.wait4's ru_maxrss, exact: the peak RSS of the largest single process of the tree.
    A descendant's name is prefixed with its parent's unless the parent is scapgate itself
    ("oscap › common_main": a process oscap forks; the name comes from libopenscap).
    Forked children share pages with their parent, so peaks must not be added up."""
    import threading
    from .common import children
    last: dict[int, tuple[str, int]] = {}     # pid -> (name now, its VmHWM kB): exec renames
    done = threading.Event()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                             cwd=REPO, start_new_session=True)

        def sample():
            while not done.is_set():
                todo, seen = [(p.pid, "")], set()
                while todo:
                    pid, parent = todo.pop()
                    if pid in seen:
                        continue
                    seen.add(pid)
                    got = _vm_hwm_kb(pid)
                    if not got:
                        continue
                    name = ("scapgate (Python)" if pid == p.pid else
                            f"{parent} › {got[0]}" if parent else got[0])
                    was = last.get(pid)
                    last[pid] = (name, max(got[1], was[1]) if was and was[0] == name else got[1])
                    todo += [(c, "" if pid == p.pid else name) for c in children(pid)]
                done.wait(interval)

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        killer = threading.Timer(timeout, lambda: os.killpg(p.pid, 9))
        killer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            killer.cancel()
            done.set()
            watcher.join()
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        proc = subprocess.CompletedProcess(argv, p.returncode, out.read().decode(errors="replace"),
                                           err.read().decode(errors="replace"))
    peaks: dict[str, int] = {}
    for name, kb in last.values():
        if kb >= 1024:      # < 1 MiB: caught only between fork and exec (or at its exit)
            peaks[name] = max(peaks.get(name, 0), kb)
    mem = {"tree_max_mib": ru.ru_maxrss / 1024,
           "sampled_mib": {k: v / 1024 for k, v in sorted(peaks.items())},
           "interval_s": interval}
    return proc, mem


def identify_child(root: str, n: int) -> dict:
    """identify(root) n times in this (fresh) process: per-call seconds and what it found."""
    from webhook.scan.identify import identify
    times = []
    ident = None
    for _ in range(n):
        t = time.perf_counter()
        ident = identify(root)
        times.append(time.perf_counter() - t)
    return {"times": times, "product": ident.product if ident else "",
            "describe": ident.describe() if ident else ""}


def identify_direct(layout: str, tag: str, n: int = IDENTIFY_CALLS) -> dict:
    """Unpack a layout with umoci raw unpack (on tmpfs, as root: exact ownership) and time
    identify() on it n times in a child process (`python -m benchmarks.scan --identify`)."""
    from tests.builders import imagebuild
    scratch = tempfile.mkdtemp(prefix="identify-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK)
                               else None)
    try:
        root = os.path.join(scratch, "rootfs")
        imagebuild.umoci_unpack(layout, tag, root)
        proc = subprocess.run([PY, "-m", "benchmarks.scan", "--identify", root, "--rounds",
                               str(n)], capture_output=True, text=True, timeout=300, cwd=REPO)
        if proc.returncode:
            return {"error": proc.stderr[-800:]}
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def plain_scan(ref: str, work: Path, datastream: str, profile: str = PROFILE) -> dict:
    """The same steps as plain commands: skopeo inspect, skopeo copy, umoci raw unpack (on
    tmpfs, where scapgate unpacks), the container marker and neutral APT config, oscap."""
    scratch = Path(tempfile.mkdtemp(prefix="plain-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK)
                                    else None))
    stages = {}

    def timed(name, argv, env=None):
        t = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, timeout=300, env=env)
        stages[name] = time.perf_counter() - t
        return proc

    try:
        t0, c0 = time.perf_counter(), _children_cpu()
        raw = timed("resolve", ["skopeo", "inspect", "--raw", "--tls-verify=false",
                                f"docker://{ref}"]).stdout
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        repo = ref.rsplit(":", 1)[0]
        layout = work / "layout"
        p = timed("fetch", ["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                            f"docker://{repo}@{digest}", f"oci:{layout}:image"])
        assert p.returncode == 0, p.stderr[-500:]
        root = scratch / "rootfs"
        p = timed("unpack", ["umoci", "raw", "unpack", "--image", f"{layout}:image", str(root)])
        assert p.returncode == 0, p.stderr[-500:]
        (root / ".dockerenv").touch()
        (scratch / "apt-parts").mkdir()
        (scratch / "apt.conf").write_text(f'Dir::Etc::parts "{scratch}/apt-parts";\n'
                                          'Dir::Etc::main "/dev/null";\nAPT::Architecture "amd64";\n')
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OSCAP_PROBE_ROOT": str(root),
               "APT_CONFIG": str(scratch / "apt.conf")}
        p = timed("evaluate", ["oscap", "xccdf", "eval", "--skip-valid", "--profile", profile,
                               "--results-arf", str(scratch / "arf.xml"), datastream], env=env)
        assert p.returncode in (0, 2), p.stderr[-500:]
        total = time.perf_counter() - t0
        return {"stages": stages, "total": total, "cpu": _children_cpu() - c0, "rc": p.returncode}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# -- a worker-like process for the shared-layer scans ----------------------------------------

def child(state: str, policy: str, refs: list[str]) -> list[dict]:
    """Scan refs one after another in this process, as a scan worker does."""
    from webhook import policy as policy_mod
    from webhook.config import Settings
    from webhook.scan import engine
    settings = Settings.from_env(state_dir=state)
    pol = policy_mod.load_set(policy).policies[0]
    pipeline = engine.build_pipeline(settings)
    out = []
    for ref in refs:
        t0 = time.perf_counter()
        oc = engine.scan_image(ref, pol.content(), pipeline)
        verdict = policy_mod.evaluate(oc.result, pol, image=str(oc.ref), namespace="default",
                                      today=datetime.date.today())
        out.append({"ref": ref, "wall": time.perf_counter() - t0, "timings": oc.result.timings,
                    "state": oc.result.state, "verdict": verdict.state,
                    "error": oc.result.error, "body": oc.result.to_json()})
    return out


def run_child(state: Path, policy: Path, refs: list[str], registry_host: str) -> list[dict]:
    proc = subprocess.run([PY, "-m", "benchmarks.scan", "--child", str(state), str(policy), *refs],
                          capture_output=True, text=True, timeout=600, env=_env(registry_host),
                          cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"scan child failed: {proc.stderr[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- improvement experiments on the unpack stage --------------------------------------------

def walk_experiment(layout: str, tag: str, rounds: int) -> dict:
    """The unpack stage before and after this change, same layer, fresh check cache each time:
    the layer walk through the gzip module (before) and through isal's igzip (now), the
    header-only zlib prototype (benchmarks/walk_proto.py), umoci alone for scale, and the whole
    stage as it was (walk, then umoci) against unpack.unpack as it is (the walk beside umoci,
    then rootfs.confine). Interleaved; every walk must find the same files and bytes."""
    import gzip

    from webhook.scan import unpack as up

    from . import walk_proto
    limits = up.UnpackLimits()
    layers = up.layers_of(layout, tag)
    blobs = [up._blob_file(layout, x["digest"]) for x in layers]
    now_uncompressed = up._uncompressed

    def gzip_uncompressed(stack, path):
        fh = stack.enter_context(open(path, "rb"))
        magic = fh.read(2)
        fh.seek(0)
        if magic == b"\x1f\x8b":
            return stack.enter_context(gzip.GzipFile(fileobj=fh, mode="rb"))
        return now_uncompressed(stack, path)

    def walk_gzip():
        up._checked.clear()
        up._uncompressed = gzip_uncompressed
        try:
            st = up.check_limits(layout, tag, limits)
        finally:
            up._uncompressed = now_uncompressed
        return st.files, st.bytes

    def walk_isal():
        up._checked.clear()
        st = up.check_limits(layout, tag, limits)
        return st.files, st.bytes

    def header_walk():
        files = size = 0
        for b in blobs:
            n, s = walk_proto.walk(b)
            files, size = files + n, size + s
        return files, size

    def umoci(scratch):
        subprocess.run(["umoci", "raw", "unpack", "--image", f"{layout}:{tag}",
                        os.path.join(scratch, "rootfs")], check=True, capture_output=True,
                       timeout=300)

    def in_scratch(fn):
        def run():
            scratch = tempfile.mkdtemp(prefix="unpack-", dir="/dev/shm")
            try:
                return fn(scratch)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        return run

    def before(scratch):
        from webhook.scan.rootfs import confine
        walk_gzip()
        umoci(scratch)
        confine(os.path.join(scratch, "rootfs"), limits)

    def now(scratch):
        up._checked.clear()
        up.unpack(layout, tag, os.path.join(scratch, "rootfs"), limits)

    variants = {"walk, gzip module (before)": walk_gzip,
                "walk, isal igzip (now)": walk_isal,
                "header-only zlib walk (prototype)": header_walk,
                "umoci raw unpack alone (for scale)": in_scratch(umoci),
                "unpack stage before: walk, then umoci, confine": in_scratch(before),
                "unpack stage now: walk beside umoci, confine": in_scratch(now)}
    out = {k: [] for k in variants}
    cpu = {k: [] for k in out}
    found = {}
    for rnd in range(rounds):
        names = list(out)
        for name in (names if rnd % 2 == 0 else names[::-1]):
            t0, c0 = time.perf_counter(), time.process_time() + _children_cpu()
            res = variants[name]()
            out[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() + _children_cpu() - c0)
            if res is not None:
                found[name] = res
    return {"times": out, "cpu": cpu, "found": {k: list(v) for k, v in found.items()},
            "isal": True}


def arf_experiment(arf_gz: str, rounds: int) -> dict:
    """What happens to the ARF after oscap: parse_arf, and storing it: zlib level 6 (before)
    against oscap.compress (now: ISA-L level 1), and zlib level 1."""
    import gzip

    from webhook.scan import oscap
    work = tempfile.mkdtemp(prefix="arf-", dir="/dev/shm")
    arf = os.path.join(work, "arf.xml")
    with gzip.open(arf_gz, "rb") as src, open(arf, "wb") as dst:
        shutil.copyfileobj(src, dst)
    out = {"parse": [], "gzip6": [], "gzip1": [], "isal1": [], "size": os.path.getsize(arf)}
    try:
        for _ in range(rounds):
            t = time.perf_counter()
            oscap.parse_arf(arf)
            out["parse"].append(time.perf_counter() - t)
            for level in (6, 1):
                t = time.perf_counter()
                dest = os.path.join(work, f"l{level}.gz")
                with open(arf, "rb") as src, gzip.open(dest, "wb", compresslevel=level) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                out[f"gzip{level}"].append(time.perf_counter() - t)
                out[f"size{level}"] = os.path.getsize(dest)
            t = time.perf_counter()
            dest = oscap.compress(arf, os.path.join(work, "isal.gz"))
            out["isal1"].append(time.perf_counter() - t)
            out["size_isal1"] = os.path.getsize(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def experiments_child(layout: str, tag: str, arf_gz: str | None, rounds: int) -> dict:
    out = {"walk": walk_experiment(layout, tag, rounds)}
    if arf_gz:
        out["arf"] = arf_experiment(arf_gz, rounds)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.scan")
    p.add_argument("--child", nargs="+", metavar=("STATE POLICY", "REF"))
    p.add_argument("--experiments", nargs=3, metavar=("LAYOUT", "TAG", "ARF_GZ"))
    p.add_argument("--identify", metavar="ROOT")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    if args.identify:
        print(json.dumps(identify_child(args.identify, args.rounds)))
    elif args.child:
        state, policy, *refs = args.child
        print(json.dumps(child(state, policy, refs)))
    elif args.experiments:
        layout, tag, arf = args.experiments
        print(json.dumps(experiments_child(layout, tag, arf if arf != "-" else None,
                                           min(args.rounds, 5))))
    return 0


if __name__ == "__main__":
    sys.exit(main())


# -- orchestration ----------------------------------------------------------------------------

def run_cold(ctx, plan) -> list[Section]:
    from tests.builders import imagebuild

    from . import images, profiling
    reg = ctx.registry
    good = images.debootstrap("good")
    ref = reg.push(good.layout, good.tag, "bench/debian:good")
    datastream = str(imagebuild.datastream_path())
    runs = {"scapgate": [], "plain": []}
    for rnd in range(plan.cold_rounds):
        for side in (("plain", "scapgate") if rnd % 2 == 0 else ("scapgate", "plain")):
            if side == "plain":
                work = ctx.work / f"plain-{rnd}"
                work.mkdir(parents=True)
                r = plain_scan(ref, work, datastream)
                shutil.rmtree(work, ignore_errors=True)
            else:
                r = scapgate_scan(ref, ctx.work / f"cold-state-{rnd}", ctx.policy, reg.host)
            runs[side].append(r)
            log(f"cold scan {side}: {r['total']:.2f} s "
                + " ".join(f"{k} {v:.2f}" for k, v in r["stages"].items()))
    ctx.cold_ref, ctx.cold_state = ref, ctx.work / "cold-state-0"
    ident = identify_direct(str(good.layout), good.tag)
    if "times" in ident:
        log(f"identify() direct: mean {1000 * sum(ident['times']) / len(ident['times']):.3f} ms "
            f"over {len(ident['times'])} calls: {ident['describe']}")

    # where the Python time goes in `scapgate scan` (py-spy, without idle: CPU only)
    prof = None
    if profiling.py_spy():
        state = ctx.work / "cold-state-prof"
        proc, path = profiling.record_command(
            [SCAPGATE, "scan", ref, "--policy", str(ctx.policy), "--state-dir", str(state)],
            ctx.work / "py-spy-cold.txt", env=_env(reg.host), cwd=REPO)
        if path:
            prof = profiling.summarise([path])
        shutil.rmtree(state, ignore_errors=True)

    # a first admission of the never-scanned image through `scapgate serve`
    first = first_admission(ctx, ref, ctx.work / "first") if plan.first_admission else None

    arf = next(iter(sorted((ctx.work / "cold-state-0" / "reports").glob("*.arf.xml.gz"))), None)
    proc = subprocess.run([PY, "-m", "benchmarks.scan", "--experiments", str(good.layout),
                           good.tag, str(arf) if arf else "-", "--rounds",
                           str(plan.exp_rounds)], capture_output=True, text=True, timeout=600,
                          cwd=REPO)
    exp = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {
        "error": proc.stderr[-800:]}
    return _cold_sections(runs, prof, first, exp, plan, ident)


def first_admission(ctx, ref: str, work: Path) -> dict:
    """The whole first admission of a never-scanned image through `scapgate serve` (fresh
    state): POST /validate?timeout=10s of a pod naming it, timed at the client."""
    from . import bodies, servers
    srv = servers.start_scapgate(work, ctx.certs, policy=ctx.policy, env=ctx.env)
    try:
        client = servers.Client(srv.port, srv.ca)
        body = json.dumps(bodies.review(bodies.pod([ref]))).encode()
        t0 = time.perf_counter()
        resp = client.review(body, timeout="10s")["response"]
        first = {"seconds": time.perf_counter() - t0, "allowed": resp["allowed"],
                 "verdict": resp.get("auditAnnotations", {}).get("verdict"),
                 "message": (resp.get("status") or {}).get("message", "")[:200]}
        client.close()
    finally:
        srv.stop()
    log(f"first admission of {ref}: {first}")
    return first


def stage_rows(runs: dict) -> tuple[list[list[str]], dict]:
    """The per-stage rows of a scapgate-vs-plain table (STAGES, the time outside the stages,
    end to end, CPU) and the medians: total and cpu of each side."""
    rows = []
    for st in STAGES:
        sv = [r["stages"].get(st, 0.0) for r in runs["scapgate"]]
        pv = [r["stages"].get(st, 0.0) for r in runs["plain"]]
        rows.append([st, f(median(sv), 3 if st in ("identify", "prepare") else 2),
                     f(median(pv), 2) if any(pv) else "— (none)",
                     fr(ratio(median(sv), median(pv))) if any(pv) else "—",
                     " / ".join(f(x, 3 if st in ("identify", "prepare") else 2) for x in sv),
                     " / ".join(f(x, 2) for x in pv) if any(pv) else ""])
    med = {side: {"total": median([r["total"] for r in runs[side]]),
                  "cpu": median([r["cpu"] for r in runs[side]])} for side in ("scapgate", "plain")}
    st_tot, pl_tot = med["scapgate"]["total"], med["plain"]["total"]
    unacc = median([r["total"] - sum(r["stages"].values()) for r in runs["scapgate"]])
    rows.append(["(outside the stages: start-up, policy, ARF gzip, os-release…)", f(unacc, 2),
                 "—", "—", "", ""])
    rows.append(["**end to end**", f(st_tot, 2), f(pl_tot, 2), fr(ratio(st_tot, pl_tot)),
                 " / ".join(f(r["total"], 2) for r in runs["scapgate"]),
                 " / ".join(f(r["total"], 2) for r in runs["plain"])])
    st_cpu, pl_cpu = med["scapgate"]["cpu"], med["plain"]["cpu"]
    rows.append(["CPU s (user + system, whole process tree)", f(st_cpu, 2), f(pl_cpu, 2),
                 fr(ratio(st_cpu, pl_cpu)),
                 " / ".join(f(r["cpu"], 2) for r in runs["scapgate"]),
                 " / ".join(f(r["cpu"], 2) for r in runs["plain"])])
    return rows, med


def _cold_sections(runs, prof, first, exp, plan, ident=None) -> list[Section]:
    from . import profiling
    s = Section("2. Cold scan: `scapgate scan` vs the same steps as plain commands",
                intro=("Debootstrap Debian 12 minbase image (one 51 MB layer) from a local "
                       "registry, nothing cached (fresh state directory / layout each time), "
                       f"{plan.cold_rounds} interleaved rounds, median. Plain: skopeo inspect "
                       "--raw; skopeo copy docker://…@digest oci:…; umoci raw unpack (on "
                       "/dev/shm, like scapgate); .dockerenv + neutral APT_CONFIG; oscap xccdf "
                       "eval --skip-valid --profile standard --results-arf. scapgate's stage "
                       "times are its own progress lines; its total is the wall time of the "
                       "whole `scapgate scan` process."),
                headers=["stage", "scapgate s", "plain s", "ratio", "rounds scapgate",
                         "rounds plain"])
    rows, med = stage_rows(runs)
    s.rows += rows
    st_tot, pl_tot = med["scapgate"]["total"], med["plain"]["total"]
    st_cpu, pl_cpu = med["scapgate"]["cpu"], med["plain"]["cpu"]
    q = ratio(st_tot, pl_tot)
    s.notes.append("CPU s counts every process of the scan (skopeo, umoci, oscap and, for "
                   "scapgate, its own Python): unlike wall time it hardly moves with the other "
                   "suites' load, so its ratio is the steadier estimate of the overhead.")
    s.target("2 cold scan ratio ≤ 1.15", q <= 1.15,
             f"{fr(q)} ({f(st_tot, 2)} vs {f(pl_tot, 2)} s wall; CPU "
             f"{fr(ratio(st_cpu, pl_cpu))}: {f(st_cpu, 2)} vs {f(pl_cpu, 2)} s)")
    budget = 10.0 - 1.5
    s.target("2 end to end fits a 10 s admission (8.5 s budget after the 1.5 s margin)",
             st_tot <= budget, f"{f(st_tot, 2)} s = {fr(st_tot / 10.0)} of 10 s")
    _identify_target(s, runs, ident)
    if first:
        s.notes.append(
            f"A real first admission of this never-scanned image through `scapgate serve` "
            f"(POST /validate?timeout=10s, fresh state): answered in {f(first['seconds'], 2)} s "
            f"with verdict **{first['verdict']}** (allowed={first['allowed']})"
            + (f": “{first['message']}”" if first["message"] else "") + ".")
        s.target("2 first admission decided within 10 s (not pending)",
                 first["verdict"] not in (None, "pending") and first["seconds"] < 10,
                 f"{f(first['seconds'], 2)} s, verdict {first['verdict']}")
    s.raw = {"runs": runs, "first_admission": first, "identify_direct": ident}
    out = [s]

    p = Section("2b. Where the cold scan's time goes")
    rows = []
    if prof:
        total_s = prof["samples"] / 200.0
        p.intro = (f"py-spy (CPU samples only, 200 Hz) of one more cold `scapgate scan`: "
                   f"{prof['samples']:,} samples ≈ {f(total_s, 2)} s of Python CPU; the rest "
                   "of the wall time is skopeo, umoci and oscap. Inclusive, webhook/ and the "
                   "libraries it calls:")
        p.headers = ["function (inclusive)", "≈ s", "% of Python samples"]
        wanted = ("webhook/scan/unpack.py", "webhook/scan/oscap.py", "webhook/scan/pipeline.py",
                  "webhook/scan/rootfs.py", "webhook/cli.py:cmd_scan", "webhook/scan/engine.py",
                  "webhook/scan/registry.py", "webhook/policy/model.py:load_set",
                  "tarfile.py:TarFile.next", "gzip.py", "<frozen importlib._bootstrap>:_find_and_load")
        for name, share in profiling.top(prof, "inclusive", 300):
            if name.startswith(wanted):
                rows.append([name, f(share / 100 * total_s, 2), f(share, 1)])
            if len(rows) >= 22:
                break
        p.rows = rows
        p.raw = {"samples": prof["samples"], "inclusive": prof["inclusive"].most_common(60)}
    if "walk" in exp:
        w = exp["walk"]
        times = w["times"]
        first = next(iter(times))
        ref = median(times[first])
        rows = []
        cpus = w.get("cpu", {})
        ref_cpu = median(cpus.get(first, [float("nan")]))
        for name, ts in times.items():
            found = w["found"].get(name)
            c = median(cpus.get(name, [float("nan")]))
            rows.append([name, f(c, 2), fr(ratio(c, ref_cpu)), f(median(ts), 2),
                         " / ".join(f(x, 2) for x in ts), fr(ratio(median(ts), ref)),
                         f"{found[0]:,} files, {found[1]:,} bytes" if found else ""])
        p.extra_tables.append((
            "Before and after: the unpack stage and its limit walk (unpack.py), same layer",
            ["variant", "CPU s", f"CPU vs {first}", "wall s (median)", "wall rounds",
             f"wall vs {first}", "found"], rows))
    if "arf" in exp:
        a = exp["arf"]
        p.extra_tables.append((
            f"Experiment: after oscap — the {a['size'] / 1e6:.1f} MB ARF",
            ["step", "s (median)", "output"],
            [["parse_arf (lxml, titles + rule results)", f(median(a["parse"]), 3), ""],
             ["zlib gzip level 6 (before)", f(median(a["gzip6"]), 3),
              f"{a.get('size6', 0) / 1e6:.2f} MB"],
             ["zlib gzip level 1", f(median(a["gzip1"]), 3), f"{a.get('size1', 0) / 1e6:.2f} MB"],
             ["oscap.compress: ISA-L level 1 (now, the `store` stage)", f(median(a["isal1"]), 3),
              f"{a.get('size_isal1', 0) / 1e6:.2f} MB"]]))
    if "error" in exp:
        p.notes.append(f"experiments failed: {exp['error']}")
    p.raw["experiments"] = exp
    out.append(p)
    return out


def _identify_target(s: Section, runs: dict, ident: dict | None) -> None:
    """Target 13: the identify stage of the cold scans (scapgate's own progress lines, 1 ms
    resolution) beside the scan total, and identify() timed directly in a child process."""
    idv = [r["stages"].get("identify") for r in runs["scapgate"]]
    idv = [x for x in idv if x is not None]
    tot = median([r["total"] for r in runs["scapgate"]])
    direct = ""
    d_ok = True
    if ident and "times" in ident:
        ts = [x * 1000 for x in ident["times"]]
        mean, p99 = sum(ts) / len(ts), pct(ts, 99)
        d_ok = p99 <= 50
        direct = (f"; identify() direct, {len(ts)} calls in a child process on the unpacked "
                  f"root: mean {f(mean, 3)} ms, p99 {f(p99, 3)} ms, first call {f(ts[0], 3)} ms")
        s.notes.append(
            f"Identification (webhook/scan/identify.py) timed directly: `identify(root)` called "
            f"{len(ts)} times in a fresh child process on the debootstrap Debian 12 root (umoci "
            f"raw unpack on /dev/shm, as root): mean {f(mean, 3)} ms, median "
            f"{f(median(ts), 3)} ms, p99 {f(p99, 3)} ms, max {f(max(ts), 3)} ms; the first "
            f"call (imports done before the clock starts) {f(ts[0], 3)} ms. Found: "
            f"{ident['describe']} → product {ident['product']}.")
    elif ident:
        direct = f"; direct measurement failed: {ident.get('error', '?')[:200]}"
    if not idv:
        s.target("13 identification ≤ 50 ms per image", None,
                 "no identify stage in the scans' progress lines" + direct)
        return
    ms = [x * 1000 for x in idv]
    s.target("13 identification ≤ 50 ms per image", max(ms) <= 50 and d_ok,
             f"identify stage median {f(median(ms), 0)} ms (max {f(max(ms), 0)} ms) of "
             f"{len(ms)} cold scans, whose total is {f(tot, 2)} s "
             f"({f(100 * median(ms) / 1000 / tot, 2)} %; progress lines have 1 ms "
             f"resolution)" + direct)


def run_shared(ctx, plan) -> list[Section]:
    from . import images
    reg = ctx.registry
    good = images.debootstrap("good")
    good_ref = getattr(ctx, "cold_ref", None) or reg.push(good.layout, good.tag, "bench/debian:good")
    base = images.base_layer(good)
    derived = images.derived(ctx.work / "oci-derived", reg, base, ["shared-a", "shared-b"])
    ref_a, ref_b = derived["shared-a"][0], derived["shared-b"][0]
    results = {"good_cold": [], "derived_warm_worker": [], "derived_cold": [],
               "derived_new_process": []}
    for rnd in range(plan.shared_rounds):
        sa, sb = ctx.work / f"shared-A-{rnd}", ctx.work / f"shared-B-{rnd}"
        a = run_child(sa, ctx.policy, [good_ref, ref_a], reg.host)
        b = run_child(sb, ctx.policy, [ref_a], reg.host)
        c = run_child(sa, ctx.policy, [ref_b], reg.host)
        results["good_cold"].append(a[0])
        results["derived_warm_worker"].append(a[1])
        results["derived_cold"].append(b[0])
        results["derived_new_process"].append(c[0])
        ctx.result_template = b[0]["body"]
        log(f"shared layers: cold {b[0]['wall']:.2f} s, after the base in the same worker "
            f"{a[1]['wall']:.2f} s, new process with the cached blobs {c[0]['wall']:.2f} s")
    s = Section("3. Shared layers: an image built FROM an already scanned one",
                intro=("The debootstrap good and bad images are single-layer images built "
                       "separately: they share no layer. So the derived image is the good "
                       "image's 51 MB layer + one small layer of its own (benchmarks/images.py). "
                       "Scans run in a long-lived process like a `scapgate worker`. `cold`: "
                       "fresh state; `after base, same worker`: the good image was just "
                       "scanned by this process; `new process, cached blobs`: another process "
                       "on the same state directory (a restarted or second worker)."),
                headers=["case", "fetch s", "unpack s", "evaluate s", "parse s", "wall s",
                         "vs cold"])
    cold = median([r["wall"] for r in results["derived_cold"]])
    for name, label in (("derived_cold", "derived image, cold"),
                        ("derived_warm_worker", "derived image, after base, same worker"),
                        ("derived_new_process", "derived image, new process, cached blobs"),
                        ("good_cold", "(the base image itself, cold)")):
        rs = results[name]
        w = median([r["wall"] for r in rs])
        s.rows.append([label] + [f(median([r["timings"].get(k, 0) for r in rs]), 2)
                                 for k in ("fetch", "unpack", "evaluate", "parse")]
                      + [f(w, 2), fr(ratio(w, cold))])
    warm = median([r["wall"] for r in results["derived_warm_worker"]])
    s.notes.append(
        "Reused: the base layer's blob (content-addressed OCI cache: only the small layer, "
        "the manifest and the config are downloaded) and, inside one process, the layer's "
        "limit walk (unpack._checked, per layer digest). Not reused: umoci extracts every "
        "layer again into a fresh root and oscap evaluates the whole root again, so the "
        f"scan costs {fr(ratio(warm, cold))} of a cold one.")
    s.raw = {k: [{kk: vv for kk, vv in r.items() if kk != "body"} for r in v]
             for k, v in results.items()}
    return [s]
