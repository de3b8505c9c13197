"""`make demo` (scripts/demo.py): a newcomer's first run must show an allow, a deny with its
reasons and the report, and leave nothing running."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_demo_shows_an_allow_a_deny_and_the_report(scap_datastream):
    proc = subprocess.run([sys.executable, "-m", "scripts.demo"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    for kind, verdict in (("Pod/web-passing", "ALLOWED"), ("Deployment/web-passing", "ALLOWED"),
                          ("Pod/web-failing", "DENIED"), ("Deployment/web-failing", "DENIED")):
        assert any(line.strip().startswith(kind) and verdict in line
                   for line in out.splitlines()), kind
    assert ('admission webhook "images.scapgate.io" denied the request: '
            'spec.containers[0].image') in out
    assert "package_inetutils-telnetd_removed" in out and "file_permissions_etc_shadow" in out
    # an RPM-based image denied with its own content's rules; Alpine admitted, named unsupported
    rpm = next(i for i, line in enumerate(out.splitlines()) if "Pod/app-rpm-failing" in line)
    assert "DENIED" in out.splitlines()[rpm] and "(fail;" in out.splitlines()[rpm]
    assert "rhel9 content, profile cis_server_l1" in out
    assert "package_telnet-server_removed" in out
    assert any(line.strip().startswith("Pod/app-alpine") and "ALLOWED" in line
               and "(unsupported;" in line for line in out.splitlines())
    assert "Warning: spec.containers[0].image: no SCAP content for alpine 3.20.3 " \
           "(ID=alpine VERSION_ID=3.20.3): not judged" in out
    report = next(line.split("saved to ")[1].split()[0] for line in out.splitlines()
                  if "saved to " in line)
    assert (REPO / report).read_bytes().lstrip().lower().startswith(b"<!doctype html")
    # it ends with the console's URL and token (the token file mode 0600)
    console = [line for line in out.splitlines() if "Console (" in line]
    assert console and "https://127.0.0.1:" in console[0]
    token = (REPO / ".state" / "console-token")
    assert f"token: {token.read_text().strip()}" in out
    assert token.stat().st_mode & 0o777 == 0o600
    leftovers = subprocess.run(["pgrep", "-f", "scapgate-demo-"], capture_output=True, text=True)
    assert leftovers.stdout == "", "the demo left processes running"
