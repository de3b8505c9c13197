"""The container image: lint, build context, the capabilities a scanning container gets, and
the real build (private dockerd, locally made Debian 12 base) scanning the test registry.

The build is slow the first time (about 5 minutes: debootstrap, apt, pip) and cached after
that by the engine's layer cache and the base image's digest tag (scripts/image.py).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import ssl
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from tests.builders import distros
from tests.builders import imagebuild as ib
from tests.builders.webhooks import ApiServer, free_port

REPO = Path(__file__).resolve().parent.parent
TAG = "scapgate:test"
PACKAGES = {"openscap-scanner": "OPENSCAP_VERSION", "skopeo": "SKOPEO_VERSION",
            "umoci": "UMOCI_VERSION", "rpm-common": "RPM_COMMON_VERSION"}
BUILD_TIMEOUT_S = 2400


def scanner_caps() -> list[str]:
    """The capabilities the chart grants to containers that unpack images."""
    values = yaml.safe_load((REPO / "charts" / "scapgate" / "values.yaml").read_text())
    return sorted(values["scannerSecurityContext"]["capabilities"]["add"])


def needs_root(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


# -- lint and build context -------------------------------------------------------------------

def test_hadolint_passes():
    hadolint = Path(sys.executable).with_name("hadolint")
    proc = subprocess.run([str(hadolint), "--config", str(REPO / ".hadolint.yaml"),
                           str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_build_context_is_only_what_the_image_needs():
    """.dockerignore is an allow-list: no .git, .venv, .state (certificates, caches) or tests
    can reach a layer, and everything the Dockerfile copies is there."""
    from docker.utils.build import exclude_paths
    patterns = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    included = exclude_paths(str(REPO), patterns, dockerfile="Dockerfile")
    allowed = ("webhook/", "policies/", "content/")
    for path in included:
        assert path.startswith(allowed) or path in {
            "webhook", "policies", "content", "pyproject.toml", "requirements.txt",
            "scripts/install-content.sh", "Dockerfile", ".dockerignore"}, path
        assert "__pycache__" not in path
    for needed in ("pyproject.toml", "requirements.txt", "scripts/install-content.sh",
                   "webhook/cli.py", "policies/default.yaml",
                   "policies/schema/imagepolicy.schema.json"):
        assert needed in included


# -- capabilities: each one needed, the set sufficient --------------------------------------

#: Prints one line per entry of a root: path, type, mode, uid, gid, device, file capability.
LISTING = r"""
import os, stat, sys
root = sys.argv[1]
for dirpath, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(dirs + files) + ([""] if dirpath == root else []):
        p = os.path.join(dirpath, name) if name else dirpath
        st = os.lstat(p)
        try:
            cap = os.getxattr(p, "security.capability", follow_symlinks=False).hex()
        except OSError:
            cap = "-"
        dev = os.major(st.st_rdev), os.minor(st.st_rdev)
        print(os.path.relpath(p, root), stat.filemode(st.st_mode), st.st_uid, st.st_gid,
              dev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "", cap)
