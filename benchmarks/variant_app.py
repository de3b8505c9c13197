"""scapgate with one candidate improvement patched in, to measure it before it is written.

The webhook's code is not edited: this module replaces one function at its own seam, then
builds the app with the real webhook.create_app(). It is served by the same gunicorn config
(`gunicorn -c python:webhook.serve.gunicorn_conf 'benchmarks.variant_app:create_app()'`) and reads
the same store as the scapgate server under test, so every result is already there (L2 → L1).
SCAPGATE_BENCH_VARIANT is a comma list of:

  control      nothing patched (the same app as `scapgate serve`, to compare against)
  nolog        no decision log line (the upper bound of what logging costs)
  nometrics    no Prometheus counting per decision
  nomemo       no decision memo (admission.Memo, SCAPGATE_DECISION_MEMO_S=0): every review
               decided afresh, as when every pod differs

The fixes these variants measured before they were written (a compact log line, a ready Future
on a resolver hit, gc.freeze after start-up, orjson, the decision memo) are in the code now; the `before` server
of benchmarks/fastpath.py serves the code as it was, for the before/after figures.
"""
from __future__ import annotations

import os


def apply(variant: str) -> list[str]:
    from webhook.serve import logs, metrics
    applied = []
    for name in [v.strip() for v in variant.split(",") if v.strip()]:
        if name == "control":
            pass
        elif name == "nolog":
            logs.log_decision = lambda rec: None
            logs.record = lambda req, decision, ms: {}
        elif name == "nometrics":
            metrics.observe = lambda decision, seconds: None
        elif name == "nomemo":
            os.environ["SCAPGATE_DECISION_MEMO_S"] = "0"   # read by create_app's Settings
        else:
            raise ValueError(f"unknown variant {name!r}")
        applied.append(name)
    return applied


def create_app():
    import webhook
    apply(os.environ.get("SCAPGATE_BENCH_VARIANT", "control"))
    return webhook.create_app()
