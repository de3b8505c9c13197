"""The console's pages, for people: overview, workloads, one image, policies, decisions.

Served only on the console listener (app.py's `listeners` hook routes by port, and checks the
token first), rendered on the server from Jinja2 templates in templates/console/ with
autoescaping on for every template, whatever its name: everything shown — workload names,
image references, rule titles, messages — is data and reaches the page as text. No
JavaScript: links and GET forms are the whole interface, and the Content-Security-Policy of
every page allows no script at all (a second fence behind the escaping). Charts are inline
SVG. Every page is read-only; the only POST is /login.

Access. Browsers cannot send `Authorization: Bearer`, so GET /login shows a form (no data) and
POST /login compares the token in constant time (console.authorized) and, when it is right,
sets the cookie `scapgate_console=<token>` (HttpOnly, Secure, SameSite=Strict, Path=/). A
console request carries the header or the cookie; without either every route but /login is
401 with no data. CSRF: POST /login only sets a cookie that the token it carries already
grants, nothing else changes state, and the cookie is SameSite=Strict.

Cost. The overview and workloads pages read the inventory once per request (views.rows) and
render from it; the image page reads it once and looks one scan result up. The policies page
never parses SCAP content (seconds of CPU and tens of MB in an admission process): it says
what `scapgate policy show` says of each policy but the rule counts, which that command gives.

Decisions: each process keeps its last RING_SIZE admission decisions (a bounded deque that
app.py's `_account` appends a small dict to); the page says it shows this process's.
"""
from __future__ import annotations

import collections
import datetime as dt
import os
import re
import shlex
import time
from collections import Counter
from urllib.parse import urlencode

import jinja2
from flask import Blueprint, Response, redirect, request

from .. import policy as policy_mod
from ..admission.inventory import STATE_ORDER
from ..admission.response import policy_file, report_path
from ..policy import show as show_mod
from ..scan import content as content_mod
from ..scan import images as images_mod
from ..scan.results import worst_first
from ..store.base import StoreUnavailable
from . import console, views

COOKIE = "scapgate_console"
API = "/api/v1/"
LOGIN = "/login"
PAGES = frozenset({"/", "/workloads", "/policies", "/decisions", LOGIN, "/logout"})
IMAGES = "/images/"
RING_SIZE = 1000
PAGE_ROWS = 100
ARG_LIMIT = 256              # characters of one query parameter (name or value)
ARGS_MAX = 16                # query parameters of one request
FORM_LIMIT = 16 << 10        # bytes of the POST /login body
WAIVER_DAYS = 30             # the overview lists waivers expiring within this many days
DENIED_SHOWN = 10            # the overview's last denied decisions
CHART_ROWS = 20              # namespaces drawn in the overview's chart (the table has all)
DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
VERDICTS = tuple(sorted(STATE_ORDER, key=lambda s: -STATE_ORDER[s]))   # worst first
NAV = (("/", "Overview"), ("/workloads", "Workloads"), ("/policies", "Policies"),
       ("/decisions", "Decisions"))
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' "
                               "data:; form-action 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates", "console")


def is_console_route(path: str) -> bool:
    """The paths the console listener serves (and the webhook's listener never does)."""
    return path.startswith(API) or path in PAGES or path.startswith(IMAGES)


def authorized(req, token_file: str) -> bool:
    """The bearer header or the login cookie, each compared in constant time."""
    if console.authorized(req.headers.get("Authorization"), token_file):
        return True
    cookie = req.cookies.get(COOKIE)
    return bool(cookie) and len(cookie) <= console.TOKEN_LIMIT and console.authorized(
        "Bearer " + cookie, token_file)


def new_ring() -> collections.deque:
    return collections.deque(maxlen=RING_SIZE)


