"""AdmissionReview decoding and encoding, and the routes that only decode and encode."""
from __future__ import annotations

import gzip
import json

import pytest

from tests.builders.webhooks import (
    FakePipeline,
    FakeRegistry,
    FakeService,
    make_review,
    pod_spec,
    policy_doc,
    workload,
)
from webhook import policy as policy_mod
from webhook.admission import review
from webhook.config import Settings
from webhook.serve.app import create_app, parse_timeout

GOOD = make_review(workload("Pod", pod_spec(["registry.test/team/app:1"])))


def body(**request_changes) -> bytes:
    doc = json.loads(json.dumps(GOOD))
    doc["request"].update(request_changes)
    return json.dumps(doc).encode()


def test_decode_returns_the_request():
    req = review.decode(json.dumps(GOOD).encode())
    assert req["uid"] == GOOD["request"]["uid"] and req["operation"] == "CREATE"


@pytest.mark.parametrize("raw, says", [
    (b"", "not JSON"),
    (b"{", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[" * 50_000 + b"]" * 50_000, "not JSON"),
    (b"null", "not a JSON object"),
    (b'"review"', "not a JSON object"),
    (json.dumps({**GOOD, "apiVersion": "admission.k8s.io/v1beta1"}).encode(),
     "expected apiVersion"),
    (json.dumps({**GOOD, "kind": "Pod"}).encode(), "expected apiVersion"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "request"}).encode(), "no request"),
    (json.dumps({**GOOD, "request": []}).encode(), "no request"),
    (body(uid=None), "uid"),
    (body(uid=""), "uid"),
    (body(uid=12), "uid"),
    (body(uid="x" * 300), "uid"),
    (body(operation="PATCH"), "operation"),
    (body(kind="Pod"), "request.kind"),
    (body(kind={"group": "", "version": "v1"}), "request.kind"),
    (body(kind={"group": 1, "version": "v1", "kind": "Pod"}), "request.kind.group"),
    (body(namespace=["a"]), "request.namespace"),
    (body(object="pod"), "request.object"),
    (body(oldObject=[1]), "request.oldObject"),
    (body(userInfo="alice"), "request.userInfo"),
    (body(dryRun="yes"), "request.dryRun"),
    (body(object=None), "request.object is required"),
], ids=["empty", "truncated", "not-utf8", "deep-nesting", "null", "string", "v1beta1",
        "wrong-kind", "no-request", "request-list", "uid-missing", "uid-empty", "uid-number",
        "uid-huge", "operation", "kind-string", "kind-no-kind", "group-number", "namespace-list",
        "object-string", "old-object-list", "userinfo-string", "dryrun-string",
        "create-without-object"])
def test_decode_rejects_what_is_not_an_admission_review(raw, says):
    with pytest.raises(review.ReviewError) as e:
        review.decode(raw)
    assert says in str(e.value) and e.value.status == 400


@pytest.mark.parametrize("method, ctype, ok", [
    ("POST", "application/json", True),
    ("POST", "application/json; charset=utf-8", True),
    ("POST", "Application/JSON", True),
    ("GET", "application/json", False),
    ("PUT", "application/json", False),
    ("POST", "text/plain", False),
    ("POST", None, False),
    ("POST", "application/jsonx", False),
], ids=["json", "charset", "case", "get", "put", "text", "none", "jsonx"])
def test_headers(method, ctype, ok):
    if ok:
        review.check_headers(method, ctype)
    else:
        with pytest.raises(review.ReviewError):
            review.check_headers(method, ctype)


@pytest.mark.parametrize("raw, encoding, expect", [
    (b"{}", None, b"{}"),
    (b"{}", "identity", b"{}"),
    (gzip.compress(b'{"a": 1}'), "gzip", b'{"a": 1}'),
    (b"x" * (review.MAX_BODY + 1), None, review.ReviewError),
    (gzip.compress(b" " * (review.MAX_BODY + 1)), "gzip", review.ReviewError),
    (b"plain", "gzip", review.ReviewError),
    (b"{}", "br", review.ReviewError),
], ids=["plain", "identity", "gzip", "too-big", "gzip-too-big", "not-gzip", "brotli"])
def test_read_body_limits_and_decompression(raw, encoding, expect):
    if expect is review.ReviewError:
        with pytest.raises(review.ReviewError):
            review.read_body(raw, encoding)
    else:
        assert review.read_body(raw, encoding) == expect


