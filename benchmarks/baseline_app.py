"""The baseline: a bare Flask app that parses the AdmissionReview and answers "allowed".

Served by the very gunicorn settings scapgate uses (webhook/serve/gunicorn_conf.py: gthread workers,
threads, keep-alive, TLS context), with the scan workers turned off:

    SCAPGATE_EMBEDDED_WORKERS=false gunicorn -c python:webhook.serve.gunicorn_conf \
        'benchmarks.baseline_app:create_app()'
"""
from __future__ import annotations

import json

from flask import Flask, jsonify, request


def create_app() -> Flask:
    app = Flask("baseline")

    @app.post("/validate")
    def validate():
        review = json.loads(request.get_data())
        uid = review["request"]["uid"]
        return jsonify({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                        "response": {"uid": uid, "allowed": True}})

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    return app
