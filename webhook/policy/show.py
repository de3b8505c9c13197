"""`scapgate policy show`: the summary an auditor reads — what is enforced where, with which
exceptions, approved by whom, until when — as a terminal text or Markdown.

Everything printed is computed from the policy files and the SCAP content they name, so the
summary cannot drift from what the gate does.
"""
from __future__ import annotations

import datetime as dt
import os
import textwrap
from dataclasses import dataclass, field

from .. import policy as P
from ..scan import content as content_mod
from . import profiles as pc
from .lint import discover

PRECEDENCE = ("For each image, the gate picks exactly one policy: among the policies that are "
              "not `default` and whose namespaces and images match, the highest priority wins "
              "(equal priorities: name order); when none matches, the `default: true` policy "
              "that matches (same order); when none, the image is admitted without a scan.")
ENFORCEMENT = {"enforce": "a failing image is denied",
               "warn": "a failing image is admitted with a warning to the user",
               "audit": "a failing image is admitted; the failure is only recorded "
                        "(audit annotation, log)"}
ACTIONS = {
    "pending": {"deny": "denied with 'scan in progress, retry'; the scan runs meanwhile",
                "allow": "admitted unscanned, silently (the scan still runs)",
                "warn": "admitted unscanned with a warning (the scan still runs)"},
    "error": {"deny": "denied with the scan error (fail closed)",
              "allow": "admitted silently although it could not be scanned",
              "warn": "admitted with a warning although it could not be scanned"},
    "unsupported": {"deny": "denied: no SCAP content judges its distribution (Alpine, scratch…)",
                    "allow": "admitted silently: no SCAP content judges its distribution",
                    "warn": "admitted with a warning naming what was found (not judged)"},
}


@dataclass
class PolicyView:
    policy: P.Policy
    profile_title: str = ""
    rules: int | None = None                     # rules the profile evaluates
    blind: list[str] = field(default_factory=list)   # … of which notapplicable in containers
    problem: str = ""


@dataclass
class SetView:
    directory: str
    served: bool
    policies: list[PolicyView]
    errors: list[str]


def collect(paths: list[str]) -> list[SetView]:
    tops = {os.path.normpath(p) for p in paths if os.path.isdir(p)}
    out = []
    for set_dir, files in discover(paths):
        views, errors = [], []
        for f in files:
            try:
                views.append(_view(P.load(f)))
            except P.PolicyError as e:
                errors.append(str(e))
        views.sort(key=lambda v: (v.policy.default, -v.policy.priority, v.policy.name))
        out.append(SetView(set_dir or "(files)", os.path.normpath(set_dir) in tops, views, errors))
    return out


def _view(pol: P.Policy) -> PolicyView:
    view = PolicyView(pol)
    if not pol.datastream:
        return view                     # content per product: listed by product_lines()
    try:
        bench = pc.benchmark(pol.datastream)
        tailored = pc.tailoring(pol.tailoring) if pol.tailoring else None
        chain = pc.profile_chain(bench, pol.profile, tailored)
        view.profile_title = chain[-1].title
        rules = pc.selected_rules(bench, pol.profile, tailored)
        view.rules = len(rules)
        view.blind = sorted(r.short for r in rules if r.container_blind())
    except pc.ContentProblem as e:
        view.problem = str(e)
    return view


def _profile_cell(pol: P.Policy) -> str:
    return _short_profile(pol.profile) if pol.datastream else "per distribution"


def _short_profile(pid: str) -> str:
    return pid.rsplit("_profile_", 1)[-1]


def _deny_text(pol: P.Policy) -> str:
    parts = ["nothing by severity" if pol.deny_severity == "none"
             else f"a failing rule of severity {pol.deny_severity} or higher"]
    if pol.always_enforce:
        parts.append("always: " + ", ".join(sorted(pol.always_enforce)))
    if pol.min_score is not None:
        parts.append(f"a score below {pol.min_score:g}")
    if pol.deny_oval_true and pol.oval:
        parts.append("an OVAL definition (CVE) that is true")
    if pol.cves is not None:
        parts.append(_cve_text(pol.cves))
    text = "; ".join(parts)
    if pol.never_enforce:
        text += " — never: " + ", ".join(sorted(pol.never_enforce))
    return text


