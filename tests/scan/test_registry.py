"""Registry errors and platform selection: the pure parts of registry access.

The real registry paths (auth, 404, unreachable, multi-arch) run in test_scan.py against a
registry the tests start.
"""
import pytest

from webhook.scan.images import parse
from webhook.scan.registry import (
    AuthError,
    NotFound,
    PlatformMissing,
    Unreachable,
    classify,
    pick_platform,
)

REF = parse("127.0.0.1:5000/app:1")
INDEX = {"manifests": [
    {"digest": "sha256:" + "1" * 64, "platform": {"os": "linux", "architecture": "amd64"}},
    {"digest": "sha256:" + "2" * 64, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
    {"digest": "sha256:" + "3" * 64, "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
]}


@pytest.mark.parametrize("platform,digit", [
    ("linux/amd64", "1"), ("linux/arm64", "2"), ("linux/arm64/v8", "2"), ("linux/arm/v7", "3"),
])
def test_pick_platform(platform, digit):
    assert pick_platform(INDEX, platform, REF) == "sha256:" + digit * 64


def test_missing_platform_names_what_exists():
    with pytest.raises(PlatformMissing) as e:
        pick_platform(INDEX, "linux/s390x", REF)
    assert "linux/amd64" in str(e.value) and e.value.permanent


@pytest.mark.parametrize("stderr,cls,permanent", [
    ("reading manifest 1: unauthorized: authentication required", AuthError, True),
    ("requested access to the resource is denied", AuthError, True),
    ("reading manifest 1 in 127.0.0.1:5000/app: manifest unknown", NotFound, True),
    ("pinging container registry 127.0.0.1:5000: dial tcp: connect: connection refused",
     Unreachable, False),
], ids=["401", "denied", "404", "refused"])
def test_classify(stderr, cls, permanent):
    err = classify(REF, stderr)
    assert isinstance(err, cls) and err.permanent is permanent
    assert "127.0.0.1:5000" in str(err)
