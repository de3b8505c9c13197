"""Bypass attempts: ways a developer could try to run an image the gate would deny.

Most run against the webhook as in production (`scapgate serve`: gunicorn over TLS, real scans
of the session's synthetic images in the real registry), called the way kube-apiserver calls
it. Policy-matching tricks that need policies of their own run against create_app with the
registry and scan service swapped at our seam (tests/webhook_fixtures.py fakes).

The session's images: `good` passes the standard profile, `bad` fails it (telnetd, a 0666
/etc/shadow). A bypass succeeds if any case below admits `bad`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.builders.webhooks import (  # noqa: F401
    FakePipeline,
    FakeRegistry,
    FakeService,
    Server,
    apiserver,
    denial,
    make_certs,
    make_review,
    pod_spec,
    policy_doc,
    server,
    slow_registry,
    webhook_policies,
    workload,
)
from webhook import policy as policy_mod
from webhook.config import Settings
from webhook.scan.results import RuleResult, ScanResult
from webhook.serve.app import create_app

KINDS = ["Pod", "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicaSet",
         "ReplicationController"]


def audit(resp: dict) -> dict:
    return resp["response"].get("auditAnnotations", {})


def decide(client, review_fn, deadline_s: float = 90.0) -> dict:
    """Fresh reviews (timeout 30 s) until the answer is not pending, like a controller."""
    deadline = time.monotonic() + deadline_s
    while True:
        resp = client.review(review_fn(), timeout="30s")
        if audit(resp).get("verdict") != "pending" or time.monotonic() > deadline:
            return resp


@pytest.fixture(scope="module")
def judged(server, images):
    """good and bad have scan results in the server's store."""
    client = server.client()
    for name in ("good", "bad"):
        resp = decide(client, lambda: make_review(workload("Pod", pod_spec([images[name]]))))
        assert audit(resp)["verdict"] in ("pass", "fail"), resp
    client.close()
    return images


@pytest.fixture(scope="module")
def both(registry, tmp_path_factory, judged):
    """One repository holding both images, tagged `good` and `bad`."""
    layout = Path(judged["good"].layout)
    repo = "bypass/both"
    for name in ("good", "bad"):
        registry.push(layout, name, f"{repo}:{name}")
    return f"{registry.host}/{repo}"


# -- every container list -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_bad_image_only_in_init_containers(apiserver, judged, kind):
    obj = workload(kind, pod_spec([judged["good"], judged["good"]], init=[judged["bad"]]))
    resp = apiserver.review(make_review(obj))
    assert resp["response"]["allowed"] is False
    assert "initContainers[0].image" in denial(resp)


def test_ephemeral_container_added_later(apiserver, judged):
    """The pod was admitted with good images; `kubectl debug` adds the bad one through the
    pods/ephemeralcontainers subresource (an UPDATE of the whole pod)."""
    running = workload("Pod", pod_spec([judged["good"]]))
    created = apiserver.review(make_review(running))
    assert created["response"]["allowed"] is True
    debugged = workload("Pod", pod_spec([judged["good"]], ephemeral=[judged["bad"]]))
    resp = apiserver.review(make_review(debugged, operation="UPDATE", old=running,
                                        sub="ephemeralcontainers"))
    assert resp["response"]["allowed"] is False
    assert denial(resp).startswith("spec.ephemeralContainers[0].image:")


def test_ephemeral_container_sneaked_in_as_a_plain_pod_update(apiserver, judged):
    """Ephemeral containers only change through the subresource, but a plain UPDATE naming one
    is judged all the same."""
    running = workload("Pod", pod_spec([judged["good"]]))
    sneaky = workload("Pod", pod_spec([judged["good"]], ephemeral=[judged["bad"]]))
    resp = apiserver.review(make_review(sneaky, operation="UPDATE", old=running))
    assert resp["response"]["allowed"] is False


