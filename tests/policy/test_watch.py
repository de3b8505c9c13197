"""Reload without restart: valid changes apply to the next request, invalid ones are refused
and the previous policies stay in force, and readers never fail while the set is swapped."""
from __future__ import annotations

import os
import shutil
import threading
import time

import pytest

from tests.builders.policies import TODAY, doc, result, write
from webhook import policy as P
from webhook.policy.watch import PolicyStore, signature

pytestmark = pytest.mark.usefixtures("scap_datastream")


class ConfigMap:
    """A directory laid out the way the kubelet mounts a ConfigMap: the files live in a
    timestamped directory, `..data` points at it, and each key is a symlink through `..data`.
    An update writes a new directory and renames a new `..data` link over the old one."""

    def __init__(self, root):
        self.root = str(root)
        self.n = 0

    def publish(self, files: dict[str, dict | str]) -> None:
        self.n += 1
        new = os.path.join(self.root, f"..2026_06_01_{self.n:04d}")
        for name, document in files.items():
            write(os.path.join(new, name), document)
        tmp = os.path.join(self.root, "..data_tmp")
        os.symlink(os.path.basename(new), tmp)
        data = os.path.join(self.root, "..data")
        old = os.path.realpath(data) if os.path.islink(data) else None
        os.rename(tmp, os.path.join(self.root, "..data"))         # the atomic swap
        for name in files:
            link = os.path.join(self.root, name)
            if not os.path.islink(link):
                os.symlink(os.path.join("..data", name), link)
        for name in os.listdir(self.root):
            link = os.path.join(self.root, name)
            if os.path.islink(link) and not name.startswith(".") and name not in files:
                os.unlink(link)
        if old and old != os.path.realpath(new):
            shutil.rmtree(old)


def _policy(name="default", severity="medium", **kw):
    return doc(name, default=True, rules={"denySeverity": severity}, **kw)


@pytest.fixture
def cm(tmp_path):
    c = ConfigMap(tmp_path / "policies")
    c.publish({"default.yaml": _policy()})
    return c


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_valid_change_applies_to_the_next_call(cm):
    store = PolicyStore(cm.root, Clock(), check=None)
    assert store.current().policies[0].deny_severity == "medium"
    assert store.check() is False                     # nothing changed: nothing loaded
    cm.publish({"default.yaml": _policy(severity="high")})
    assert store.check() is True
    assert store.current().policies[0].deny_severity == "high"
    assert store.reload_count == 1 and store.last_error is None


def test_added_and_removed_files_are_seen(cm):
    store = PolicyStore(cm.root, check=None)
    cm.publish({"default.yaml": _policy(), "team.yaml": doc("team", match={"namespaces": ["t"]})})
    assert store.check() and store.current().select("t").name == "team"
    cm.publish({"default.yaml": _policy()})
    assert store.check() and store.current().select("t").name == "default"


def test_plain_directory_edits_are_seen_too(tmp_path):
    path = write(tmp_path / "p.yaml", _policy())
    store = PolicyStore(str(tmp_path), check=None)
    write(path, _policy(severity="low"))
    os.utime(path, ns=(time.time_ns() + 10**9,) * 2)   # same size within one mtime tick
    assert store.check() and store.current().policies[0].deny_severity == "low"


@pytest.mark.parametrize("bad", [
    {"default.yaml": "spec: [unclosed\n"},
    {"default.yaml": _policy(enforcement="block")},
    {"default.yaml": _policy(), "b.yaml": _policy()},                    # duplicate name
], ids=["yaml", "schema", "duplicate-name"])
def test_invalid_change_is_refused_and_previous_set_stays(cm, bad):
    clock = Clock()
    store = PolicyStore(cm.root, clock, check=None)
    before = store.current()
    clock.t = 2000.0
    cm.publish(bad)
    assert store.check() is False
    assert store.current() is before
    assert store.error_count == 1 and store.last_error and store.last_error_at == 2000.0
    assert store.status()["last_error"] == store.last_error
    assert store.check() is False and store.error_count == 1     # counted once, not per poll
    cm.publish({"default.yaml": _policy(severity="high")})
    assert store.check() is True and store.last_error is None
    assert store.status()["reload_errors"] == 1


