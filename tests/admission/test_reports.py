"""PolicyReports from judged workloads: the exact reports, valid against the real CRD schema.

The schema is the v1alpha2 openAPIV3Schema of the PolicyReport CRD vendored unchanged in
tests/data (kubernetes-sigs/wg-policy-prototypes). It is checked the way kube-apiserver would,
and a little stricter where the apiserver would silently lose data:
- `x-kubernetes-*` extensions are translated (int-or-string, preserve-unknown-fields) or
  dropped; `nullable` allows null.
- An object with declared properties rejects any other field: the apiserver prunes unknown
  fields of a structural schema without a word, so a misspelled field would vanish unseen.
- `integer` means an integer, never 1.0 or True (Go decodes neither into int64), and the
  int32/int64 formats are range checked.
- `metadata` is only `type: object` in the CRD; the apiserver validates it as ObjectMeta:
  name a DNS subdomain, namespace a DNS label, labels keys and values as Kubernetes has them.
- apiVersion and kind must be a version the CRD serves and its kind.
"""
from __future__ import annotations

import copy
import json
import re

import jsonschema
import pytest
import yaml

from tests.builders import REPO
from webhook.admission import reports
from webhook.admission.reports import JudgedImage, Workload, policy_reports

CRD_PATH = REPO / "tests" / "data" / "wgpolicyk8s.io_policyreports.yaml"
VERSION = "v1alpha2"

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = rf"^{_LABEL}(\.{_LABEL})*$"
DNS_LABEL = rf"^{_LABEL}$"
LABEL_KEY = rf"^({_LABEL}(\.{_LABEL})*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
METADATA = {
    "type": "object", "required": ["name", "namespace"], "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": DNS_SUBDOMAIN},
        "namespace": {"type": "string", "maxLength": 63, "pattern": DNS_LABEL},
        "labels": {"type": "object", "propertyNames": {"pattern": LABEL_KEY},
                   "additionalProperties": {"type": "string", "pattern": LABEL_VALUE}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def to_jsonschema(node):
    """A Kubernetes structural schema as JSON Schema (see the module docstring)."""
    if isinstance(node, list):
        return [to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {name: to_jsonschema(s) for name, s in value.items()}
        else:
            out[key] = to_jsonschema(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (out.get("type") == "object" and "properties" in out
            and "additionalProperties" not in out
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def load_crd() -> dict:
    return yaml.safe_load(CRD_PATH.read_text())


def crd_validator() -> jsonschema.protocols.Validator:
    crd = load_crd()
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == VERSION]
    assert version["served"] is True
    schema = to_jsonschema(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = METADATA
    formats = jsonschema.FormatChecker()
    for fmt, bits in (("int32", 32), ("int64", 64)):
        formats.checks(fmt)(lambda v, bits=bits: not isinstance(v, int)
                            or -2 ** (bits - 1) <= v < 2 ** (bits - 1))
    types = jsonschema.Draft7Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool))
    cls = jsonschema.validators.extend(jsonschema.Draft7Validator, type_checker=types)
    cls.check_schema(schema)
    return cls(schema, format_checker=formats)


VALIDATOR = crd_validator()
CRD = load_crd()


def problems(report: dict) -> list[str]:
    """Why the apiserver would refuse (or silently change) this report; [] when it would not."""
    out = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
           for e in VALIDATOR.iter_errors(report)]
    served = {f"{CRD['spec']['group']}/{v['name']}" for v in CRD["spec"]["versions"]
              if v["served"]}
    if report.get("apiVersion") not in served:
        out.append(f"apiVersion {report.get('apiVersion')!r} is not served: {sorted(served)}")
    if report.get("kind") != CRD["spec"]["names"]["kind"]:
        out.append(f"kind {report.get('kind')!r}")
    return out


# -- the workloads -----------------------------------------------------------------------

T0 = 1_700_000_000.25            # judged_at of the shop workloads
T1 = 1_700_003_600.0             # judged_at of the tools workloads
NOW = 1_700_007_200.5
DIGEST_APP = "sha256:" + "a" * 64
DIGEST_SIDECAR = "sha256:" + "b" * 64
DIGEST_JOB = "sha256:" + "c" * 64
CONTENT = {"product": "debian12", "profile": "xccdf_org.ssgproject.content_profile_standard",
           "content": "ssg-debian12-ds.xml", "content_sha256": "d" * 64}
APP = JudgedImage(
    path="spec.template.spec.containers[0].image", image="registry.test/shop/app:1.2",
    digest=DIGEST_APP, state="fail", policy="baseline", feed_sha256="e" * 64, **CONTENT,
    reasons=(
        {"id": "CVE-2024-0001", "kind": "cve", "severity": "critical",
         "title": "CVE-2024-0001 openssl 3.0.11-1 (fixed in 3.0.13-1)"},
        {"id": "package_telnet_removed", "kind": "rule", "severity": "high",
         "title": "Uninstall   telnet\n  package"},
        {"id": "file_permissions_etc_shadow", "kind": "rule", "severity": "unknown",
         "title": "Verify Permissions on /etc/shadow"},
    ))
SIDECAR = JudgedImage(path="spec.template.spec.containers[1].image",
                      image="registry.test/shop/proxy:2", digest=DIGEST_SIDECAR, state="pass",
                      policy="baseline", **CONTENT)
DEPLOYMENT = Workload("shop", "Deployment", "web", "uid-web", (APP, SIDECAR), judged_at=T0)
PENDING_POD = Workload("shop", "Pod", "migrate", "uid-migrate", (
    JudgedImage(path="spec.containers[0].image", image="registry.test/shop/migrate:9",
                digest="sha256:" + "f" * 64, state="pending", policy="baseline",
                detail="scan queued"),), judged_at=T0)
UNSUPPORTED_POD = Workload("tools", "Pod", "debug", "uid-debug", (
    JudgedImage(path="spec.containers[0].image", image="registry.test/alpine:3.20",
                digest="sha256:" + "1" * 64, state="unsupported", policy="baseline",
                detail="alpine 3.20 is not a product of the policy's content"),), judged_at=T1)
CRONJOB = Workload("tools", "CronJob", "nightly", "uid-nightly", (
    JudgedImage(path="spec.jobTemplate.spec.template.spec.containers[0].image",
                image="registry.test/tools/backup:5", digest=DIGEST_JOB, state="pass",
                policy="strict", **CONTENT),))        # judged_at unknown: stamped NOW
WORKLOADS = [UNSUPPORTED_POD, DEPLOYMENT, CRONJOB, PENDING_POD]

WEB = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "namespace": "shop",
       "uid": "uid-web"}