@pytest.mark.parametrize("old, new, path", [
    (["good"], ["bad"], "spec.containers[0].image"),
    (["good", "bad"], ["bad", "good"], "spec.containers[0].image"),     # moved to a new path
    (["good"], ["good", "bad"], "spec.containers[1].image"),
], ids=["swap", "reorder", "append"])
def test_pod_update_that_swaps_the_image(apiserver, judged, old, new, path):
    before = workload("Pod", pod_spec([judged[n] for n in old]))
    after = workload("Pod", pod_spec([judged[n] for n in new]))
    resp = apiserver.review(make_review(after, operation="UPDATE", old=before))
    assert resp["response"]["allowed"] is False
    assert path in denial(resp)


def test_deployment_rollout_to_a_bad_image(apiserver, judged):
    before = workload("Deployment", pod_spec([judged["good"]]))
    after = workload("Deployment", pod_spec([judged["bad"]]))
    resp = apiserver.review(make_review(after, operation="UPDATE", old=before))
    assert resp["response"]["allowed"] is False


# -- references ---------------------------------------------------------------------------------

def test_tag_and_digest_together_are_judged_by_the_digest(apiserver, both, judged):
    """A runtime pulls by digest when both are given: the tag may lie either way."""
    lying_good = f"{both}:good@{judged['bad'].digest}"
    lying_bad = f"{both}:bad@{judged['good'].digest}"
    denied = decide(apiserver, lambda: make_review(workload("Pod", pod_spec([lying_good]))))
    assert denied["response"]["allowed"] is False
    assert judged["bad"].digest in audit(denied)["images"]
    allowed = decide(apiserver, lambda: make_review(workload("Pod", pod_spec([lying_bad]))))
    assert allowed["response"]["allowed"] is True
    assert judged["good"].digest in audit(allowed)["images"]


@pytest.mark.parametrize("variant", [
    lambda ref: ref.replace("/synthetic/", "/SYNTHETIC/"),          # runtimes refuse it too
    lambda ref: ref + " ",
    lambda ref: ref.replace(":1", ":1\n"),
    lambda ref: ref.replace("127.0.0.1", "LOCALHOST"),             # another name, not trusted
    lambda ref: ref.rsplit(":", 1)[0] + "@sha256:" + "0" * 64,      # a digest that is not there
], ids=["uppercase-repo", "trailing-space", "newline", "host-alias", "unknown-digest"])
def test_reference_variants_of_the_bad_image_are_not_admitted(apiserver, judged, variant):
    ref = variant(str(judged["bad"]))
    resp = decide(apiserver, lambda: make_review(workload("Pod", pod_spec([ref]))))
    assert resp["response"]["allowed"] is False, resp


def test_localhost_means_the_webhooks_own_host_and_fails_closed(apiserver, judged):
    """`localhost:5000/x` names a registry on the *node*; the webhook can only ask its own
    localhost. Nothing answers there, so the image is the error state (denied)."""
    resp = apiserver.review(make_review(workload("Pod", pod_spec(["localhost:5000/x:1"]))))
    assert resp["response"]["allowed"] is False
    assert audit(resp)["verdict"] == "error"
    assert "localhost:5000" in denial(resp)


# -- exemptions and break-glass -----------------------------------------------------------------

@pytest.mark.parametrize("namespace", ["kube-system-evil", "xkube-system", "kube-systemx",
                                       "kube-public-2", "scapgate-dev"])
def test_namespace_exclusion_is_exact(apiserver, judged, namespace):
    """default.yaml excludes kube-system, kube-public, kube-node-lease and scapgate."""
    resp = apiserver.review(make_review(workload("Pod", pod_spec([judged["bad"]]),
                                                 namespace=namespace)))
    assert resp["response"]["allowed"] is False
    assert audit(resp)["verdict"] == "fail"


