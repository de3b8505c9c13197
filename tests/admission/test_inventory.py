"""The inventory's admission side over the real decision code, the real SQLite store and real
policies; the scan service is swapped at our seam (FakeService) as in test_admission.py.

- what an admitted object leaves, and what leaves nothing (denied, dry run, no image changed);
- an object with thousands of containers leaves a bounded entry;
- a DELETE without oldObject removes the entry;
- the same object reviewed again writes nothing;
- a waiver that expires turns the workload to fail on its expiry date (InventoryJudge's day
  trigger) with one inventory.changed event, and one process does each pass.
"""
from __future__ import annotations

import datetime as dt
import json

import pytest
import yaml

from tests.admission.test_admission import D, IMG, NOW, make_deps, run, scan
from tests.builders.webhooks import FakeService, make_review, pod_spec, policy_doc, workload
from webhook import policy as policy_mod
from webhook.admission import inventory as inv
from webhook.serve.judge import InventoryJudge
from webhook.store.sqlite import SQLiteStore

TELNETD = "package_inetutils-telnetd_removed"


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(str(tmp_path / "store.db"))
    yield s
    s.close()


def policies(tmp_path, *, waiver_expires: str | None = None) -> policy_mod.PolicySet:
    ds = tmp_path / "ds.xml"
    ds.write_text("<not-really-scap/>")
    doc = policy_doc("default", default=True, priority=0, datastream=str(ds))
    if waiver_expires:
        doc["spec"]["waivers"] = [
            {"rule": r, "reason": "r", "owner": "team-a", "ticket": "SEC-1",
             "expires": waiver_expires}
            for r in (TELNETD, "file_permissions_etc_shadow")]
    d = tmp_path / "p"
    d.mkdir(exist_ok=True)
    (d / "default.yaml").write_text(yaml.safe_dump(doc))
    return policy_mod.load_set(str(d))


def test_an_admitted_pod_of_a_controller_is_recorded_under_its_owner(tmp_path, store):
    deps = make_deps(policies(tmp_path), FakeService(finish=scan))
    review = make_review(workload("Pod", pod_spec([IMG["good"], IMG["good"]]), name="api-x1"))
    review["request"]["object"]["metadata"].update(uid="u-1", ownerReferences=[
        {"kind": "ReplicaSet", "name": "api-7d9", "uid": "u-rs", "controller": True},
        {"kind": "ConfigMap", "name": "x", "uid": "u-cm"}])
    d = run(deps, review)
    assert d.response["allowed"] is True
    assert inv.record(store, review["request"], d, NOW, inv.Recent()) == "recorded"
    (key, body), = store.inv_list()
    e = json.loads(body)
    assert key == "team-a/Pod/api-x1" and e["owner"] == "team-a/ReplicaSet/api-7d9"
    assert (e["uid"], e["verdict"], e["policies"]) == ("u-1", "pass", ["default"])
    assert [(i["path"], i["digest"], i["state"]) for i in e["images"]] == [
        ("spec.containers[0].image", D["good"], "pass"),
        ("spec.containers[1].image", D["good"], "pass")]
    assert store.inv_list(owner="team-a/ReplicaSet/api-7d9")[0][0] == key


def test_denied_dry_run_and_unchanged_objects_leave_nothing(tmp_path, store):
    deps = make_deps(policies(tmp_path), FakeService(finish=scan))
    recent = inv.Recent()
    denied = make_review(workload("Pod", pod_spec([IMG["bad"]])))
    d = run(deps, denied)
    assert d.response["allowed"] is False
    assert inv.record(store, denied["request"], d, NOW, recent) == "skipped"
    dry = make_review(workload("Pod", pod_spec([IMG["good"]])), dry_run=True)
    assert inv.record(store, dry["request"], run(deps, dry), NOW, recent) == "skipped"
    old = workload("Deployment", pod_spec([IMG["good"]]), name="api")
    new = workload("Deployment", pod_spec([IMG["good"]]), name="api")
    new["spec"]["replicas"] = 5                                   # no image changed
    upd = make_review(new, operation="UPDATE", old=old)
    assert inv.record(store, upd["request"], run(deps, upd), NOW, recent) == "skipped"
    assert store.inv_count() == 0


def test_the_same_object_reviewed_again_is_not_written_again(tmp_path, store):
    deps = make_deps(policies(tmp_path), FakeService(finish=scan))
    recent = inv.Recent()
    review = make_review(workload("Pod", pod_spec([IMG["good"]])))
    assert inv.record(store, review["request"], run(deps, review), NOW, recent) == "recorded"
    again = make_review(workload("Pod", pod_spec([IMG["good"]])))
    assert inv.record(store, again["request"], run(deps, again), NOW + 5, recent) == "unchanged"
    other = make_review(workload("Pod", pod_spec([IMG["good"]])))
    other["request"]["object"]["metadata"]["uid"] = "recreated"   # a new object, same name
    assert inv.record(store, other["request"], run(deps, other), NOW + 9, recent) == "recorded"


