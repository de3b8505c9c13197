"""`scapgate policy lint|show|explain`: for the authors and the auditors of policies/.

lint exits 1 when there is an error (CI blocks the change), show prints the auditor's summary,
explain says which policy an image gets in a namespace and why it is allowed or denied, rule
by rule — with the very functions admission uses (PolicySet.select, evaluate).
"""
from __future__ import annotations

import datetime as dt
import json
import sys

from .. import policy as P

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


def register(subparsers) -> None:
    p = subparsers.add_parser("policy", help="lint, summarise and explain image policies")
    sub = p.add_subparsers(dest="policy_cmd", required=True)
    lint = sub.add_parser("lint", help="check policy files; file:line messages, exit 1 on error")
    lint.add_argument("paths", nargs="*", help="files or directories (default: policies/)")
    lint.add_argument("--strict", action="store_true", help="warnings fail too")
    _today(lint)
    lint.set_defaults(fn=cmd_lint)
    show = sub.add_parser("show", help="auditor's summary: what is enforced where, waivers")
    show.add_argument("paths", nargs="*", help="files or directories (default: policies/)")
    show.add_argument("--markdown", action="store_true", help="Markdown instead of text")
    show.add_argument("--days", type=int, default=None,
                      help="flag waivers expiring within N days (default: each policy's "
                           "waiverWarningDays)")
    show.add_argument("--rules", action="store_true",
                      help="list every rule that cannot be checked in containers")
    _today(show)
    show.set_defaults(fn=cmd_show)
    rd = sub.add_parser("reads", help="what each profile's evaluation can read: the partial "
                        "unpack filter (kept beside the content for scans)")
    rd.add_argument("paths", nargs="*", help="files or directories (default: policies/)")
    rd.add_argument("--verbose", "-v", action="store_true", help="list every path and pattern")
    rd.set_defaults(fn=cmd_reads)
    ex = sub.add_parser("explain", help="which policy applies to an image, and its verdict "
                                        "rule by rule")
    ex.add_argument("image")
    ex.add_argument("--namespace", required=True)
    ex.add_argument("--policy", help="policy file or directory (default: policies/)")
    ex.add_argument("--result", help="judge this stored result (JSON from `scapgate scan "
                                     "--json`) instead of scanning")
    ex.add_argument("--platform", default=None)
    ex.add_argument("--auth", help="docker config.json with registry credentials")
    ex.add_argument("--state-dir", default=None)
    _today(ex)
    ex.set_defaults(fn=cmd_explain)


def _today(parser) -> None:
    parser.add_argument("--today", type=dt.date.fromisoformat, default=None,
                        help="judge expiry as of this date (YYYY-MM-DD; default: today)")


def _default_paths(paths: list[str]) -> list[str]:
    if paths:
        return paths
    from ..config import Settings
    return [Settings.from_env().policy]


def cmd_lint(args) -> int:
    from .lint import lint_paths
    findings = lint_paths(_default_paths(args.paths), today=args.today or dt.date.today())
    for f in findings:
        print(f)
    errors = sum(f.level == "error" for f in findings)
    warnings = len(findings) - errors
    print(f"scapgate policy lint: {errors} error(s), {warnings} warning(s)", file=sys.stderr)
    return EXIT_FINDINGS if errors or (args.strict and warnings) else EXIT_OK


def cmd_show(args) -> int:
    from . import show as S
    sets = S.collect(_default_paths(args.paths))
    render = S.render_markdown if args.markdown else S.render_text
    sys.stdout.write(render(sets, today=args.today or dt.date.today(), days=args.days,
                            all_rules=args.rules))
    return EXIT_FINDINGS if any(s.errors for s in sets) else EXIT_OK