"""


def metadata_image(layout: Path) -> None:
    """An image whose every entry needs one of the capabilities to be unpacked exactly:
    foreign owners (CHOWN), setuid files of another user (FOWNER), setgid bits of groups we
    are not in (FSETID), files inside 0555 and 0700 directories (DAC_OVERRIDE), a device node
    (MKNOD), and a file capability like Debian's ping has (SETFCAP)."""
    entries = [
        ib.directory("etc"), ib.file("etc/shadow", "root:*:19000::::::\n", 0o640, 0, 42),
        ib.directory("root", 0o700), ib.file("root/.profile", "x", 0o600),
        ib.directory("ro", 0o555), ib.file("ro/file", "y", 0o444),
        ib.directory("usr"), ib.directory("usr/bin"),
        ib.file("usr/bin/expiry", "z", 0o2755, 0, 42), ib.file("usr/bin/su", "z", 0o4755),
        ib.file("usr/bin/theirs", "z", 0o4755, 100, 101),
        ib.directory("home"), ib.directory("home/u", 0o700, 1000, 1000),
        ib.file("home/u/.bashrc", "q", 0o600, 1000, 1000),
        ib.directory("dev"), ib.chardev("dev/null", 1, 3), ib.fifo("dev/initctl"),
        ib.directory("tmp", 0o1777), ib.directory("srv", 0o2775, 0, 50),
    ]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("usr/bin/ping")
        info.mode, info.size, info.mtime = 0o755, 4, ib.FIXED_MTIME
        cap = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)     # cap_net_raw=ep (v2)
        info.pax_headers = {"SCHILY.xattr.security.capability": cap.decode("latin-1")}
        tar.addfile(info, io.BytesIO(b"ping"))
    import gzip
    blob = gzip.compress(raw.getvalue(), mtime=0)
    caps_layer = ib.Layer(blob, ib.sha256_digest(blob), len(blob),
                          "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest())
    ib.write_image(layout, "meta", [ib.layer_from_entries(entries), caps_layer])


def unpack_listing(layout: Path, dest: Path, prefix: list[str] = ()) -> tuple[int, str]:
    proc = subprocess.run([*prefix, "umoci", "raw", "unpack", "--image", f"{layout}:meta",
                           str(dest)], capture_output=True, text=True, timeout=120)
    if proc.returncode:
        return proc.returncode, proc.stderr
    out = subprocess.run([sys.executable, "-c", LISTING, str(dest)], capture_output=True,
                         text=True, check=True, timeout=60)
    return 0, out.stdout


def bounded(caps) -> list[str]:
    """Run as root with only these capabilities (as runc does with capabilities.add)."""
    return ["setpriv", "--inh-caps=-all",
            "--bounding-set=-all" + "".join(f",+{c.lower()}" for c in caps), "--"]


@pytest.fixture(scope="module")
def meta_layout(tmp_path_factory) -> Path:
    layout = tmp_path_factory.mktemp("meta") / "oci"
    metadata_image(layout)
    return layout


@pytest.fixture(scope="module")
def full_root_listing(meta_layout, tmp_path_factory) -> str:
    needs_root("umoci", "setpriv")
    rc, listing = unpack_listing(meta_layout, tmp_path_factory.mktemp("full") / "root")
    assert rc == 0, listing
    for expect in ("usr/bin/expiry -rwxr-sr-x 0 42", "usr/bin/theirs -rwsr-xr-x 100 101",
                   "dev/null crw-rw-rw- 0 0 (1, 3)", "srv drwxrwsr-x 0 50",
                   "home/u/.bashrc -rw------- 1000 1000", "01000002002000"):
        assert expect in listing, expect
    return listing


def test_scanner_capabilities_suffice(meta_layout, full_root_listing, tmp_path):
    rc, listing = unpack_listing(meta_layout, tmp_path / "root", bounded(scanner_caps()))
    assert rc == 0, listing
    assert listing == full_root_listing


@pytest.mark.parametrize("dropped", [c for c in scanner_caps() if c != "SYS_CHROOT"])
def test_each_capability_is_needed(meta_layout, full_root_listing, tmp_path, dropped):
    """Without any one of them umoci fails, or the root differs from the image (a different
    filesystem gets scanned): none is granted for nothing. (SYS_CHROOT is for the rpm probes:
    test_rpm_images_are_judged_with_sys_chroot_only.)"""
    caps = [c for c in scanner_caps() if c != dropped]
    rc, listing = unpack_listing(meta_layout, tmp_path / "root", bounded(caps))
    assert rc != 0 or listing != full_root_listing


# -- the real image ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine():
    """The private dockerd of scripts/dockerd.sh; stopped afterwards if this module started it
    (its data root, the build cache, is kept)."""
    needs_root("debootstrap")
    script = REPO / "scripts" / "dockerd.sh"
    started = subprocess.run(["bash", str(script), "status"]).returncode != 0
    from scripts import image
    client = image.engine(timeout=BUILD_TIMEOUT_S)
    yield client
    client.close()
    if started:
        subprocess.run(["bash", str(script), "stop"], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def scapgate_image(engine):
    from scripts import image
    t0 = time.monotonic()
    # The base is the cached "good" debootstrap root; building "bad" in the same debootstrap
    # run now saves a second one when the debian_images fixture asks for it.
    ib.debootstrap_roots(("good", "bad"))
    image.ensure_image(engine, TAG, log=lambda line: print(line, file=sys.stderr))
    print(f"image ready in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return engine.images.get(TAG)


def run(engine, *args, entrypoint=None, user="0", caps=None, env=None, volumes=None,
        detach=False):
    """A container as the chart runs it: read-only root, tmpfs scratch/state/tmp (writable by
    all, like emptyDir), every capability dropped but `caps`, no privilege escalation, host
    network (the engine has no bridge)."""
    caps = scanner_caps() if caps is None else caps
    ctr = engine.containers.run(
        TAG, list(args), entrypoint=entrypoint, user=user, network_mode="host",
        read_only=True, tmpfs={d: "mode=1777" for d in ("/tmp", "/scratch", "/var/lib/scapgate")},
        cap_drop=["ALL"], cap_add=caps, security_opt=["no-new-privileges"],
        environment=env or {}, volumes=volumes or {}, detach=True)
    if detach:
        return ctr
    try:
        rc = ctr.wait(timeout=600)["StatusCode"]
        return rc, ctr.logs().decode(errors="replace")
    finally:
        ctr.remove(force=True)


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_image_has_the_versions_the_tests_use(engine, scapgate_image, scap_datastream):
    script = ("dpkg-query -W -f='${Package} ${Version}\\n' " + " ".join(PACKAGES) +
              "; echo ssg-debian $(cat /opt/scapgate/content/ssg-debian.version)"
              "; echo datastream $(sha256sum < /opt/scapgate/content/ssg-debian12-ds.xml)")
    rc, out = run(engine, "-c", script, entrypoint="sh")
    assert rc == 0, out
    inside = dict(line.split()[:2] for line in out.splitlines())
    for package in PACKAGES:
        host = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                              capture_output=True, text=True, check=True).stdout
        assert inside[package] == host, package
    version = (scap_datastream.parent / "ssg-debian.version").read_text().strip()
    assert inside["ssg-debian"] == version
    assert inside["datastream"] == hashlib.sha256(scap_datastream.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_image_is_non_root_and_has_no_setuid_files(engine, scapgate_image):
    assert scapgate_image.attrs["Config"]["User"] == "10001:10001"
    rc, out = run(engine, "/", "-xdev", "-type", "f", "-perm", "/6000", entrypoint="find")
    assert rc == 0 and out.strip() == "", out


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_unpack_in_the_container_keeps_every_detail(engine, scapgate_image, meta_layout,
                                                    full_root_listing):
    """Inside a real runtime (seccomp, no-new-privileges, tmpfs scratch) the chart's
    capabilities still give exactly the root umoci makes with all of them."""
    script = (f"umoci raw unpack --image /layout:meta /scratch/root >/dev/null 2>&1 && "
              f"python3 -c '{LISTING}' /scratch/root")
    rc, out = run(engine, "-c", script, entrypoint="sh",
                  volumes={str(meta_layout): {"bind": "/layout", "mode": "ro"}})
    assert rc == 0, out
    assert out == full_root_listing


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
@pytest.mark.parametrize("kind", ["synthetic", "debian"])
@pytest.mark.parametrize("name, rc", [("good", 0), ("bad", 1)])
def test_scan_in_the_image(engine, scapgate_image, registry, request, kind, name, rc):
    """`scapgate scan` in the image against the test registry: 0 allows, 1 denies."""
    images = request.getfixturevalue("images" if kind == "synthetic" else "debian_images")
    code, out = run(engine, "scan", str(images[name]),
                    env={"SCAPGATE_INSECURE_REGISTRIES": registry.host})
    assert code == rc, out
    assert ("verdict: ALLOW" if rc == 0 else "verdict: DENY") in out
    if rc:
        assert "file_permissions_etc_shadow" in out and "package_inetutils-telnetd_removed" in out


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_rpm_images_are_judged_with_sys_chroot_only(engine, scapgate_image, registry):
    """oscap's rpminfo probe chroot()s into the unpacked root: with the chart's capabilities an
    RPM-based image is judged with its own content and denied naming its rules; without
    SYS_CHROOT the rpm probes cannot look and the verdict would not be the image's."""
    img = distros.rpm_root("bad")
    ref = registry.push(img.layout, img.tag, "docker-test/rhel9-bad:1")
    env = {"SCAPGATE_INSECURE_REGISTRIES": registry.host}
    code, out = run(engine, "scan", ref, env=env)
    assert code == 1, out
    assert "rhel9" in out and "package_telnet-server_removed" in out
    assert "file_permissions_etc_shadow" in out
    code, out = run(engine, "scan", ref, env=env,
                    caps=[c for c in scanner_caps() if c != "SYS_CHROOT"])
    assert not (code == 1 and "package_telnet-server_removed" in out), out


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_webhook_serves_from_the_image_as_non_root(engine, scapgate_image, tmp_path):
    """The HA webhook pod: the image's own user, no capabilities at all, read-only root."""
    certs = tmp_path / "tls"
    subprocess.run([str(REPO / ".venv" / "bin" / "scapgate"), "certs", "--service", "scapgate",
                    "--namespace", "scapgate", "--out", str(certs)], check=True,
                   capture_output=True, timeout=60)
    for f in certs.iterdir():
        f.chmod(0o644)                       # as a Secret volume presents them (defaultMode)
    port = free_port()
    ctr = run(engine, "serve", "--bind", f"127.0.0.1:{port}", "--cert", "/etc/scapgate/tls/tls.crt",
              "--key", "/etc/scapgate/tls/tls.key", "--policy", "/opt/scapgate/app/policies",
              "--state-dir", "/var/lib/scapgate", user="", caps=[], detach=True,
              env={"SCAPGATE_EMBEDDED_WORKERS": "false"},
              volumes={str(certs): {"bind": "/etc/scapgate/tls", "mode": "ro"}})
    try:
        client = ApiServer(port, str(certs / "ca.crt"), server_name="scapgate.scapgate.svc")
        deadline, status = time.monotonic() + 90, None
        while time.monotonic() < deadline:
            ctr.reload()
            assert ctr.status in ("created", "running"), ctr.logs().decode()[-3000:]
            try:
                status, _, body = client.request("GET", "/readyz")
                if status == 200:
                    break
            except (OSError, ssl.SSLError):
                client.close()
            time.sleep(0.5)
        assert status == 200, ctr.logs().decode()[-3000:]
        assert json.loads(body)["checks"]["oscap"] == "ok"
        top = ctr.top(ps_args="-o pid,uid,args")
        uids = {p[1].strip() for p in top["Processes"]}
        assert uids == {"10001"}, top
    finally:
        client.close()
        ctr.remove(force=True)
