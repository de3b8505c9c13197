"""scapgate: a Kubernetes validating admission webhook gating workloads on OpenSCAP scans."""


def create_app(*args, **kwargs):
    """`gunicorn 'webhook:create_app()'`; imported lazily so the CLI stays quick to start."""
    from .app import create_app as _create_app
    return _create_app(*args, **kwargs)