def remember(ring: collections.deque, req: dict, decision, now: float) -> None:
    """Append what the decisions page shows of one admission decision (bounded strings)."""
    obj = req.get("object") if isinstance(req.get("object"), dict) else {}
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    kind = req.get("kind") if isinstance(req.get("kind"), dict) else {}
    resp = decision.response or {}
    status = resp.get("status") if isinstance(resp.get("status"), dict) else {}
    images = []
    for c in decision.checks[:20]:
        v = c.verdict
        if v is None or v.state == "pass":
            continue
        images.append({"image": _cut(c.image), "digest": c.digest or "", "state": v.state,
                       "linked": bool(DIGEST_RE.match(c.digest or "")),
                       "allowed": bool(v.allowed),
                       "policy": c.policy.name if c.policy is not None else "",
                       "reasons": [_cut(r.id, 200) for r in v.reasons[:10]]})
    ring.append({
        "time": now, "uid": _cut(str(req.get("uid") or "")),
        "operation": _cut(str(req.get("operation") or "")),
        "namespace": _cut(req.get("namespace") or meta.get("namespace") or ""),
        "kind": _cut(kind.get("kind") or ""),
        "name": _cut(req.get("name") or meta.get("name") or meta.get("generateName") or ""),
        "verdict": decision.verdict, "allowed": bool(resp.get("allowed")),
        "reason": decision.reason, "message": _cut(status.get("message") or "", 2000),
        "warnings": [_cut(w, 300) for w in (resp.get("warnings") or [])[:3]],
        "images": images,
    })


def _cut(value, limit: int = 256) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit] + "…"


# -- rendering -----------------------------------------------------------------------------

def _when(ts) -> str:
    if not ts:
        return "—"
    return dt.datetime.fromtimestamp(float(ts), dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _age(seconds) -> str:
    if seconds is None:
        return "—"
    s = max(0, int(seconds))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


def _short(rule_id: str) -> str:
    return policy_mod.short_rule_id(rule_id) if rule_id else ""


def _query(path: str, **params) -> str:
    """A link with its query string (empty parameters left out), encoded."""
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return path + ("?" + urlencode(kept) if kept else "")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, auto_reload=False)
    env.filters.update(when=_when, age=_age, short=_short)
    env.globals.update(nav=NAV, verdicts=VERDICTS, query=_query)
    return env


ENV = _environment()


def _page(template: str, status: int = 200, **ctx) -> Response:
    ctx.setdefault("now", time.time())
    ctx.setdefault("active", request.path if request else "")
    ctx.setdefault("authed", True)
    ctx.setdefault("notes", [])
    html = ENV.get_template(template).render(pid=os.getpid(), **ctx)
    return Response(html, status=status, content_type="text/html; charset=utf-8",
                    headers=HEADERS)


def unauthorized() -> Response:
    """What a page request without a valid token gets: no data, a link to the form."""
    resp = _page("error.html", 401, title="Token required", authed=False,
                message="This console needs its token: log in, or send "
                        "Authorization: Bearer <token>.", login=True)
    resp.headers["WWW-Authenticate"] = 'Bearer realm="scapgate"'
    return resp


def _error(status: int, title: str, message: str) -> Response:
    return _page("error.html", status, title=title, message=message, login=False)


# -- the data of the pages -------------------------------------------------------------------

def load(store) -> list[dict]:
    """The workloads of the inventory (views.rows: one read, pods folded into their owner)."""
    return views.rows(store)


def _images(w: dict):
    return [i for i in w.get("images") or () if isinstance(i, dict)]


def _str(w: dict, name: str) -> str:
    v = w.get(name)
    return v if isinstance(v, str) else ("" if v is None else str(v))


def workload_rows(raw: list[dict]) -> list[dict]:
    """Inventory rows in the shape the templates read, every key present: only for the rows a
    page shows (normalising 10,000 would cost more than reading them)."""
    out = []
    for r in raw:
        imgs, seen = [], set()
        for i in _images(r):
            key = (i.get("digest") or "", i.get("image") or "", i.get("policy") or "")
            if key in seen:
                continue
            seen.add(key)
            imgs.append({"image": str(i.get("image") or ""), "digest": str(i.get("digest") or ""),
                         "state": str(i.get("state") or ""), "policy": str(i.get("policy") or ""),
                         "path": str(i.get("path") or ""), "platform": str(i.get("platform") or ""),
                         "product": str(i.get("product") or ""),
                         "reasons": i.get("reasons") if isinstance(i.get("reasons"), list) else [],
                         "detail": str(i.get("detail") or ""),
                         "linked": bool(DIGEST_RE.match(str(i.get("digest") or "")))})
        out.append({"namespace": str(r.get("namespace") or ""), "kind": str(r.get("kind") or ""),
                    "name": str(r.get("name") or ""), "verdict": str(r.get("verdict") or ""),
                    "replicas": int(r.get("replicas") or 0),
                    "policies": [str(p) for p in r.get("policies") or []],
                    "images": imgs, "judged_at": r.get("judged_at") or 0,
                    "admitted_at": r.get("admitted_at") or 0})
    return out