def test_encode_echoes_uid_and_applies_warning_limits():
    warnings = ["w " * 100, "same", "same"] + [f"n{i} " * 30 for i in range(80)]
    out = review.encode("u-1", {"allowed": False, "status": {"code": 403, "message": "no"},
                                "warnings": warnings,
                                "auditAnnotations": {"verdict": "fail", "images": "x" * 9000}})
    assert (out["apiVersion"], out["kind"], out["response"]["uid"]) == \
        ("admission.k8s.io/v1", "AdmissionReview", "u-1")
    warnings = out["response"]["warnings"]
    assert all(len(w) < 120 for w in warnings) and sum(map(len, warnings)) < 4096
    assert warnings.count("same") == 1 and warnings[0].endswith("…")
    assert len(out["response"]["auditAnnotations"]["images"]) <= review.AUDIT_VALUE_MAX
    assert review.encode("u-2", {"allowed": True}) == {
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "response": {"uid": "u-2", "allowed": True}}


@pytest.mark.parametrize("text, seconds", [
    ("10s", 10.0), ("30s", 30.0), ("1m", 30.0), ("1500ms", 1.5), ("1m30s", 30.0), ("2s", 2.0),
    (None, 10.0), ("", 10.0), ("ten", 10.0), ("10", 10.0), ("10s; drop", 10.0),
], ids=["10s", "30s", "clamped-1m", "ms", "compound", "2s", "missing", "empty", "word",
        "no-unit", "junk"])
def test_timeout_parameter_is_a_go_duration(text, seconds):
    assert parse_timeout(text) == seconds


# -- routes -----------------------------------------------------------------------------------

@pytest.fixture
def client(tmp_path):
    ds = tmp_path / "ds.xml"
    ds.write_text("<x/>")
    pset = policy_mod.PolicySet((policy_mod.from_document(
        policy_doc("default", default=True, datastream=str(ds)), path=str(tmp_path / "d.yaml")),))
    settings = Settings(state_dir=str(tmp_path / "state"), policy=str(tmp_path))
    service = FakeService(finish=lambda job: None)
    app = create_app(settings, policies=pset, service=service, pipeline=FakePipeline(),
                     registry=FakeRegistry({"app": "sha256:" + "1" * 64}))
    app.testing = True
    return app.test_client()


@pytest.mark.parametrize("method, data, headers", [
    ("GET", None, {}),
    ("DELETE", None, {}),
    ("OPTIONS", None, {}),
    ("POST", b"{}", {"Content-Type": "text/plain"}),
    ("POST", b"{", {"Content-Type": "application/json"}),
    ("POST", b"x" * (review.MAX_BODY + 10), {"Content-Type": "application/json"}),
    ("POST", gzip.compress(b"[" * 10), {"Content-Type": "application/json",
                                         "Content-Encoding": "gzip"}),
], ids=["get", "delete", "options", "text", "not-json", "too-big", "gzip-junk"])
def test_route_answers_bad_requests_with_400_json(client, method, data, headers):
    resp = client.open("/validate", method=method, data=data, headers=headers)
    assert resp.status_code == 400
    assert resp.is_json and resp.json["status"] == 400 and resp.json["error"]


def test_route_echoes_uid_and_fails_closed_on_a_bug(client, monkeypatch):
    from webhook.serve import app as app_mod

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(app_mod, "decide", broken)
    resp = client.post("/validate?timeout=10s", json=GOOD)
    assert resp.status_code == 200
    assert resp.json["response"]["uid"] == GOOD["request"]["uid"]
    assert resp.json["response"]["allowed"] is False
    assert "could not decide" in resp.json["response"]["status"]["message"]


def test_unknown_paths_are_json_404(client):
    resp = client.get("/nope")
    assert resp.status_code == 404 and resp.is_json
