"""The inventory through the whole product: `scapgate serve` with its scan workers, reviews
posted as kube-apiserver posts them over TLS, the SQLite store, the CLI as a subprocess.

- an admitted Pod, Deployment and a ReplicaSet's Pod are recorded (the Pod counts as a replica
  of its owner); a denied object, a dry run and an object no image changed are not;
- a DELETE is allowed at once, with no scan, and removes the entry — also without oldObject;
- a policy tightened by a reload turns an admitted workload to fail in the inventory, with one
  `inventory.changed` line and no rescan;
- `scapgate inventory import` makes the inventory equal to `kubectl get -o json` output, and a
  broken import changes nothing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.admission.test_reports import problems
from tests.builders.stores import redis_server  # noqa: F401  (fixture)
from tests.builders.webhooks import (Server, free_port, make_certs, make_review, pod_spec,
                                     policy_doc, until, workload)
from webhook.store.backends import open_store


def get(srv: Server, port: int, path: str, headers: dict) -> tuple[int, bytes]:
    """HTTPS GET to one of the server's listeners, verifying its certificate."""
    import ssl
    import urllib.error
    import urllib.request
    ctx = ssl.create_default_context(cafile=srv.ca)
    req = urllib.request.Request(f"https://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def write_policy(d, datastream: str, deny: str) -> None:
    doc = policy_doc("default", default=True, priority=0, datastream=datastream,
                     deny_severity=deny)
    tmp = d / ".default.yaml.tmp"
    tmp.write_text(yaml.safe_dump(doc))
    os.replace(tmp, d / "default.yaml")


def inventory(srv: Server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "webhook", "inventory", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SCAPGATE_STATE_DIR": str(srv.state),
                               "SCAPGATE_POLICY": str(srv.policy_dir),
                               "SCAPGATE_STORE": srv.extra_env.get("SCAPGATE_STORE", ""),
                               "SCAPGATE_CVE_FEEDS": "off"})


def listed(srv: Server) -> dict:
    proc = inventory(srv, "list", "--json")
    assert proc.returncode == 0, proc.stderr
    return {f"{r['namespace']}/{r['kind']}/{r['name']}": r for r in json.loads(proc.stdout)}


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request) -> str:
    """The inventory in the SQLite file, and in a real Redis shared by replicas."""
    return "" if request.param == "sqlite" else request.getfixturevalue("redis_server").url


