"""What a decision is made of: its injected dependencies, one check per image, the outcome."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from .. import policy as policy_mod
from ..scan import images as images_mod
from ..scan.resolver import Resolver
from ..scan.results import ContentSet, ScanKey, ScanResult
from .budget import Estimate
from .memo import Memo
from .review import Response
from .workload import Container


@dataclass
class Deps:
    """Everything a decision needs, injected so tests can swap any of it at our own seam."""

    policies: Callable[[], policy_mod.PolicySet]
    service: object                     # scans.ScanService
    resolver: Resolver
    key_for: Callable[..., ScanKey]     # pipeline.key(digest, content)
    clock: Callable[[], float] = time.time   # wall clock: result ages, waiver expiry
    estimate: Estimate = field(default_factory=Estimate)
    error_retry_s: float = 30.0         # a transient scan error is retried after this
    scan_workers: int = 2
    report_url: str = ""
    policy_root: str = ""               # Settings.policy, to name policy files in messages
    # Pods these controllers create from an owner's template inherit the owner's break-glass:
    # the owner (Deployment, Job, …) was admitted here under its creator's identity.
    break_glass_controllers: frozenset = frozenset()
    # A pass/fail decision is reused this long for a request with the same inputs (0: never).
    memo_s: float = 0.0
    memo: Memo = field(default_factory=lambda: Memo())
    # product → its CVE feed in force (feeds.FeedStore.current_for), None: CVEs not judged
    feeds: Callable[[str], object] | None = None


@dataclass
class Check:
    """One distinct image string of the object, at one or more field paths."""

    image: str
    containers: list[Container]
    ref: images_mod.ImageRef | None = None
    platform: str = ""               # one of several platforms judged ("" = the only one)
    policy: policy_mod.Policy | None = None
    digest: str = ""
    content: ContentSet | None = None
    key: ScanKey | None = None
    result: ScanResult | None = None
    resolve: str = ""                # hit | miss | error (tag → digest)
    cache: str = ""                  # hit | miss | stale | retry (how the result was found)
    verdict: policy_mod.Verdict | None = None
    glass: policy_mod.BreakGlass | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def paths(self) -> str:
        """The field paths, and the platform when several of an image index are judged."""
        where = ", ".join(c.path for c in self.containers)
        return f"{where} [{self.platform}]" if self.platform else where

    @property
    def pinned(self) -> str:
        """IMAGE@DIGEST of what was (or is being) scanned."""
        return str(self.ref.pinned(self.digest)) if self.ref and self.digest else self.image


@dataclass
class Decision:
    """The response plus what logs and metrics need: overall verdict and a low-cardinality
    reason (clean, rules, pending, error, break_glass, or why no work was needed)."""

    response: Response
    verdict: str
    reason: str
    checks: list[Check] = field(default_factory=list)
    memo: bool = False               # reused from an identical request (Memo)
    # What logs and metrics derive from the checks alone, computed once and shared by the
    # copies the Memo hands out (dataclasses.replace keeps the same dict).
    derived: dict = field(default_factory=dict, repr=False, compare=False)
