"""MLflow "model from code": a pyfunc that generates text with the Hugging Face directory logged beside it.

MLflow copies this file into the logged model and executes it when loading, so
``mlflow.pyfunc.load_model("models:/NAME@ALIAS")`` needs only mlflow, torch and transformers — not
lmops. The HF directory itself is the artifact ``hf_model`` (unchanged, manifest included), which is
what ``lmops.registry.download_model`` fetches for servers that want the plain directory. An int8
directory (``quantization.json``) loads through ``int8_format.py``, which the registry logs beside this
file as MLflow ``code_paths`` (it has no lmops imports).

Input: a list of prompts, a string, or a DataFrame with a ``prompt`` column.
Output: the generated continuations (prompt excluded), one string per prompt.
Params: ``max_new_tokens`` (32), ``do_sample`` (False), ``temperature`` (1.0).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

ARTIFACT = "hf_model"


class _Generator:
    """Loads the HF directory once; generates greedily (or samples) one prompt at a time."""

    # predict has no type hints on purpose: the signature is explicit, and MLflow would otherwise derive a
    # schema from the hints and convert inputs itself.
    def load_context(self, context) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = context.artifacts[ARTIFACT]
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if os.path.isfile(os.path.join(path, "quantization.json")):
            from int8_format import load_quantized  # logged with the model (code_paths)

            self.model = load_quantized(path)
        else:
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def predict(self, context, model_input, params=None):
        import torch

        params = params or {}
        prompts = _prompts(model_input)
        pad = self.model.config.pad_token_id
        outputs = []
        # one prompt at a time: no padding side effects, and batch 1 is what the latency gate measures
        for prompt in prompts:
            enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
            if enc["input_ids"].shape[1] == 0:  # an empty prompt starts from BOS
                bos = self.model.config.bos_token_id
                enc = {"input_ids": torch.tensor([[bos]]), "attention_mask": torch.tensor([[1]])}
            sample = bool(params.get("do_sample", False))
            with torch.no_grad():
                out = self.model.generate(**enc, max_new_tokens=int(params.get("max_new_tokens", 32)),
                                          do_sample=sample, pad_token_id=pad,
                                          **({"temperature": float(params.get("temperature", 1.0))} if sample else {}))
            outputs.append(self.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
        return outputs


def _prompts(model_input: Any) -> list[str]:
    if isinstance(model_input, str):
        return [model_input]
    if hasattr(model_input, "columns"):  # a pandas DataFrame (how a signature-checked input arrives)
        column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
        return [str(v) for v in model_input[column].tolist()]
    if isinstance(model_input, dict):
        value = model_input.get("prompt", model_input.get("prompts"))
        return [value] if isinstance(value, str) else [str(v) for v in value]
    return [str(v) for v in model_input]


with warnings.catch_warnings():
    # MLflow warns "add type hints to predict" when a PythonModel subclass is created: see above
    warnings.filterwarnings("ignore", message=".*Add type hints")  # (the message starts with a colour code)
    HFTextGenerator = type("HFTextGenerator", (_Generator, PythonModel), {"__module__": __name__})

mlflow.models.set_model(HFTextGenerator())
