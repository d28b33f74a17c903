"""Pod names as cluster DNS would resolve them, for the process kubelet's pods.

A pod with ``spec.hostname`` and ``spec.subdomain`` (an Indexed Job's pods on the Job's headless
Service) is reachable as ``HOSTNAME.SUBDOMAIN.NAMESPACE.svc.cluster.local`` once a headless
Service named SUBDOMAIN exists in its namespace: CoreDNS serves those records from the
Service's endpoints (with ``publishNotReadyAddresses``, before the pod is ready). This kubelet
has no network namespaces and no DNS server: every pod has the node's address (loopback), and
each pod's ``/etc/hosts`` (a file of its own, bind-mounted over ``/etc/hosts`` in its private
mount namespace, as a real kubelet manages the file) holds those records, kept current on every
pass of the kubelet's loop. glibc reads ``/etc/hosts`` afresh on each lookup, so a name that
appears later (the other pod created, the Service created after the Job) resolves from then on,
as a DNS record does; the file is rewritten in place, so the bind mount keeps showing it.

Both the full name and its ``.svc`` short form are written: in a real pod the search list
completes ``x.y.ns.svc`` to the full name, and the hosts file is read without a search list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CLUSTER_DOMAIN = "cluster.local"
POD_ADDRESS = "127.0.0.1"  # every pod of the process kubelet has the node's (loopback) address
HOSTS_FILE = "etc-hosts"  # in the pod's directory
TERMINAL = ("Succeeded", "Failed")


def hosts_path(pod_dir: Path) -> Path:
    return Path(pod_dir) / HOSTS_FILE


def _names(hostname: str, subdomain: str, namespace: str) -> list[str]:
    short = f"{hostname}.{subdomain}.{namespace}.svc"
    return [f"{short}.{CLUSTER_DOMAIN}", short]


def records(pods: list[dict[str, Any]], services: list[dict[str, Any]]) -> dict[str, list[str]]:
    """namespace -> the pod names its headless Services publish (pods not yet finished)."""
    headless = {
        (s["metadata"]["namespace"], s["metadata"]["name"])
        for s in services
        if (s.get("spec") or {}).get("clusterIP") == "None"
    }
    found: dict[str, list[str]] = {}
    for pod in pods:
        spec, meta = pod["spec"], pod["metadata"]
        hostname, subdomain = spec.get("hostname"), spec.get("subdomain")
        phase = (pod.get("status") or {}).get("phase")
        if not hostname or not subdomain or phase in TERMINAL or meta.get("deletionTimestamp"):
            continue
        if (meta["namespace"], subdomain) in headless:
            found.setdefault(meta["namespace"], []).extend(
                _names(hostname, subdomain, meta["namespace"])
            )
    return found


def hosts_text(pod: dict[str, Any], published: list[str], base: str) -> str:
    """The pod's /etc/hosts: the node's own entries, the pod's own names (as a real kubelet
    writes them) and the records of its namespace's headless Services."""
    spec, meta = pod["spec"], pod["metadata"]
    hostname = spec.get("hostname") or meta["name"]
    own = [hostname]
    if spec.get("subdomain"):
        own = [*_names(hostname, spec["subdomain"], meta["namespace"]), hostname]
    lines = [base.rstrip("\n"), "# process kubelet: the pod's names and its cluster DNS records"]
    lines.append(f"{POD_ADDRESS}\t{' '.join(own)}")
    lines += [f"{POD_ADDRESS}\t{name}" for name in sorted(set(published) - set(own))]
    return "\n".join(lines) + "\n"


def write_hosts(path: Path, text: str) -> None:
    """In place when it changes (the same inode: the bind mount keeps showing the file)."""
    if not path.exists() or path.read_text() != text:
        with open(path, "w") as f:
            f.write(text)
