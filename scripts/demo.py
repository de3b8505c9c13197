"""`make demo`: the gate end to end on this machine, in about a minute.

Starts a local registry holding a passing and a failing Debian 12 image, starts the webhook
(`scapgate serve`: gunicorn over TLS, the repository's policies/), and sends it the
AdmissionReviews kube-apiserver would send for a Pod and a Deployment of each image, over TLS
verified the way kube-apiserver verifies it. Prints each decision, the denial's reasons, and
where the scan report is; then stops everything it started.

    .venv/bin/python -m scripts.demo [--debian] [--keep-running]

--debian uses real debootstrap'd Debian 12 images (root, about a minute the first time, then
cached) instead of the small synthetic ones, whose verdicts are the same.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.builders import distros  # noqa: E402  (RPM-based and Alpine-like test images)
from tests.builders import imagebuild  # noqa: E402  (builds OCI images byte by byte, no engine needed)
from tests.builders.registry import start_registry  # noqa: E402

CERTS = REPO / ".state" / "certs"
SERVICE, NAMESPACE = "scapgate", "scapgate"      # what `make certs` made the certificate for
OUT = REPO / ".state" / "demo"
IMAGES = {"passing": "demo/debian-hardened:12", "failing": "demo/debian-telnetd:12",
          "rpm-failing": "demo/ubi-telnet:9", "alpine": "demo/alpine:3.20"}


def say(text: str = "", indent: int = 0) -> None:
    for line in text.splitlines() or [""]:
        print(" " * indent + line, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- what a cluster would have: a registry with images ------------------------------------

def push_images(registry, work: Path, debian: bool) -> dict[str, str]:
    """The passing and the failing image, pushed; returns kind -> reference."""
    if debian:
        built = imagebuild.debootstrap_roots(("good", "bad"))
        sources = {"passing": (built["good"].layout, built["good"].tag),
                   "failing": (built["bad"].layout, built["bad"].tag)}
    else:
        built = imagebuild.build_synthetic_images(work / "oci")
        sources = {"passing": (built["good"].layout, "good"),
                   "failing": (built["bad"].layout, "bad")}
    rpm, alpine = distros.rpm_root("bad"), distros.alpine_root()   # rpmbuild + rpm --root
    sources["rpm-failing"] = (rpm.layout, rpm.tag)
    sources["alpine"] = (alpine.layout, alpine.tag)
    return {kind: registry.push(layout, tag, IMAGES[kind])
            for kind, (layout, tag) in sources.items()}


# -- the webhook ----------------------------------------------------------------------------

def console_token() -> Path:
    """.state/console-token, as `make run` keeps it: created when missing, mode 0600."""
    path = REPO / ".state" / "console-token"
    if not path.exists():
        import secrets
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    return path


class Webhook:
    """`scapgate serve` in its own process group, stopped with SIGTERM like a pod."""

    def __init__(self, state: Path, registry_host: str, log: Path):
        self.port = free_port()
        self.console_port = free_port()
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_bytes(b"")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCAPGATE_")}
        env.update({"SCAPGATE_INSECURE_REGISTRIES": registry_host, "PYTHONUNBUFFERED": "1"})
        state.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "scapgate"), "serve", "--bind", f"127.0.0.1:{self.port}",
             "--cert", str(CERTS / "tls.crt"), "--key", str(CERTS / "tls.key"),
             "--policy", str(REPO / "policies"), "--state-dir", str(state),
             "--console-bind", f"127.0.0.1:{self.console_port}",
             "--console-token-file", str(console_token())],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, client: "ApiServerClient", deadline_s: float = 60) -> None:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"scapgate serve exited:\n{self.log.read_text()[-3000:]}")
            try:
                if client.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"scapgate serve not ready in {deadline_s:.0f} s:\n"
                         f"{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


# -- the caller: what kube-apiserver does -----------------------------------------------------

class ApiServerClient:
    """TLS to 127.0.0.1 with server name <service>.<namespace>.svc verified against the CA
    (the webhook's caBundle); POST /validate?timeout=10s with kube-apiserver's headers."""

    def __init__(self, port: int):
        self.port = port
        self.context = ssl.create_default_context(cafile=str(CERTS / "ca.crt"))
        self.server_name = f"{SERVICE}.{NAMESPACE}.svc"

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict | None = None, timeout: float = 30) -> tuple[int, bytes]:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout)
        conn = http.client.HTTPSConnection(self.server_name, self.port, timeout=timeout)
        conn.sock = self.context.wrap_socket(sock, server_hostname=self.server_name)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, bytes]:
        return self._request("GET", path)

    def review(self, obj: dict, resource: str, group: str = "") -> dict:
        gvk = {"group": group, "version": "v1", "kind": obj["kind"]}
        gvr = {"group": group, "version": "v1", "resource": resource}
        review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": str(uuid.uuid4()), "kind": gvk, "resource": gvr, "requestKind": gvk,
            "requestResource": gvr, "name": obj["metadata"]["name"],
            "namespace": obj["metadata"]["namespace"], "operation": "CREATE",
            "userInfo": {"username": "newcomer@example.com", "groups": ["system:authenticated"]},
            "object": obj, "oldObject": None, "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}}}
        status, body = self._request(
            "POST", "/validate?timeout=10s", json.dumps(review).encode(),
            {"User-Agent": "kube-apiserver-admission", "Content-Type": "application/json"})
        if status != 200:
            raise SystemExit(f"the webhook answered {status}: {body[:300]!r}")
        return json.loads(body)["response"]


def pod(name: str, image: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"containers": [{"name": "app", "image": image}]}}


def deployment(name: str, image: str) -> dict:
    template = {"metadata": {"labels": {"app": name}}, "spec": pod(name, image)["spec"]}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                     "template": template}}


def admit(client: ApiServerClient, obj: dict) -> tuple[dict, float]:
    """One admission as a user sees it; a "scan in progress" answer is retried the way
    kubectl users and controllers retry."""
    resource, group = ("pods", "") if obj["kind"] == "Pod" else ("deployments", "apps")
    t0 = time.monotonic()
    while True:
        resp = client.review(obj, resource, group)
        if resp.get("auditAnnotations", {}).get("verdict") != "pending":
            return resp, time.monotonic() - t0
        say(f"  … {obj['kind']}/{obj['metadata']['name']}: scan in progress, retrying")
        time.sleep(2)


# -- the show ---------------------------------------------------------------------------------

def show(client: ApiServerClient, refs: dict[str, str], webhook_name: str) -> str | None:
    say(f"kube-apiserver → POST /validate?timeout=10s  "
        f"(TLS name {client.server_name}, trusted via {CERTS / 'ca.crt'})")
    denied = None
    for kind in ("passing", "failing"):
        for build in (pod, deployment):
            resp = admit_and_say(client, build(f"web-{kind}", refs[kind]), refs[kind])
            if not resp["allowed"] and denied is None:
                denied = resp["status"]["message"]
    if denied:
        say()
        say("What the user sees (kubectl apply, or the ReplicaSet's event):")
        say(f'admission webhook "{webhook_name}" denied the request: {denied}', indent=2)
    say()
    say("Every image is judged with its own distribution's SCAP content:")
    for kind, what in (("rpm-failing", "RHEL 9-like (rpm), telnet-server, shadow 0666"),
                       ("alpine", "Alpine 3.20: no SCAP content exists for it")):
        resp = admit_and_say(client, pod(f"app-{kind}", refs[kind]), refs[kind], what)
        if not resp["allowed"]:
            say(f'admission webhook "{webhook_name}" denied the request: '
                f'{resp["status"]["message"]}', indent=4)
        for w in resp.get("warnings", []):
            say(f"Warning: {w}", indent=4)
    return denied


def admit_and_say(client: ApiServerClient, obj: dict, ref: str, what: str = "") -> dict:
    """One review, and its line: object, image, verdict, time, audit verdict."""
    resp, took = admit(client, obj)
    verdict = "ALLOWED" if resp["allowed"] else "DENIED "
    note = resp.get("auditAnnotations", {}).get("verdict", "") + (f"; {what}" if what else "")
    say(f"  {obj['kind'] + '/' + obj['metadata']['name']:<24} {ref:<42} "
        f"{verdict}  {took:5.2f} s  ({note})")
    return resp


def save_report(client: ApiServerClient, message: str) -> None:
    path = next((w for w in message.split() if w.startswith("/reports/")), None)
    if not path:
        say("(no report link in the denial)")
        return
    status, body = client.get(path)
    if status != 200:
        say(f"report: GET {path} answered {status}: {body[:200]!r}")
        return
    OUT.mkdir(parents=True, exist_ok=True)
    digest = path.split("/reports/")[1].split("?")[0]
    dest = OUT / f"report-{digest.split(':')[1][:12]}.html"
    dest.write_bytes(body)
    say()
    say(f"The full OpenSCAP report: GET {path} on the webhook")
    say(f"  saved to {dest.relative_to(REPO)} ({len(body) // 1024} KiB): open it in a browser")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--debian", action="store_true", help="real debootstrap Debian 12 images")
    p.add_argument("--keep-running", action="store_true",
                   help="leave registry and webhook up until Ctrl-C")
    args = p.parse_args(argv)
    if not (CERTS / "tls.crt").exists():     # what `make certs` does
        subprocess.run([str(REPO / ".venv" / "bin" / "scapgate"), "certs", "--service", SERVICE,
                        "--namespace", NAMESPACE, "--out", str(CERTS)], check=True,
                       capture_output=True, timeout=60)
    for tool in ("docker-registry", "skopeo", "umoci", "oscap"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: run `make deps` (or `make demo`)")
    work = Path(tempfile.mkdtemp(prefix="scapgate-demo-"))
    registry = webhook = None
    t0 = time.monotonic()
    try:
        say("scapgate demo")
        registry = start_registry(work / "registry")
        refs = push_images(registry, work, args.debian)
        say(f"  registry  {registry.url} (docker-registry) with")
        say(f"              {refs['passing']:<44} passes the SSG standard profile", 0)
        say(f"              {refs['failing']:<44} telnetd installed, /etc/shadow mode 0666", 0)
        webhook = Webhook(work / "state", registry.host, OUT / "serve.log")
        client = ApiServerClient(webhook.port)
        webhook.wait_ready(client)
        say(f"  webhook   https://127.0.0.1:{webhook.port}/validate "
            f"(scapgate serve, policies/; log {webhook.log.relative_to(REPO)})")
        say()
        denied = show(client, refs, "images.scapgate.io")
        if denied:
            save_report(client, denied)
        say()
        say(f"Done in {time.monotonic() - t0:.0f} s. "
            "The same verdict without a cluster, e.g. in CI:")
        say(f"SCAPGATE_INSECURE_REGISTRIES={registry.host} .venv/bin/scapgate scan "
            f"{refs['failing']}", indent=2)
        say()
        say(f"Console (the workloads admitted, the decisions denied): "
            f"https://127.0.0.1:{webhook.console_port}/")
        say(f"  token: {console_token().read_text().strip()}  "
            f"(from {console_token().relative_to(REPO)}; log in with it)", 0)
        if args.keep_running:
            say("Registry, webhook and console keep running; Ctrl-C stops them.")
            signal.pause()
        else:
            say("(make demo DEMO_ARGS=--keep-running leaves registry, webhook and console up "
                "to try them)")
        return 0 if denied else 1
    except KeyboardInterrupt:
        return 130
    finally:
        if webhook:
            webhook.stop()
        if registry:
            registry.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
