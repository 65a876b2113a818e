"""Prediction records on the real S3 server: readable by id from another replica, tenant-scoped."""

from __future__ import annotations

from infra.objectstore import ObjectStore
from infra.predictions import PredictionRecord, PredictionStore


def _rec(classifier: str, i: int) -> PredictionRecord:
    return PredictionRecord(classifier=classifier, text=f"text {i}", label="a", confidence=0.5,
                            scores={"a": 0.5, "b": 0.5}, model_version="3")


def test_records_resolve_on_another_replica_and_stay_in_their_tenant(sift_settings):
    store = ObjectStore(sift_settings)
    store.ensure_bucket()
    writer = PredictionStore(store, max_segment=4)
    ids = [writer.record(_rec("acme", i)) for i in range(10)]  # three segments
    assert len(set(ids)) == 10 and all(len(i) == 32 for i in ids)
    assert writer.get("acme", ids[9]).text == "text 9"  # readable at once on the replica that served it
    assert writer.flush()

    reader = PredictionStore(store)  # another replica: only the object store in common
    for i, pid in enumerate(ids):
        rec = reader.get("acme", pid)
        assert rec is not None and rec.text == f"text {i}" and rec.prediction_id == pid
    assert reader.get("other-tenant", ids[0]) is None
    assert reader.get("acme", ids[0][:24] + "000000ff") is None  # index past the segment
    assert reader.get("acme", "0" * 32) is None  # unknown segment
    assert reader.get("acme", "../../etc/passwd") is None
    writer.close()
    reader.close()


def test_records_dropped_while_the_store_is_down_are_counted_in_metrics():
    from prometheus_client import REGISTRY

    from infra.local.procs import free_port
    from infra.settings import Settings

    def dropped() -> float:
        return REGISTRY.get_sample_value("sift_prediction_records_dropped_total") or 0

    down = ObjectStore(Settings(s3_endpoint=f"http://127.0.0.1:{free_port()}", bucket="nowhere"))
    before = dropped()
    writer = PredictionStore(down, max_segment=1, max_unwritten_segments=2, flush_interval_s=3600)
    for i in range(5):  # one segment each; only the two newest unwritten segments are kept
        writer.record(_rec("acme", i))
    assert dropped() - before == 3
