"""Wiring: build the registry client and pipeline from Settings, and run one scan end to end.

Shared by `scapgate scan`, the scan workers and the tests, so the CLI gives the very answer the
gate gives. Judging the result is the policy stage's job (webhook.policy.evaluate), above this.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from ..config import Settings
from . import images, oscap
from .pipeline import Pipeline, PipelineSettings
from .registry import Registry, RegistrySettings
from .results import ContentSpec, ScanResult
from .rootfs import UnpackLimits


def build_registry(s: Settings) -> Registry:
    return Registry(RegistrySettings(
        timeout_s=s.registry_timeout_s, insecure=frozenset(s.insecure_registries),
        certs_dir=s.certs_dir or None, auth_file=s.auth_file or None, platform=s.platform))


def build_pipeline(s: Settings, registry: Registry | None = None) -> Pipeline:
    ps = PipelineSettings(
        state_dir=s.state_dir,
        limits=UnpackLimits(max_bytes=s.max_unpack_bytes, max_files=s.max_unpack_files),
        oscap=oscap.OscapSettings(timeout_s=s.scan_timeout_s, local_files=s.local_files or None),
        oci_cache_bytes=s.oci_cache_bytes, reports_bytes=s.reports_bytes,
        cves=s.cve_feeds != ("off",), packages_bytes=s.packages_bytes,
        cve_feed_max_bytes=s.cve_feed_max_bytes, cve_fetch_timeout_s=s.cve_fetch_timeout_s,
        partial=s.partial_unpack)
    if s.scratch_dir:
        ps.scratch_dir = s.scratch_dir
    return Pipeline(ps, registry or build_registry(s))


@dataclass
class Outcome:
    """One scanned image: the reference as resolved, the digest scanned and the result."""

    ref: images.ImageRef
    digest: str
    result: ScanResult


def scan_image(reference: str, content: ContentSpec, pipeline: Pipeline, *,
               platform: str | None = None, docker_config: dict | None = None,
               progress: Callable[[str, float], None] | None = None) -> Outcome:
    """Resolve and scan one image with `content` the way the gate does. Raises ReferenceError,
    RegistryError or content.ContentError when there is nothing to scan."""
    ref = images.parse(reference)
    t0 = time.perf_counter()
    digest, _top = pipeline.registry.resolve(ref, docker_config=docker_config, platform=platform)
    resolve_s = round(time.perf_counter() - t0, 3)
    if progress:
        progress("resolve", resolve_s)
    result = pipeline.scan(ref.pinned(digest), content, docker_config=docker_config,
                           progress=progress)
    result.timings = {"resolve": resolve_s, **result.timings}
    return Outcome(ref=ref, digest=digest, result=result)
