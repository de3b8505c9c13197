"""Fixtures for the admission webhook: the real server under gunicorn over TLS, a client that
calls it exactly as kube-apiserver does, AdmissionReview and workload builders, a slow registry.

Import what a test module uses explicitly:
    from tests.builders.webhooks import server, apiserver  # noqa: F401

The caller imitates k8s.io/apiserver's webhook client: TLS with server name
`<service>.<namespace>.svc` verified against the generated CA, no client certificate, HTTP/1.1
with keep-alive and TCP_NODELAY (Go's default), `POST /validate?timeout=10s` with
`User-Agent: kube-apiserver-admission`, `Content-Type: application/json`,
`Accept-Encoding: gzip`.
"""
from __future__ import annotations

import copy
import http.client
import http.server
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from tests import builders
from tests.builders import imagebuild

REPO = builders.REPO
SERVICE, NAMESPACE = "scapgate", "scapgate"
SERVER_NAME = f"{SERVICE}.{NAMESPACE}.svc"
READY_DEADLINE_S = 60.0
HEADERS = {"User-Agent": "kube-apiserver-admission", "Content-Type": "application/json",
           "Accept-Encoding": "gzip"}
STANDARD = imagebuild.STANDARD_PROFILE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the caller: kube-apiserver's webhook client ------------------------------------------------

class _Conn(http.client.HTTPSConnection):
    """Dial 127.0.0.1:port but verify the certificate for the Service's DNS name."""

    def __init__(self, port: int, context: ssl.SSLContext, server_name: str, timeout: float):
        super().__init__(server_name, port, context=context, timeout=timeout)
        self._port, self._ctx, self._name = port, context, server_name

    def connect(self):
        sock = socket.create_connection(("127.0.0.1", self._port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self._name)


class ApiServer:
    """One kept-alive HTTPS connection, reused like kube-apiserver's transport."""

    def __init__(self, port: int, ca: str, *, server_name: str = SERVER_NAME,
                 timeout: float = 40.0):
        self.port, self.server_name, self.timeout = port, server_name, timeout
        self.context = ssl.create_default_context(cafile=ca)   # verifies chain and hostname
        self.context.set_alpn_protocols(["http/1.1"])
        self.conn: _Conn | None = None

    def _connection(self) -> _Conn:
        if self.conn is None:
            self.conn = _Conn(self.port, self.context, self.server_name, self.timeout)
        return self.conn

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict, bytes]:
        """Send on the kept-alive connection; reconnect once if the server closed it idle."""
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers or {})
                resp = conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.close()
                return resp.status, dict(resp.getheaders()), data
            except (ConnectionError, http.client.RemoteDisconnected,
                    http.client.CannotSendRequest):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def review(self, review: dict, *, timeout: str = "10s") -> dict:
        """POST /validate?timeout=… and return the AdmissionReview; any non-200 fails."""
        status, headers, data = self.request("POST", f"/validate?timeout={timeout}",
                                             json.dumps(review).encode(), HEADERS)
        assert status == 200, (status, data[:500])
        assert headers.get("Content-Type", "").startswith("application/json")
        resp = json.loads(data)
        assert_echo(review, resp)
        return resp

    def peer_certificate(self) -> bytes:
        """DER of the certificate the current connection was served."""
        self._connection()
        if self.conn.sock is None:
            self.conn.connect()
        return self.conn.sock.getpeercert(binary_form=True)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# -- AdmissionReview and workload builders ------------------------------------------------------

KINDS = {   # kind -> (group, version, resource)
    "Pod": ("", "v1", "pods"),
    "Deployment": ("apps", "v1", "deployments"),
    "ReplicaSet": ("apps", "v1", "replicasets"),
    "StatefulSet": ("apps", "v1", "statefulsets"),
    "DaemonSet": ("apps", "v1", "daemonsets"),
    "Job": ("batch", "v1", "jobs"),
    "CronJob": ("batch", "v1", "cronjobs"),
    "ReplicationController": ("", "v1", "replicationcontrollers"),
    "ConfigMap": ("", "v1", "configmaps"),
}
TEMPLATE_PREFIX = {"Pod": "spec", "CronJob": "spec.jobTemplate.spec.template.spec"}


