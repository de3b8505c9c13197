"""Broken dependencies at the engine level: registries that are down, failing, slow or closed;
oscap missing, crashing or hanging; SCAP content missing or corrupt; scratch or state disk full.

Each fault must end in `scapgate scan` exit 2 with a message that names the cause, and in the
pipeline as an error ScanResult (the value workers store) with `permanent` set right:
transient (a retry can help: unreachable, timeout, 500, crash, disk full) or permanent (the same
inputs fail the same way: 404, 401, broken content, content that does not apply, limits).
The pipeline stays usable: once the fault clears, the same Pipeline object scans again.

Test doubles sit at our own seams only: a fake `oscap` earlier on PATH, a tiny HTTP server in
place of a registry, a tmpfs too small for a scan.
"""
from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.builders import imagebuild as ib
from tests.builders.hostile import POLICY, FakeRegistry, Scanner, dead_port
from webhook.policy.model import load as load_policy
from webhook.scan import content as content_mod
from webhook.scan import engine
from webhook.scan.images import parse
from webhook.scan.oscap import OscapSettings
from webhook.scan.pipeline import Pipeline, PipelineSettings
from webhook.scan.registry import (
    AuthError,
    DigestMismatch,
    NotFound,
    RegistryError,
    RegistrySettings,
    TooLarge,
    Unreachable,
    classify,
)
from webhook.scan.registry import Registry as RegistryClient

ANY_DIGEST = "sha256:" + "ab" * 32


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture
def content(scap_datastream):
    return content_mod.single(str(scap_datastream), ib.STANDARD_PROFILE)


@pytest.fixture
def make_pipeline(tmp_path):
    """make_pipeline(insecure=..., **settings) -> a Pipeline with its own state and scratch."""
    def make(*insecure: str, timeout_s: float = 30.0, scan_timeout_s: float = 300.0,
             state: Path | None = None, scratch: Path | None = None, certs_dir=None,
             auth_file=None) -> Pipeline:
        settings = PipelineSettings(state_dir=str(state or tmp_path / "state"),
                                    scratch_dir=str(scratch or tmp_path / "scratch"),
                                    oscap=OscapSettings(timeout_s=scan_timeout_s))
        reg = RegistryClient(RegistrySettings(timeout_s=timeout_s, insecure=frozenset(insecure),
                                              certs_dir=certs_dir, auth_file=auth_file))
        return Pipeline(settings, reg)
    return make


@pytest.fixture
def cli(tmp_path, scap_datastream):
    return Scanner(tmp_path / "cli", (), scap_datastream.parent)


def pinned(image) -> object:
    """The digest-pinned reference the pipeline scans."""
    return parse(str(image)).pinned(image.digest)


def assert_scan_error(result, phrase: str, permanent: bool) -> None:
    assert result.state == "error", result
    assert phrase.lower() in result.error.lower(), result.error
    assert result.permanent is permanent, result


