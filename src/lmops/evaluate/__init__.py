"""Stage 4, evaluate: how a candidate model scores on the test split, and whether it passes its gate.

- ``metrics``: perplexity, bits per byte, evaluation tokens/s, generation latency, size (``evaluate_model``)
- ``token_bytes``: the bytes of text per token id, the denominator of bits per byte
- ``compressors``: gzip -9 / xz -9e bits per byte on the same text, the line a model must beat
- ``report``: how these figures read in log lines and the run's summary
- ``stage``: the stage itself (checkpoint/ + tokens/ -> eval/ with eval.json and gate.json)

Nothing is imported here, so a task that only needs the stage's cache answer does not load torch.
"""
