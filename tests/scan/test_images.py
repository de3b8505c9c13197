"""Image references normalise the way runtimes resolve them: one image, one name."""
import pytest

from webhook.scan.images import ReferenceError, parse

D = "sha256:" + "a" * 64


@pytest.mark.parametrize("ref,expected", [
    ("nginx", "docker.io/library/nginx:latest"),
    ("nginx:1.25", "docker.io/library/nginx:1.25"),
    ("docker.io/library/nginx", "docker.io/library/nginx:latest"),
    ("index.docker.io/nginx", "docker.io/library/nginx:latest"),
    ("registry-1.docker.io/library/nginx:1", "docker.io/library/nginx:1"),
    ("bitnami/redis", "docker.io/bitnami/redis:latest"),
    ("localhost/x", "localhost/x:latest"),
    ("localhost:5000/x", "localhost:5000/x:latest"),
    ("127.0.0.1:5000/team/app:v1", "127.0.0.1:5000/team/app:v1"),
    ("Quay.IO/org/app:v1", "quay.io/org/app:v1"),
    (f"nginx@{D}", f"docker.io/library/nginx@{D}"),
    (f"nginx:1.25@{D}", f"docker.io/library/nginx:1.25@{D}"),
    ("[::1]:5000/x:y", "[::1]:5000/x:y"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None)
def test_normalise(ref, expected):
    assert str(parse(ref)) == expected


def test_same_image_same_name():
    names = {parse(r).name for r in ("x", "docker.io/x", "docker.io/library/x", "index.docker.io/library/x:latest")}
    assert names == {"docker.io/library/x"}


def test_digest_wins_for_transport():
    ref = parse(f"nginx:1.25@{D}")
    assert ref.transport() == f"docker://docker.io/library/nginx@{D}"


@pytest.mark.parametrize("ref", [
    "", " nginx", "nginx ", "Nginx", "nginx:", "nginx@sha256:abc", "nginx:bad tag",
    "a" * 600, "nginx:" + "t" * 200, "-bad/x", "x//y", "host:99999999/x",
], ids=lambda v: repr(v)[:30])
def test_invalid(ref):
    with pytest.raises(ReferenceError):
        parse(ref)


def test_non_string():
    with pytest.raises(ReferenceError):
        parse(None)  # type: ignore[arg-type]
