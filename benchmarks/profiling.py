"""Where the time goes: py-spy samples of a running process, summarised.

py-spy (pinned in requirements-dev.txt) attaches to a pid without touching the code under
test; `--nonblocking` keeps its own cost off the measured process. The raw (collapsed) output
is summarised as inclusive and self time per function, in percent of the samples.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

from .common import VENV_BIN

_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def py_spy() -> str | None:
    exe = VENV_BIN / "py-spy"
    return str(exe) if exe.exists() else shutil.which("py-spy")


def record(pids: list[int], seconds: float, out_dir: Path, *, rate: int = 200,
           idle: bool = False, subprocesses: bool = False, gil: bool = False) -> list:
    """Start one py-spy per pid (in parallel, bounded by `seconds`); returns the raw files.
    Call wait_all() on the returned handle list."""
    exe = py_spy()
    if not exe:
        return []
    procs, files = [], []
    for pid in pids:
        path = out_dir / f"py-spy-{pid}.txt"
        cmd = [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate",
               str(rate), "--format", "raw", "--nonblocking", "-o", str(path)]
        if idle:
            cmd.append("--idle")
        if subprocesses:
            cmd.append("--subprocesses")
        if gil:
            cmd.append("--gil")      # only the thread holding the GIL: where the CPU goes
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        files.append(path)
    return [(p, f) for p, f in zip(procs, files)]


def wait_all(handles, timeout: float) -> list[Path]:
    out = []
    for p, f in handles:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.terminate()
            p.wait()
        if f.exists() and f.stat().st_size:
            out.append(f)
    return out


def record_command(cmd: list[str], out: Path, *, rate: int = 200, env=None, cwd=None,
                   timeout: float = 300) -> tuple[subprocess.CompletedProcess, Path | None]:
    """Run cmd under py-spy (with its subprocesses); returns (its result, the raw profile)."""
    exe = py_spy()
    if not exe:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd,
                              timeout=timeout), None
    proc = subprocess.run([exe, "record", "--rate", str(rate), "--format", "raw", "-o", str(out),
                           "--subprocesses", "--", *cmd], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)
    return proc, (out if out.exists() else None)


def _frame(raw: str) -> str:
    m = _FRAME.match(raw.strip())
    if not m:
        return raw.strip()
    return f"{_short(m.group('file'))}:{m.group('fn')}"


_STDLIB = re.compile(r"/python3\.\d+/")


def _short(file: str) -> str:
    """webhook/serve/app.py, flask/app.py, stdlib logging/__init__.py: a path a reader can place."""
    if "/site-packages/" in file:
        return file.split("/site-packages/")[-1]
    for mark in ("webhook/", "benchmarks/"):
        if file.startswith(mark) or f"/{mark}" in file:
            return mark + file.split(mark, 1)[1] if not file.startswith(mark) else file
    m = _STDLIB.search(file)
    return file[m.end():] if m else file.rsplit("/", 1)[-1]


def summarise(files: list[Path]) -> dict:
    """{'samples': n, 'inclusive': Counter(frame -> samples), 'self': Counter(...)}"""
    inclusive, own = Counter(), Counter()
    total = 0
    for path in files:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [_frame(x) for x in stack.split(";") if x and not x.startswith("process ")
                      and not x.startswith("thread ")]
            if not frames:
                continue
            total += n
            for fr in set(frames):
                inclusive[fr] += n
            own[frames[-1]] += n
    return {"samples": total, "inclusive": inclusive, "self": own}


def top(summary: dict, kind: str, n: int = 15, *, only: tuple[str, ...] = ()) -> list[tuple[str, float]]:
    total = summary["samples"] or 1
    items = [(k, v) for k, v in summary[kind].most_common()
             if not only or k.startswith(only)]
    return [(k, 100.0 * v / total) for k, v in items[:n]]
