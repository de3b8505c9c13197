# scapgate: the admission webhook (`scapgate serve`, gunicorn) and `scapgate scan`, on Debian 12.
#
#   docker build --build-arg BASE_IMAGE=debian:bookworm-slim -t scapgate .
#
# BASE_IMAGE is an argument because public images cannot be pulled everywhere we build: the
# tests import a debootstrap'd bookworm root instead (tests/test_dockerfile.py). DEBIAN_MIRROR
# and DEBIAN_SECURITY_MIRROR point apt at the archive the build machine uses (empty = keep the
# base image's sources). The scanner versions are arguments so the tests can build exactly the
# versions they run against on the host; the defaults are the Debian 12 versions we measured.
#
# Runtime contract (the Helm chart sets all of it; `docker run` needs the same):
#   read-only root filesystem; tmpfs (or emptyDir) on /tmp, /scratch and /var/lib/scapgate;
#   the image's user is 10001 (no capabilities): enough to serve, lint policies and answer
#   from the store. Scanning unpacks image layers with `umoci raw unpack`, which must recreate
#   every file's uid, gid, mode (setuid/setgid included), device nodes and file capabilities
#   exactly, or oscap judges a different filesystem (DESIGN.md, pitfall 5). Kubernetes cannot
#   hand capabilities to a non-root process (no ambient capabilities), so containers that scan
#   run as uid 0 with every capability dropped except these seven, each one measured as needed
#   (tests/test_dockerfile.py::test_each_capability_is_needed, ::test_rpm_images_are_judged_…):
#     CHOWN         lchown every entry to the uid/gid in the layer
#     FOWNER        chmod/utimes on entries owned by other uids
#     FSETID        keep setgid bits on files and directories whose group is not ours
#     DAC_OVERRIDE  write into read-only directories (0555) and read 0700 homes while
#                   unpacking, scanning and removing the root afterwards
#     MKNOD         device nodes under /dev that some images ship
#     SETFCAP       restore security.capability xattrs (e.g. ping's cap_net_raw)
#     SYS_CHROOT    oscap's rpm probes chroot() into the unpacked root of RPM-based images
#   and with no-new-privileges; no setuid binary is left in the image.
#     docker run --read-only --tmpfs /tmp --tmpfs /scratch --tmpfs /var/lib/scapgate \
#       --user 0 --cap-drop ALL --cap-add CHOWN --cap-add FOWNER --cap-add FSETID \
#       --cap-add DAC_OVERRIDE --cap-add MKNOD --cap-add SETFCAP --cap-add SYS_CHROOT \
#       --security-opt no-new-privileges scapgate scan registry.example/app:1.0

ARG BASE_IMAGE=debian:bookworm-slim

# --------------------------------------------------------------------------- os: apt sources
FROM ${BASE_IMAGE} AS os
ARG DEBIAN_MIRROR=""
ARG DEBIAN_SECURITY_MIRROR=""
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN if [ -n "$DEBIAN_MIRROR" ]; then \
      rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*; \
      keyring=/usr/share/keyrings/debian-archive-keyring.gpg; \
      printf 'Types: deb\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: %s\n' \
        "$DEBIAN_MIRROR" "$keyring" > /etc/apt/sources.list.d/debian.sources; \
      if [ -n "$DEBIAN_SECURITY_MIRROR" ]; then \
        printf '\nTypes: deb\nURIs: %s\nSuites: bookworm-security\nComponents: main\nSigned-By: %s\n' \
          "$DEBIAN_SECURITY_MIRROR" "$keyring" >> /etc/apt/sources.list.d/debian.sources; \
      fi; \
    fi; \
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
      > /etc/apt/apt.conf.d/90scapgate

# --------------------------------------------------------------------------- build: venv + content
FROM os AS build
# Build-only tools; their exact versions do not reach the final image.
# hadolint ignore=DL3008
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# The SSG datastreams of every distribution scapgate judges (README "Which distribution, which
# content": trixie's ssg-debian/-debderived/-nondebian 0.1.76, Debian 13's from unstable), exactly
# as the tests install them: a private sources list, apt-get download, dpkg-deb -x.
COPY scripts/install-content.sh /src/scripts/install-content.sh
RUN bash /src/scripts/install-content.sh /opt/scapgate/content
# Machines behind a TLS-inspecting proxy trust its CA locally; EXTRA_CA_CERTS (PEM text) lets
# pip in this stage trust it too. It stays in this stage: the runtime copies only /opt/scapgate.
ARG EXTRA_CA_CERTS=""
ENV PIP_CERT=/etc/scapgate-build/ca.pem
RUN install -d /etc/scapgate-build \
 && { cat /etc/ssl/certs/ca-certificates.crt; printf '%s\n' "$EXTRA_CA_CERTS"; } > "$PIP_CERT"