def image_path(kind: str, lst: str = "containers", index: int = 0) -> str:
    """The field path the webhook must name, e.g. spec.template.spec.containers[0].image."""
    return f"{TEMPLATE_PREFIX.get(kind, 'spec.template.spec')}.{lst}[{index}].image"


def pod_spec(containers=(), init=(), ephemeral=()) -> dict:
    spec: dict = {"containers": [{"name": f"c{i}", "image": str(im)}
                                 for i, im in enumerate(containers)]}
    if init:
        spec["initContainers"] = [{"name": f"i{i}", "image": str(im)} for i, im in enumerate(init)]
    if ephemeral:
        spec["ephemeralContainers"] = [{"name": f"e{i}", "image": str(im),
                                        "targetContainerName": "c0"}
                                       for i, im in enumerate(ephemeral)]
    return spec


def workload(kind: str, spec: dict, *, name: str = "web", namespace: str = "team-a",
             annotations: dict | None = None) -> dict:
    """A minimal object of this kind running the given pod spec."""
    group, version, _ = KINDS[kind]
    meta = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = annotations
    obj = {"apiVersion": f"{group}/{version}" if group else version, "kind": kind, "metadata": meta}
    template = {"metadata": {"labels": {"app": name}}, "spec": copy.deepcopy(spec)}
    if kind == "Pod":
        obj["spec"] = copy.deepcopy(spec)
    elif kind == "CronJob":
        obj["spec"] = {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template}}}
    elif kind == "ConfigMap":
        obj["data"] = {"image": "not a workload"}
    else:
        obj["spec"] = {"selector": {"matchLabels": {"app": name}}, "template": template}
    return obj


def make_review(obj: dict | None, *, kind: str | None = None, operation: str = "CREATE",
                old: dict | None = None, namespace: str | None = None, sub: str = "",
                dry_run: bool = False, user: str = "alice", groups=("system:authenticated",),
                group: str | None = None, uid: str | None = None) -> dict:
    """An admission.k8s.io/v1 AdmissionReview with every field kube-apiserver sends."""
    kind = kind or (obj or old or {}).get("kind", "Pod")
    g, version, resource = KINDS.get(kind, ("example.com", "v1", kind.lower() + "s"))
    g = g if group is None else group
    meta = (obj or old or {}).get("metadata", {})
    gvk = {"group": g, "version": version, "kind": kind}
    gvr = {"group": g, "version": version, "resource": resource}
    request = {
        "uid": uid or str(uuid.uuid4()), "kind": gvk, "resource": gvr, "requestKind": gvk,
        "requestResource": gvr, "name": meta.get("name", ""),
        "namespace": namespace or meta.get("namespace", "team-a"), "operation": operation,
        "userInfo": {"username": user, "groups": list(groups)},
        "object": obj, "oldObject": old, "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": f"{operation.title()}Options"},
    }
    if sub:
        request["subResource"] = sub
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def denial(resp: dict) -> str:
    return resp["response"].get("status", {}).get("message", "")


def assert_echo(review: dict, resp: dict) -> None:
    """Every answer is an admission.k8s.io/v1 AdmissionReview echoing the request's uid."""
    assert resp["apiVersion"] == "admission.k8s.io/v1"
    assert resp["kind"] == "AdmissionReview"
    assert resp["response"]["uid"] == review["request"]["uid"]


# -- policies --------------------------------------------------------------------------------

def policy_doc(name: str, *, namespaces=("*",), default: bool = False, datastream: str,
               enforcement: str = "enforce", actions: dict | None = None, priority: int = 10,
               exclude=(), break_glass_users=(), max_scan_age: str = "7d",
               deny_severity: str = "medium") -> dict:
    """An ImagePolicy document with the standard profile of the Debian 12 datastream."""
    return {"apiVersion": "scapgate.io/v1", "kind": "ImagePolicy",
            "metadata": {"name": name, "owner": "platform-security",
                         "description": f"test policy {name}"},
            "spec": {"default": default, "priority": priority,
                     "match": {"namespaces": list(namespaces), "excludeNamespaces": list(exclude)},
                     "content": {"datastream": datastream, "profile": STANDARD},
                     "rules": {"denySeverity": deny_severity}, "enforcement": enforcement,
                     "actions": {"pending": "deny", "error": "deny", "stale": "decide",
                                 **(actions or {})},
                     "maxScanAge": max_scan_age, "waivers": [],
                     "breakGlass": {"users": list(break_glass_users), "groups": []}}}


