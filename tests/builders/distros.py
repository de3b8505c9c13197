"""Test images for every distribution scapgate judges, and the plain-tool truth about them.

Each image function returns a :class:`DistroImage`: a cached OCI layout + tag under
imagebuild's cache dir (``$SCAPGATE_CACHE_DIR``, else /var/cache/scapgate-test), keyed by the
sha256 of its recipe and built on first use. Layers are written with imagebuild's
byte-exact writers (numeric uid/gid, every mode bit: DESIGN.md pitfall 5).

"Plain tools" means oscap 1.3.7 run by hand, not through webhook code: see :func:`plain_scan`.
The verdicts below were measured that way; each constant says how. Other tests compare
scapgate's verdicts to them.

Copied from imagebuild because they are private there (kept minimal): ``_sh`` (run a shell
recipe).
"""
from __future__ import annotations

import base64
import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from tests.builders import imagebuild as ib
from tests.builders.imagebuild import RULE_PREFIX as R

RECIPE_VERSION = 1  # bump when the way any image below is written changes

STANDARD = "xccdf_org.ssgproject.content_profile_standard"
CIS_SERVER_L1 = "xccdf_org.ssgproject.content_profile_cis_server_l1"

DS_DEBIAN11 = "ssg-debian11-ds.xml"
DS_DEBIAN12 = "ssg-debian12-ds.xml"
DS_DEBIAN13 = "ssg-debian13-ds.xml"
DS_UBUNTU2204 = "ssg-ubuntu2204-ds.xml"
DS_RHEL8 = "ssg-rhel8-ds.xml"
DS_RHEL9 = "ssg-rhel9-ds.xml"

# --------------------------------------------------------------------------- measured truth
# All measured with plain_scan(): oscap 1.3.7 `xccdf eval --skip-valid --profile P
# --results-arf`, root unpacked with `umoci raw unpack` as root, /.dockerenv created,
# OSCAP_PROBE_ROOT, neutral APT_CONFIG, HOME = private dir with `.rpmmacros` =
# `%_dbpath /var/lib/rpm` (rpm_fix=True). Content: SSG 0.1.76 (ssg-debian, ssg-debderived,
# ssg-nondebian) and 0.1.82 for ssg-debian13-ds.xml. "fails" = rule ids whose result is fail.

TELNET_SERVER = R + "package_telnet-server_removed"
SHADOW_PERMS = R + "file_permissions_etc_shadow"
INETUTILS_TELNETD = R + "package_inetutils-telnetd_removed"

#: What the minimal RHEL-like roots fail whatever their kind (no PAM/authselect/
#: crypto-policies configuration, no /etc/security/opasswd, no umask in /etc/profile, no
#: /proc for root_path_no_dot): measured identical for rhel8 and rhel9, good and bad.
#: Severities: configure_crypto_policy high, root_path_no_dot unknown, the others medium.
RHEL_BASELINE_FAILS = frozenset(R + r for r in (
    "account_password_pam_faillock_password_auth",
    "account_password_pam_faillock_system_auth",
    "accounts_umask_etc_profile",
    "configure_crypto_policy",
    "enable_authselect",
    "file_etc_security_opasswd",
    "root_path_no_dot",
))
#: rpm_root("good"), ssg-rhel9-ds.xml, cis_server_l1 (288 rules): rc 2, 77 pass, 7 fail
#: (the baseline), 204 notapplicable; TELNET_SERVER and SHADOW_PERMS pass.
RHEL9_GOOD_FAILS = RHEL_BASELINE_FAILS
#: rpm_root("bad") (+ telnet-server RPM, /etc/shadow 0666), same content: rc 2, 75 pass, 9 fail.
RHEL9_BAD_FAILS = RHEL_BASELINE_FAILS | {TELNET_SERVER, SHADOW_PERMS}
#: Same images and profile with rpm_fix=False (Debian's `%_dbpath ~/.rpmdb` in force): rc 0,
#: all 288 rules notapplicable, good and bad alike; the only hint is stderr "RPM: Failed to
#: open shell expansion pipe for command: bash -c 'echo ~/.rpmdb'". The trap.
RHEL9_TRAP_PASS_FAIL = 0
#: rpm_root(kind, release="8") (redhat-release 8.10) with ssg-rhel8-ds.xml, cis_server_l1
#: (297 rules): good rc 2, 79 pass, 7 fail, 211 notapplicable; bad 77 pass, 9 fail. The same
#: with the Berkeley DB rpmdb (default, as real RHEL 8) and with db="sqlite". Without
#: rpm_fix: all 297 notapplicable, as for RHEL 9.
RHEL8_GOOD_FAILS = RHEL_BASELINE_FAILS
RHEL8_BAD_FAILS = RHEL_BASELINE_FAILS | {TELNET_SERVER, SHADOW_PERMS}

#: ubuntu_root("bad") with ssg-ubuntu2204-ds.xml, standard (45 rules): rc 2, 16 pass, 2 fail,
#: 26 notapplicable, 1 notchecked. Good: rc 0, 18 pass. With ssg-debian12-ds.xml (wrong
#: content) both: rc 0, all 44 notapplicable.
UBUNTU2204_BAD_FAILS = frozenset({INETUTILS_TELNETD, SHADOW_PERMS})
UBUNTU2204_GOOD_FAILS: frozenset = frozenset()

#: distroless_root("bad") with ssg-debian12-ds.xml, standard, AS SHIPPED (status.d only, no
#: dpkg tables): rc 0, 18 pass, INETUTILS_TELNETD passes; stderr "dpkginfo_init has failed".
#: Adding only the dpkg tables, or only merging status.d, changes nothing: still rc 0. The trap.
DISTROLESS_BAD_FAILS_PLAIN: frozenset = frozenset()
#: The same root after merge_status_d() AND ensure_dpkg_tables(): rc 2, 17 pass, this fails.
DISTROLESS_BAD_FAILS_MERGED = frozenset({INETUTILS_TELNETD})

#: debootstrap_version("bullseye", kind) with ssg-debian11-ds.xml (0.1.76), standard (43
#: results): good rc 0, 18 pass, 25 notapplicable; bad (imagebuild.BAD_SCRIPT: openssh-server
#: + inetutils-telnetd, PermitRootLogin yes, shadow 0666) rc 2, 16 pass, these 2 fail; the
#: sshd setting is not checked (notapplicable), as on Debian 12. With ssg-debian12-ds.xml:
#: all notapplicable.
DEBIAN11_BAD_FAILS = frozenset({INETUTILS_TELNETD, SHADOW_PERMS})
DEBIAN11_GOOD_FAILS: frozenset = frozenset()
#: debootstrap_version("trixie", kind) (debian_version 13.x) with ssg-debian13-ds.xml
#: (0.1.82), standard (44): good rc 0, 17 pass, 27 notapplicable; bad rc 2, 15 pass, these 2
#: fail. Same ids as imagebuild.BAD_ROOT_FAILS (Debian 12).
DEBIAN13_BAD_FAILS = frozenset({INETUTILS_TELNETD, SHADOW_PERMS})
DEBIAN13_GOOD_FAILS: frozenset = frozenset()