@pytest.mark.parametrize("user, groups, reason", [
    ("mallory", ["system:authenticated"], "INC-1 urgent"),
    ("ONCALL", ["system:authenticated"], "INC-1 urgent"),
    ("oncall ", ["system:authenticated"], "INC-1 urgent"),
    ("system:serviceaccount:team-glass:oncall", ["system:serviceaccounts"], "INC-1 urgent"),
    ("mallory", ["oncall", "system:masters"], "INC-1 urgent"),           # a group, not the user
    ("oncall", ["system:authenticated"], "   "),                         # no reason given
], ids=["unlisted", "case", "trailing-space", "serviceaccount-suffix", "group-named-like-user",
        "listed-without-reason"])
def test_break_glass_refused(apiserver, judged, user, groups, reason):
    obj = workload("Deployment", pod_spec([judged["bad"]]), namespace="team-glass",
                   annotations={"scapgate.io/break-glass": reason})
    resp = apiserver.review(make_review(obj, user=user, groups=groups))
    assert resp["response"]["allowed"] is False
    assert "break-glass refused" in denial(resp)
    assert json.loads(audit(resp)["break-glass"])["allowed"] is False


def test_break_glass_outside_its_policy_does_nothing(apiserver, judged):
    """The listed user of team-glass is nobody special in another namespace."""
    obj = workload("Pod", pod_spec([judged["bad"]]), namespace="team-a",
                   annotations={"scapgate.io/break-glass": "INC-1"})
    resp = apiserver.review(make_review(obj, user="oncall"))
    assert resp["response"]["allowed"] is False


# -- a tag moved after the scan ---------------------------------------------------------------

@pytest.fixture(scope="module")
def short_ttl_server(tmp_path_factory, registry, webhook_policies, images):
    """A server of our own whose tag → digest answers live 1 s (the default is 30 s)."""
    work = tmp_path_factory.mktemp("bypass-server")
    srv = Server(work, policy_dir=webhook_policies, certs=make_certs(work / "certs"), workers=1,
                 env={"SCAPGATE_INSECURE_REGISTRIES": registry.host,
                      "SCAPGATE_RESOLVE_TTL_S": "1"})
    srv.start()
    yield srv
    srv.stop()


def test_tag_moved_after_the_scan_is_judged_by_the_new_digest(short_ttl_server, registry,
                                                               images):
    """The decision is bound to the digest the tag named at admission (audit annotation), and
    the next admission after the tag moved judges the new digest. What the node pulls later is
    outside the gate: see docs/SECURITY.md (pin digests)."""
    layout = Path(images["good"].layout)
    ref = registry.push(layout, "good", "bypass/moving:1")
    client = short_ttl_server.client()
    try:
        first = decide(client, lambda: make_review(workload("Pod", pod_spec([ref]))))
        assert first["response"]["allowed"] is True
        assert f"@{images['good'].digest}=pass" in audit(first)["images"]
        registry.push(layout, "bad", "bypass/moving:1")              # the tag moves
        time.sleep(1.5)
        second = decide(client, lambda: make_review(workload("Pod", pod_spec([ref]))))
        assert second["response"]["allowed"] is False
        assert f"@{images['bad'].digest}=fail" in audit(second)["images"]
    finally:
        client.close()


# -- policy matching tricks (policies of our own, in process) -----------------------------------

GOOD_D, BAD_D = "sha256:" + "1" * 64, "sha256:" + "2" * 64
RULE = "xccdf_org.ssgproject.content_rule_file_permissions_etc_shadow"