def write_policies(directory: Path, datastream: str) -> Path:
    """The policy set the test server runs: the repository's default policy for most
    namespaces, plus one namespace per mode and action under test."""
    directory.mkdir(parents=True, exist_ok=True)
    default = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())  # as shipped
    docs = {
        "default": default,
        "warn": policy_doc("warn", namespaces=["team-warn"], enforcement="warn",
                           datastream=datastream),
        "audit": policy_doc("audit", namespaces=["team-audit"], enforcement="audit",
                            datastream=datastream),
        "lenient": policy_doc("lenient", namespaces=["team-lenient"], datastream=datastream,
                              actions={"pending": "warn", "error": "warn",
                                       "unsupported": "deny"}),
        "glass": policy_doc("glass", namespaces=["team-glass"], datastream=datastream,
                            break_glass_users=["oncall"]),
    }
    for name, doc in docs.items():
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return directory


# -- the server under test -------------------------------------------------------------------

class Server:
    """`scapgate serve` as a subprocess: it execs gunicorn, so the pid is gunicorn's master."""

    def __init__(self, workdir: Path, *, policy_dir: Path, certs: Path, env: dict | None = None,
                 workers: int = 2):
        self.workdir, self.policy_dir, self.certs = workdir, policy_dir, certs
        self.port = free_port()
        self.state = workdir / "state"
        self.log_path = workdir / "server.log"
        self.extra_env, self.workers = env or {}, workers
        self.proc: subprocess.Popen | None = None

    @property
    def ca(self) -> str:
        return str(self.certs / "ca.crt")

    def start(self) -> "Server":
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCAPGATE_")
               and k != "PROMETHEUS_MULTIPROC_DIR"}
        env.update({"SCAPGATE_CONTENT_DIR": str(imagebuild.content_dir()),
                    "SCAPGATE_WORKERS": "2", "PYTHONUNBUFFERED": "1",
                    "SCAPGATE_CVE_FEEDS": "off",      # never the vendors' servers from tests
                    **self.extra_env})
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "scapgate"), "serve", "--bind", f"127.0.0.1:{self.port}",
             "--cert", str(self.certs / "tls.crt"), "--key", str(self.certs / "tls.key"),
             "--policy", str(self.policy_dir), "--state-dir", str(self.state),
             "--workers", str(self.workers)],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Poll /healthz until it answers over TLS, within a bounded deadline."""
        context = ssl.create_default_context(cafile=self.ca)
        deadline = time.monotonic() + READY_DEADLINE_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"scapgate serve exited {self.proc.returncode}:\n"
                                   f"{self.log()[-4000:]}")
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{self.port}/healthz",
                                            context=context, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"scapgate serve not ready after {READY_DEADLINE_S} s:\n"
                           f"{self.log()[-4000:]}")

    def client(self, **kw) -> ApiServer:
        return ApiServer(self.port, self.ca, **kw)

    def get(self, path: str) -> tuple[int, bytes, str]:
        context = ssl.create_default_context(cafile=self.ca)
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{self.port}{path}", context=context,
                                        timeout=60) as r:
                return r.status, r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers.get("Content-Type", "")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def decisions(self, uid: str | None = None) -> list[dict]:
        """The JSON decision lines in the server's log (for one uid when given)."""
        out = []
        for line in self.log().splitlines():
            if line.startswith("{") and '"admission.decided"' in line:
                rec = json.loads(line)
                if uid is None or rec.get("uid") == uid:
                    out.append(rec)
        return out

    def decision(self, uid: str, timeout_s: float = 10.0) -> dict:
        """The one decision line for uid (written just after the answer, so poll briefly)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.decisions(uid)
            if found or time.monotonic() > deadline:
                assert len(found) == 1, f"{len(found)} decision lines for uid {uid}"
                return found[0]
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM gunicorn's master (ours); it stops its workers and the scan workers."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()


def until(what: str, fn, deadline_s: float = 120.0):
    """Poll fn() until it returns a truthy value (and return it), within a bounded deadline:
    for what the server does after its answer (scans, feed updates, inventory passes)."""
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {deadline_s} s (last: {last})")


def make_certs(out: Path, *extra: str) -> Path:
    """`scapgate certs`, as `make run` calls it."""
    subprocess.run([str(REPO / ".venv" / "bin" / "scapgate"), "certs", "--service", SERVICE,
                    "--namespace", NAMESPACE, "--out", str(out), *extra],
                   check=True, capture_output=True, timeout=60)
    return out


# -- a slow registry: a real slow scan ------------------------------------------------------

class SlowRegistry:
    """An HTTP proxy in front of a registry that holds every blob download for `delay_s`:
    manifests (tag resolution) stay fast, the scan's fetch is slow — a real slow scan."""

    def __init__(self, upstream: str, delay_s: float):
        self.upstream, self.delay_s = upstream, delay_s
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                self._forward()

            def do_HEAD(self):
                self._forward(head=True)

            def _forward(self, head: bool = False):
                if "/blobs/" in self.path:
                    time.sleep(proxy.delay_s)
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                conn.putrequest(self.command, self.path, skip_accept_encoding=True)
                for k, v in self.headers.items():            # repeated Accept headers too
                    if k.lower() not in ("host", "connection"):
                        conn.putheader(k, v)
                conn.endheaders()
                resp = conn.getresponse()
                body = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)
                conn.close()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> "SlowRegistry":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def unique_image(registry, workdir: Path, *, bad: bool = False, repo: str = "unique") -> str:
    """Push a synthetic Debian image no one has scanned yet (a file makes its digest new)."""
    token = uuid.uuid4().hex[:12]
    entries = imagebuild.synthetic_debian_entries(bad=bad) + [
        imagebuild.file("etc/scapgate-test-id", token + "\n")]
    layout = workdir / f"oci-{token}"
    imagebuild.write_image(layout, token, [imagebuild.layer_from_entries(entries)])
    return registry.push(layout, token, f"{repo}/{'bad' if bad else 'good'}-{token}:1")


