"""``lmops`` command line: one sub-command per stage, plus ``pipeline run`` (alias ``run``) for the whole chain.

Every command takes ``-c/--config`` (a preset name from configs/ or a YAML path) and any number of
``--set key.path=value`` overrides. Errors a user can fix print one message and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from lmops.config import Config, load_config
from lmops.errors import LmopsError
from lmops.data.sample_corpus import SAMPLE_CORPUS, ensure_sample_corpus
from lmops.pipeline.summary import stage_row as summary


TRACKING_HELP = "MLflow server (default: registry.tracking_uri, $MLFLOW_TRACKING_URI)"


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.set)


def _path(args: argparse.Namespace, cfg: Config, option: str, default: str) -> Path:
    """A directory option, or its conventional place under the config's workdir."""
    given = getattr(args, option, None)
    return Path(given) if given else Path(cfg.workdir) / default


def _out(args: argparse.Namespace, cfg: Config, name: str) -> Path:
    return _path(args, cfg, "out", name)


def cmd_build(args: argparse.Namespace) -> dict:
    from lmops.data.build import build_dataset

    cfg = _config(args)
    ensure_sample_corpus(cfg.build.sources)
    res = build_dataset(cfg.build, _out(args, cfg, "dataset"), cache_dir=cfg.cache_dir)
    return summary("build", res)


def cmd_tokenize(args: argparse.Namespace) -> dict:
    from lmops.data.tokenize import tokenize_dataset

    cfg = _config(args)
    res = tokenize_dataset(cfg.tokenize, _path(args, cfg, "dataset", "dataset"), _out(args, cfg, "tokens"),
                           cache_dir=cfg.cache_dir)
    return summary("tokenize", res)


def cmd_train(args: argparse.Namespace) -> dict:
    from lmops.train.stage import train_stage

    cfg = _config(args)
    res = train_stage(cfg, _path(args, cfg, "tokens", "tokens"), _out(args, cfg, "checkpoint"), cache_dir=cfg.cache_dir)
    return summary("train", res)


def cmd_evaluate(args: argparse.Namespace) -> dict:
    from lmops.evaluate.stage import evaluate_stage

    cfg = _config(args)
    res = evaluate_stage(cfg, _path(args, cfg, "model", "checkpoint"), _path(args, cfg, "tokens", "tokens"),
                         _out(args, cfg, "eval"), baseline=args.baseline, cache_dir=cfg.cache_dir)
    return summary("evaluate", res)


def cmd_compress(args: argparse.Namespace) -> dict:
    from lmops.compress.stage import compress_stage

    cfg = _config(args)
    res = compress_stage(cfg, _path(args, cfg, "checkpoint", "checkpoint"), _path(args, cfg, "tokens", "tokens"),
                         _out(args, cfg, "compressed"), cache_dir=cfg.cache_dir)
    return summary("compress", res)


def cmd_pipeline(args: argparse.Namespace) -> dict:
    """compile: the pipeline YAML for the Kubeflow UI; run: the whole pipeline on this machine."""
    if args.action == "compile":
        from lmops.pipeline.compile import PIPELINE_YAML, compile_pipeline

        out = compile_pipeline(args.out or PIPELINE_YAML)
        if not args.json:
            print(f"wrote {out}")
        return {"pipeline": str(out)}
    return cmd_run(args)


def cmd_run(args: argparse.Namespace) -> dict:
    """The whole chain on this machine (``lmops run`` = ``lmops pipeline run``): kfp's local runner by default,
    ``--runner inprocess`` for the same steps in this process."""
    from lmops.pipeline.local import print_summary, run_pipeline

    cfg = load_config(args.config, args.set)  # fail on a bad config before starting anything
    # a configured MLflow server (registry.tracking_uri, $MLFLOW_TRACKING_URI) is used; else a local one
    summary = run_pipeline(args.config or "tiny", args.set, model_name=args.model_name or "", sources=args.source,
                           tracking_uri=cfg.registry.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"),
                           # a Ray cluster of the user's (RAY_ADDRESS) is used; else the recorded local one
                           ray_address=os.environ.get("RAY_ADDRESS"),
                           quiet_kfp=not args.verbose, launcher=args.launcher, deploy_target=args.deploy_target,
                           runner=args.runner, until=args.until)
    if not args.json:
        print_summary(summary)
    return summary


