"""The Helm chart, charts/scapgate, checked with a real helm binary (scripts/helm.sh).

Three layers: `helm lint --strict` and the values schema; the rendered manifests, validated
with `kubernetes-validate --strict` against the oldest and newest Kubernetes it ships and read
for what matters (webhook rules, exclusions, security contexts, HA wiring); and the rendered
ValidatingWebhookConfiguration used the way kube-apiserver uses it, against a running
`scapgate serve` holding the certificate the chart would mount.
"""
from __future__ import annotations

import base64
import http.server
import json
import shutil
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.builders.webhooks import ApiServer, Server, make_review, pod_spec, workload

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "scapgate"
RELEASE, NAMESPACE = "gate", "scapgate-system"
FULLNAME = f"{RELEASE}-scapgate"
CRD_KINDS = {"Certificate", "Issuer", "ServiceMonitor"}    # no schema in kubernetes-validate
SCANNER_CAPS = {"CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "MKNOD", "SETFCAP", "SYS_CHROOT"}
WORKLOAD_RULES = {("", "pods"), ("", "pods/ephemeralcontainers"),
                  ("", "replicationcontrollers"), ("apps", "deployments"),
                  ("apps", "replicasets"), ("apps", "statefulsets"), ("apps", "daemonsets"),
                  ("batch", "jobs"), ("batch", "cronjobs")}
MATCH_CONDITION = ('[{"name": "not-argo", "expression": "!(request.userInfo.username == '
                   '\\"system:serviceaccount:argocd:argocd-application-controller\\")"}]')

#: Value sets every structural and validation test runs over: id -> --set/--set-json args.
VALUE_SETS = {
    "defaults": [],
    "cert-manager": ["--set", "tls.mode=certManager", "--set", "serviceMonitor.enabled=true"],
    "cert-manager-issuer": ["--set", "tls.mode=certManager",
                            "--set", "tls.certManager.issuerRef.name=corp-ca",
                            "--set", "tls.certManager.issuerRef.kind=ClusterIssuer"],
    "ha-bundled-redis": ["--set", "ha.enabled=true", "--set", "serviceMonitor.enabled=true"],
    "ha-external-redis": ["--set", "ha.enabled=true",
                          "--set", "ha.redis.url=rediss://:secret@redis.example:6380/0",
                          "--set", "networkPolicy.extraEgress[0].ports[0].port=6380"],
    "everything": ["--set", "ha.enabled=true", "--set", "podAntiAffinity=hard",
                   "--set", "registries.authSecret=pull", "--set", "imagePullSecrets[0].name=p",
                   "--set-string", "registries.cas.registry\\.example:5000=PEM",
                   "--set", "registries.registriesConf=unqualified-search-registries=[]",
                   "--set", "policies.files.extra\\.yaml=kind: ImagePolicy",
                   "--set", "webhook.excludeNamespaces[0]=monitoring",
                   "--set-json", f"webhook.matchConditions={MATCH_CONDITION}",
                   "--set", "image.digest=sha256:" + "a" * 64, "--set", "ha.reportsClaim=rwx",
                   "--set", "webhook.pinDigests.enabled=true"],
}


# -- helpers --------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def helm() -> str:
    """The helm binary scripts/helm.sh installs into .state/tools (pinned, idempotent)."""
    out = subprocess.run(["bash", str(REPO / "scripts" / "helm.sh")], cwd=REPO, check=True,
                         capture_output=True, text=True, timeout=600).stdout.strip()
    return str(REPO / out)


def run_helm(helm: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}{proc.stdout[-2000:]}")
    return proc


def render(helm: str, *args: str, kube: str | None = None, chart: Path = CHART) -> list[dict]:
    """`helm template` → the list of manifests."""
    extra = ["--kube-version", kube] if kube else []
    out = run_helm(helm, "template", RELEASE, str(chart), "--namespace", NAMESPACE,
                   *extra, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def find(docs: list[dict], kind: str, name: str | None = None) -> dict:
    hits = [d for d in docs
            if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(hits) == 1, f"{len(hits)} {kind} {name or ''} in {[d['kind'] for d in docs]}"
    return hits[0]


def kinds(docs: list[dict]) -> list[tuple[str, str]]:
    return sorted((d["kind"], d["metadata"]["name"]) for d in docs)


def container(deployment: dict) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def k8s_versions() -> tuple[str, str]:
    """Oldest and newest Kubernetes versions kubernetes-validate ships schemas for."""
    from kubernetes_validate.utils import all_versions
    versions = sorted(all_versions(), key=lambda v: tuple(int(x) for x in v.split(".")))
    return versions[0], versions[-1]


# -- the chart's own files --------------------------------------------------------------------

def test_chart_policies_are_the_repository_policies():
    """helm cannot read outside the chart, so the chart carries a copy of policies/ (every file
    directly in it but the README): the two must never drift apart."""
    repo = {p.name: p.read_bytes() for p in (REPO / "policies").iterdir()
            if p.is_file() and p.suffix != ".md"}
    chart = {p.name: p.read_bytes() for p in (CHART / "files" / "policies").iterdir()}
    assert chart == repo, ("charts/scapgate/files/policies differs from policies/: run "
                           "`cp policies/*.yaml charts/scapgate/files/policies/` (and remove "
                           "files deleted from policies/)")


def test_scanner_capabilities_in_values_are_the_tested_set():
    """tests/test_dockerfile.py proves these six necessary and sufficient for umoci; the
    values and the Dockerfile's comment must say the same."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    caps = values["scannerSecurityContext"]["capabilities"]
    assert set(caps["add"]) == SCANNER_CAPS and caps["drop"] == ["ALL"]
    dockerfile = (REPO / "Dockerfile").read_text()
    for cap in SCANNER_CAPS:
        assert f"--cap-add {cap}" in dockerfile


@pytest.mark.parametrize("values", list(VALUE_SETS), ids=list(VALUE_SETS))
def test_helm_lint_strict(helm, values):
    proc = run_helm(helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE,
                    *VALUE_SETS[values])
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--set", "webhook.timeoutSeconds=31"],
     "webhook.timeoutSeconds: Must be less than or equal to 30"),
    (["--set", "webhook.timeoutSeconds=0"],
     "webhook.timeoutSeconds: Must be greater than or equal to 1"),
    (["--set", "webhook.failurePolicy=fail"], "webhook.failurePolicy must be one of"),
    (["--set", "webhook.timeoutSecond=5"], "Additional property timeoutSecond is not allowed"),
    (["--set", "webhook.name=scapgate"], "webhook.name"),
    (["--set", "tls.mode=vault"], "tls.mode must be one of"),
    (["--set", "tls.mode=secret"], "tls.secret.name is required"),
    (["--set", "tls.mode=secret", "--set", "tls.secret.name=mine"], "tls.secret.caBundle"),
    (["--set", "ha.redis.url=http://redis:6379"], "ha.redis.url"),
    (["--set", "policies.includeDefaults=false"], "no policies"),
], ids=["timeout-31", "timeout-0", "failure-policy-case", "typo", "webhook-name", "tls-mode",
        "secret-without-name", "secret-without-ca", "redis-url", "no-policies"])
def test_bad_values_are_refused(helm, args, message):
    proc = run_helm(helm, "template", RELEASE, str(CHART), *args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr


def test_match_conditions_need_kubernetes_1_28(helm):
    args = ["--set-json", f"webhook.matchConditions={MATCH_CONDITION}"]
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--kube-version", "1.27.0", *args,
                    check=False)
    assert proc.returncode != 0 and "needs Kubernetes 1.28" in proc.stderr
    vwc = find(render(helm, *args, kube="1.28.0"), "ValidatingWebhookConfiguration")
    assert vwc["webhooks"][0]["matchConditions"][0]["name"] == "not-argo"


# -- rendered manifests -----------------------------------------------------------------------

@pytest.mark.parametrize("which", ["oldest", "newest"])
@pytest.mark.parametrize("values", list(VALUE_SETS), ids=list(VALUE_SETS))
def test_manifests_validate_strictly(helm, tmp_path, values, which):
    """kubernetes-validate --strict: unknown fields and wrong types fail, for the oldest and
    the newest Kubernetes it knows. Only the CRD kinds (cert-manager, Prometheus) lack schemas."""
    oldest, newest = k8s_versions()
    version = oldest if which == "oldest" else newest
    args = VALUE_SETS[values]
    if version < "1.28" and any("matchConditions" in a for a in args):   # refused, tested above
        i = next(i for i, a in enumerate(args) if "matchConditions" in a)
        args = args[:i - 1] + args[i + 1:]
    docs = render(helm, *args, kube=version)
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    cli = Path(sys.executable).with_name("kubernetes-validate")
    proc = subprocess.run([str(cli), "--strict", "-k", version, str(path)],
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    missing = {line.split("for kind ")[1].split()[0] for line in out.splitlines()
               if "Couldn't find schema" in line}
    assert missing <= CRD_KINDS, out
    passed = out.count(" passed for resource ")
    assert passed == sum(1 for d in docs if d["kind"] not in CRD_KINDS), out


def test_defaults(helm):
    docs = render(helm)
    assert kinds(docs) == sorted([
        ("ConfigMap", f"{FULLNAME}-policies"), ("Deployment", FULLNAME),
        ("NetworkPolicy", FULLNAME), ("PodDisruptionBudget", FULLNAME),
        ("Secret", f"{FULLNAME}-tls"), ("Service", FULLNAME), ("ServiceAccount", FULLNAME),
        ("ValidatingWebhookConfiguration", FULLNAME)])
    dep = find(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = container(dep)
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == \
        dep["spec"]["selector"]["matchLabels"]
    assert find(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == \
        dep["spec"]["selector"]["matchLabels"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {p["httpGet"]["scheme"] for p in (c["livenessProbe"], c["readinessProbe"])} == {"HTTPS"}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    # Without HA the webhook scans: uid 0, only the tested capabilities, nothing else.
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["runAsUser"] == 0 and set(sc["capabilities"]["add"]) == SCANNER_CAPS
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert env_of(c)["SCAPGATE_EMBEDDED_WORKERS"] == "true"
    assert "SCAPGATE_STORE" not in env_of(c)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["scratch"]["emptyDir"]["medium"] == "Memory"
    assert volumes["scratch"]["emptyDir"]["sizeLimit"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    for path in ("/scratch", "/tmp", "/var/lib/scapgate", "/etc/scapgate/policies",
                 "/etc/scapgate/tls"):
        assert path in mounts
    assert env_of(c)["SCAPGATE_SCRATCH_DIR"] == "/scratch"
    assert env_of(c)["SCAPGATE_POLICY"] == "/etc/scapgate/policies"
    assert env_of(c)["SCAPGATE_PARTIAL_UNPACK"] == "true"
    off = container(find(render(helm, "--set", "config.partialUnpack=false"), "Deployment"))
    assert env_of(off)["SCAPGATE_PARTIAL_UNPACK"] == "false"
    policies = find(docs, "ConfigMap")["data"]
    assert policies["default.yaml"] == (REPO / "policies" / "default.yaml").read_text()
    assert not any("subPath" in m for m in c["volumeMounts"] if m["name"] == "policies"), \
        "a subPath mount would never see an edited ConfigMap"


def test_webhook_configuration(helm):
    docs = render(helm)
    hook, delete = find(docs, "ValidatingWebhookConfiguration")["webhooks"]
    assert hook["sideEffects"] == "NoneOnDryRun"          # admitted objects are recorded
    # DELETEs only remove inventory entries: Ignore, short, never blocking a deletion
    assert (delete["name"], delete["failurePolicy"], delete["timeoutSeconds"],
            delete["sideEffects"]) == ("inventory.images.scapgate.io", "Ignore", 2,
                                       "NoneOnDryRun")
    assert all(rule["operations"] == ["DELETE"] for rule in delete["rules"])
    for key in ("namespaceSelector", "clientConfig", "admissionReviewVersions"):
        assert delete[key] == hook[key], key
    assert [r["resources"] for r in delete["rules"]] == [r["resources"] for r in hook["rules"]]
    (alone,) = find(render(helm, "--set", "inventory.enabled=false"),
                    "ValidatingWebhookConfiguration")["webhooks"]
    assert alone["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["failurePolicy"] == "Fail" and hook["timeoutSeconds"] == 10
    rules = {(g, r) for rule in hook["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert rules == WORKLOAD_RULES
    assert all(set(rule["operations"]) == {"CREATE", "UPDATE"} for rule in hook["rules"])
    (expr,) = hook["namespaceSelector"]["matchExpressions"]
    assert expr["key"] == "kubernetes.io/metadata.name" and expr["operator"] == "NotIn"
    assert {"kube-system", NAMESPACE} <= set(expr["values"])
    assert "matchConditions" not in hook
    svc = hook["clientConfig"]["service"]
    assert (svc["name"], svc["namespace"], svc["path"]) == (FULLNAME, NAMESPACE, "/validate")
    secret = find(docs, "Secret", f"{FULLNAME}-tls")
    assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]


def test_digest_pinning_is_optional_and_shares_the_validating_scope(helm):
    """webhook.pinDigests: a MutatingWebhookConfiguration on /mutate with exactly the
    validating webhook's service, CA, selectors and rules; best effort (Ignore) by default."""
    assert not [d for d in render(helm) if d["kind"] == "MutatingWebhookConfiguration"]
    docs = render(helm, "--set", "webhook.pinDigests.enabled=true",
                  "--set", "webhook.excludeNamespaces[0]=monitoring")
    validate = find(docs, "ValidatingWebhookConfiguration")["webhooks"][0]
    (pin,) = find(docs, "MutatingWebhookConfiguration", f"{FULLNAME}-pin")["webhooks"]
    assert pin["clientConfig"]["service"]["path"] == "/mutate"
    assert (pin["failurePolicy"], pin["reinvocationPolicy"]) == ("Ignore", "IfNeeded")
    assert pin["sideEffects"] == "None"                   # pinning records nothing
    for key in ("namespaceSelector", "rules", "timeoutSeconds",
                "admissionReviewVersions"):
        assert pin[key] == validate[key], key
    assert pin["clientConfig"]["caBundle"] == validate["clientConfig"]["caBundle"]
    assert {k: v for k, v in pin["clientConfig"]["service"].items() if k != "path"} == \
        {k: v for k, v in validate["clientConfig"]["service"].items() if k != "path"}
    assert "monitoring" in pin["namespaceSelector"]["matchExpressions"][0]["values"]


def test_webhook_values_reach_the_configuration(helm):
    docs = render(helm, "--set", "webhook.failurePolicy=Ignore", "--set",
                  "webhook.timeoutSeconds=30", "--set", "webhook.excludeNamespaces[0]=monitoring",
                  "--set", "webhook.excludeNamespaces[1]=kube-system")
    hook = find(docs, "ValidatingWebhookConfiguration")["webhooks"][0]
    assert (hook["failurePolicy"], hook["timeoutSeconds"]) == ("Ignore", 30)
    values = hook["namespaceSelector"]["matchExpressions"][0]["values"]
    assert values == ["kube-system", NAMESPACE, "monitoring"]


def test_cert_manager(helm):
    docs = render(helm, *VALUE_SETS["cert-manager"])
    vwc = find(docs, "ValidatingWebhookConfiguration")
    cert = find(docs, "Certificate", f"{FULLNAME}-tls")
    assert vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == \
        f"{NAMESPACE}/{cert['metadata']['name']}"
    assert "caBundle" not in vwc["webhooks"][0]["clientConfig"]       # the cainjector fills it
    assert f"{FULLNAME}.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]
    assert not [d for d in docs if d["kind"] == "Secret"]              # cert-manager writes it
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    tls = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert tls["secret"]["secretName"] == cert["spec"]["secretName"]
    ca_issuer = find(docs, "Issuer", f"{FULLNAME}-ca")
    assert cert["spec"]["issuerRef"]["name"] == ca_issuer["metadata"]["name"]
    assert find(docs, "Certificate", f"{FULLNAME}-ca")["spec"]["isCA"] is True
    monitor = find(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["tlsConfig"]["ca"]["secret"]["name"] == \
        cert["spec"]["secretName"]
    own = render(helm, *VALUE_SETS["cert-manager-issuer"])
    assert not [d for d in own if d["kind"] == "Issuer"]
    assert find(own, "Certificate")["spec"]["issuerRef"]["kind"] == "ClusterIssuer"


def test_ha_with_bundled_redis(helm):
    docs = render(helm, *VALUE_SETS["ha-bundled-redis"])
    web, worker = find(docs, "Deployment", FULLNAME), find(docs, "Deployment", f"{FULLNAME}-worker")
    redis = find(docs, "Deployment", f"{FULLNAME}-redis")
    find(docs, "PodDisruptionBudget", f"{FULLNAME}-worker")
    # The webhook no longer scans: non-root, no capabilities ("restricted").
    wc = container(web)
    assert wc["securityContext"]["runAsNonRoot"] is True
    assert wc["securityContext"]["runAsUser"] != 0
    assert "add" not in wc["securityContext"]["capabilities"]
    assert env_of(wc)["SCAPGATE_EMBEDDED_WORKERS"] == "false"
    # The worker does, with the scanner's context.
    kc = container(worker)
    assert kc["args"][0] == "worker"
    assert set(kc["securityContext"]["capabilities"]["add"]) == SCANNER_CAPS
    assert worker["spec"]["replicas"] == 2
    # Both reach the bundled Redis with the generated password.
    svc = find(docs, "Service", f"{FULLNAME}-redis")
    for c in (wc, kc):
        store = env_of(c)["SCAPGATE_STORE"]
        host = f"{svc['metadata']['name']}.{NAMESPACE}.svc"
        assert store == f"redis://:$(REDIS_PASSWORD)@{host}:6379/0"
        names = [e["name"] for e in c["env"]]
        assert names.index("REDIS_PASSWORD") < names.index("SCAPGATE_STORE")   # $(…) expansion
    password = find(docs, "Secret", f"{FULLNAME}-redis")["data"]["password"]
    assert len(base64.b64decode(password)) == 32
    assert "--requirepass" in container(redis)["args"]
    policy = find(docs, "NetworkPolicy", f"{FULLNAME}-redis")["spec"]
    allowed = [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
               for p in policy["ingress"][0]["from"]]
    assert sorted(allowed) == ["webhook", "worker"]
    assert find(docs, "NetworkPolicy", f"{FULLNAME}-worker")["spec"].get("ingress") is None


def test_ha_with_external_redis(helm):
    docs = render(helm, *VALUE_SETS["ha-external-redis"])
    assert not [d for d in docs
                if d["metadata"]["name"].endswith("-redis") and d["kind"] != "Secret"]
    secret = find(docs, "Secret", f"{FULLNAME}-redis")
    url = base64.b64decode(secret["data"]["url"]).decode()
    assert url == "rediss://:secret@redis.example:6380/0"
    for name in (FULLNAME, f"{FULLNAME}-worker"):
        ref = env_of(container(find(docs, "Deployment", name)))["SCAPGATE_STORE"]
        assert ref == {"secretKeyRef": {"name": secret["metadata"]["name"], "key": "url"}}
    egress = find(docs, "NetworkPolicy", FULLNAME)["spec"]["egress"]
    assert {"ports": [{"port": 6380}]} in egress


def test_registry_settings_are_mounted(helm):
    docs = render(helm, *VALUE_SETS["everything"])
    c = container(find(docs, "Deployment", f"{FULLNAME}-worker"))
    env = env_of(c)
    assert env["SCAPGATE_AUTH_FILE"] == "/etc/scapgate/registry-auth/config.json"
    assert env["SCAPGATE_CERTS_DIR"] == "/etc/scapgate/certs.d"
    pod = find(docs, "Deployment", f"{FULLNAME}-worker")["spec"]["template"]["spec"]
    cas = next(v for v in pod["volumes"] if v["name"] == "registry-cas")
    assert cas["configMap"]["items"] == [
        {"key": "ca-0.crt", "path": "registry.example:5000/ca.crt"}]
    registries = find(docs, "ConfigMap", f"{FULLNAME}-registries")["data"]
    assert registries["ca-0.crt"] == "PEM"
    policies = find(docs, "ConfigMap", f"{FULLNAME}-policies")["data"]
    assert policies["extra.yaml"] == "kind: ImagePolicy"
    assert c["image"] == "scapgate@sha256:" + "a" * 64
    assert "requiredDuringSchedulingIgnoredDuringExecution" in pod["affinity"]["podAntiAffinity"]
    for name in (FULLNAME, f"{FULLNAME}-worker"):       # reports shared by workers and webhooks
        spec = find(docs, "Deployment", name)["spec"]["template"]["spec"]
        assert {"name": "reports", "persistentVolumeClaim": {"claimName": "rwx"}} in spec["volumes"]
        assert {"name": "reports", "mountPath": "/var/lib/scapgate/reports"} in \
            container(find(docs, "Deployment", name))["volumeMounts"]


def test_cve_feeds_reach_webhook_and_workers_with_their_volume(helm):
    """cves.feeds → SCAPGATE_CVE_FEEDS as Settings reads it (product=source), the air-gapped
    volume mounted read-only where those paths point; cves.enabled false → "off"."""
    docs = render(helm, "--set", "ha.enabled=true", "--set", "ha.redis.url=redis://r:6379/0",
                  "--set", "cves.feeds.debian12=/etc/scapgate/feeds/bookworm.xml.bz2",
                  "--set", "cves.feeds.rhel9=off", "--set", "cves.refreshSeconds=3600",
                  "--set-json", 'cves.volume={"persistentVolumeClaim":{"claimName":"feeds"}}')
    for name in (FULLNAME, f"{FULLNAME}-worker"):
        c = container(find(docs, "Deployment", name))
        env = env_of(c)
        assert env["SCAPGATE_CVE_FEEDS"] == \
            "debian12=/etc/scapgate/feeds/bookworm.xml.bz2,rhel9=off"
        assert env["SCAPGATE_CVE_REFRESH_S"] == "3600"
        assert {"name": "cve-feeds", "mountPath": "/etc/scapgate/feeds", "readOnly": True} in \
            c["volumeMounts"]
        spec = find(docs, "Deployment", name)["spec"]["template"]["spec"]
        assert {"name": "cve-feeds", "persistentVolumeClaim": {"claimName": "feeds"}} in \
            spec["volumes"]
    from webhook.scan.feeds import sources
    got = sources(env["SCAPGATE_CVE_FEEDS"])
    assert got["debian12"] == "/etc/scapgate/feeds/bookworm.xml.bz2" and "rhel9" not in got
    off = env_of(container(find(render(helm, "--set", "cves.enabled=false"), "Deployment",
                                FULLNAME)))
    assert off["SCAPGATE_CVE_FEEDS"] == "off"
    defaults = env_of(container(find(render(helm), "Deployment", FULLNAME)))
    assert defaults["SCAPGATE_CVE_FEEDS"] == ""          # the vendors' feeds


def test_console_listener_is_off_by_default_and_its_own_service_when_on(helm):
    """console.enabled: the webhook container also listens on the console port with the token
    from a Secret; a Service of its own (the webhook configuration never names it); the
    NetworkPolicy admits console.from there. Off by default; on without a Secret: refused."""
    assert not [d for d in render(helm) if d["kind"] == "Service"
                and d["metadata"]["name"].endswith("-console")]
    docs = render(helm, "--set", "console.enabled=true", "--set", "console.tokenSecret.name=ctok",
                  "--set-json", 'console.from=[{"podSelector":{"matchLabels":{"app":"ui"}}}]')
    c = container(find(docs, "Deployment", FULLNAME))
    args = c["args"]
    assert args[args.index("--console-bind") + 1] == "0.0.0.0:8444"
    assert args[args.index("--console-token-file") + 1] == "/etc/scapgate/console/token"
    assert {"name": "console", "containerPort": 8444, "protocol": "TCP"} in c["ports"]
    assert {"name": "console-token", "mountPath": "/etc/scapgate/console", "readOnly": True} \
        in c["volumeMounts"]
    svc = find(docs, "Service", f"{FULLNAME}-console")
    assert svc["spec"]["ports"] == [{"name": "console", "port": 8444, "targetPort": "console",
                                     "protocol": "TCP"}]
    hooks = find(docs, "ValidatingWebhookConfiguration")["webhooks"]
    assert all(h["clientConfig"]["service"]["name"] == FULLNAME for h in hooks)
    netpol = find(docs, "NetworkPolicy", FULLNAME)
    (rule,) = [r for r in netpol["spec"]["ingress"] if r["ports"][0]["port"] == "console"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app": "ui"}}}]
    proc = run_helm(helm, "template", "t", str(CHART), "--set", "console.enabled=true",
                    check=False)
    assert proc.returncode != 0 and "console.tokenSecret.name" in proc.stderr
    # the Ingress example, to the console's Service only
    docs = render(helm, "--set", "console.enabled=true", "--set", "console.tokenSecret.name=t",
                  "--set", "console.ingress.enabled=true", "--set",
                  "console.ingress.host=scapgate.example.com", "--set",
                  "console.ingress.tlsSecret=tls", "--set", "console.ingress.className=nginx")
    ing = find(docs, "Ingress", f"{FULLNAME}-console")
    (rule,) = ing["spec"]["rules"]
    assert rule["host"] == "scapgate.example.com"
    assert rule["http"]["paths"][0]["backend"]["service"] == {
        "name": f"{FULLNAME}-console", "port": {"name": "console"}}
    assert ing["spec"]["tls"] == [{"hosts": ["scapgate.example.com"], "secretName": "tls"}]


@pytest.mark.parametrize("values", ["defaults", "cert-manager", "ha-bundled-redis"])
def test_notes_render(helm, tmp_path, values):
    """helm template does not render NOTES.txt: render it through tpl in a copy of the chart."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "NOTES.txt").rename(chart / "files" / "NOTES.txt")
    (chart / "templates" / "zz-notes.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n'
        'data:\n  notes: {{ tpl (.Files.Get "files/NOTES.txt") . | quote }}\n')
    docs = render(helm, *VALUE_SETS[values], chart=chart)
    notes = find(docs, "ConfigMap", "notes")["data"]["notes"]
    assert f"rollout status deployment/{FULLNAME}" in notes
    assert "--dry-run=server" in notes
    assert (f"deployment/{FULLNAME}-worker" in notes) == values.startswith("ha")
    assert ("get certificate" in notes) == (values == "cert-manager")


# -- upgrades keep the generated certificate ------------------------------------------------

class FakeApiServer:
    """Just enough of kube-apiserver for helm's `lookup`: discovery of v1 and GET of Secrets.
    Lets `helm template --dry-run=server` render an upgrade against an existing release."""

    def __init__(self):
        self.secrets: dict[tuple[str, str], dict] = {}
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?")[0].strip("/").split("/")
                if path == ["api", "v1"]:
                    return self._send(200, {"kind": "APIResourceList", "groupVersion": "v1",
                                            "resources": [{"name": "secrets", "kind": "Secret",
                                                           "singularName": "secret",
                                                           "namespaced": True,
                                                           "verbs": ["get"]}]})
                if len(path) == 6 and path[:3] == ["api", "v1", "namespaces"] \
                        and path[4] == "secrets":
                    secret = fake.secrets.get((path[3], path[5]))
                    if secret:
                        return self._send(200, secret)
                return self._send(404, {"kind": "Status", "apiVersion": "v1", "code": 404,
                                        "status": "Failure", "reason": "NotFound"})

            def _send(self, code: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def kubeconfig(self, directory: Path) -> Path:
        path = directory / "kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {
                "server": f"http://127.0.0.1:{self.httpd.server_address[1]}"}}],
            "users": [{"name": "fake", "user": {"token": "fake"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake"}))
        return path

    def stop(self):
        self.httpd.shutdown()


def test_generated_certificate_and_redis_password_survive_upgrades(helm, tmp_path):
    api = FakeApiServer()
    try:
        kubeconfig = api.kubeconfig(tmp_path)
        args = ["--dry-run=server", "--kubeconfig", str(kubeconfig), "--set", "ha.enabled=true"]
        install = render(helm, *args)
        for name in (f"{FULLNAME}-tls", f"{FULLNAME}-redis"):
            api.secrets[(NAMESPACE, name)] = find(install, "Secret", name)
        upgrade = render(helm, "--is-upgrade", *args)
        fresh = render(helm, *args[3:])          # no cluster: a new install would generate anew
    finally:
        api.stop()
    for name in (f"{FULLNAME}-tls", f"{FULLNAME}-redis"):
        assert find(upgrade, "Secret", name)["data"] == find(install, "Secret", name)["data"]
        assert find(fresh, "Secret", name)["data"] != find(install, "Secret", name)["data"]
    def bundle(docs):
        return find(docs, "ValidatingWebhookConfiguration")["webhooks"][0]["clientConfig"][
            "caBundle"]
    ca = find(install, "Secret", f"{FULLNAME}-tls")["data"]["ca.crt"]
    assert bundle(upgrade) == bundle(install) == ca


# -- the configuration, used the way kube-apiserver uses it -----------------------------------

def webhook_endpoint(docs: list[dict]) -> dict:
    """Everything kube-apiserver takes from the rendered objects to call the webhook, and the
    pod port that Service port leads to (the chain VWC → Service → Pod must be unbroken)."""
    hook, delete = find(docs, "ValidatingWebhookConfiguration")["webhooks"]
    assert delete["clientConfig"] == hook["clientConfig"]
    ref = hook["clientConfig"]["service"]
    svc = find(docs, "Service", ref["name"])
    assert svc["metadata"]["namespace"] == ref["namespace"]
    (port,) = [p for p in svc["spec"]["ports"] if p["port"] == ref["port"]]
    dep = find(docs, "Deployment", ref["name"])
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    c = container(dep)
    (cport,) = [p for p in c["ports"] if p["name"] == port["targetPort"]]
    bind = c["args"][c["args"].index("--bind") + 1]
    assert bind.endswith(f":{cport['containerPort']}"), (bind, cport)
    return {"server_name": f"{ref['name']}.{ref['namespace']}.svc", "path": ref["path"],
            "ca": base64.b64decode(hook["clientConfig"]["caBundle"]),
            "timeout": hook["timeoutSeconds"]}


def serving_files(docs: list[dict], directory: Path, secret_name: str) -> Path:
    """The tls.crt/tls.key the pod mounts, from the rendered Secret."""
    directory.mkdir()
    secret = find(docs, "Secret", secret_name)
    for key in ("tls.crt", "tls.key", "ca.crt"):
        (directory / key).write_bytes(base64.b64decode(secret["data"][key]))
    return directory


def policy_files(docs: list[dict], directory: Path) -> Path:
    """The policies the pod mounts, from the rendered ConfigMap."""
    directory.mkdir()
    for name, text in find(docs, "ConfigMap", f"{FULLNAME}-policies")["data"].items():
        (directory / name).write_text(text)
    return directory


class ChartServer(Server):
    """`scapgate serve` with the chart's certificate, whose names are the Service's only."""

    def __init__(self, *args, server_name: str, ca: Path, **kw):
        super().__init__(*args, **kw)
        self.server_name, self.ca_file = server_name, ca

    def wait_ready(self) -> None:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"scapgate serve exited:\n{self.log()[-4000:]}")
            client = ApiServer(self.port, str(self.ca_file), server_name=self.server_name)
            client.context = context
            try:
                if client.request("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
            finally:
                client.close()
        self.stop()
        raise RuntimeError(f"scapgate serve not ready:\n{self.log()[-4000:]}")


def call_like_apiserver(endpoint: dict, port: int, ca_file: Path, review: dict,
                        server_name: str | None = None) -> dict:
    """POST <path>?timeout=<timeoutSeconds>s over TLS verified against the caBundle for
    <service>.<namespace>.svc, as k8s.io/apiserver's webhook client does."""
    client = ApiServer(port, str(ca_file), server_name=server_name or endpoint["server_name"])
    try:
        status, headers, body = client.request(
            "POST", f"{endpoint['path']}?timeout={endpoint['timeout']}s",
            json.dumps(review).encode(),
            {"User-Agent": "kube-apiserver-admission", "Content-Type": "application/json",
             "Accept-Encoding": "gzip"})
    finally:
        client.close()
    assert status == 200, body[:500]
    if headers.get("Content-Encoding") == "gzip":
        import gzip
        body = gzip.decompress(body)
    resp = json.loads(body)
    assert (resp["apiVersion"], resp["kind"]) == ("admission.k8s.io/v1", "AdmissionReview")
    assert resp["response"]["uid"] == review["request"]["uid"]
    return resp


def decide(endpoint, port, ca_file, image) -> dict:
    """Reviews until the image's first scan is done (a pending answer is a denial that says
    retry; controllers retry the same way)."""
    deadline = time.monotonic() + 120
    while True:
        resp = call_like_apiserver(endpoint, port, ca_file,
                                   make_review(workload("Pod", pod_spec([image]))))
        if resp["response"].get("auditAnnotations", {}).get("verdict") != "pending" \
                or time.monotonic() > deadline:
            return resp
        time.sleep(1)


@pytest.fixture(params=["generated", "scapgate-certs"])
def chart_server(request, helm, tmp_path, registry, scap_datastream):
    """The chart rendered with either TLS mode a cluster without cert-manager would use, and
    `scapgate serve` running with exactly the certificate and policies its pod would mount."""
    if request.param == "generated":
        docs = render(helm)
        certs = serving_files(docs, tmp_path / "certs", f"{FULLNAME}-tls")
    else:
        certs = tmp_path / "certs"
        subprocess.run([str(REPO / ".venv" / "bin" / "scapgate"), "certs", "--service", FULLNAME,
                        "--namespace", NAMESPACE, "--out", str(certs)], check=True,
                       capture_output=True, timeout=60)
        bundle = base64.b64encode((certs / "ca.crt").read_bytes()).decode()
        docs = render(helm, "--set", "tls.mode=secret", "--set", "tls.secret.name=mine",
                      "--set", f"tls.secret.caBundle={bundle}")
        assert not [d for d in docs if d["kind"] == "Secret"]
    endpoint = webhook_endpoint(docs)
    ca_file = tmp_path / "caBundle.pem"
    ca_file.write_bytes(endpoint["ca"])
    server = ChartServer(tmp_path / "server", policy_dir=policy_files(docs, tmp_path / "policies"),
                         certs=certs, env={"SCAPGATE_INSECURE_REGISTRIES": registry.host},
                         server_name=endpoint["server_name"], ca=ca_file)
    server.start()
    yield endpoint, server, ca_file
    server.stop()


def test_rendered_webhook_configuration_works_like_kube_apiserver(chart_server, images):
    endpoint, server, ca_file = chart_server
    good = decide(endpoint, server.port, ca_file, images["good"])
    assert good["response"]["allowed"] is True
    bad = decide(endpoint, server.port, ca_file, images["bad"])
    assert bad["response"]["allowed"] is False
    assert "file_permissions_etc_shadow" in bad["response"]["status"]["message"]
    # The name really is checked: the same CA, another Service name, fails the handshake.
    with pytest.raises(ssl.SSLCertVerificationError):
        call_like_apiserver(endpoint, server.port, ca_file,
                            make_review(workload("Pod", pod_spec([images["good"]]))),
                            server_name=f"other.{NAMESPACE}.svc")


# -- the chart speaks the app's language -------------------------------------------------------

@pytest.mark.parametrize("values", ["defaults", "everything"])
def test_container_args_and_settings_are_the_apps(helm, values):
    """Every container command parses with scapgate's own CLI, and every SCAPGATE_* variable
    is a setting the app reads (a misspelt one would be silently ignored)."""
    import dataclasses

    from webhook.cli import build_parser
    from webhook.config import Settings
    known = {f"SCAPGATE_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    known |= {"SCAPGATE_LOG_LEVEL"}                      # read by webhook/serve/gunicorn_conf.py
    for dep in (d for d in render(helm, *VALUE_SETS[values]) if d["kind"] == "Deployment"
                and d["metadata"]["name"] != f"{FULLNAME}-redis"):
        c = container(dep)
        build_parser().parse_args(c["args"])
        names = {e["name"] for e in c["env"] if e["name"].startswith("SCAPGATE_")}
        assert names <= known, names - known
