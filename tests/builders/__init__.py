"""Shared test builders, imported by every test package: images (debootstrap, RPM and synthetic
roots as cached OCI layouts), registries, hostile layers, policies, stores, and the webhook under
gunicorn with a kube-apiserver-like caller."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