#: alpine_root(), busybox_root(), scratch_image() with ssg-debian12-ds.xml, standard: rc 0,
#: pass + fail == 0 (every rule notapplicable): no content applies. DESIGN pitfall 4.
NO_CONTENT_PASS_FAIL = 0

#: (image name, kind, datastream, profile, prepared) -> failing rule ids, for table lookups.
#: prepared = "plain" (oscap as-is on the unpacked root) or "merged" (after merge_status_d
#: and ensure_dpkg_tables). RPM rows are with rpm_fix (without it: nothing applies).
MEASURED_FAILS: dict[tuple[str, str, str, str, str], frozenset] = {
    ("rhel9", "good", DS_RHEL9, CIS_SERVER_L1, "plain"): RHEL9_GOOD_FAILS,
    ("rhel9", "bad", DS_RHEL9, CIS_SERVER_L1, "plain"): RHEL9_BAD_FAILS,
    ("rhel8", "good", DS_RHEL8, CIS_SERVER_L1, "plain"): RHEL8_GOOD_FAILS,
    ("rhel8", "bad", DS_RHEL8, CIS_SERVER_L1, "plain"): RHEL8_BAD_FAILS,
    ("ubuntu2204", "good", DS_UBUNTU2204, STANDARD, "plain"): UBUNTU2204_GOOD_FAILS,
    ("ubuntu2204", "bad", DS_UBUNTU2204, STANDARD, "plain"): UBUNTU2204_BAD_FAILS,
    ("distroless12", "good", DS_DEBIAN12, STANDARD, "plain"): frozenset(),
    ("distroless12", "bad", DS_DEBIAN12, STANDARD, "plain"): DISTROLESS_BAD_FAILS_PLAIN,
    ("distroless12", "good", DS_DEBIAN12, STANDARD, "merged"): frozenset(),
    ("distroless12", "bad", DS_DEBIAN12, STANDARD, "merged"): DISTROLESS_BAD_FAILS_MERGED,
    ("debian11", "good", DS_DEBIAN11, STANDARD, "plain"): DEBIAN11_GOOD_FAILS,
    ("debian11", "bad", DS_DEBIAN11, STANDARD, "plain"): DEBIAN11_BAD_FAILS,
    ("debian13", "good", DS_DEBIAN13, STANDARD, "plain"): DEBIAN13_GOOD_FAILS,
    ("debian13", "bad", DS_DEBIAN13, STANDARD, "plain"): DEBIAN13_BAD_FAILS,
}


# --------------------------------------------------------------------------- paths

def content_dir() -> Path:
    """$SCAPGATE_CONTENT_DIR, else <repo>/.state/content when it has manifest.json, else
    /tmp/content-test."""
    env = os.environ.get("SCAPGATE_CONTENT_DIR")
    if env:
        return Path(env)
    state = ib.REPO_ROOT / ".state" / "content"
    if (state / "manifest.json").exists():
        return state
    return Path("/tmp/content-test")


def datastream(name: str) -> Path:
    """Path of a datastream by file name, e.g. datastream('ssg-rhel9-ds.xml')."""
    return content_dir() / name


# --------------------------------------------------------------------------- images

@dataclass(frozen=True)
class DistroImage:
    """A cached image: skopeo/umoci source is ``oci:<layout>:<tag>``.

    datastream/profile: the content that applies (file name in the content dir; "" when none
    does). fails: frozenset of rule ids a correct scan fails with that content (distroless:
    after merge_status_d + ensure_dpkg_tables; RPM roots: with the rpmdb path fixed). expect:
    pass / fail / notapplicable; the RHEL "good" roots say fail (RHEL_BASELINE_FAILS: the
    good/bad difference is TELNET_SERVER + SHADOW_PERMS). Attribute names match
    imagebuild.CachedImage (kind, layout, tag, digest, fails, expect); its fails is a dict
    id -> severity, so iterate (both give ids) rather than compare the types.
    """
    name: str
    kind: str
    layout: Path
    tag: str
    digest: str
    datastream: str = ""
    profile: str = ""
    fails: frozenset = frozenset()
    build_seconds: float | None = None

    @property
    def expect(self) -> str:
        if not self.datastream:
            return "notapplicable"
        return "fail" if self.fails else "pass"

    @property
    def ref(self) -> str:
        return f"oci:{self.layout}:{self.tag}"


def _images_dir(cache: str | os.PathLike | None) -> Path:
    images = Path(cache or ib.cache_dir()) / "images"
    images.mkdir(parents=True, exist_ok=True)
    return images


def _read_meta(path: Path) -> dict | None:
    meta = path / "image.json"
    return json.loads(meta.read_text()) if meta.exists() else None


