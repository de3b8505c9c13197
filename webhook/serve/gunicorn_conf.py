"""gunicorn configuration for the webhook; every value comes from Settings (SCAPGATE_* env).

    gunicorn -c python:webhook.serve.gunicorn_conf 'webhook:create_app()'

gthread workers on purpose: kube-apiserver keeps its connections open, and gthread honours
keep-alive, so a review costs no TLS handshake (≈2,200 reviews/s measured, against ≈180 with
the default sync workers, which close every connection). Our subclass (webhook/serve/gworker.py)
reads each request in the event loop and gives it a thread only once it is whole: slow
clients cannot hold the threads. Threads, not processes, absorb
requests that wait for a scan. Scans run in `scapgate worker` processes that the master starts
and stops (unless Settings.embedded_workers is off). The TLS context is rebuilt when the
certificate files change (certs.ReloadingContext): a renewed certificate needs no restart.
"""
from __future__ import annotations

import os
import shutil

from ..config import Settings
from .certs import ReloadingContext
from .gworker import ReadyThreadWorker

_settings = Settings.from_env()
ReadyThreadWorker.request_read_timeout_s = _settings.request_read_timeout_s

bind = [_settings.bind] + ([_settings.console_bind] if _settings.console_bind else [])
worker_class = "webhook.serve.gworker.ReadyThreadWorker"   # gthread, threads only for whole requests
workers = max(1, _settings.http_workers)
threads = max(1, _settings.http_threads)
keepalive = _settings.keepalive_s
timeout = 60                 # a worker silent this long is restarted; requests last <= 30 s
graceful_timeout = 30        # in-flight reviews finish on shutdown
certfile = _settings.tls_cert or None
keyfile = _settings.tls_key or None
accesslog = None             # the decision log line is the access log
errorlog = "-"
loglevel = os.environ.get("SCAPGATE_LOG_LEVEL", "info")
proc_name = "scapgate"
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# gunicorn's control socket defaults to one path per user: give each server its own.
control_socket = os.path.join(_settings.state_dir, "gunicorn.ctl")
control_socket_disable = len(control_socket) > 100   # AF_UNIX paths are short
preload_app = False          # each worker builds its own thread pools after the fork
SCAN_GRACE_S = 10.0          # on stop, running scans get this long before they are given back

# Several workers write their metrics to files in one directory; /metrics adds them up.
_metrics_dir = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR",
                                     os.path.join(_settings.state_dir, "metrics"))
_tls = ReloadingContext()


_scan_workers = None


def on_starting(server):
    """Empty the metrics directory (a previous run's counters would add up with this run's),
    then start the scan workers: scans never run in a request-serving process."""
    global _scan_workers
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    os.makedirs(_metrics_dir, exist_ok=True)
    if _settings.embedded_workers:
        from ..store.worker import start_workers
        _scan_workers = start_workers(_settings, grace_s=SCAN_GRACE_S)


def post_worker_init(worker):
    """Once the app is built: hash the policies' content (else the first review of each
    policy pays for a 10 MB sha256: p99 715 vs 207 ms in the first seconds, BENCHMARKS.md),
    then gc.freeze() — start-up objects leave the collector, so the collections that busy
    request threads trigger stop walking them."""
    import gc
    deps = getattr(worker.wsgi, "extensions", {}).get("scapgate")
    if deps is not None:
        try:
            for pol in deps.policies().policies:
                pol.content()
        except Exception as e:      # a broken content file is reported per request
            worker.log.warning("content not warmed: %s", e)
    gc.collect()
    gc.freeze()


def on_exit(server):
    if _scan_workers is not None:
        _scan_workers.stop()


def child_exit(server, worker):
    from .metrics import mark_process_dead
    mark_process_dead(worker.pid)


def ssl_context(conf, default_ssl_context_factory):
    """Called for every new connection: the same context until the files change."""
    return _tls.get(conf.certfile, conf.keyfile, default_ssl_context_factory)
