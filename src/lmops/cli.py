"""``lmops`` command line: one sub-command per stage, plus ``run`` for the whole chain.

Every command takes ``-c/--config`` (a preset name from configs/ or a YAML path) and any number of
``--set key.path=value`` overrides. Errors a user can fix print one message and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lmops.config import Config, load_config
from lmops.errors import LmopsError

SAMPLE_CORPUS = Path(".state/sample-corpus")


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.set)


def _out(args: argparse.Namespace, cfg: Config, name: str) -> Path:
    return Path(args.out) if getattr(args, "out", None) else Path(cfg.workdir) / name


def _ensure_sample_corpus(cfg: Config) -> None:
    """The default source is the sample corpus: make it (offline, deterministic) on first use."""
    if any(Path(s) == SAMPLE_CORPUS for s in cfg.build.sources):
        from lmops.data.sample_corpus import make_sample_corpus

        make_sample_corpus(SAMPLE_CORPUS)


def cmd_build(args: argparse.Namespace) -> dict:
    from lmops.data.build import build_dataset

    cfg = _config(args)
    _ensure_sample_corpus(cfg)
    res = build_dataset(cfg.build, _out(args, cfg, "dataset"), cache_dir=cfg.cache_dir)
    return _summary("build", res)


def cmd_tokenize(args: argparse.Namespace) -> dict:
    from lmops.data.tokenize import tokenize_dataset

    cfg = _config(args)
    dataset = Path(args.dataset) if args.dataset else Path(cfg.workdir) / "dataset"
    res = tokenize_dataset(cfg.tokenize, dataset, _out(args, cfg, "tokens"), cache_dir=cfg.cache_dir)
    return _summary("tokenize", res)


def cmd_run(args: argparse.Namespace) -> dict:
    """The stages that exist so far, in order, each cached by content."""
    from lmops.data.build import build_dataset
    from lmops.data.tokenize import tokenize_dataset

    cfg = _config(args)
    _ensure_sample_corpus(cfg)
    work = Path(cfg.workdir)
    rows = []
    t0 = time.time()
    res = build_dataset(cfg.build, work / "dataset", cache_dir=cfg.cache_dir)
    rows.append(_summary("build", res, time.time() - t0))
    t0 = time.time()
    res = tokenize_dataset(cfg.tokenize, work / "dataset", work / "tokens", cache_dir=cfg.cache_dir)
    rows.append(_summary("tokenize", res, time.time() - t0))
    _print_table(rows)
    return {"stages": rows}


def _summary(stage: str, res, seconds: float | None = None) -> dict:
    m = res.manifest
    c = m.counts
    if stage == "build":
        docs = c.get("documents", {})
        detail = f"{docs.get('kept')} of {docs.get('read')} documents kept; " + ", ".join(
            f"{s} {v.get('documents')}" for s, v in c.get("splits", {}).items()
        )
    elif stage == "tokenize":
        detail = f"vocab {c.get('vocab_size')} ({c.get('dtype')}); tokens " + ", ".join(
            f"{s} {n:,}" for s, n in c.get("tokens", {}).items()
        )
    else:
        detail = ""
    return {
        "stage": stage, "status": "cached" if res.cached else "ran", "path": str(res.path),
        "seconds": round(seconds if seconds is not None else m.seconds, 2),
        "digest": m.digest[:12], "detail": detail,
    }


def _print_table(rows: list[dict]) -> None:
    print()
    print(f"{'stage':<10} {'status':<7} {'time':>7}  {'output':<28} detail")
    for r in rows:
        print(f"{r['stage']:<10} {r['status']:<7} {r['seconds']:>6.1f}s  {r['path']:<28} {r['detail']}")


def cmd_sample_corpus(args: argparse.Namespace) -> dict:
    from lmops.data.sample_corpus import make_sample_corpus

    dest = make_sample_corpus(Path(args.dest))
    return {"path": str(dest)}


def cmd_config(args: argparse.Namespace) -> dict:
    """Print the fully resolved configuration (defaults filled in) as JSON."""
    return _config(args).model_dump(mode="json")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmops", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def stage(name: str, fn, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.add_argument("-c", "--config", default=None, help="preset name (configs/*.yaml) or YAML path; default: tiny")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=3e-4")
        sp.add_argument("--json", action="store_true", help="print the result as JSON")
        sp.set_defaults(fn=fn)
        return sp

    sp = stage("build", cmd_build, "stage 1: raw sources -> cleaned, deduplicated, split dataset/")
    sp.add_argument("--out", help="output directory (default: <workdir>/dataset)")
    sp = stage("tokenize", cmd_tokenize, "stage 2: dataset/ -> tokenizer + packed token shards")
    sp.add_argument("--dataset", help="dataset directory (default: <workdir>/dataset)")
    sp.add_argument("--out", help="output directory (default: <workdir>/tokens)")
    stage("run", cmd_run, "run the stages in order on one machine (cached stages are skipped)")
    stage("config", cmd_config, "print the resolved configuration")
    sp = sub.add_parser("sample-corpus", help="make the offline sample corpus (stdlib docstrings)")
    sp.add_argument("--dest", default=str(SAMPLE_CORPUS))
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_sample_corpus)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.fn(args)
    except LmopsError as e:
        print(f"lmops {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lmops {args.command}: interrupted", file=sys.stderr)
        return 130
    if getattr(args, "json", False) or args.command == "config":
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
