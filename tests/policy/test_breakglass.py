"""Break-glass (who may bypass the gate, and what is said about it) and the decision trail."""
from __future__ import annotations

import json

import pytest

from tests.builders.policies import TODAY, doc, result, waiver, write
from webhook import policy as P
from webhook.scan import content as content_mod

POLICY = P.from_document(doc("payments", breakGlass={"users": ["alice"],
                                                     "groups": ["sre-oncall"]}))
KEY = P.BREAK_GLASS_ANNOTATION
REASON = "INC-4711 scanner down, hotfix for checkout"


def bg(user="alice", groups=(), value=REASON, policy=POLICY, extra=None):
    annotations = {KEY: value, **(extra or {})} if value is not None else dict(extra or {})
    return P.break_glass(policy, user_info={"username": user, "groups": list(groups)},
                         annotations=annotations)


def test_no_annotation_means_no_break_glass():
    assert bg(value=None) is None
    assert bg(value=None, extra={"other": "x"}) is None
    assert P.break_glass(POLICY, user_info={"username": "alice"}, annotations=None) is None
    assert P.break_glass(None, user_info={"username": "alice"}, annotations={KEY: REASON}) is None


@pytest.mark.parametrize("user,groups,via", [
    ("alice", ["system:authenticated"], "user alice"),
    ("bob", ["system:authenticated", "sre-oncall"], "group sre-oncall"),
], ids=["listed-user", "listed-group"])
def test_listed_requester_is_let_through_with_warning_and_audit(user, groups, via):
    out = bg(user, groups)
    assert out.allowed and out.via == via and out.reason == REASON
    assert out.warning.startswith(f"break-glass by {user}: ") and REASON[:20] in out.warning
    assert len(out.warning) <= P.WARNING_LIMIT
    audit = json.loads(out.audit["break-glass"])
    assert audit == {"allowed": True, "policy": "payments", "reason": REASON, "user": user,
                     "via": via}
    assert user in out.message and REASON in out.message


@pytest.mark.parametrize("user,groups", [
    ("mallory", ["system:authenticated", "developers"]),
    ("Alice", []),                                       # exact match: case matters
    ("system:serviceaccount:ci:deployer", ["system:serviceaccounts"]),
    ("alice-evil", ["sre-oncall-evil"]),                 # no prefix or glob matching
], ids=["other-user", "case", "service-account", "lookalike"])
def test_unlisted_requester_is_denied_with_a_message_saying_so(user, groups):
    out = bg(user, groups)
    assert not out.allowed and out.via == "" and out.warning == ""
    assert out.message.startswith("break-glass refused: ")
    assert f"user {user!r}" in out.message and "not on the break-glass list" in out.message
    assert "payments" in out.message and "team-sec" in out.message   # whom to ask
    audit = json.loads(out.audit["break-glass"])
    assert audit["allowed"] is False and audit["user"] == user and audit["groups"] == groups


def test_listed_user_without_reason_is_denied():
    for value in ("", "   ", None):
        out = P.break_glass(POLICY, user_info={"username": "alice"}, annotations={KEY: value})
        assert not out.allowed and "needs a reason" in out.message


def test_policy_without_break_glass_list_refuses_everyone():
    out = bg(policy=P.from_document(doc("strict")))
    assert not out.allowed


def test_missing_user_info_is_refused():
    out = P.break_glass(POLICY, user_info=None, annotations={KEY: REASON})
    assert not out.allowed and "<unknown>" in out.message


# -- decision trail -------------------------------------------------------------------------

def test_trail_carries_policy_content_digest_and_waivers(tmp_path, scap_datastream):
    pol = P.load(write(tmp_path / "p.yaml", doc("p", waivers=[waiver()])))
    content = pol.content()
    res = result(("package_telnetd_removed", "high", "fail"),
                 ("file_permissions_etc_shadow", "medium", "fail"))
    verdict = P.evaluate(res, pol, image="docker.io/library/x:1", namespace="n", today=TODAY)
    t = P.trail(pol, content, "sha256:" + "b" * 64, verdict, res)
    assert t["policy"] == "p" and t["policy_sha256"] == pol.sha256 and len(pol.sha256) == 64
    # the policy's content set (the content part of every scan key under it) …
    assert content.products() == ["debian12"]
    assert content.for_product("debian12").datastream_sha256 == \
        content_mod.sha256_file(str(scap_datastream))
    assert t["content_set_sha256"] == content.sha256() and len(t["content_set_sha256"]) == 64
    # … and what judged this image, from its scan result
    assert (t["product"], t["content"], t["content_sha256"]) == \
        ("debian12", "ssg-debian12-ds.xml", "d" * 64)
    assert t["profile"] == pol.profile and t["digest"] == "sha256:" + "b" * 64
    assert t["waivers"] == [{"id": "package_telnetd_removed", "waiver": "package_telnetd_removed",
                             "ticket": "SEC-1", "owner": "team-a", "expires": "2026-12-31"}]
    assert t["denied_by"] == ["file_permissions_etc_shadow"]
    assert (t["state"], t["allowed"]) == ("fail", False)
    json.dumps(t)    # goes into one JSON log line as is


def test_trail_without_content_spec():
    pol = P.from_document(doc("p"))
    t = P.trail(pol, None, "", P.on_state("error", pol, detail="content missing"))
    assert t["content_set_sha256"] == "" and "product" not in t and t["state"] == "error"