MIGRATE = {"apiVersion": "v1", "kind": "Pod", "name": "migrate", "namespace": "shop",
           "uid": "uid-migrate"}
DEBUG = {"apiVersion": "v1", "kind": "Pod", "name": "debug", "namespace": "tools",
         "uid": "uid-debug"}
NIGHTLY = {"apiVersion": "batch/v1", "kind": "CronJob", "name": "nightly", "namespace": "tools",
           "uid": "uid-nightly"}
APP_PROPS = {"digest": DIGEST_APP, "image": "registry.test/shop/app:1.2",
             "container_path": "spec.template.spec.containers[0].image", "state": "fail",
             **CONTENT, "feed_sha256": "e" * 64}
TS0 = {"seconds": 1_700_000_000, "nanos": 250_000_000}
TS1 = {"seconds": 1_700_003_600, "nanos": 0}
TS_NOW = {"seconds": 1_700_007_200, "nanos": 500_000_000}
META = {"labels": {"app.kubernetes.io/managed-by": "scapgate"}}

SHOP_FAILS = [
    {"source": "scapgate", "policy": "baseline", "rule": "CVE-2024-0001", "result": "fail",
     "severity": "critical", "category": "CVE",
     "message": "CVE-2024-0001 openssl 3.0.11-1 (fixed in 3.0.13-1)", "timestamp": TS0,
     "resources": [WEB], "properties": APP_PROPS},
    {"source": "scapgate", "policy": "baseline", "rule": "package_telnet_removed",
     "result": "fail", "severity": "high", "category": "SCAP rule",
     "message": "Uninstall telnet package", "timestamp": TS0, "resources": [WEB],
     "properties": APP_PROPS},
    {"source": "scapgate", "policy": "baseline", "rule": "file_permissions_etc_shadow",
     "result": "fail", "category": "SCAP rule",            # severity unknown: left out
     "message": "Verify Permissions on /etc/shadow", "timestamp": TS0, "resources": [WEB],
     "properties": APP_PROPS},
]
SIDECAR_PASS = {
    "source": "scapgate", "policy": "baseline", "rule": "scan", "result": "pass",
    "category": "Image scan", "message": "image passed the policy", "timestamp": TS0,
    "resources": [WEB],
    "properties": {"digest": DIGEST_SIDECAR, "image": "registry.test/shop/proxy:2",
                   "container_path": "spec.template.spec.containers[1].image", "state": "pass",
                   **CONTENT}}