def cmd_reads(args) -> int:
    """Each content spec of the policies (every product of a per-distribution policy): its
    filter, computed once and kept beside the content (scan/reach.py), as scans use it."""
    import os

    from ..scan import reach
    seen, status = set(), EXIT_OK
    for path in _default_paths(args.paths):
        for f in P.policy_files(path):
            try:
                pol = P.load(f)
            except P.PolicyError as e:
                print(f"{f}: {e}", file=sys.stderr)
                status = EXIT_FINDINGS
                continue
            for product, spec in pol.content().entries:
                key = (product, spec)
                if key in seen or not os.path.exists(spec.datastream):
                    continue
                seen.add(key)
                r = reach.of_spec(spec, (os.path.join(os.path.dirname(spec.datastream),
                                                      ".scapgate-reach"),))
                name = spec.profile.rsplit("_profile_", 1)[-1]
                print(f"{os.path.basename(f)}  {product:<12} {name:<22} {r.describe()}")
                if args.verbose and not r.everything:
                    for kind, value, depth in sorted(r.reads):
                        what = {0: "", 1: " (and its entries)", -1: " (and everything below)"}
                        print(f"    {'regex ' if kind == 'r' else ''}"
                              f"{value if kind == 'r' else '/' + value}"
                              f"{what.get(depth, f' ({depth} levels below)')}")
                    for kind, value, depth in sorted(r.triggers):
                        print(f"    everything when a file exists at "
                              f"{value if kind == 'r' else '/' + value}")
    return status


# -- explain --------------------------------------------------------------------------------

def selection_trace(pset: P.PolicySet, namespace: str, image: str) -> list[tuple[P.Policy, str]]:
    """Each policy in precedence order with why it matches or not; mirrors PolicySet.select."""
    out = []
    for p in sorted(pset.policies, key=lambda p: (p.default, -p.priority, p.name)):
        if not P.matches_any(namespace, p.namespaces):
            why = f"namespace {namespace} is not in {', '.join(p.namespaces)}"
        elif P.matches_any(namespace, p.exclude_namespaces):
            why = f"namespace {namespace} is excluded ({', '.join(p.exclude_namespaces)})"
        elif not P.matches_any(image, p.images):
            why = f"image is not in {', '.join(p.images)}"
        elif P.matches_any(image, p.exclude_images):
            why = f"image is excluded ({', '.join(p.exclude_images)})"
        else:
            why = "matches"
        out.append((p, why))
    return out


def explain_selection(pset: P.PolicySet, namespace: str, image: str) -> tuple[P.Policy | None, list[str]]:
    chosen = pset.select(namespace, image)
    lines = ["Which policy applies (non-default policies by priority, then name; then the "
             "default policies):"]
    for i, (p, why) in enumerate(selection_trace(pset, namespace, image), 1):
        mark = "->" if p is chosen else "  "
        kind = "default" if p.default else f"priority {p.priority}"
        lines.append(f" {mark} {i}. {p.name:<20} {kind:<13} {why}")
    if chosen is None:
        lines.append("No policy applies: the image is admitted without a scan.")
    elif chosen.default:
        lines.append(f"Selected: {chosen.name}, the default policy (no other policy matches).")
    else:
        lines.append(f"Selected: {chosen.name}, the first matching policy in precedence order.")
    return chosen, lines


def explain_rules(result, pol: P.Policy, *, image: str, namespace: str,
                  today: dt.date) -> list[str]:
    """One line per failing rule / true OVAL definition: deny, waived or ignored, and why."""
    lines = []
    for r in result.failed():
        enforced, why = P.enforcement_of(r.id, r.severity, pol)
        short = r.id.rsplit("content_rule_", 1)[-1]
        reason = P.Reason(short, r.severity, r.title)
        w = P.waiver_for(reason, pol, image=image, namespace=namespace, today=today) if enforced else None
        if w:
            word, why = "WAIVED", (f"waiver {w.ticket} by {w.owner} until {w.expires} "
                                   f"({pol.path}:{w.line})")
        else:
            word = "DENY" if enforced else "ignore"
            gone = P.waiver_for(reason, pol, image=image, namespace=namespace, today=today,
                                expired=True) if enforced else None
            if gone:
                why += f"; waiver {gone.ticket} expired {gone.expires}"
        lines.append(f"  {word:<7}{r.severity:<8}{short}  {r.title} — {why}")
    for o in result.oval:
        if o.result == "true" and o.klass in ("vulnerability", "patch", ""):
            reason = P.Reason(o.id, "high", o.title, kind="oval", refs=tuple(o.references))
            w = P.waiver_for(reason, pol, image=image, namespace=namespace, today=today)
            word = "ignore" if not pol.deny_oval_true else ("WAIVED" if w else "DENY")
            lines.append(f"  {word:<7}{'oval':<8}{o.id}  {o.title} {', '.join(o.references[:3])}"
                         + (f" — waiver {w.ticket} until {w.expires}" if w else ""))
    return lines or ["  no rule fails"]


