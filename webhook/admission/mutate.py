"""Optional mutating endpoint (POST /mutate): pin every gated image tag to its digest.

The validating webhook judges the digest a tag names at admission time; the kubelet pulls
later, by tag, and a tag can move in between. With this endpoint registered as a mutating
webhook (chart: webhook.pinDigests.enabled), each `image: name:tag` the gate would judge is
rewritten to `name:tag@sha256:…` — the digest the tag names now (an image index's digest for a
multi-platform image: the node picks its platform from that index, and the platform manifest
in it is the very one the gate scans). Mutating webhooks run before validating ones, so the
validating webhook then judges exactly what the nodes will pull.

It never denies: anything it cannot pin (registry down, out of time, a reference it cannot
read) is left as it is, with a warning, and the validating webhook decides as always.
On UPDATE only images that changed are pinned: pinning an untouched template would start a
rollout nobody asked for.
"""
from __future__ import annotations

import base64

import orjson

from ..scan import images as images_mod
from ..scan.registry import RegistryError
from ..scan.resolver import wait as wait_resolution
from .budget import Budget
from .decide import MAX_DISTINCT_IMAGES, namespace_of, plan, skip_reason
from .model import Deps
from .workload import Container, ObjectError, containers_of


def pin(req: dict, deps: Deps, budget: Budget) -> dict:
    """The mutating response for one AdmissionReview request: allowed, and a JSONPatch that
    pins the gated images when there is one."""
    if skip_reason(req):
        return {"allowed": True}
    try:
        containers = _to_pin(req)
    except ObjectError:
        return {"allowed": True}         # the validating webhook denies it, with the reason
    if not containers or len({c.image for c in containers}) > MAX_DISTINCT_IMAGES:
        return {"allowed": True}
    checks = plan(containers, namespace_of(req), deps)
    todo = [c for c in checks if c.policy and c.ref and not c.ref.digest]
    futures = [(c, deps.resolver.start(c.ref)) for c in todo]
    ops, warnings = [], []
    for c, future in futures:
        try:
            res = wait_resolution(future, c.ref, budget.left())
        except RegistryError as e:
            warnings.append(f"{c.image} not pinned to a digest: {str(e)[:60]}")
            continue
        for x in c.containers:
            ops.append({"op": "replace", "path": pointer(x.path), "value": f"{x.image}@{res.top}"})
    out: dict = {"allowed": True}
    if ops:
        out["patchType"] = "JSONPatch"
        out["patch"] = base64.b64encode(orjson.dumps(ops)).decode()
        out["auditAnnotations"] = {"pinned": ",".join(op["value"] for op in ops)}
    if warnings:
        out["warnings"] = warnings
    return out


def _to_pin(req: dict) -> list[Container]:
    """Containers whose image is not pinned yet; on UPDATE only those whose image changed."""
    new = containers_of(req["kind"], req.get("object"))
    if req.get("subResource") == "ephemeralcontainers":
        new = [c for c in new if c.list == "ephemeralContainers"]
    if req["operation"] == "UPDATE":
        try:
            before = {c.path: c.image for c in containers_of(req["kind"], req.get("oldObject"))}
        except ObjectError:
            before = {}
        new = [c for c in new if before.get(c.path) != c.image]
    out = []
    for c in new:
        try:
            if images_mod.parse(c.image).digest:
                continue
        except images_mod.ReferenceError:
            continue                    # the validating webhook names what is wrong with it
        out.append(c)
    return out


def pointer(path: str) -> str:
    """A workload field path (spec.template.spec.containers[1].image) as a JSON Pointer
    (/spec/template/spec/containers/1/image)."""
    parts = []
    for step in path.split("."):
        name, _, index = step.partition("[")
        parts.append(name.replace("~", "~0").replace("/", "~1"))
        if index:
            parts.append(index.rstrip("]"))
    return "/" + "/".join(parts)
