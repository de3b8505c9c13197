#!/usr/bin/env bash
# Install the Debian 12 SCAP Security Guide datastream (ssg-debian >= 0.1.76, from Debian 13)
# into $1 (default .state/content) without touching the system's apt sources:
# a private sources list and state dir, `apt-get download`, `dpkg-deb -x`.
# Idempotent: does nothing when the datastream is already there.
set -euo pipefail
dest=${1:-.state/content}
ds_name=ssg-debian12-ds.xml
if [ -s "$dest/$ds_name" ]; then exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Reuse the mirror the system already uses for Debian's main archive (first URI in its sources).
uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' || true)
if [ -z "$uri" ]; then
  uri=$(awk '$1=="deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$uri" ] || { echo "install-content: no Debian mirror found in the system's apt sources" >&2; exit 1; }
mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/etc/preferences.d"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri trixie main" > "$work/sources.list"
opts=(-o Dir::Etc::sourcelist="$work/sources.list" -o Dir::Etc::sourceparts=/dev/null
      -o Dir::Etc::preferencesparts="$work/etc/preferences.d"
      -o Dir::State::Lists="$work/lists" -o Dir::Cache::archives="$work/archives"
      -o Dir::Cache::pkgcache="" -o Dir::Cache::srcpkgcache="" -o APT::Get::List-Cleanup=0
      -o Acquire::Languages=none -o APT::Sandbox::User=root)
apt-get "${opts[@]}" -qq update
(cd "$work" && apt-get "${opts[@]}" -qq download ssg-debian)
deb=$(ls "$work"/ssg-debian_*.deb)
ver=$(dpkg-deb -f "$deb" Version)
dpkg --compare-versions "$ver" ge 0.1.76 || { echo "install-content: ssg-debian $ver is older than 0.1.76" >&2; exit 1; }
dpkg-deb -x "$deb" "$work/x"
mkdir -p "$dest"
cp "$work"/x/usr/share/xml/scap/ssg/content/ssg-debian12-*.xml "$dest/"
echo "$ver" > "$dest/ssg-debian.version"
echo "install-content: ssg-debian $ver -> $dest" >&2
