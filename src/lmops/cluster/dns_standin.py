"""The cluster DNS stand-in of `lmops cluster` (CoreDNS's role; no CoreDNS package exists here).

dnsmasq answers on the node's address; this process feeds it what CoreDNS's ``kubernetes`` plugin
would serve: ``<service>.<namespace>.svc.<domain>`` -> the Service's cluster IP, or its ready endpoint
addresses for a headless Service. Names outside the cluster domain get no answer from upstream: pods
resolve cluster names only. Polled from the API server every second (a hosts file rewritten atomically,
then SIGHUP: dnsmasq re-reads it)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 1.0


def records(services: list[dict], endpoints: list[dict], domain: str) -> list[str]:
    """Hosts-file lines for these Services (sorted: an unchanged cluster gives the same text)."""
    ready = {(e["metadata"]["namespace"], e["metadata"]["name"]):
             [a["ip"] for s in e.get("subsets") or [] for a in s.get("addresses") or []] for e in endpoints}
    lines = []
    for svc in services:
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        fqdn = f"{name}.{ns}.svc.{domain}"
        ip = svc.get("spec", {}).get("clusterIP")
        ips = ready.get((ns, name), []) if ip in (None, "", "None") else [ip]
        lines.extend(f"{addr} {fqdn}" for addr in ips)
    return sorted(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--listen", required=True, help="the address dnsmasq answers on (the node's)")
    p.add_argument("--domain", default="cluster.local")
    p.add_argument("--hosts-file", required=True)
    args = p.parse_args(argv)

    from lmops import kube

    hosts = Path(args.hosts_file)
    hosts.parent.mkdir(parents=True, exist_ok=True)
    hosts.write_text("")
    dnsmasq = subprocess.Popen([
        "dnsmasq", "--keep-in-foreground", "--log-facility=-", "--pid-file", "--user=root",
        f"--listen-address={args.listen}", "--bind-interfaces", "--port=53",
        "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}",
        f"--local=/{args.domain}/",  # authoritative for the cluster domain: unknown names are NXDOMAIN
        "--domain-needed", "--bogus-priv",
    ])
    signal.signal(signal.SIGTERM, lambda *_: (dnsmasq.terminate(), sys.exit(0)))
    client = kube.api_client(args.kubeconfig)
    current = ""
    while dnsmasq.poll() is None:
        try:
            services, _ = kube.list_objects("v1", "Service", None, client=client)
            endpoints, _ = kube.list_objects("v1", "Endpoints", None, client=client)
        except kube.KubeError as e:
            print(f"cluster-dns: {e}", flush=True)
            time.sleep(POLL_S)
            continue
        lines = records(services, endpoints, args.domain)
        text = "\n".join(lines) + "\n"
        if text != current:
            tmp = hosts.with_name(hosts.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, hosts)
            dnsmasq.send_signal(signal.SIGHUP)
            current = text
            print(f"cluster-dns: {len(lines)} names", flush=True)
        time.sleep(POLL_S)
    sys.exit(f"cluster-dns: dnsmasq exited ({dnsmasq.returncode})")


if __name__ == "__main__":
    main()