@pytest.fixture
def app_client(tmp_path):
    """default policy excluding kube-system and the image glob registry.test/trusted/*; every
    repository whose name ends in `bad` (or is `x`) resolves to the failing digest."""
    ds = tmp_path / "ds.xml"
    ds.write_text("<x/>")
    doc = policy_doc("default", default=True, datastream=str(ds), exclude=["kube-system"])
    doc["spec"]["match"]["excludeImages"] = ["registry.test/trusted/*"]
    glass = policy_doc("glass", namespaces=["team-glass"], datastream=str(ds))
    glass["spec"]["breakGlass"] = {"users": [], "groups": ["sre"]}
    pset = policy_mod.PolicySet(tuple(policy_mod.from_document(d, path=str(tmp_path / "p.yaml"))
                                      for d in (doc, glass)))

    def finish(job):
        result = "fail" if job.key.digest == BAD_D else "pass"
        return ScanResult(key=job.key, image=job.image, scanned_at=time.time(),
                          rules=[RuleResult(RULE, "shadow", "medium", result)])

    service = FakeService(finish=finish)
    registry = RecordingRegistry()
    app = create_app(Settings(state_dir=str(tmp_path / "state"), policy=str(tmp_path)),
                     policies=pset, service=service, pipeline=FakePipeline(), registry=registry)
    app.testing = True
    client = app.test_client()
    client.registry, client.service = registry, service
    return client


class RecordingRegistry(FakeRegistry):
    """Bad for every repository named *bad or x; records the normalised names it was asked."""

    def resolve(self, ref, *, docker_config=None, platform=None):
        self.calls.append(str(ref))
        last = ref.repository.rsplit("/", 1)[-1]
        d = BAD_D if last.endswith("bad") or last == "x" else GOOD_D
        return ref.digest or d, ref.digest or d


def admit(client, images, namespace="team-a", **kw) -> dict:
    review = make_review(workload("Pod", pod_spec(images), namespace=namespace), **kw)
    resp = client.post("/validate?timeout=10s", json=review)
    assert resp.status_code == 200
    return resp.get_json()


@pytest.mark.parametrize("image", [
    "registry.test/trusted-evil/bad:1", "registry.test/trustedbad:1",
    "registry.test:443/trusted/bad:1", "evil.test/registry.test/trusted/bad:1",
    "registry.test/untrusted/registry.test/trusted/bad:1",
])
def test_image_exclusion_glob_does_not_exempt_lookalikes(app_client, image):
    assert admit(app_client, [image])["response"]["allowed"] is False


@pytest.mark.parametrize("image", ["registry.test/trusted/bad:1", "REGISTRY.TEST/trusted/bad:1"])
def test_image_exclusion_applies_to_the_normalised_name(app_client, image):
    """The same image under another spelling of its host is the same image: exempt."""
    resp = admit(app_client, [image])
    assert resp["response"]["allowed"] is True
    assert app_client.service.jobs == []                # exempt: nothing scanned


@pytest.mark.parametrize("namespace", ["kube-system-evil", "kube-systemx", "evil-kube-system"])
def test_namespace_exclusion_does_not_match_prefixes(app_client, namespace):
    assert admit(app_client, ["registry.test/team/bad:1"], namespace)["response"]["allowed"] \
        is False


@pytest.mark.parametrize("spelling", ["x", "x:latest", "docker.io/x", "docker.io/library/x",
                                      "index.docker.io/library/x:latest",
                                      "registry-1.docker.io/library/x"])
def test_docker_hub_spellings_are_one_image(app_client, spelling):
    resp = admit(app_client, [spelling])
    assert resp["response"]["allowed"] is False
    assert app_client.registry.calls[-1] == "docker.io/library/x:latest"


@pytest.mark.parametrize("groups", [["sre-evil"], ["SRE"], ["system:sre"], ["sre "]])
def test_break_glass_groups_are_exact(app_client, groups):
    obj = workload("Pod", pod_spec(["registry.test/team/bad:1"]), namespace="team-glass",
                   annotations={"scapgate.io/break-glass": "INC-9"})
    resp = app_client.post("/validate?timeout=10s", json=make_review(obj, user="eve",
                                                                       groups=groups)).get_json()
    assert resp["response"]["allowed"] is False
    ok = app_client.post("/validate?timeout=10s", json=make_review(obj, user="eve",
                                                                     groups=["sre"])).get_json()
    assert ok["response"]["allowed"] is True
