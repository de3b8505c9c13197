"""A real OCI registry for tests: Debian's ``docker-registry serve`` on 127.0.0.1.

Why a real one: the webhook talks to registries through skopeo/containers-image, so tests
must exercise the same HTTP API, digests, manifest lists, TLS and auth challenges as
production. Plain mode (HTTP, anonymous) and secure mode (TLS with our own CA + htpasswd
bcrypt auth). No pytest in here; tests/conftest.py wraps it in fixtures.
"""
from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import secrets
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

READY_TIMEOUT = 15.0


def free_port() -> int:
    """A port nothing listens on right now (the registry binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- TLS material

@dataclass(frozen=True)
class TLSFiles:
    """CA and server certificate paths; cert_dir holds only ca.crt (skopeo --cert-dir)."""
    ca: Path
    cert: Path
    key: Path
    cert_dir: Path


def make_tls(directory: str | os.PathLike, ip: str = "127.0.0.1") -> TLSFiles:
    """Self-signed CA plus a server cert for ip (IP SAN) and localhost, as an operator would
    set up a private registry; clients must trust the CA, not skip verification."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d = Path(directory)
    (d / "certs").mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scapgate test registry CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)]))
              .issuer_name(ca_name).public_key(key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=2))
              .add_extension(x509.SubjectAlternativeName(
                  [x509.IPAddress(ipaddress.ip_address(ip)), x509.DNSName("localhost")]), critical=False)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    files = TLSFiles(d / "ca.crt", d / "server.crt", d / "server.key", d / "certs")
    files.ca.write_bytes(ca.public_bytes(pem))
    files.cert.write_bytes(server.public_bytes(pem))
    files.key.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    files.key.chmod(0o600)
    (files.cert_dir / "ca.crt").write_bytes(ca.public_bytes(pem))
    return files


def make_htpasswd(path: str | os.PathLike, user: str, password: str) -> Path:
    """bcrypt htpasswd file (the only hash docker-registry accepts), via htpasswd -Bbn."""
    out = subprocess.run(["htpasswd", "-Bbn", user, password], check=True,
                         capture_output=True, text=True).stdout
    Path(path).write_text(out.strip() + "\n")
    return Path(path)


# --------------------------------------------------------------------------- registry

