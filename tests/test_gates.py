"""Gates: each rule kind in both directions, missing data, and the config section."""

from __future__ import annotations

import math

import pytest

from lmops.config import ConfigError, GateRule, config_from_dict
from lmops.gates import check, parse_rules

CHAMPION = {"perplexity": 20.0, "eval_tokens_per_s": 1000.0, "latency_ms_per_token": 10.0, "size_bytes": 1000}


def verdict(candidate, rules, baseline=CHAMPION):
    return check(candidate, baseline, rules)


def test_relative_regression_respects_each_metrics_direction():
    rules = {"perplexity": {"max_regression": 0.05}, "eval_tokens_per_s": {"max_regression": 0.05}}
    assert verdict({"perplexity": 21.0, "eval_tokens_per_s": 950.0}, rules).passed  # exactly 5% worse each
    worse_ppl = verdict({"perplexity": 21.2, "eval_tokens_per_s": 2000.0}, rules)
    assert not worse_ppl.passed and worse_ppl.reasons[0].startswith("FAIL perplexity")
    slower = verdict({"perplexity": 10.0, "eval_tokens_per_s": 940.0}, rules)
    assert not slower.passed and "eval_tokens_per_s" in slower.reasons[0]
    assert [c.status for c in slower.details] == ["fail", "pass"]  # failures first
    # bits per byte, like perplexity, is better lower
    bpb = {"bits_per_byte": {"max_regression": 0.01}}
    assert check({"bits_per_byte": 2.02}, {"bits_per_byte": 2.0}, bpb).passed
    assert not check({"bits_per_byte": 2.03}, {"bits_per_byte": 2.0}, bpb).passed


def test_min_improvement_and_absolute_deltas():
    rules = {"perplexity": {"min_improvement": 0.1}, "latency_ms_per_token": {"max_increase": 2.0},
             "size_bytes": {"max_decrease": 600}}
    assert verdict({"perplexity": 18.0, "latency_ms_per_token": 12.0, "size_bytes": 400}, rules).passed
    v = verdict({"perplexity": 18.5, "latency_ms_per_token": 12.5, "size_bytes": 300}, rules)
    assert not v.passed
    assert {c.check for c in v.details if c.status == "fail"} == {"min_improvement", "max_increase", "max_decrease"}


def test_ratios_and_absolute_bounds():
    rules = {"size_bytes": {"max_ratio": 0.6}, "eval_tokens_per_s": {"min_ratio": 1.5, "min": 100},
             "perplexity": {"max": 25}}
    assert verdict({"size_bytes": 600, "eval_tokens_per_s": 1500.0, "perplexity": 25.0}, rules).passed
    v = verdict({"size_bytes": 601, "eval_tokens_per_s": 1400.0, "perplexity": 25.1}, rules)
    assert sorted(c.check for c in v.details if c.status == "fail") == ["max", "max_ratio", "min_ratio"]


def test_no_baseline_applies_only_absolute_bounds_and_says_so():
    rules = {"perplexity": {"max_regression": 0.01, "max": 30}}
    v = check({"perplexity": 29.0}, None, rules)
    assert v.passed
    assert "SKIP perplexity: max_regression not checked (no baseline)" in v.reasons
    assert not check({"perplexity": 31.0}, None, rules).passed
    # an older champion without the metric: skipped with a note, not a permanent block
    v = check({"perplexity": 29.0}, {"size_bytes": 5}, rules)
    assert v.passed and any("baseline has no value" in r for r in v.reasons)


def test_missing_or_nan_candidate_metric_fails():
    for candidate in ({}, {"perplexity": None}, {"perplexity": math.nan}, {"perplexity": "n/a"}):
        v = check(candidate, CHAMPION, {"perplexity": {"max": 100}})
        assert not v.passed and v.reasons == ["FAIL perplexity: missing from the candidate's metrics"]


def test_rules_are_validated():
    with pytest.raises(ValueError, match="max_ratoi"):
        parse_rules({"perplexity": {"max_ratoi": 1.0}})
    with pytest.raises(ValueError, match="greater_is_better"):
        parse_rules({"bleu": {"min_improvement": 0.01}})
    bleu = {"bleu": {"min_improvement": 0.1, "greater_is_better": True}}
    assert check({"bleu": 33.0}, {"bleu": 30.0}, bleu).passed
    assert not check({"bleu": 33.0}, {"bleu": 30.0}, {"bleu": {"min_improvement": 0.1, "greater_is_better": False}}).passed
    assert check({"x": 1}, None, {}).reasons == ["PASS no gate rules configured"]


def test_default_gate_from_config():
    gate = config_from_dict({}).evaluate.gate
    assert gate == {"perplexity": GateRule(max_regression=0.01)}
    assert check({"perplexity": 20.2}, CHAMPION, gate).passed
    assert not check({"perplexity": 20.3}, CHAMPION, gate).passed
    custom = config_from_dict({"evaluate": {"gate": {"size_bytes": {"max_ratio": 0.6}}}}).evaluate.gate
    assert not check({"size_bytes": 700}, CHAMPION, custom).passed
    with pytest.raises(ConfigError, match="evaluate.gate.size_bytes.max_ratio"):
        config_from_dict({"evaluate": {"gate": {"size_bytes": {"max_ratio": "small"}}}})


def test_verdict_serialises():
    d = check({"perplexity": 19.0}, CHAMPION, {"perplexity": {"max_regression": 0.0}}).to_dict()
    assert d["passed"] and d["details"][0]["baseline"] == 20.0 and d["details"][0]["check"] == "max_regression"
