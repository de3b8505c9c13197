"""POST /mutate: image tags pinned to the digests the gate judges (webhook/admission/mutate.py).

Against the real server over TLS, called as kube-apiserver calls a mutating webhook; the
JSON Patch it returns is applied the way the API server applies it, and the patched object is
then sent to /validate, as the API server does after mutation.
"""
from __future__ import annotations

import base64
import copy
import json

import pytest

from tests.builders.webhooks import (  # noqa: F401
    HEADERS,
    apiserver,
    make_review,
    pod_spec,
    server,
    slow_registry,
    webhook_policies,
    workload,
)
from webhook.admission.mutate import pointer


def mutate(apiserver, review: dict) -> dict:
    status, _, data = apiserver.request("POST", "/mutate?timeout=10s",
                                        json.dumps(review).encode(), HEADERS)
    assert status == 200, data[:300]
    doc = json.loads(data)
    assert doc["response"]["uid"] == review["request"]["uid"]
    assert doc["response"]["allowed"] is True          # pinning never denies
    return doc["response"]


def patch_of(resp: dict) -> list[dict]:
    if "patch" not in resp:
        return []
    assert resp["patchType"] == "JSONPatch"
    return json.loads(base64.b64decode(resp["patch"]))


def apply(obj: dict, ops: list[dict]) -> dict:
    """RFC 6902 replace, as the API server applies it (the path must exist)."""
    out = copy.deepcopy(obj)
    for op in ops:
        assert op["op"] == "replace"
        *parents, last = op["path"].lstrip("/").split("/")
        node = out
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        key = int(last) if isinstance(node, list) else last
        node[key]           # raises if the path does not exist
        node[key] = op["value"]
    return out


@pytest.fixture(scope="module")
def moving(registry, synthetic_layout):
    """A tag of our own, pointing at the good image (moved to the bad one by a test)."""
    good = synthetic_layout["good"]
    return registry.push(good.layout, good.tag, "synthetic/moving:1")


def test_pod_images_are_pinned_and_the_pinned_object_is_judged_by_that_digest(
        apiserver, images):
    obj = workload("Pod", pod_spec([images["good"]], init=[images["bad"]]))
    resp = mutate(apiserver, make_review(obj, uid="pin-pod"))
    ops = patch_of(resp)
    assert sorted(op["path"] for op in ops) == ["/spec/containers/0/image",
                                               "/spec/initContainers/0/image"]
    pinned = apply(obj, ops)
    assert pinned["spec"]["containers"][0]["image"] == f"{images['good']}@{images['good'].digest}"
    assert pinned["spec"]["initContainers"][0]["image"] == f"{images['bad']}@{images['bad'].digest}"
    assert images["good"].digest in resp["auditAnnotations"]["pinned"]
    verdict = apiserver.review(make_review(pinned, uid="pin-pod-validate"))["response"]
    assert verdict["allowed"] is False                  # the bad init container, pinned
    assert images["bad"].digest in verdict["status"]["message"]


@pytest.mark.parametrize("kind, prefix", [
    ("Deployment", "/spec/template/spec"),
    ("CronJob", "/spec/jobTemplate/spec/template/spec"),
])
def test_pod_templates_are_pinned(apiserver, images, kind, prefix):
    obj = workload(kind, pod_spec([images["good"], images["good"]]))
    ops = patch_of(mutate(apiserver, make_review(obj, uid=f"pin-{kind}")))
    assert [op["path"] for op in ops] == [f"{prefix}/containers/0/image",
                                          f"{prefix}/containers/1/image"]
    assert {op["value"] for op in ops} == {f"{images['good']}@{images['good'].digest}"}


def test_a_multi_platform_image_is_pinned_to_its_index(apiserver, images):
    """The node picks its platform from the pinned index: the manifest the gate scanned."""
    obj = workload("Pod", pod_spec([images["multiarch"]]))
    ops = patch_of(mutate(apiserver, make_review(obj, uid="pin-index")))
    assert [op["value"] for op in ops] == [f"{images['multiarch']}@{images['multiarch'].digest}"]
    resp = apiserver.review(make_review(apply(obj, ops), uid="pin-index-validate"))["response"]
    assert resp["allowed"] is True


def test_a_moved_tag_cannot_swap_what_runs(apiserver, registry, synthetic_layout, moving):
    """Pinned while the tag named the good image; the tag then moves to the bad image. The
    pinned object is what the node runs, and the gate judges exactly that digest."""
    obj = workload("Pod", pod_spec([moving]))
    ops = patch_of(mutate(apiserver, make_review(obj, uid="pin-moving")))
    good = synthetic_layout["good"].digest
    assert [op["value"] for op in ops] == [f"{moving}@{good}"]
    bad = synthetic_layout["bad"]
    registry.push(bad.layout, bad.tag, "synthetic/moving:1")           # the tag moves
    resp = apiserver.review(make_review(apply(obj, ops), uid="pin-moving-validate"))
    assert resp["response"]["allowed"] is True
    assert f"@{good}=pass" in resp["response"]["auditAnnotations"]["images"]


def test_nothing_to_pin(apiserver, images):
    """Already pinned, outside every policy, not a workload, or an UPDATE that changes no
    image: no patch (an untouched template must not start a rollout)."""
    pinned = f"{images['good']}@{images['good'].digest}"
    assert "patch" not in mutate(apiserver, make_review(
        workload("Pod", pod_spec([pinned])), uid="pin-none-1"))
    assert "patch" not in mutate(apiserver, make_review(
        workload("Pod", pod_spec([images["good"]]), namespace="kube-system"),
        uid="pin-none-2"))
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    assert "patch" not in mutate(apiserver, make_review(cm, uid="pin-none-3"))
    dep = workload("Deployment", pod_spec([images["good"]]))
    assert "patch" not in mutate(apiserver, make_review(
        dep, operation="UPDATE", old=dep, uid="pin-none-4"))


def test_an_update_pins_only_the_image_it_changes(apiserver, images):
    old = workload("Deployment", pod_spec([images["good"], images["bad"]]))
    new = workload("Deployment", pod_spec([images["good"], images["multiarch"]]))
    ops = patch_of(mutate(apiserver, make_review(new, operation="UPDATE", old=old,
                                                 uid="pin-update")))
    assert [op["path"] for op in ops] == ["/spec/template/spec/containers/1/image"]


def test_an_unreachable_registry_leaves_the_image_with_a_warning(apiserver):
    """Pinning is best effort: the validating webhook still decides (error state)."""
    obj = workload("Pod", pod_spec(["127.0.0.1:9/nothing/here:1"]))
    resp = mutate(apiserver, make_review(obj, uid="pin-down"))
    assert "patch" not in resp
    assert any("not pinned" in w for w in resp["warnings"])


def test_bad_requests_are_400(apiserver):
    status, _, _ = apiserver.request("POST", "/mutate", b"{not json", HEADERS)
    assert status == 400
    status, _, _ = apiserver.request("GET", "/mutate", None, {})
    assert status == 400


@pytest.mark.parametrize("path, want", [
    ("spec.containers[0].image", "/spec/containers/0/image"),
    ("spec.template.spec.initContainers[12].image", "/spec/template/spec/initContainers/12/image"),
    ("spec.jobTemplate.spec.template.spec.ephemeralContainers[3].image",
     "/spec/jobTemplate/spec/template/spec/ephemeralContainers/3/image"),
])
def test_field_paths_become_json_pointers(path, want):
    assert pointer(path) == want