def test_inventory_follows_admissions_deletes_and_policy_reloads(
        tmp_path, registry, images, scap_datastream, store_url):
    pdir = tmp_path / "policies"
    pdir.mkdir()
    write_policy(pdir, str(scap_datastream), "none")          # nothing denies yet
    token = tmp_path / "console-token"
    token.write_text("t0k3n-" + "x" * 26 + "\n")
    console_port = free_port()
    srv = Server(tmp_path / "srv", policy_dir=pdir, certs=make_certs(tmp_path / "certs"),
                 workers=1, env={"SCAPGATE_INSECURE_REGISTRIES": registry.host,
                                 "SCAPGATE_STORE": store_url,
                                 "SCAPGATE_INVENTORY_REJUDGE_S": "0.3",
                                 "SCAPGATE_CONSOLE_BIND": f"127.0.0.1:{console_port}",
                                 "SCAPGATE_CONSOLE_TOKEN_FILE": str(token)}).start()
    client = srv.client()
    try:
        def admit(review):
            return until("answered (not pending)", lambda: (
                r := client.review(review)["response"]).get("auditAnnotations", {}).get(
                    "verdict") != "pending" and r)

        pod = make_review(workload("Pod", pod_spec([images["bad"]]), name="web"))
        assert admit(pod)["allowed"] is True
        deploy = make_review(workload("Deployment", pod_spec([images["good"]]), name="api"))
        assert admit(deploy)["allowed"] is True
        rs_pod = make_review(workload("Pod", pod_spec([images["good"]]), name="api-7d9-x1"))
        rs_pod["request"]["object"]["metadata"]["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api", "uid": "u-1",
             "controller": True}]
        assert admit(rs_pod)["allowed"] is True
        dry = make_review(workload("Pod", pod_spec([images["good"]]), name="dry"))
        dry["request"]["dryRun"] = True
        assert admit(dry)["allowed"] is True

        rows = until("recorded: the pod, the deployment with its pod folded in",
                     lambda: (r := listed(srv)) and len(r) == 2 and r)
        assert rows["team-a/Pod/web"]["verdict"] == "pass"
        assert rows["team-a/Deployment/api"]["replicas"] == 1       # its pod, folded in
        assert rows["team-a/Pod/web"]["images"][0]["digest"] == images["bad"].digest
        assert rows["team-a/Pod/web"]["images"][0]["path"] == "spec.containers[0].image"

        # DELETE: allowed at once (no scan), entry removed; without an oldObject too
        gone = make_review(None, kind="Pod", operation="DELETE")
        gone["request"].update(name="api-7d9-x1", namespace="team-a", oldObject=None)
        resp = client.review(gone)["response"]
        assert resp["allowed"] is True
        until("the pod's entry removed", lambda: listed(srv)["team-a/Deployment/api"][
            "replicas"] == 0)

        # a policy tightened by a reload: the bad pod fails in the inventory, no rescan
        store = open_store(store_url, str(srv.state))
        scans = store.counter("scans_started")
        write_policy(pdir, str(scap_datastream), "medium")
        until("the bad pod turns to fail", lambda: listed(srv)["team-a/Pod/web"][
            "verdict"] == "fail")
        changed = [json.loads(line) for line in srv.log().splitlines()
                   if line.startswith("{") and '"inventory.changed"' in line]
        assert [(c["workload"], c["old"], c["new"]) for c in changed] == [
            ("team-a/Pod/web", "pass", "fail")]
        assert changed[0]["trigger"] == "policy"
        assert listed(srv)["team-a/Deployment/api"]["verdict"] == "pass"
        assert store.counter("scans_started") == scans
        metrics = until("the workload gauge", lambda: (b := srv.get("/metrics")[1].decode())
                        and 'scapgate_workloads{namespace="team-a",verdict="fail"} 1.0' in b
                        and b)
        assert 'scapgate_workloads{namespace="team-a",verdict="pass"} 1.0' in metrics
        assert "scapgate_inventory_rejudge_seconds_count" in metrics

        # PolicyReports of what runs: valid against the CRD, the failing rules of the pod
        proc = subprocess.run([sys.executable, "-m", "webhook", "report", "--format",
                               "policyreport"], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "SCAPGATE_STATE_DIR": str(srv.state),
                                   "SCAPGATE_STORE": store_url})
        assert proc.returncode == 0, proc.stderr
        (rep,) = json.loads(proc.stdout)["items"]
        assert problems(rep) == []
        assert rep["metadata"]["namespace"] == "team-a"
        failing = {(r["resources"][0]["name"], r["result"], r["rule"]) for r in rep["results"]}
        assert failing and all(name == "web" and res == "fail" for name, res, _ in failing)
        assert rep["summary"]["fail"] == len(failing)

        # the console listener: the inventory and the reports behind the token, nowhere else
        bearer = {"Authorization": "Bearer t0k3n-" + "x" * 26}
        status, body = get(srv, console_port, "/api/v1/inventory?namespace=team-a", bearer)
        assert status == 200
        assert {i["key"]: i["verdict"] for i in json.loads(body)["items"]} == {
            "team-a/Pod/web": "fail", "team-a/Deployment/api": "pass"}
        status, body = get(srv, console_port, "/api/v1/policyreports", bearer)
        assert status == 200 and problems(json.loads(body)["items"][0]) == []
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"},
                        {"Authorization": "t0k3n-" + "x" * 26}):
            status, body = get(srv, console_port, "/api/v1/inventory", headers)
            assert status == 401 and b"team-a" not in body
        assert get(srv, srv.port, "/api/v1/inventory", bearer)[0] == 404   # webhook listener
        assert get(srv, console_port, "/healthz", bearer)[0] == 404

        # a denied object is not recorded (the bad image now fails); the admitted one after
        # it on the same connection is, so the denied one's turn has passed
        denied = make_review(workload("Pod", pod_spec([images["bad"]]), name="web2"))
        assert client.review(denied)["response"]["allowed"] is False
        after = make_review(workload("Pod", pod_spec([images["good"]]), name="web3"))
        assert client.review(after)["response"]["allowed"] is True
        rows = until("the admitted pod recorded", lambda: "team-a/Pod/web3" in (
            r := listed(srv)) and r)
        assert "team-a/Pod/web2" not in rows
    finally:
        client.close()
        srv.stop()

    # import reconciles: the bad pod is gone from the cluster, a CronJob appeared
    kubectl = {"apiVersion": "v1", "kind": "List", "items": [
        workload("Deployment", pod_spec([images["good"]]), name="api"),
        workload("CronJob", pod_spec([images["good"]]), name="nightly")]}
    for item in kubectl["items"]:
        item["metadata"]["namespace"] = "team-a"
    (tmp_path / "cluster.json").write_text(json.dumps(kubectl))
    proc = inventory(srv, "import", str(tmp_path / "cluster.json"))
    assert proc.returncode == 0, proc.stderr
    assert "added    team-a/CronJob/nightly" in proc.stdout
    assert "removed  team-a/Pod/web" in proc.stdout and "removed  team-a/Pod/web3" in proc.stdout
    assert set(listed(srv)) == {"team-a/Deployment/api", "team-a/CronJob/nightly"}
    (tmp_path / "broken.json").write_text('{"items": [{"kind": "Pod"}, 3]}')
    proc = inventory(srv, "import", str(tmp_path / "broken.json"))
    assert proc.returncode == 2 and "the inventory is unchanged" in proc.stderr
    assert set(listed(srv)) == {"team-a/Deployment/api", "team-a/CronJob/nightly"}
