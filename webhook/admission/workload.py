"""Which images a workload will run, and where in the object each one is named.

Every kind that creates pods collapses into one pod spec walk (policy-controller's
`validatePodSpec`), so a Deployment is judged by its template at `kubectl apply` time instead of
failing later as a ReplicaSet `FailedCreate` event. The field path of each image goes into the
denial message so the developer knows which container to fix.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple

CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
_TEMPLATE = ("spec", "template", "spec")
# (API group, kind) -> path of the pod spec inside the object.
POD_SPEC_PATHS: dict[tuple[str, str], tuple[str, ...]] = {
    ("", "Pod"): ("spec",),
    ("", "ReplicationController"): _TEMPLATE,
    ("apps", "Deployment"): _TEMPLATE,
    ("apps", "ReplicaSet"): _TEMPLATE,
    ("apps", "StatefulSet"): _TEMPLATE,
    ("apps", "DaemonSet"): _TEMPLATE,
    ("batch", "Job"): _TEMPLATE,
    ("batch", "CronJob"): ("spec", "jobTemplate", "spec", "template", "spec"),
}
_BY_KIND = {kind: path for (_, kind), path in POD_SPEC_PATHS.items()}


class Container(NamedTuple):
    """One image reference in an object: `path` is e.g. spec.template.spec.containers[1].image."""

    path: str
    image: str
    list: str = "containers"
    name: str = ""


class ObjectError(ValueError):
    """The object cannot be read as the workload its kind says (a denial, not a 400)."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path


def pod_spec_path(kind: str | Mapping) -> tuple[str, ...] | None:
    """Where the pod spec lives for this kind, or None when the kind runs no pods.

    `kind` is the review's group/version/kind (the group must match: a CRD named Pod in
    another group is not a Pod) or a bare kind name.
    """
    if isinstance(kind, dict):
        return POD_SPEC_PATHS.get((kind.get("group") or "", kind.get("kind") or ""))
    return _BY_KIND.get(kind)


def containers_of(kind: str | Mapping, obj: Mapping | None) -> list[Container]:
    """Every image the object would run: initContainers, containers, ephemeralContainers.

    Returns [] for kinds that run no pods. Raises ObjectError when a container list is
    malformed or a container names no image.
    """
    path = pod_spec_path(kind)
    if path is None or not obj:
        return []
    spec: object = obj
    for i, step in enumerate(path):
        spec = spec.get(step) if isinstance(spec, dict) else None
        if spec is None:
            return []          # no template: nothing will run
        if not isinstance(spec, dict):
            raise ObjectError(".".join(path[:i + 1]), "must be an object")
    return list(_walk(".".join(path), spec))


def _walk(prefix: str, spec: Mapping):
    for lst in CONTAINER_LISTS:
        items = spec.get(lst)
        if items is None:
            continue
        if not isinstance(items, list):
            raise ObjectError(f"{prefix}.{lst}", "must be a list")
        for i, c in enumerate(items):
            where = f"{prefix}.{lst}[{i}]"
            if not isinstance(c, dict):
                raise ObjectError(where, "must be an object")
            image = c.get("image")
            if not isinstance(image, str) or not image:
                raise ObjectError(f"{where}.image", "no image named")
            name = c.get("name") if isinstance(c.get("name"), str) else ""
            yield Container(f"{where}.image", image, lst, name)


def images_changed(new: list[Container], old: list[Container]) -> bool:
    """Whether an UPDATE runs any image at a path that did not run it before."""
    before = {c.path: c.image for c in old}
    return any(before.get(c.path) != c.image for c in new)


def annotations_of(req: Mapping) -> dict:
    """The pod template's annotations and the object's (the pods carry the template's)."""
    obj = req.get("object") or {}
    template = obj
    for step in (pod_spec_path(req["kind"]) or ())[:-1]:   # spec.template, spec.jobTemplate…
        template = template.get(step) if isinstance(template, dict) else None
    out: dict = {}
    for holder in ([template] if template is not obj else []) + [obj]:
        meta = holder.get("metadata") if isinstance(holder, dict) else None
        if isinstance(meta, dict) and isinstance(meta.get("annotations"), dict):
            out.update(meta["annotations"])
    return out