MIGRATE_SKIP = {
    "source": "scapgate", "policy": "baseline", "rule": "scan", "result": "skip",
    "category": "Image scan", "message": "scan queued", "timestamp": TS0, "resources": [MIGRATE],
    "properties": {"digest": "sha256:" + "f" * 64, "image": "registry.test/shop/migrate:9",
                   "container_path": "spec.containers[0].image", "state": "pending"}}
NIGHTLY_PASS = {
    "source": "scapgate", "policy": "strict", "rule": "scan", "result": "pass",
    "category": "Image scan", "message": "image passed the policy", "timestamp": TS_NOW,
    "resources": [NIGHTLY],
    "properties": {"digest": DIGEST_JOB, "image": "registry.test/tools/backup:5",
                   "container_path": "spec.jobTemplate.spec.template.spec.containers[0].image",
                   "state": "pass", **CONTENT}}
DEBUG_SKIP = {
    "source": "scapgate", "policy": "baseline", "rule": "scan", "result": "skip",
    "category": "Image scan", "message": "alpine 3.20 is not a product of the policy's content",
    "timestamp": TS1, "resources": [DEBUG],
    "properties": {"digest": "sha256:" + "1" * 64, "image": "registry.test/alpine:3.20",
                   "container_path": "spec.containers[0].image", "state": "unsupported"}}


def summary(**counts) -> dict:
    return {"pass": 0, "fail": 0, "warn": 0, "error": 0, "skip": 0, **counts}


def without_ids(reps: list[dict]) -> tuple[list[dict], list[str]]:
    """The reports with each result's resultID taken out, and the ids in order."""
    reps, ids = copy.deepcopy(reps), []
    for rep in reps:
        for r in rep["results"]:
            ids.append(r["properties"].pop("resultID"))
    return reps, ids


# -- the exact reports -----------------------------------------------------------------------

def test_by_default_only_failures_errors_and_warnings_one_report_per_namespace():
    reps = policy_reports(WORKLOADS, now=NOW)
    assert all(problems(r) == [] for r in reps)
    got, ids = without_ids(reps)
    assert got == [
        {"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",
         "metadata": {"name": "scapgate-shop", "namespace": "shop", **META},
         "summary": summary(fail=3), "results": SHOP_FAILS},
        {"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",      # nothing failed:
         "metadata": {"name": "scapgate-tools", "namespace": "tools", **META},  # applying it
         "summary": summary(), "results": []},                                 # clears the old
    ]
    assert len(ids) == len(set(ids)) == 3 and all(re.fullmatch(r"[0-9a-f]{20}", i) for i in ids)


