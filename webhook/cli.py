"""`scapgate` command line: scan, serve, worker, certs, policy.

Exit codes of `scan`: 0 the policy allows, 1 the policy denies, 2 could not scan.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib
import json
import sys
import tempfile
import threading

from .config import Settings
from .scan import content as content_mod
from .scan.results import worst_first

EXIT_ALLOW, EXIT_DENY, EXIT_ERROR = 0, 1, 2


def _progress(stage: str, seconds: float) -> None:
    print(f"scapgate: {stage:<9} {seconds:7.3f} s", file=sys.stderr, flush=True)


def cmd_scan(args) -> int:
    from . import policy as policy_mod
    from .scan import engine, images
    from .scan.registry import RegistryError
    from .scan.cve import FeedError
    settings = Settings.from_env(state_dir=args.state_dir, platform=args.platform)
    feeds_tmp = None
    try:
        pset = policy_mod.load_set(args.policy or settings.policy)
        pol = pset.select(args.namespace) or (pset.policies[0] if pset.policies else None)
        if pol is None:
            raise policy_mod.PolicyError("no policy")
        pipeline = engine.build_pipeline(settings)
        if args.cve_feed:
            feeds_tmp = tempfile.TemporaryDirectory(prefix="scapgate-feeds-")
            pipeline.feeds = _load_feeds(args.cve_feed, feeds_tmp.name, settings)
            pipeline.settings.cves = True
        # Asked while the registry is: the content's sha256 and `oscap --version` (a process
        # start) are needed only once the image is fetched. Errors surface on the main path.
        threading.Thread(target=_warm, args=(pol, pipeline), daemon=True).start()
        docker_config = _read_json(args.auth) if args.auth else None
        if args.source == "docker" or args.image.startswith("docker-daemon:"):
            from .scan import daemon
            outcome = daemon.scan_daemon_image(args.image.removeprefix("docker-daemon:"),
                                               pol.content(), pipeline, progress=_progress)
        else:
            outcome = engine.scan_image(args.image, pol.content(), pipeline,
                                        platform=args.platform, docker_config=docker_config,
                                        progress=_progress)
    except (images.ReferenceError, RegistryError, content_mod.ContentError,
            policy_mod.PolicyError, FeedError) as e:
        if args.json:
            print(json.dumps({"image": args.image, "state": "error", "error": str(e)}))
        print(f"scapgate: cannot scan {args.image}: {e}", file=sys.stderr)
        if feeds_tmp:
            feeds_tmp.cleanup()
        return EXIT_ERROR
    res = outcome.result
    name = str(outcome.ref) if outcome.ref.registry != images.DAEMON else outcome.ref.repository
    kept = pipeline.feeds.current_for(res.product) if res.product else None
    if feeds_tmp:
        feeds_tmp.cleanup()
    v = policy_mod.evaluate(res, pol, image=name, namespace=args.namespace,
                            today=dt.date.today(),
                            feed_age_s=kept.age_s() if kept is not None else None)
    if args.report and res.state == "done":
        _write_report(res.arf_path, args.report)
    if args.json:
        print(json.dumps({"image": str(outcome.ref), "digest": outcome.digest, "policy": pol.name,
                          "product": res.product, "identity": res.identity,
                          "profile": res.profile or pol.profile, "verdict": _verdict_json(v),
                          "cves": [f.to_dict() for f in worst_first(res.cves)],
                          "cve_feed": res.feed,
                          "result": dataclasses.asdict(res)}, indent=1, default=str))
    else:
        print(summary(outcome, v, pol))
    if res.state == "error":
        print(f"scapgate: cannot scan {args.image}: {res.error}", file=sys.stderr)
        return EXIT_ERROR
    if v.state == "unsupported":         # the policy's unsupported action decides the exit
        print(f"scapgate: {args.image}: {res.error}", file=sys.stderr)
        return EXIT_ALLOW if v.allowed else EXIT_DENY
    return EXIT_ALLOW if v.state == "pass" else EXIT_DENY


def _load_feeds(specs: list[str], where: str, settings):
    """`--cve-feed [PRODUCT=]FILE|URL`: each feed fetched and indexed into a scratch feed
    store; one without a product judges whatever product the image is."""
    from .scan.cve import FeedError
    from .scan.feeds import ANY, FeedStore
    store = FeedStore(where, max_bytes=settings.cve_feed_max_bytes,
                      timeout_s=settings.cve_fetch_timeout_s)
    for spec in specs:
        product, sep, src = spec.partition("=")
        if not sep or "/" in product or ":" in product:
            product, src = ANY, spec
        res = store.update(product, src, force=True)
        if res.outcome == "failed":
            raise FeedError(f"CVE feed {src}: {res.detail}")
        _progress(f"feed {product}", res.seconds)
    return store


def _warm(pol, pipeline) -> None:
    try:
        pol.content()
        pipeline.oscap_version()
    except Exception:           # content missing: the scan itself says so, with the path
        pass


def _read_json(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


def _write_report(arf_path: str, dest: str) -> None:
    from .scan import oscap
    with open(arf_path, "rb") as fh, tempfile.TemporaryDirectory() as work:
        html = oscap.html_report(fh.read(), work)
    with open(dest, "wb") as out:
        out.write(html)
    print(f"scapgate: report written to {dest}", file=sys.stderr)


def _verdict_json(v) -> dict:
    return {"state": v.state, "allowed": v.allowed, "detail": v.detail, "warnings": v.warnings,
            "reasons": [dataclasses.asdict(r) for r in v.reasons],
            "waived": [{"id": r.id, "ticket": w.ticket, "owner": w.owner,
                        "expires": w.expires.isoformat()} for r, w in v.waived]}


def summary(outcome, v, pol, limit: int = 20) -> str:
    """The human summary on stdout: digest, profile, counts, failing rules worst first."""
    res = outcome.result
    profile = (res.profile or pol.profile).rsplit("_profile_", 1)[-1]
    lines = [f"image:   {outcome.ref}", f"digest:  {outcome.digest}",
             f"policy:  {pol.name} (profile {profile or '-'})"]
    ident = res.identity
    if ident:
        found = ident.get("pretty") or ident.get("distro", "")
        lines.append(f"os:      {found or 'unknown'} → {res.product or 'no SCAP content'}"
                     f"{' (' + res.tools.get('content', '') + ')' if res.product else ''}")
    if res.state == "error":
        lines.append(f"verdict: ERROR — {res.error}")
        return "\n".join(lines)
    if res.state == "unsupported":
        lines.append(f"verdict: UNSUPPORTED ({'admitted' if v.allowed else 'denied'} by "
                     f"actions.unsupported) — {res.error}")
        return "\n".join(lines)
    if not ident:
        osr = res.os_release
        lines.append(f"os:      {osr.get('PRETTY_NAME', osr.get('ID', 'unknown'))}")
    counts = ", ".join(f"{k} {n}" for k, n in sorted(res.counts().items()) if k != "notselected")
    lines.append(f"rules:   {counts}")
    u = res.unpack
    if u:
        lines.append(f"unpack:  {u.get('mode')}, {u.get('written', 0):,} of {u.get('entries', 0):,} "
                     f"entries and {u.get('written_bytes', 0) / 1e6:,.1f} of "
                     f"{u.get('bytes', 0) / 1e6:,.1f} MB written"
                     + (f" ({u['reason']})" if u.get("reason") else ""))
    na = res.counts().get("notapplicable", 0)
    if na:
        lines.append(f"         {na} rules are not applicable to this image and were not checked "
                     "(kernel, boot and service rules do not apply to container images)")
    failed = res.failed()
    if failed:
        lines.append("failing rules (worst first):")
        for r in failed[:limit]:
            short = r.id.rsplit("content_rule_", 1)[-1]
            lines.append(f"  {r.severity:<7} {short}  {r.title}")
        if len(failed) > limit:
            lines.append(f"  … and {len(failed) - limit} more (--json for all)")
    lines += cve_lines(res, pol, limit)
    found = [o for o in res.oval if o.result == "true"]
    if found:
        lines.append("OVAL definitions found true (the weakness is present):")
        for o in found[:limit]:
            lines.append(f"  {o.id}  {o.title}")
    for r, w in v.waived:
        lines.append(f"waived:  {r.id} by {w.owner} ({w.ticket}) until {w.expires}")
    for w in v.warnings:
        lines.append(f"warning: {w}")
    word = {"pass": "ALLOW", "fail": "DENY"}.get(v.state, v.state.upper())
    reason = "" if v.state == "pass" else f" — {len(v.reasons)} enforced finding(s)"
    lines.append(f"verdict: {word}{reason}")
    return "\n".join(lines)


def cve_lines(res, pol, limit: int = 20) -> list[str]:
    """The CVE part of the summary: the feed judged with, the CVEs worst first, whether each
    denies, and what could not be evaluated."""
    from .policy.verdict import cve_enforced
    feed = res.feed or {}
    if not feed:
        return []
    if feed.get("error"):
        return [f"cves:    not judged — {feed['error']}"]
    when = dt.datetime.fromtimestamp(feed.get("as_of", 0), dt.timezone.utc)
    out = [f"cves:    {len(res.cves)} found with the {feed.get('feed')} feed "
           f"({feed.get('definitions', 0)} definitions, {feed.get('evaluated', 0)} evaluated "
           f"for this image; as of {when:%Y-%m-%d %H:%M} UTC, sha256 "
           f"{feed.get('sha256', '')[:12]})"]
    if feed.get("note"):
        out.append(f"         {feed['note']}")
    for f in worst_first(res.cves)[:limit]:
        word = ("DENY" if pol.cves is not None and cve_enforced(f, pol.cves)[0]
                else "report")
        out.append(f"  {word:<7}{f.line()}")
    if len(res.cves) > limit:
        out.append(f"  … and {len(res.cves) - limit} more (--json for all)")
    for kind, n in sorted((feed.get("unevaluated") or {}).items()):
        why = {"kernel": "the running kernel decides: the node's, not the image's"}.get(
            kind, "oscap could not decide them offline")
        out.append(f"         {n} {kind} definitions not evaluated ({why})")
    return out


def build_parser(only_scan: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scapgate", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("scan", help="scan one image and judge it as the gate would")
    s.add_argument("image")
    s.add_argument("--policy", help="policy file or directory (default: policies/)")
    s.add_argument("--namespace", default="default", help="namespace whose policy applies")
    s.add_argument("--platform", default=None, help="os/arch[/variant] (default linux/amd64)")
    s.add_argument("--source", choices=["registry", "docker"], default="registry")
    s.add_argument("--auth", help="docker config.json with registry credentials")
    s.add_argument("--state-dir", default=None)
    s.add_argument("--json", action="store_true", help="print result and verdict as JSON")
    s.add_argument("--report", help="write the HTML report to this file")
    s.add_argument("--cve-feed", action="append", default=[], metavar="[PRODUCT=]FILE|URL",
                   help="evaluate this OVAL CVE feed (bz2/xz/plain; repeatable) instead of "
                        "the feeds kept in the state dir")
    s.set_defaults(fn=cmd_scan)
    if only_scan:       # `scapgate scan` does not import the server's modules (~0.1 s)
        return p
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return p


# Each module adds its own subcommands through `register(subparsers)`.
COMMAND_MODULES: list[str] = ["webhook.serve.server", "webhook.store.worker", "webhook.policy.cli",
                               "webhook.store.cves", "webhook.serve.inventory"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(only_scan=argv[:1] == ["scan"]).parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