def cmd_stop(args: argparse.Namespace) -> dict:
    """Stop the local servers `make run` left up (MLflow, Ray, model servers)."""
    from lmops.pipeline.servers import stop_all

    stopped = stop_all()
    if not args.json:
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return {"stopped": stopped}


def cmd_serve(args: argparse.Namespace) -> dict:
    """Serve a model over KServe v1/v2 + OpenAI completions until interrupted; exit 1 if it never loads."""
    from lmops.serve.server import serve

    cfg = _config(args)
    updates = {k: v for k, v in (("host", args.host), ("port", args.port), ("model_name", args.name),
                                 ("grpc_port", args.grpc_port), ("api_key_file", args.api_key_file))
               if v is not None}
    serve_cfg = cfg.serve.model_copy(update=updates)
    model = args.model or cfg.deploy.model
    if not model:
        raise LmopsError("no model: pass --model URI (a directory, s3://..., models:/NAME@ALIAS)")
    code = serve(model, serve_cfg)
    if code:
        raise SystemExit(code)
    return {}


def cmd_deploy(args: argparse.Namespace) -> dict:
    from lmops.serve.deploy import deploy

    cfg = _config(args)
    if args.target:
        cfg = cfg.model_copy(update={"deploy": cfg.deploy.model_copy(update={"target": args.target})})
    model = args.model or cfg.deploy.model
    if not model:
        raise LmopsError("no model: pass --model URI or set deploy.model")
    return deploy(cfg, model, _out(args, cfg, "deploy"))


def cmd_register(args: argparse.Namespace) -> dict:
    """Gate a model directory's eval.json (against --baseline or the champion) and register it."""
    from lmops.registry.register import register_dir

    cfg = _config(args)
    reg, gating = register_dir(args.model_dir, args.eval, cfg, variant=args.variant, baseline_path=args.baseline,
                               compressed=args.compressed, tracking_uri=args.tracking_uri,
                               pipeline_run_id=args.pipeline_run_id)
    if not args.json:
        for v in reg.versions:
            state = "reused" if v.reused else "registered"
            print(f"{state} models:/{reg.name}/{v.version} (variant {v.variant}, gates {'passed' if v.passed else 'FAILED'})")
        print(f"gated against: {gating['baseline'] or 'no baseline (first model)'}")
        for reason in gating["reasons"]:
            print(f"  {reason}")
        if reg.candidate:
            print(f"alias {cfg.registry.candidate_alias!r} -> version {reg.candidate}")
    return {**reg.to_dict(), "gating": gating}


def cmd_promote(args: argparse.Namespace) -> dict:
    from lmops.registry import promote
    from lmops.registry.server import connect

    rc = _config(args).registry
    server, client = connect(args.tracking_uri or rc.tracking_uri, rc.connect_attempts, rc.connect_backoff_s)
    move = promote(client, server, args.name, args.version, args.alias or rc.champion_alias, force=args.force,
                   reason=args.reason, limit=rc.history_limit)
    if not args.json:
        done = "already held" if not move.changed else f"moved from version {move.previous}" if move.previous else "set"
        print(f"models:/{move.name}@{move.alias} -> version {move.version} ({done})")
    return move.to_dict()


def cmd_rollback(args: argparse.Namespace) -> dict:
    from lmops.registry import rollback
    from lmops.registry.server import connect

    rc = _config(args).registry
    server, client = connect(args.tracking_uri or rc.tracking_uri, rc.connect_attempts, rc.connect_backoff_s)
    move = rollback(client, server, args.name, args.alias or rc.champion_alias, reason=args.reason,
                    limit=rc.history_limit)
    if not args.json:
        print(f"models:/{move.name}@{move.alias} -> version {move.version} (rolled back from version {move.previous})")
    return move.to_dict()


def cmd_lineage(args: argparse.Namespace) -> dict:
    from lmops.registry import describe_lineage, lineage_lines

    cfg = _config(args)
    info = describe_lineage(args.model, args.version, tracking_uri=args.tracking_uri or cfg.registry.tracking_uri)
    if not args.json:
        print("\n".join(lineage_lines(info)))
    return info


def cmd_operator(args: argparse.Namespace) -> dict:
    """Runs until SIGTERM/Ctrl-C (kopf stops the loops, the webhook receiver and its own server)."""
    from lmops.operator.run import run

    run(args)
    return {}


def cmd_sample_corpus(args: argparse.Namespace) -> dict:
    from lmops.data.sample_corpus import make_sample_corpus

    dest = make_sample_corpus(Path(args.dest))
    return {"path": str(dest)}