def _publish(staging: Path, final: Path, recipe: dict, tag: str, digest: str,
             seconds: float) -> None:
    """Metadata into the staging layout, then one atomic rename into the cache."""
    (staging / "recipe.json").write_text(json.dumps(recipe, indent=1, sort_keys=True))
    (staging / "image.json").write_text(json.dumps(
        {"tag": tag, "digest": digest, "build_seconds": round(seconds, 2),
         "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    if final.exists():  # only a stale entry can be there (rename is atomic)
        shutil.rmtree(final)
    os.rename(staging, final)


def _cached(recipe: dict, tag: str, build: Callable[[Path, Path], str], *,
            cache: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """The layout for this recipe, built by ``build(staging_layout, workdir) -> digest`` on a
    miss, under a per-recipe file lock so concurrent test processes build it once."""
    images = _images_dir(cache)
    key = ib.recipe_hash(recipe)
    final = images / key
    meta = _read_meta(final)
    if meta:
        return final, meta
    with open(images / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        meta = _read_meta(final)
        if meta is None:
            work = Path(tempfile.mkdtemp(prefix=".build-", dir=images))
            try:
                start = time.monotonic()
                staging = work / "oci"
                digest = build(staging, work)
                _publish(staging, final, recipe, tag, digest, time.monotonic() - start)
            finally:
                ib.unmount_below(work)
                shutil.rmtree(work, ignore_errors=True)
            meta = _read_meta(final)
    return final, meta


def _image(name: str, kind: str, path: Path, meta: dict, ds: str = "", profile: str = "",
           fails: Iterable[str] = ()) -> DistroImage:
    return DistroImage(name, kind, path, meta["tag"], meta["digest"], ds, profile,
                       frozenset(fails), meta.get("build_seconds"))


def _entries_recipe(name: str, entries: Sequence[ib.Entry], **extra) -> dict:
    """A synthetic image's recipe is its exact entries (data hashed), so any byte change in
    them or in imagebuild's writers' inputs gives a new cache entry."""
    listed = [{**dataclasses.asdict(e), "data": ib.sha256_digest(e.data)} for e in entries]
    return {"version": RECIPE_VERSION, "builder": "distros.synthetic", "name": name,
            "entries": listed, **extra}


def _synthetic(name: str, kind: str, entries: Sequence[ib.Entry], *, config: dict | None = None,
               cache=None) -> tuple[Path, dict]:
    tag = f"{name}-{kind}" if kind else name
    recipe = _entries_recipe(name, entries, config=config, tag=tag)

    def build(staging: Path, _work: Path) -> str:
        return ib.write_image(staging, tag, [ib.layer_from_entries(entries)], config=config)

    return _cached(recipe, tag, build, cache=cache)


def _check_kind(kind: str) -> None:
    if kind not in ("good", "bad"):
        raise ValueError(f"kind must be 'good' or 'bad', not {kind!r}")


def _replace(entries: list[ib.Entry], path: str, **changes) -> list[ib.Entry]:
    if not any(e.path == path for e in entries):
        raise KeyError(path)
    return [dataclasses.replace(e, **changes) if e.path == path else e for e in entries]


def _drop(entries: list[ib.Entry], *paths: str) -> list[ib.Entry]:
    return [e for e in entries if e.path not in paths]


# --------------------------------------------------------------------------- RPM (RHEL-like)

OS_RELEASE_RHEL = {
    "9": """\
NAME="Red Hat Enterprise Linux"
VERSION="9.4 (Plow)"
ID="rhel"
ID_LIKE="fedora"
VERSION_ID="9.4"
PLATFORM_ID="platform:el9"
PRETTY_NAME="Red Hat Enterprise Linux 9.4 (Plow)"
ANSI_COLOR="0;31"
LOGO="fedora-logo-icon"
CPE_NAME="cpe:/o:redhat:enterprise_linux:9::baseos"
HOME_URL="https://www.redhat.com/"
REDHAT_SUPPORT_PRODUCT="Red Hat Enterprise Linux 9"
REDHAT_SUPPORT_PRODUCT_VERSION="9.4"
""",
    "8": """\
NAME="Red Hat Enterprise Linux"
VERSION="8.10 (Ootpa)"
ID="rhel"
ID_LIKE="fedora"
VERSION_ID="8.10"
PLATFORM_ID="platform:el8"
PRETTY_NAME="Red Hat Enterprise Linux 8.10 (Ootpa)"
ANSI_COLOR="0;31"
CPE_NAME="cpe:/o:redhat:enterprise_linux:8::baseos"
HOME_URL="https://www.redhat.com/"
REDHAT_SUPPORT_PRODUCT="Red Hat Enterprise Linux 8"
REDHAT_SUPPORT_PRODUCT_VERSION="8.10"
""",
}
RHEL_RELEASE = {"9": ("9.4", "0.5.el9", "Plow"), "8": ("8.10", "1.0.el8", "Ootpa")}

RHEL_PASSWD = """\
root:x:0:0:root:/root:/bin/bash
bin:x:1:1:bin:/bin:/sbin/nologin
daemon:x:2:2:daemon:/sbin:/sbin/nologin
adm:x:3:4:adm:/var/adm:/sbin/nologin
nobody:x:65534:65534:Kernel Overflow User:/:/sbin/nologin
"""
RHEL_GROUP = "root:x:0:\nbin:x:1:\ndaemon:x:2:\nsys:x:3:\nadm:x:4:\nnobody:x:65534:\n"
RHEL_SHADOW = "".join(f"{u}:*:19800:0:99999:7:::\n" for u in ("root", "bin", "daemon", "adm", "nobody"))
RHEL_GSHADOW = "".join(f"{g}:::\n" for g in ("root", "bin", "daemon", "sys", "adm", "nobody"))

SPEC_TEMPLATE = """\
Name: {name}
Version: {version}
Release: {release}
Summary: {name} for scapgate tests
License: MIT
BuildArch: noarch
{extra}
%description
Synthetic package written by tests/builders/distros.py.

%prep

%build

%install
{install}

%files
{files}
"""


@dataclass(frozen=True)
class RpmFile:
    """One path an RPM owns: a file (data), a symlink (link) or a directory (is_dir)."""
    path: str
    data: str = ""
    mode: int = 0o644
    link: str = ""
    is_dir: bool = False


def spec_text(name: str, version: str, release: str, files: Sequence[RpmFile],
              extra: str = "") -> str:
    """A minimal noarch spec installing exactly ``files`` with explicit %attr modes (root)."""
    install, listed = [], []
    for f in files:
        dest = "%{buildroot}" + f.path
        if f.is_dir:
            install.append(f"mkdir -p '{dest}'")
            listed.append(f"%dir %attr({f.mode:04o},root,root) {f.path}")
            continue
        install.append(f"mkdir -p \"$(dirname '{dest}')\"")
        if f.link:
            install.append(f"ln -s '{f.link}' '{dest}'")
            listed.append(f.path)
        else:
            b64 = base64.b64encode(f.data.encode()).decode()
            install.append(f"echo '{b64}' | base64 -d > '{dest}'")
            listed.append(f"%attr({f.mode:04o},root,root) {f.path}")
    return SPEC_TEMPLATE.format(name=name, version=version, release=release, extra=extra,
                                install="\n".join(install), files="\n".join(listed))


def rhel_specs(kind: str, major: str = "9") -> dict[str, str]:
    """Spec texts of the packages in the RHEL-like root: filesystem, setup, redhat-release
    (+ telnet-server in the bad kind)."""
    _check_kind(kind)
    version, release, codename = RHEL_RELEASE[major]
    dirs = ["/etc", "/usr", "/usr/bin", "/usr/lib", "/usr/sbin", "/var", "/var/lib", "/root"]
    specs = {
        "filesystem": spec_text("filesystem", "3.16", f"2.el{major}",
                                [RpmFile(d, is_dir=True, mode=0o550 if d == "/root" else 0o755)
                                 for d in dirs]),
        "setup": spec_text("setup", "2.13.7", f"10.el{major}", [
            RpmFile("/etc/passwd", RHEL_PASSWD, 0o644),
            RpmFile("/etc/group", RHEL_GROUP, 0o644),
            RpmFile("/etc/shadow", RHEL_SHADOW, 0o000),
            RpmFile("/etc/gshadow", RHEL_GSHADOW, 0o000),
        ]),
        "redhat-release": spec_text("redhat-release", version, release, [
            RpmFile("/etc/redhat-release",
                    f"Red Hat Enterprise Linux release {version} ({codename})\n"),
            RpmFile("/usr/lib/os-release", OS_RELEASE_RHEL[major]),
            RpmFile("/etc/os-release", link="../usr/lib/os-release"),
            RpmFile("/etc/system-release", link="redhat-release"),
            RpmFile("/etc/system-release-cpe", f"cpe:/o:redhat:enterprise_linux:{major}::baseos\n"),
        ], extra=f"Provides: system-release = {version}"),
    }
    if kind == "bad":
        specs["telnet-server"] = spec_text("telnet-server", "0.17", f"85.el{major}", [
            RpmFile("/usr/sbin/in.telnetd", "#!/bin/sh\n# placeholder telnet daemon\n", 0o755),
        ])
    return specs


def _rpm_version() -> str:
    return subprocess.run(["rpm", "--version"], capture_output=True, text=True,
                          check=True).stdout.strip()


RPM_BUILD_DEFINES = (
    "__os_install_post %{nil}",   # no brp-* scripts (Debian's rpm ships few of them)
    "_build_id_links none",
    "_binary_payload w6.gzdio",
    "debug_package %{nil}",
)


def build_rpms(specs: dict[str, str], topdir: Path) -> list[Path]:
    """rpmbuild -bb each spec (noarch) under topdir; returns the .rpm paths."""
    out = []
    for name, text in specs.items():
        spec = topdir / "SPECS" / f"{name}.spec"
        spec.parent.mkdir(parents=True, exist_ok=True)
        spec.write_text(text)
        cmd = ["rpmbuild", "-bb", "--nodeps", "--define", f"_topdir {topdir}"]
        for d in RPM_BUILD_DEFINES:
            cmd += ["--define", d]
        proc = subprocess.run(cmd + [str(spec)], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "HOME": str(topdir)})
        if proc.returncode:
            raise RuntimeError(f"rpmbuild {name} rc={proc.returncode}: {proc.stderr[-2000:]}")
        out += sorted((topdir / "RPMS" / "noarch").glob(f"{name}-[0-9]*.noarch.rpm"))
    return out


def rpm_install(root: Path, rpms: Sequence[Path], dbpath: str = "/var/lib/rpm") -> None:
    """``rpm --root R --dbpath P -i --nodeps``: Debian's macros would otherwise put the
    database at ~/.rpmdb (``%_dbpath %(bash -c 'echo ~/.rpmdb')``), so --dbpath and
    ``--define _dbpath`` are both given. Debian's rpm writes sqlite (rpmdb.sqlite)."""
    root.mkdir(parents=True, exist_ok=True)
    cmd = ["rpm", "--root", str(root), "--dbpath", dbpath, "--define", f"_dbpath {dbpath}",
           "--define", "_db_backend sqlite", "-i", "--nodeps", "--noscripts", *map(str, rpms)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HOME": str(root.parent)})
    if proc.returncode:
        raise RuntimeError(f"rpm -i rc={proc.returncode}: {proc.stderr[-2000:]}")


def rpm_query_all(root: str | os.PathLike, dbpath: str = "/var/lib/rpm") -> list[str]:
    """NVRs in a root's rpmdb, as rpm -qa reads them (for assertions)."""
    proc = subprocess.run(["rpm", "--root", str(root), "--dbpath", dbpath, "--define",
                           f"_dbpath {dbpath}", "-qa", "--qf", "%{NAME}-%{VERSION}-%{RELEASE}\n"],
                          capture_output=True, text=True, timeout=60)
    return sorted(proc.stdout.split())


DB_LOAD = "db5.3_load"  # Debian package db5.3-util


def _db_load_version() -> str:
    exe = shutil.which(DB_LOAD)
    if exe is None:
        raise RuntimeError(f"{DB_LOAD} missing: apt-get install db5.3-util (needed to write "
                           "the Berkeley DB rpmdb of the RHEL 8 root)")
    return subprocess.run([exe, "-V"], capture_output=True, text=True).stdout.strip()


def sqlite_to_bdb(dbdir: str | os.PathLike) -> list[str]:
    """Rewrite an rpm 4.18 sqlite rpmdb (rpmdb.sqlite) as the Berkeley DB files RHEL 8's
    rpm 4.14 keeps: Packages (hash; key = header number as native uint32, value = the same
    header blob) and one btree per index table (key -> concatenated native (hnum, idx) uint32
    pairs), written with db5.3_load; the sqlite files are removed. Debian's rpm can only read
    bdb (backend bdb_ro), so this is the only way here to get one. Returns the files made."""
    import sqlite3
    import struct
    from collections import defaultdict

    _db_load_version()
    dbdir = Path(dbdir)
    con = sqlite3.connect(f"file:{dbdir / 'rpmdb.sqlite'}?mode=ro", uri=True)
    try:
        made = [_db_load(dbdir / "Packages", "hash",
                         [(struct.pack("=I", hnum), bytes(blob)) for hnum, blob in
                          con.execute("SELECT hnum, blob FROM Packages ORDER BY hnum")])]
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
                  if r[0] not in ("Packages", "sqlite_sequence", "sqlite_stat1")]
        for table in sorted(tables):
            groups = defaultdict(list)
            for key, hnum, idx in con.execute(
                    f"SELECT key, hnum, idx FROM '{table}' ORDER BY hnum, idx"):
                raw = key.encode() if isinstance(key, str) else bytes(key)
                groups[raw].append(struct.pack("=II", hnum, idx))
            made.append(_db_load(dbdir / table, "btree",
                                 sorted((k, b"".join(v)) for k, v in groups.items())))
    finally:
        con.close()
    for f in dbdir.glob("rpmdb.sqlite*"):
        f.unlink()
    return [p.name for p in made]


def _db_load(path: Path, dbtype: str, records: Iterable[tuple[bytes, bytes]]) -> Path:
    lines = ["VERSION=3", "format=bytevalue", f"type={dbtype}", "db_pagesize=4096", "HEADER=END"]
    for key, value in records:
        lines += [" " + key.hex(), " " + value.hex()]
    lines.append("DATA=END")
    proc = subprocess.run([DB_LOAD, "-f", "/dev/stdin", str(path)], input="\n".join(lines) + "\n",
                          capture_output=True, text=True, timeout=120)
    if proc.returncode:
        raise RuntimeError(f"{DB_LOAD} {path.name} rc={proc.returncode}: {proc.stderr[-1000:]}")
    return path


def rpm_recipe(kind: str, major: str = "9", db: str = "sqlite") -> dict:
    recipe = {"version": RECIPE_VERSION, "builder": "distros.rpm_root", "major": major,
              "kind": kind, "specs": rhel_specs(kind, major), "defines": list(RPM_BUILD_DEFINES),
              "rpm": _rpm_version(), "shadow_mode": "0666" if kind == "bad" else "0000",
              "compresslevel": 1, "db": db}
    if db == "bdb":
        recipe["db_load"] = _db_load_version()
    return recipe


def rpm_root(kind: str = "good", *, release: str = "9", db: str | None = None,
             cache=None) -> DistroImage:
    """RHEL-like root built with rpmbuild + ``rpm --root -i`` (rpmdb at /var/lib/rpm).

    release "9" (default): redhat-release 9.4 -> ssg-rhel9-ds.xml, cis_server_l1; the rpmdb
    is sqlite (rpmdb.sqlite), as Debian's rpm 4.18 writes and RHEL 9 has.
    release "8": redhat-release 8.10 -> ssg-rhel8-ds.xml, cis_server_l1. db "bdb" (default
    for 8): the sqlite database is rewritten as RHEL 8's Berkeley DB files (Packages, Name,
    Basenames, ...) by sqlite_to_bdb (needs db5.3-util); Debian's librpm reads them with its
    read-only bdb_ro backend (warning "Found bdb_ro Packages database while attempting sqlite
    backend"). db "sqlite" keeps the sqlite database (same verdicts).
    bad: + telnet-server and /etc/shadow chmod 0666 after install (kept exactly in the layer).
    """
    _check_kind(kind)
    major = {"9": "9", "9.4": "9", "8": "8", "8.10": "8"}[str(release)]
    db = db or ("bdb" if major == "8" else "sqlite")
    if db not in ("sqlite", "bdb"):
        raise ValueError(f"db must be 'sqlite' or 'bdb', not {db!r}")
    recipe = rpm_recipe(kind, major, db)
    name = f"rhel{major}"
    tag = f"{name}-{kind}"

    def build(staging: Path, work: Path) -> str:
        rpms = build_rpms(recipe["specs"], work / "rpmbuild")
        root = work / "root"
        rpm_install(root, rpms)
        if db == "bdb":
            sqlite_to_bdb(root / "var" / "lib" / "rpm")
        if kind == "bad":
            os.chmod(root / "etc" / "shadow", 0o666)
        layer = ib.layer_from_dir(root, compresslevel=1)
        return ib.write_image(staging, tag, [layer], config={"Cmd": ["/bin/bash"]})

    path, meta = _cached(recipe, tag, build, cache=cache)
    fails = {("9", "good"): RHEL9_GOOD_FAILS, ("9", "bad"): RHEL9_BAD_FAILS,
             ("8", "good"): RHEL8_GOOD_FAILS, ("8", "bad"): RHEL8_BAD_FAILS}[(major, kind)]
    return _image(name, kind, path, meta, DS_RHEL9 if major == "9" else DS_RHEL8,
                  CIS_SERVER_L1, fails)


# --------------------------------------------------------------------------- Ubuntu-like

OS_RELEASE_JAMMY = """\
PRETTY_NAME="Ubuntu 22.04.5 LTS"
NAME="Ubuntu"
VERSION_ID="22.04"
VERSION="22.04.5 LTS (Jammy Jellyfish)"
VERSION_CODENAME=jammy
ID=ubuntu
ID_LIKE=debian
HOME_URL="https://www.ubuntu.com/"
SUPPORT_URL="https://help.ubuntu.com/"
BUG_REPORT_URL="https://bugs.launchpad.net/ubuntu/"
PRIVACY_POLICY_URL="https://www.ubuntu.com/legal/terms-and-policies/privacy-policy"
UBUNTU_CODENAME=jammy
"""
LSB_RELEASE_JAMMY = """\
DISTRIB_ID=Ubuntu
DISTRIB_RELEASE=22.04
DISTRIB_CODENAME=jammy
DISTRIB_DESCRIPTION="Ubuntu 22.04.5 LTS"
"""


def ubuntu_status(*, bad: bool) -> str:
    """dpkg status of the Ubuntu-like root, with jammy's version strings."""
    text = (ib.dpkg_stanza("base-files", "12ubuntu4.7")
            + ib.dpkg_stanza("login", "1:4.8.1-2ubuntu2.2", source="shadow")
            + ib.dpkg_stanza("passwd", "1:4.8.1-2ubuntu2.2", source="shadow"))
    if bad:
        text += ib.dpkg_stanza("inetutils-telnetd", "2:2.2-2ubuntu0.1", source="inetutils")
    return text


def ubuntu_entries(kind: str) -> list[ib.Entry]:
    """imagebuild's synthetic Debian 12 root dressed as Ubuntu 22.04 (os-release, lsb-release,
    debian_version "bookworm/sid" as jammy has). bad: inetutils-telnetd + shadow 0666."""
    _check_kind(kind)
    entries = ib.synthetic_debian_entries(bad=False)
    entries = _replace(entries, "etc/debian_version", data=b"bookworm/sid\n")
    entries = _replace(entries, "usr/lib/os-release", data=OS_RELEASE_JAMMY.encode())
    entries = _replace(entries, "var/lib/dpkg/status", data=ubuntu_status(bad=kind == "bad").encode())
    if kind == "bad":
        entries = _replace(entries, "etc/shadow", mode=0o666)
    return entries + [ib.file("etc/lsb-release", LSB_RELEASE_JAMMY)]


def ubuntu_root(kind: str = "good", *, cache=None) -> DistroImage:
    """Ubuntu 22.04-like synthetic root (see ubuntu_entries) -> ssg-ubuntu2204-ds.xml standard."""
    path, meta = _synthetic("ubuntu2204", kind, ubuntu_entries(kind), cache=cache)
    return _image("ubuntu2204", kind, path, meta, DS_UBUNTU2204, STANDARD,
                  UBUNTU2204_BAD_FAILS if kind == "bad" else UBUNTU2204_GOOD_FAILS)


# --------------------------------------------------------------------------- distroless

OS_RELEASE_DISTROLESS = """\
PRETTY_NAME="Distroless"
NAME="Debian GNU/Linux"
ID="debian"
VERSION_ID="12"
VERSION="Debian GNU/Linux 12 (bookworm)"
HOME_URL="https://github.com/GoogleContainerTools/distroless"
SUPPORT_URL="https://github.com/GoogleContainerTools/distroless/blob/master/README.md"
BUG_REPORT_URL="https://github.com/GoogleContainerTools/distroless/issues/new"
"""
DISTROLESS_PACKAGES = (
    ("base-files", "12.4+deb12u11", ""),
    ("netbase", "6.4", ""),
    ("tzdata", "2025b-0+deb12u1", ""),
    ("libc6", "2.36-9+deb12u10", "glibc"),
)


def distroless_entries(kind: str) -> list[ib.Entry]:
    """Debian 12 as Google's distroless images ship it: one dpkg paragraph per file in
    var/lib/dpkg/status.d/ (plus a .md5sums beside one, as newer images have), NO
    var/lib/dpkg/status, and no dpkg installed, so no usr/share/dpkg/{cputable,ostable,
    tupletable} either (libapt, hence oscap's dpkginfo probe, cannot start without them:
    see ensure_dpkg_tables). bad: inetutils-telnetd in status.d (nothing else differs)."""
    _check_kind(kind)
    entries = _drop(ib.synthetic_debian_entries(bad=False), "var/lib/dpkg/status",
                    *(f"usr/share/dpkg/{t}" for t in DPKG_TABLES))
    entries = _replace(entries, "usr/lib/os-release", data=OS_RELEASE_DISTROLESS.encode())
    packages = list(DISTROLESS_PACKAGES)
    if kind == "bad":
        packages.append(("inetutils-telnetd", "2:2.4-2+deb12u1", "inetutils"))
    entries.append(ib.directory("var/lib/dpkg/status.d"))
    for pkg, version, source in sorted(packages):
        entries.append(ib.file(f"var/lib/dpkg/status.d/{pkg}",
                               ib.dpkg_stanza(pkg, version, source=source).rstrip("\n") + "\n"))
        if pkg == "libc6":
            entries.append(ib.file("var/lib/dpkg/status.d/libc6.md5sums",
                                   "0123456789abcdef0123456789abcdef  lib/x86_64-linux-gnu/libc.so.6\n"))
    return entries


def distroless_root(kind: str = "good", *, cache=None) -> DistroImage:
    """Distroless-like Debian 12 (status.d only) -> ssg-debian12-ds.xml standard. ``fails`` is
    the verdict after merge_status_d(); plain oscap on the image as shipped fails nothing."""
    path, meta = _synthetic("distroless12", kind, distroless_entries(kind), cache=cache)
    return _image("distroless12", kind, path, meta, DS_DEBIAN12, STANDARD,
                  DISTROLESS_BAD_FAILS_MERGED if kind == "bad" else frozenset())


def merge_status_d(root: str | os.PathLike) -> Path:
    """Write var/lib/dpkg/status from var/lib/dpkg/status.d/* the way dpkg-style readers take
    it: files in sorted name order, *.md5sums skipped, each file's paragraph(s) stripped of
    surrounding blank lines and separated by exactly one blank line. An existing status
    file's paragraphs come first. Returns the status path."""
    dpkg = Path(root) / "var" / "lib" / "dpkg"
    status, paragraphs = dpkg / "status", []
    if status.is_file() and not status.is_symlink():
        paragraphs.append(status.read_text(errors="replace"))
    status_d = dpkg / "status.d"
    if status_d.is_dir() and not status_d.is_symlink():
        for path in sorted(status_d.iterdir(), key=lambda p: p.name):
            if path.name.endswith(".md5sums") or not path.is_file() or path.is_symlink():
                continue
            paragraphs.append(path.read_text(errors="replace"))
    text = "\n\n".join(p.strip("\n") for p in paragraphs if p.strip())
    if status.is_symlink():
        status.unlink()
    status.write_text(text + "\n" if text else "")
    return status


DPKG_TABLES = ("cputable", "ostable", "tupletable")


def ensure_dpkg_tables(root: str | os.PathLike) -> list[Path]:
    """Copy the host's usr/share/dpkg/{cputable,ostable,tupletable} into a root lacking them
    (distroless: dpkg is not installed). Without them oscap 1.3.7 logs "dpkginfo_init has
    failed" and every package_*_removed rule passes, merged status or not. Returns the files
    it wrote (existing ones are left alone)."""
    dest, written = Path(root) / "usr" / "share" / "dpkg", []
    for name in DPKG_TABLES:
        target = dest / name
        if not target.exists() and not target.is_symlink():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path("/usr/share/dpkg") / name, target)
            written.append(target)
    return written


# --------------------------------------------------------------------------- no SCAP content

BUSYBOX_APPLETS = ("sh", "ls", "cat", "cp", "mv", "rm", "echo", "wget", "vi")


def alpine_entries() -> list[ib.Entry]:
    """imagebuild's Alpine-like root (alpine-release 3.20.3, os-release ID=alpine,
    lib/apk/db/installed, passwd/group/shadow 0666) plus busybox as /bin/sh."""
    return ib.non_debian_entries() + [
        ib.directory("bin"), ib.file("bin/busybox", "placeholder busybox binary\n", 0o755),
        ib.symlink("bin/sh", "/bin/busybox")]


def alpine_root(*, cache=None) -> DistroImage:
    """Alpine 3.20-like root: no SSG content exists for Alpine."""
    path, meta = _synthetic("alpine", "", alpine_entries(), cache=cache)
    return _image("alpine", "", path, meta)


def busybox_entries() -> list[ib.Entry]:
    """bin/busybox and applet links, etc/passwd and group; no os-release, no package DB."""
    return ([ib.directory("bin"), ib.file("bin/busybox", "placeholder busybox binary\n", 0o755)]
            + [ib.hardlink(f"bin/{a}", "bin/busybox") for a in BUSYBOX_APPLETS]
            + [ib.directory("etc"), ib.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
               ib.file("etc/group", "root:x:0:\n"),
               ib.directory("root", 0o700), ib.directory("tmp", 0o1777)])


def busybox_root(*, cache=None) -> DistroImage:
    """Busybox-like image (as docker.io/library/busybox: hardlinked applets)."""
    path, meta = _synthetic("busybox", "", busybox_entries(), cache=cache)
    return _image("busybox", "", path, meta)


def scratch_entries() -> list[ib.Entry]:
    return [ib.file("hello", "placeholder static binary\n", 0o755)]


def scratch_image(*, cache=None) -> DistroImage:
    """FROM scratch + one static file: no /etc at all."""
    path, meta = _synthetic("scratch", "", scratch_entries(), cache=cache,
                            config={"Cmd": ["/hello"]})
    return _image("scratch", "", path, meta)


# --------------------------------------------------------------------------- debootstrap 11/13

SUITES = {"bullseye": "11", "bookworm": "12", "trixie": "13"}
SUITE_ALIASES = {"11": "bullseye", "12": "bookworm", "13": "trixie"}
SUITE_CONTENT = {"bullseye": DS_DEBIAN11, "bookworm": DS_DEBIAN12, "trixie": DS_DEBIAN13}
SUITE_FAILS = {("bullseye", "good"): DEBIAN11_GOOD_FAILS, ("bullseye", "bad"): DEBIAN11_BAD_FAILS,
               ("trixie", "good"): DEBIAN13_GOOD_FAILS, ("trixie", "bad"): DEBIAN13_BAD_FAILS}


def _suite(suite: str) -> str:
    suite = SUITE_ALIASES.get(str(suite), str(suite))
    if suite not in ("bullseye", "trixie"):
        raise ValueError(f"suite must be bullseye/11 or trixie/13 (bookworm: imagebuild), "
                         f"not {suite!r}")
    return suite


def debootstrap_recipe(suite: str, kind: str) -> dict:
    """Same shape as imagebuild.debian_recipe, for another suite (same mirror, same bad
    recipe: openssh-server + inetutils-telnetd, PermitRootLogin yes, shadow 0666)."""
    _check_kind(kind)
    base = {"version": RECIPE_VERSION, "builder": "distros.debootstrap", "tool": "debootstrap",
            "variant": "minbase", "suite": _suite(suite), "mirror": ib.debian_mirror(),
            "arch": _host_arch(), "finish": ib.FINISH_SCRIPT, "compresslevel": 1}
    if kind == "bad":
        base.update(bad_script=ib.BAD_SCRIPT, packages=list(ib.BAD_PACKAGES))
    return base


def _host_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def debootstrap_version(suite: str, kind: str = "good", *, cache=None) -> DistroImage:
    """Debian 11 (bullseye) or 13 (trixie) minbase image, good or bad, cached like
    imagebuild's Debian 12 roots; both kinds of a suite come from one debootstrap run.
    Debian 12's debootstrap (1.0.128) knows trixie: scripts/trixie -> sid."""
    return debootstrap_versions(suite, (kind,), cache=cache)[kind]


def debootstrap_versions(suite: str, kinds: Sequence[str] = ("good", "bad"), *,
                         cache=None) -> dict[str, DistroImage]:
    """Cached images of a suite by kind. On any miss, every missing kind of the suite (good
    and bad, not only those asked for) is built from one debootstrap run: the tests want
    both, and a second debootstrap costs far more than the bad kind's apt-get install."""
    suite = _suite(suite)
    images = _images_dir(cache)
    recipes = {k: debootstrap_recipe(suite, k) for k in ("good", "bad")}
    paths = {k: images / ib.recipe_hash(r) for k, r in recipes.items()}
    if not all(_read_meta(paths[k]) for k in kinds):
        # imagebuild's lock: one debootstrap at a time on the machine, whoever runs it
        with open(images / ".debootstrap.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            missing = [k for k, p in paths.items() if _read_meta(p) is None]
            if any(k in missing for k in kinds):
                _build_suite(suite, missing, recipes, paths, images)
    name = f"debian{SUITES[suite]}"
    return {k: _image(name, k, paths[k], _read_meta(paths[k]), SUITE_CONTENT[suite], STANDARD,
                      SUITE_FAILS[(suite, k)]) for k in kinds}


def _build_suite(suite: str, kinds: list[str], recipes: dict, paths: dict, images: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=images))
    try:
        start = time.monotonic()
        base = work / "base"
        proc = subprocess.run(["debootstrap", "--variant=minbase", suite, str(base),
                               ib.debian_mirror()], capture_output=True, text=True, timeout=1800)
        if proc.returncode:
            raise RuntimeError(f"debootstrap {suite} rc={proc.returncode}: {proc.stdout[-3000:]}")
        shared = time.monotonic() - start
        for kind in kinds:
            t0 = time.monotonic()
            root = work / kind
            subprocess.run(["cp", "-a", "--", str(base), str(root)], check=True)
            if kind == "bad":
                _sh(ib.BAD_SCRIPT, root, *ib.BAD_PACKAGES)
            _sh(ib.FINISH_SCRIPT, root)
            tag = f"debian{SUITES[suite]}-{kind}"
            staging = work / f"oci-{kind}"
            digest = ib.write_image(staging, tag, [ib.layer_from_dir(root, compresslevel=1)])
            _publish(staging, paths[kind], recipes[kind], tag, digest,
                     shared + time.monotonic() - t0)
            shutil.rmtree(root, ignore_errors=True)
    finally:
        ib.unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)


def _sh(script: str, *args) -> None:
    """Copied from imagebuild._sh (private there)."""
    proc = subprocess.run(["sh", "-c", script, "sh", *map(str, args)],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"image script failed rc={proc.returncode}: {proc.stderr[-3000:]}")


# --------------------------------------------------------------------------- multi-arch

def multiarch_index(*, cache=None) -> DistroImage:
    """imagebuild's multi-arch scenario, exposed: an OCI index tagged "multiarch" with
    linux/amd64 -> good synthetic Debian 12, linux/arm64 -> bad (dpkg Architecture arm64);
    the per-arch manifests are tagged multiarch-amd64 / multiarch-arm64 in the same layout.
    Built by imagebuild.build_synthetic_images; cached by the sha256 of imagebuild.py and of
    the host dpkg tables it copies (its only inputs). ``fails`` is the arm64 verdict."""
    tables = {n: ib.sha256_digest(Path("/usr/share/dpkg", n).read_bytes())
              for n in ("cputable", "ostable", "tupletable")}
    recipe = {"version": RECIPE_VERSION, "builder": "imagebuild.build_synthetic_images",
              "source": ib.sha256_digest(Path(ib.__file__).read_bytes()), "dpkg_tables": tables}

    def build(staging: Path, _work: Path) -> str:
        return ib.build_synthetic_images(staging)["multiarch"].digest

    path, meta = _cached(recipe, "multiarch", build, cache=cache)
    return _image("multiarch", "", path, meta, DS_DEBIAN12, STANDARD, ib.BAD_ROOT_FAILS)


# --------------------------------------------------------------------------- plain tools

@dataclass(frozen=True)
class PlainScan:
    """One plain oscap run: exit code, rule id -> result (notselected left out), stderr."""
    rc: int
    rules: dict
    stderr: str

    def counts(self) -> Counter:
        return Counter(self.rules.values())

    @property
    def pass_fail(self) -> int:
        c = self.counts()
        return c["pass"] + c["fail"]

    @property
    def fails(self) -> frozenset:
        return failing(self.rules)


def failing(results: dict[str, str]) -> frozenset:
    """Rule ids whose result is fail."""
    return frozenset(k for k, v in results.items() if v == "fail")


def rpm_dbpath(root: str | os.PathLike) -> str:
    """Where the root keeps its rpmdb: /var/lib/rpm (RHEL <= 9) or /usr/lib/sysimage/rpm
    (Fedora, RHEL 10); /var/lib/rpm when neither has a database."""
    for candidate in ("var/lib/rpm", "usr/lib/sysimage/rpm"):
        d = Path(root, candidate)
        if d.is_dir() and not d.is_symlink() and any(
                (d / f).exists() for f in ("rpmdb.sqlite", "Packages", "Packages.db")):
            return "/" + candidate
    return "/var/lib/rpm"


def plain_scan(root: str | os.PathLike, datastream_path: str | os.PathLike, profile_id: str, *,
               rpm_fix: bool = True, arch: str | None = None, timeout: float = 600) -> PlainScan:
    """``oscap xccdf eval --skip-valid --profile P --results-arf F DS`` on an unpacked root,
    by hand, the way DESIGN.md says is right: /.dockerenv marker, OSCAP_PROBE_ROOT, APT_CONFIG
    ignoring the host's apt.conf.d (and naming ``arch`` when given), HOME = a private dir.
    rpm_fix puts ``.rpmmacros`` = ``%_dbpath <root's rpmdb path>`` there; without it Debian's
    ``%_dbpath ~/.rpmdb`` is in force and rpminfo finds no package (the trap). The dpkginfo
    probe writes var/cache/apt/*.bin into the root."""
    root = Path(root)
    (root / ".dockerenv").touch()
    with tempfile.TemporaryDirectory(prefix="plain-oscap-") as tmp:
        tmp = Path(tmp)
        parts = tmp / "apt.conf.d"
        parts.mkdir()
        apt_conf = tmp / "apt.conf"
        apt_conf.write_text(f'Dir::Etc::parts "{parts}";\nDir::Etc::main "/dev/null";\n'
                            + (f'APT::Architecture "{arch}";\n' if arch else ""))
        home = tmp / "home"
        home.mkdir()
        if rpm_fix:
            (home / ".rpmmacros").write_text(f"%_dbpath {rpm_dbpath(root)}\n")
        arf = tmp / "arf.xml"
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
        env.update(HOME=str(home), OSCAP_PROBE_ROOT=str(root), APT_CONFIG=str(apt_conf))
        proc = subprocess.run(["oscap", "xccdf", "eval", "--skip-valid", "--profile", profile_id,
                               "--results-arf", str(arf), str(datastream_path)],
                              env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if proc.returncode not in (0, 2) or not arf.exists():
            raise RuntimeError(f"oscap rc={proc.returncode}: {proc.stderr[-2000:]}")
        rules = {k: v.result for k, v in ib.parse_arf(arf).items()}
    return PlainScan(proc.returncode, rules, proc.stderr)


def plain_eval(root_dir: str | os.PathLike, datastream_path: str | os.PathLike, profile_id: str,
               *, rpm_fix: bool = True) -> dict[str, str]:
    """Rule id -> result (pass, fail, notapplicable, ...; notselected left out)."""
    return plain_scan(root_dir, datastream_path, profile_id, rpm_fix=rpm_fix).rules


def unpack_for_plain(layout: str | os.PathLike, tag: str, dest: str | os.PathLike) -> Path:
    """``umoci raw unpack`` as root (ownership and modes kept); dest must not exist."""
    if os.geteuid() != 0:
        raise PermissionError("unpack_for_plain needs root to keep ownership and modes")
    return ib.umoci_unpack(layout, tag, dest)


def scan_image(image: DistroImage, dest: str | os.PathLike, datastream_name: str | None = None,
               profile: str | None = None, *, rpm_fix: bool = True, merge: bool = False,
               dpkg_tables: bool = False, arch: str | None = None) -> PlainScan:
    """Unpack image into dest (must not exist), optionally merge_status_d and/or
    ensure_dpkg_tables, and plain_scan it with its own content/profile unless others are
    given."""
    root = unpack_for_plain(image.layout, image.tag, dest)
    if merge:
        merge_status_d(root)
    if dpkg_tables:
        ensure_dpkg_tables(root)
    ds = datastream(datastream_name or image.datastream or DS_DEBIAN12)
    return plain_scan(root, ds, profile or image.profile or STANDARD, rpm_fix=rpm_fix, arch=arch)


ALL_IMAGES: dict[str, Callable[[], DistroImage]] = {
    "rhel9-good": lambda: rpm_root("good"), "rhel9-bad": lambda: rpm_root("bad"),
    "rhel8-good": lambda: rpm_root("good", release="8"),
    "rhel8-bad": lambda: rpm_root("bad", release="8"),
    "rhel8-good-sqlite": lambda: rpm_root("good", release="8", db="sqlite"),
    "rhel8-bad-sqlite": lambda: rpm_root("bad", release="8", db="sqlite"),
    "ubuntu2204-good": lambda: ubuntu_root("good"), "ubuntu2204-bad": lambda: ubuntu_root("bad"),
    "distroless12-good": lambda: distroless_root("good"),
    "distroless12-bad": lambda: distroless_root("bad"),
    "alpine": alpine_root, "busybox": busybox_root, "scratch": scratch_image,
    "debian11-good": lambda: debootstrap_version("bullseye", "good"),
    "debian11-bad": lambda: debootstrap_version("bullseye", "bad"),
    "debian13-good": lambda: debootstrap_version("trixie", "good"),
    "debian13-bad": lambda: debootstrap_version("trixie", "bad"),
    "multiarch": multiarch_index,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Warm the cache / list images: ``python -m tests.builders.distros [NAME ...]``;
    prints name, source, digest, seconds it took this call, build seconds when built."""
    import sys

    names = list(argv if argv is not None else sys.argv[1:]) or list(ALL_IMAGES)
    for name in names:
        start = time.monotonic()
        img = ALL_IMAGES[name]()
        print(f"{name}\t{img.ref}\t{img.digest}\t{time.monotonic() - start:.2f}s\t"
              f"built in {img.build_seconds}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
