"""Section 2c: a cold scan of a large image, `scapgate scan` against the same steps as plain
commands (scan.scapgate_scan and scan.plain_scan, as in section 2), plus the peak memory of the
scanning process.

The image is tests.builders.imagebuild.debootstrap_large(): the debootstrap Debian 12 good root
with python3, build-essential and default-jre-headless installed (≈ 690 MB, one gzip-1 layer),
built once (≈ 40 s-several minutes) and cached under /var/cache/scapgate-test by recipe hash.
"""
from __future__ import annotations

import shutil
import time

from .common import Section, f, fr, log, median, ratio
from .scan import plain_scan, scapgate_scan, stage_rows

TARGET = 1.15


def run(ctx, plan) -> list[Section]:
    from tests.builders import imagebuild
    reg = ctx.registry
    t0 = time.perf_counter()
    img = imagebuild.debootstrap_large()
    got = time.perf_counter() - t0
    info = imagebuild.large_image_info(img)
    log(f"large image: {info['du_bytes'] / 1e6:.0f} MB installed, {info['files']:,} entries, "
        f"layer {info['layer_bytes'] / 1e6:.0f} MB (ready in {got:.1f} s)")
    t0 = time.perf_counter()
    ref = _push(reg, img)
    pushed = time.perf_counter() - t0
    datastream = str(imagebuild.datastream_path())       # ssg-debian12-ds.xml, profile standard
    runs = {"scapgate": [], "plain": []}
    for rnd in range(plan.large_rounds):
        for side in (("plain", "scapgate") if rnd % 2 == 0 else ("scapgate", "plain")):
            work = ctx.work / f"large-{side}-{rnd}"
            work.mkdir(parents=True)
            try:
                if side == "plain":
                    r = plain_scan(ref, work, datastream)
                else:
                    r = scapgate_scan(ref, work / "state", ctx.policy, reg.host, memory=True,
                                      timeout=900)
            finally:
                shutil.rmtree(work, ignore_errors=True)   # 280 MB of blobs per round
            runs[side].append(r)
            log(f"large scan {side}: {r['total']:.2f} s "
                + " ".join(f"{k} {v:.2f}" for k, v in r["stages"].items())
                + (f" peak RSS {r['memory']}" if "memory" in r else ""))
    return [_section(runs, info, got, pushed, plan)]


