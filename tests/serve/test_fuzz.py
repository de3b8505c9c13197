"""Hostile requests: property-based fuzzing of the AdmissionReview body, and slow clients.

Properties, for any body: the answer is HTTP 200 with an AdmissionReview that echoes the uid
and decides (allowed true/false), or HTTP 400 with a JSON reason; never a 500, never a hang,
and never the fail-closed "could not decide" answer that app.py gives when admission.py raised
(that answer is safe, but it is a bug: a crafted object should get a reasoned denial).

The volume runs against create_app's Flask test client with the scan service and registry
swapped at our own seam (tests/webhook_fixtures.py fakes); a smaller run and the slow-client
test go to the real server: gunicorn gthread over TLS, as kube-apiserver calls it.
"""
from __future__ import annotations

import copy
import json
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.builders.webhooks import (  # noqa: F401
    FakePipeline,
    FakeRegistry,
    FakeService,
    apiserver,
    make_review,
    pod_spec,
    policy_doc,
    server,
    slow_registry,
    webhook_policies,
    workload,
)
from webhook import policy as policy_mod
from webhook.admission import review as review_mod
from webhook.config import Settings
from webhook.scan.results import RuleResult, ScanResult
from webhook.serve.app import create_app

GOOD_D, BAD_D = "sha256:" + "1" * 64, "sha256:" + "2" * 64
GOOD_IMG, BAD_IMG = "registry.test/team/good:1", "registry.test/team/bad:1"
INTERNAL = "could not decide"
RULE = "xccdf_org.ssgproject.content_rule_"


def _finish(job) -> ScanResult:
    bad = job.key.digest == BAD_D
    rules = [RuleResult(RULE + "file_permissions_etc_shadow", "shadow", "medium",
                        "fail" if bad else "pass")]
    return ScanResult(key=job.key, image=job.image, rules=rules, scanned_at=time.time())


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    ds = tmp / "ds.xml"
    ds.write_text("<x/>")
    docs = [policy_doc("default", default=True, priority=0, datastream=str(ds),
                       exclude=["kube-system"]),
            policy_doc("glass", namespaces=["team-glass"], datastream=str(ds),
                       break_glass_users=["oncall"])]
    pset = policy_mod.PolicySet(tuple(policy_mod.from_document(d, path=str(tmp / "p.yaml"))
                                      for d in docs))
    app = create_app(Settings(state_dir=str(tmp / "state"), policy=str(tmp)), policies=pset,
                     service=FakeService(finish=_finish), pipeline=FakePipeline(),
                     registry=FakeRegistry({"good": GOOD_D, "bad": BAD_D}))
    app.testing = True
    return app.test_client()


BASE = make_review(workload("Pod", pod_spec([GOOD_IMG], init=[BAD_IMG]),
                            annotations={"a": "b"}), uid="fuzz-uid")


def post(client, body: bytes, timeout: str = "10s"):
    return client.post(f"/validate?timeout={timeout}", data=body,
                       headers={"Content-Type": "application/json"})


def check_answer(resp, body: bytes) -> None:
    """The properties every answer must have."""
    assert resp.status_code in (200, 400), (resp.status_code, resp.data[:300])
    doc = resp.get_json()
    assert isinstance(doc, dict)
    if resp.status_code == 400:
        assert doc["status"] == 400 and doc["error"]
        return
    assert doc["apiVersion"] == review_mod.API_VERSION and doc["kind"] == review_mod.KIND
    sent = json.loads(body)["request"]["uid"]
    assert doc["response"]["uid"] == sent
    assert isinstance(doc["response"]["allowed"], bool)
    message = doc["response"].get("status", {}).get("message", "")
    assert INTERNAL not in message, message


# -- strategies ----------------------------------------------------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers(-2**63, 2**64) |
           st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) |
                    st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)
WEIRD_TEXT = st.sampled_from([
    "", " ", "\x00", "\ud800", "é" * 300, "🐳" * 100, "a" * 100_000, "../../etc/passwd",
    "nginx\nevil", "NGINX", "nginx:latest@sha256:" + "0" * 64, "sha256:" + "1" * 64,
    "kube-system", "*", "[::1]:5000/x", "x" * 5000 + ":tag",
]) | st.text(alphabet=st.characters(codec="utf-8"), max_size=200)
VALUES = JSON | WEIRD_TEXT | st.builds(lambda n: {"x": n}, JSON)