def chart(rows: list[tuple[str, str, Counter]], *, label_w: int = 190, bar_w: int = 420) -> dict:
    """Horizontal bars for inline SVG, one per row, stacked by verdict class:
    rows are (label, href, Counter state → n)."""
    top = max((sum(c.values()) for _, _, c in rows), default=0) or 1
    out, y = [], 4
    for label, href, counts in rows:
        x, segs = float(label_w), []
        for state in VERDICTS + tuple(sorted(set(counts) - set(VERDICTS))):
            n = counts.get(state, 0)
            if not n:
                continue
            w = max(1.0, bar_w * n / top)
            segs.append({"x": round(x, 1), "w": round(w, 1), "state": state, "n": n,
                         "cls": state if state in STATE_ORDER else "other"})
            x += w
        out.append({"label": _cut(label, 28), "full": label, "href": href, "y": y,
                    "total": sum(counts.values()), "segments": segs, "end": round(x + 6, 1)})
        y += 22
    return {"rows": out, "height": y + 2, "width": label_w + bar_w + 60, "label_w": label_w}


def _content_rows(pset, now: float) -> list[dict]:
    """The content each policy in force judges each product with, and its age on disk."""
    out = []
    for pol in pset.policies:
        try:
            products = list(pol.content_products().items())
            lines = show_mod.product_lines(pol)
        except Exception as e:            # a policy whose content is broken: say so, go on
            out.append({"policy": pol.name, "line": f"cannot read its content: {e}", "age": None})
            continue
        for (product, entry), line in zip(products, lines):
            ds = pol.datastream if entry is None else (
                entry.datastream or content_mod.datastream_for(product))
            try:
                age = now - os.stat(ds).st_mtime
            except OSError:
                age = None
            out.append({"policy": pol.name, "line": line, "age": age})
    return out


def _feed_rows(feeds, products: set[str], now: float) -> list[dict]:
    out = []
    if feeds is None:
        return out
    for product in sorted(products):
        try:
            st = feeds(product)
        except Exception as e:
            out.append({"product": product, "error": str(e)})
            continue
        if st is None:
            out.append({"product": product, "error": "no CVE feed kept for this product"})
            continue
        out.append({"product": product, "feed": st.product, "source": st.source,
                    "sha256": st.sha256[:12], "definitions": st.definitions,
                    "age": st.age_s(now), "failures": st.failures,
                    "last_error": st.last_error, "error": ""})
    return out


def _waivers_soon(pset, today: dt.date, days: int = WAIVER_DAYS) -> list[dict]:
    out = []
    for pol in pset.policies:
        for w in pol.waivers:
            left = w.days_left(today)
            if 0 <= left <= days:
                out.append({"policy": pol.name, "waived": w.names, "expires": w.expires.isoformat(),
                            "left": left, "owner": w.owner, "ticket": w.ticket,
                            "images": ", ".join(w.images), "namespaces": ", ".join(w.namespaces)})
    return sorted(out, key=lambda r: (r["left"], r["policy"], r["waived"]))


QUEUE_SHOWN = 10       # oldest scans named on the overview, with their ages


