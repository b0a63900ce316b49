"""Benchmark: the KServe model server against in-process generation on the same model.

    .venv/bin/python bench/serve.py [--model DIR] [--int8-model DIR] [--repeats 30] [--new-tokens 16]

1. Overhead: one v1 HTTP request (`lmops serve` on 127.0.0.1, same process-free machine) against
   `generate_batch` called in process on the same weights, same prompt, greedy, same token count.
   Runs are interleaved (in-process, HTTP, in-process, ...) and the median of the per-pair
   differences is reported, because wall clock on shared cores drifts. Target: <= 3 ms.
2. Throughput: requests/s with 1, 4 and 16 concurrent clients (threads, one keep-alive session
   each). Micro-batching should make 16 clients much faster than 1. Target: >= 4x at 16 vs 1.
3. int8 vs fp32 server latency, when --int8-model names a directory made by the compress stage
   (quantization.json marker; loaded through lmops.compress.quantize).
Default model: a tiny-preset-sized Llama (2 layers, d_model 64) with random weights and a BPE
trained here; both sides use one torch thread.
"""

from __future__ import annotations

import os
import sys

# bench/ holds tokenize.py, which would shadow the stdlib module every import below needs
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import requests  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROMPT = "Serving a language model means batching requests and"


def make_tiny_model(out: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = [PROMPT, "The quick brown fox jumps over the lazy dog.", "def add(a, b): return a + b"] * 50
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>", "<|pad|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>")
    fast.save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                      bos_token_id=fast.eos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight[fast.eos_token_id].zero_()  # never stop early: every request makes N tokens
    model.save_pretrained(out)
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: Path, log: Path, max_wait_ms: float | None):
        self.port = free_port()
        sets = ["serve.threads=1", "serve.max_batch_size=16"]
        if max_wait_ms is not None:
            sets.append(f"serve.max_wait_ms={max_wait_ms}")
        cmd = [sys.executable, "-m", "lmops.cli", "serve", "--model", str(model), "--port", str(self.port),
               "--name", "bench", *[a for s in sets for a in ("--set", s)]]
        self.log = log
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}/v1/models/bench:predict"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited:\n{log.read_text()[-2000:]}")
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/v1/models/bench", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit("server not ready in 120 s")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(30)


def body(new_tokens: int) -> dict:
    return {"instances": [{"prompt": PROMPT, "max_new_tokens": new_tokens}]}


def overhead(server: Server, model_dir: Path, repeats: int, new_tokens: int) -> dict:
    from lmops.serve.generate import GenRequest, generate_batch
    from lmops.serve.loader import load_model_dir

    lm = load_model_dir(model_dir)
    req = GenRequest(lm.tokenizer.encode(PROMPT, add_special_tokens=False), new_tokens)
    session = requests.Session()
    for _ in range(3):  # warm both paths
        generate_batch(lm.model, lm.tokenizer, [req])
        session.post(server.url, json=body(new_tokens)).raise_for_status()
    local, http = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = generate_batch(lm.model, lm.tokenizer, [req])
        local.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        r = session.post(server.url, json=body(new_tokens))
        http.append(time.perf_counter() - t0)
        assert r.json()["predictions"][0]["completion_tokens"] == len(res[0].token_ids) == new_tokens
    diffs = [(h - l) * 1000 for h, l in zip(http, local)]
    return {"local_ms": statistics.median(local) * 1000, "http_ms": statistics.median(http) * 1000,
            "overhead_ms": statistics.median(diffs)}


def throughput(server: Server, clients: int, per_client: int, new_tokens: int) -> float:
    errors: list[str] = []

    def run() -> None:
        with requests.Session() as s:
            for _ in range(per_client):
                r = s.post(server.url, json=body(new_tokens), timeout=120)
                if r.status_code != 200:
                    errors.append(r.text)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} failed requests: {errors[0][:300]}")
    return clients * per_client / wall


def server_latency(server: Server, repeats: int, new_tokens: int) -> float:
    s = requests.Session()
    s.post(server.url, json=body(new_tokens)).raise_for_status()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        s.post(server.url, json=body(new_tokens)).raise_for_status()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="HF model directory (default: a tiny random model made here)")
    ap.add_argument("--int8-model", type=Path, help="int8 directory from the compress stage (quantization.json)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--per-client", type=int, default=6, help="requests per client in the throughput runs")
    ap.add_argument("--max-wait-ms", type=float, default=None, help="serve.max_wait_ms (default: the config's)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="lmops-bench-serve-") as tmp:
        tmp = Path(tmp)
        model_dir = args.model or make_tiny_model(tmp / "model")
        server = Server(model_dir, tmp / "server.log", args.max_wait_ms)
        try:
            o = overhead(server, model_dir, args.repeats, args.new_tokens)
            tput = {c: throughput(server, c, args.per_client if c > 1 else args.per_client * 2, args.new_tokens)
                    for c in (1, 4, 16)}
            fp32_ms = server_latency(server, args.repeats, args.new_tokens)
        finally:
            server.stop()
        int8_ms = None
        if args.int8_model:
            s8 = Server(args.int8_model, tmp / "server-int8.log", args.max_wait_ms)
            try:
                int8_ms = server_latency(s8, args.repeats, args.new_tokens)
            finally:
                s8.stop()

    print(f"\nmodel: {model_dir if args.model else 'tiny random Llama (2x64)'}; {args.new_tokens} new tokens, "
          f"greedy, 1 torch thread")
    print(f"{'measure':<44} {'value':>10}  target")
    print(f"{'in-process generate, median':<44} {o['local_ms']:>8.2f}ms")
    print(f"{'HTTP v1 predict, median':<44} {o['http_ms']:>8.2f}ms")
    print(f"{'HTTP overhead (median of paired diffs)':<44} {o['overhead_ms']:>8.2f}ms  <= 3 ms "
          f"{'OK' if o['overhead_ms'] <= 3 else 'MISSED'}")
    for c, v in tput.items():
        print(f"{f'throughput, {c} concurrent clients':<44} {v:>7.1f}/s")
    ratio = tput[16] / tput[1]
    print(f"{'throughput ratio 16 vs 1 clients':<44} {ratio:>8.2f}x  >= 4x {'OK' if ratio >= 4 else 'MISSED'}")
    print(f"{'fp32 server latency, median':<44} {fp32_ms:>8.2f}ms")
    if int8_ms is not None:
        print(f"{'int8 server latency, median':<44} {int8_ms:>8.2f}ms  ({int8_ms / fp32_ms:.2f}x fp32)")
    else:
        print(f"{'int8 server latency':<44} {'-':>10}  pass --int8-model DIR (lmops compress output)")


if __name__ == "__main__":
    main()
