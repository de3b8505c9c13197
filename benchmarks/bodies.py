"""AdmissionReview bodies as kube-apiserver sends them: a Pod with 5 containers, a Deployment.

The objects carry what real ones carry by the time they reach a validating webhook (labels,
annotations, managedFields, resources, probes, env, mounts, a service account, defaulted
fields), so the JSON the server parses is of realistic size, not a 300-byte toy.
"""
from __future__ import annotations

import json
import uuid

NAMESPACE = "team-a"


def _container(i: int, image: str) -> dict:
    return {
        "name": f"app-{i}", "image": image, "imagePullPolicy": "IfNotPresent",
        "args": ["--listen=:8080", f"--shard={i}", "--log-format=json"],
        "ports": [{"name": "http", "containerPort": 8080 + i, "protocol": "TCP"}],
        "env": [{"name": "LOG_LEVEL", "value": "info"},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1",
                                                                 "fieldPath": "metadata.name"}}},
                {"name": "REGION", "value": "eu-west-1"}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                      "limits": {"cpu": "500m", "memory": "256Mi"}},
        "volumeMounts": [{"name": "config", "mountPath": "/etc/app", "readOnly": True},
                         {"name": "kube-api-access-x7k2p", "readOnly": True,
                          "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080 + i, "scheme": "HTTP"},
                          "initialDelaySeconds": 5, "periodSeconds": 10, "timeoutSeconds": 1,
                          "successThreshold": 1, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080 + i, "scheme": "HTTP"},
                           "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1,
                           "failureThreshold": 3},
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    }


def _pod_spec(images: list[str]) -> dict:
    return {
        "containers": [_container(i, im) for i, im in enumerate(images)],
        "volumes": [{"name": "config", "configMap": {"name": "app-config", "defaultMode": 420}},
                    {"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt",
                                       "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}],
        "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "app", "serviceAccount": "app", "securityContext": {},
        "schedulerName": "default-scheduler", "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority", "priority": 0,
        "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                         "effect": "NoExecute", "tolerationSeconds": 300},
                        {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                         "effect": "NoExecute", "tolerationSeconds": 300}],
    }


def _meta(name: str, kind: str) -> dict:
    return {
        "name": name, "namespace": NAMESPACE, "uid": str(uuid.UUID(int=7)),
        "creationTimestamp": None, "generateName": f"{name}-" if kind == "Pod" else None,
        "labels": {"app.kubernetes.io/name": "shop", "app.kubernetes.io/component": "api",
                   "app.kubernetes.io/version": "1.42.0", "pod-template-hash": "6d4cf56db6"},
        "annotations": {"kubectl.kubernetes.io/restartedAt": "2025-01-01T00:00:00Z",
                        "prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
        "managedFields": [{"manager": "kube-controller-manager" if kind == "Pod" else "kubectl",
                           "operation": "Update", "apiVersion": "v1",
                           "time": "2025-01-01T00:00:00Z", "fieldsType": "FieldsV1",
                           "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                                        "f:spec": {"f:containers": {}}}}],
    }


def pod(images: list[str]) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": _meta("shop-api-6d4cf56db6-x2x9k", "Pod"),
            "spec": _pod_spec(images), "status": {"phase": "Pending", "qosClass": "Burstable"}}


def deployment(images: list[str]) -> dict:
    meta = _meta("shop-api", "Deployment")
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {"replicas": 3, "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600,
                     "selector": {"matchLabels": {"app.kubernetes.io/name": "shop"}},
                     "strategy": {"type": "RollingUpdate",
                                  "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                     "template": {"metadata": {"labels": dict(meta["labels"]),
                                               "annotations": dict(meta["annotations"])},
                                  "spec": _pod_spec(images)}},
            "status": {}}


_GVR = {"Pod": ("", "v1", "pods"), "Deployment": ("apps", "v1", "deployments")}


def review(obj: dict, *, uid: str | None = None) -> dict:
    """An admission.k8s.io/v1 AdmissionReview (CREATE) with every field kube-apiserver sends."""
    group, version, resource = _GVR[obj["kind"]]
    gvk = {"group": group, "version": version, "kind": obj["kind"]}
    gvr = {"group": group, "version": version, "resource": resource}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid or str(uuid.uuid4()), "kind": gvk, "resource": gvr, "requestKind": gvk,
        "requestResource": gvr, "name": obj["metadata"]["name"], "namespace": NAMESPACE,
        "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                     "uid": "3f1d2c1e-0000-4000-8000-000000000001",
                     "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system",
                                "system:authenticated"]},
        "object": obj, "oldObject": None, "dryRun": False,
        "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1",
                    "fieldManager": "kube-controller-manager"}}}


def bodies(images: list[str]) -> dict[str, bytes]:
    """name -> JSON body: 'pod5' (a Pod with 5 containers, one image each) and 'deployment'
    (a Deployment with 2 containers)."""
    assert len(images) >= 5
    return {"pod5": json.dumps(review(pod(images[:5]))).encode(),
            "deployment": json.dumps(review(deployment(images[:2]))).encode()}