PATHS = [
    ("apiVersion",), ("kind",), ("request",), ("request", "uid"), ("request", "kind"),
    ("request", "kind", "kind"), ("request", "kind", "group"), ("request", "operation"),
    ("request", "namespace"), ("request", "name"), ("request", "subResource"),
    ("request", "userInfo"), ("request", "userInfo", "username"),
    ("request", "userInfo", "groups"), ("request", "object"), ("request", "object", "kind"),
    ("request", "object", "metadata"), ("request", "object", "metadata", "annotations"),
    ("request", "object", "metadata", "annotations", "scapgate.io/break-glass"),
    ("request", "object", "metadata", "namespace"), ("request", "object", "spec"),
    ("request", "object", "spec", "containers"), ("request", "object", "spec", "containers", 0),
    ("request", "object", "spec", "containers", 0, "image"),
    ("request", "object", "spec", "containers", 0, "name"),
    ("request", "object", "spec", "initContainers"),
    ("request", "object", "spec", "initContainers", 0, "image"),
    ("request", "object", "spec", "ephemeralContainers"),
    ("request", "oldObject"), ("request", "oldObject", "spec"), ("request", "dryRun"),
    ("request", "options"), ("request", "resource"),
]


def mutate(base: dict, changes) -> dict:
    doc = copy.deepcopy(base)
    for path, value in changes:
        holder = doc
        for step in path[:-1]:
            try:
                holder = holder[step]
            except (KeyError, IndexError, TypeError):
                holder = None
                break
        if isinstance(holder, dict) or (isinstance(holder, list) and isinstance(path[-1], int)
                                        and path[-1] < len(holder)):
            holder[path[-1]] = value
    return doc


REVIEWS = st.builds(mutate, st.just(BASE),
                    st.lists(st.tuples(st.sampled_from(PATHS), VALUES), min_size=1, max_size=4))
OPERATIONS = st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT"])


# -- fuzzing --------------------------------------------------------------------------------------

