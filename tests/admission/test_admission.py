"""The decision function over plain data, with the scan service and registry swapped at our
own seams (tests/webhook_fixtures.py: FakeService, FakeRegistry, FakePipeline); the policies,
the resolver and the message building are the real ones."""
from __future__ import annotations

import re
import threading
import time

import pytest
import yaml

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
from webhook.admission.budget import Budget
from webhook.admission.decide import decide
from webhook.admission.memo import Memo
from webhook.admission.model import Decision, Deps
from webhook.scan.resolver import Resolver
from webhook.scan.results import RuleResult, ScanResult, error_result, unsupported_result

NOW = 1_800_000_000.0
D = {name: "sha256:" + ch * 64 for name, ch in
     (("good", "1"), ("bad", "2"), ("many", "3"), ("alpine", "4"), ("fresh", "5"),
      ("busybox", "6"))}
IMG = {name: f"registry.test/team/{name}:1" for name in D}
RULE = "xccdf_org.ssgproject.content_rule_"
BUSYBOX_SAYS = "no SCAP content for busybox (no os-release; bin/busybox): not judged"
BAD_RULES = [RuleResult(RULE + "package_inetutils-telnetd_removed", "Uninstall telnetd", "high",
                        "fail"),
             RuleResult(RULE + "file_permissions_etc_shadow", "Verify Permissions on shadow File",
                        "medium", "fail"),
             RuleResult(RULE + "package_nis_removed", "Uninstall nis", "low", "fail"),
             RuleResult(RULE + "file_owner_etc_passwd", "Verify owner of passwd", "medium", "pass")]
MANY_RULES = BAD_RULES + [RuleResult(RULE + f"rule_{c}", f"Rule {c}", "medium", "fail")
                          for c in "abc"]


def scan(job_or_key, *, scanned_at: float = NOW - 60, timings=None) -> ScanResult:
    """What a scan of each test image finds."""
    key = getattr(job_or_key, "key", job_or_key)
    name = next(n for n, d in D.items() if d == key.digest)
    if name == "alpine":
        return error_result(key, IMG[name], "content ssg-debian12-ds.xml does not apply to this "
                            "image (ID=alpine, VERSION_ID=3.20.3)", permanent=True, now=scanned_at)
    if name == "busybox":
        return unsupported_result(key, IMG[name], BUSYBOX_SAYS, product="",
                                  identity={"distro": "busybox", "version": ""}, now=scanned_at)
    rules = {"bad": BAD_RULES, "many": MANY_RULES}.get(name, BAD_RULES[3:])
    return ScanResult(key=key, image=IMG[name], rules=list(rules), scanned_at=scanned_at,
                      timings=timings or {"fetch": 0.5, "evaluate": 1.5})


@pytest.fixture
def policies(tmp_path):
    """default (enforce) + one namespace per mode and action, as the server tests use."""
    ds = tmp_path / "content" / "ds.xml"
    ds.parent.mkdir()
    ds.write_text("<not-really-scap/>")
    root = tmp_path / "policies"
    root.mkdir()
    docs = [
        policy_doc("default", default=True, priority=0, datastream=str(ds),
                   exclude=["kube-system"]),
        policy_doc("warn", namespaces=["team-warn"], enforcement="warn", datastream=str(ds)),
        policy_doc("audit", namespaces=["team-audit"], enforcement="audit", datastream=str(ds)),
        policy_doc("lenient", namespaces=["team-lenient"], datastream=str(ds),
                   actions={"pending": "warn", "error": "warn", "unsupported": "warn"}),
        policy_doc("quiet", namespaces=["team-quiet"], datastream=str(ds),
                   actions={"pending": "allow", "error": "allow", "unsupported": "allow"}),
        policy_doc("strict", namespaces=["team-strict"], datastream=str(ds),
                   actions={"stale": "pending"}, max_scan_age="1d"),
        policy_doc("glass", namespaces=["team-glass"], datastream=str(ds),
                   break_glass_users=["oncall"]),
    ]
    for doc in docs:
        (root / f"{doc['metadata']['name']}.yaml").write_text(yaml.safe_dump(doc))
    return policy_mod.load_set(str(root))


