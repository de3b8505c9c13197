"""scapgate: a Kubernetes validating admission webhook gating workloads on OpenSCAP scans.

One package per stage of the data flow, imports running one way (tests/test_layout.py):

    serve/      HTTP, TLS, gunicorn, metrics, logs        the edge kube-apiserver calls
    admission/  review, workload, decide, response        one AdmissionReview → one answer
    policy/     model, verdict, lint, show, watch         a scan result + a policy → a Verdict
    store/      store, scans, worker                      ScanKey → ScanResult, the scan queue
    scan/       images, registry, pipeline, oscap         an image digest → a ScanResult

Here on top: create_app (gunicorn 'webhook:create_app()'), cli (`scapgate …`), config (the
Settings every stage reads; it imports nothing of the package).
"""


def create_app(*args, **kwargs):
    """`gunicorn 'webhook:create_app()'`; imported lazily so the CLI stays quick to start."""
    from .serve.app import create_app as _create_app
    return _create_app(*args, **kwargs)
