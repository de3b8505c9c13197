"""Settings, from flags or SCAPGATE_* environment variables; each field says its unit and why.

Defaults deny when in doubt (fail closed); every fallback is a named setting.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(name: str, default):
    raw = os.environ.get(f"SCAPGATE_{name.upper()}")
    if raw is None:
        return default
    if isinstance(default, bool):
        return raw.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    if isinstance(default, tuple):
        return tuple(x.strip() for x in raw.split(",") if x.strip())
    return raw


@dataclass
class Settings:
    state_dir: str = os.path.join(REPO, ".state")   # OCI cache, reports, SQLite store
    policy: str = os.path.join(REPO, "policies")    # a file or a directory of policy files
    store: str = ""                     # "" = SQLite in state_dir; "redis://…" for replicas
    platform: str = "linux/amd64"       # `scapgate scan`'s default platform of an image index
    platforms: tuple = ()               # every platform the nodes run (amd64 and arm64 nodes
                                        # side by side): each one an index offers is judged,
                                        # the worst verdict decides; () = (platform,)
    insecure_registries: tuple = ()     # host:port whose TLS is not verified (test registries)
    certs_dir: str = ""                 # certs.d root; "" = skopeo's default /etc/containers/certs.d
    auth_file: str = ""                 # docker config.json / auth.json; "" = skopeo's default
    registry_timeout_s: float = 30.0    # one skopeo call; a slow registry must not wedge a worker
    scan_timeout_s: float = 300.0       # one oscap run
    scratch_dir: str = ""               # "" = /dev/shm when writable (unpack on tmpfs is 3-4x faster)
    max_unpack_bytes: int = 4 << 30     # a decompression bomb stops here
    max_unpack_files: int = 300_000     # a debootstrap root has ~10k entries
    workers: int = 0                    # scan worker processes; 0 = number of cores
    queue_limit: int = 256              # pending scans; past it admissions get "scan queue full"
    lease_s: float = 60.0               # a scan claim expires unless renewed (dead worker)
    scan_attempts: int = 3              # tries of a transiently failing scan before its error is stored
    retry_backoff_s: float = 5.0        # wait before retry n: this × 2^(n-1), capped at 300 s
    oci_cache_bytes: int = 2 << 30      # fetched layouts kept for rescans and shared layers
    reports_bytes: int = 512 << 20      # ARF/HTML reports kept; oldest deleted past this
    l1_size: int = 100_000              # per-process TTL cache entries
    l1_ttl_s: float = 300.0             # how long a process trusts its own copy of a result
    resolve_ttl_s: float = 30.0         # tag → digest answers are reused this long
    decision_memo_s: float = 1.0        # a pass/fail is reused for identical requests (replicas)
    margin_s: float = 1.5               # kept back from the apiserver's ?timeout= for the answer
    local_files: str = ""               # --local-files for remote OVAL feeds (offline)
    cve_feeds: tuple = ()               # product=URL-or-path overriding the vendors' feeds;
                                        # "off" = no CVE feeds; "product=off" = not that one
    cve_refresh_s: float = 21_600.0     # how often a feed is asked for (conditionally)
    cve_feed_max_bytes: int = 1 << 30   # a feed larger than this (compressed or not) is refused
    cve_fetch_timeout_s: float = 300.0  # one feed download
    cve_rejudge_poll_s: float = 30.0    # how often workers look for images the current feed
                                        # has not judged yet
    packages_bytes: int = 1 << 30       # package databases kept per image for re-judging
    partial_unpack: bool = True         # unpack only what the content can read (scan/partial.py)
    inventory: bool = True              # record admitted objects (and DELETEs) in the store
    inventory_rejudge_s: float = 30.0   # how often webhook processes look whether policies,
                                        # content or the day changed (then judge it again)
    # -- admission webhook (scapgate serve) --
    bind: str = "127.0.0.1:8443"        # host:port; in a cluster 0.0.0.0:8443 behind the Service
    console_bind: str = ""              # host:port of the console listener (inventory,
                                        # PolicyReports; never the apiserver's path); "" = off
    console_token_file: str = ""        # bearer token every console request must present
    tls_cert: str = ""                  # PEM serving certificate (reloaded when the file changes)
    tls_key: str = ""                   # PEM key for tls_cert
    http_workers: int = 2               # gunicorn worker processes (`serve --workers`)
    http_threads: int = 16              # threads per worker: a request may wait ~8 s for a scan
    embedded_workers: bool = True       # serve starts `workers` scan workers; false when
                                        # `scapgate worker` runs as its own Deployment
    keepalive_s: int = 95               # > Go's 90 s idle timeout: the apiserver closes, not us
    request_read_timeout_s: float = 10.0  # TLS handshake + whole request, from its first byte;
                                        # read without a thread (webhook/serve/gworker.py)
    resolve_cache_size: int = 10_000    # tag → digest answers kept per process
    pinned_ttl_s: float = 86_400.0      # index digest → platform digest never changes; re-check daily
    error_retry_s: float = 30.0         # a transient scan error is retried by admissions after this
    scan_estimate_s: float = 6.0        # "retry in about N s" before this process timed a scan
    break_glass_controllers: tuple = tuple(  # their Pods inherit the owner's break-glass
        f"system:serviceaccount:kube-system:{c}-controller" for c in (
            "replicaset", "replication", "job", "daemon-set", "statefulset"))
    report_url: str = ""                # base URL in denial messages ("" = path only)

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        s = cls(**{f.name: _env(f.name, f.default) for f in fields(cls)})
        for k, v in overrides.items():
            if v is not None:
                setattr(s, k, v)
        if not s.platforms:
            s.platforms = (s.platform,)
        return s
