"""What a person reads on a version's page in the MLflow UI: the generated description, and reading it back.

The description says, one line each: the variant and the version it was made from, the test set's bits per
byte and perplexity (with the gzip/xz lines to beat), each gate verdict, the source run and the pipeline run.
The figures themselves are MLflow metrics of the logged model (and so of its source run); the description
only repeats them for the reader. Versions registered before this carried their metrics as
``lmops.metric.*`` tags and their verdicts as ``lmops.gate.reasons``: the readers here take both.
"""

from __future__ import annotations

import re
from typing import Any

from lmops.evaluate.report import figure

METRIC_TAG = "lmops.metric."  # versions registered before metrics moved to the logged model
REASONS_TAG = "lmops.gate.reasons"  # likewise for gate verdicts (now lines of the description)
VERDICT = ("- PASS ", "- FAIL ", "- SKIP ")


def describe(*, model: str, variant: str, metrics: dict[str, Any], passed: bool, reasons: list[str],
             run_name: str, parent_run: str | None, parent_version: str | None, pipeline_run_id: str | None) -> str:
    """The version's description (Markdown, as the MLflow UI renders it)."""
    made_from = f", made from version {parent_version}" if parent_version else ""
    lines = [f"**{variant}** version of `{model}`{made_from}.", ""]
    bpb, ppl = metrics.get("bits_per_byte"), metrics.get("perplexity")
    test = f"Test set: **{figure(bpb)} bits per byte**, perplexity {figure(ppl, 2)}"
    if "gzip_9_bits_per_byte" in metrics or "xz_9e_bits_per_byte" in metrics:
        test += (f" (same text: gzip -9 {figure(metrics.get('gzip_9_bits_per_byte'))}, "
                 f"xz -9e {figure(metrics.get('xz_9e_bits_per_byte'))} bits per byte)")
    lines += [test + ".", "", f"Gates: **{'passed' if passed else 'NOT passed'}**", ""]
    lines += [f"- {reason}" for reason in reasons] or ["- (no gate checks recorded)"]
    source = f"Source run: `{run_name}`"
    if parent_run:
        source += f" (nested under the training run `{parent_run}`)"
    lines += ["", source + "; metrics on that run and its logged model, lineage in its `lineage.json`."]
    if pipeline_run_id:
        lines.append(f"Pipeline run: `{pipeline_run_id}`.")
    return "\n".join(lines) + "\n"


def gate_reasons(mv) -> list[str]:
    """The gate verdict lines of a version: its description's, or the tag of a version registered earlier."""
    tags = mv.tags or {}
    if tags.get(REASONS_TAG):
        return tags[REASONS_TAG].splitlines()
    return [line[2:] for line in (mv.description or "").splitlines() if line.startswith(VERDICT)]


def version_metrics(client, mv) -> dict[str, float]:
    """The evaluation metrics recorded for a version: its logged model's, else (earlier versions) its tags."""
    tags = mv.tags or {}
    old = {k[len(METRIC_TAG):]: float(v) for k, v in tags.items() if k.startswith(METRIC_TAG)}
    model_id = logged_model_id(mv)
    if old or not model_id:
        return old
    return {m.key: float(m.value) for m in client.get_logged_model(model_id).metrics or []}


def logged_model_id(mv) -> str | None:
    """The logged model a version was registered from (``models:/<model id>`` as its source: the sqlite
    store does not return the version's own model_id field)."""
    if getattr(mv, "model_id", None):
        return mv.model_id
    source = mv.source or ""
    return source[len("models:/"):] if re.fullmatch(r"models:/m-[0-9a-f]+", source) else None
