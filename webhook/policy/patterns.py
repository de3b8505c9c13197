"""Which match patterns can never match anything: namespace globs that no DNS label fits,
image globs that no normalised reference fits. Such a pattern silently narrows a policy or a
waiver to nothing, so `policy lint` rejects it.
"""
from __future__ import annotations

import re

from ..scan import images as images_mod

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
GLOB = re.compile(r"\[[^\]]*\]|[*?]")


def namespace_pattern_problem(pattern: str) -> str:
    """Why a namespace glob can never match a namespace name (a DNS label), or ''."""
    if pattern != pattern.lower():
        return "has uppercase letters; namespace names are lowercase"
    literal = GLOB.sub("", pattern)
    bad = sorted(set(literal) - set("abcdefghijklmnopqrstuvwxyz0123456789-"))
    if bad:
        return (f"contains {''.join(bad)!r}; namespace names are DNS labels "
                "(a-z, 0-9 and '-', at most 63)")
    if not GLOB.search(pattern):
        return "" if DNS_LABEL.match(pattern) else "is not a valid namespace name (DNS label)"
    if pattern.startswith("-") or pattern.endswith("-"):
        return "starts or ends with '-'; namespace names cannot"
    if len(re.sub(r"\[[^\]]*\]", "?", pattern).replace("*", "")) > 63:
        return "needs more than 63 characters; namespace names have at most 63"
    return ""


def image_pattern_problem(pattern: str) -> str:
    """Why an image glob can never match a normalised reference such as
    `docker.io/library/nginx:1.25` (what the gate matches), or ''."""
    if pattern == "*":
        return ""
    if any(c.isspace() for c in pattern):
        return "contains whitespace"
    name = pattern.split("@", 1)[0]
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        name = name[: len(name) - len(last[-1])] + last[-1].split(":", 1)[0]
    if name != name.lower():
        return ("has uppercase letters in the registry or repository; references are matched "
                "lowercase (docker.io/library/nginx:TAG)")
    first = pattern.split("/", 1)[0]
    if "/" not in pattern:
        if GLOB.search(pattern) or first.startswith(images_mod.DAEMON + ":"):
            return ""
        return ("has no registry; images are matched as normalised references, "
                f"e.g. docker.io/library/{pattern}")
    if GLOB.search(first):
        return ""
    if not ("." in first or ":" in first or first == "localhost"):
        return (f"starts with {first!r}, which is not a registry host; images are matched as "
                f"normalised references, e.g. docker.io/{pattern}")
    try:
        host = images_mod.parse(f"{first}/x").registry
    except images_mod.ReferenceError:
        return f"{first!r} is not a valid registry host"
    if host != first:
        return f"{first} is normalised to {host} before matching"
    repo = name.split("/", 1)[1] if "/" in name else ""
    if first == "docker.io" and "/" not in repo and not GLOB.search(repo):
        return f"official Docker Hub images are docker.io/library/{repo}"
    return ""