def test_all_results_adds_passes_and_skips():
    reps = policy_reports(WORKLOADS, all_results=True, now=NOW)
    assert all(problems(r) == [] for r in reps)
    got, _ = without_ids(reps)
    assert got == [
        {"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",
         "metadata": {"name": "scapgate-shop", "namespace": "shop", **META},
         "summary": summary(fail=3, skip=1) | {"pass": 1},
         "results": [*SHOP_FAILS, SIDECAR_PASS, MIGRATE_SKIP]},
        {"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",
         "metadata": {"name": "scapgate-tools", "namespace": "tools", **META},
         "summary": summary(skip=1) | {"pass": 1},
         "results": [NIGHTLY_PASS, DEBUG_SKIP]},
    ]


def test_the_same_findings_in_any_order_give_the_same_reports_and_ids():
    first = policy_reports(WORKLOADS, all_results=True, now=NOW)
    again = policy_reports(reversed(WORKLOADS), all_results=True, now=NOW)
    assert json.dumps(first) == json.dumps(again)


def test_result_ids_tell_apart_two_containers_failing_the_same_rule():
    reason = ({"id": "r1", "kind": "rule", "severity": "low", "title": "same"},)
    a = JudgedImage("spec.containers[0].image", "x:1", DIGEST_APP, "fail", "p", reason)
    b = JudgedImage("spec.containers[1].image", "x:1", DIGEST_APP, "fail", "p", reason)
    (rep,) = policy_reports([Workload("ns", "Pod", "p", "u", (a, b), judged_at=T0)])
    first, second = rep["results"]
    assert {k: v for k, v in first.items() if k != "properties"} == \
        {k: v for k, v in second.items() if k != "properties"}
    assert first["properties"]["resultID"] != second["properties"]["resultID"]


def test_the_clock_is_read_only_when_a_result_has_no_time(monkeypatch):
    def no_clock():
        raise AssertionError("read the clock")
    monkeypatch.setattr(reports.time, "time", no_clock)
    policy_reports([DEPLOYMENT, PENDING_POD])          # judged_at known, no now: no clock
    with pytest.raises(AssertionError, match="read the clock"):
        policy_reports([CRONJOB], all_results=True)
    monkeypatch.setattr(reports.time, "time", lambda: NOW)
    (rep,) = policy_reports([CRONJOB], all_results=True)
    assert rep["results"][0]["timestamp"] == TS_NOW


@pytest.mark.parametrize("state, result, rule, category, message, default", [
    ("pass", "pass", "scan", "Image scan", "image passed the policy", False),
    ("fail", "fail", "scan", "Image scan", "image failed the policy", True),   # no reasons kept
    ("pending", "skip", "scan", "Image scan", "scan pending: the image is judged when its "
     "scan finishes", False),
    ("unsupported", "skip", "scan", "Image scan", "image not supported by the policy's SCAP "
     "content", False),
    ("error", "error", "scan", "Image scan", "the image could not be scanned", True),
    ("stale-feed", "warn", "cve-feed", "CVE feed", "CVEs not judged: no current CVE feed for "
     "this image", True),
    ("exploded", "error", "scan", "Image scan", "unknown state 'exploded'", True),
])
def test_each_state_is_one_result_per_image(state, result, rule, category, message, default):
    img = JudgedImage("spec.containers[0].image", "x:1", DIGEST_APP, state, "p")
    wl = Workload("ns", "Pod", "p", "u", (img,), judged_at=T0)
    (rep,) = policy_reports([wl], all_results=True)
    assert problems(rep) == []
    (r,) = rep["results"]
    assert (r["result"], r["rule"], r["category"], r["message"]) == (result, rule, category,
                                                                     message)
    assert "severity" not in r and r["properties"]["state"] == state
    (rep,) = policy_reports([wl])
    assert len(rep["results"]) == int(default) and rep["summary"][result] == int(default)
    detailed = Workload("ns", "Pod", "p", "u", (JudgedImage(
        "spec.containers[0].image", "x:1", DIGEST_APP, state, "p", detail="why  it\nis so"),),
        judged_at=T0)
    (rep,) = policy_reports([detailed], all_results=True)
    assert rep["results"][0]["message"] == "why it is so"