def _cve_text(c) -> str:
    """spec.cves in words: what denies, and what an old or missing feed does."""
    if c.deny_severity == "none":
        what = "CVEs of the distribution's feed are reported, never denied"
    else:
        what = (f"a CVE of the distribution's feed of severity {c.deny_severity} or higher"
                + (" with a fix released" if c.fixed_only else ""))
    age = f"{c.max_feed_age_s // 3600}h" if c.max_feed_age_s % 86400 else \
        f"{c.max_feed_age_s // 86400}d"
    return f"{what} (a feed older than {age} or none: {c.on_stale_feed})"


def _where(pol: P.Policy) -> str:
    text = "namespaces " + ", ".join(pol.namespaces)
    if pol.exclude_namespaces:
        text += " except " + ", ".join(pol.exclude_namespaces)
    text += "; images " + ", ".join(pol.images)
    if pol.exclude_images:
        text += " except " + ", ".join(pol.exclude_images)
    return text


def _waiver_status(w: P.Waiver, pol: P.Policy, today: dt.date, days: int | None) -> str:
    left = w.days_left(today)
    if left < 0:
        return f"EXPIRED {-left} days ago (no longer applies)"
    if left <= (pol.waiver_warning_days if days is None else days):
        return f"EXPIRES SOON: in {left} days"
    return f"in force, {left} days left"


def product_lines(pol: P.Policy) -> list[str]:
    """Which datastream and profile judge which distribution: "rhel9: ssg-rhel9-ds.xml,
    profile cis_server_l1"; products whose content is not installed say so (unsupported)."""
    out = []
    for product, entry in pol.content_products().items():
        if entry is None:
            ds, prof, tail = pol.datastream, pol.profile, pol.tailoring
        else:
            ds = entry.datastream or content_mod.datastream_for(product)
            prof, tail = entry.profile, entry.tailoring
        name = "any identified distribution" if product == "*" else product
        if not os.path.exists(ds):
            out.append(f"{name}: not installed ({os.path.basename(ds)}): unsupported")
            continue
        ver = content_mod.manifest(os.path.dirname(ds)).get(os.path.basename(ds), {})
        line = f"{name}: {os.path.basename(ds)}"
        line += f" ({ver['package']} {ver['version']})" if ver.get("version") else ""
        line += f", profile {_short_profile(prof)}"
        if tail:
            line += f" + tailoring {os.path.relpath(tail)}"
        out.append(line)
    return out


def policy_facts(v: PolicyView) -> list[tuple[str, str]]:
    """(label, text) pairs describing one policy, shared by both renderings."""
    pol = v.policy
    if pol.datastream:
        content = os.path.basename(pol.datastream)
        if pol.tailoring:
            content += f" + tailoring {os.path.relpath(pol.tailoring)}"
        prof = (f"{_short_profile(pol.profile)}"
                + (f' "{v.profile_title}"' if v.profile_title else ""))
        content = f"{content}, profile {prof}"
    else:
        content = "per distribution, listed under 'judges'"
    checks = v.problem or (f"{v.rules} rules; {len(v.blind)} of them cannot be evaluated in a "
                           "container image (kernel, services, partitions: notapplicable)"
                           if pol.datastream else
                           "each distribution's profile (`scapgate policy lint` checks them)")
    bg = ", ".join([f"user {u}" for u in sorted(pol.break_glass_users)]
                   + [f"group {g}" for g in sorted(pol.break_glass_groups)]) or "nobody"
    return [
        ("owner", pol.owner), ("purpose", " ".join(pol.description.split())),
        ("file", f"{pol.path} (sha256 {pol.sha256[:16]}…)"),
        ("applies to", ("default for namespaces no other policy matches: " if pol.default else "")
         + _where(pol) + f"; priority {pol.priority}"),
        ("content", content), ("checks", checks),
        ("denies on", _deny_text(pol)),
        ("enforcement", f"{pol.enforcement}: {ENFORCEMENT[pol.enforcement]}"),
        ("no result yet", f"{pol.on_pending}: {ACTIONS['pending'][pol.on_pending]}"),
        ("scan error", f"{pol.on_error}: {ACTIONS['error'][pol.on_error]}"),
        ("unsupported", f"{pol.on_unsupported}: {ACTIONS['unsupported'][pol.on_unsupported]}"),
        ("stale result", f"older than {_age(pol.max_scan_age_s)} is rescanned; meanwhile "
         + ("it still decides" if pol.on_stale == "decide" else "treated as no result")),
        ("break-glass", bg),
        ("waivers", f"{len(pol.waivers)}" + (" (listed below)" if pol.waivers else "")),
    ]