def test_thousands_of_containers_leave_a_bounded_entry(tmp_path, store):
    deps = make_deps(policies(tmp_path), FakeService(finish=scan))
    review = make_review(workload("Pod", pod_spec([IMG["good"]] * 5000)))
    d = run(deps, review)
    assert d.response["allowed"] is True
    key, _, _, body = inv.entry(review["request"], d, NOW)
    assert len(body) <= inv.ENTRY_LIMIT
    e = json.loads(body)
    assert e["verdict"] == "pass" and 100 <= len(e["images"]) < 5000
    assert all(i["truncated"] for i in e["images"])


def test_a_delete_without_old_object_removes_the_entry(tmp_path, store):
    deps = make_deps(policies(tmp_path), FakeService(finish=scan))
    review = make_review(workload("Pod", pod_spec([IMG["good"]]), name="web"))
    inv.record(store, review["request"], run(deps, review), NOW, inv.Recent())
    gone = make_review(None, kind="Pod", operation="DELETE")
    gone["request"].update(name="web", namespace="team-a", oldObject=None)
    d = run(deps, gone)
    assert d.response["allowed"] is True and d.reason == "operation"   # at once, no scan
    assert inv.record(store, gone["request"], d, NOW, inv.Recent()) == "removed"
    assert inv.record(store, gone["request"], d, NOW, inv.Recent()) == "absent"
    assert store.inv_count() == 0


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_a_waiver_expiring_turns_the_workload_to_fail_on_its_expiry_date(tmp_path, store,
                                                                       monkeypatch):
    today = dt.datetime.fromtimestamp(NOW, dt.timezone.utc).date()
    pset = policies(tmp_path, waiver_expires=today.isoformat())
    clock = Clock(NOW)
    deps = make_deps(pset, FakeService(finish=scan))
    deps.clock = clock
    review = make_review(workload("Pod", pod_spec([IMG["bad"]]), name="legacy"))
    d = run(deps, review)
    assert d.response["allowed"] is True                 # waived, through its expiry day
    inv.record(store, review["request"], d, NOW, inv.Recent())
    events = []
    import webhook.serve.logs as logs        # the judge's events, captured instead of stderr
    monkeypatch.setattr(logs, "event", lambda name, fields: events.append((name, fields)))
    judge = InventoryJudge(store, deps, clock=clock)
    first = judge.tick()
    assert first.trigger == "start" and first.changed == [] and events == []
    assert judge.tick() is None                          # nothing changed since
    clock.t = NOW + 86400                                # the day after the expiry
    second = judge.tick()
    assert second.trigger == "date"
    assert second.changed == [("team-a/Pod/legacy", "pass", "fail")]
    assert [(n, f["workload"], f["old"], f["new"], f["trigger"]) for n, f in events] == [
        ("inventory.changed", "team-a/Pod/legacy", "pass", "fail", "date")]
    assert json.loads(store.inv_get("team-a/Pod/legacy"))["verdict"] == "fail"
    # a second process (or replica) at the same state does not do the pass again
    other = InventoryJudge(store, deps, clock=clock)
    assert other.tick().skipped == "done by another process"
    assert len(events) == 1



def test_an_update_that_changes_an_image_replaces_the_entry(tmp_path, store):
    deps = make_deps(policies(tmp_path), FakeService(finish=scan))
    recent = inv.Recent()
    old = workload("Deployment", pod_spec([IMG["good"]]), name="api")
    create = make_review(old)
    assert inv.record(store, create["request"], run(deps, create), NOW, recent) == "recorded"
    new = workload("Deployment", pod_spec([IMG["fresh"]]), name="api")
    update = make_review(new, operation="UPDATE", old=old)
    d = run(deps, update)
    assert d.response["allowed"] is True
    assert inv.record(store, update["request"], d, NOW + 60, recent) == "recorded"
    e = json.loads(store.inv_get("team-a/Deployment/api"))
    assert [i["digest"] for i in e["images"]] == [D["fresh"]] and e["operation"] == "UPDATE"
    assert store.inv_count() == 1


def test_a_result_past_max_scan_age_is_rescanned_by_the_inventory_pass(tmp_path, store):
    svc = FakeService(finish=scan)
    deps = make_deps(policies(tmp_path), svc)
    review = make_review(workload("Pod", pod_spec([IMG["good"]]), name="old"))
    inv.record(store, review["request"], run(deps, review), NOW, inv.Recent())
    jobs = len(svc.jobs)
    out = inv.rejudge(store, deps, trigger="date", now=NOW + 8 * 86400)     # maxScanAge 7d
    assert out.changed == [] and len(svc.jobs) == jobs + 1               # decides, rescans
    assert svc.jobs[-1].key.digest == D["good"]
