#!/usr/bin/env bash
# Install the Debian packages scapgate and its tests need. Idempotent and quick when present.
set -euo pipefail
# rpm (rpmbuild, rpm --root) and db5.3-util (db5.3_load: RHEL 8's Berkeley DB) build the
# tests' RPM-based images (tests/builders/distros.py). chromium and chromium-driver drive the
# console's browser tests (tests/serve/test_console_browser.py, headless).
pkgs=(openscap-scanner openscap-utils skopeo umoci docker-registry debootstrap redis-server
      apache2-utils python3-venv ca-certificates rpm db5.3-util chromium chromium-driver)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
