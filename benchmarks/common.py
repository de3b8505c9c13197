"""Shared helpers: statistics, processes we start (and only those), ports, RSS, formatting."""
from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
PY = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
SCAPGATE = str(VENV_BIN / "scapgate") if (VENV_BIN / "scapgate").exists() else None
FORBIDDEN_PORTS = {8443}       # `make run`'s port: never ours to take


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A loopback port nothing listens on right now (never 8443)."""
    for _ in range(20):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in FORBIDDEN_PORTS:
            return port
    raise RuntimeError("no free port")


def pct(values, q: float) -> float:
    """The q-th percentile (nearest rank on sorted values); nan for no values."""
    v = sorted(values)
    if not v:
        return float("nan")
    return v[min(len(v) - 1, max(0, int(round(q / 100 * (len(v) - 1)))))]


def median(values) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of a process, MiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (all their threads), seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def children(pid: int) -> list[int]:
    """Direct children of pid (gunicorn workers, scan workers)."""
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out += [int(x) for x in fh.read().split()]
    except OSError:
        pass
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Proc:
    """A process we started, in its own session, stopped by its own pid (and its group)."""

    def __init__(self, argv: list[str], *, env: dict | None = None, log_path: Path | None = None,
                 cwd: Path = REPO):
        self.log_path = log_path
        if log_path:
            log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.p = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
        self.pid = self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, timeout: float = 40.0) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        # whatever it left in its own process group (scan workers, oscap) goes with it
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self._log is not subprocess.DEVNULL:
            self._log.close()

    def tail(self, n: int = 3000) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-n:]


def run(argv: list[str], *, env: dict | None = None, timeout: float = 600, cwd: Path = REPO,
        check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}… exited {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout)[-1500:]}")
    return proc


@dataclass
class Section:
    """One numbered section of BENCHMARKS.md: a table of figures plus notes."""

    title: str
    intro: str = ""
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    targets: list[tuple[str, bool | None, str]] = field(default_factory=list)  # (name, met, detail)
    raw: dict = field(default_factory=dict)
    extra_tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)

    def target(self, name: str, met: bool | None, detail: str) -> None:
        self.targets.append((name, met, detail))

    def to_json(self) -> str:
        return json.dumps(self.raw, indent=1, default=str)


def f(x: float, nd: int = 1) -> str:
    if x != x:
        return "n/a"
    return f"{x:,.{nd}f}"


def fr(x: float) -> str:
    return "n/a" if x != x else f"{x:.2f}"