def _age(seconds: int) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % n == 0:
            return f"{seconds // n}{unit}"
    return f"{seconds}s"


def waiver_rows(sets: list[SetView], today: dt.date, days: int | None) -> list[dict]:
    """Every waiver of every policy, soonest expiry first within a policy."""
    rows = []
    for s in sets:
        for v in s.policies:
            for w in sorted(v.policy.waivers, key=lambda w: (w.expires, w.rule)):
                rows.append({"policy": v.policy.name, "waived": w.rule,
                             "images": ", ".join(w.images), "namespaces": ", ".join(w.namespaces),
                             "owner": w.owner, "approved by": w.approved_by or "—",
                             "ticket": w.ticket, "expires": w.expires.isoformat(),
                             "status": _waiver_status(w, v.policy, today, days),
                             "reason": " ".join(w.reason.split()),
                             "where": f"{v.policy.path}:{w.line}",
                             "soon": not _waiver_status(w, v.policy, today, days).startswith("in force")})
    return rows


WAIVER_HEAD = ["policy", "waived", "images", "namespaces", "owner", "approved by", "ticket",
               "expires", "status", "reason"]


def _waiver_text(r: dict) -> list[str]:
    return [f"  {r['policy']} / {r['waived']}: {r['status']}",
            _wrap(f"{'where:':<10}images {r['images']}; namespaces {r['namespaces']}", 6, hang=16),
            _wrap(f"{'owner:':<10}{r['owner']}; approved by {r['approved by']}; ticket "
                  f"{r['ticket']}", 6, hang=16),
            f"      {'expires:':<10}{r['expires']} (the waiver applies through this day)",
            _wrap(f"{'reason:':<10}{r['reason']}", 6, hang=16),
            f"      {'written:':<10}{r['where']}"]


def render_text(sets: list[SetView], *, today: dt.date, days: int | None = None,
                all_rules: bool = False) -> str:
    out = [f"scapgate policy summary, {today.isoformat()}", "", _wrap(PRECEDENCE, 0), ""]
    for s in sets:
        out += [_set_title(s), "-" * min(100, len(_set_title(s)))]
        out += [f"  INVALID: {e}" for e in s.errors]
        if s.policies:
            out += _table(["#", "policy", "priority", "default", "namespaces", "images",
                           "profile", "denies at", "mode", "pending", "error", "unsupported"],
                          [[str(i + 1), v.policy.name, str(v.policy.priority),
                            "yes" if v.policy.default else "", _cut(", ".join(v.policy.namespaces)
                            + (" except " + ", ".join(v.policy.exclude_namespaces)
                               if v.policy.exclude_namespaces else ""), 36),
                            _cut(", ".join(v.policy.images), 24), _profile_cell(v.policy),
                            v.policy.deny_severity, v.policy.enforcement, v.policy.on_pending,
                            v.policy.on_error, v.policy.on_unsupported]
                           for i, v in enumerate(s.policies)], indent=2)
        if s.served and not any(v.policy.default for v in s.policies):
            out.append("  Namespaces no policy matches: admitted WITHOUT a scan (no default policy).")
        out.append("")
        for v in s.policies:
            out.append(f"  {v.policy.name}")
            for label, text in policy_facts(v):
                out.append(_wrap(f"{label + ':':<15}{text}", 4, hang=19))
            if not v.policy.datastream:
                out.append(f"    {'judges:':<15}" + "\n".join(
                    (" " * 19 if i else "") + line
                    for i, line in enumerate(product_lines(v.policy))))
            if v.blind:
                shown = v.blind if all_rules else v.blind[:10]
                more = "" if len(shown) == len(v.blind) else f" … and {len(v.blind) - len(shown)} more (--rules)"
                out.append(_wrap(f"{'not checked:':<15}" + ", ".join(shown) + more, 4, hang=19))
            out.append("")
    rows = waiver_rows(sets, today, days)
    out += ["Waivers", "-------"]
    out += [line for r in rows for line in _waiver_text(r)] if rows else ["  none"]
    out += ["", "Expiring soon or expired", "------------------------"]
    out += [f"  {r['policy']}: {r['waived']} ({r['ticket']}, owner {r['owner']}) — {r['status']}"
            for r in rows if r["soon"]] or ["  none"]
    return "\n".join(out).rstrip() + "\n"


