"""Break-glass at admission: read the annotation from the object or its pod template, and let
pods a controller creates inherit their owner's break-glass. The policy decides who may
(webhook.policy.breakglass); this module only applies its answer to the checks."""
from __future__ import annotations

from .. import policy as policy_mod
from .model import Check, Deps
from .review import Request
from .workload import annotations_of


def created_by_controller(req: Request, deps: Deps) -> str:
    """The owner kind when a Pod CREATE comes from a workload controller for its owner."""
    user = str((req.get("userInfo") or {}).get("username", ""))
    if req.get("kind", {}).get("kind") != "Pod" or user not in deps.break_glass_controllers:
        return ""
    refs = ((req.get("object") or {}).get("metadata") or {}).get("ownerReferences") or []
    owner = next((r for r in refs if isinstance(r, dict) and r.get("controller") is True), None)
    return f"{owner.get('kind', '?')}/{owner.get('name', '?')}" if owner else ""


def apply_break_glass(checks: list[Check], req: Request, deps: Deps) -> None:
    """The `scapgate.io/break-glass` annotation: an allowed requester admits a denial loudly;
    anyone else is denied with why (policy.break_glass decides both)."""
    annotations = annotations_of(req)
    if policy_mod.BREAK_GLASS_ANNOTATION not in annotations:
        return
    user_info = req.get("userInfo")
    inherited = created_by_controller(req, deps)
    for c in checks:
        if c.policy and c.verdict:
            c.glass = policy_mod.break_glass(c.policy, user_info=user_info,
                                             annotations=annotations, inherited=inherited)
            if c.glass:
                c.verdict.allowed = c.glass.allowed