@pytest.mark.parametrize("given, crd", [
    ("critical", "critical"), ("HIGH", "high"), ("important", "high"), ("medium", "medium"),
    ("moderate", "medium"), ("low", "low"), ("info", "info"), ("negligible", "info"),
    ("unknown", None), ("", None), ("bogus", None),
])
def test_severities_map_into_the_crds_enum(given, crd):
    img = JudgedImage("spec.containers[0].image", "x:1", DIGEST_APP, "fail", "p",
                      ({"id": "CVE-1", "kind": "cve", "severity": given, "title": "t"},))
    (rep,) = policy_reports([Workload("ns", "Pod", "p", "u", (img,), judged_at=T0)])
    assert problems(rep) == []
    assert rep["results"][0].get("severity") == crd


@pytest.mark.parametrize("kind, api", [
    ("Pod", "v1"), ("ReplicationController", "v1"), ("Deployment", "apps/v1"),
    ("ReplicaSet", "apps/v1"), ("StatefulSet", "apps/v1"), ("DaemonSet", "apps/v1"),
    ("Job", "batch/v1"), ("CronJob", "batch/v1"), ("Rollout", None),
])
def test_api_version_derived_from_the_kind(kind, api):
    img = JudgedImage("spec.containers[0].image", "x:1", DIGEST_APP, "error", "p")
    (rep,) = policy_reports([Workload("ns", kind, "w", "", (img,), judged_at=T0)])
    assert problems(rep) == []
    ref = rep["results"][0]["resources"][0]
    assert ref.get("apiVersion") == api and "uid" not in ref        # no uid known: left out
    (rep,) = policy_reports([Workload("ns", kind, "w", "u", (img,), "argoproj.io/v1alpha1",
                                      judged_at=T0)])
    assert rep["results"][0]["resources"][0]["apiVersion"] == "argoproj.io/v1alpha1"


def test_a_long_title_is_clipped():
    img = JudgedImage("spec.containers[0].image", "x:1", DIGEST_APP, "fail", "p",
                      ({"id": "r", "kind": "rule", "severity": "low", "title": "word " * 400},))
    (rep,) = policy_reports([Workload("ns", "Pod", "p", "u", (img,), judged_at=T0)])
    message = rep["results"][0]["message"]
    assert len(message) == reports.MESSAGE_LIMIT and message.endswith("…")


# -- the check can fail ------------------------------------------------------------------------

def _set(path: str, value):
    """A change to a valid report at a /-separated path (value ... deletes the key)."""
    def change(rep: dict) -> None:
        *parents, last = path.split("/")
        node = rep
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return change