def test_change_with_unusable_content_is_refused(cm):
    store = PolicyStore(cm.root)                       # default check: content must be usable
    d = _policy()
    d["spec"]["content"]["profile"] = "xccdf_org.ssgproject.content_profile_nope"
    cm.publish({"default.yaml": d})
    assert store.check() is False
    assert "profile-missing" in store.last_error
    assert store.current().policies[0].profile.endswith("_standard")


def test_first_load_failure_raises(tmp_path):
    write(tmp_path / "p.yaml", "kind: nothing\n")
    with pytest.raises(P.PolicyError):
        PolicyStore(str(tmp_path))


def test_signature_follows_the_data_link(cm):
    before = signature(cm.root)
    cm.publish({"default.yaml": _policy()})            # same text, new files
    assert signature(cm.root) != before


def test_reload_under_concurrent_requests_none_fails(cm):
    """Eight threads judge images in a loop while the ConfigMap flips between two valid
    versions and an invalid one; every call gets a complete, valid policy set."""
    store = PolicyStore(cm.root, interval_s=0.005, check=None).start()
    errors, seen, stop = [], set(), threading.Event()
    res = result(("file_permissions_etc_shadow", "medium", "fail"))

    def request():
        while not stop.is_set():
            try:
                pset = store.current()
                pol = pset.select("team-a", "docker.io/library/debian:12")
                v = P.evaluate(res, pol, image="docker.io/library/debian:12",
                               namespace="team-a", today=TODAY)
                assert v.allowed == (pol.deny_severity == "high")
                seen.add(pol.deny_severity)
                time.sleep(0.0005)     # a request does I/O; pure spinning would starve the writer
            except Exception as e:     # noqa: BLE001 - any failure is the test failing
                errors.append(repr(e))

    threads = [threading.Thread(target=request) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        versions = [_policy(severity="high"), "spec: [broken\n", _policy(severity="medium")]
        for i in range(30):
            cm.publish({"default.yaml": versions[i % 3]})
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join()
        store.stop()
    assert errors == []
    assert seen == {"medium", "high"}
    assert store.reload_count >= 2 and store.error_count >= 1


def test_start_is_idempotent_and_stop_ends_the_thread(cm):
    store = PolicyStore(cm.root, interval_s=0.01, check=None)
    store.start()
    thread = store._thread
    assert store.start()._thread is thread
    cm.publish({"default.yaml": _policy(severity="low")})
    deadline = time.time() + 5
    while store.current().policies[0].deny_severity != "low" and time.time() < deadline:
        time.sleep(0.01)
    assert store.current().policies[0].deny_severity == "low"
    store.stop()
    assert not thread.is_alive()


def test_on_reload_listeners_get_the_new_set(cm):
    store = PolicyStore(cm.root, check=None)
    got = []
    store.on_reload(got.append)
    cm.publish({"default.yaml": _policy(severity="high")})
    store.check()
    assert got == [store.current()]


@pytest.mark.parametrize("bad", ["apiVersion: [", "kind: ImagePolicy\n"], ids=["yaml", "schema"])
def test_on_error_listeners_hear_each_refused_change_once(cm, bad):
    """What the scapgate_policy_reloads{result="error"} metric counts."""
    store = PolicyStore(cm.root, check=None)
    errors = []
    store.on_error(errors.append)
    cm.publish({"default.yaml": bad})
    store.check()
    store.check()
    assert len(errors) == 1 and errors[0] == store.last_error


def test_watching_continues_in_a_forked_child(cm):
    """gunicorn --preload forks workers after create_app started the watcher."""
    store = PolicyStore(cm.root, interval_s=0.01, check=None).start()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # the child: a fresh process, no watcher yet
        try:
            store.current()                        # restarts the watcher in this process
            cm.publish({"default.yaml": _policy(severity="low")})
            deadline = time.time() + 5
            while store.current().policies[0].deny_severity != "low" and time.time() < deadline:
                time.sleep(0.01)
            os.write(w, store.current().policies[0].deny_severity.encode())
        finally:
            os._exit(0)
    os.close(w)
    got = os.read(r, 16).decode()
    os.waitpid(pid, 0)
    store.stop()
    assert got == "low"