def _push(reg, img) -> str:
    for attempt in range(3):      # docker-registry answers 500 now and then on big uploads
        try:
            return reg.push(img.layout, img.tag, "bench/debian:large")
        except RuntimeError:
            if attempt == 2:
                raise
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def _section(runs, info, got, pushed, plan) -> Section:
    s = Section("2c. Cold scan of a large image",
                intro=(f"Debian 12 debootstrap minbase + python3, build-essential and "
                       f"default-jre-headless (apt --no-install-recommends; "
                       f"`imagebuild.debootstrap_large()`): {info['du_bytes'] / 1e6:,.0f} MB "
                       f"installed (`du -sb`; regular files {info['installed_bytes'] / 1e6:,.0f} "
                       f"MB), {info['files']:,} entries, one gzip-1 layer of "
                       f"{info['layer_bytes'] / 1e6:,.0f} MB; built in "
                       f"{f(info.get('build_seconds', float('nan')), 0)} s once and cached "
                       f"(this run: ready in {f(got, 1)} s, pushed to the local registry in "
                       f"{f(pushed, 1)} s). Cold, as in section 2: a fresh state directory for "
                       f"`scapgate scan`, a fresh layout for the plain commands (same steps, "
                       f"ssg-debian12-ds.xml, profile standard), {plan.large_rounds} "
                       f"interleaved round(s), median."),
                headers=["stage", "scapgate s", "plain s", "ratio", "rounds scapgate",
                         "rounds plain"])
    rows, med = stage_rows(runs)
    s.rows += rows
    st_tot, pl_tot = med["scapgate"]["total"], med["plain"]["total"]
    st_cpu, pl_cpu = med["scapgate"]["cpu"], med["plain"]["cpu"]
    q = ratio(st_tot, pl_tot)
    s.target(f"2c large image ({info['du_bytes'] / 1e6:,.0f} MB installed) cold scan ratio "
             f"≤ {TARGET}", q <= TARGET,
             f"{fr(q)} ({f(st_tot, 2)} vs {f(pl_tot, 2)} s wall; CPU "
             f"{fr(ratio(st_cpu, pl_cpu))}: {f(st_cpu, 2)} vs {f(pl_cpu, 2)} s)")
    unp = {side: median([r["stages"].get("unpack", float("nan")) for r in runs[side]])
           for side in runs}
    s.notes.append(
        f"The unpack stage is most of the scan ({f(unp['scapgate'], 2)} vs "
        f"{f(unp['plain'], 2)} s, {fr(ratio(unp['scapgate'], unp['plain']))}): besides umoci "
        f"writing the {info['du_bytes'] / 1e6:,.0f} MB root, scapgate decompresses the layer a "
        f"second time to walk its headers against the limits (beside umoci, unpack.py) and "
        f"then walks the root (rootfs.confine). The whole tree's CPU differs by "
        f"{st_cpu - pl_cpu:+.2f} s; on 2 cores shared with other suites, extra CPU turns into "
        f"wall time whenever no core is free, so the wall ratio depends on the load and the "
        f"CPU ratio is the steadier figure (as in section 2).")
    verdicts = sorted({r["verdict"] for r in runs["scapgate"]})
    s.notes.append(f"scapgate's verdict on the image: {', '.join(verdicts)}; oscap rc of the "
                   f"plain runs: {', '.join(str(r['rc']) for r in runs['plain'])}.")

    mems = [r["memory"] for r in runs["scapgate"] if "memory" in r]
    if mems:
        names = sorted({k for m in mems for k in m["sampled_mib"]},
                       key=lambda k: (k != "scapgate (Python)", k))
        mrows = []
        for name in names:
            vals = [m["sampled_mib"].get(name, float("nan")) for m in mems]
            what = ("the scanning Python process (in `scapgate serve`: the scan worker)"
                    if name == "scapgate (Python)" else
                    "a process oscap forks (the name comes from libopenscap)"
                    if name.startswith("oscap › common_main") else
                    f"child of {name.rsplit(' › ', 1)[0]}" if " › " in name else
                    "child of scapgate")
            seen = [v for v in vals if v == v]
            mrows.append([name, what, f(max(seen), 1),
                          " / ".join(f(v, 1) if v == v else "not caught" for v in vals)])
        tree = [m["tree_max_mib"] for m in mems]
        mrows.append(["**largest single process of the tree**", "wait4 ru_maxrss (exact)",
                      f(max(tree), 1), " / ".join(f(v, 1) for v in tree)])
        s.extra_tables.append((
            "Peak memory (RSS) of `scapgate scan` on the large image",
            ["process", "what", "peak MiB (max over rounds)", "rounds"], mrows))
        worker = max((m["sampled_mib"]["scapgate (Python)"] for m in mems
                      if "scapgate (Python)" in m["sampled_mib"]), default=float("nan"))
        s.notes.append(
            f"Peak RSS: the scapgate process's VmHWM (the kernel's high-water mark) read every "
            f"{int(mems[0]['interval_s'] * 1000)} ms, and its children's the same way (a child "
            f"living less than that can be missed: \"not caught\"); the largest process of the "
            f"whole tree also comes exactly from wait4's ru_maxrss. The Python side peaks at "
            f"{f(worker, 1)} MiB for a {info['du_bytes'] / 1e6:,.0f} MB root. A forked child shares its parent's pages until it writes them, so the "
            f"peaks are not to be added up.")
        s.target("2c peak memory of the scan worker reported", worker == worker,
                 f"scapgate process {f(worker, 1)} MiB; largest process of the tree "
                 f"{f(max(tree), 1)} MiB")
    s.raw = {"image": info, "ready_s": got, "push_s": pushed, "runs": runs}
    return s