@settings(max_examples=400, deadline=5000, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(review=REVIEWS)
def test_fuzzed_reviews_get_a_decision_or_a_400(client, review):
    body = json.dumps(review).encode()
    check_answer(post(client, body), body)


@settings(max_examples=200, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
@given(value=JSON)
def test_any_json_body_gets_a_decision_or_a_400(client, value):
    body = json.dumps(value).encode()
    resp = post(client, body)
    assert resp.status_code == 400, resp.data[:300]


@settings(max_examples=100, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=2000), timeout=st.text(max_size=12))
def test_arbitrary_bytes_and_timeouts(client, raw, timeout):
    resp = client.post("/validate", query_string={"timeout": timeout}, data=raw,
                       headers={"Content-Type": "application/json"})
    assert resp.status_code == 400


@settings(max_examples=60, deadline=5000)
@given(kind=st.sampled_from(["Pod", "Deployment", "CronJob", "Job", "DaemonSet"]),
       operation=OPERATIONS, images=st.lists(WEIRD_TEXT | st.sampled_from([GOOD_IMG, BAD_IMG]),
                                             min_size=1, max_size=5))
def test_workloads_with_odd_images(client, kind, operation, images):
    obj = workload(kind, pod_spec(images))
    review = make_review(obj, operation=operation, old=obj if operation == "UPDATE" else None,
                         uid="odd")
    body = json.dumps(review).encode()
    resp = post(client, body)
    check_answer(resp, body)
    if resp.status_code == 200 and BAD_IMG in images and operation == "CREATE":
        assert resp.get_json()["response"]["allowed"] is False


# -- sizes and depths -----------------------------------------------------------------------------

def _deep(depth: int):
    value: object = "leaf"
    for _ in range(depth):
        value = {"n": value}
    return value


@pytest.mark.parametrize("depth,status", [(500, 200), (100_000, 400)])
def test_deep_nesting(client, depth, status):
    review = mutate(BASE, [(("request", "object", "metadata", "labels"), _deep(0))])
    body = json.dumps(review).encode()
    nested = body.replace(b'"leaf"', b'{"n":' * depth + b'"leaf"' + b"}" * depth, 1)
    resp = post(client, nested)
    assert resp.status_code == status, resp.data[:300]
    if status == 200:
        check_answer(resp, body)


def test_ten_thousand_containers_are_answered_in_time(client):
    """10,000 distinct images: answered (denied: the bad image is among them) in time."""
    images = [f"registry.test/team/c{i}:1" for i in range(9_999)] + [BAD_IMG]
    review = make_review(workload("Pod", pod_spec(images)), uid="many")
    body = json.dumps(review).encode()
    assert len(body) < review_mod.MAX_BODY
    t0 = time.monotonic()
    resp = post(client, body, timeout="10s")
    took = time.monotonic() - t0
    check_answer(resp, body)
    assert resp.get_json()["response"]["allowed"] is False
    assert took < 15, took
    assert len(resp.data) < 64 * 1024, len(resp.data)


# Fields that once reached status.message uncut (a 1 MiB field gave a 1-4 MiB answer).
GLASS = (("request", "object", "metadata", "annotations", "scapgate.io/break-glass"), "incident")
IN_GLASS = (("request", "namespace"), "team-glass")


@pytest.mark.parametrize("changes", [
    pytest.param([(("request", "object", "spec", "containers", 0, "image"), "x" * (1 << 20))],
                 id="image"),
    pytest.param([(("request", "namespace"), "n" * (1 << 20))], id="namespace"),
    pytest.param([IN_GLASS, (GLASS[0], "r" * (1 << 20))], id="break-glass-reason"),
    pytest.param([IN_GLASS, GLASS, (("request", "userInfo", "username"), "u" * (1 << 20))],
                 id="username"),
    pytest.param([IN_GLASS, GLASS, (("request", "userInfo", "groups"), ["g" * 1000] * 1000)],
                 id="groups"),
    pytest.param([(("request", "object", "metadata", "labels"),
                   {f"k{i}": "v" * 1000 for i in range(1000)})], id="labels"),
])
def test_huge_strings_get_a_bounded_answer(client, changes):
    review = mutate(BASE, changes)
    body = json.dumps(review).encode()
    resp = post(client, body)
    check_answer(resp, body)
    assert len(resp.data) < 64 * 1024, len(resp.data)


# -- crashes the fuzzing found (fail-closed, but a 500 or "could not decide" is a bug) ----------

@pytest.mark.parametrize("operation", [["CREATE"], {"op": "CREATE"}], ids=["list", "object"])
def test_operation_of_the_wrong_type_is_a_400(client, operation):
    body = json.dumps(mutate(BASE, [(("request", "operation"), operation)])).encode()
    assert post(client, body).status_code == 400


@pytest.mark.parametrize("metadata", ["x", [1], {"namespace": 5}, {"namespace": {"a": 1}}],
                         ids=["string", "list", "ns-int", "ns-object"])
def test_malformed_metadata_is_a_reasoned_denial(client, metadata):
    review = mutate(BASE, [(("request", "namespace"), ""),
                           (("request", "object", "metadata"), metadata)])
    body = json.dumps(review).encode()
    check_answer(post(client, body), body)


def test_break_glass_with_malformed_groups_is_a_reasoned_denial(client):
    review = mutate(BASE, [IN_GLASS, GLASS, (("request", "userInfo", "groups"), 5)])
    body = json.dumps(review).encode()
    check_answer(post(client, body), body)


def test_a_flood_of_images_does_not_starve_other_admissions(tmp_path):
    slow = FakeRegistry({"good": GOOD_D, "bad": BAD_D}, delay_s=0.05)   # skopeo's round trip
    ds = tmp_path / "ds.xml"
    ds.write_text("<x/>")
    pset = policy_mod.PolicySet((policy_mod.from_document(
        policy_doc("default", default=True, datastream=str(ds)), path=str(tmp_path / "p.yaml")),))
    app = create_app(Settings(state_dir=str(tmp_path / "state"), policy=str(tmp_path)),
                     policies=pset, service=FakeService(finish=_finish),
                     pipeline=FakePipeline(), registry=slow)
    client = app.test_client()
    flood = make_review(workload("Pod", pod_spec([f"registry.test/x/c{i}:1"
                                                  for i in range(10_000)])), uid="flood")
    post(client, json.dumps(flood).encode(), timeout="2s")
    honest = make_review(workload("Pod", pod_spec([GOOD_IMG])), uid="honest")
    resp = post(client, json.dumps(honest).encode(), timeout="5s")
    assert resp.get_json()["response"]["allowed"] is True, resp.get_json()


# -- the real server ------------------------------------------------------------------------------

@settings(max_examples=40, deadline=20000, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(review=REVIEWS)
def test_fuzzed_reviews_over_gunicorn_tls(apiserver, review):
    body = json.dumps(review).encode()
    status, _, data = apiserver.request("POST", "/validate?timeout=10s", body,
                                        {"Content-Type": "application/json"})
    assert status in (200, 400), (status, data[:300])
    doc = json.loads(data)
    if status == 200:
        assert doc["response"]["uid"] == review["request"]["uid"]
        assert INTERNAL not in doc["response"].get("status", {}).get("message", "")


class Slowloris:
    """Connections that trickle a request byte by byte: the TLS handshake itself ("handshake",
    one ClientHello byte a second), the headers after a completed handshake ("headers"), or
    the body after complete headers ("body")."""

    def __init__(self, port: int, ca: str, n: int, stage: str = "headers"):
        self.port, self.n, self.stage = port, n, stage
        self.ctx = ssl.create_default_context(cafile=ca)
        self.ctx.check_hostname = False
        self.socks: list = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._trickle, daemon=True)

    def open(self) -> "Slowloris":
        """Open n connections at once; one whose handshake the server no longer serves still
        holds its place in the accept queue, so it is kept as it is."""
        with ThreadPoolExecutor(max_workers=self.n) as pool:
            self.socks = list(pool.map(lambda _: self._connect(), range(self.n)))
        self.thread.start()
        return self

    def _connect(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=3)
        if self.stage != "handshake":
            try:
                s = self.ctx.wrap_socket(s, server_hostname="scapgate.scapgate.svc")
                s.sendall(b"POST /validate?timeout=10s HTTP/1.1\r\nHost: x\r\n")
                if self.stage == "body":
                    s.sendall(b"Content-Type: application/json\r\n"
                              b"Content-Length: 4000\r\n\r\n{")
            except (OSError, ssl.SSLError):
                pass
        return s

    def _trickle(self):
        byte = {"handshake": b"\x16", "headers": b"X", "body": b" "}[self.stage]
        while not self.stop.wait(1.0):
            for s in list(self.socks):
                try:
                    s.send(byte)
                except OSError:
                    self.socks.remove(s)

    def close(self):
        self.stop.set()
        self.thread.join()
        for s in self.socks:
            s.close()


@pytest.mark.parametrize("stage", ["handshake", "headers", "body"])
def test_slow_clients_cannot_starve_the_workers(server, stage):
    """More slow connections than the server has threads (2 workers × 16): reviews from a
    well-behaved client are still answered promptly. webhook/serve/gworker.py reads each request in
    the event loop and hands it to a thread only once it is whole."""
    review = make_review(workload("Pod", pod_spec([])), uid=f"after-slowloris-{stage}")
    loris = Slowloris(server.port, server.ca, n=80, stage=stage).open()
    try:
        time.sleep(1.5)     # let the trickle run: it is the load, not synchronisation
        client = server.client(timeout=10)
        t0 = time.monotonic()
        try:
            resp = client.review(review)
        except OSError as e:
            pytest.fail(f"a well-behaved client was not answered: {e!r}")
        finally:
            client.close()
        assert resp["response"]["allowed"] is True
        assert resp["response"]["uid"] == f"after-slowloris-{stage}"
        assert time.monotonic() - t0 < 5
    finally:
        loris.close()
