"""Signed RPMs and RHEL-like roots whose packages carry real OpenPGP signatures.

Why: Red Hat's OVAL v2 feeds pair every "<pkg> is earlier than <fixed>" criterion with
"<pkg> is signed with Red Hat redhatrelease2 key" (rpminfo_state ``signature_keyid`` equals
``199e2f91fd431d51``), and oscap 1.3.7's rpminfo probe reads the key id only from the v3
(header+payload) signature tags SIGGPG/SIGPGP (``headerFormat "%|SIGGPG?{%{SIGGPG:pgpsig}}:
{%{SIGPGP:pgpsig}}|"``, the only format string in libopenscap.so.25). A header-only (v4,
RSAHEADER) signature, what rpm >= 4.16 writes by default, gives ``signature_keyid`` "0", as does
no signature at all. tests/scan/test_rpm_signatures.py measures this with the helpers below;
/work/notes/rpm-signatures.md has the numbers.

API:
  gpg_key(dir, name=...)            -> (gnupghome, keyid16): an RSA-2048 signing key in a
                                       private GNUPGHOME (made once per dir and name).
  sign_rpms(rpms, gnupghome, keyid, mode="v4"|"v3"|"none") -> the same paths, signed in place.
  signed_rpm_root(base, {name: "[E:]V-R"}, mode, db="sqlite"|"bdb", key=...) -> root Path:
                                       rhel_specs("good", "9") + the named packages, all signed
                                       in ``mode``, installed with rpm_install (rpmdb at
                                       /var/lib/rpm); cached under ``base`` by recipe.
  unsigned_rpms(base, specs)        -> the RPMs of a spec set, built once per base dir.
  query_signatures(root, names)     -> {name: {"SIGPGP": ..., "RSAHEADER": ..., "DSAHEADER": ...,
                                       "SIGGPG": ...}} as ``rpm -q --qf '%{SIGPGP:pgpsig}|...'``
                                       prints them; keyid_of(text) -> 16-hex id or None.

Debian's rpm macros set ``%__gpg /usr/bin/gpg2``, which Debian does not ship: signing
overrides it with /usr/bin/gpg. gpg starts a gpg-agent per GNUPGHOME; every helper here
stops the agent it started (``gpgconf --kill gpg-agent``) before returning.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from tests.builders import imagebuild as ib
from tests.builders.distros import (RPM_BUILD_DEFINES, RpmFile, build_rpms, rhel_specs,
                                    rpm_install, spec_text, sqlite_to_bdb)

RECIPE_VERSION = 1  # bump when the way a root below is written changes

GPG = "/usr/bin/gpg"
MODES = ("none", "v4", "v3")
DBS = ("sqlite", "bdb")
DBPATH = "/var/lib/rpm"
DEFAULT_KEY_NAME = "scapgate test signing key <rpm-signing@scapgate.invalid>"
#: Red Hat's release key (redhatrelease2), as the v2 feeds write it.
REDHAT_KEYID = "199e2f91fd431d51"
#: v3 header+payload RSA / DSA, v4 header-only RSA / DSA. oscap 1.3.7 reads SIGGPG, else SIGPGP.
SIG_TAGS = ("SIGPGP", "RSAHEADER", "DSAHEADER", "SIGGPG")


# --------------------------------------------------------------------------- gpg

def _gpg_env(gnupghome: Path) -> dict:
    return {**os.environ, "GNUPGHOME": str(gnupghome), "LC_ALL": "C"}


def _kill_agent(gnupghome: Path) -> None:
    subprocess.run(["gpgconf", "--homedir", str(gnupghome), "--kill", "gpg-agent"],
                   capture_output=True, timeout=30, env=_gpg_env(gnupghome))


def _secret_keyid(gnupghome: Path, name: str) -> str | None:
    proc = subprocess.run([GPG, "--batch", "--with-colons", "--list-secret-keys", "--", name],
                          capture_output=True, text=True, timeout=30, env=_gpg_env(gnupghome))
    for line in proc.stdout.splitlines():
        fields = line.split(":")
        if fields[0] == "sec":
            return fields[4].lower()
    return None


def gpg_key(directory: str | os.PathLike, name: str = DEFAULT_KEY_NAME) -> tuple[Path, str]:
    """An RSA-2048 sign-only key without passphrase or expiry in ``<directory>/gnupg-<slug>``
    (``gpg --batch --passphrase '' --quick-gen-key NAME rsa2048 sign never``, ~0.1 s), made
    once per directory and name (later calls reuse it). Returns (gnupghome, 16-hex key id,
    lowercase, as rpm and oscap print it). Keep ``directory`` short: gpg-agent's socket
    lives in the home and socket paths are limited to 107 bytes."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.split("<")[0].lower()).strip("-")[:32] or "key"
    home = Path(directory) / f"gnupg-{slug}"
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(home, 0o700)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            keyid = _secret_keyid(home, name)
            if keyid is None:
                proc = subprocess.run([GPG, "--batch", "--passphrase", "", "--quick-gen-key",
                                       name, "rsa2048", "sign", "never"],
                                      capture_output=True, text=True, timeout=120,
                                      env=_gpg_env(home))
                if proc.returncode:
                    raise RuntimeError(f"gpg --quick-gen-key rc={proc.returncode}: "
                                       f"{proc.stderr[-1500:]}")
                keyid = _secret_keyid(home, name)
                if keyid is None:
                    raise RuntimeError(f"gpg made no secret key for {name!r} in {home}")
        finally:
            _kill_agent(home)
    return home, keyid