def make_deps(policies, service, registry=None, **kw) -> Deps:
    registry = registry or FakeRegistry({n: d for n, d in D.items()})
    return Deps(policies=lambda: policies, service=service,
                          resolver=Resolver(registry, ttl_s=30), key_for=FakePipeline().key,
                          clock=lambda: NOW, policy_root=str(policies.source), **kw)


def run(deps, review, budget_s: float = 8.5) -> Decision:
    return decide(review["request"], deps, Budget(budget_s))


def pod(*images, namespace="team-a", **kw) -> dict:
    return make_review(workload("Pod", pod_spec([IMG.get(i, i) for i in images]),
                                namespace=namespace), **kw)


def message(d: Decision) -> str:
    return d.response.get("status", {}).get("message", "")


# -- the table of states and actions ---------------------------------------------------------

@pytest.mark.parametrize("namespace, image, scan_s, allowed, verdict, says, warns", [
    ("team-a", "good", 0, True, "pass", None, None),
    ("team-a", "bad", 0, False, "fail", "fails policy default", None),
    ("team-warn", "bad", 0, True, "fail", None, "2 failing rules (warn mode)"),
    ("team-audit", "bad", 0, True, "fail", None, None),
    ("team-a", "alpine", 0, False, "error", "cannot be scanned under policy default", None),
    ("team-lenient", "alpine", 0, True, "error", None, "not scanned: content"),
    ("team-quiet", "alpine", 0, True, "error", None, None),
    ("team-a", "good", 60, False, "pending", "in progress, retry in about", None),
    ("team-lenient", "good", 60, True, "pending", None, "scan in progress"),
    ("team-quiet", "good", 60, True, "pending", None, None),
    ("team-warn", "good", 60, True, "pending", None, "scan in progress"),
    ("team-a", "busybox", 0, False, "unsupported",
     "is denied by policy default (actions.unsupported: deny): " + BUSYBOX_SAYS, None),
    ("team-lenient", "busybox", 0, True, "unsupported", None,
     "spec.containers[0].image: " + BUSYBOX_SAYS),
    ("team-quiet", "busybox", 0, True, "unsupported", None, None),
    ("team-warn", "busybox", 0, True, "unsupported", None, BUSYBOX_SAYS),
], ids=["pass", "fail-enforce", "fail-warn", "fail-audit", "error-deny", "error-warn",
        "error-allow", "pending-deny", "pending-warn", "pending-allow", "pending-in-warn-mode",
        "unsupported-deny", "unsupported-warn", "unsupported-allow", "unsupported-in-warn-mode"])
def test_states_and_the_policys_actions(policies, namespace, image, scan_s, allowed, verdict,
                                        says, warns):
    d = run(make_deps(policies, FakeService(finish=scan, scan_s=scan_s)),
            pod(image, namespace=namespace), budget_s=0.3)
    assert d.response["allowed"] is allowed
    assert d.verdict == verdict
    assert d.response["auditAnnotations"]["verdict"] == verdict
    if says:
        assert says in message(d)
    else:
        assert "status" not in d.response
    warnings = d.response.get("warnings", [])
    assert (any(warns in w for w in warnings) if warns else warnings == []), warnings


def test_unsupported_images_are_named_in_the_audit_annotations(policies):
    d = run(make_deps(policies, FakeService(finish=scan)),
            pod("good", "busybox", namespace="team-lenient"))
    audit = d.response["auditAnnotations"]
    assert d.response["allowed"] is True and audit["verdict"] == "unsupported"
    assert audit["unsupported"] == f"{IMG['busybox']}@{D['busybox']}=busybox"
    assert f"{IMG['busybox']}@{D['busybox']}=unsupported" in audit["images"]
    assert all(len(w) <= 120 for w in d.response["warnings"])


def test_denial_names_path_digest_profile_worst_rules_report_and_reproduction(policies):
    deps = make_deps(policies, FakeService(finish=scan), report_url="https://scapgate.example/")
    d = run(deps, make_review(workload("Deployment", pod_spec([IMG["good"], IMG["many"]]))))
    assert message(d).splitlines() == [
        f"spec.template.spec.containers[1].image: {IMG['many']} ({D['many']}) fails policy "
        "default, profile standard:",
        "  high   package_inetutils-telnetd_removed  Uninstall telnetd",
        "  medium file_permissions_etc_shadow  Verify Permissions on shadow File",
        "  medium rule_a  Rule a",
        "  +2 more",
        f"  full report: GET https://scapgate.example/reports/{D['many']}?policy=default",
        f"  reproduce: scapgate scan {IMG['many']}@{D['many']} --policy policies/default.yaml",
    ]
    assert d.response["status"]["code"] == 403
    assert d.reason == "rules"


