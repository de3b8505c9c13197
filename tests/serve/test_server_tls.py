"""The webhook as in production — `scapgate serve` → gunicorn gthread over TLS, scan workers,
SQLite store — called exactly the way kube-apiserver calls it (see tests/webhook_fixtures.py).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import re
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.builders.webhooks import (  # noqa: F401
    HEADERS,
    NAMESPACE,
    SERVICE,
    apiserver,
    denial,
    free_port,
    image_path,
    make_certs,
    make_review,
    pod_spec,
    server,
    slow_registry,
    standalone_server,
    unique_image,
    webhook_policies,
    workload,
)

WORKLOAD_KINDS = ["Pod", "Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job",
                  "CronJob", "ReplicationController"]
BAD_RULES = ("package_inetutils-telnetd_removed", "file_permissions_etc_shadow")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def audit(resp: dict) -> dict:
    return resp["response"].get("auditAnnotations", {})


def decide(apiserver, review_fn, deadline_s: float = 90.0) -> dict:
    """Send fresh reviews (timeoutSeconds: 30) until the answer is no longer pending."""
    deadline = time.monotonic() + deadline_s
    while True:
        resp = apiserver.review(review_fn(), timeout="30s")
        if audit(resp).get("verdict") != "pending" or time.monotonic() > deadline:
            return resp


@pytest.fixture(scope="module")
def scanned(server, images):
    """The session's synthetic images have results (the first scans happen here, each
    answered inside a 30 s budget, or retried after a pending answer like a controller)."""
    client = server.client()
    for name in ("good", "bad", "nondebian", "multiarch"):
        resp = decide(client, lambda: make_review(workload("Pod", pod_spec([images[name]]))))
        assert audit(resp)["verdict"] != "pending", name
    client.close()
    return images


# -- workloads ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["bad", "good"])
@pytest.mark.parametrize("kind", WORKLOAD_KINDS)
def test_workload_kinds_are_judged_by_their_pod_template(apiserver, scanned, kind, case):
    containers = [scanned["good"], scanned["bad"]] if case == "bad" else [scanned["good"]]
    resp = apiserver.review(make_review(workload(kind, pod_spec(containers))))
    r = resp["response"]
    if case == "good":
        assert r["allowed"] is True and "status" not in r
        assert audit(resp)["verdict"] == "pass"
        assert scanned["good"].digest in audit(resp)["images"]
        return
    assert r["allowed"] is False
    msg = denial(resp)
    assert msg.startswith(f"{image_path(kind, 'containers', 1)}: {scanned['bad']} "
                          f"({scanned['bad'].digest}) fails policy default, debian12 content, "
                          "profile standard:")
    assert image_path(kind, "containers", 0) not in msg            # the good container
    for rule in BAD_RULES:
        assert rule in msg
    assert f"full report: GET /reports/{scanned['bad'].digest}?policy=default" in msg
    assert (f"reproduce: scapgate scan {scanned['bad']}@{scanned['bad'].digest} "
            "--policy ") in msg
    assert r["status"]["code"] == 403
    assert audit(resp)["verdict"] == "fail" and audit(resp)["policy"] == "default"
    assert f"{scanned['bad']}@{scanned['bad'].digest}=fail" in audit(resp)["images"]


@pytest.mark.parametrize("build, sub, path", [
    (lambda i: workload("Pod", pod_spec([i["good"]], init=[i["bad"]])), "",
     "spec.initContainers[0].image"),
    (lambda i: workload("Deployment", pod_spec([i["good"]], init=[i["good"], i["bad"]])), "",
     "spec.template.spec.initContainers[1].image"),
    (lambda i: workload("CronJob", pod_spec([i["good"]], init=[i["bad"]])), "",
     "spec.jobTemplate.spec.template.spec.initContainers[0].image"),
    (lambda i: workload("Pod", pod_spec([i["good"]], ephemeral=[i["bad"]])), "ephemeralcontainers",
     "spec.ephemeralContainers[0].image"),
    (lambda i: workload("Pod", pod_spec([i["good"]], ephemeral=[i["good"]])), "ephemeralcontainers",
     None),
    (lambda i: workload("Pod", pod_spec([i["bad"]], ephemeral=[i["good"]])), "ephemeralcontainers",
     None),
], ids=["pod-init", "deployment-init", "cronjob-init", "ephemeral-bad", "ephemeral-good",
        "ephemeral-only-judges-ephemeral"])
def test_every_container_list_is_checked(apiserver, scanned, build, sub, path):
    obj = build(scanned)
    operation = "UPDATE" if sub else "CREATE"
    old = workload("Pod", {"containers": obj["spec"]["containers"]}) if sub else None
    resp = apiserver.review(make_review(obj, operation=operation, old=old, sub=sub))
    if path is None:
        assert resp["response"]["allowed"] is True
    else:
        assert resp["response"]["allowed"] is False
        assert denial(resp).startswith(f"{path}: {scanned['bad']} (")


@pytest.mark.parametrize("old_images, new_images, allowed, reason", [
    (["bad"], ["bad"], True, "unchanged"),
    (["good", "bad"], ["good", "bad"], True, "unchanged"),
    (["good"], ["bad"], False, "rules"),
    (["bad"], ["good"], True, "clean"),
    (["good"], ["good", "bad"], False, "rules"),
], ids=["same-bad-image", "same-images", "changed-to-bad", "changed-to-good", "added-bad"])
def test_pod_update_rechecks_only_when_images_change(server, apiserver, scanned, old_images,
                                                     new_images, allowed, reason):
    old = workload("Pod", pod_spec([scanned[n] for n in old_images]))
    new = workload("Pod", pod_spec([scanned[n] for n in new_images]))
    new["metadata"]["labels"] = {"touched": "yes"}
    review = make_review(new, operation="UPDATE", old=old)
    resp = apiserver.review(review)
    assert resp["response"]["allowed"] is allowed
    assert server.decision(review["request"]["uid"])["reason"] == reason


@pytest.mark.parametrize("make, reason", [
    (lambda i: make_review(workload("ConfigMap", {})), "not_workload"),
    (lambda i: make_review(None, kind="Pod", operation="DELETE",
                           old=workload("Pod", pod_spec([i["bad"]]))), "operation"),
    (lambda i: make_review(workload("Pod", pod_spec([i["bad"]])), operation="CONNECT",
                           sub="exec"), "operation"),
    (lambda i: make_review(workload("Pod", pod_spec([i["bad"]])), operation="UPDATE", sub="status",
                           old=workload("Pod", pod_spec([i["good"]]))), "subresource"),
    (lambda i: make_review(workload("Deployment", pod_spec([i["bad"]])), group="example.com"),
     "not_workload"),
    (lambda i: make_review(workload("Pod", pod_spec([i["bad"]]), namespace="kube-system")),
     "no_policy"),
], ids=["configmap", "delete", "connect", "pods-status", "crd-named-deployment",
        "excluded-namespace"])
def test_other_requests_are_allowed_without_work(server, apiserver, scanned, make, reason):
    review = make(scanned)
    resp = apiserver.review(review)
    assert resp["response"]["allowed"] is True
    assert "status" not in resp["response"]
    rec = server.decision(review["request"]["uid"])
    assert rec["reason"] == reason and rec["images"] == []


def test_multiarch_index_is_judged_by_the_nodes_platform(apiserver, scanned):
    index = json.loads((Path(scanned["multiarch"].layout) / "index.json").read_text())
    amd64 = next(m["digest"] for m in index["manifests"]
                 if m.get("annotations", {}).get("org.opencontainers.image.ref.name")
                 == "multiarch-amd64")
    resp = apiserver.review(make_review(workload("Pod", pod_spec([scanned["multiarch"]]))))
    assert resp["response"]["allowed"] is True                   # amd64 good, arm64 bad
    assert f"@{amd64}=pass" in audit(resp)["images"]
    assert scanned["multiarch"].digest not in audit(resp)["images"]


# -- modes and states ------------------------------------------------------------------------

def test_dry_run_is_answered_like_a_real_request(server, apiserver, scanned):
    obj = workload("Deployment", pod_spec([scanned["bad"]]))
    real, dry = make_review(obj), make_review(obj, dry_run=True)
    a, b = apiserver.review(real), apiserver.review(dry)
    assert a["response"]["allowed"] is b["response"]["allowed"] is False
    assert denial(a) == denial(b)
    assert audit(a) == audit(b)
    assert server.decision(dry["request"]["uid"])["dry_run"] is True


@pytest.mark.parametrize("namespace, warned", [("team-warn", True), ("team-audit", False)],
                         ids=["warn", "audit"])
def test_warn_and_audit_modes_admit_failing_images(apiserver, scanned, namespace, warned):
    resp = apiserver.review(make_review(
        workload("Deployment", pod_spec([scanned["bad"]]), namespace=namespace)))
    r = resp["response"]
    assert r["allowed"] is True and "status" not in r
    assert audit(resp)["verdict"] == "fail"
    assert audit(resp)["rules"] == ",".join(sorted(BAD_RULES))
    warnings = r.get("warnings", [])
    if not warned:
        assert warnings == []
        return
    assert any(BAD_RULES[0] in w and "warn mode" in w for w in warnings), warnings
    assert all(len(w) < 120 for w in warnings) and sum(map(len, warnings)) < 4096


ALPINE_SAYS = "no SCAP content for alpine 3.20.3 (ID=alpine VERSION_ID=3.20.3): not judged"


@pytest.mark.parametrize("namespace, allowed", [("team-a", True), ("team-lenient", False)],
                         ids=["shipped-warn", "deny"])
def test_an_image_without_scap_content_takes_the_unsupported_action(apiserver, scanned,
                                                                     namespace, allowed):
    """An Alpine image: no SCAP content exists for it. The shipped policy admits it with a
    warning naming what was found; a policy without `unsupported: warn` denies it (fail
    closed). Never a silent pass: the audit verdict says unsupported."""
    resp = apiserver.review(make_review(
        workload("Pod", pod_spec([scanned["nondebian"]]), namespace=namespace)))
    assert resp["response"]["allowed"] is allowed
    assert audit(resp)["verdict"] == "unsupported"
    assert audit(resp)["unsupported"] == f"{scanned['nondebian']}@" \
        f"{scanned['nondebian'].digest}=alpine 3.20.3"
    if allowed:
        assert resp["response"]["warnings"] == [f"spec.containers[0].image: {ALPINE_SAYS}"]
    else:
        msg = denial(resp)
        assert msg == (f"spec.containers[0].image: {scanned['nondebian']} "
                       f"({scanned['nondebian'].digest}) is denied by policy lenient "
                       f"(actions.unsupported: deny): {ALPINE_SAYS}")


def test_first_scan_inside_the_budget_is_answered_with_its_verdict(server, apiserver, registry,
                                                                  tmp_path):
    ref = unique_image(registry, tmp_path, bad=True)
    review = make_review(workload("Pod", pod_spec([ref])))
    resp = apiserver.review(review, timeout="30s")       # timeoutSeconds: 30, the maximum
    assert resp["response"]["allowed"] is False
    assert BAD_RULES[0] in denial(resp)
    assert server.decision(review["request"]["uid"])["cache"] == "miss"


def test_pending_beyond_the_budget_then_the_result(server, apiserver, registry, slow_registry,
                                                   tmp_path):
    """Blobs come from a registry that takes 10 s: the first review (timeout=10s) waits its
    budget and answers pending; the retry is answered when the scan lands inside its budget."""
    ref = unique_image(registry, tmp_path, bad=True).replace(registry.host, slow_registry.host)
    t0 = time.monotonic()
    first = apiserver.review(make_review(workload("Deployment", pod_spec([ref]))))
    took = time.monotonic() - t0
    assert 7.5 < took < 10.0, took                        # 10 s minus the 1.5 s margin
    assert first["response"]["allowed"] is False
    assert audit(first)["verdict"] == "pending"
    assert re.fullmatch(rf"spec\.template\.spec\.containers\[0\]\.image: scan of "
                        rf"{re.escape(ref)}@sha256:[0-9a-f]{{64}} in progress, retry in about "
                        rf"\d+ s", denial(first)), denial(first)
    second = decide(apiserver, lambda: make_review(workload("Deployment", pod_spec([ref]))))
    assert second["response"]["allowed"] is False
    assert BAD_RULES[0] in denial(second)


def test_pending_action_warn_admits_with_a_warning(apiserver, registry, slow_registry, tmp_path):
    ref = unique_image(registry, tmp_path).replace(registry.host, slow_registry.host)
    resp = apiserver.review(make_review(
        workload("Pod", pod_spec([ref]), namespace="team-lenient")), timeout="3s")
    assert resp["response"]["allowed"] is True
    assert audit(resp)["verdict"] == "pending"
    assert any("scan in progress" in w for w in resp["response"]["warnings"])


def test_break_glass_annotation_admits_for_listed_users_only(apiserver, scanned):
    obj = workload("Deployment", pod_spec([scanned["bad"]]), namespace="team-glass",
                   annotations={"scapgate.io/break-glass": "INC-42 checkout is down"})
    ok = apiserver.review(make_review(obj, user="oncall"))
    assert ok["response"]["allowed"] is True
    assert "break-glass" in audit(ok)
    assert any("break-glass" in w for w in ok["response"]["warnings"])
    refused = apiserver.review(make_review(obj, user="mallory"))
    assert refused["response"]["allowed"] is False
    assert "break-glass refused" in denial(refused)


# -- bad input --------------------------------------------------------------------------------

def _review_bytes(**changes) -> bytes:
    review = make_review(workload("Pod", pod_spec(["registry.example/x:1"])))
    review["request"].update(changes)
    return json.dumps(review).encode()


TOO_BIG = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                      "request": {"uid": "x", "pad": "a" * (3 << 20)}}).encode()


@pytest.mark.parametrize("method, headers, body", [
    ("GET", {}, None),
    ("PUT", HEADERS, _review_bytes()),
    ("POST", {**HEADERS, "Content-Type": "text/plain"}, _review_bytes()),
    ("POST", {k: v for k, v in HEADERS.items() if k != "Content-Type"}, _review_bytes()),
    ("POST", HEADERS, b"{not json"),
    ("POST", HEADERS, b"\xff\xfe\x00garbage"),
    ("POST", HEADERS, b"[1, 2, 3]"),
    ("POST", HEADERS, json.dumps({"apiVersion": "admission.k8s.io/v1beta1",
                                  "kind": "AdmissionReview", "request": {"uid": "x"}}).encode()),
    ("POST", HEADERS, json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "Pod"}).encode()),
    ("POST", HEADERS, json.dumps({"apiVersion": "admission.k8s.io/v1",
                                  "kind": "AdmissionReview"}).encode()),
    ("POST", HEADERS, _review_bytes(uid="")),
    ("POST", HEADERS, _review_bytes(uid=42)),
    ("POST", HEADERS, _review_bytes(operation="EXPLODE")),
    ("POST", HEADERS, _review_bytes(object=None)),
    ("POST", HEADERS, _review_bytes(object=["not", "an", "object"])),
    ("POST", HEADERS, _review_bytes(kind="Pod")),
    ("POST", HEADERS, b"[" * 100_000 + b"]" * 100_000),
    ("POST", HEADERS, TOO_BIG),
    ("POST", {**HEADERS, "Content-Encoding": "gzip"}, b"not gzip at all"),
    ("POST", {**HEADERS, "Content-Encoding": "gzip"}, gzip.compress(b"{" + b" " * (4 << 20))),
    ("POST", {**HEADERS, "Content-Encoding": "br"}, _review_bytes()),
], ids=["get", "put", "text-plain", "no-content-type", "not-json", "not-utf8", "json-array",
        "v1beta1", "wrong-kind", "no-request", "empty-uid", "uid-not-string", "bad-operation",
        "create-without-object", "object-not-a-map", "kind-not-a-map", "deep-nesting",
        "over-3-mib", "bad-gzip", "gzip-bomb", "unknown-encoding"])
def test_malformed_input_is_a_400_with_a_json_reason(server, method, headers, body):
    client = server.client()
    status, resp_headers, data = client.request(method, "/validate?timeout=10s", body, headers)
    client.close()
    assert status == 400, data[:300]
    assert resp_headers["Content-Type"].startswith("application/json")
    err = json.loads(data)
    assert err["status"] == 400 and err["error"]


def test_a_bad_request_does_not_break_the_connection_for_the_next(apiserver, scanned):
    status, _, _ = apiserver.request("POST", "/validate?timeout=10s", b"{", HEADERS)
    assert status == 400
    resp = apiserver.review(make_review(workload("Pod", pod_spec([scanned["good"]]))))
    assert resp["response"]["allowed"] is True


# -- operations -----------------------------------------------------------------------------

def test_health_readiness_and_report(server, scanned):
    assert server.get("/healthz")[0] == 200
    status, body, _ = server.get("/readyz")
    ready = json.loads(body)
    assert status == 200 and set(ready["checks"].values()) == {"ok"}, ready
    status, body, ctype = server.get(f"/reports/{scanned['bad'].digest}?policy=default")
    assert status == 200 and ctype.startswith("text/html")
    assert b"file_permissions_etc_shadow" in body
    assert server.get(f"/reports/sha256:{'0' * 64}?policy=default")[0] == 404
    assert server.get("/reports/latest?policy=default")[0] == 400


def test_one_log_line_per_decision_with_its_trail(server, apiserver, scanned, scap_datastream):
    review = make_review(workload("Deployment", pod_spec([scanned["good"], scanned["bad"]]),
                                  name="shop"), user="bob")
    apiserver.review(review)
    rec = server.decision(review["request"]["uid"])
    assert (rec["namespace"], rec["kind"], rec["name"], rec["user"]) == \
        ("team-a", "apps/Deployment", "shop", "bob")
    assert (rec["verdict"], rec["allowed"], rec["cache"]) == ("fail", False, "hit")
    assert set(BAD_RULES) <= set(rec["reasons"]) and rec["duration_ms"] > 0
    ds_sha = hashlib.sha256(Path(scap_datastream).read_bytes()).hexdigest()
    by_digest = {i["digest"]: i for i in rec["images"]}
    assert set(by_digest) == {scanned["good"].digest, scanned["bad"].digest}
    for img in rec["images"]:
        assert img["policy"] == "default" and img["waivers"] == []
    pol = rec["policies"]["default"]        # the policy/content trail, once per policy
    assert re.fullmatch(r"[0-9a-f]{64}", pol["policy_sha256"])
    assert pol["policy_file"].endswith(".yaml") and pol["enforcement"] == "enforce"
    assert re.fullmatch(r"[0-9a-f]{64}", pol["content_set_sha256"])   # every product's content
    bad = by_digest[scanned["bad"].digest]                              # what judged this image
    assert (bad["product"], bad["content"], bad["content_sha256"]) == \
        ("debian12", "ssg-debian12-ds.xml", ds_sha)
    assert bad["profile"].endswith("_standard")
    assert pol["scanner"].startswith("openscap-")
    assert by_digest[scanned["bad"].digest]["state"] == "fail"


def _sample(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_decisions_across_workers(server, scanned):
    before = server.get("/metrics")[1].decode()
    clients = [server.client() for _ in range(4)]      # several connections: both workers
    for c in clients:
        c.review(make_review(workload("Pod", pod_spec([scanned["bad"]]))))
        c.close()
    after = server.get("/metrics")[1].decode()
    labels = {"verdict": "fail", "allowed": "false", "reason": "rules"}
    assert _sample(after, "scapgate_decisions_total", **labels) - \
        _sample(before, "scapgate_decisions_total", **labels) == 4
    assert _sample(after, "scapgate_decision_seconds_count") >= 4
    assert _sample(after, "scapgate_decision_results_total", result="hit") >= 4
    assert _sample(after, "scapgate_decision_rules_total", rule=BAD_RULES[0]) >= 4
    assert _sample(after, "scapgate_scans_started_total") >= 1    # counted by the scan workers


# -- servers of their own --------------------------------------------------------------------

def test_scanner_down_is_the_error_state(tmp_path, webhook_policies, images, registry):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    srv = standalone_server(tmp_path, webhook_policies, SCAPGATE_STORE=dead,
                            SCAPGATE_INSECURE_REGISTRIES=registry.host)
    try:
        status, body, _ = srv.get("/readyz")
        assert status == 503 and json.loads(body)["checks"]["store"] != "ok"
        client = srv.client()
        resp = client.review(make_review(workload("Pod", pod_spec([images["good"]]))))
        client.close()
        assert resp["response"]["allowed"] is False
        assert audit(resp)["verdict"] == "error"
        assert "scan service unavailable" in denial(resp)
    finally:
        srv.stop()


def _rotate(certs: Path, *extra: str) -> None:
    make_certs(certs, *extra)


def _served_cert(srv, ca: str) -> bytes:
    client = srv.client()
    client.context = ssl.create_default_context(cafile=ca)
    try:
        return client.peer_certificate()
    finally:
        client.close()


def _cert_der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_certificate_rotation_without_dropping_requests(tmp_path, webhook_policies):
    srv = standalone_server(tmp_path, webhook_policies)
    certs = srv.certs
    try:
        kept = srv.client()                               # a kept-alive connection
        noop = lambda: make_review(workload("ConfigMap", {}))  # noqa: E731
        assert kept.review(noop())["response"]["allowed"] is True
        first = kept.peer_certificate()
        assert first == _cert_der(certs / "tls.crt")
        failures, done, stop = [], [0], threading.Event()

        def hammer():                                     # new connections throughout
            while not stop.is_set():
                c = srv.client()
                try:
                    c.review(noop())
                    done[0] += 1
                except Exception as e:  # noqa: BLE001 - every failure is the finding
                    failures.append(repr(e))
                finally:
                    c.close()

        thread = threading.Thread(target=hammer)
        thread.start()
        time.sleep(0.3)
        _rotate(certs)                                    # same CA, new serving cert and key
        deadline = time.monotonic() + 10
        while _served_cert(srv, str(certs / "ca.crt")) == first:
            assert time.monotonic() < deadline, "renewed certificate never served"
            time.sleep(0.05)
        time.sleep(0.3)
        stop.set()
        thread.join()
        assert failures == [] and done[0] > 5
        assert _served_cert(srv, str(certs / "ca.crt")) == _cert_der(certs / "tls.crt")
        assert kept.review(noop())["response"]["allowed"] is True   # old session still fine

        # A half-written certificate is ignored: the previous one stays in service.
        current = _cert_der(certs / "tls.crt")
        (certs / "tls.crt").write_text("-----BEGIN CERTIFICATE-----\ntruncated\n")
        assert _served_cert(srv, str(certs / "ca.crt")) == current

        # A new CA: clients still trusting the old one now fail verification.
        old_ca = tmp_path / "old-ca.crt"
        old_ca.write_bytes((certs / "ca.crt").read_bytes())
        _rotate(certs, "--new-ca")
        assert _served_cert(srv, str(certs / "ca.crt")) == _cert_der(certs / "tls.crt")
        with pytest.raises(ssl.SSLCertVerificationError):
            _served_cert(srv, str(old_ca))
        kept.close()
    finally:
        srv.stop()


def test_certificate_names_match_what_the_apiserver_verifies(tmp_path):
    certs = make_certs(tmp_path / "certs")
    text = subprocess.run(["openssl", "x509", "-in", str(certs / "tls.crt"), "-noout", "-ext",
                           "subjectAltName,extendedKeyUsage"], capture_output=True, text=True,
                          check=True).stdout
    for name in (SERVICE, f"{SERVICE}.{NAMESPACE}", f"{SERVICE}.{NAMESPACE}.svc",
                 f"{SERVICE}.{NAMESPACE}.svc.cluster.local", "localhost"):
        assert f"DNS:{name}," in text + ","
    assert "IP Address:127.0.0.1" in text and "TLS Web Server Authentication" in text
    assert oct((certs / "tls.key").stat().st_mode & 0o777) == "0o600"
    before = (certs / "ca.crt").read_bytes()
    make_certs(certs)                                     # renewal keeps the caBundle
    assert (certs / "ca.crt").read_bytes() == before
