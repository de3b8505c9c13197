"""Stage: store — scan results by ScanKey, and the scan queue every process shares.

Takes in: ScanKeys and Jobs (what to scan, with which content) from admission, and finished
ScanResults from the workers.
Hands on: results to admission through ScanService (L1 TTLCache per process → L2 shared store),
single-flight leased jobs to the workers, which run webhook.scan's pipeline and store what it
returns.

Modules: base (the Store interface, claims, queue answers), sqlite (one file in WAL mode, the
single-machine default), redis_store (replicas sharing results), backends (open_store: which
one a setting names), scans (ScanService, Job), worker (`scapgate worker`), metrics (queue and
worker counters, at the bottom so nothing here imports serve/).

Must not import: webhook.serve, webhook.admission, webhook.policy. Metrics are counted here
and exported by serve/; policies never reach a worker (a Job carries its ContentSpec).
"""
