"""Gates: pure decisions — a candidate's metrics against a baseline's, per-metric rules -> pass/fail + reasons.

No I/O, no clock: the same inputs always give the same verdict, so evaluation, compression and the
rollout controller can all call it and tests can pin every branch. Rules are ``GateRule``s (the
``evaluate.gate`` config section) or plain dicts with the same keys.

Policy for missing data:
- a metric the rules name but the candidate lacks (or is NaN) fails — a gate that cannot be checked
  must not pass silently;
- no baseline at all (first model): only absolute bounds apply, and each skipped relative check is
  listed in the reasons;
- a baseline that lacks the metric (an older champion evaluated before the metric existed): relative
  checks on it are skipped with a note, so one missing number cannot block every candidate forever.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lmops.config import GateRule

# Slack for float rounding at a limit: 1.01 * 12.0 / 12.0 - 1 is not exactly 0.01.
EPS = 1e-9

# Known directions; a rule for another metric that compares directions must set greater_is_better.
GREATER_IS_BETTER: dict[str, bool] = {
    "perplexity": False,
    "nll": False,
    "bits_per_byte": False,
    "loss": False,
    "val_loss": False,
    "latency_ms_per_token": False,
    "size_bytes": False,
    "params": False,
    "error_rate": False,
    "eval_tokens_per_s": True,
    "tokens_per_s": True,
    "accuracy": True,
    "mfu": True,
}


@dataclass(frozen=True)
class Check:
    metric: str
    check: str
    """Which rule field: min, max, min_ratio, max_ratio, max_increase, max_decrease, max_regression, min_improvement."""
    status: str
    """pass, fail or skip."""
    message: str
    candidate: float | None = None
    baseline: float | None = None
    limit: float | None = None


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: list[str]
    """One line per check, prefixed PASS / FAIL / SKIP, failures first."""
    details: list[Check] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": self.reasons, "details": [vars(c) for c in self.details]}


def parse_rules(rules: Mapping[str, GateRule | Mapping[str, Any]]) -> dict[str, GateRule]:
    """Validate rule dicts (unknown keys are errors) and make sure each directional rule has a direction."""
    parsed = {}
    for metric, rule in rules.items():
        r = rule if isinstance(rule, GateRule) else GateRule.model_validate(dict(rule))
        directional = r.max_regression is not None or r.min_improvement is not None
        if directional and r.greater_is_better is None and metric not in GREATER_IS_BETTER:
            raise ValueError(f"gate for {metric!r}: unknown direction — set greater_is_better")
        parsed[metric] = r
    return parsed


def check(candidate: Mapping[str, Any], baseline: Mapping[str, Any] | None,
          rules: Mapping[str, GateRule | Mapping[str, Any]]) -> Verdict:
    """Apply every rule to the candidate's metrics (and the baseline's, where there is one)."""
    results: list[Check] = []
    for metric, rule in parse_rules(rules).items():
        results.extend(_check_metric(metric, rule, candidate, baseline))
    passed = all(c.status != "fail" for c in results)
    order = {"fail": 0, "skip": 1, "pass": 2}
    ordered = sorted(results, key=lambda c: order[c.status])
    reasons = [f"{c.status.upper()} {c.message}" for c in ordered]
    if not results:
        reasons = ["PASS no gate rules configured"]
    return Verdict(passed, reasons, ordered)


def _number(metrics: Mapping[str, Any] | None, metric: str) -> float | None:
    if metrics is None or metrics.get(metric) is None:
        return None
    try:
        value = float(metrics[metric])
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _check_metric(metric: str, rule: GateRule, candidate: Mapping[str, Any],
                  baseline: Mapping[str, Any] | None) -> list[Check]:
    cand = _number(candidate, metric)
    if cand is None:
        return [Check(metric, "present", "fail", f"{metric}: missing from the candidate's metrics")]
    out: list[Check] = []

    def verdict(name: str, ok: bool, text: str, base: float | None, limit: float) -> None:
        out.append(Check(metric, name, "pass" if ok else "fail", f"{metric}: {text}", cand, base, limit))

    if rule.min is not None:
        verdict("min", cand >= rule.min, f"{cand:.6g} >= min {rule.min:.6g}", None, rule.min)
    if rule.max is not None:
        verdict("max", cand <= rule.max, f"{cand:.6g} <= max {rule.max:.6g}", None, rule.max)

    relative = [name for name in ("min_ratio", "max_ratio", "max_increase", "max_decrease", "max_regression",
                                  "min_improvement") if getattr(rule, name) is not None]
    if not relative:
        return out
    base = _number(baseline, metric)
    if base is None:
        why = "no baseline" if baseline is None else "baseline has no value"
        out += [Check(metric, name, "skip", f"{metric}: {name} not checked ({why})", cand) for name in relative]
        return out

    higher = rule.greater_is_better if rule.greater_is_better is not None else GREATER_IS_BETTER.get(metric, True)
    ratio = cand / base if base != 0 else math.inf if cand > 0 else -math.inf if cand < 0 else 1.0
    vs = f"candidate {cand:.6g} vs baseline {base:.6g}"
    if rule.min_ratio is not None:
        verdict("min_ratio", ratio >= rule.min_ratio - EPS, f"ratio {ratio:.4f} >= {rule.min_ratio} ({vs})", base, rule.min_ratio)
    if rule.max_ratio is not None:
        verdict("max_ratio", ratio <= rule.max_ratio + EPS, f"ratio {ratio:.4f} <= {rule.max_ratio} ({vs})", base, rule.max_ratio)
    if rule.max_increase is not None:
        verdict("max_increase", cand - base <= rule.max_increase + EPS * abs(base),
                f"increase {cand - base:.6g} <= {rule.max_increase:.6g} ({vs})", base, rule.max_increase)
    if rule.max_decrease is not None:
        verdict("max_decrease", base - cand <= rule.max_decrease + EPS * abs(base),
                f"decrease {base - cand:.6g} <= {rule.max_decrease:.6g} ({vs})", base, rule.max_decrease)
    # relative change, and the same signed so that > 0 means better whatever the metric's direction
    change = (cand - base) / abs(base) if base != 0 else (0.0 if cand == base else math.copysign(math.inf, cand - base))
    better = change if higher else -change
    moved = f"changed {change:+.2%} ({'higher' if higher else 'lower'} is better; {vs})"
    if rule.max_regression is not None:
        verdict("max_regression", better >= -rule.max_regression - EPS,
                f"{moved}, at most {rule.max_regression:.2%} worse allowed", base, rule.max_regression)
    if rule.min_improvement is not None:
        verdict("min_improvement", better >= rule.min_improvement - EPS,
                f"{moved}, at least {rule.min_improvement:.2%} better required", base, rule.min_improvement)
    return out