def _set_title(s: SetView) -> str:
    if s.served:
        return f"{s.directory}: IN FORCE when the server runs with --policy {s.directory}"
    if s.directory == "(files)":
        return "Files named on the command line"
    return f"{s.directory}: examples, NOT in force (the server reads only *.yaml directly in its policy directory)"


def render_markdown(sets: list[SetView], *, today: dt.date, days: int | None = None,
                    all_rules: bool = False) -> str:
    out = [f"# scapgate policies ({today.isoformat()})", "", PRECEDENCE, ""]
    for s in sets:
        out += [f"## {_md(_set_title(s))}", ""]
        out += [f"- **INVALID**: `{e}`" for e in s.errors]
        if s.served and not any(v.policy.default for v in s.policies):
            out += ["**Namespaces no policy matches are admitted without a scan.**", ""]
        if s.policies:
            out += _md_table(["#", "policy", "priority", "default", "applies to", "profile",
                              "denies on", "enforcement"],
                             [[str(i + 1), v.policy.name, str(v.policy.priority),
                               "yes" if v.policy.default else "", _md(_where(v.policy)),
                               _profile_cell(v.policy), _md(_deny_text(v.policy)),
                               v.policy.enforcement] for i, v in enumerate(s.policies)]) + [""]
        for v in s.policies:
            out += [f"### {v.policy.name}", ""]
            out += [f"- **{label}**: {_md(text)}" for label, text in policy_facts(v)]
            if not v.policy.datastream:
                out += ["- **judges**:"] + [f"  - {_md(line)}" for line in product_lines(v.policy)]
            if v.blind:
                shown = v.blind if all_rules else v.blind[:10]
                more = "" if len(shown) == len(v.blind) else f" … and {len(v.blind) - len(shown)} more"
                out.append("- **not checked in containers**: " + ", ".join(f"`{b}`" for b in shown) + more)
            out.append("")
    rows = waiver_rows(sets, today, days)
    out += ["## Waivers", ""]
    code = {"waived", "images", "namespaces"}
    out += _md_table(WAIVER_HEAD, [[_code_list(r[h]) if h in code else _md(r[h])
                                    for h in WAIVER_HEAD] for r in rows]) if rows else ["None."]
    out += ["", "## Expiring soon or expired", ""]
    out += [f"- **{r['policy']}**: `{r['waived']}` ({r['ticket']}, owner {r['owner']}) — "
            f"{r['status']}" for r in rows if r["soon"]] or ["None."]
    return "\n".join(out).rstrip() + "\n"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _wrap(text: str, indent: int, hang: int | None = None) -> str:
    return textwrap.fill(text, width=100, initial_indent=" " * indent,
                         subsequent_indent=" " * (hang if hang is not None else indent),
                         break_on_hyphens=False)


def _table(head: list[str], rows: list[list[str]], indent: int = 0) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = " " * indent + "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*[h.upper() for h in head]).rstrip()] + [fmt.format(*r).rstrip() for r in rows]


def _md(text: str) -> str:
    """Plain text in Markdown: globs and table bars must not turn into formatting."""
    return str(text).replace("\\", "\\\\").replace("*", "\\*").replace("|", "\\|")


def _code_list(text: str) -> str:
    return ", ".join(f"`{part}`" for part in str(text).split(", "))


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            + ["| " + " | ".join(r) + " |" for r in rows])
