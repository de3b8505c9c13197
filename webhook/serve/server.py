"""`scapgate serve` (the webhook under gunicorn, over TLS) and `scapgate certs`.

serve checks what it can before starting (certificate, key, policies) so a mistake is one clear
line instead of a worker boot loop, then execs gunicorn with webhook/serve/gunicorn_conf.py: the
process that runs is gunicorn itself, so signals (SIGTERM: graceful stop, SIGHUP: reload
workers) reach it directly. Settings travel to the workers as SCAPGATE_* variables.
"""
from __future__ import annotations

import dataclasses
import os
import sys

from ..config import Settings

GUNICORN_CONFIG = "python:webhook.serve.gunicorn_conf"
APP = "webhook:create_app()"


def register(subparsers) -> None:
    s = subparsers.add_parser("serve", help="serve the admission webhook over TLS")
    s.add_argument("--bind", help="host:port (SCAPGATE_BIND, default 127.0.0.1:8443)")
    s.add_argument("--cert", help="serving certificate, PEM (SCAPGATE_TLS_CERT)")
    s.add_argument("--key", help="its private key, PEM (SCAPGATE_TLS_KEY)")
    s.add_argument("--policy", help="policy file or directory (SCAPGATE_POLICY)")
    s.add_argument("--state-dir", help="scan cache, reports, store (SCAPGATE_STATE_DIR)")
    s.add_argument("--store", help="'' = SQLite in the state dir, or redis://… (SCAPGATE_STORE)")
    s.add_argument("--workers", type=int, help="HTTP worker processes (SCAPGATE_HTTP_WORKERS)")
    s.add_argument("--threads", type=int, help="threads per worker (SCAPGATE_HTTP_THREADS)")
    s.add_argument("--console-bind", help="host:port of the console listener: inventory and "
                   "PolicyReports behind a bearer token (SCAPGATE_CONSOLE_BIND; default off)")
    s.add_argument("--console-token-file", help="the bearer token (SCAPGATE_CONSOLE_TOKEN_FILE)")
    s.set_defaults(fn=cmd_serve)

    c = subparsers.add_parser("certs", help="write a CA and a serving certificate for the webhook")
    c.add_argument("--service", default="scapgate", help="Service name (default scapgate)")
    c.add_argument("--namespace", default="scapgate", help="its namespace (default scapgate)")
    c.add_argument("--out", required=True, help="directory for ca.crt, tls.crt, tls.key")
    c.add_argument("--days", type=int, default=365, help="serving certificate lifetime")
    c.add_argument("--name", action="append", default=[], help="extra DNS name or IP SAN")
    c.add_argument("--new-ca", action="store_true", help="replace the CA (changes caBundle)")
    c.set_defaults(fn=cmd_certs)


def settings_from_args(args) -> Settings:
    s = Settings.from_env(bind=args.bind, tls_cert=args.cert, tls_key=args.key,
                          policy=args.policy, state_dir=args.state_dir, store=args.store,
                          http_workers=args.workers, http_threads=args.threads,
                          console_bind=getattr(args, "console_bind", None),
                          console_token_file=getattr(args, "console_token_file", None))
    for name in ("tls_cert", "tls_key", "policy", "state_dir", "console_token_file"):
        if getattr(s, name):
            setattr(s, name, os.path.abspath(getattr(s, name)))
    return s


def preflight(s: Settings) -> list[str]:
    """What would make every worker fail to boot, said once and plainly."""
    from .. import policy as policy_mod
    problems = []
    for what, path in (("certificate", s.tls_cert), ("key", s.tls_key)):
        if not path:
            problems.append(f"no TLS {what}: pass --{'cert' if what == 'certificate' else 'key'}"
                            " (kube-apiserver only calls webhooks over HTTPS)")
        elif not os.access(path, os.R_OK):
            problems.append(f"TLS {what} {path} is not readable")
    if s.console_bind:
        from .console import read_token
        if s.console_bind == s.bind:
            problems.append("--console-bind must differ from --bind: the console is never on "
                            "the apiserver's path")
        try:
            read_token(s.console_token_file)
        except ValueError as e:
            problems.append(f"console: {e}")
    try:
        policy_mod.load_set(s.policy)
    except policy_mod.PolicyError as e:
        problems.append(f"policies: {e}")
    return problems


def env_for(s: Settings, base: dict | None = None) -> dict[str, str]:
    """The environment gunicorn's workers rebuild these Settings from."""
    env = dict(os.environ if base is None else base)
    for f in dataclasses.fields(s):
        v = getattr(s, f.name)
        if isinstance(v, tuple):
            v = ",".join(v)
        elif isinstance(v, bool):
            v = "true" if v else "false"
        env[f"SCAPGATE_{f.name.upper()}"] = str(v)
    return env


def gunicorn_argv() -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--config", GUNICORN_CONFIG, APP]


def cmd_serve(args) -> int:
    s = settings_from_args(args)
    problems = preflight(s)
    if problems:
        for p in problems:
            print(f"scapgate serve: {p}", file=sys.stderr)
        return 2
    os.makedirs(s.state_dir, exist_ok=True)
    print(f"scapgate serve: https://{s.bind} policies {s.policy} state {s.state_dir} "
          f"({s.http_workers} workers × {s.http_threads} threads)", file=sys.stderr, flush=True)
    argv = gunicorn_argv()
    os.execve(argv[0], argv, env_for(s))
    return 0  # not reached


def cmd_certs(args) -> int:
    from . import certs
    files = certs.generate(args.service, args.namespace, args.out, days=args.days,
                           extra_names=tuple(args.name), new_ca=args.new_ca)
    print(f"CA:          {files.ca}   (the webhook's caBundle: base64 -w0 {files.ca})")
    print(f"certificate: {files.cert}")
    print(f"key:         {files.key}")
    print(f"names:       {', '.join([*certs.sans(args.service, args.namespace), *args.name])}")
    return 0