def explain_cves(result, pol: P.Policy, *, image: str, namespace: str,
                 today: dt.date, feed_age_s: float | None = None) -> list[str]:
    """One line per CVE of the distribution's feed: deny, waived or ignored, and why; then
    the feed it was judged with and what could not be evaluated."""
    from ..policy.verdict import cve_enforced, cve_reason, feed_problem
    from ..scan.results import worst_first
    if pol.cves is None:
        return ["CVEs: not judged (the policy has no spec.cves)"] if result.cves else []
    feed = result.feed or {}
    lines = [f"CVEs (spec.cves: denySeverity {pol.cves.deny_severity}, fixedOnly "
             f"{str(pol.cves.fixed_only).lower()}, maxFeedAge "
             f"{pol.cves.max_feed_age_s // 3600}h, staleFeed {pol.cves.on_stale_feed}):"]
    problem = feed_problem(result, pol.cves, feed_age_s)
    if feed.get("sha256"):
        lines.append(f"  feed {feed.get('feed', '?')} sha256 {feed['sha256'][:12]}, "
                     f"{feed.get('evaluated', 0)} of {feed.get('definitions', 0)} definitions "
                     f"evaluated for this image")
        if feed.get("note"):
            lines.append(f"  {feed['note']}")
    if problem:
        lines.append(f"  stale-feed: {problem} (action {pol.cves.on_stale_feed})")
    for f in worst_first(result.cves):
        enforced, why = cve_enforced(f, pol.cves)
        w = P.waiver_for(cve_reason(f), pol, image=image, namespace=namespace,
                         today=today) if enforced else None
        word = "WAIVED" if w else ("DENY" if enforced else "ignore")
        if w:
            why = f"waiver {w.ticket} by {w.owner} until {w.expires} ({pol.path}:{w.line})"
        lines.append(f"  {word:<7}{f.line()} — {why}")
    for kind, n in sorted((feed.get("unevaluated") or {}).items()):
        lines.append(f"  not evaluated: {n} {kind} definition(s)"
                     + (" (the running kernel decides: the node's, not the image's)"
                        if kind == "kernel" else ""))
    if len(lines) == 1:
        lines.append("  no CVE found")
    return lines


def detected(result, pol: P.Policy) -> list[str]:
    """What the image was identified as, from which files, and which content judged it."""
    ident = result.identity or {}
    if not ident:
        return []
    found = ident.get("pretty") or " ".join(
        x for x in (ident.get("distro", ""), ident.get("version", "")) if x) or "nothing known"
    db = ident.get("package_db") or "none"
    out = [f"Detected: {found} (package database: {db}) → "
           + (f"{result.product}" if result.product else "no SCAP product")]
    for path, text in (ident.get("evidence") or [])[:8]:
        first = text.splitlines()[0] if text else ""
        out.append(f"  {path}: {first[:100]}")
    if result.product:
        out.append(f"Judged with {result.tools.get('content', '?')}, profile "
                   f"{(result.profile or '').rsplit('_profile_', 1)[-1]} (policy {pol.name}, "
                   "content.products)")
    elif ident.get("reason"):
        out.append(f"Why unsupported: {ident['reason']}")
    return out


