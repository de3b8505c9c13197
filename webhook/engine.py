"""Wiring: build the registry client and pipeline from Settings, and run one scan end to end.

Shared by `scapgate scan`, the scan workers and the tests, so the CLI gives the very answer the
gate gives.
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Callable

from . import images, oscap
from .config import Settings
from .pipeline import Pipeline, PipelineSettings
from .policy import Policy, Verdict, evaluate
from .registry import Registry, RegistrySettings
from .results import ScanResult
from .unpack import UnpackLimits


def build_registry(s: Settings) -> Registry:
    return Registry(RegistrySettings(
        timeout_s=s.registry_timeout_s, insecure=frozenset(s.insecure_registries),
        certs_dir=s.certs_dir or None, auth_file=s.auth_file or None, platform=s.platform))


def build_pipeline(s: Settings, registry: Registry | None = None) -> Pipeline:
    ps = PipelineSettings(
        state_dir=s.state_dir,
        limits=UnpackLimits(max_bytes=s.max_unpack_bytes, max_files=s.max_unpack_files),
        oscap=oscap.OscapSettings(timeout_s=s.scan_timeout_s, local_files=s.local_files or None),
        oci_cache_bytes=s.oci_cache_bytes, reports_bytes=s.reports_bytes)
    if s.scratch_dir:
        ps.scratch_dir = s.scratch_dir
    return Pipeline(ps, registry or build_registry(s))


@dataclass
class Outcome:
    """What `scapgate scan` reports: the image as resolved, its scan result and the verdict."""

    ref: images.ImageRef
    digest: str
    result: ScanResult
    verdict: Verdict


def scan_image(reference: str, policy: Policy, pipeline: Pipeline, *, namespace: str = "default",
               platform: str | None = None, docker_config: dict | None = None,
               progress: Callable[[str, float], None] | None = None) -> Outcome:
    """Resolve, scan and judge one image the way the gate does. Raises ReferenceError,
    RegistryError or content.ContentError when there is nothing to scan."""
    ref = images.parse(reference)
    t0 = time.perf_counter()
    digest, _top = pipeline.registry.resolve(ref, docker_config=docker_config, platform=platform)
    resolve_s = round(time.perf_counter() - t0, 3)
    if progress:
        progress("resolve", resolve_s)
    content = policy.content()
    result = pipeline.scan(ref.pinned(digest), content, docker_config=docker_config,
                           progress=progress)
    result.timings = {"resolve": resolve_s, **result.timings}
    verdict = evaluate(result, policy, image=str(ref), namespace=namespace, today=dt.date.today())
    return Outcome(ref=ref, digest=digest, result=result, verdict=verdict)
