"""Several platforms of one image index, resolved against a real registry (skopeo): the
digest of every platform the nodes run, and a clear error when the index offers none."""
from __future__ import annotations

import pytest

from webhook.scan.images import parse
from webhook.scan.registry import PlatformMissing, Registry, RegistrySettings


@pytest.fixture
def client(registry) -> Registry:
    return Registry(RegistrySettings(insecure=frozenset({registry.host})))


def test_every_listed_platform_gets_its_own_manifest_digest(client, images):
    ref = parse(str(images["multiarch"]))
    digests, top = client.resolve_all(ref, ("linux/amd64", "linux/arm64"))
    assert [p for p, _ in digests] == ["linux/amd64", "linux/arm64"]
    assert digests[0][1] != digests[1][1] and top == images["multiarch"].digest
    assert digests[0][1] == client.resolve(ref, platform="linux/amd64")[0]
    assert digests[1][1] == client.resolve(ref, platform="linux/arm64")[0]


def test_platforms_the_index_lacks_are_left_out(client, images):
    digests, _ = client.resolve_all(parse(str(images["multiarch"])),
                                    ("linux/s390x", "linux/arm64"))
    assert [p for p, _ in digests] == ["linux/arm64"]


def test_an_index_with_none_of_the_platforms_names_what_it_offers(client, images):
    with pytest.raises(PlatformMissing) as e:
        client.resolve_all(parse(str(images["multiarch"])), ("linux/s390x", "linux/ppc64le"))
    assert "offers none of the platforms the nodes run (linux/s390x, linux/ppc64le)" in str(e.value)
    assert "it has: linux/amd64, linux/arm64" in str(e.value)


def test_a_plain_manifest_is_its_own_only_platform(client, images):
    digests, top = client.resolve_all(parse(str(images["good"])), ("linux/amd64", "linux/arm64"))
    assert digests == (("", top),)