# --------------------------------------------------------------------------- signing

def sign_rpms(rpms: Sequence[str | os.PathLike], gnupghome: str | os.PathLike, keyid: str, *,
              mode: str = "v4") -> list[Path]:
    """Sign ``rpms`` in place with rpmsign 4.18 and return their paths.

    mode "v4": ``rpmsign --addsign`` = header-only signature (RSAHEADER; SIGPGP stays
    "(none)"), what rpm >= 4.16 writes by default and what current RHEL packages carry.
    mode "v3": ``rpmsign --addsign --rpmv3`` = RSAHEADER plus the header+payload signature
    SIGPGP, the only one oscap 1.3.7 reads. mode "none": left unsigned. Digest SHA-256
    (Red Hat's packages say RSA/SHA256)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    paths = [Path(p) for p in rpms]
    if mode == "none" or not paths:
        return paths
    home = Path(gnupghome)
    cmd = ["rpmsign", "--define", f"__gpg {GPG}", "--define", f"_gpg_path {home}",
           "--define", f"_gpg_name {keyid}", "--define", "_gpg_digest_algo sha256",
           "--addsign"]
    if mode == "v3":
        cmd.append("--rpmv3")
    try:
        proc = subprocess.run(cmd + [str(p) for p in paths], capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL, env=_gpg_env(home))
    finally:
        _kill_agent(home)
    if proc.returncode:
        raise RuntimeError(f"rpmsign rc={proc.returncode}: {proc.stderr[-2000:]}")
    return paths


def query_signatures(root: str | os.PathLike, names: Iterable[str] | None = None,
                     dbpath: str = DBPATH) -> dict[str, dict[str, str]]:
    """``rpm --root R --dbpath P -q --qf '%{NAME}|%{SIGPGP:pgpsig}|%{RSAHEADER:pgpsig}|
    %{DSAHEADER:pgpsig}|%{SIGGPG:pgpsig}\\n'`` (all packages when names is None): name -> tag ->
    the text rpm prints, e.g. "(none)" or "RSA/SHA256, <date>, Key ID 0123456789abcdef".
    A DSA key puts its v4 signature in DSAHEADER and its v3 one in SIGGPG."""
    qf = "%{NAME}|" + "|".join(f"%{{{t}:pgpsig}}" for t in SIG_TAGS) + "\\n"
    cmd = ["rpm", "--root", str(root), "--dbpath", dbpath, "--define", f"_dbpath {dbpath}",
           "-q", "--qf", qf]
    cmd += ["-a"] if names is None else list(names)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "LC_ALL": "C"})
    out = {}
    for line in proc.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 1 + len(SIG_TAGS):
            out[parts[0]] = dict(zip(SIG_TAGS, parts[1:]))
    return out


def keyid_of(pgpsig: str) -> str | None:
    """The 16-hex key id in a ``%{TAG:pgpsig}`` text, None for "(none)"."""
    m = re.search(r"Key ID ([0-9a-fA-F]{16})", pgpsig)
    return m.group(1).lower() if m else None


# --------------------------------------------------------------------------- roots

def _rpm_version() -> str:
    return subprocess.run(["rpm", "--version"], capture_output=True, text=True,
                          check=True).stdout.strip()


def package_spec(name: str, evr: str) -> str:
    """Spec text of a placeholder noarch package ``name`` at ``[epoch:]version-release``
    owning /usr/share/doc/<name>/README (e.g. ("openssl-libs", "1:3.0.7-16.el9"))."""
    m = re.fullmatch(r"(?:(\d+):)?([^-:\s]+)-([^-:\s]+)", evr)
    if not m:
        raise ValueError(f"version of {name} must be [epoch:]version-release, not {evr!r}")
    epoch, version, release = m.groups()
    return spec_text(name, version, release,
                     [RpmFile(f"/usr/share/doc/{name}/README", f"{name} placeholder\n")],
                     extra=f"Epoch: {epoch}" if epoch is not None else "")


def signed_rpm_recipe(packages: Mapping[str, str], mode: str, db: str, keyid: str,
                      release: str = "9") -> dict:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if db not in DBS:
        raise ValueError(f"db must be one of {DBS}, not {db!r}")
    base = rhel_specs("good", release)
    clash = sorted(set(packages) & set(base))
    if clash:
        raise ValueError(f"{clash} are part of the base root (rhel_specs): pick other names")
    specs = {**base, **{n: package_spec(n, v) for n, v in sorted(packages.items())}}
    return {"version": RECIPE_VERSION, "builder": "rpmsign.signed_rpm_root", "release": release,
            "specs": specs, "defines": list(RPM_BUILD_DEFINES), "mode": mode, "db": db,
            "keyid": keyid if mode != "none" else "", "rpm": _rpm_version()}


def unsigned_rpms(base: str | os.PathLike, specs: Mapping[str, str]) -> list[Path]:
    """distros.build_rpms(specs) once per spec set and rpm version, kept in
    ``<base>/rpms-<hash16>/`` (unsigned; sign copies). rpmbuild is most of a root's build time."""
    base = Path(base)
    recipe = {"version": RECIPE_VERSION, "builder": "rpmsign.unsigned_rpms",
              "specs": dict(specs), "defines": list(RPM_BUILD_DEFINES), "rpm": _rpm_version()}
    final = base / f"rpms-{ib.recipe_hash(recipe)[:16]}"

    def listed() -> list[Path] | None:
        names = final / "rpms.json"
        return [final / n for n in json.loads(names.read_text())] if names.exists() else None

    if (found := listed()) is not None:
        return found
    base.mkdir(parents=True, exist_ok=True)
    with open(base / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (found := listed()) is not None:
            return found
        work = Path(tempfile.mkdtemp(prefix=".rpms-", dir=base))
        try:
            built = build_rpms(dict(specs), work / "rpmbuild")
            for r in built:
                os.rename(r, work / r.name)
            shutil.rmtree(work / "rpmbuild")
            (work / "rpms.json").write_text(json.dumps([r.name for r in built]))
            if final.exists():
                shutil.rmtree(final)
            os.rename(work, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return listed()


def signed_rpm_root(base: str | os.PathLike, packages: Mapping[str, str], mode: str = "v4", *,
                    db: str = "sqlite", key: tuple[str | os.PathLike, str] | None = None,
                    release: str = "9") -> Path:
    """A RHEL-9-like root (filesystem, setup, redhat-release 9.4 from distros.rhel_specs, plus
    ``packages`` = {name: "[epoch:]version-release"} as placeholder noarch RPMs), every
    package signed in ``mode`` ("none", "v4", "v3") with ``key`` = (gnupghome, keyid) (default:
    gpg_key(base)), installed with distros.rpm_install (sqlite rpmdb at /var/lib/rpm);
    db "bdb" rewrites it with distros.sqlite_to_bdb as RHEL 8 keeps it.

    Cached under ``base`` by the recipe (specs, mode, db, key id, rpm version): the root is
    ``<base>/signed-root-<hash16>/root``, built once under a file lock and published by an
    atomic rename; the unsigned RPMs are built once per spec set (unsigned_rpms) and copies
    signed. About 0.15 s a root after the first (0.25 s rpmbuild), bdb +0.1 s. Treat it as
    read-only (oscap's rpminfo probe only reads it)."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    if mode != "none" and key is None:
        key = gpg_key(base)
    keyid = key[1] if key else ""
    recipe = signed_rpm_recipe(packages, mode, db, keyid, release)
    final = base / f"signed-root-{ib.recipe_hash(recipe)[:16]}"
    if (final / "recipe.json").exists():
        return final / "root"
    with open(base / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "recipe.json").exists():
            return final / "root"
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=base))
        try:
            start = time.monotonic()
            (work / "rpms").mkdir()
            rpms = [Path(shutil.copy2(r, work / "rpms"))
                    for r in unsigned_rpms(base, recipe["specs"])]
            if key is not None:
                sign_rpms(rpms, key[0], key[1], mode=mode)
            rpm_install(work / "root", rpms, DBPATH)
            if db == "bdb":
                sqlite_to_bdb(work / "root" / DBPATH.lstrip("/"))
            shutil.rmtree(work / "rpms")
            (work / "recipe.json").write_text(json.dumps(
                {**recipe, "build_seconds": round(time.monotonic() - start, 3)},
                indent=1, sort_keys=True))
            if final.exists():
                shutil.rmtree(final)
            os.rename(work, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final / "root"
