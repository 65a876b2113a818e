"""Object-store keys of the retrain stage, in one place so every module (and ``sift demo``) agrees.

Layout per classifier ``c``::

    datasets/<c>/seed/<fingerprint>.jsonl        seed rows given to ``sift train`` (immutable)
    datasets/<c>/seed/manifest.json              seed files in the order they were stored
    datasets/<c>/reviewed/*.jsonl                reviewed labels (written by the review stage)
    datasets/<c>/eval/members.json               the fixed evaluation set (text hashes; only grows) + trained texts
    datasets/<c>/versions/<fp>/version.json      a dataset version: fingerprints, counts per label
    datasets/<c>/versions/<fp>/{train,eval}.jsonl  its rows, so any run can be reproduced
    retrain/<c>/trigger.json                     durable counter of new reviewed labels
    retrain/<c>/lock.json                        the lease that lets one job run at a time
    retrain/<c>/jobs/<job-id>.json               job status, phases, verdict, error
    retrain/<c>/validation/<job-id>.json         the data-validation report of a job
    models/<c>/verdicts/<version>.json           blessing verdict of each candidate
    models/<c>/champion-history.json             versions in the order they became champion
"""

from __future__ import annotations


def seed_prefix(c: str) -> str:
    return f"datasets/{c}/seed/"


def seed_manifest(c: str) -> str:
    return f"datasets/{c}/seed/manifest.json"


def eval_members(c: str) -> str:
    return f"datasets/{c}/eval/members.json"


def dataset_version_prefix(c: str, fp: str) -> str:
    return f"datasets/{c}/versions/{fp}/"


def trigger_state(c: str) -> str:
    return f"retrain/{c}/trigger.json"


def lock(c: str) -> str:
    return f"retrain/{c}/lock.json"


def job(c: str, job_id: str) -> str:
    return f"retrain/{c}/jobs/{job_id}.json"


def jobs_prefix(c: str) -> str:
    return f"retrain/{c}/jobs/"


def validation_report(c: str, job_id: str) -> str:
    return f"retrain/{c}/validation/{job_id}.json"


def verdict(c: str, version: str) -> str:
    return f"models/{c}/verdicts/{version}.json"


def champion_history(c: str) -> str:
    return f"models/{c}/champion-history.json"
