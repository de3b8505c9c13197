"""Break-glass: who may bypass the gate with the `scapgate.io/break-glass` annotation, and what
the developer, the audit log and the decision log are told either way.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from .model import Policy
from .verdict import clip

BREAK_GLASS_ANNOTATION = "scapgate.io/break-glass"
REASON_LIMIT = 300           # of a break-glass reason kept in messages and audit annotations


@dataclass(frozen=True)
class BreakGlass:
    """Someone asked to bypass the gate with the break-glass annotation.

    allowed: the requester (username, or one of their groups) is on the policy's list and gave
    a reason — admit whatever the verdict, with `warning` and `audit`, and log it. Otherwise
    deny with `message`. `audit` is for AdmissionResponse.auditAnnotations either way.
    """

    allowed: bool
    reason: str
    user: str
    via: str                  # "user alice" / "group sre-oncall" / "" when refused
    policy: str
    message: str
    warning: str = ""
    audit: dict[str, str] = field(default_factory=dict)


def break_glass(policy: Policy | None, *, user_info: dict | None,
                annotations: dict | None, inherited: str = "") -> BreakGlass | None:
    """None when the object carries no `scapgate.io/break-glass` annotation (or no policy
    applies, so there is nothing to bypass); otherwise who asked, whether they may, and what
    to tell them and the audit log. Names are compared exactly: no globs."""
    if policy is None or not annotations or BREAK_GLASS_ANNOTATION not in annotations:
        return None
    reason = " ".join(str(annotations.get(BREAK_GLASS_ANNOTATION) or "").split())[:REASON_LIMIT]
    raw_user = (user_info or {}).get("username") if isinstance(user_info, dict) else None
    user = raw_user if isinstance(raw_user, str) and raw_user else "<unknown>"
    raw_groups = (user_info or {}).get("groups") if isinstance(user_info, dict) else None
    groups = [g for g in raw_groups if isinstance(g, str)] if isinstance(raw_groups, list) else []
    via = (f"user {user}" if user in policy.break_glass_users else
           next((f"group {g}" for g in groups if g in policy.break_glass_groups), ""))
    if not via and inherited:
        via = f"owner {inherited}, admitted with break-glass by its creator"
    record = {"policy": policy.name, "user": user[:253], "reason": reason}
    if via and reason:
        audit = json.dumps({**record, "allowed": True, "via": via}, sort_keys=True)
        return BreakGlass(
            allowed=True, reason=reason, user=user, via=via, policy=policy.name,
            message=f"break-glass by {user[:128]} ({via}) under policy {policy.name}: {reason}",
            warning=clip(f"break-glass by {user[:128]}: scan verdict bypassed, this is audited — {reason}"),
            audit={"break-glass": audit})
    if via:
        why = (f"the {BREAK_GLASS_ANNOTATION} annotation needs a reason as its value "
               "(what is broken, which incident)")
    else:
        shown = ", ".join(g[:64] for g in groups[:8]) + (", …" if len(groups) > 8 else "")
        who = f"user {user[:128]!r}" + (f" (groups: {shown})" if groups else "")
        why = (f"{who} is not on the break-glass list of policy {policy.name!r}; "
               f"remove the {BREAK_GLASS_ANNOTATION} annotation or ask its owner "
               f"({policy.owner})")
    audit = json.dumps({**record, "allowed": False, "groups": [g[:64] for g in groups[:16]]},
                       sort_keys=True)
    return BreakGlass(allowed=False, reason=reason, user=user, via="", policy=policy.name,
                      message=f"break-glass refused: {why}", audit={"break-glass": audit})
