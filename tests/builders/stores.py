"""Fixtures for the shared store: a real redis-server per test, and `store` run against both.

Import the fixtures into a test module (`from tests.builders.stores import redis_server, store`).
Debian's redis-server is started on a free port with its own tmp dir and no persistence, waited
for by PING with a deadline, and stopped afterwards — never a Redis the machine already runs.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
import redis

from webhook.store.base import Store
from webhook.store.redis_store import RedisStore
from webhook.store.sqlite import SQLiteStore

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_DEADLINE_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], object], deadline_s: float, what: str,
             interval_s: float = 0.02):
    """Poll a condition until it is truthy; fail the test with `what` past the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s:.1f} s waiting for {what}")
        time.sleep(interval_s)


class RedisServer:
    """One redis-server process we own: start, stop (as an outage) and start again."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        assert self.proc is None, "already running"
        log = open(self.dir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no",
             "--maxmemory-policy", "noeviction"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5)
        try:
            wait_for(lambda: self._pong(client), START_DEADLINE_S,
                     f"redis-server on port {self.port} (log: {self.dir / 'redis.log'})")
        except AssertionError:
            self.stop()
            raise
        finally:
            client.close()
        return self

    def _pong(self, client: redis.Redis) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited with {self.proc.returncode}: "
                                 f"{(self.dir / 'redis.log').read_text()[-800:]}")
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def redis_server(tmp_path):
    if not os.access(REDIS_SERVER, os.X_OK):
        pytest.fail("redis-server is missing: run `make deps` (scripts/install-deps.sh)")
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


def make_store(kind: str, request, tmp_path: Path) -> Store:
    if kind == "sqlite":
        return SQLiteStore(str(tmp_path / "state" / "scapgate.db"))
    return RedisStore(request.getfixturevalue("redis_server").url)


@pytest.fixture(params=["sqlite", "redis"])
def store_kind(request) -> str:
    return request.param


@pytest.fixture
def store(store_kind, request, tmp_path):
    """The same tests against the SQLite file and a real Redis."""
    s = make_store(store_kind, request, tmp_path)
    try:
        yield s
    finally:
        s.close()


# ---------------------------------------------------------------------- scans over the store

STANDARD_PROFILE = "xccdf_org.ssgproject.content_profile_standard"


class ScanEnv:
    """Settings, a real pipeline and SCAP content for scans of the registry fixture's images."""

    def __init__(self, settings, datastream: Path):
        from webhook.scan import content as content_mod
        from webhook.scan import engine
        self.settings = settings
        self.datastream = datastream
        self.pipeline = engine.build_pipeline(settings)
        self.content = content_mod.single(str(datastream), STANDARD_PROFILE)

    def key(self, image):
        return self.pipeline.key(image.digest, self.content)

    def job(self, image, *, digest: str | None = None):
        from webhook.store.scans import Job
        digest = digest or image.digest
        key = self.pipeline.key(digest, self.content)
        return Job(key, image=f"{image.repository}@{digest}", content=self.content)


def scan_settings(tmp_path: Path, registry, *, store: str = "", **overrides):
    from webhook.config import Settings
    s = Settings(state_dir=str(tmp_path / "state"), store=store,
                 insecure_registries=(registry.host,), scratch_dir=str(tmp_path / "scratch"),
                 workers=2, lease_s=10.0, scan_attempts=3, retry_backoff_s=0.05)
    for k, v in overrides.items():
        setattr(s, k, v)
    return s


@pytest.fixture
def scan_env(store_kind, request, tmp_path, registry, scap_datastream) -> ScanEnv:
    """A ScanEnv whose Settings.store is the parametrised store (SQLite file or real Redis)."""
    url = ("" if store_kind == "sqlite"
           else request.getfixturevalue("redis_server").url)
    return ScanEnv(scan_settings(tmp_path, registry, store=url), scap_datastream)


class running_worker:
    """An in-process Worker on its own thread (for tests that need no process boundary)."""

    def __init__(self, store, pipeline, **kwargs):
        from webhook.store.worker import Worker
        kwargs.setdefault("poll_s", 0.02)
        self.worker = Worker(store, pipeline, **kwargs)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.worker.run, args=(self.stop,),
                                       kwargs={"grace_s": 30}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self.worker

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "worker did not stop"


class WorkerProcess:
    """A real `scapgate worker` process in its own session, so a test can SIGKILL it and
    everything it started (skopeo, umoci, oscap) as a pod kill would."""

    def __init__(self, settings, log_path: Path, *, concurrency: int = 1, env: dict | None = None):
        import sys

        from webhook.store.worker import settings_env
        self.log_path = log_path
        log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "webhook", "worker", "--concurrency", str(concurrency)],
            env={**os.environ, **settings_env(settings), **(env or {})}, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    @property
    def owner(self) -> str:
        return f"{socket.gethostname()}:{self.proc.pid}"

    def kill(self) -> None:
        """SIGKILL the worker and its children (its process group)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.kill()
        try:                                  # leftovers of a killed worker's scan
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]