def test_pending_message_names_the_pinned_image_and_a_retry_time(policies):
    service = FakeService(finish=scan, scan_s=60)
    d = run(make_deps(policies, service), pod("fresh"), budget_s=0.2)
    assert re.fullmatch(rf"spec\.containers\[0\]\.image: scan of {re.escape(IMG['fresh'])}"
                        rf"@{D['fresh']} in progress, retry in about [1-9]\d* s", message(d))
    assert [j.image for j in service.jobs] == [f"{IMG['fresh']}@{D['fresh']}"]
    assert d.checks[0].cache == "miss"


def test_a_scan_finishing_inside_the_budget_decides_and_teaches_the_estimate(policies):
    deps = make_deps(policies, FakeService(finish=lambda j: scan(j, timings={"evaluate": 2.0}),
                                           scan_s=0.1))
    d = run(deps, pod("bad"), budget_s=2.0)
    assert d.verdict == "fail" and d.checks[0].cache == "miss"
    assert deps.estimate.seconds < 6.0                     # moved toward the 2 s scan


def test_every_missing_scan_is_submitted_before_any_wait(policies):
    """Early scans: all images are queued at once, and the waits share one budget."""
    service = FakeService(finish=scan, scan_s=60)
    t0 = time.monotonic()
    d = run(make_deps(policies, service), pod("good", "fresh", "bad"), budget_s=0.3)
    assert time.monotonic() - t0 < 0.6
    assert sorted(j.key.digest for j in service.jobs) == sorted([D["good"], D["fresh"], D["bad"]])
    assert d.verdict == "pending"


def test_the_same_image_in_several_containers_is_judged_once(policies):
    service = FakeService(finish=scan)
    review = make_review(workload("Pod", pod_spec([IMG["bad"]], init=[IMG["bad"]])))
    d = run(make_deps(policies, service), review)
    assert len(service.jobs) == 1
    assert message(d).startswith("spec.initContainers[0].image, spec.containers[0].image: ")


# -- stored results: stale, errors, a full queue, a store that is down --------------------------

@pytest.mark.parametrize("namespace, rescan_s, verdict, note", [
    ("team-a", 0, "pass", "days old; rescan started"),
    ("team-strict", 0, "fail", None),
    ("team-strict", 60, "pending", None),
], ids=["stale-decides-while-rescanning", "stale-pending-gets-the-rescan",
        "stale-pending-beyond-budget"])
def test_stale_results(policies, namespace, rescan_s, verdict, note):
    """A result older than maxScanAge: a rescan is submitted; `stale: decide` judges the old
    result meanwhile, `stale: pending` waits for the new one within the budget."""
    def rescan(job):                                     # the image got worse meanwhile
        return ScanResult(key=job.key, image=job.image, rules=BAD_RULES, scanned_at=NOW)

    service = FakeService(finish=rescan, scan_s=rescan_s)
    old = scan(FakePipeline().key(D["good"], policies.select(namespace).content()),
               scanned_at=NOW - 10 * 86400)
    service.put(old)
    d = run(make_deps(policies, service), pod("good", namespace=namespace), budget_s=0.3)
    assert d.verdict == verdict
    assert len(service.jobs) == 1 and d.checks[0].cache == "stale"
    if note:
        assert any(note in w for w in d.response["warnings"]), d.response


@pytest.mark.parametrize("age_s, permanent, resubmitted, verdict", [
    (3600, False, True, "pass"),
    (5, False, False, "error"),
    (3600, True, False, "error"),
], ids=["old-transient-retried", "fresh-transient-kept", "permanent-kept"])
def test_error_results_are_retried_only_when_it_can_help(policies, age_s, permanent,
                                                         resubmitted, verdict):
    service = FakeService(finish=scan)
    key = FakePipeline().key(D["good"], policies.select("team-a").content())
    service.put(error_result(key, IMG["good"], "registry unreachable", permanent=permanent,
                             now=NOW - age_s))
    d = run(make_deps(policies, service), pod("good"))
    assert bool(service.jobs) is resubmitted
    assert d.verdict == verdict


