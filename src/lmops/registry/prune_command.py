"""``lmops registry prune NAME --keep N [--dry-run] [--delete]`` (lmops.registry.prune does the work)."""

from __future__ import annotations

import argparse
import os

TRACKING_HELP = "MLflow server (default: registry.tracking_uri, $MLFLOW_TRACKING_URI)"


def add_parser(sub) -> None:
    sp = sub.add_parser("registry", help="registry hygiene")
    actions = sp.add_subparsers(dest="registry_command", required=True)
    pr = actions.add_parser("prune", help="archive (or delete) old versions; never one an alias, a rollback or a"
                                          " ModelDeployment points at")
    pr.add_argument("name", help="registered model name")
    pr.add_argument("--keep", type=int, required=True, help="newest versions to keep")
    pr.add_argument("--dry-run", action="store_true", help="list what would be done, change nothing")
    pr.add_argument("--delete", action="store_true",
                    help="delete the versions and their artifacts instead of archiving them")
    pr.add_argument("--no-cluster", action="store_true",
                    help="do not read ModelDeployments from $KUBECONFIG's cluster (otherwise read when it is set)")
    pr.add_argument("--tracking-uri", help=TRACKING_HELP)
    pr.add_argument("--json", action="store_true", help="print the result as JSON")
    pr.set_defaults(fn=cmd_prune)


def cmd_prune(args: argparse.Namespace) -> dict:
    from lmops.registry.prune import deployment_references, prune

    # what a rollout still serves or may roll back to is protected; the cluster is asked when one is configured
    deployments = None if args.no_cluster or not os.environ.get("KUBECONFIG") else deployment_references(args.name)
    p = prune(args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"), args.name, args.keep,
              dry_run=args.dry_run, delete=args.delete, deployments=deployments)
    if not args.json:
        print("\n".join(p.lines()))
    return p.to_dict()