class Registry:
    """One docker-registry process with filesystem storage under workdir.

    tls + user/password turn on HTTPS and htpasswd auth. ``host`` is "127.0.0.1:PORT";
    ``push`` copies an OCI layout tag into it with skopeo, digests preserved.
    """

    def __init__(self, workdir: str | os.PathLike, *, tls: TLSFiles | None = None,
                 user: str | None = None, password: str | None = None):
        self.workdir = Path(workdir)
        self.tls, self.user, self.password = tls, user, password
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._logfile = None

    # -- identity ------------------------------------------------------------
    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def ca_path(self) -> Path | None:
        return self.tls.ca if self.tls else None

    @property
    def cert_dir(self) -> Path | None:
        """Directory for skopeo --cert-dir / --src-cert-dir (holds ca.crt)."""
        return self.tls.cert_dir if self.tls else None

    @property
    def certs_d(self) -> Path | None:
        """containers-image style root: <certs_d>/<host:port>/ca.crt."""
        if not self.tls:
            return None
        root = self.workdir / "certs.d"
        (root / self.host).mkdir(parents=True, exist_ok=True)
        (root / self.host / "ca.crt").write_bytes(self.tls.ca.read_bytes())
        return root

    @property
    def auth_json(self) -> Path | None:
        """containers auth.json / docker config.json holding the credentials."""
        if not self.user:
            return None
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        path = self.workdir / "auth.json"
        path.write_text(json.dumps({"auths": {self.host: {"auth": token}}}))
        return path

    def ref(self, repo_ref: str) -> str:
        """Full reference for 'repo:tag' or 'repo@digest' in this registry."""
        return f"{self.host}/{repo_ref}"

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> "Registry":
        """Start on a free port and return once /v2/ answers; retry if the port got taken."""
        for _ in range(3):
            self.port = free_port()
            config = self._write_config()
            self._logfile = open(self.workdir / "registry.log", "ab")
            self.proc = subprocess.Popen(
                ["docker-registry", "serve", str(config)], stdout=self._logfile,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")})
            if self._wait_ready():
                return self
            self.stop()
        raise RuntimeError(f"docker-registry did not start; log:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        """Terminate the process we started (and only it)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._logfile:
            self._logfile.close()
            self._logfile = None

    def __enter__(self) -> "Registry":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> str:
        path = self.workdir / "registry.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _write_config(self) -> Path:
        """Registry YAML: filesystem storage, loopback address, optional TLS + htpasswd."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        http = {"addr": self.host, "secret": "scapgate-test", "headers": {"X-Content-Type-Options": ["nosniff"]}}
        config = {"version": 0.1, "log": {"level": "warn", "accesslog": {"disabled": True}},
                  "storage": {"filesystem": {"rootdirectory": str(self.workdir / "data")},
                              "delete": {"enabled": True}},
                  "http": http}
        if self.tls:
            http["tls"] = {"certificate": str(self.tls.cert), "key": str(self.tls.key)}
        if self.user:
            htpasswd = make_htpasswd(self.workdir / "htpasswd", self.user, self.password)
            config["auth"] = {"htpasswd": {"realm": "scapgate-test", "path": str(htpasswd)}}
        path = self.workdir / "config.yml"
        path.write_text(yaml.safe_dump(config))
        return path

    def _wait_ready(self) -> bool:
        """Poll GET /v2/ (200, or 401 with auth) until a bounded deadline."""
        deadline = time.monotonic() + READY_TIMEOUT
        context = ssl.create_default_context(cafile=str(self.tls.ca)) if self.tls else None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                urllib.request.urlopen(self.url + "/v2/", timeout=1, context=context)
                return True
            except urllib.error.HTTPError as err:
                if err.code == 401:
                    return True
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                pass
            time.sleep(0.02)
        return False

    # -- content -------------------------------------------------------------
    def dest_args(self) -> list[str]:
        """skopeo copy options to write to this registry."""
        if not self.tls:
            return ["--dest-tls-verify=false"]
        args = ["--dest-cert-dir", str(self.cert_dir)]
        return args + (["--dest-creds", f"{self.user}:{self.password}"] if self.user else [])

    def src_args(self) -> list[str]:
        """skopeo inspect/copy options to read from this registry."""
        if not self.tls:
            return ["--tls-verify=false"]
        args = ["--cert-dir", str(self.cert_dir)]
        return args + (["--creds", f"{self.user}:{self.password}"] if self.user else [])

    def push(self, layout_dir: str | os.PathLike, tag: str, repo_ref: str) -> str:
        """skopeo copy oci:LAYOUT:TAG to docker://HOST:PORT/REPO[:TAG]; returns the reference.

        --multi-arch all copies every platform of an index (plain manifests are unaffected);
        --preserve-digests makes the registry digest equal the one write_image returned.
        """
        if ":" not in repo_ref.rsplit("/", 1)[-1]:
            repo_ref = f"{repo_ref}:{tag}"
        dest = self.ref(repo_ref)
        proc = subprocess.run(
            ["skopeo", "copy", "--quiet", "--multi-arch", "all", "--preserve-digests",
             *self.dest_args(), f"oci:{layout_dir}:{tag}", f"docker://{dest}"],
            capture_output=True, text=True, timeout=600)
        if proc.returncode:
            raise RuntimeError(f"skopeo copy to {dest} failed: {proc.stderr.strip()}")
        return dest


def start_registry(workdir: str | os.PathLike) -> Registry:
    """Plain HTTP, anonymous registry (the fast default for tests)."""
    return Registry(workdir).start()


def start_auth_registry(workdir: str | os.PathLike, user: str = "scapgate",
                        password: str | None = None) -> Registry:
    """HTTPS registry with a fresh CA and htpasswd (bcrypt) basic auth; the password is
    random per run unless given."""
    tls = make_tls(Path(workdir) / "tls")
    password = password or secrets.token_urlsafe(12)
    return Registry(workdir, tls=tls, user=user, password=password).start()


class ImageRef(str):
    """A pushed image's reference ("127.0.0.1:PORT/repo:tag") that also carries its manifest
    (or index) digest, the verdict it must get and where its OCI layout lives."""

    digest: str
    expect: str
    fails: dict
    layout: Path
    tag: str

    def __new__(cls, ref: str, *, digest: str, expect: str, fails: dict, layout: Path, tag: str):
        obj = super().__new__(cls, ref)
        obj.digest, obj.expect, obj.fails, obj.layout, obj.tag = digest, expect, fails, layout, tag
        return obj

    @property
    def repository(self) -> str:
        """host:port/repo without the tag."""
        return self.rsplit(":", 1)[0]

    @property
    def by_digest(self) -> str:
        """host:port/repo@sha256:… — what a pinned pod spec would say."""
        return f"{self.repository}@{self.digest}"
