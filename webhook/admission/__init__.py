"""Stage: admission — one AdmissionReview request in, one answer out.

Takes in: the decoded request (review: AdmissionReview v1 checked, malformed → a 400 reason),
the object's containers with their field paths (workload: Pod, pod templates of every
controller kind, CronJob's job template), and injected dependencies (model.Deps: policies, the
scan service, the tag resolver, the clock).
Hands on: a Decision (model) whose response says allowed or denied with the message, warnings
and audit annotations (response), and what serve/ logs and counts. A denial is a value with
field paths and rule ids; exceptions are for broken infrastructure only.

Modules: review, workload, decide (the flow: plan, resolve, find results, judge), budget (the
time left in a request, the scan estimate), memo (one decision for a ReplicaSet's identical
pods), breakglass (the annotation, inherited by controller-created pods), response, mutate
(optional digest pinning).

Must not import: webhook.serve (it never sees HTTP). It uses webhook.policy to judge,
webhook.store to find and submit scans, webhook.scan for image references and digests.
"""
