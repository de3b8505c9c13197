#!/usr/bin/env bash
# Install the SCAP Security Guide datastreams scapgate judges images with into $1 (default
# .state/content), without touching the system's apt sources: a private sources list and state
# dir, `apt-get download`, `dpkg-deb -x`.
#
# Versions, chosen on purpose (README "SCAP content"):
# - ssg-debian, ssg-debderived, ssg-nondebian from Debian 13 (trixie, stable: fixed content,
#   >= 0.1.76): Debian 11/12, Ubuntu 16.04-24.04, RHEL 8/9/10, CentOS 8 / Stream 9/10,
#   AlmaLinux 9, Oracle Linux 7-10, Fedora, SLE 12/15, openSUSE, Amazon Linux 2023.
# - ssg-debian13-ds.xml only, from Debian unstable's ssg-debian (>= 0.1.78: the first version
#   with Debian 13 content; trixie's 0.1.76 has none).
# manifest.json records each datastream's package, version, size, mtime, sha256 and profile ids
# (so no process parses 350 MB of XML to learn them).
# Idempotent: does nothing when manifest.json lists every file and they are all there.
set -euo pipefail
dest=${1:-.state/content}
products="debian11 debian12 ubuntu1604 ubuntu1804 ubuntu2004 ubuntu2204 ubuntu2404
rhel8 rhel9 rhel10 centos8 cs9 cs10 almalinux9 ol7 ol8 ol9 ol10 fedora sle12 sle15 opensuse al2023"
complete() {
  [ -s "$dest/manifest.json" ] && grep -q '"profiles"' "$dest/manifest.json" || return 1
  for p in $products debian13; do
    [ -s "$dest/ssg-$p-ds.xml" ] && grep -q "\"ssg-$p-ds.xml\"" "$dest/manifest.json" || return 1
  done
}
if complete; then exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Reuse the mirror the system already uses for Debian's main archive (first URI in its sources).
uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' || true)
if [ -z "$uri" ]; then
  uri=$(awk '$1=="deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$uri" ] || { echo "install-content: no Debian mirror found in the system's apt sources" >&2; exit 1; }
mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/etc/preferences.d"
{
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri trixie main"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri sid main"
} > "$work/sources.list"
opts=(-o Dir::Etc::sourcelist="$work/sources.list" -o Dir::Etc::sourceparts=/dev/null
      -o Dir::Etc::preferencesparts="$work/etc/preferences.d"
      -o Dir::State::Lists="$work/lists" -o Dir::Cache::archives="$work/archives"
      -o Dir::Cache::pkgcache="" -o Dir::Cache::srcpkgcache="" -o APT::Get::List-Cleanup=0
      -o Acquire::Languages=none -o APT::Sandbox::User=root
      -o Acquire::Check-Valid-Until=false)   # frozen mirrors serve expired Release files;
                                               # their signatures are still checked
apt-get "${opts[@]}" -qq update
mkdir -p "$work/trixie" "$work/sid"
(cd "$work/trixie" && apt-get "${opts[@]}" -qq download ssg-debian/trixie ssg-debderived/trixie ssg-nondebian/trixie)
(cd "$work/sid" && apt-get "${opts[@]}" -qq download ssg-debian/sid)
mkdir -p "$dest"
manifest="$work/manifest.tsv"
: > "$manifest"
take() {   # take DEB MINVERSION FILE...: extract the named datastreams of one package
  local deb=$1 min=$2; shift 2
  local pkg ver
  pkg=$(dpkg-deb -f "$deb" Package)
  ver=$(dpkg-deb -f "$deb" Version)
  dpkg --compare-versions "$ver" ge "$min" || { echo "install-content: $pkg $ver is older than $min" >&2; exit 1; }
  rm -rf "$work/x" && dpkg-deb -x "$deb" "$work/x"
  for f in "$@"; do
    src="$work/x/usr/share/xml/scap/ssg/content/$f"
    [ -s "$src" ] || continue
    cp "$src" "$dest/$f.tmp" && mv "$dest/$f.tmp" "$dest/$f"
    printf '%s\t%s\t%s\n' "$f" "$pkg" "$ver" >> "$manifest"
  done
  echo "install-content: $pkg $ver -> $dest" >&2
}
wanted=()
for p in $products; do wanted+=("ssg-$p-ds.xml"); done
for deb in "$work"/trixie/*.deb; do take "$deb" 0.1.76 "${wanted[@]}"; done
take "$(ls "$work"/sid/ssg-debian_*.deb)" 0.1.78 ssg-debian13-ds.xml
grep -q "ssg-debian12-ds.xml" "$manifest" && grep -q "ssg-debian13-ds.xml" "$manifest" \
  || { echo "install-content: the Debian 12/13 datastreams are missing from the packages" >&2; exit 1; }
# The version of the package the Debian 12 content came from (the Dockerfile test reads it).
awk -F'\t' '$1=="ssg-debian12-ds.xml" {print $3}' "$manifest" > "$dest/ssg-debian.version"
python3 - "$dest" "$manifest" <<'PY'
import hashlib, json, os, re, sys
dest, tsv = sys.argv[1], sys.argv[2]
profile = re.compile(rb'<(?:[A-Za-z0-9_.-]+:)?Profile\b[^>]*?\sid="([^"]+)"')
out = {}
for line in open(tsv):
    name, package, version = line.rstrip("\n").split("\t")
    path = os.path.join(dest, name)
    with open(path, "rb") as fh:
        data = fh.read()
    st = os.stat(path)
    out[name] = {"package": package, "version": version, "size": st.st_size,
                 "mtime_ns": st.st_mtime_ns, "sha256": hashlib.sha256(data).hexdigest(),
                 "profiles": sorted({m.decode() for m in profile.findall(data)})}
tmp = os.path.join(dest, "manifest.json.tmp")
with open(tmp, "w") as fh:
    json.dump(out, fh, indent=1, sort_keys=True)
os.replace(tmp, os.path.join(dest, "manifest.json"))
PY