def _feed_age(args, result) -> float | None:
    """The age of the image's product feed kept in the state dir (None: none kept)."""
    from ..config import Settings
    from ..scan.feeds import FeedStore
    if not result.product:
        return None
    state = getattr(args, "state_dir", None) or Settings.from_env().state_dir
    try:
        st = FeedStore(state).current_for(result.product)
    except (OSError, ValueError):
        return None
    return st.age_s() if st is not None else None


def cmd_explain(args) -> int:
    from ..scan import images
    try:
        pset = P.load_set(_default_paths([args.policy] if args.policy else [])[0])
        ref = images.parse(args.image)
    except (P.PolicyError, images.ReferenceError) as e:
        print(f"scapgate: {e}", file=sys.stderr)
        return EXIT_ERROR
    today = args.today or dt.date.today()
    image = str(ref)
    print(f"image:     {image}" + ("" if image == args.image else f"  (normalised from {args.image})"))
    print(f"namespace: {args.namespace}\n")
    pol, lines = explain_selection(pset, args.namespace, image)
    print("\n".join(lines))
    if pol is None:
        return EXIT_OK
    result, digest = _result(args, pol)
    if result is None:
        return EXIT_ERROR
    profile = (result.profile or pol.profile).rsplit("_profile_", 1)[-1] or "-"
    print(f"\nScan: {digest or '?'}, profile {profile}, "
          f"{sum(result.counts().values())} rule results")
    print("\n".join(detected(result, pol)))
    feed_age = _feed_age(args, result)
    verdict = P.evaluate(result, pol, image=image, namespace=args.namespace, today=today,
                         feed_age_s=feed_age)
    if result.state == "error":
        print(f"Scan error: {result.error}\nThe policy's action for errors is {pol.on_error!r}.")
    elif result.state == "unsupported":
        print(f"Not judged: {result.error}\nThe policy's action for unsupported images is "
              f"{pol.on_unsupported!r}.")
    else:
        counts = result.counts()
        print("Rule by rule (failing rules, worst first):")
        print("\n".join(explain_rules(result, pol, image=image, namespace=args.namespace,
                                      today=today)))
        print(f"  passed {counts.get('pass', 0)}; notapplicable {counts.get('notapplicable', 0)}"
              " (not checked: kernel, service and partition rules do not apply to images)")
        if pol.min_score is not None and result.score is not None:
            print(f"  score {result.score:.1f} (minimum {pol.min_score:g})")
        print("\n".join(explain_cves(result, pol, image=image, namespace=args.namespace,
                                     today=today, feed_age_s=feed_age)))
    for w in verdict.warnings:
        print(f"warning: {w}")
    word = "ALLOW" if verdict.allowed else "DENY"
    print(f"\nverdict: {word} (state {verdict.state}, enforcement {pol.enforcement}"
          f"{', ' + str(len(verdict.reasons)) + ' enforced finding(s)' if verdict.reasons else ''})")
    return EXIT_OK if verdict.allowed else EXIT_FINDINGS


def _result(args, pol: P.Policy):
    """(ScanResult, digest) from --result, or by scanning the image as the gate would."""
    from ..scan.results import ScanResult
    if args.result:
        with open(args.result) as fh:
            data = json.load(fh)
        res = data.get("result", data)
        return ScanResult.from_json(json.dumps(res)), data.get("digest", res["key"]["digest"])
    from ..config import Settings
    from ..scan import content as content_mod
    from ..scan import engine, images
    from ..scan.registry import RegistryError
    settings = Settings.from_env(state_dir=args.state_dir, platform=args.platform)
    try:
        docker_config = None
        if args.auth:
            with open(args.auth) as fh:
                docker_config = json.load(fh)
        outcome = engine.scan_image(args.image, pol.content(), engine.build_pipeline(settings),
                                    platform=args.platform, docker_config=docker_config)
    except (images.ReferenceError, RegistryError, content_mod.ContentError, OSError) as e:
        print(f"scapgate: cannot scan {args.image}: {e}", file=sys.stderr)
        return None, ""
    return outcome.result, outcome.digest
