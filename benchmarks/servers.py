"""The two servers of the fast-path comparison, started by us on free loopback ports.

scapgate: `scapgate serve` exactly as `make run` starts it (gunicorn via webhook/gunicorn_conf,
TLS, policies/, the default worker and thread counts, embedded scan workers), in a throwaway
state directory. baseline: the same gunicorn config module serving benchmarks.baseline_app.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import time
import uuid
from pathlib import Path

from .common import PY, REPO, SCAPGATE, Proc, children, cmdline, cpu_seconds, free_port, run
from .loadgen import HEADERS, PATH, SERVER_NAME

READY_S = 60.0


def make_certs(out: Path) -> Path:
    """`scapgate certs` as `make run` calls it."""
    run([SCAPGATE, "certs", "--service", "scapgate", "--namespace", "scapgate", "--out", str(out)],
        timeout=60)
    return out


def _env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SCAPGATE_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(extra)
    return env


class Server:
    """A gunicorn master we started (scapgate serve execs gunicorn, so our pid is the master)."""

    def __init__(self, name: str, proc: Proc, port: int, certs: Path, log_path: Path):
        self.name, self.proc, self.port, self.certs, self.log_path = name, proc, port, certs, log_path

    @property
    def ca(self) -> str:
        return str(self.certs / "ca.crt")

    def wait_ready(self) -> "Server":
        ctx = ssl.create_default_context(cafile=self.ca)
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.proc.tail()}")
            try:
                conn = Client(self.port, self.ca)
                status, _ = conn.request("GET", "/healthz")
                conn.close()
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {READY_S} s:\n{self.proc.tail()}")

    def http_workers(self) -> list[int]:
        """gunicorn worker pids (not the scan workers the master also started)."""
        return [p for p in children(self.proc.pid) if "webhook worker" not in cmdline(p)]

    def cpu(self) -> float:
        """CPU seconds used so far by the gunicorn workers (the request-serving processes)."""
        return cpu_seconds(self.http_workers())

    def scan_workers(self) -> list[int]:
        return [p for p in children(self.proc.pid) if "webhook worker" in cmdline(p)]

    def truncate_log(self) -> None:
        os.truncate(self.log_path, 0)

    def decisions(self) -> list[dict]:
        out = []
        with open(self.log_path, errors="replace") as fh:
            for line in fh:
                if line.startswith("{") and '"admission.decided"' in line:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
        return out

    def stop(self) -> None:
        self.proc.stop()


def start_scapgate(work: Path, certs: Path, *, policy: Path, env: dict | None = None,
                   workers: int | None = None, threads: int | None = None) -> Server:
    port = free_port()
    log_path = work / "scapgate.log"
    argv = [SCAPGATE, "serve", "--bind", f"127.0.0.1:{port}", "--cert", str(certs / "tls.crt"),
            "--key", str(certs / "tls.key"), "--policy", str(policy),
            "--state-dir", str(work / "state")]
    if workers:
        argv += ["--workers", str(workers)]
    if threads:
        argv += ["--threads", str(threads)]
    proc = Proc(argv, env=_env(env or {}), log_path=log_path)
    return Server("scapgate", proc, port, certs, log_path).wait_ready()


def start_gunicorn_app(name: str, app: str, work: Path, certs: Path, *,
                       env: dict | None = None, cwd: Path | None = None,
                       config: str = "python:webhook.serve.gunicorn_conf") -> Server:
    """Any app under scapgate's own gunicorn config (the baseline, or a scapgate variant).
    `python -m` puts the working directory first on sys.path: cwd picks which tree's
    `webhook` package (and gunicorn config, named by `config` in that tree) is served."""
    port = free_port()
    log_path = work / f"{name}.log"
    (work / f"{name}-state").mkdir(parents=True, exist_ok=True)
    settings = {"SCAPGATE_BIND": f"127.0.0.1:{port}", "SCAPGATE_TLS_CERT": str(certs / "tls.crt"),
                "SCAPGATE_TLS_KEY": str(certs / "tls.key"),
                "SCAPGATE_STATE_DIR": str(work / f"{name}-state"),
                "SCAPGATE_EMBEDDED_WORKERS": "false"}
    proc = Proc([PY, "-m", "gunicorn", "--config", config, app],
                env=_env({**settings, **(env or {})}), log_path=log_path, cwd=cwd or REPO)
    return Server(name, proc, port, certs, log_path).wait_ready()


class Client:
    """One kept-alive HTTPS connection, verifying the Service name like kube-apiserver."""

    def __init__(self, port: int, ca: str, timeout: float = 40.0):
        self.ctx = ssl.create_default_context(cafile=ca)
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.port, self.timeout = port, timeout
        self.conn: http.client.HTTPSConnection | None = None

    def _connect(self) -> http.client.HTTPSConnection:
        if self.conn is None:
            conn = http.client.HTTPSConnection(SERVER_NAME, self.port, context=self.ctx,
                                               timeout=self.timeout)
            sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sock = self.ctx.wrap_socket(sock, server_hostname=SERVER_NAME)
            self.conn = conn
        return self.conn

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = self._connect()
        conn.request(method, path, body=body, headers=HEADERS if body else {})
        resp = conn.getresponse()
        return resp.status, resp.read()

    def review(self, body: bytes, timeout: str = "10s") -> dict:
        doc = json.loads(body)
        doc["request"]["uid"] = str(uuid.uuid4())
        status, data = self.request("POST", PATH.replace("10s", timeout), json.dumps(doc).encode())
        if status != 200:
            raise RuntimeError(f"review answered {status}: {data[:300]!r}")
        out = json.loads(data)
        if out["response"]["uid"] != doc["request"]["uid"]:
            raise RuntimeError("uid not echoed")
        return out

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def warm(server: Server, body: bytes, *, deadline_s: float = 180.0) -> dict:
    """Post the review until every image has a result (scans run in the scan workers);
    returns the last response."""
    client = Client(server.port, server.ca)
    deadline = time.monotonic() + deadline_s
    try:
        while True:
            resp = client.review(body, timeout="30s")["response"]
            verdict = resp.get("auditAnnotations", {}).get("verdict")
            if verdict not in (None, "pending"):
                return resp
            if time.monotonic() > deadline:
                raise RuntimeError(f"images never scanned: {resp}")
            time.sleep(0.5)
    finally:
        client.close()
