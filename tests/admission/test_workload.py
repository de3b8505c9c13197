"""containers_of: every image a workload runs, with the field path a denial names."""
from __future__ import annotations

import pytest

from tests.builders.webhooks import pod_spec, workload
from webhook.admission.workload import (
    Container,
    ObjectError,
    containers_of,
    images_changed,
    pod_spec_path,
)

PREFIX = {
    "Pod": "spec", "Deployment": "spec.template.spec", "ReplicaSet": "spec.template.spec",
    "StatefulSet": "spec.template.spec", "DaemonSet": "spec.template.spec",
    "Job": "spec.template.spec", "ReplicationController": "spec.template.spec",
    "CronJob": "spec.jobTemplate.spec.template.spec",
}
GROUP = {"Deployment": "apps", "ReplicaSet": "apps", "StatefulSet": "apps", "DaemonSet": "apps",
         "Job": "batch", "CronJob": "batch"}


@pytest.mark.parametrize("kind", sorted(PREFIX))
def test_every_list_of_every_kind_with_field_paths(kind):
    obj = workload(kind, pod_spec(["app:1", "sidecar:2"], init=["init:1"], ephemeral=["debug:1"]))
    gvk = {"group": GROUP.get(kind, ""), "version": "v1", "kind": kind}
    p = PREFIX[kind]
    assert containers_of(gvk, obj) == [
        Container(f"{p}.initContainers[0].image", "init:1", "initContainers", "i0"),
        Container(f"{p}.containers[0].image", "app:1", "containers", "c0"),
        Container(f"{p}.containers[1].image", "sidecar:2", "containers", "c1"),
        Container(f"{p}.ephemeralContainers[0].image", "debug:1", "ephemeralContainers", "e0"),
    ]
    assert containers_of(kind, obj) == containers_of(gvk, obj)     # bare kind name works too


@pytest.mark.parametrize("gvk", [
    {"group": "", "version": "v1", "kind": "ConfigMap"},
    {"group": "example.com", "version": "v1", "kind": "Deployment"},
    {"group": "apps", "version": "v1", "kind": "Pod"},
    {"group": "", "version": "v1", "kind": "PodTemplate"},
], ids=["configmap", "crd-named-deployment", "pod-in-wrong-group", "podtemplate"])
def test_kinds_that_run_no_pods(gvk):
    assert pod_spec_path(gvk) is None
    assert containers_of(gvk, workload("Pod", pod_spec(["x:1"]))) == []


@pytest.mark.parametrize("obj, where", [
    ({"spec": {"containers": "nginx"}}, "spec.containers"),
    ({"spec": {"containers": ["nginx"]}}, "spec.containers[0]"),
    ({"spec": {"containers": [{"name": "a"}]}}, "spec.containers[0].image"),
    ({"spec": {"containers": [{"name": "a", "image": ""}]}}, "spec.containers[0].image"),
    ({"spec": {"containers": [{"name": "a", "image": 7}]}}, "spec.containers[0].image"),
    ({"spec": {"initContainers": {"a": 1}}}, "spec.initContainers"),
    ({"spec": "nope"}, "spec"),
], ids=["list-is-string", "container-is-string", "no-image", "empty-image", "image-not-string",
        "init-is-map", "spec-not-map"])
def test_malformed_pod_specs_raise_with_the_field_path(obj, where):
    with pytest.raises(ObjectError) as e:
        containers_of("Pod", obj)
    assert e.value.path == where


@pytest.mark.parametrize("obj", [
    None, {}, {"spec": {}}, {"spec": {"template": None}}, {"metadata": {"name": "x"}},
], ids=["none", "empty", "no-template", "null-template", "no-spec"])
def test_objects_without_a_pod_spec_run_nothing(obj):
    assert containers_of("Deployment", obj) == []


@pytest.mark.parametrize("old, new, changed", [
    (["a:1"], ["a:1"], False),
    (["a:1", "b:1"], ["a:1"], False),
    (["a:1"], ["a:2"], True),
    (["a:1"], ["a:1", "b:1"], True),
    (["a:1", "b:1"], ["b:1", "a:1"], True),
    ([], ["a:1"], True),
], ids=["same", "container-removed", "tag-changed", "container-added", "swapped", "from-nothing"])
def test_images_changed_compares_by_field_path(old, new, changed):
    assert images_changed(containers_of("Pod", workload("Pod", pod_spec(new))),
                          containers_of("Pod", workload("Pod", pod_spec(old)))) is changed