def mounted_tmpfs(path: Path, size: str) -> Path:
    """A tmpfs of `size` at path (we run as root); skip when mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    return path


def unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mounts: list[Path] = []

    def make(name: str, size: str = "1m") -> Path:
        mounts.append(mounted_tmpfs(tmp_path / name, size))
        return mounts[-1]
    yield make
    for m in mounts:
        unmount(m)


# -- registries -----------------------------------------------------------------------------------

@pytest.fixture
def broken_registry(request, registry, auth_registry):
    """(host, reference, expected error class, permanent, phrase) for each kind of fault."""
    kind = request.param
    fake = None
    if kind == "down":
        host = f"127.0.0.1:{dead_port()}"
        case = (host, f"{host}/app:1", Unreachable, False, "connection refused")
    elif kind in ("500", "hang"):
        fake = FakeRegistry(kind)
        phrase = "500" if kind == "500" else "did not answer within 1 s"
        case = (fake.host, f"{fake.host}/app:1", Unreachable, False, phrase)
    elif kind == "404":
        case = (registry.host, f"{registry.host}/no/such-image:1", NotFound, True, "not found")
    elif kind == "401":
        case = (auth_registry.host, f"{auth_registry.host}/synthetic/good:1", AuthError, True,
                "no valid credentials")
    yield case
    if fake:
        fake.close()


REGISTRY_FAULTS = ["down", "500", "hang", "404", "401"]


@pytest.mark.parametrize("broken_registry", REGISTRY_FAULTS, indirect=True)
def test_registry_fault_cli_exits_2_with_the_cause(broken_registry, cli, auth_registry):
    host, ref, _, _, phrase = broken_registry
    t0 = time.monotonic()
    run = cli.scan(ref, env={"SCAPGATE_INSECURE_REGISTRIES": host,
                             "SCAPGATE_REGISTRY_TIMEOUT_S": "1",
                             "SCAPGATE_CERTS_DIR": str(auth_registry.certs_d)})
    assert run.rc == 2, run
    assert phrase.lower() in run.stderr.lower(), run
    assert f"cannot scan {ref}" in run.stderr
    assert time.monotonic() - t0 < 20, "a slow registry must not hold the scan"


@pytest.mark.parametrize("broken_registry", REGISTRY_FAULTS, indirect=True)
def test_registry_fault_is_a_stored_error_with_permanence(broken_registry, make_pipeline,
                                                        content, auth_registry):
    host, ref, cls, permanent, phrase = broken_registry
    pipeline = make_pipeline(host, timeout_s=1, certs_dir=str(auth_registry.certs_d))
    with pytest.raises(cls) as e:                       # the resolve step (admission) raises
        pipeline.registry.resolve(parse(ref))
    assert e.value.permanent is permanent
    t0 = time.monotonic()
    result = pipeline.scan(parse(ref).pinned(ANY_DIGEST), content)   # the worker stores this
    assert_scan_error(result, phrase, permanent)
    assert time.monotonic() - t0 < 10
    assert not any(Path(pipeline.settings.scratch_dir).iterdir())


def test_wrong_credentials_are_permanent(make_pipeline, content, auth_registry, images):
    pipeline = make_pipeline(certs_dir=str(auth_registry.certs_d))
    token = base64.b64encode(b"scapgate:wrong-password").decode()
    bad = {"auths": {auth_registry.host: {"auth": token}}}
    ref = parse(f"{auth_registry.host}/synthetic/good:1").pinned(ANY_DIGEST)
    assert_scan_error(pipeline.scan(ref, content, docker_config=bad), "no valid credentials",
                      True)


@pytest.mark.parametrize("stderr,cls,permanent", [
    # ports and digests hold "401"/"404": they must not decide the class
    ('pinging container registry 127.0.0.1:44011: invalid status code from registry 500 '
     '(Internal Server Error)', Unreachable, False),
    ('reading blob sha256:4040aa401b: fetching blob: received unexpected HTTP status: '
     '502 Bad Gateway', Unreachable, False),
    ('open /var/lib/scapgate/oci/blobs/x: permission denied', RegistryError, False),
    ('invalid status code from registry 403 (Forbidden)', AuthError, True),
    ('denied: requested access to the resource is denied', AuthError, True),
    ('writing blob: happened during read: Digest did not match, expected sha256:1, got '
     'sha256:2', DigestMismatch, False),
    ('writing blob: write /s/oci-put-blob1: file too large', TooLarge, True),
    ('writing blob: write /s/x: no space left on device', RegistryError, False),
], ids=["port-401", "digest-404", "local-permission", "403", "denied", "digest", "fsize",
        "enospc"])
def test_classify_reads_words_not_digits(stderr, cls, permanent):
    err = classify(parse("127.0.0.1:5000/app:1"), stderr)
    assert type(err) is cls and err.permanent is permanent, (type(err), err)


# -- oscap ----------------------------------------------------------------------------------------

FAKE_OSCAP = {
    "crash": 'kill -SEGV $$\n',
    "hang": '/bin/sleep 600 &\necho $! > {child}\nwait\n',    # oscap's env is not ours
}


@pytest.fixture
def fake_path(tmp_path, monkeypatch):
    """PATH with skopeo, umoci and prlimit, and an `oscap` of our choosing (or none)."""
    def make(kind: str | None) -> Path:
        bin_dir = tmp_path / f"bin-{kind}"
        bin_dir.mkdir()
        for tool in ("skopeo", "umoci", "prlimit"):
            (bin_dir / tool).symlink_to(shutil.which(tool))
        if kind:
            script = bin_dir / "oscap"
            body = FAKE_OSCAP[kind].format(child=tmp_path / "child.pid")
            script.write_text('#!/bin/sh\ncase "$1" in --version) exec /usr/bin/oscap "$@";; '
                              f'esac\n{body}')
            script.chmod(0o755)
        monkeypatch.setenv("PATH", str(bin_dir))
        return bin_dir
    return make


@pytest.mark.parametrize("kind,phrase", [
    (None, "oscap is not installed"),
    ("crash", "killed by signal SIGSEGV"),
    ("hang", "took longer than 2 s"),
], ids=["missing", "crash", "hang"])
def test_oscap_fault_is_transient_and_the_pipeline_recovers(kind, phrase, fake_path,
                                                            make_pipeline, content, images,
                                                            registry, monkeypatch, tmp_path):
    pipeline = make_pipeline(registry.host, scan_timeout_s=2)
    real_path = os.environ["PATH"]
    fake_path(kind)
    t0 = time.monotonic()
    result = pipeline.scan(pinned(images["good"]), content)
    assert_scan_error(result, phrase, False)
    assert time.monotonic() - t0 < 15, "a hanging oscap must not hold the worker"
    if kind == "hang":          # the whole process group went, not just the shell
        child = int((tmp_path / "child.pid").read_text())
        time.sleep(0.2)
        assert not _alive(child), "oscap's child outlived the timeout"
    assert not any(Path(pipeline.settings.scratch_dir).iterdir())
    monkeypatch.setenv("PATH", real_path)               # the fault clears
    pipeline.settings.oscap = OscapSettings()           # a real scan may take more than 2 s
    again = pipeline.scan(pinned(images["good"]), content)
    assert again.state == "done", again.error


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_oscap_missing_cli(cli, fake_path, images, registry):
    bin_dir = fake_path(None)
    run = cli.scan(images["good"], env={"SCAPGATE_INSECURE_REGISTRIES": registry.host,
                                        "PATH": str(bin_dir)})
    assert run.rc == 2 and "oscap is not installed" in run.stderr, run


# -- SCAP content ---------------------------------------------------------------------------------

def _policy_with(tmp_path: Path, **content_changes) -> Path:
    """The shipped policy judging with one datastream (profile standard) instead of its
    per-distribution content."""
    doc = yaml.safe_load(POLICY.read_text())
    doc["spec"]["content"] = {"profile": ib.STANDARD_PROFILE, **content_changes}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_content_missing_cli_exits_2(cli, tmp_path, images, registry):
    policy = _policy_with(tmp_path, datastream=str(tmp_path / "gone" / "ssg-debian12-ds.xml"))
    run = cli.scan(images["good"], policy=policy,
                   env={"SCAPGATE_INSECURE_REGISTRIES": registry.host})
    assert run.rc == 2, run
    assert "scap content" in run.stderr.lower() and "missing" in run.stderr.lower(), run


def test_content_missing_raises_before_any_scan(tmp_path, images, make_pipeline, registry):
    pol = load_policy(str(_policy_with(tmp_path, datastream=str(tmp_path / "nope.xml"))))
    with pytest.raises(content_mod.ContentError, match="missing"):
        engine.scan_image(str(images["good"]), pol.content(), make_pipeline(registry.host))


@pytest.mark.parametrize("corrupt,phrase", [
    (lambda data: data[: len(data) // 3], "unable to parse xml"),
    (lambda data: b"garbage\n", "unable to parse xml"),
], ids=["truncated", "garbage"])
def test_corrupt_content_is_permanent(corrupt, phrase, tmp_path, scap_datastream,
                                      make_pipeline, images, registry, cli):
    broken = tmp_path / "ssg-debian12-ds.xml"
    broken.write_bytes(corrupt(scap_datastream.read_bytes()))
    spec = content_mod.single(str(broken), ib.STANDARD_PROFILE)
    result = make_pipeline(registry.host).scan(pinned(images["good"]), spec)
    assert_scan_error(result, phrase, True)
    run = cli.scan(images["good"], policy=_policy_with(tmp_path, datastream=str(broken)),
                   env={"SCAPGATE_INSECURE_REGISTRIES": registry.host})
    assert run.rc == 2 and phrase in run.stderr.lower(), run


def test_unknown_profile_is_permanent(scap_datastream, make_pipeline, images, registry):
    spec = content_mod.single(str(scap_datastream), "xccdf_org.ssgproject.content_profile_nope")
    result = make_pipeline(registry.host).scan(pinned(images["good"]), spec)
    assert_scan_error(result, "no profile matching", True)


def test_content_that_does_not_apply_is_permanent(make_pipeline, images, registry, tmp_path,
                                                  scap_datastream):
    """Pitfall 4: the wrong datastream exits 0 with every rule notapplicable. A datastream not
    named after a product judges any identified image: Ubuntu's content on a Debian 12 image
    must be an error, never a pass."""
    other = tmp_path / "other-ds.xml"
    shutil.copy(scap_datastream.parent / "ssg-ubuntu2204-ds.xml", other)
    content = content_mod.single(str(other), ib.STANDARD_PROFILE)
    assert content.products() == ["*"]
    result = make_pipeline(registry.host).scan(pinned(images["good"]), content)
    assert_scan_error(result, "does not apply", True)
    assert "ID=debian VERSION_ID=12" in result.error and result.product == ""


def test_an_image_no_content_judges_is_unsupported_not_an_error(make_pipeline, content, images,
                                                                 registry):
    result = make_pipeline(registry.host).scan(pinned(images["nondebian"]), content)
    assert (result.state, result.permanent, result.product) == ("unsupported", True, "")
    assert result.error == ("no SCAP content for alpine 3.20.3 (ID=alpine VERSION_ID=3.20.3): "
                            "not judged")
    assert result.identity["distro"] == "alpine" and not result.rules


# -- disks ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def big_image(registry, tmp_path_factory):
    """The good root plus 2 MiB of random bytes: more than a 1 MiB tmpfs holds."""
    layout = tmp_path_factory.mktemp("big-oci")
    layer = ib.layer_from_entries(ib.synthetic_debian_entries()
                                  + [ib.file("opt/blob", os.urandom(2 << 20))])
    digest = ib.write_image(layout, "big", [layer])
    ref = registry.push(layout, "big", "deps/big:1")
    return parse(ref).pinned(digest)


def test_scratch_full_while_unpacking_is_transient(tiny_tmpfs, make_pipeline, content,
                                                   big_image, registry):
    pipeline = make_pipeline(registry.host, scratch=tiny_tmpfs("scratch"))
    result = pipeline.scan(big_image, content)
    assert_scan_error(result, "scratch space is full", False)
    assert not any(Path(pipeline.settings.scratch_dir).iterdir())


def test_scratch_full_while_oscap_writes_is_transient_then_recovers(tiny_tmpfs, tmp_path,
                                                                    make_pipeline, content,
                                                                    images, registry):
    """The synthetic root fits in 1 MiB, the 14 MB ARF does not."""
    scratch = tiny_tmpfs("scratch")
    pipeline = make_pipeline(registry.host, scratch=scratch)
    result = pipeline.scan(pinned(images["good"]), content)
    assert_scan_error(result, "scratch space is full", False)
    unmount(scratch)                                    # the fault clears
    again = pipeline.scan(pinned(images["good"]), content)
    assert again.state == "done", again.error


def test_state_disk_full_while_fetching_is_transient(tiny_tmpfs, make_pipeline, content,
                                                     big_image, registry):
    pipeline = make_pipeline(registry.host, state=tiny_tmpfs("state"))
    result = pipeline.scan(big_image, content)
    assert_scan_error(result, "full", False)


# -- the layout cache -----------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_cached_layer_is_dropped_and_fetched_again(damage, make_pipeline, content,
                                                           registry, tmp_path):
    layout = tmp_path / "oci"
    layer = ib.layer_from_entries(ib.synthetic_debian_entries()
                                  + [ib.file("etc/unique", os.urandom(8).hex())])
    digest = ib.write_image(layout, "c", [layer])
    ref = parse(registry.push(layout, "c", f"deps/cache-{damage}:1")).pinned(digest)
    pipeline = make_pipeline(registry.host)
    assert pipeline.scan(ref, content).state == "done"
    blob = Path(pipeline.settings.state_dir, "oci/blobs/sha256", layer.digest.split(":")[1])
    data = blob.read_bytes()
    blob.write_bytes(data[:-100] if damage == "truncate" else data[:-20] + b"\0" * 20)
    result = pipeline.scan(ref, content)
    assert_scan_error(result, "did not match its digest", False)
    assert pipeline.scan(ref, content).state == "done"      # fetched again
