"""TLS for the webhook: a CA and a serving certificate, and a server context that follows
renewed files without a restart.

kube-apiserver verifies the server name `<service>.<namespace>.svc` against the webhook's
caBundle, so the serving certificate carries that SAN (and the other names a client may use).
Re-running `scapgate certs` keeps an existing CA, so the caBundle stays valid while the serving
certificate is renewed; the running server picks the new files up on its next connection
(cert-manager and Secret volume rotation work the same way).
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import ssl
import tempfile
import threading
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("scapgate.certs")


@dataclass(frozen=True)
class CertFiles:
    ca: str
    cert: str
    key: str
    ca_key: str


def sans(service: str, namespace: str) -> list[str]:
    """The DNS names a client may use for the Service, plus loopback for `make run`."""
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local", "localhost", "127.0.0.1"]


def generate(service: str, namespace: str, out: str, *, days: int = 365, ca_days: int = 3650,
             extra_names: tuple[str, ...] = (), new_ca: bool = False,
             now: dt.datetime | None = None) -> CertFiles:
    """Write ca.crt/ca.key (kept when present) and tls.crt/tls.key into out."""
    from cryptography.hazmat.primitives.asymmetric import ec

    os.makedirs(out, exist_ok=True)
    files = CertFiles(*(os.path.join(out, n) for n in ("ca.crt", "tls.crt", "tls.key", "ca.key")))
    now = now or dt.datetime.now(dt.timezone.utc)
    if new_ca or not (os.path.exists(files.ca) and os.path.exists(files.ca_key)):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _ca_cert(ca_key, now, ca_days)
        _write(files.ca_key, _key_pem(ca_key), 0o600)
        _write(files.ca, _cert_pem(ca_cert), 0o644)
    ca_key, ca_cert = _load_ca(files)
    key = ec.generate_private_key(ec.SECP256R1())
    names = [*sans(service, namespace), *extra_names]
    cert = _serving_cert(key, ca_key, ca_cert, f"{service}.{namespace}.svc", names, now, days)
    # Key first, then certificate: a reader that sees the new cert also finds its key.
    _write(files.key, _key_pem(key), 0o600)
    _write(files.cert, _cert_pem(cert), 0o644)
    return files


def _ca_cert(ca_key, now: dt.datetime, days: int):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scapgate webhook CA")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))


def _serving_cert(key, ca_key, ca_cert, common_name: str, names: list[str],
                  now: dt.datetime, days: int):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    alt = []
    for n in dict.fromkeys(names):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))


def _load_ca(files: CertFiles):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    with open(files.ca_key, "rb") as fh:
        ca_key = serialization.load_pem_private_key(fh.read(), password=None)
    with open(files.ca, "rb") as fh:
        ca_cert = x509.load_pem_x509_certificate(fh.read())
    return ca_key, ca_cert


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: str, data: bytes, mode: int) -> None:
    """Atomic replace, so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# -- serving ----------------------------------------------------------------------------------

class ReloadingContext:
    """Hands out one SSLContext per (cert, key) file state; a renewed pair gets a new context.

    gunicorn asks for a context for every new connection (its `ssl_context` hook); a stat of two
    files is cheap, a context is built only when they changed. Open connections keep their
    session, so rotation drops nothing. A half-written or mismatched pair keeps the previous
    context and is tried again when the files change once more.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._state: tuple | None = None
        self._context: ssl.SSLContext | None = None

    def get(self, cert: str, key: str, factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        state = (_stat(cert), _stat(key))
        if state == self._state and self._context is not None:
            return self._context
        with self._lock:
            if state != self._state or self._context is None:
                self._state = state
                try:
                    self._context = factory()
                    log.info("TLS certificate loaded from %s", cert)
                except (OSError, ssl.SSLError) as e:
                    if self._context is None:
                        raise
                    log.warning("TLS certificate %s not reloaded, keeping the previous one: %s",
                                cert, e)
            return self._context


def _stat(path: str) -> tuple:
    try:
        st = os.stat(path)
    except OSError:
        return ()
    return (st.st_ino, st.st_size, st.st_mtime_ns)