def test_a_full_queue_is_the_error_state(policies):
    d = run(make_deps(policies, FakeService(finish=scan, full=True)), pod("fresh"))
    assert d.verdict == "error" and "scan queue is full" in message(d)


@pytest.mark.parametrize("namespace, allowed", [("team-a", False), ("team-lenient", True)])
def test_a_store_that_is_down_is_the_error_state(policies, namespace, allowed):
    d = run(make_deps(policies, FakeService(down=True)), pod("good", namespace=namespace))
    assert d.verdict == "error" and d.response["allowed"] is allowed
    text = message(d) + " ".join(d.response.get("warnings", []))
    assert "scan service unavailable" in text


# -- references and registries -------------------------------------------------------------------

@pytest.mark.parametrize("image, registry, says", [
    ("Registry.Test/UPPER/case:1", {}, "invalid repository name"),
    ("registry.test/team/missing:1", {}, "not found"),
    ("registry.test/team/slow:1", {"slow": D["good"]}, "did not answer"),
], ids=["invalid-reference", "not-found", "registry-too-slow"])
def test_images_that_cannot_be_resolved_are_the_error_state(policies, image, registry, says):
    reg = FakeRegistry(registry, delay_s=1.0 if "slow" in image else 0.0)
    d = run(make_deps(policies, FakeService(finish=scan), reg), pod(image), budget_s=0.2)
    assert d.verdict == "error" and d.response["allowed"] is False
    assert says in message(d)


def test_resolver_caches_tags_for_the_ttl_and_pins_longer_and_never_errors():
    clock = [0.0]
    reg = FakeRegistry({"app": ("sha256:" + "a" * 64, "sha256:" + "f" * 64)})
    r = Resolver(reg, ttl_s=30, pinned_ttl_s=3600, clock=lambda: clock[0])
    from webhook.scan.images import parse
    tag, pinned = parse("r.test/x/app:1"), parse("r.test/x/app@sha256:" + "f" * 64)
    assert r.resolve(tag, timeout_s=5).cached is False
    assert r.resolve(tag, timeout_s=5).cached is True
    assert r.resolve(pinned, timeout_s=5).digest == "sha256:" + "a" * 64
    clock[0] = 31
    assert r.resolve(tag, timeout_s=5).cached is False            # the tag may have moved
    assert r.resolve(pinned, timeout_s=5).cached is True          # a digest cannot
    assert len(reg.calls) == 3
    with pytest.raises(Exception):
        r.resolve(parse("r.test/x/gone:1"), timeout_s=5)
    with pytest.raises(Exception):
        r.resolve(parse("r.test/x/gone:1"), timeout_s=5)
    assert reg.calls.count("r.test/x/gone:1") == 2                # errors are not cached


def test_resolver_refreshes_a_busy_tag_in_the_background_before_it_expires():
    """Past half its TTL a tag's answer is still served, and asked again in the background:
    a tag in steady use never makes a request wait for the registry, and no answer served is
    older than the TTL (the moved tag is seen within it)."""
    clock = [0.0]
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    reg = FakeRegistry({"app": a})
    r = Resolver(reg, ttl_s=30, clock=lambda: clock[0])
    from webhook.scan.images import parse
    tag = parse("r.test/x/app:1")
    r.resolve(tag, timeout_s=5)
    clock[0] = 10
    assert r.resolve(tag, timeout_s=5).digest == a and len(reg.calls) == 1   # young: no call
    clock[0] = 16
    reg.answers["app"] = b                                                    # the tag moves
    served = r.resolve(tag, timeout_s=5)
    assert (served.digest, served.cached) == (a, True)       # no wait for the registry
    for refresh in list(r._inflight.values()):
        refresh.result(timeout=5)
    assert len(reg.calls) == 2
    clock[0] = 31                    # the first answer's TTL is over; the refreshed one lives
    served = r.resolve(tag, timeout_s=5)
    assert (served.digest, served.cached) == (b, True) and len(reg.calls) == 2