# -- pytest fixtures -----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def slow_registry(registry):
    """The session registry behind a proxy that makes every scan take ≥ 10 s."""
    proxy = SlowRegistry(registry.host, delay_s=10.0).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="session")
def webhook_policies(tmp_path_factory, scap_datastream) -> Path:
    return write_policies(tmp_path_factory.mktemp("policies"), str(scap_datastream))


@pytest.fixture(scope="session")
def server(tmp_path_factory, registry, slow_registry, webhook_policies, images) -> Server:
    """The webhook as in production: `scapgate serve` → gunicorn gthread, 2 workers, TLS,
    embedded scan workers, SQLite store; trusting the test registries as insecure."""
    work = tmp_path_factory.mktemp("webhook")
    certs = make_certs(work / "certs")
    srv = Server(work, policy_dir=webhook_policies, certs=certs, env={
        "SCAPGATE_INSECURE_REGISTRIES": f"{registry.host},{slow_registry.host}"})
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def apiserver(server) -> ApiServer:
    """A fresh kube-apiserver-like client (its own kept-alive connection) per test."""
    client = server.client()
    yield client
    client.close()


def standalone_server(tmp_path: Path, policy_dir: Path, **env) -> Server:
    """A server of a test's own (certificate rotation, scanner down): no scan workers."""
    certs = make_certs(tmp_path / "certs")
    return Server(tmp_path, policy_dir=policy_dir, certs=certs, workers=1,
                  env={"SCAPGATE_EMBEDDED_WORKERS": "false", **env}).start()



# -- our own seams, for unit tests of the decision -------------------------------------------

