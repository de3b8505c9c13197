"""Stage: serve — the HTTP edge kube-apiserver calls.

Takes in: HTTPS requests (POST /validate, /mutate; GET /healthz, /readyz, /metrics, /reports)
over TLS under gunicorn (gunicorn_conf, gworker: whole requests read without a thread).
Hands on: the decoded AdmissionReview request to webhook.admission, and its answer back as
JSON; counts each decision (metrics) and writes one log line for it (logs), after the answer.

Modules: app (create_app: routes decode and encode only), server (`scapgate serve`, `certs`),
gunicorn_conf, gworker, certs (CA, serving certificate, reloading TLS context), metrics, logs.

Must not import: nothing is above it; it is the only stage that knows about HTTP. Everything
below (webhook.admission, webhook.policy, webhook.store, webhook.scan) is injected through
create_app so tests can swap any of it at our own seam.
"""
