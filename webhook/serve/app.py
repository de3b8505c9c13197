"""The Flask app kube-apiserver calls: routes decode and encode, admission.py decides.

`create_app` wires everything from Settings and accepts each piece ready-made (policies, scan
service, registry, pipeline, resolver, clock) so tests run the real ones or swap them at our
own seam. Served by gunicorn: `gunicorn -c python:webhook.serve.gunicorn_conf 'webhook:create_app()'`.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from typing import Callable

import orjson
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from .. import policy as policy_mod
from ..admission import inventory as inventory_mod
from ..admission import review
from ..admission.budget import Budget, Estimate
from ..admission.decide import decide
from ..admission.model import Decision, Deps
from ..config import Settings
from ..scan import oscap
from ..scan.resolver import Resolver
from . import console, console_pages, logs, metrics

log = logging.getLogger("scapgate.app")
DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
DEFAULT_TIMEOUT_S = 10.0      # kube-apiserver's default timeoutSeconds
MAX_TIMEOUT_S = 30.0          # the largest timeoutSeconds the API accepts
DRAIN_MAX = 4 * review.MAX_BODY   # an oversize body up to this is read before the 400


def create_app(settings: Settings | None = None, *, policies=None, service=None, registry=None,
               pipeline=None, clock: Callable[[], float] | None = None,
               resolver: Resolver | None = None) -> Flask:
    """Build the webhook app. `policies` is a PolicySet, a callable returning the set in force,
    or None to load Settings.policy and reload it when it changes (policy_watch.PolicyStore).
    `clock` is the wall clock for result ages and waiver expiry (budgets use monotonic time)."""
    from ..scan import engine
    from ..store import scans

    settings = settings or Settings.from_env()
    registry = registry or engine.build_registry(settings)
    pipeline = pipeline or engine.build_pipeline(settings, registry)
    service = service or scans.build_service(settings, pipeline)
    resolver = resolver or Resolver(registry, ttl_s=settings.resolve_ttl_s,
                                    pinned_ttl_s=settings.pinned_ttl_s,
                                    size=settings.resolve_cache_size, platform=settings.platform,
                                    platforms=settings.platforms)
    source, status = _policy_source(policies, settings)
    deps = Deps(
        policies=source, service=service, resolver=resolver, key_for=pipeline.key,
        clock=clock or time.time, estimate=Estimate(settings.scan_estimate_s),
        error_retry_s=settings.error_retry_s, scan_workers=settings.workers or os.cpu_count() or 2,
        report_url=settings.report_url, policy_root=settings.policy,
        break_glass_controllers=frozenset(settings.break_glass_controllers),
        memo_s=settings.decision_memo_s,
        feeds=_feeds_of(pipeline, service, settings))
    logs.setup()
    app = Flask("webhook")
    app.extensions["scapgate"] = deps
    store = getattr(service, "store", None)
    if settings.inventory and settings.inventory_rejudge_s > 0 and hasattr(store, "inv_list"):
        from .judge import InventoryJudge
        InventoryJudge(store, deps, interval_s=settings.inventory_rejudge_s).start()
    # The console's pages and this process's recent decisions, only with a console listener.
    decisions = console_pages.new_ring() if settings.console_bind else None
    _routes(app, deps, settings, status, decisions)
    if settings.console_bind:
        app.register_blueprint(console_pages.blueprint(deps, settings, decisions))
    return app


def _feeds_of(pipeline, service, settings: Settings):
    """product → its CVE feed in force, as the scan workers publish it in the shared store
    (webhook pods of an HA install keep no feeds), else from this state dir."""
    if settings.cve_feeds == ("off",):
        return None
    from ..store.cves import FeedBoard
    store = getattr(service, "store", None)
    local = getattr(pipeline, "feeds", None)
    if store is None:
        return local.current_for if local is not None else None
    return FeedBoard(store, local).current_for


def _policy_source(policies, settings: Settings):
    """(callable returning the PolicySet in force, callable returning reload status or None).
    By default the policy path is watched and a valid change replaces the set in force."""
    if policies is None:
        from ..policy.watch import PolicyStore
        store = PolicyStore(settings.policy)
        store.on_reload(lambda _set: metrics.POLICY_RELOADS.labels("ok").inc())
        store.on_error(lambda _error: metrics.POLICY_RELOADS.labels("error").inc())
        store.start()
        return store.current, store.status
    if isinstance(policies, policy_mod.PolicySet):
        return (lambda: policies), None
    return policies, None


def _routes(app: Flask, deps: Deps, settings: Settings, policy_status, decisions=None) -> None:
    store = getattr(deps.service, "store", None)
    inventory = store if settings.inventory and hasattr(store, "inv_put") else None
    console_port = console.port_of(settings.console_bind)

    @app.before_request
    def listeners():
        """The console's routes only on its listener, with its token; the webhook's never
        there (kube-apiserver only ever talks to the webhook's listener)."""
        on_console = bool(console_port) and request.environ.get("SERVER_PORT") == console_port
        wants_console = console_pages.is_console_route(request.path)
        if wants_console != on_console or (wants_console and not console_port):
            return jsonify({"error": "not found"}), 404
        if on_console and request.path != console_pages.LOGIN and not console_pages.authorized(
                request, settings.console_token_file):
            if not request.path.startswith(console_pages.API):
                return console_pages.unauthorized()       # a page: HTML, no data
            return (jsonify({"error": "a valid bearer token is required"}), 401,
                    {"WWW-Authenticate": 'Bearer realm="scapgate"'})
        return None

    @app.route("/api/v1/inventory", methods=["GET"])
    def api_inventory():
        from .views import rows
        if store is None or not hasattr(store, "inv_list"):
            return jsonify({"error": "no inventory store"}), 503
        ns = request.args.get("namespace")
        verdict = request.args.get("verdict")
        if (ns and len(ns) > 253) or (verdict and len(verdict) > 32):
            return jsonify({"error": "filter too long"}), 400
        found = [r for r in rows(store, ns) if not verdict or r.get("verdict") == verdict]
        return Response(orjson.dumps({"items": found}), mimetype="application/json")

    @app.route("/api/v1/policyreports", methods=["GET"])
    def api_policyreports():
        from .views import policy_report_list
        if store is None or not hasattr(store, "inv_list"):
            return jsonify({"error": "no inventory store"}), 503
        ns = request.args.get("namespace")
        if ns and len(ns) > 253:
            return jsonify({"error": "filter too long"}), 400
        body = policy_report_list(store, ns, all_results=request.args.get("all") in (
            "1", "true", "yes"))
        return Response(orjson.dumps(body), mimetype="application/json")

    @app.route("/validate", methods=METHODS, provide_automatic_options=False)
    def validate():
        t0 = time.perf_counter()
        req, budget, bad = _read_review(settings)
        if bad:
            return bad
        decision = _decide(req, deps, budget)
        seconds = time.perf_counter() - t0
        resp = Response(orjson.dumps(review.encode(req["uid"], decision.response)),
                        mimetype="application/json")
        # Metrics, the log line and the inventory entry run once the answer is written: off
        # the apiserver's clock, never changing the answer.
        resp.call_on_close(lambda: _account(req, decision, seconds, inventory, decisions))
        return resp

    @app.route("/mutate", methods=METHODS, provide_automatic_options=False)
    def mutate():
        """Optional: pin image tags to the digests the gate judges (webhook/admission/mutate.py)."""
        from ..admission.mutate import pin
        t0 = time.perf_counter()
        req, budget, bad = _read_review(settings)
        if bad:
            return bad
        try:
            answer = pin(req, deps, budget)
        except Exception:                   # pinning is best effort; it never blocks a pod
            log.exception("pinning failed for uid %s", req.get("uid"))
            answer = {"allowed": True, "warnings": ["scapgate could not pin image digests"]}
        resp = Response(orjson.dumps(review.encode(req["uid"], answer)),
                        mimetype="application/json")
        resp.call_on_close(lambda: logs.log_pinned(req, answer, time.perf_counter() - t0))
        return resp

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz():
        checks = _readiness(deps)
        ok = all(v == "ok" for v in checks.values())
        body = {"status": "ok" if ok else "not ready", "checks": checks}
        if policy_status:
            body["policies"] = policy_status()
        return jsonify(body), 200 if ok else 503

    @app.get("/metrics")
    def metrics_route():
        try:
            deps.service.depth()            # refreshes the queue depth gauge (scans.py)
        except Exception as e:  # the store being down must not hide every other metric
            log.warning("queue depth unavailable: %s", e)
        body, ctype = metrics.exposition()
        return Response(body, content_type=ctype)

    @app.get("/reports/<digest>")
    def report(digest: str):
        return _report(digest, request.args.get("policy"), deps)

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        return jsonify(review.error_body(e.description or e.name, e.code or 400)), e.code or 400


def _read_review(settings: Settings):
    """(request, time budget, None) for a well-formed AdmissionReview POST, else
    (None, None, the 400 answer): what /validate and /mutate both read first."""
    try:
        review.check_headers(request.method, request.headers.get("Content-Type"))
        body = review.read_body(_read_limited(), request.headers.get("Content-Encoding"))
        req = review.decode(body)
    except review.ReviewError as e:
        metrics.BAD_REQUESTS.inc()
        return None, None, (jsonify(review.error_body(str(e))), e.status)
    budget = Budget(parse_timeout(request.args.get("timeout")) - settings.margin_s)
    return req, budget, None


def _read_limited() -> bytes:
    """At most MAX_BODY + 1 bytes: enough to tell that a body is too large, never more.

    A declared oversize body is read and dropped (up to DRAIN_MAX) before the 400, so a
    client still sending it gets the answer instead of a reset connection."""
    length = request.content_length or 0
    if length > review.MAX_BODY:
        if length <= DRAIN_MAX:
            while request.stream.read(1 << 16):
                pass
        raise review.ReviewError(f"body larger than {review.MAX_BODY} bytes")
    return request.stream.read(review.MAX_BODY + 1)


def _decide(req, deps: Deps, budget: Budget) -> Decision:
    """A bug in the decision must not become a 500 (failurePolicy would decide for us):
    fail closed with the uid echoed, and log the traceback."""
    try:
        return decide(req, deps, budget)
    except Exception:
        log.exception("decision failed for uid %s", req.get("uid"))
        return Decision(
            {"allowed": False, "status": {"code": 500, "reason": "InternalError", "message":
                                          f"scapgate could not decide (uid {req['uid']}); "
                                          "see the webhook's log"}},
            "error", "internal")


def _account(req, decision: Decision, seconds: float, inventory=None, decisions=None) -> None:
    """Metrics, the decision log line, the console's ring of recent decisions and the inventory
    entry; none may turn an answer into a 500 (the answer is written already)."""
    try:
        metrics.observe(decision, seconds)
        logs.log_decision(logs.record(req, decision, seconds * 1000))
    except Exception:
        log.exception("could not log or count the decision for uid %s", req.get("uid"))
    if decisions is not None:
        try:
            console_pages.remember(decisions, req, decision, time.time())
        except Exception:
            log.exception("could not remember the decision for uid %s", req.get("uid"))
    if inventory is not None:
        inventory_mod.record(inventory, req, decision, time.time())


_DURATION = re.compile(r"(\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_timeout(text: str | None) -> float:
    """kube-apiserver's ?timeout= is a Go duration ("10s", "1m30s"); junk means the default."""
    if not text:
        return DEFAULT_TIMEOUT_S
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return DEFAULT_TIMEOUT_S
    return min(MAX_TIMEOUT_S, sum(float(n) * _UNIT_S[u] for n, u in parts))


def _readiness(deps: Deps) -> dict[str, str]:
    out = {}
    try:
        out["policies"] = "ok" if deps.policies().policies else "no policies loaded"
    except Exception as e:
        out["policies"] = f"error: {e}"
    for tool in ("oscap", "skopeo"):
        out[tool] = "ok" if shutil.which(tool) else "missing"
    try:
        out["store"] = "ok" if deps.service.healthy() else "unreachable"
    except Exception as e:
        out["store"] = f"error: {e}"
    return out


def _report(digest: str, policy_name: str | None, deps: Deps):
    """The HTML report of a stored scan, rendered from its ARF on first request and kept."""
    if not DIGEST_RE.match(digest):
        return jsonify(review.error_body("not a sha256 digest")), 400
    pset = deps.policies()
    pol = next((p for p in pset.policies if p.name == policy_name), None) if policy_name else \
        next((p for p in pset.policies if p.default), None)
    if pol is None:
        return jsonify(review.error_body(f"no policy named {policy_name!r}", 404)), 404
    try:
        res = deps.service.lookup(deps.key_for(digest, pol.content()))
    except Exception as e:  # content missing or store down: say so, as JSON
        return jsonify(review.error_body(f"cannot look the scan up: {e}", 503)), 503
    if res is None or res.state != "done":
        return jsonify(review.error_body(
            f"no scan of {digest} under policy {pol.name} (profile {pol.profile})", 404)), 404
    if not res.arf_path or not os.path.exists(res.arf_path):
        return jsonify(review.error_body(
            f"the report of {digest} is not on this server (the scan ran on another "
            f"replica's disk: {res.arf_path or 'no ARF kept'})", 404)), 404
    html_path = res.arf_path.removesuffix(".arf.xml.gz") + ".html"
    if not os.path.exists(html_path):
        try:
            with open(res.arf_path, "rb") as fh, tempfile.TemporaryDirectory() as work:
                html = oscap.html_report(fh.read(), work)
        except (OSError, oscap.ScanError) as e:
            return jsonify(review.error_body(f"cannot render the report: {e}", 500)), 500
        tmp = f"{html_path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as out:
            out.write(html)
        os.replace(tmp, html_path)
    with open(html_path, "rb") as fh:
        return Response(fh.read(), content_type="text/html; charset=utf-8")
