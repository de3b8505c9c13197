"""Load generators, the same for scapgate and its baseline.

closed_loop(): wrk (C, keep-alive) posting the body from a Lua script; its done() hook prints
requests, errors and latency percentiles as JSON. Used for saturation throughput and for the
50-client closed loop.

paced(): our own open-loop generator, wrk2 style, run as a separate process
(`python -m benchmarks.loadgen paced …`) so it never shares an interpreter with the
orchestrator. Requests are scheduled at a fixed rate on kept-alive TLS connections; latency is
measured from each request's *scheduled* send time, so a server stall that delays later sends
is counted against the server (no coordinated omission).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time

from .common import log, pct

PATH = "/validate?timeout=10s"
SERVER_NAME = "scapgate.scapgate.svc"
HEADERS = {"Content-Type": "application/json", "User-Agent": "kube-apiserver-admission",
           "Accept-Encoding": "gzip"}

_LUA = r"""
wrk.method = "POST"
wrk.path = "%(path)s"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["User-Agent"] = "kube-apiserver-admission"
local f = assert(io.open("%(body)s", "rb"))
wrk.body = f:read("*a")
f:close()

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,"connect":%%d,"read":%%d,' ..
    '"write":%%d,"status":%%d,"timeout":%%d,"p50_us":%%d,"p90_us":%%d,"p95_us":%%d,' ..
    '"p99_us":%%d,"max_us":%%d,"mean_us":%%f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency.max, latency.mean))
end
"""


def ensure_wrk() -> str | None:
    """wrk from Debian (installed with apt-get when missing); None when it cannot be had."""
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("installing wrk (apt-get install -y wrk)")
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], capture_output=True,
                       timeout=300, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("wrk")


def closed_loop(port: int, body_path: str, *, connections: int, threads: int, seconds: float,
                timeout_s: float = 10.0) -> dict:
    """wrk against https://127.0.0.1:port; returns its summary (rps, latency percentiles, ms)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(_LUA % {"path": PATH, "body": body_path})
        script = fh.name
    try:
        proc = subprocess.run(
            ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s",
             "--timeout", f"{timeout_s:g}s", "-s", script, f"https://127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=seconds + 60)
    finally:
        os.unlink(script)
    for line in proc.stdout.splitlines():
        if line.startswith("WRKJSON "):
            d = json.loads(line[8:])
            secs = d["duration_us"] / 1e6
            errors = d["connect"] + d["read"] + d["write"] + d["status"] + d["timeout"]
            return {"rps": d["requests"] / secs, "requests": d["requests"], "seconds": secs,
                    "errors": errors, "status_errors": d["status"],
                    **{k.replace("_us", "_ms"): d[k] / 1000 for k in
                       ("p50_us", "p90_us", "p95_us", "p99_us", "max_us", "mean_us")}}
    raise RuntimeError(f"wrk gave no summary (rc {proc.returncode}): "
                       f"{(proc.stderr or proc.stdout)[-800:]}")


# -- the paced (open-loop) generator ------------------------------------------------------------

def paced(port: int, body_path: str, *, rate: float, seconds: float, connections: int,
          warmup_s: float = 1.0, ca: str | None = None) -> dict:
    """Run the paced generator in its own process; returns its JSON summary."""
    cmd = [sys.executable, "-m", "benchmarks.loadgen", "paced", "--port", str(port),
           "--body", body_path, "--rate", f"{rate:.3f}", "--seconds", f"{seconds:g}",
           "--connections", str(connections), "--warmup", f"{warmup_s:g}"]
    if ca:
        cmd += ["--ca", ca]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + warmup_s + 90,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if proc.returncode != 0:
        raise RuntimeError(f"paced generator failed: {proc.stderr[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


async def _open(port: int, ctx: ssl.SSLContext):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                   server_hostname=SERVER_NAME)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        import socket
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def _exchange(reader, writer, request: bytes) -> tuple[int, bytes]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip())
    body = await reader.readexactly(length) if length else b""
    return status, body


async def _paced_main(port: int, body: bytes, rate: float, seconds: float, connections: int,
                      warmup_s: float, ca: str | None) -> dict:
    ctx = ssl.create_default_context(cafile=ca) if ca else ssl._create_unverified_context()
    if not ca:
        ctx.check_hostname = False
    ctx.set_alpn_protocols(["http/1.1"])
    head = (f"POST {PATH} HTTP/1.1\r\nHost: {SERVER_NAME}\r\n" +
            "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items()) +
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    request = head + body
    conns = [await _open(port, ctx) for _ in range(connections)]
    total = int(rate * (seconds + warmup_s))
    interval = 1.0 / rate
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2
    next_i = 0
    lat: list[tuple[float, float]] = []   # (scheduled offset, latency s)
    errors = 0
    bad = 0

    async def conn_task(i: int):
        nonlocal next_i, errors, bad
        reader, writer = conns[i]
        while True:
            n = next_i
            if n >= total:
                return
            next_i += 1
            sched = start + n * interval
            delay = sched - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                status, resp = await _exchange(reader, writer, request)
            except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
                errors += 1
                writer.close()
                reader, writer = await _open(port, ctx)
                continue
            done = loop.time()
            if status != 200 or b'"allowed"' not in resp:
                bad += 1
            lat.append((sched - start, done - sched))

    t0 = time.perf_counter()
    await asyncio.gather(*(conn_task(i) for i in range(connections)))
    wall = time.perf_counter() - t0
    for _, w in conns:
        w.close()
    kept = [l for s, l in lat if s >= warmup_s]
    return {"rate": rate, "sent": len(lat), "measured": len(kept), "errors": errors,
            "bad": bad, "wall_s": wall, "achieved_rps": len(lat) / max(1e-9, wall),
            "p50_ms": pct(kept, 50) * 1000, "p90_ms": pct(kept, 90) * 1000,
            "p99_ms": pct(kept, 99) * 1000, "max_ms": max(kept) * 1000 if kept else float("nan")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.loadgen")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("paced", help="open-loop fixed-rate load (wrk2 style)")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--body", required=True)
    s.add_argument("--rate", type=float, required=True, help="requests per second")
    s.add_argument("--seconds", type=float, default=10.0)
    s.add_argument("--connections", type=int, default=16)
    s.add_argument("--warmup", type=float, default=1.0)
    s.add_argument("--ca", default=None)
    args = p.parse_args(argv)
    with open(args.body, "rb") as fh:
        body = fh.read()
    out = asyncio.run(_paced_main(args.port, body, args.rate, min(args.seconds, 120.0),
                                  min(args.connections, 256), args.warmup, args.ca))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