@pytest.mark.parametrize("change, says", [
    (_set("results/0/severity", "negligible"), "is not one of"),
    (_set("results/0/result", "failed"), "is not one of"),
    (_set("results/0/policy", ...), "'policy' is a required property"),
    (_set("results/0/timestamp/nanos", "5"), "is not of type 'integer'"),
    (_set("results/0/timestamp/seconds", 1.0), "is not of type 'integer'"),
    (_set("results/0/timestamp/nanos", 2 ** 31), "is not a 'int32'"),
    (_set("results/0/timestamp/seconds", ...), "'seconds' is a required property"),
    (_set("results/0/properties/digest", 1), "is not of type 'string'"),
    (_set("results/0/propertes", {"a": "b"}), "Additional properties are not allowed"),
    (_set("results/0/resources", WEB), "is not of type 'array'"),
    (_set("results/0/scored", "yes"), "is not of type 'boolean'"),
    (_set("summary/fail", "3"), "is not of type 'integer'"),
    (_set("metadata/name", "Scapgate_Shop"), "does not match"),
    (_set("metadata/name", "x" * 254), "is too long"),
    (_set("metadata/namespace", ...), "'namespace' is a required property"),
    (_set("metadata/labels", {"app.kubernetes.io/managed-by": "<scapgate>"}), "does not match"),
    (_set("apiVersion", "wgpolicyk8s.io/v9"), "is not served"),
    (_set("kind", "ClusterPolicyReport"), "kind 'ClusterPolicyReport'"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_broken_report_does_not_validate(change, says):
    rep = policy_reports([DEPLOYMENT], now=NOW)[0]
    assert problems(rep) == []
    broken = copy.deepcopy(rep)
    change(broken)
    found = problems(broken)
    assert any(says in p for p in found), found


def test_the_translation_keeps_what_kubernetes_extensions_mean():
    schema = to_jsonschema({"type": "object", "properties": {
        "port": {"x-kubernetes-int-or-string": True},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                 "properties": {"a": {"type": "string"}}},
        "maybe": {"type": "string", "nullable": True},
        "list": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
    }})
    v = jsonschema.Draft7Validator(schema)
    assert v.is_valid({"port": 8080}) and v.is_valid({"port": "http"})
    assert not v.is_valid({"port": 1.5})
    assert v.is_valid({"free": {"a": "x", "anything": 1}}) and v.is_valid({"maybe": None})
    assert not v.is_valid({"other": 1})
    assert "x-kubernetes-list-type" not in json.dumps(schema)


# -- text is data ---------------------------------------------------------------------------

def test_html_in_names_and_titles_passes_through_as_plain_data():
    script = "<script>alert('x')</script>"
    img = JudgedImage(f"spec.containers[0].image{script}", f"registry.test/{script}:1",
                      DIGEST_APP, "fail", f"<img src=x onerror=alert(1)>{script}",
                      ({"id": f"rule{script}", "kind": "rule", "severity": "high",
                        "title": f'{script} & "quotes" &amp; <b>bold</b>'},),
                      product=script, profile=script, content=script)
    pending = JudgedImage("spec.containers[1].image", "x:1", DIGEST_APP, "pending", "p",
                          detail=f"<i>{script}</i>")
    wl = Workload("shop", f"Pod{script}", f"web{script}", f"uid{script}", (img, pending),
                  judged_at=T0)
    (rep,) = policy_reports([wl], all_results=True)
    assert problems(rep) == []
    assert json.loads(json.dumps(rep)) == rep
    fail, skip = rep["results"]
    assert fail["message"] == f'{script} & "quotes" &amp; <b>bold</b>'
    assert fail["rule"] == f"rule{script}" and fail["policy"] == img.policy
    assert fail["resources"] == [{"kind": f"Pod{script}", "name": f"web{script}",
                                  "namespace": "shop", "uid": f"uid{script}"}]
    assert {k: fail["properties"][k] for k in ("image", "container_path", "product",
                                                "profile", "content")} == {
        "image": img.image, "container_path": img.path, "product": script, "profile": script,
        "content": script}
    assert skip["message"] == f"<i>{script}</i>"


@pytest.mark.parametrize("namespace", ["", "Shop", "a_b", "<script>x</script>", "x" * 64])
def test_a_namespace_no_object_can_have_is_a_clear_error(namespace):
    img = JudgedImage("spec.containers[0].image", "x:1", DIGEST_APP, "pass", "p")
    with pytest.raises(ValueError, match="not a Kubernetes namespace name"):
        policy_reports([Workload(namespace, "Pod", "p", "u", (img,))], now=NOW)


def test_report_names_are_dns_subdomains():
    assert reports.report_name("shop") == "scapgate-shop"
    assert reports.report_name("a" * 63) == "scapgate-" + "a" * 63
    for odd in ("Shop_1", "x..y", "-a-", "ü"):
        assert re.fullmatch(DNS_SUBDOMAIN, reports.report_name(odd)), odd


# -- bounded -------------------------------------------------------------------------------

def failing(n: int, severities=("low",), image: str = "x:1") -> JudgedImage:
    return JudgedImage("spec.containers[0].image", image, DIGEST_APP, "fail", "p", tuple(
        {"id": f"rule_{i:04d}", "kind": "rule", "severity": severities[i % len(severities)],
         "title": f"rule {i}"} for i in range(n)))


def test_exactly_the_limit_is_not_cut():
    (rep,) = policy_reports([Workload("ns", "Pod", "p", "u", (failing(1000),), judged_at=T0)])
    assert len(rep["results"]) == 1000 and rep["summary"]["fail"] == 1000
    assert all(r["rule"] != "report-limit" for r in rep["results"])
    assert problems(rep) == []


def test_past_1000_results_the_most_important_are_kept_and_a_note_counts_the_rest():
    # 1,200 failing rules: rule i has severity low, critical, medium, high for i % 4 = 0..3,
    # and one image nobody could scan.
    img = failing(1200, ("low", "critical", "medium", "high"))
    broken = JudgedImage("spec.containers[1].image", "y:1", DIGEST_SIDECAR, "error", "p",
                         detail="registry unreachable")
    (rep,) = policy_reports([Workload("ns", "Deployment", "d", "u", (img, broken),
                                      judged_at=T0)])
    assert problems(rep) == []
    assert rep["summary"] == summary(fail=1200, error=1)            # the true counts
    *kept, note = rep["results"]
    assert len(rep["results"]) == 1000 and len(kept) == 999
    assert [r["result"] for r in kept].count("error") == 1           # the error is kept
    fails = [r for r in kept if r["result"] == "fail"]
    by_sev = {s: sum(r["severity"] == s for r in fails) for s in ("critical", "high", "medium",
                                                                   "low")}
    assert by_sev == {"critical": 300, "high": 300, "medium": 300, "low": 98}
    lows = [int(r["rule"][5:]) for r in fails if r["severity"] == "low"]
    assert lows == list(range(0, 98 * 4, 4))                        # the first lows, in order
    assert [r["rule"] for r in fails] == sorted(r["rule"] for r in fails)    # listed in order
    assert note == {
        "source": "scapgate", "policy": "scapgate", "rule": "report-limit", "result": "warn",
        "category": "Report",
        "message": "202 more results left out of this report (202 fail): a report holds at "
                   "most 1000 results and about 1 MB; summary counts them all, the inventory "
                   "lists every image",
        "timestamp": TS0,
        "properties": {"omitted": "202", "limit_results": "1000", "limit_bytes": "1000000",
                       "omitted_fail": "202", "resultID": "scapgate-report-limit-ns"}}
    assert len(json.dumps(rep).encode()) < 1_500_000


def test_past_the_byte_budget_results_are_cut_before_1000():
    image = "registry.test/" + "very-long-repository-name/" * 80 + "app:1"     # ~2 KB
    (rep,) = policy_reports([Workload("ns", "Pod", "p", "u", (failing(600, image=image),),
                                      judged_at=T0)])
    assert problems(rep) == []
    *kept, note = rep["results"]
    assert note["rule"] == "report-limit" and 300 < len(kept) < 600
    assert note["properties"]["omitted"] == str(600 - len(kept))
    size = len(json.dumps(rep["results"], ensure_ascii=False, separators=(",", ":")).encode())
    assert size <= reports.MAX_RESULTS_BYTES
    assert rep["summary"]["fail"] == 600


def test_the_cut_is_per_namespace_and_counts_only_the_selection():
    big = Workload("big", "Pod", "p", "u", (failing(1001),), judged_at=T0)
    small = Workload("small", "Pod", "p", "u", (failing(3),), judged_at=T0)
    passing = Workload("big", "Pod", "q", "v", (JudgedImage("spec.containers[0].image", "x:1",
                                                            DIGEST_APP, "pass", "p"),),
                       judged_at=T0)
    big_rep, small_rep = policy_reports([big, small, passing])
    assert len(big_rep["results"]) == 1000 and big_rep["results"][-1]["rule"] == "report-limit"
    assert big_rep["results"][-1]["properties"]["omitted"] == "2"
    assert big_rep["summary"] == summary(fail=1001)                 # the pass is not selected
    assert len(small_rep["results"]) == 3
    big_all, _ = policy_reports([big, small, passing], all_results=True)
    assert big_all["summary"] == summary(fail=1001) | {"pass": 1}
    assert big_all["results"][-1]["properties"]["omitted"] == "3"   # passes go first
    assert big_all["results"][-1]["properties"]["omitted_pass"] == "1"
