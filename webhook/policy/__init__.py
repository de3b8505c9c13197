"""Stage: policy — what is enforced where, and the verdict for one image.

Takes in: policy files (policies/*.yaml, checked against policies/schema/) and, for a verdict,
a finished scan result (webhook.scan.results.ScanResult). Hands on: a Policy chosen by
namespace and image (PolicySet.select), the ContentSpec its scans must use, and a Verdict with
reasons, waivers and warnings — a value, never an exception. Also the `scapgate policy`
commands (lint, show, explain) and the file watcher that reloads policies in force.

Modules: model (Policy, Waiver, PolicySet, loading), verdict (evaluate, on_state, trail),
breakglass, file (YAML with line numbers), profiles (what a datastream profile selects),
patterns, lint, show, watch, cli.

Must not import: webhook.admission, webhook.serve (it sits below them). It may use
webhook.scan (results, content, image references) and webhook.store.

The names below are the stage's API, so callers write `policy.evaluate(...)`,
`policy.load_set(...)`.
"""
from .breakglass import BREAK_GLASS_ANNOTATION, BreakGlass, break_glass
from .file import PolicyError
from .model import (DEFAULTS, SCHEMA_PATH, Policy, PolicySet, ProductContent, Waiver,
                    from_document, load, load_set, matches_any, parse_duration, policy_files,
                    schema, schema_errors, short_rule_id)
from .verdict import (WARNING_LIMIT, Reason, Verdict, action_of, content_trail, enforcement_of,
                      evaluate, on_state, trail, verdict_trail, waiver_for)

__all__ = [
    "BREAK_GLASS_ANNOTATION", "BreakGlass", "break_glass", "PolicyError", "DEFAULTS",
    "SCHEMA_PATH", "Policy", "PolicySet", "ProductContent", "Waiver", "from_document", "load",
    "load_set", "matches_any", "parse_duration", "policy_files",
    "schema", "schema_errors", "short_rule_id", "WARNING_LIMIT", "Reason", "Verdict",
    "action_of", "content_trail", "enforcement_of", "evaluate", "on_state", "trail",
    "verdict_trail", "waiver_for",
]
