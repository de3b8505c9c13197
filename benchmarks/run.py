"""`make bench`: run every section, print the results and write BENCHMARKS.md.

    .venv/bin/python -m benchmarks.run [--quick] [--sections fastpath,cold,large,shared,throughput,memory,cves,inventory,console]

Raw numbers and py-spy profiles go to BENCHMARKS.raw/ (git-ignored). Needs root (the cached
debootstrap image), skopeo, umoci, oscap, docker-registry and wrk (installed with apt-get when
missing); section `large` builds a ≈ 700 MB Debian 12 image once (apt in a chroot, cached by
recipe hash, ≈ 1 min). Everything listens on 127.0.0.1 ports picked at random (never 8443) and
is stopped at the end; the work directory under /tmp is removed unless --keep.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from . import (console, cves, fastpath, inventory, large, loadgen, memory, scan, servers,
               throughput)
from .common import REPO, SCAPGATE, Section, log

ALL = ("fastpath", "cold", "large", "shared", "memory", "throughput", "cves", "inventory",
       "console")
SCANS = {"cold", "large", "shared", "throughput", "cves"}   # sections running oscap on images


@dataclass
class Plan(fastpath.Plan):
    cold_rounds: int = 2
    large_rounds: int = 2
    first_admission: bool = True
    shared_rounds: int = 1
    memory_n: int = 100_000
    pool_images: int = 20
    seq_images: int = 4
    pool_processes: int = 0          # 0 = one per core, as `scapgate serve` starts them


def quick_plan() -> Plan:
    return Plan(sat_rounds=1, sat_s=3, paced_rounds=1, paced_s=4, c50_rounds=1, c50_s=3,
                exp_rounds=1, paced_exp_rounds=1, exp_s=3, profile_s=4, cold_rounds=1, memory_n=20_000,
                pool_images=4, seq_images=2, large_rounds=1)


def _tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        text = (out.stdout or out.stderr).strip().splitlines()
        return text[0][:80] if text else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "missing"


def _machine() -> dict:
    from importlib.metadata import version
    return {"cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "gunicorn": version("gunicorn"), "flask": version("flask"),
            "oscap": _tool_version(["oscap", "--version"]),
            "skopeo": _tool_version(["skopeo", "--version"]),
            "umoci": _tool_version(["umoci", "--version"]),
            "wrk": _tool_version(["wrk", "--version"]),
            "py-spy": _tool_version([str(REPO / ".venv" / "bin" / "py-spy"), "--version"])}


def _preflight(sections) -> list[str]:
    problems = []
    need = {"skopeo", "docker-registry"}
    if SCANS & set(sections):
        need |= {"umoci", "oscap"}
    if "large" in sections:
        need |= {"chroot", "mount", "du"}       # the large image's first build
    for tool in sorted(need):
        if not shutil.which(tool):
            problems.append(f"{tool} is not installed (scripts/install-deps.sh)")
    if "fastpath" in sections and not loadgen.ensure_wrk():
        problems.append("wrk is not installed and apt-get could not install it")
    if not SCAPGATE:
        problems.append("the scapgate venv is missing: run `make deps`")
    if SCANS & set(sections) and os.geteuid() != 0:
        problems.append("the debootstrap image (and umoci's exact ownership) need root")
    from tests.builders import imagebuild
    if not imagebuild.datastream_path().exists():
        problems.append(f"{imagebuild.datastream_path()} missing: scripts/install-content.sh")
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short runs (a smoke test, not figures)")
    p.add_argument("--sections", default=",".join(ALL), help=f"comma list of {', '.join(ALL)}")
    p.add_argument("--memory-n", type=int, default=None, help="results held in section 4")
    p.add_argument("--out", default=str(REPO / "BENCHMARKS.md"))
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(ALL)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}")
    problems = _preflight(sections)
    if problems:
        for x in problems:
            print(f"bench: {x}", file=sys.stderr)
        return 2
    plan = quick_plan() if args.quick else Plan()
    if args.memory_n:
        plan.memory_n = args.memory_n
    command = "make bench" if not args.quick and sections == list(ALL) else \
        ".venv/bin/python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    raw_dir = Path(args.out).with_suffix(".raw")      # BENCHMARKS.md → BENCHMARKS.raw/
    raw_dir.mkdir(exist_ok=True)
    for old in raw_dir.glob("py-spy-*.txt"):      # this run's profiles only
        old.unlink()
    work = Path(tempfile.mkdtemp(prefix="scapgate-bench-"))
    started = time.time()
    load_start = os.getloadavg()
    out: list[Section] = []
    failed: list[str] = []
    from tests.builders import imagebuild
    from tests.builders.registry import start_registry
    if (SCANS | {"memory"}) & set(sections):
        log("debootstrap image (cached; ≈ 60 s when cold)")
        imagebuild.debootstrap_root("good")
    reg = start_registry(work / "registry")
    try:
        certs = servers.make_certs(work / "certs")
        ctx = fastpath.Ctx(work, reg, certs, REPO / "policies",
                           {"SCAPGATE_INSECURE_REGISTRIES": reg.host,
                            "SCAPGATE_CONTENT_DIR": str(imagebuild.content_dir())})
        steps = {"fastpath": lambda: fastpath.run(ctx, plan),
                 "cold": lambda: scan.run_cold(ctx, plan),
                 "large": lambda: large.run(ctx, plan),
                 "shared": lambda: scan.run_shared(ctx, plan),
                 "throughput": lambda: throughput.run(ctx, plan),
                 "memory": lambda: memory.run(ctx, plan),
                 "cves": lambda: cves.run(ctx, plan),
                 "inventory": lambda: inventory.run(ctx, plan),
                 "console": lambda: console.run(ctx, plan)}
        for name in ALL:
            if name not in sections:
                continue
            log(f"== {name}")
            t0 = time.time()
            try:
                secs = steps[name]()
            except Exception as e:  # one broken section must not hide the others
                traceback.print_exc()
                failed.append(name)
                secs = [Section(f"{name}: FAILED", intro=f"`{type(e).__name__}: {str(e)[:600]}`")]
            for s in secs:
                s.raw.setdefault("_seconds", time.time() - t0) if isinstance(s.raw, dict) else None
            out += secs
            log(f"== {name} took {time.time() - t0:.0f} s")
    finally:
        reg.stop()
        for prof in work.glob("py-spy-*.txt"):
            shutil.copy(prof, raw_dir / prof.name)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"work directory kept: {work}")
    meta = {"command": command, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.time() - started), "load_start": load_start,
            "load_end": os.getloadavg(), "machine": _machine(), "quick": args.quick,
            "plan": dataclasses.asdict(plan), "failed": failed}
    (raw_dir / "last.json").write_text(json.dumps(
        {"meta": meta, "sections": [{"title": s.title, "raw": s.raw} for s in out]},
        indent=1, default=str))
    text = render(meta, out)
    Path(args.out).write_text(text)
    print(text)
    log(f"wrote {args.out} in {meta['seconds']} s")
    return 1 if failed else 0


def _table(headers, rows) -> list[str]:
    if not headers:
        return []
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def render(meta: dict, sections: list[Section]) -> str:
    m = meta["machine"]
    lines = ["# BENCHMARKS", "",
             f"Written by `{meta['command']}` on {meta['date']} in {meta['seconds']} s "
             "(reproduce with the same command; raw numbers and py-spy profiles in "
             "BENCHMARKS.raw/; `.venv/bin/python -m benchmarks.run --quick` is a 5-minute smoke "
             "run of the harness, `--sections fastpath,cold,large,shared,memory,throughput` picks "
             "sections).", "",
             f"Machine: {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}, "
             f"gunicorn {m['gunicorn']}, {m['oscap']}, {m['skopeo']}, umoci {m['umoci']}, "
             f"{m['wrk']}. Load average at start {', '.join(f'{x:.1f}' for x in meta['load_start'])}"
             f", at end {', '.join(f'{x:.1f}' for x in meta['load_end'])} — the machine is "
             "shared with other test suites, so absolute numbers drift; every figure is "
             "measured beside its baseline in the same run (interleaved where the two can take "
             "turns) and given as a ratio.", ""]
    if meta["quick"]:
        lines += ["**--quick run: short measurements, a smoke test of the harness, not figures "
                  "to quote.**", ""]
    targets = [t for s in sections for t in s.targets]
    if targets:
        lines += ["## Targets", ""]
        lines += _table(["target", "met", "measured"],
                        [[n, "yes" if ok else ("n/a" if ok is None else "**no**"), d]
                         for n, ok, d in targets])
        lines.append("")
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.intro:
            lines += [s.intro, ""]
        if s.headers:
            lines += _table(s.headers, s.rows) + [""]
        for title, headers, rows in s.extra_tables:
            lines += [f"**{title}**", ""] + _table(headers, rows) + [""]
        for n in s.notes:
            lines += [n, ""]
    if meta["failed"]:
        lines += [f"Sections that failed: {', '.join(meta['failed'])} (see the log above).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
