"""Builders shared by the tests/test_policy*.py files: policy documents, files and scan results.

Policies are plain dicts (the YAML shape) so each test states only what it is about.
"""
from __future__ import annotations

import copy
import datetime as dt
import os
from pathlib import Path

import yaml

from tests import builders
from webhook.scan.results import OvalResult, RuleResult, ScanKey, ScanResult

REPO = builders.REPO
STANDARD = "xccdf_org.ssgproject.content_profile_standard"
RULE = "xccdf_org.ssgproject.content_rule_"
TODAY = dt.date(2026, 6, 1)


def datastream() -> str:
    root = os.environ.get("SCAPGATE_CONTENT_DIR") or str(REPO / ".state" / "content")
    return os.path.join(root, "ssg-debian12-ds.xml")


def doc(name: str = "p", *, meta: dict | None = None, **spec) -> dict:
    """A valid ImagePolicy document; keyword arguments replace spec fields."""
    base = {"content": {"datastream": datastream(), "profile": STANDARD},
            "rules": {"denySeverity": "medium"}}
    base.update(copy.deepcopy(spec))
    return {"apiVersion": "scapgate.io/v1", "kind": "ImagePolicy",
            "metadata": {"name": name, "owner": "team-sec", "description": "test policy",
                         **(meta or {})},
            "spec": base}


def waiver(rule: str = "package_telnetd_removed", expires: str = "2026-12-31", **kw) -> dict:
    return {"rule": rule, "reason": "vendor image, fix tracked", "owner": "team-a",
            "ticket": "SEC-1", "expires": expires, **kw}


def write(path: str | Path, document: dict | str) -> str:
    """Write a policy file (a dict is dumped as YAML in key order) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False)
    path.write_text(text)
    return str(path)


def result(*rules: tuple[str, str, str], oval: tuple[OvalResult, ...] = (),
           score: float | None = None, state: str = "done", error: str = "") -> ScanResult:
    """A ScanResult from (short rule id, severity, result) triples."""
    key = ScanKey(digest="sha256:" + "a" * 64, content_sha256="c" * 64, profile=STANDARD,
                  tailoring_sha256="", scanner_version="test")
    return ScanResult(key=key, image="docker.io/library/debian:12", state=state, error=error,
                      rules=[RuleResult(RULE + rid, rid.replace("_", " "), sev, res)
                             for rid, sev, res in rules],
                      oval=list(oval), score=score, product="debian12", profile=STANDARD,
                      tools={"content": "ssg-debian12-ds.xml", "content_sha256": "d" * 64},
                      identity={"distro": "debian", "version": "12",
                                "pretty": "Debian GNU/Linux 12 (bookworm)"})