def cmd_config(args: argparse.Namespace) -> dict:
    """Print the fully resolved configuration (defaults filled in) as JSON."""
    return _config(args).model_dump(mode="json")


def _run_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--model-name", help="run: registered model name (default: registry.model_name)")
    sp.add_argument("--source", action="append", default=[], help="run: a data source (repeatable)")
    sp.add_argument("--verbose", action="store_true", help="run: kfp's full task log (executor inputs included)")
    sp.add_argument("--launcher", choices=["local", "kuberay"], default="local",
                    help="run: train with a local Ray (default), or submit a RayJob to $KUBECONFIG's cluster"
                         " (needs --set kuberay.staging_uri=s3://...)")
    sp.add_argument("--deploy-target", choices=["local", "kubernetes"], default="local",
                    help="run: a local model server (default), or an InferenceService on $KUBECONFIG's cluster")
    sp.add_argument("--until", choices=["register"], default=None,
                    help="run: stop after this stage (register: a training run, no model server; --runner inprocess)")
    sp.add_argument("--runner", choices=["subprocess", "container", "inprocess"], default="subprocess",
                    help="run: each task as a subprocess of this environment (default), as a container of the"
                         " lmops image (kfp's DockerRunner via docker or podman; build it first: make images), or"
                         " inprocess: the same steps in this process without kfp (outputs under <workdir>)")


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
    sp = stage("evaluate", cmd_evaluate, "stage 4: perplexity, tokens/s, latency, size -> eval/ (+ gate verdict)")
    sp.add_argument("--model", help="model directory (default: <workdir>/checkpoint)")
    sp.add_argument("--tokens", help="tokens directory (default: <workdir>/tokens)")
    sp.add_argument("--baseline", help="the champion's eval.json (or eval/ directory) to gate against")
    sp.add_argument("--out", help="output directory (default: <workdir>/eval)")
    sp = stage("train", cmd_train, "stage 3: tokens/ -> checkpoint/ (HF model dir) with Ray Train")
    sp.add_argument("--tokens", help="tokens directory (default: <workdir>/tokens)")
    sp.add_argument("--out", help="output directory (default: <workdir>/checkpoint)")
    sp = stage("compress", cmd_compress, "stage 5: checkpoint/ -> int8/, pruned/, student/ scored and gated vs fp32")
    sp.add_argument("--checkpoint", help="fp32 model directory (default: <workdir>/checkpoint)")
    sp.add_argument("--tokens", help="tokens directory (default: <workdir>/tokens)")
    sp.add_argument("--out", help="output directory (default: <workdir>/compressed)")
    sp = stage("pipeline", cmd_pipeline, "compile the Kubeflow pipeline, or run it on this machine")
    sp.add_argument("action", choices=["compile", "run"])
    sp.add_argument("--out", help="compile: output YAML (default: pipelines/lmops_pipeline.yaml)")
    _run_options(sp)
    _run_options(stage("run", cmd_run, "the whole pipeline on this machine (= lmops pipeline run)"))
    sp = stage("stop", cmd_stop, "stop the local servers a pipeline run left up (MLflow, model servers)")
    stage("config", cmd_config, "print the resolved configuration")
    sp = stage("serve", cmd_serve, "stage 7: serve a model (KServe v1/v2 REST and gRPC + OpenAI) on 127.0.0.1")
    sp.add_argument("--model", help="model URI: directory, s3://bucket/prefix, models:/NAME@ALIAS or models:/NAME/VERSION")
    sp.add_argument("--host", help="bind address (default: serve.host = 127.0.0.1)")
    sp.add_argument("--port", type=int, help="REST port (default: serve.port)")
    sp.add_argument("--name", help="model name in the URLs (default: serve.model_name)")
    sp.add_argument("--grpc-port", type=int, help="KServe v2 gRPC port on the same host (default: serve.grpc_port, off)")
    sp.add_argument("--api-key-file", help="API keys, one per line: inference routes then need Authorization: Bearer"
                    " KEY (default: serve.api_key_file; $LMOPS_API_KEYS adds comma-separated keys)")
    sp = stage("deploy", cmd_deploy, "stage 7: start a local server or apply an InferenceService")
    sp.add_argument("--model", help="model URI (default: deploy.model)")
    sp.add_argument("--target", choices=["local", "kubernetes"], help="default: deploy.target")
    sp.add_argument("--out", help="output directory for endpoint.json / inferenceservice.yaml (default: <workdir>/deploy)")
    sp = stage("register", cmd_register, "stage 6: gate a model dir's eval.json and register it in MLflow")
    sp.add_argument("model_dir", help="Hugging Face model directory with manifest.json")
    sp.add_argument("--eval", required=True, help="its eval.json (or the directory holding it)")
    sp.add_argument("--variant", default="fp32", help="variant tag (fp32, int8, pruned, student...)")
    sp.add_argument("--baseline", help="baseline eval.json (default: the champion's recorded metrics)")
    sp.add_argument("--compressed", help="a compress stage output: also register its variants (int8, pruned,"
                                         " student), each gated by compress.json and by the model's own gate")
    sp.add_argument("--pipeline-run-id", help="recorded as a tag (default: $LMOPS_PIPELINE_RUN_ID)")
    sp.add_argument("--tracking-uri", help=TRACKING_HELP)
    sp = stage("promote", cmd_promote, "set an alias (default: champion) on a version whose gates passed")
    sp.add_argument("name", help="registered model name")
    sp.add_argument("version", help="version number")
    sp.add_argument("--alias", help="alias to set (default: registry.champion_alias)")
    sp.add_argument("--force", action="store_true", help="promote despite missing/failed gates (needs --reason)")
    sp.add_argument("--reason", help="why; recorded in the alias history (and on the version when forced)")
    sp.add_argument("--tracking-uri", help=TRACKING_HELP)
    sp = stage("rollback", cmd_rollback, "move an alias back to the version that held it before")
    sp.add_argument("name", help="registered model name")
    sp.add_argument("--alias", help="alias to roll back (default: registry.champion_alias)")
    sp.add_argument("--reason", help="why; recorded in the alias history and on the rolled-back version")
    sp.add_argument("--tracking-uri", help=TRACKING_HELP)
    sp = stage("lineage", cmd_lineage, "print a version's chain: checkpoint -> tokens -> dataset -> raw sources")
    sp.add_argument("model", help="registered model name (then VERSION), or models:/NAME/VERSION or"
                                  " models:/NAME@ALIAS")
    sp.add_argument("version", nargs="?", help="version number, after NAME (as for promote)")
    sp.add_argument("--tracking-uri", help=TRACKING_HELP)
    sp = sub.add_parser("operator", help="run the operator: LMTrainingJob runs, ModelDeployment canaries and rollbacks")
    sp.add_argument("--namespace", action="append", help="watch this namespace (repeatable; default: all)")
    sp.add_argument("--tracking-uri", help="MLflow server for resources that name none (default: $MLFLOW_TRACKING_URI)")
    sp.add_argument("--poll-seconds", type=float, default=10.0,
                    help="longest wait between two reconciles: the registry poll when webhooks are lost or off")
    sp.add_argument("--webhook-port", type=int, help="serve the MLflow webhook receiver on this port"
                                                     " (secret in $LMOPS_WEBHOOK_SECRET; default: off)")
    sp.add_argument("--webhook-host", default="127.0.0.1", help="bind address of the receiver (0.0.0.0 in a pod)")
    sp.add_argument("--health-port", type=int, default=0, help="kopf's liveness endpoint /healthz (0: off)")
    sp.add_argument("--health-host", default="127.0.0.1")
    sp.add_argument("--runs-dir", default=".state/operator-runs", help="local executor: one folder per run")
    sp.add_argument("--handlers", help="kopf handlers file (default: operators/handlers.py)")
    sp.add_argument("--release-finalizers", action="store_true",
                    help="remove the operator's finalizer (lmops.dev/operator) from every LMTrainingJob and"
                         " ModelDeployment in the --namespace(s), then exit. The operator holds them so that it"
                         " sees each deletion; once it is uninstalled for good they would keep those objects, and"
                         " their namespace, from ever being deleted (the Helm chart's uninstall runs this)")
    sp.add_argument("--wait-pods-gone", metavar="SELECTOR",
                    help="with --release-finalizers: first wait until no pod with these labels (k=v,k2=v2: the"
                         " operator's) is left, since a running operator puts its finalizer back")
    sp.set_defaults(fn=cmd_operator)
    from lmops.cluster.commands import add_parser as add_cluster

    add_cluster(sub)
    from lmops.images.commands import add_parser as add_images

    add_images(sub)
    from lmops.registry.prune_command import add_parser as add_registry

    add_registry(sub)
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