COPY requirements.txt /opt/scapgate/app/requirements.txt
RUN python3 -m venv /opt/scapgate/venv \
 && /opt/scapgate/venv/bin/pip install --no-cache-dir --disable-pip-version-check -q \
      -r /opt/scapgate/app/requirements.txt
# The app keeps the repository's layout (webhook/ beside policies/schema and content/, where the
# code looks for its schema and shipped SCAP content) and is installed the way `make` installs
# it, so the image runs the very layout the tests run. The context is an allow-list
# (.dockerignore), so this copies only pyproject.toml, webhook/, policies/ and content/ (and
# the two files copied above). `policy reads` computes each shipped profile's partial-unpack
# filter once, kept beside the content (scan/reach.py), so no scan pays for it.
COPY . /opt/scapgate/app/
RUN /opt/scapgate/venv/bin/pip install --no-cache-dir --disable-pip-version-check -q \
      --no-deps -e /opt/scapgate/app \
 && /opt/scapgate/venv/bin/python -m compileall -q /opt/scapgate/app/webhook \
 && /opt/scapgate/venv/bin/scapgate --help >/dev/null \
 && SCAPGATE_CONTENT_DIR=/opt/scapgate/content /opt/scapgate/venv/bin/scapgate policy reads \
      /opt/scapgate/app/policies /opt/scapgate/app/policies/examples >/dev/null

# --------------------------------------------------------------------------- runtime
FROM os AS runtime
ARG OPENSCAP_VERSION=1.3.7+dfsg-1+deb12u1
ARG SKOPEO_VERSION=1.9.3+ds1-1+b10
ARG UMOCI_VERSION=0.4.7+ds-3+b7
# librpm (an openscap-scanner dependency) reads its rpmrc and macros from rpm-common, which is
# only recommended: without it oscap's rpm probes see no package in an RPM-based image (every
# rule notapplicable; measured in this image, tests/test_dockerfile.py).
ARG RPM_COMMON_VERSION=4.18.0+dfsg-1+deb12u1
# python3 and ca-certificates follow the Debian 12 point release; the scanner is pinned.
# /var/lib/scapgate and /scratch are 1777 like /tmp: the image's user (serving) and uid 0
# (scanning) both write there, and docker's --tmpfs takes the mode of the directory it covers.
# hadolint ignore=DL3008
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3 ca-certificates \
      "openscap-scanner=${OPENSCAP_VERSION}" "skopeo=${SKOPEO_VERSION}" "umoci=${UMOCI_VERSION}" \
      "rpm-common=${RPM_COMMON_VERSION}" \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && find / -xdev -type f -perm /6000 -exec chmod a-s {} + \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/scapgate --no-create-home \
      --shell /usr/sbin/nologin scapgate \
 && install -d -m 1777 /var/lib/scapgate /scratch \
 && install -d -m 0755 /etc/scapgate/tls
# Metadata first: with the vfs storage driver every build step copies the whole root, so the
# steps that never change are cached before the one that changes with every commit.
ENV PATH=/opt/scapgate/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TMPDIR=/tmp \
    SCAPGATE_CONTENT_DIR=/opt/scapgate/content \
    SCAPGATE_POLICY=/opt/scapgate/app/policies \
    SCAPGATE_STATE_DIR=/var/lib/scapgate \
    SCAPGATE_SCRATCH_DIR=/scratch
USER 10001:10001
EXPOSE 8443
ENTRYPOINT ["scapgate"]
CMD ["serve", "--bind", "0.0.0.0:8443", "--cert", "/etc/scapgate/tls/tls.crt", \
     "--key", "/etc/scapgate/tls/tls.key", "--policy", "/opt/scapgate/app/policies", \
     "--state-dir", "/var/lib/scapgate"]
COPY --from=build /opt/scapgate /opt/scapgate