def _queue(service, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    try:
        stats = service.stats() if hasattr(service, "stats") else {"depth": service.depth()}
        jobs = service.oldest_jobs(QUEUE_SHOWN) if hasattr(service, "oldest_jobs") else []
        return {"depth": stats.get("depth"), "started": stats.get("scans_started"),
                "l1": stats.get("l1_entries"), "error": "",
                "jobs": [{"image": j.image or j.kid, "state": j.state, "attempts": j.attempts,
                          "age": max(0.0, now - j.enqueued_at) if j.enqueued_at else None}
                         for j in jobs]}
    except Exception as e:
        return {"depth": None, "started": None, "l1": None, "error": str(e), "jobs": []}


def overview(workloads: list[dict], pset, deps, ring, now: float) -> dict:
    """The overview's numbers from the raw inventory rows (load), in one pass."""
    by_verdict: Counter = Counter()
    by_ns: dict[str, Counter] = {}
    images: dict[str, str] = {}
    products: set[str] = set()
    order = STATE_ORDER.get
    for w in workloads:
        verdict = str(w.get("verdict") or "")
        by_verdict[verdict] += 1
        ns = str(w.get("namespace") or "")
        counts = by_ns.get(ns)
        if counts is None:
            counts = by_ns[ns] = Counter()
        counts[verdict] += 1
        for i in w.get("images") or ():
            if not isinstance(i, dict):
                continue
            key = str(i.get("digest") or i.get("image") or "")
            state = str(i.get("state") or "")
            seen = images.get(key)
            if seen is None or order(state, 0) > order(seen, 0):
                images[key] = state
            product = i.get("product")
            if product:
                products.add(str(product))
    by_state = Counter(images.values())
    ns_sorted = sorted(by_ns.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    denied = [d for d in reversed(ring or ()) if not d["allowed"]][:DENIED_SHOWN]
    return {
        "total": len(workloads), "images_total": len(images),
        "verdict_chart": chart([(v, _query("/workloads", verdict=v), Counter({v: by_verdict[v]}))
                                for v in VERDICTS if by_verdict.get(v)]),
        "ns_chart": chart([(ns, _query("/workloads", namespace=ns), c)
                           for ns, c in ns_sorted[:CHART_ROWS]]),
        "ns_more": max(0, len(ns_sorted) - CHART_ROWS),
        "namespaces": [{"name": ns, "total": sum(c.values()),
                        "counts": {v: c.get(v, 0) for v in VERDICTS}} for ns, c in ns_sorted],
        "by_verdict": {v: by_verdict.get(v, 0) for v in VERDICTS},
        "by_state": {v: by_state.get(v, 0) for v in VERDICTS},
        "state_chart": chart([(v, "", Counter({v: by_state[v]})) for v in VERDICTS
                              if by_state.get(v)]),
        "queue": _queue(deps.service, now),
        "content": _content_rows(pset, now),
        "feeds": _feed_rows(deps.feeds, products, now),
        "waivers": _waivers_soon(pset, dt.datetime.fromtimestamp(
            deps.clock(), dt.timezone.utc).date()),
        "denied": denied, "ring_size": len(ring or ()),
    }


def _reasons(raw: list) -> list[dict]:
    """The reasons an inventory entry keeps for an image, every field a string."""
    return [{k: str(x.get(k) or "") for k in ("id", "kind", "severity", "title")}
            for x in raw if isinstance(x, dict)]


def _page_number(text: str | None, pages: int) -> int:
    try:
        n = int(text or "1")
    except ValueError:
        n = 1
    return min(max(n, 1), pages)


def _scan_command(pol, root: str, digest: str, image: str, namespace: str,
                  platform: str) -> str:
    """The command that scans and judges this image as the gate did, as denial messages put
    it (response.describe): IMAGE@DIGEST, the policy file as the repository names it."""
    try:
        target = str(images_mod.parse(image).pinned(digest)) if image else digest
    except images_mod.ReferenceError:
        target = digest
    args = ["scapgate", "scan", target, "--policy", policy_file(pol, root)]
    if namespace:
        args += ["--namespace", namespace]
    if platform:
        args += ["--platform", platform]
    return " ".join(shlex.quote(a) for a in args)


# -- the blueprint ----------------------------------------------------------------------------

def blueprint(deps, settings, ring: collections.deque | None) -> Blueprint:
    """The pages; app.py registers it when the console listener is configured."""
    bp = Blueprint("console", __name__)
    store = getattr(deps.service, "store", None)
    inventory = store if settings.inventory and hasattr(store, "inv_list") else None

    def page(template: str, status: int = 200, **ctx) -> Response:
        return _page(template, status, now=deps.clock(), **ctx)   # ages by the app's clock

    def read() -> list[dict]:
        return load(inventory) if inventory is not None else []

    def no_inventory() -> list[str]:
        return [] if inventory is not None else [
            "The inventory is off (SCAPGATE_INVENTORY=false or a store without one): no "
            "workloads to show."]

    @bp.before_request
    def bounded():
        if len(request.args) > ARGS_MAX:
            return _error(400, "Bad request", f"more than {ARGS_MAX} query parameters")
        for k, v in request.args.items(multi=True):
            if len(k) > ARG_LIMIT or len(v) > ARG_LIMIT:
                return _error(400, "Bad request",
                              f"a query parameter longer than {ARG_LIMIT} characters")
        return None

    @bp.errorhandler(StoreUnavailable)
    def store_down(e):
        return _error(503, "Store unavailable", f"the shared store does not answer: {e}")

    @bp.get("/")
    def overview_page():
        data = overview(read(), deps.policies(), deps, ring, deps.clock())
        return page("overview.html", title="Overview", d=data, notes=no_inventory())

    @bp.get("/workloads")
    def workloads_page():
        ns = request.args.get("namespace", "")
        verdict = request.args.get("verdict", "")
        pol = request.args.get("policy", "")
        all_rows = read()
        namespaces = sorted({_str(w, "namespace") for w in all_rows})
        policies = sorted({p.name for p in deps.policies().policies}
                          | {str(p) for w in all_rows for p in w.get("policies") or ()})
        notes = no_inventory()
        found = all_rows
        if verdict and verdict not in VERDICTS:
            notes.append(f"Unknown verdict {verdict!r}: one of {', '.join(VERDICTS)}.")
            found = []
        if pol and pol not in policies:
            notes.append(f"No policy named {pol!r}.")
            found = []
        if ns and ns not in namespaces:
            notes.append(f"No workloads recorded in namespace {ns!r}.")
            found = []
        found = [w for w in found if (not ns or w.get("namespace") == ns)
                 and (not verdict or w.get("verdict") == verdict)
                 and (not pol or pol in (w.get("policies") or ()))]
        pages = max(1, -(-len(found) // PAGE_ROWS))
        n = _page_number(request.args.get("page"), pages)
        shown = workload_rows(found[(n - 1) * PAGE_ROWS: n * PAGE_ROWS])
        filters = {"namespace": ns, "verdict": verdict, "policy": pol}
        return page("workloads.html", title="Workloads", rows=shown, total=len(found),
                    page_no=n, pages=pages, filters=filters, namespaces=namespaces,
                    policies=policies, notes=notes,
                    prev=_query("/workloads", **filters, page=n - 1) if n > 1 else "",
                    next=_query("/workloads", **filters, page=n + 1) if n < pages else "")

    @bp.get("/images/<path:digest>")
    def image_page(digest: str):
        if not DIGEST_RE.match(digest):
            return _error(404, "Not found", "not a sha256:<64 hex> image digest")
        wanted = request.args.get("policy", "")
        running = []
        runs = [w for w in read() if any(i.get("digest") == digest for i in _images(w))]
        for w in workload_rows(runs):
            for i in w["images"]:
                if i["digest"] == digest:
                    running.append({**w, "image": i})
        pset = deps.policies()
        by_name = {p.name: p for p in pset.policies}
        named = sorted({r["image"]["policy"] for r in running if r["image"]["policy"]})
        notes = []
        if wanted:
            pol = by_name.get(wanted)
            if pol is None:
                notes.append(f"No policy named {wanted!r} is in force.")
        else:
            pol = next((by_name[n] for n in named if n in by_name), None) or next(
                (p for p in pset.policies if p.default), None)
        first = next((r for r in running if pol and r["image"]["policy"] == pol.name),
                     running[0] if running else None)
        image = first["image"]["image"] if first else ""
        judged = first if first and pol and first["image"]["policy"] == pol.name else None
        result, problem = None, ""
        if pol is not None:
            try:
                result = deps.service.lookup(deps.key_for(digest, pol.content()))
            except StoreUnavailable:
                raise
            except Exception as e:          # content missing: say so on the page
                problem = f"cannot look the scan up under policy {pol.name}: {e}"
            if result is None and not problem:
                problem = (f"no scan result of this digest under policy {pol.name} (not scanned "
                           "yet, or its content changed since)")
        if not running:
            notes.append("No workload in the inventory runs this image.")
        failing = result.failed() if result is not None else []
        cves = [f.line() for f in worst_first(result.cves)] if result is not None else []
        return page(
            "image.html", title=f"Image {digest[:19]}…", digest=digest, image=image,
            policy=pol, policies=named, result=result, problem=problem, notes=notes,
            failing=failing, cves=cves, running=running,
            why=_reasons(judged["image"]["reasons"]) if judged else [],
            state=judged["image"]["state"] if judged else "",
            detail=judged["image"]["detail"] if judged else "",
            report=report_path(settings.report_url, digest, pol.name) if pol else "",
            report_base=settings.report_url, webhook_bind=settings.bind,
            command=_scan_command(pol, deps.policy_root, digest, image,
                                  first["namespace"] if first else "",
                                  first["image"]["platform"] if first else "") if pol else "")

    @bp.get("/policies")
    def policies_page():
        pset = deps.policies()
        today = dt.datetime.fromtimestamp(deps.clock(), dt.timezone.utc).date()
        views = [show_mod.PolicyView(p, problem="" if not p.datastream else
                                     "the rule count is not computed here (parsing the "
                                     "datastream takes seconds); `scapgate policy show` "
                                     "gives it")
                 for p in sorted(pset.policies,
                                 key=lambda p: (p.default, -p.priority, p.name))]
        sets = [show_mod.SetView(pset.source or "(policies in force)", True, views, [])]
        policies = []
        for v in views:
            try:
                judges = show_mod.product_lines(v.policy) if not v.policy.datastream else []
            except Exception as e:
                judges = [f"cannot read its content: {e}"]
            policies.append({"name": v.policy.name, "facts": show_mod.policy_facts(v),
                             "judges": judges, "default": v.policy.default})
        return page("policies.html", title="Policies", precedence=show_mod.PRECEDENCE,
                    source=pset.source, policies=policies,
                    no_default=not any(p.default for p in pset.policies),
                    waivers=show_mod.waiver_rows(sets, today, None), today=today.isoformat())

    @bp.get("/decisions")
    def decisions_page():
        shown = list(reversed(ring or ()))
        only = request.args.get("allowed", "")
        notes = []
        if only in ("true", "false"):
            shown = [d for d in shown if d["allowed"] == (only == "true")]
        elif only:
            notes.append(f"Unknown filter allowed={only!r}: true or false.")
            shown = []
        return page("decisions.html", title="Decisions", decisions=shown, only=only,
                    ring_max=RING_SIZE, notes=notes)

    @bp.route(LOGIN, methods=["GET", "POST"])
    def login():
        if request.method == "GET":
            return page("login.html", title="Log in", authed=False, failed=False)
        if (request.content_length or 0) > FORM_LIMIT:
            return page("login.html", 400, title="Log in", authed=False, failed=True)
        token = request.form.get("token", "").strip()
        if 0 < len(token) <= console.TOKEN_LIMIT and console.authorized(
                "Bearer " + token, settings.console_token_file):
            resp = redirect("/", 303)
            resp.set_cookie(COOKIE, token, httponly=True, secure=True, samesite="Strict",
                            path="/")
            resp.headers.update(HEADERS)
            return resp
        return page("login.html", 401, title="Log in", authed=False, failed=True)

    @bp.get("/logout")
    def logout():
        resp = redirect(LOGIN, 303)
        resp.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
        resp.headers.update(HEADERS)
        return resp

    return bp


__all__ = ["API", "COOKIE", "LOGIN", "RING_SIZE", "authorized", "blueprint", "is_console_route",
           "new_ring", "remember", "unauthorized"]
