"""The test bed: a real Kubernetes control plane on 127.0.0.1 and what tests need around it.

* ``controlplane.py``: etcd, kube-apiserver, kube-controller-manager (built by
  ``scripts/kube-build`` at one pinned release) and the process kubelet; ``scripts/kube up``.
* ``pki.py``: the control plane's CA, serving and client certificates, ServiceAccount key.
* ``kubelet.py`` (+ ``podspec.py``): the process kubelet: node, scheduler and container runtime
  in one, running each pod's command as a local process (images are not pulled).
* ``faultproxy.py``: a reverse proxy in front of the API server that injects 429/500, drops
  watches and answers 410 Gone, for the operator's traffic only.
* ``cluster.py`` (a test's namespace, clients, audit log), ``nodeview.py`` (pods' processes,
  evictions), ``chartops.py`` (the chart's identity and RBAC, Helm), ``gameops.py`` (the
  operator process, games), ``fixtures.py`` (pytest fixtures), ``rawclient.py`` (``wait_for``).
"""
