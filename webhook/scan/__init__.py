"""Stage: scan — an image reference and SCAP content in, a ScanResult out. The bottom stage.

Takes in: an image reference (images: normalised, never a tag alone), registry settings and
credentials (registry: skopeo, containers-image conventions; resolver: tag → platform
manifest digest, cached), a Docker daemon as an alternative source (daemon), and a ContentSpec
(content: datastream, profile, tailoring, OVAL files and their sha256).
Hands on: a ScanResult (results) with every rule and OVAL definition result, the image's
os-release, tool versions and timings, keyed by ScanKey — or an error result that says why.

The pipeline: skopeo copy → content-addressed OCI layout cache (diskcache) → umoci raw unpack
with the layer walk beside it (unpack) → the root confined (rootfs) → oscap xccdf eval / oval
eval (oscap) → lxml parse. engine wires it from Settings for `scapgate scan` and the workers.

Must not import: webhook.serve, webhook.admission, webhook.policy, webhook.store. It judges
nothing: thresholds and waivers are applied above it, at admission time.
"""
