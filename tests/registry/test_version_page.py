"""What people read in the MLflow UI, without a server: lineage.json's portable paths, the alias history table,
the version description and reading verdicts back from it."""

from __future__ import annotations

from types import SimpleNamespace

from lmops.registry import alias_history, lineage
from lmops.registry.version_page import describe, gate_reasons

LINKS = [lineage.Link("checkpoint", "c" * 64, "/data/run-7/train/checkpoint", "train", {"steps": 12}),
         lineage.Link("tokens", "t" * 64, "/data/run-7/tokenize/tokens", "tokenize",
                      note="/data/run-7/tokenize/tokens now holds other content (digest 123): counts not read"),
         lineage.Link("dataset", "d" * 64, "/data/run-7/build/dataset", "build"),
         lineage.Link("sources", "s" * 64, "/home/ann/corpus,s3://bucket/more", None, {"files": 2})]


def test_lineage_json_names_no_absolute_path_and_reads_back_on_its_host():
    doc = lineage.to_document(LINKS, host="trainer-3")
    assert doc["storage"] == "file://trainer-3/data/run-7"
    assert [c["path"] for c in doc["chain"]] == ["train/checkpoint", "tokenize/tokens", "build/dataset",
                                                 "file://trainer-3/home/ann/corpus,s3://bucket/more"]
    assert "/data/run-7" not in str(doc["chain"])  # the note's path too
    here = lineage.from_document(doc, host="trainer-3")
    assert [link.path for link in here] == [link.path for link in LINKS]
    assert here[0].counts == {"steps": 12} and here[1].note.startswith("tokenize/tokens now holds")
    elsewhere = lineage.from_document(doc, host="laptop")  # another machine: relative paths, URIs as they are
    assert [link.path for link in elsewhere][:3] == ["train/checkpoint", "tokenize/tokens", "build/dataset"]
    assert lineage.digest_tags(LINKS) == {"lmops.lineage.model.digest": "c" * 64,
                                          "lmops.lineage.checkpoint.digest": "c" * 64,
                                          "lmops.lineage.tokens.digest": "t" * 64,
                                          "lmops.lineage.dataset.digest": "d" * 64,
                                          "lmops.lineage.sources.digest": "s" * 64}


def test_alias_history_is_a_table_latest_first():
    moves = [{"action": "promote", "version": "1", "previous": None, "at": "2026-12-06T01:00:00Z", "by": "ann"},
             {"action": "rollback", "version": "1", "previous": "2", "at": "2026-12-06T02:00:00Z", "by": "operator",
              "reason": "error rate 0.5 | max 0.05\nsee status"}]
    tags = {"lmops.alias.champion.history": __import__("json").dumps(moves), "lmops.alias.x.history": "not json",
            "lmops.managed": "true"}
    text = alias_history.markdown(alias_history.histories(tags))
    lines = text.splitlines()
    assert lines[0] == alias_history.INTRO and "### Alias `champion`" in text and "Alias `x`" not in text
    rows = [line for line in lines if line.startswith("| 2026")]
    assert rows == ["| 2026-12-06T02:00:00Z | rollback | v1 | v2 | operator | error rate 0.5 \\| max 0.05 see status |",
                    "| 2026-12-06T01:00:00Z | promote | v1 | - | ann |  |"]


def test_the_description_says_figures_and_verdicts_and_they_read_back():
    text = describe(model="lmops-lm", variant="int8", metrics={"bits_per_byte": 2.0004, "perplexity": 55.29},
                    passed=False, reasons=["FAIL source: the fp32 model failed", "PASS perplexity: ratio 1.01 <= 1.02"],
                    run_name="lmops-compress-int8-abc", parent_run="lmops-train-def", parent_version="1",
                    pipeline_run_id="p-9")
    assert "**int8** version of `lmops-lm`, made from version 1." in text
    assert "Test set: **2.000 bits per byte**, perplexity 55.29." in text and "gzip" not in text
    assert "Gates: **NOT passed**" in text and "nested under the training run `lmops-train-def`" in text
    assert gate_reasons(SimpleNamespace(tags={}, description=text)) == [
        "FAIL source: the fp32 model failed", "PASS perplexity: ratio 1.01 <= 1.02"]
    old = SimpleNamespace(tags={"lmops.gate.reasons": "FAIL a\nPASS b"}, description=None)  # registered earlier
    assert gate_reasons(old) == ["FAIL a", "PASS b"]