def test_resolver_asks_the_registry_once_for_concurrent_admissions():
    reg = FakeRegistry({"app": "sha256:" + "a" * 64}, delay_s=0.2)
    r = Resolver(reg)
    from webhook.scan.images import parse
    out = []
    threads = [threading.Thread(target=lambda: out.append(r.resolve(parse("r.test/x/app:1"),
                                                                    timeout_s=5)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 8 and len(reg.calls) == 1


# -- requests that need no work, updates, subresources ------------------------------------

@pytest.mark.parametrize("review, reason", [
    (make_review(workload("ConfigMap", {})), "not_workload"),
    (make_review(None, kind="Pod", operation="DELETE", old=workload("Pod", pod_spec(["x:1"]))),
     "operation"),
    (make_review(workload("Pod", pod_spec(["x:1"])), operation="UPDATE", sub="status",
                 old=workload("Pod", pod_spec(["y:1"]))), "subresource"),
    (make_review(workload("Pod", pod_spec(["x:1"])), operation="UPDATE",
                 old=workload("Pod", pod_spec(["x:1"]))), "unchanged"),
    (make_review(workload("Pod", {"containers": []})), "no_containers"),
    (make_review(workload("Pod", pod_spec([IMG["bad"]]), namespace="kube-system")), "no_policy"),
], ids=["configmap", "delete", "pods-status", "update-same-images", "no-containers",
        "excluded-namespace"])
def test_allowed_without_work(policies, review, reason):
    reg = FakeRegistry()
    d = run(make_deps(policies, FakeService(), reg), review)
    assert d.response == {"allowed": True} and d.reason == reason and d.verdict == "skip"
    assert reg.calls == []


def test_ephemeral_subresource_checks_the_ephemeral_containers_only(policies):
    obj = workload("Pod", pod_spec([IMG["bad"]], ephemeral=[IMG["good"]]))
    d = run(make_deps(policies, FakeService(finish=scan)),
            make_review(obj, operation="UPDATE", sub="ephemeralcontainers",
                        old=workload("Pod", pod_spec([IMG["bad"]]))))
    assert d.response["allowed"] is True
    assert [c.paths for c in d.checks] == ["spec.ephemeralContainers[0].image"]


def test_an_unreadable_object_is_a_denial_not_an_error(policies):
    d = run(make_deps(policies, FakeService()),
            make_review({"kind": "Pod", "metadata": {}, "spec": {"containers": [{"name": "a"}]}}))
    assert d.response["allowed"] is False
    assert message(d) == "cannot read the object: spec.containers[0].image: no image named"


# -- break-glass and audit annotations ----------------------------------------------------------

@pytest.mark.parametrize("user, annotation, allowed, says", [
    ("oncall", "INC-1 checkout down", True, None),
    ("mallory", "INC-1 checkout down", False, "break-glass refused"),
    ("oncall", "", False, "break-glass refused"),
    ("oncall", None, False, "fails policy glass"),
], ids=["listed-user", "unlisted-user", "no-reason", "no-annotation"])
def test_break_glass(policies, user, annotation, allowed, says):
    ann = {} if annotation is None else {"scapgate.io/break-glass": annotation}
    review = make_review(workload("Deployment", pod_spec([IMG["bad"]]), namespace="team-glass",
                                  annotations=ann), user=user)
    d = run(make_deps(policies, FakeService(finish=scan)), review)
    assert d.response["allowed"] is allowed
    if says:
        assert says in message(d)
    else:
        assert "break-glass" in d.response["auditAnnotations"]
        assert any("break-glass" in w for w in d.response["warnings"])


QUALIFIED = re.compile(r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$")


@pytest.mark.parametrize("images", [["good"], ["bad", "good"], ["alpine"], ["fresh"]],
                         ids=["pass", "fail", "error", "pending"])
def test_audit_annotations_are_valid_keys_with_digests(policies, images):
    d = run(make_deps(policies, FakeService(finish=scan, scan_s=60 if images == ["fresh"] else 0)),
            pod(*images), budget_s=0.1)
    ann = d.response["auditAnnotations"]
    assert {"verdict", "policy", "images"} <= set(ann)
    for key, value in ann.items():
        assert QUALIFIED.match(key) and len(key) <= 63 and isinstance(value, str)
    for name in images:
        assert f"@{D[name]}=" in ann["images"]


@pytest.mark.parametrize("kind", ["Pod", "Deployment", "CronJob"])
def test_break_glass_annotation_is_read_from_the_pod_template_too(policies, kind):
    obj = workload(kind, pod_spec([IMG["bad"]]), namespace="team-glass")
    template = {"Pod": obj, "Deployment": obj["spec"].get("template"),
                "CronJob": obj["spec"].get("jobTemplate", {}).get("spec", {}).get("template")}[kind]
    template["metadata"]["annotations"] = {"scapgate.io/break-glass": "INC-7 rollback"}
    d = run(make_deps(policies, FakeService(finish=scan)), make_review(obj, user="oncall"))
    assert d.response["allowed"] is True and d.reason == "break_glass"


RS_CONTROLLER = "system:serviceaccount:kube-system:replicaset-controller"


@pytest.mark.parametrize("user, owned, allowed", [
    (RS_CONTROLLER, True, True),
    (RS_CONTROLLER, False, False),
    ("mallory", True, False),
], ids=["controller-with-owner", "controller-without-owner", "user-claiming-owner"])
def test_pods_of_a_break_glass_owner_inherit_it_only_from_their_controller(policies, user, owned,
                                                                         allowed):
    """A Deployment admitted with break-glass by a listed user must be able to create its pods:
    they come from the ReplicaSet controller, not the user. Nobody else inherits."""
    obj = workload("Pod", pod_spec([IMG["bad"]]), namespace="team-glass",
                   annotations={"scapgate.io/break-glass": "INC-9 rollback"})
    if owned:
        obj["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                               "name": "web-7d9", "uid": "u1", "controller": True}]
    deps = make_deps(policies, FakeService(finish=scan),
                     break_glass_controllers=frozenset({RS_CONTROLLER}))
    d = run(deps, make_review(obj, user=user))
    assert d.response["allowed"] is allowed
    if allowed:
        assert "ReplicaSet/web-7d9" in d.response["auditAnnotations"]["break-glass"]
    else:
        assert "break-glass refused" in message(d)


# -- decisions reused for identical requests (admission.Memo) -------------------------------

class CountingService(FakeService):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.lookups = 0

    def lookup(self, key):
        self.lookups += 1
        return super().lookup(key)


@pytest.fixture
def memo_deps(policies):
    clock = [0.0]
    service = CountingService()
    for name in ("good", "bad"):
        service.put(scan(FakePipeline().key(D[name], policies.select("team-a").content())))
    deps = make_deps(policies, service, memo_s=1.0, memo=Memo(clock=lambda: clock[0]))
    return deps, service, clock


def replica(image="good", *, name="web-1", namespace="team-a", user="system:serviceaccount:"
            "kube-system:replicaset-controller", annotations=None, owners=None, uid=None):
    obj = workload("Pod", pod_spec([IMG.get(image, image)]), name=name, namespace=namespace,
                   annotations=annotations)
    if owners:
        obj["metadata"]["ownerReferences"] = owners
    return make_review(obj, user=user, uid=uid)


def test_replicas_of_one_template_share_one_decision(memo_deps):
    """Pods of one ReplicaSet differ only in name and uid: one decision, reused within memo_s,
    for pass and for fail, and the answer is the same as a fresh one."""
    deps, service, clock = memo_deps
    first = run(deps, replica(name="web-1"))
    looked = service.lookups
    again = run(deps, replica(name="web-2"))
    assert (again.memo, first.memo) == (True, False)
    assert again.response == first.response and service.lookups == looked
    bad = run(deps, replica("bad", name="x-1"))
    bad_again = run(deps, replica("bad", name="x-2"))
    assert bad_again.memo and bad_again.response == bad.response
    assert bad_again.response["allowed"] is False
    clock[0] = 1.5                                       # past memo_s: decided afresh
    later = run(deps, replica(name="web-3"))
    assert not later.memo and service.lookups > looked


@pytest.mark.parametrize("change", [
    {"image": "bad"}, {"namespace": "team-warn"}, {"user": "alice"},
    {"annotations": {"scapgate.io/break-glass": "INC-1"}},
    {"owners": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-x", "uid": "u",
                 "controller": True}]},
])
def test_any_input_of_the_decision_is_in_the_key(memo_deps, change):
    deps, service, _ = memo_deps
    run(deps, replica())
    assert not run(deps, replica(**change)).memo


def test_operation_and_policy_reload_are_in_the_key(memo_deps, policies):
    deps, _, _ = memo_deps
    run(deps, replica())
    update = replica()
    update["request"].update(operation="UPDATE", oldObject=workload("Pod", pod_spec(["x:1"])))
    assert not run(deps, update).memo
    reloaded = policy_mod.PolicySet(policies.policies, source=policies.source)   # a new set
    deps.policies = lambda: reloaded
    assert not run(deps, replica()).memo


def test_pending_and_error_are_never_reused(policies):
    service = CountingService()
    deps = make_deps(policies, service, memo_s=1.0)
    assert run(deps, replica(), budget_s=0.2).verdict == "pending"
    assert not run(deps, replica(), budget_s=0.2).memo
    service.down = True
    assert run(deps, replica("bad")).verdict == "error"
    assert not run(deps, replica("bad")).memo


def test_memo_is_off_by_default_in_deps(policies):
    service = CountingService()
    service.put(scan(FakePipeline().key(D["good"], policies.select("team-a").content())))
    deps = make_deps(policies, service)
    run(deps, replica())
    assert not run(deps, replica()).memo


# -- several platforms (SCAPGATE_PLATFORMS) ---------------------------------------------------

MULTI = {"linux/amd64": D["good"], "linux/arm64": D["bad"]}     # an index whose arm64 is bad


def multi_deps(policies, platforms=("linux/amd64", "linux/arm64")):
    registry = FakeRegistry({**{n: d for n, d in D.items()}, "multi": MULTI,
                             "s390x-only": {"linux/s390x": D["good"]}})
    deps = make_deps(policies, FakeService(finish=scan), registry=registry)
    deps.resolver = Resolver(registry, ttl_s=30, platforms=platforms)
    return deps


def pinned_pod(arch_spec: dict, kind="Pod") -> dict:
    spec = {**pod_spec(["registry.test/team/multi:1"]), **arch_spec}
    return make_review(workload(kind, spec, namespace="team-a"))


def test_every_listed_platform_of_an_index_is_judged_and_the_worst_decides(policies):
    d = run(multi_deps(policies), pod("registry.test/team/multi:1"))
    assert d.response["allowed"] is False and d.verdict == "fail"
    assert message(d).startswith("spec.containers[0].image [linux/arm64]: "
                                 f"registry.test/team/multi:1 ({D['bad']}) fails policy default")
    images = d.response["auditAnnotations"]["images"]
    assert f"multi:1@{D['good']}=pass" in images and f"multi:1@{D['bad']}=fail" in images


def test_one_platform_listed_judges_that_platform_only(policies):
    d = run(multi_deps(policies, ("linux/amd64",)), pod("registry.test/team/multi:1"))
    assert d.response["allowed"] is True and d.verdict == "pass"


@pytest.mark.parametrize("arch_spec,kind,allowed", [
    ({"nodeSelector": {"kubernetes.io/arch": "amd64"}}, "Pod", True),
    ({"nodeSelector": {"kubernetes.io/arch": "arm64"}}, "Pod", False),
    ({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}}},
     "Deployment", True),
    ({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 1, "preference": {"matchExpressions": [
            {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}}]}}},
     "Pod", False),
], ids=["selector-amd64", "selector-arm64", "required-affinity-amd64", "preferred-is-not-a-pin"])
def test_a_pod_pinned_to_an_architecture_is_judged_on_it(policies, arch_spec, kind, allowed):
    d = run(multi_deps(policies), pinned_pod(arch_spec, kind))
    assert d.response["allowed"] is allowed, message(d)


def test_an_index_offering_none_of_the_platforms_is_an_error_naming_them(policies):
    d = run(multi_deps(policies), pod("registry.test/team/s390x-only:1"))
    assert (d.response["allowed"], d.verdict) == (False, "error")
    assert "offers none of the platforms" in message(d)


def test_the_memo_keeps_pinned_and_unpinned_pods_apart(policies):
    deps = multi_deps(policies)
    deps.memo_s = 1.0
    assert run(deps, pinned_pod({"nodeSelector": {"kubernetes.io/arch": "amd64"}})
               ).response["allowed"] is True
    assert run(deps, pinned_pod({})).response["allowed"] is False
