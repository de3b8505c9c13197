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


ARCH_LABEL = "kubernetes.io/arch"


def node_arches(kind: str | Mapping, obj: Mapping | None) -> tuple[str, ...]:
    """The CPU architectures the pod is pinned to: its nodeSelector's kubernetes.io/arch, or
    the values of a required node affinity term on it (an `In` on every term: the pod runs
    only there). () when it may run on any node. Malformed fields count as no pinning."""
    path = pod_spec_path(kind)
    spec: object = obj
    for step in path or ():
        spec = spec.get(step) if isinstance(spec, dict) else None
    if not isinstance(spec, dict):
        return ()
    selector = spec.get("nodeSelector")
    if isinstance(selector, dict) and isinstance(selector.get(ARCH_LABEL), str):
        return (selector[ARCH_LABEL],)
    terms = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
             .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = terms.get("nodeSelectorTerms") if isinstance(terms, dict) else None
    if not isinstance(terms, list) or not terms:
        return ()
    arches: list[str] = []
    for term in terms:                 # terms are ORed: every one must pin the arch
        pinned = [v for e in (term.get("matchExpressions") or [] if isinstance(term, dict)
                              else []) if isinstance(e, dict) and e.get("key") == ARCH_LABEL
                  and e.get("operator") == "In" and isinstance(e.get("values"), list)
                  for v in e["values"] if isinstance(v, str)]
        if not pinned:
            return ()
        arches += [a for a in pinned if a not in arches]
    return tuple(arches)

