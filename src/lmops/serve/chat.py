"""Chat messages -> one prompt, through the chat template saved with the model's tokenizer.

The template is the tokenizer's own (``tokenizer_config.json``, written by the tokenize stage:
lmops.data.tokenizer.CHAT_TEMPLATE), so ``apply_chat_template`` on the served directory, vLLM and
KServe's Hugging Face runtime all build the same prompt as this server.
"""

from __future__ import annotations

from lmops.config import ServeConfig
from lmops.serve.openai_schema import ChatMessage
from lmops.serve.params import BadRequest, TooLarge, check_unicode


def chat_prompt(tokenizer, messages: list[ChatMessage], cfg: ServeConfig) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise BadRequest("this model has no chat template; use /v1/completions")
    turns = [{"role": m.role, "content": m.text()} for m in messages]
    for i, t in enumerate(turns):
        check_unicode(t["content"], f"messages[{i}].content")
    # bounded before the template runs, like any prompt (the template adds a few bytes per turn,
    # which the prompt's own byte and token limits catch afterwards)
    if sum(len(t["content"].encode("utf-8", "surrogatepass")) for t in turns) > cfg.max_prompt_bytes:
        raise TooLarge(f"messages are longer than {cfg.max_prompt_bytes} bytes")
    try:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # a template may reject a conversation (jinja's raise_exception)
        raise BadRequest(f"messages do not fit this model's chat template: {e}") from None
