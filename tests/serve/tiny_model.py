"""A tiny real Llama model directory for serving tests: random weights, a byte-level BPE trained here.

Random weights are enough for serving: what the tests check is the plumbing (protocols, batching,
limits, readiness), and greedy decoding of random weights is still deterministic, so batched and
one-at-a-time outputs can be compared exactly.
"""

from __future__ import annotations

from pathlib import Path

from lmops.data.tokenizer import CHAT_TEMPLATE

EOS, PAD = "<|endoftext|>", "<|pad|>"
TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Serving a language model means batching requests, limiting prompts and reporting readiness.",
    "KServe speaks the v1 and v2 inference protocols; OpenAI clients speak completions.",
    "def add(a, b):\n    return a + b\n",
] * 20


def make_tokenizer(out: Path, vocab_size: int = 384):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD)
    fast.chat_template = CHAT_TEMPLATE  # what the tokenize stage saves with every tokenizer
    fast.save_pretrained(out)
    return fast


def make_model_dir(out: str | Path, seed: int = 0, layers: int = 1, max_positions: int = 256, hidden: int = 32) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(out)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=max_positions,
                      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    # EOS logit pinned to 0 while ~half the others are positive: greedy never stops early, so
    # completion lengths equal max_new_tokens and tests can count them
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id].zero_()
    model.save_pretrained(out)
    return out
