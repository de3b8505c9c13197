"""The console's pages through the real Flask app (create_app), with the real policies, the real
SQLite store holding the inventory and the real decision code; only the scan service and the
registry are swapped at our seam (FakeService, FakeRegistry, FakePipeline), as in
tests/admission/test_admission.py. Requests name the listener by port (base_url), as gunicorn's
two listeners do:

- every page answers 200 with the data it is about, and every link of the overview and the
  workloads page leads to a 200;
- the workloads filters (namespace, verdict, policy), 100 rows a page, a page out of range;
- without the token (header or login cookie) every route but /login is 401 with no data; the
  login form sets the cookie, the pages then work with it alone, /logout clears it;
- the pages are 404 on the webhook's listener;
- `<script>` in a pod name, an image reference, a namespace and a rule title reaches the pages
  as text; long query parameters are 400, unknown filters an empty result with a note, a bad
  digest 404;
- the overview and the workloads page read the inventory once, the image page reads it once
  and looks one result up.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
import yaml

from tests.admission.test_admission import BAD_RULES, D, IMG, NOW, RULE, scan
from tests.builders.webhooks import (FakePipeline, FakeRegistry, FakeService, make_review,
                                     pod_spec, policy_doc, workload)
from webhook import policy as policy_mod
from webhook.config import Settings
from webhook.scan.feeds import FeedStatus
from webhook.scan.results import CveFinding, RuleResult, ScanResult
from webhook.serve import console_pages
from webhook.serve.app import create_app
from webhook.store.sqlite import SQLiteStore

WEBHOOK_PORT, CONSOLE_PORT = 18443, 18444
TOKEN = "console-token-" + "k" * 24
EVIL = "<script>alert('x')</script>"
EVIL_DIGEST = "sha256:" + "9" * 64
EVIL_IMAGE = "registry.test/evil/app:1"
EVIL_RULE_TITLE = f"Remove {EVIL} from /etc/motd"
TODAY = dt.datetime.fromtimestamp(NOW, dt.timezone.utc).date()
BULK = 250                 # workloads in namespace "bulk": three pages of 100
PAGES = ["/", "/workloads", f"/images/{EVIL_DIGEST}", "/policies", "/decisions"]


# -- the world: policies, the store with its inventory, stored results, decisions -----------

class Service(FakeService):
    """FakeService with the shared store the inventory lives in (ScanService.store)."""

    def __init__(self, store, **kw):
        super().__init__(**kw)
        self.store = store
        self.lookups = 0

    def lookup(self, key):
        self.lookups += 1
        return super().lookup(key)

    def stats(self):
        return {"depth": 3, "scans_started": 42, "l1_entries": len(self.l1)}


def _policies(tmp) -> policy_mod.PolicySet:
    ds = tmp / "content" / "ssg-debian12-ds.xml"
    ds.parent.mkdir()
    ds.write_text("<not-really-scap/>")
    root = tmp / "policies"
    root.mkdir()
    default = policy_doc("default", default=True, priority=0, datastream=str(ds))
    default["spec"]["waivers"] = [
        {"rule": "package_nis_removed", "reason": "legacy NIS client, removal planned",
         "owner": "team-a", "ticket": "SEC-10",
         "expires": (TODAY + dt.timedelta(days=10)).isoformat()},
        {"rule": "file_owner_etc_passwd", "reason": "vendor image", "owner": "team-b",
         "ticket": "SEC-90", "expires": (TODAY + dt.timedelta(days=90)).isoformat()}]
    strict = policy_doc("strict", namespaces=["team-strict"], datastream=str(ds))
    for doc in (default, strict):
        (root / f"{doc['metadata']['name']}.yaml").write_text(yaml.safe_dump(doc))
    return policy_mod.load_set(str(root))


def _image(digest, image, state, policy="default", reasons=(), product="debian12"):
    return {"path": "spec.containers[0].image", "image": image, "digest": digest,
            "state": state, "platform": "", "policy": policy,
            "reasons": [{"id": RULE + r, "kind": "rule", "severity": "high", "title": t}
                        for r, t in reasons],
            "detail": "", "product": product, "profile": "standard", "content": "ds.xml",
            "content_sha256": "", "feed_sha256": ""}


def _entry(namespace, kind, name, verdict, images, owner="", policies=("default",)):
    body = {"namespace": namespace, "kind": kind, "name": name, "uid": f"uid-{name}",
            "owner": owner, "owners": [], "verdict": verdict, "policies": list(policies),
            "images": images, "admitted_at": NOW - 3600, "judged_at": NOW - 60}
    return f"{namespace}/{kind}/{name}", namespace, owner, json.dumps(body)


class World:
    def __init__(self, tmp):
        self.pset = _policies(tmp)
        self.store = SQLiteStore(str(tmp / "store.db"))
        self.service = Service(self.store, finish=scan)
        token = tmp / "console-token"
        token.write_text(TOKEN + "\n")
        settings = Settings(state_dir=str(tmp / "state"), policy=str(tmp / "policies"),
                            console_bind=f"127.0.0.1:{CONSOLE_PORT}",
                            bind=f"127.0.0.1:{WEBHOOK_PORT}", console_token_file=str(token),
                            cve_feeds=("off",), inventory_rejudge_s=0,
                            platforms=("linux/amd64",))
        self.app = create_app(settings, policies=self.pset, service=self.service,
                              registry=FakeRegistry(dict(D)), pipeline=FakePipeline(),
                              clock=lambda: NOW)
        self.deps = self.app.extensions["scapgate"]
        self.deps.feeds = lambda product: FeedStatus(
            product, source="https://security.debian.org/oval", sha256="ab" * 32,
            definitions=917, as_of=NOW - 7200) if product == "debian12" else None
        default = self.pset.policies[[p.name for p in self.pset.policies].index("default")]
        self.default = default
        # a stored result whose rule title carries HTML, and a CVE
        key = FakePipeline().key(EVIL_DIGEST, default.content())
        self.service.put(ScanResult(
            key=key, image=EVIL_IMAGE, product="debian12", profile="standard",
            scanned_at=NOW - 120, tools={"content": "ssg-debian12-ds.xml"},
            rules=[RuleResult(RULE + "motd_no_script", EVIL_RULE_TITLE, "high", "fail"),
                   *BAD_RULES],
            cves=[CveFinding("CVE-2024-3094", "xz-utils", "5.6.0-0.2", "5.6.1+really5.4.5-1",
                             "critical", "xz backdoor")],
            feed={"product": "debian12", "sha256": "ab" * 32}))
        # the inventory: bulk workloads, HTML in names, an image whose rule title is HTML
        entries = [_entry("bulk", "Deployment", f"svc-{i:03d}", "pass",
                          [_image(D["good"], IMG["good"], "pass")]) for i in range(BULK)]
        entries.append(_entry("team-a", "Pod", EVIL, "fail", [_image(
            EVIL_DIGEST, EVIL_IMAGE, "fail", reasons=[("motd_no_script", EVIL_RULE_TITLE)])]))
        entries.append(_entry("team-a", "StatefulSet", "db", "fail", [_image(
            EVIL_DIGEST, EVIL_IMAGE, "fail", reasons=[("motd_no_script", EVIL_RULE_TITLE)])]))
        entries.append(_entry(EVIL, "Pod", "odd-namespace", "pending", [_image(
            "", "registry.test/x/<b>bold</b>:1", "pending", product="")]))
        entries.append(_entry("team-strict", "Job", "nightly", "unsupported", [_image(
            D["busybox"], IMG["busybox"], "unsupported", policy="strict", product="")],
            policies=("strict",)))
        self.store.inv_replace(entries)
        # admissions through /validate on the webhook's listener: allowed ones land in the
        # inventory (a Deployment and its pod, folded in), each in this process's decisions
        self.webhook = Browser(self.app, WEBHOOK_PORT)
        allowed = [make_review(workload("Deployment", pod_spec([IMG["good"]]), name="api")),
                   make_review(workload("Pod", pod_spec([IMG["good"]]), name="api-7d9-x1"))]
        allowed[1]["request"]["object"]["metadata"]["ownerReferences"] = [
            {"kind": "Deployment", "name": "api", "uid": "u-1", "controller": True}]
        denied = make_review(workload("Pod", pod_spec([IMG["bad"]]), name="evil-" + EVIL))
        for review in (*allowed, denied):
            r = self.webhook.post("/validate?timeout=10s", data=json.dumps(review),
                                  content_type="application/json")
            assert r.status_code == 200, r.data
            r.close()                  # runs the close hook: metrics, log line, inventory, ring
        self.denied_uid = denied["request"]["uid"]

    def console(self, *, token: str | None = TOKEN) -> "Browser":
        return Browser(self.app, CONSOLE_PORT, token=token)


class Browser:
    """The Flask test client on one listener (gunicorn tells them apart by SERVER_PORT)."""

    def __init__(self, app, port: int, token: str | None = None):
        self.client = app.test_client()
        self.base = f"https://127.0.0.1:{port}"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, path: str, **kw):
        return self.client.get(path, base_url=self.base, headers=self.headers, **kw)

    def post(self, path: str, **kw):
        return self.client.post(path, base_url=self.base, headers=self.headers, **kw)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    w = World(tmp_path_factory.mktemp("console"))
    yield w
    w.store.close()


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.hrefs += [v for k, v in attrs if k == "href" and v]


def parse(body: bytes) -> Links:
    p = Links()
    p.feed(body.decode())
    return p


def text(resp) -> str:
    return resp.get_data(as_text=True)


# -- every page, with its data ------------------------------------------------------------------

def test_the_overview_shows_workloads_images_queue_content_feeds_waivers_and_denials(world):
    r = world.console().get("/")
    assert r.status_code == 200 and r.content_type == "text/html; charset=utf-8"
    page = text(r)
    assert "<svg" in page and 'class="bar-pass"' in page and 'class="bar-fail"' in page
    # workloads by verdict: 250 bulk + the recorded Deployment pass (its pod folded in)
    assert re.search(r'verdict=pass">.*?</a></td><td class="num">251<', page)
    assert re.search(r'verdict=fail">.*?</a></td><td class="num">2<', page)
    assert 'href="/workloads?namespace=bulk"' in page and "team-strict" in page
    # images by state: good passes, the evil digest fails, busybox unsupported, one pending
    states = dict(re.findall(r'<span class="badge ([a-z-]+)">\1</span></td><td class="num">(\d+)<',
                             page))
    assert (states["pass"], states["fail"], states["unsupported"], states["pending"]) == (
        "1", "1", "1", "1")
    assert "queued or running</dt><dd>3<" in page and "42" in page
    assert "ssg-debian12-ds.xml" in page                                # content in force
    assert "917" in page and "2h" in page and "abababababab" in page    # the feed, its age
    assert "package_nis_removed" in page and "SEC-10" in page           # expires in 10 days
    assert "SEC-90" not in page                                         # 90 days: not listed
    assert "evil-&lt;script&gt;" in page and "package_inetutils-telnetd_removed" in page


def test_the_workloads_page_lists_rows_with_links_to_their_images(world):
    page = text(world.console().get("/workloads?namespace=team-a"))
    assert "Workloads <span class=\"muted\">(3)</span>" in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert f'href="/images/{EVIL_DIGEST}?policy=default"' in page
    # the Deployment admitted through /validate, its pod counted as a replica
    assert re.search(r"<td>Deployment</td><td>api</td><td class=\"num\">1</td>", page)
    assert "api-7d9-x1" not in page


def test_the_image_page_shows_result_rules_cves_workloads_report_and_command(world):
    before = world.service.lookups
    r = world.console().get(f"/images/{EVIL_DIGEST}")
    assert r.status_code == 200
    assert world.service.lookups == before + 1                 # one result lookup
    page = text(r)
    assert EVIL_DIGEST in page and "debian12" in page and "standard" in page
    assert "motd_no_script" in page and "Remove &lt;script&gt;" in page
    assert "package_inetutils-telnetd_removed" in page and "Uninstall telnetd" in page
    assert "CVE-2024-3094 critical xz-utils 5.6.0-0.2 → 5.6.1+really5.4.5-1" in page
    assert "2027-01-15 07:58:00Z" in page                      # scanned_at (NOW - 120)
    assert "<td>StatefulSet</td><td>db</td>" in page           # the workloads running it
    assert f"GET /reports/{EVIL_DIGEST}?policy=default" in page
    assert (f"scapgate scan registry.test/evil/app:1@{EVIL_DIGEST} --policy "
            "policies/default.yaml --namespace team-a") in page          # as denials say it


def test_the_policies_page_says_what_policy_show_says_with_waivers(world):
    page = text(world.console().get("/policies"))
    assert "the highest priority wins" in page                 # show.PRECEDENCE
    for name in ("default", "strict"):
        assert f"<h2>{name}" in page
    assert "platform-security" in page and "enforce: a failing image is denied" in page
    assert "a failing rule of severity medium or higher" in page
    assert "package_nis_removed" in page and "EXPIRES SOON: in 10 days" in page
    assert "SEC-90" in page and "in force, 90 days left" in page
    assert (TODAY + dt.timedelta(days=90)).isoformat() in page


def test_the_decisions_page_shows_this_process_s_recent_decisions(world):
    page = text(world.console().get("/decisions"))
    assert "This process" in page
    assert world.denied_uid in page and "DENIED" in page and "rules" in page
    assert "package_inetutils-telnetd_removed" in page and "team-a/Deployment/api" in page
    denied = text(world.console().get("/decisions?allowed=false"))
    assert world.denied_uid in denied and "team-a/Deployment/api" not in denied
    odd = world.console().get("/decisions?allowed=maybe")
    assert odd.status_code == 200 and "Unknown filter" in text(odd)
    assert world.denied_uid not in text(odd)


def test_every_link_of_the_overview_and_the_workloads_pages_resolves(world):
    browser = world.console()
    seen: set[str] = set()
    for start in ("/", "/workloads", "/workloads?namespace=team-a", "/decisions"):
        for href in parse(browser.get(start).data).hrefs:
            url = urlsplit(href)
            assert not url.scheme and not url.netloc, href           # no external assets
            if href in seen:
                continue
            seen.add(href)
            r = browser.get(href)
            assert r.status_code == (303 if url.path == "/logout" else 200), (start, href)
    assert {"/", "/workloads", "/policies", "/decisions", "/logout"} <= seen
    assert any(h.startswith("/images/sha256:") for h in seen)
    assert any("verdict=fail" in h for h in seen) and any("page=2" in h for h in seen)


# -- filters and pages ----------------------------------------------------------------------------

def rows_of(page: str) -> list[tuple[str, str, str]]:
    return re.findall(r'<td><a href="/workloads\?namespace=[^"]*">([^<]*)</a></td>\s*'
                      r"<td>([^<]*)</td><td>([^<]*)</td>", page)


def test_filters_by_namespace_verdict_and_policy(world):
    b = world.console()
    ns = rows_of(text(b.get("/workloads?namespace=team-strict")))
    assert ns == [("team-strict", "Job", "nightly")]
    failing = rows_of(text(b.get("/workloads?verdict=fail")))
    assert {r[2] for r in failing} == {EVIL.replace("<", "&lt;").replace(">", "&gt;")
                                       .replace("'", "&#39;"), "db"}
    assert rows_of(text(b.get("/workloads?policy=strict"))) == ns
    assert rows_of(text(b.get("/workloads?namespace=bulk&verdict=fail"))) == []
    both = text(b.get("/workloads?namespace=team-a&verdict=pass&policy=default"))
    assert rows_of(both) == [("team-a", "Deployment", "api")]
    assert '<option value="team-a" selected>' in both                # the form remembers


def test_a_hundred_rows_a_page_and_a_page_out_of_range_is_the_last(world):
    b = world.console()
    first = text(b.get("/workloads?namespace=bulk"))
    assert len(rows_of(first)) == 100 and "page 1 of 3" in first
    assert rows_of(first)[0][2] == "svc-000"
    assert 'href="/workloads?namespace=bulk&amp;page=2"' in first
    third = text(b.get("/workloads?namespace=bulk&page=3"))
    assert len(rows_of(third)) == 50 and rows_of(third)[-1][2] == "svc-249"
    assert "page 3 of 3" in text(b.get("/workloads?namespace=bulk&page=99"))
    assert "page 1 of 3" in text(b.get("/workloads?namespace=bulk&page=-4"))
    assert "page 1 of 3" in text(b.get("/workloads?namespace=bulk&page=two"))


def test_unknown_filter_values_give_an_empty_result_with_a_note(world):
    b = world.console()
    for query, note in (("verdict=sparkling", "Unknown verdict"),
                        ("policy=nope", "No policy named"),
                        ("namespace=nowhere", "No workloads recorded in namespace"),
                        ("namespace=%3Cscript%3E", "No workloads recorded in namespace")):
        r = b.get(f"/workloads?{query}")
        assert r.status_code == 200, query
        page = text(r)
        assert note in page and rows_of(page) == [] and "No workload matches" in page
        assert "<script>" not in page
    r = b.get(f"/images/{EVIL_DIGEST}?policy=nope")
    assert r.status_code == 200 and "No policy named" in text(r)


# -- access -------------------------------------------------------------------------------------

NAMES = ("svc-000", "team-strict", "nightly", "bulk", EVIL_DIGEST, "package_nis_removed",
         "SEC-10", "CVE-2024-3094")


@pytest.mark.parametrize("token", [None, "wrong-token-" + "z" * 20, TOKEN[:-1]])
def test_without_the_token_every_route_but_login_is_401_with_no_data(world, token):
    b = world.console(token=token)
    for path in [*PAGES, "/workloads?namespace=team-a", "/logout", "/api/v1/inventory",
                 "/api/v1/policyreports"]:
        r = b.get(path)
        assert r.status_code == 401, path
        body = text(r)
        assert not any(n in body for n in NAMES), path
    page = b.get("/")
    assert page.content_type.startswith("text/html") and 'href="/login"' in text(page)
    assert page.headers["WWW-Authenticate"] == 'Bearer realm="scapgate"'
    api = b.get("/api/v1/inventory")                          # the API answers JSON, as before
    assert api.get_json() == {"error": "a valid bearer token is required"}
    login = b.get("/login")
    assert login.status_code == 200 and 'name="token"' in text(login)
    assert not any(n in text(login) for n in NAMES)


def test_login_sets_the_cookie_then_pages_work_with_it_and_logout_clears_it(world):
    b = world.console(token=None)
    wrong = b.post("/login", data={"token": "nope-" + "x" * 30})
    assert wrong.status_code == 401 and 'name="token"' in text(wrong)
    assert "not the console" in text(wrong) and "set-cookie" not in wrong.headers
    assert b.post("/login", data={"token": "x" * 5000}).status_code == 401
    assert b.post("/login", data={}).status_code == 401
    ok = b.post("/login", data={"token": TOKEN})
    assert ok.status_code == 303 and ok.headers["Location"] == "/"
    cookie = ok.headers["Set-Cookie"]
    assert cookie.startswith(f"scapgate_console={TOKEN};")
    for attr in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
        assert attr in cookie, attr
    for path in [*PAGES, "/api/v1/inventory"]:
        assert b.get(path).status_code == 200, path
    assert "team-strict" in text(b.get("/"))
    out = b.get("/logout")
    assert out.status_code == 303 and out.headers["Location"] == "/login"
    assert "scapgate_console=;" in out.headers["Set-Cookie"]
    assert b.get("/").status_code == 401
    b.client.set_cookie("scapgate_console", "forged-" + "y" * 30, domain="127.0.0.1")
    assert b.get("/").status_code == 401


def test_the_pages_are_404_on_the_webhook_listener(world):
    hook = Browser(world.app, WEBHOOK_PORT, token=TOKEN)
    for path in [*PAGES, "/login", "/logout", "/api/v1/inventory"]:
        r = hook.get(path)
        assert r.status_code == 404, path
        assert not any(n in text(r) for n in NAMES), path
    assert hook.post("/login", data={"token": TOKEN}).status_code == 404
    assert world.console().get("/healthz").status_code == 404     # and the reverse, as before


def test_without_a_console_listener_there_are_no_pages(tmp_path):
    store = SQLiteStore(str(tmp_path / "s.db"))
    app = create_app(Settings(state_dir=str(tmp_path), policy=str(tmp_path), cve_feeds=("off",),
                              inventory_rejudge_s=0, platforms=("linux/amd64",)),
                     policies=_policies(tmp_path), service=Service(store),
                     registry=FakeRegistry(dict(D)), pipeline=FakePipeline())
    assert "console" not in app.blueprints
    for path in ("/", "/workloads", "/login"):
        assert Browser(app, 8443).get(path).status_code == 404
    store.close()


# -- hostile input ---------------------------------------------------------------------------------

def test_html_in_names_images_namespaces_and_rule_titles_is_text(world):
    b = world.console()
    for path in [*PAGES, "/workloads?namespace=team-a", "/workloads?verdict=pending",
                 "/decisions?allowed=false"]:
        page = text(b.get(path))
        assert "<script" not in page.lower(), path               # no script tag at all
        assert "<b>" not in page, path
    pages = "".join(text(b.get(p)) for p in
                    ("/workloads?namespace=team-a", f"/images/{EVIL_DIGEST}", "/decisions",
                     "/workloads?verdict=pending"))
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in pages      # pod name
    assert "Remove &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; from" in pages   # rule
    assert "registry.test/x/&lt;b&gt;bold&lt;/b&gt;:1" in pages               # image ref
    ns = text(b.get("/workloads?verdict=pending"))
    assert 'href="/workloads?namespace=%3Cscript%3Ealert%28%27x%27%29%3C%2Fscript%3E"' in ns
    assert console_pages.ENV.autoescape is True


def test_every_page_forbids_scripts_and_caching(world):
    for path in [*PAGES, "/login"]:
        r = world.console().get(path)
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp, path
        assert r.headers["Cache-Control"] == "no-store"
        assert r.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("path", PAGES + ["/login"])
def test_a_query_parameter_longer_than_256_characters_is_400(world, path):
    b = world.console()
    r = b.get(path, query_string={"namespace": "n" * 257})
    assert r.status_code == 400 and "longer than 256" in text(r)
    assert not any(n in text(r) for n in NAMES[:4])
    assert b.get(path, query_string={"x" * 257: "1"}).status_code == 400
    assert b.get(path, query_string={f"p{i}": "1" for i in range(17)}).status_code == 400
    assert b.get(path, query_string={"namespace": "n" * 256}).status_code == 200


@pytest.mark.parametrize("digest", [
    "sha256:" + "9" * 63, "sha256:" + "9" * 65, "sha256:" + "A" * 64, "sha512:" + "9" * 64,
    "9" * 64, "sha256:" + "9" * 64 + "/x", "sha256:%3Cscript%3E", "..%2F..%2Fetc%2Fpasswd"])
def test_a_digest_that_is_not_sha256_hex_is_404(world, digest):
    r = world.console().get(f"/images/{digest}")
    assert r.status_code == 404
    assert "<script" not in text(r)


# -- cost ------------------------------------------------------------------------------------------

def test_pages_read_the_inventory_once(world, monkeypatch):
    calls = []
    real = world.store.inv_list

    def counted(*a, **kw):
        calls.append((a, kw))
        return real(*a, **kw)

    monkeypatch.setattr(world.store, "inv_list", counted)
    b = world.console()
    for path in ("/", "/workloads?namespace=bulk&page=2", f"/images/{EVIL_DIGEST}"):
        calls.clear()
        assert b.get(path).status_code == 200
        assert len(calls) == 1, path
