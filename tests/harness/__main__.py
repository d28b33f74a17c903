"""Run the harness outside pytest, for trying the operator by hand:

    cd tests && python -m harness --workdir /tmp/harness [--kubelet]

then ``KUBECONFIG=/tmp/harness/kube-api/kubeconfig.yaml sparring ...`` or ``kopf run ...`` in
another shell. The request log goes to ``/tmp/harness/kube-api/requests.jsonl``. Ctrl-C stops.
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

from .kubeapi import KubeApi
from .kubelet import LocalKubelet


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--kubelet", action="store_true", help="also run Jobs as local processes")
    parser.add_argument("--namespace", action="append", default=[], help="extra namespaces")
    args = parser.parse_args()
    api = KubeApi(args.workdir / "kube-api", namespaces=["default", *args.namespace]).start()
    node = LocalKubelet(api.kubeconfig, args.workdir / "kubelet").start() if args.kubelet else None
    print(f"API server: {api.url}\nexport KUBECONFIG={api.kubeconfig}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        if node is not None:
            node.stop()
        api.stop()


if __name__ == "__main__":
    main()