class FakeRegistry:
    """Registry.resolve by repository: (platform digest, top digest), or an exception."""

    def __init__(self, answers: dict | None = None, delay_s: float = 0.0):
        self.answers = answers or {}
        self.delay_s = delay_s
        self.calls: list[str] = []

    def resolve_all(self, ref, platforms, *, docker_config=None):
        """An answer per platform: {repo: {"linux/amd64": digest, …}} (else as resolve)."""
        answer = self.answers.get(ref.repository.rsplit("/", 1)[-1])
        if isinstance(answer, dict):
            self.calls.append(str(ref))
            found = tuple((p, answer[p]) for p in platforms if p in answer)
            if not found:
                from webhook.scan.registry import PlatformMissing
                raise PlatformMissing(f"image {ref} offers none of the platforms")
            return found, "sha256:" + "f" * 64
        digest, top = self.resolve(ref, docker_config=docker_config)
        return (("", digest),), top

    def resolve(self, ref, *, docker_config=None, platform=None):
        answer = self.answers.get(ref.repository.rsplit("/", 1)[-1])
        if isinstance(answer, dict):
            digests, top = self.resolve_all(ref, (platform or "linux/amd64",))
            return digests[0][1], top
        self.calls.append(str(ref))
        if self.delay_s:
            time.sleep(self.delay_s)
        answer = self.answers.get(ref.repository.rsplit("/", 1)[-1])
        if answer is None:
            from webhook.scan.registry import NotFound
            raise NotFound(f"image {ref} not found: manifest unknown")
        if isinstance(answer, Exception):
            raise answer
        return (answer, answer) if isinstance(answer, str) else answer


class FakePipeline:
    """Only what admission needs from the pipeline: the scan key."""

    def key(self, digest, content):
        from webhook.scan.results import ScanKey
        return ScanKey(digest=digest, content_sha256=content.digest,
                       profile=",".join(s.profile for _, s in content.entries),
                       tailoring_sha256="", scanner_version="test-scanner")


class FakeService:
    """scans.ScanService at our seam: results by key id, submitted jobs recorded.

    `finish(job)` (optional) returns the ScanResult a submitted scan produces; it arrives
    after `scan_s` seconds of a wait, so tests choose inside or beyond the budget."""

    def __init__(self, *, finish=None, scan_s: float = 0.0, full: bool = False,
                 down: bool = False):
        self.results: dict = {}          # the shared store
        self.l1: dict = {}               # this process's copy of final results, as scans.py
        self.jobs: list = []
        self.finish, self.scan_s, self.full, self.down = finish, scan_s, full, down
        self.forgotten = 0

    def put(self, result) -> None:
        self.results[result.key.id()] = result

    def _check(self):
        if self.down:
            from webhook.store.base import StoreUnavailable
            raise StoreUnavailable("redis://127.0.0.1:1: connection refused")

    def lookup(self, key):
        self._check()
        hit = self.l1.get(key.id()) or self.results.get(key.id())
        if hit is not None and (hit.state == "done" or hit.permanent):
            self.l1[key.id()] = hit
        return hit

    def submit(self, job):
        self._check()
        if self.full:
            return "full"
        self.jobs.append(job)
        if self.finish and self.scan_s <= 0:
            self.put(self.finish(job))
        return "queued"

    def resubmit(self, job, *, after):
        return self.submit(job)

    def wait(self, key, timeout_s):
        self._check()
        hit = self.results.get(key.id())
        if hit is not None or not self.finish:
            time.sleep(min(timeout_s, 0.01) if hit is None else 0)
            return hit
        if self.scan_s > timeout_s:
            time.sleep(timeout_s)
            return None
        time.sleep(self.scan_s)
        job = next(j for j in self.jobs if j.key == key)
        self.put(self.finish(job))
        return self.results[key.id()]

    def forget(self, key):
        self.forgotten += 1
        self.l1.pop(key.id(), None)

    def depth(self):
        return len(self.jobs)

    def healthy(self):
        return not self.down


__all__ = ["ApiServer", "FakePipeline", "FakeRegistry", "FakeService", "Server", "SlowRegistry",
           "apiserver", "assert_echo", "denial", "image_path", "make_certs", "make_review",
           "pod_spec", "policy_doc", "server", "slow_registry", "standalone_server",
           "unique_image", "until", "webhook_policies", "workload", "write_policies"]
