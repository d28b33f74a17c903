"""Tests of the test harness itself: the API server stand-in (over real HTTP, with the
kubernetes client and with kopf) and the local kubelet."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
from harness import KubeApi
from harness.kopfrun import kopf_runner
from harness.kubelet import LocalKubelet
from harness.rawclient import wait_for
from kubernetes import watch

G, V, P = "sparring.dev", "v1alpha1", "adversarialgames"
NS = "default"
# The fixtures kube_api, kube_env and kubelet (a no-op once tests/conftest.py registers them).
pytest_plugins = ["harness.fixtures"]
MINI_OPERATOR = Path(__file__).parent / "harness" / "mini_operator.py"


def _game(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "AdversarialGame",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"rounds": 1},
        "status": {"phase": "Ignored on create"},
    }


def _job(name: str, code: str, *args: str, **spec: Any) -> dict[str, Any]:
    container = {
        "name": "main",
        "image": "sparring:test",
        "command": ["python", "-c", code],
        "args": list(args),
        "terminationMessagePath": "/tmp/term/message",
    }
    container.update(spec.pop("container", {}))
    pod_spec = {"restartPolicy": "Never", "containers": [container]}
    pod_spec.update(spec.pop("pod", {}))
    return {
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, **spec, "template": {"spec": pod_spec}},
    }


def _conditions(obj: Any) -> dict[str, str]:
    """{type: reason} of the True conditions of a Job model."""
    conditions = (obj.status and obj.status.conditions) or []
    return {c.type: c.reason for c in conditions if c.status == "True"}


def _wait_job(
    api: kubernetes.client.BatchV1Api, name: str, node: LocalKubelet, timeout: float = 15.0
) -> Any:
    def finished() -> Any:
        job = api.read_namespaced_job(name, NS)
        return job if {"Complete", "Failed"} & set(_conditions(job)) else None

    return wait_for(finished, timeout, message=lambda: f"job {name}:\n{node.logs(name)}")


def _pods(kube_api: KubeApi, job: str) -> list[dict[str, Any]]:
    return [
        p
        for p in kube_api.list("pods", NS)
        if p["metadata"]["labels"].get("batch.kubernetes.io/job-name") == job
    ]


# -- the API server -----------------------------------------------------------------------------
def test_custom_object_metadata_status_and_generation(kube_api: KubeApi) -> None:
    api = kubernetes.client.CustomObjectsApi(kube_api.client)
    api.create_namespaced_custom_object(G, V, NS, P, _game("g1"))
    obj = api.get_namespaced_custom_object(G, V, NS, P, "g1")
    meta = obj["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1 and int(meta["resourceVersion"]) > 0
    assert "status" not in obj  # the status subresource drops it on create

    patched = api.patch_namespaced_custom_object_status(
        G, V, NS, P, "g1", {"status": {"phase": "Running"}}
    )
    assert patched["status"] == {"phase": "Running"}
    assert patched["metadata"]["generation"] == 1
    assert int(patched["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])

    patched = api.patch_namespaced_custom_object(
        G, V, NS, P, "g1", {"spec": {"rounds": 3}, "status": {"phase": "Ignored"}}
    )
    assert patched["metadata"]["generation"] == 2
    assert patched["status"] == {"phase": "Running"}  # the main endpoint ignores .status
    same = api.patch_namespaced_custom_object(G, V, NS, P, "g1", {"spec": {"rounds": 3}})
    assert same["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]
    labelled = api.patch_namespaced_custom_object(
        G, V, NS, P, "g1", {"metadata": {"labels": {"x": "y"}}}
    )
    assert labelled["metadata"]["generation"] == 2  # metadata is not the spec

    # A stale resourceVersion is a conflict; a strategic merge patch is refused for CRs.
    stale = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "spec": {"rounds": 4}}
    with pytest.raises(kubernetes.client.ApiException) as e:
        api.patch_namespaced_custom_object(G, V, NS, P, "g1", stale)
    assert e.value.status == 409
    status, _, _ = kube_api.http(
        "PATCH",
        f"/apis/{G}/{V}/namespaces/{NS}/{P}/g1",
        {"spec": {}},
        "application/strategic-merge-patch+json",
    )
    assert status == 415


def test_list_label_selectors_and_errors(kube_api: KubeApi) -> None:
    api = kubernetes.client.CustomObjectsApi(kube_api.client)
    for name, labels in [
        ("a", {"app": "x", "tier": "t1"}),
        ("b", {"app": "x"}),
        ("c", {"app": "y", "tier": "t2"}),
    ]:
        api.create_namespaced_custom_object(G, V, NS, P, _game(name, labels))

    def names(selector: str) -> list[str]:
        result = api.list_namespaced_custom_object(G, V, NS, P, label_selector=selector)
        assert result["kind"] == "AdversarialGameList" and result["apiVersion"] == f"{G}/{V}"
        return [item["metadata"]["name"] for item in result["items"]]

    assert names("app=x") == ["a", "b"]
    assert names("app=x,tier") == ["a"]
    assert names("!tier") == ["b"]
    assert names("tier in (t1,t2),app!=x") == ["c"]

    with pytest.raises(kubernetes.client.ApiException) as e:
        api.create_namespaced_custom_object(G, V, NS, P, _game("a"))
    assert e.value.status == 409
    status, body, _ = kube_api.http("GET", f"/apis/{G}/{V}/namespaces/{NS}/{P}/missing")
    assert status == 404
    assert body["kind"] == "Status" and body["reason"] == "NotFound" and body["code"] == 404
    status, body, _ = kube_api.http("POST", f"/apis/{G}/{V}/namespaces/nowhere/{P}", _game("z"))
    assert status == 404 and "nowhere" in body["message"]
    core = kubernetes.client.CoreV1Api(kube_api.client)
    event = core.create_namespaced_event(
        NS, {"metadata": {"generateName": "ev-"}, "involvedObject": {"name": "a"}}
    )
    assert event.metadata.name.startswith("ev-") and len(event.metadata.name) == 8


def test_watch_resumes_from_a_resource_version(kube_api: KubeApi) -> None:
    api = kubernetes.client.CustomObjectsApi(kube_api.client)
    start = api.list_namespaced_custom_object(G, V, NS, P)["metadata"]["resourceVersion"]
    api.create_namespaced_custom_object(G, V, NS, P, _game("w1"))
    api.patch_namespaced_custom_object(G, V, NS, P, "w1", {"spec": {"rounds": 2}})
    kubernetes.client.CoreV1Api(kube_api.client).create_namespaced_config_map(
        NS, {"metadata": {"name": "unrelated"}}
    )

    stream = watch.Watch()
    seen = []
    for event in stream.stream(
        api.list_namespaced_custom_object, G, V, NS, P, resource_version=start, timeout_seconds=5
    ):
        seen.append(
            (event["type"], event["object"]["metadata"]["name"], event["object"]["spec"]["rounds"])
        )
        if len(seen) == 2:
            stream.stop()
    assert seen == [("ADDED", "w1", 1), ("MODIFIED", "w1", 2)]

    kube_api.compact_history()  # as after etcd compaction: too old -> 410 Gone
    status, body, _ = kube_api.http(
        "GET", f"/apis/{G}/{V}/namespaces/{NS}/{P}?watch=true&resourceVersion={start}"
    )
    assert status == 200 and body["type"] == "ERROR" and body["object"]["code"] == 410


def test_cascading_delete(kube_api: KubeApi) -> None:
    batch = kubernetes.client.BatchV1Api(kube_api.client)
    core = kubernetes.client.CoreV1Api(kube_api.client)

    def job_with_pod(name: str) -> None:
        job = batch.create_namespaced_job(NS, _job(name, "pass"))
        owner = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": name,
            "uid": job.metadata.uid,
            "controller": True,
        }
        core.create_namespaced_pod(
            NS,
            {
                "metadata": {
                    "generateName": f"{name}-",
                    "labels": {"job-name": name},
                    "ownerReferences": [owner],
                },
                "spec": job.spec.template.spec.to_dict(),
            },
        )

    job_with_pod("bg")
    batch.delete_namespaced_job("bg", NS, propagation_policy="Background")
    assert not core.list_namespaced_pod(NS, label_selector="job-name=bg").items

    # As on a real cluster, batch/v1 orphans the pods by default, with a Warning header.
    job_with_pod("orphan")
    reply = kube_api.http("DELETE", f"/apis/batch/v1/namespaces/{NS}/jobs/orphan")
    assert reply.status == 200 and "child pods are preserved" in reply.headers["Warning"]
    (pod,) = core.list_namespaced_pod(NS, label_selector="job-name=orphan").items
    assert not pod.metadata.owner_references

    # A custom resource's dependents go with it (Background is the default elsewhere).
    games = kubernetes.client.CustomObjectsApi(kube_api.client)
    game = games.create_namespaced_custom_object(G, V, NS, P, _game("owner"))
    owner = {
        "apiVersion": f"{G}/{V}",
        "kind": "AdversarialGame",
        "name": "owner",
        "uid": game["metadata"]["uid"],
        "controller": True,
    }
    core.create_namespaced_config_map(NS, {"metadata": {"name": "dep", "ownerReferences": [owner]}})
    games.delete_namespaced_custom_object(G, V, NS, P, "owner")
    assert kube_api.get("configmaps", "dep") is None


def test_fault_injection(kube_api: KubeApi) -> None:
    core = kubernetes.client.CoreV1Api(kube_api.client)
    kube_api.fail_next(times=2, status=500, method="GET", path=r"/configmaps")
    for _ in range(2):
        with pytest.raises(kubernetes.client.ApiException) as e:
            core.list_namespaced_config_map(NS)
        assert e.value.status == 500
    assert core.list_namespaced_config_map(NS).items == []
    kube_api.fail_next(status=429, method="POST", retry_after=1)
    with pytest.raises(kubernetes.client.ApiException) as e:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "x"}})
    assert e.value.status == 429
    injected = [r for r in kube_api.requests if r.injected]
    assert [(r.method, r.status) for r in injected] == [("GET", 500)] * 2 + [("POST", 429)]

    # Dropped watch streams end (clients then re-watch from their last resourceVersion).
    ended = threading.Event()

    def watch_forever() -> None:
        for _ in watch.Watch().stream(core.list_namespaced_config_map, NS, timeout_seconds=60):
            pass
        ended.set()

    threading.Thread(target=watch_forever, daemon=True).start()
    wait_for(lambda: kube_api.open_watches == 1, 10, message="an open watch")
    kube_api.drop_watches()
    assert ended.wait(10)
    assert kube_api.open_watches == 0


# -- the kubelet --------------------------------------------------------------------------------
WRITE_MESSAGE = "import sys; open(sys.argv[1], 'w').write(sys.argv[2]); sys.exit(int(sys.argv[3]))"


def test_job_runs_and_completes(kube_api: KubeApi, kubelet: LocalKubelet) -> None:
    core = kubernetes.client.CoreV1Api(kube_api.client)
    batch = kubernetes.client.BatchV1Api(kube_api.client)
    core.create_namespaced_secret(
        NS, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}}
    )
    core.create_namespaced_config_map(
        NS, {"metadata": {"name": "game"}, "data": {"game.json": '{"rounds": 2}'}}
    )
    code = (
        "import json, os, sys; game = json.load(open(sys.argv[1]));"
        " assert os.environ['TOKEN'] == 's3cr3t', os.environ;"
        " assert os.environ['POD'].startswith('ok-');"
        " open(os.environ['TERM_LOG'], 'w').write(f\"hello {game['rounds']}\")"
    )
    batch.create_namespaced_job(
        NS,
        _job(
            "ok",
            code,
            "/etc/sparring/game.json",
            container={
                "env": [
                    {
                        "name": "TOKEN",
                        "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}},
                    },
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "TERM_LOG", "value": "/tmp/term/message"},
                ],
                "volumeMounts": [{"name": "game", "mountPath": "/etc/sparring"}],
            },
            pod={"volumes": [{"name": "game", "configMap": {"name": "game"}}]},
        ),
    )
    job = _wait_job(batch, "ok", kubelet)
    assert _conditions(job) == {
        "SuccessCriteriaMet": "CompletionsReached",
        "Complete": "CompletionsReached",
    }
    assert job.status.succeeded == 1 and job.status.completion_time and job.status.start_time
    (pod,) = _pods(kube_api, "ok")
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == job.metadata.uid
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"], terminated["message"]) == (
        0,
        "Completed",
        "hello 2",
    )
    assert kubelet.log_path(pod["metadata"]["name"]).exists()


def test_job_failure_and_deadline(kube_api: KubeApi, kubelet: LocalKubelet) -> None:
    batch = kubernetes.client.BatchV1Api(kube_api.client)
    batch.create_namespaced_job(NS, _job("bad", WRITE_MESSAGE, "/tmp/term/message", "boom", "3"))
    batch.create_namespaced_job(
        NS, _job("slow", "import time; time.sleep(60)", activeDeadlineSeconds=1)
    )
    job = _wait_job(batch, "bad", kubelet)
    assert _conditions(job) == {
        "FailureTarget": "BackoffLimitExceeded",
        "Failed": "BackoffLimitExceeded",
    }
    assert job.status.failed == 1 and not job.status.succeeded
    (pod,) = _pods(kube_api, "bad")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (pod["status"]["phase"], terminated["exitCode"], terminated["message"]) == (
        "Failed",
        3,
        "boom",
    )
    job = _wait_job(batch, "slow", kubelet)
    assert _conditions(job)["Failed"] == "DeadlineExceeded"
    assert kubelet.running("slow") is None


def test_preemption_is_ignored_by_pod_failure_policy(
    kube_api: KubeApi, kubelet: LocalKubelet
) -> None:
    batch = kubernetes.client.BatchV1Api(kube_api.client)
    # The first pod leaves a marker on the shared volume and waits; the second one finds it.
    code = (
        "import os, sys, time; marker = os.path.join(sys.argv[1], 'started');"
        " first = not os.path.exists(marker); open(marker, 'w').close();"
        " time.sleep(60 if first else 0)"
    )
    policy = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    batch.create_namespaced_job(
        NS,
        _job(
            "pre",
            code,
            "/data",
            podFailurePolicy=policy,
            container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
            pod={"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "pre"}}]},
        ),
    )
    preempted = kubelet.preempt("pre")
    job = _wait_job(batch, "pre", kubelet)
    assert "Complete" in _conditions(job) and not job.status.failed
    pods = {p["metadata"]["name"]: p for p in _pods(kube_api, "pre")}
    assert len(pods) == 2
    conditions = {c["type"]: c for c in pods[preempted]["status"]["conditions"]}
    assert pods[preempted]["status"]["phase"] == "Failed"
    assert conditions["DisruptionTarget"]["reason"] == "PreemptionByScheduler"


def test_suspended_job_waits_and_deleted_job_is_killed(
    kube_api: KubeApi, kubelet: LocalKubelet
) -> None:
    batch = kubernetes.client.BatchV1Api(kube_api.client)
    batch.create_namespaced_job(NS, _job("later", "pass", suspend=True))
    job = wait_for(
        lambda: (
            (j := batch.read_namespaced_job("later", NS)) and "Suspended" in _conditions(j) and j
        ),
        10,
        message="Suspended condition",
    )
    assert not _pods(kube_api, "later")
    batch.patch_namespaced_job("later", NS, {"spec": {"suspend": False}})
    job = _wait_job(batch, "later", kubelet)
    assert "Complete" in _conditions(job) and "Suspended" not in _conditions(job)

    batch.create_namespaced_job(NS, _job("doomed", "import time; time.sleep(60)"))
    run = wait_for(lambda: kubelet.running("doomed"), 10, message="a running pod")
    batch.delete_namespaced_job("doomed", NS, propagation_policy="Background")
    assert run.proc is not None
    wait_for(lambda: run.proc.poll() is not None, 10, message="the process to be killed")
    assert not _pods(kube_api, "doomed")


# -- kopf ---------------------------------------------------------------------------------------
def test_kopf_operator_reacts(kube_env: KubeApi) -> None:
    api = kubernetes.client.CustomObjectsApi(kube_env.client)

    def game() -> dict[str, Any] | None:
        return kube_env.get(P, "k1")

    with kopf_runner(MINI_OPERATOR, namespace=NS) as runner:
        api.create_namespaced_custom_object(G, V, NS, P, _game("k1"))
        created = wait_for(
            lambda: (game() or {}).get("status", {}).get("created"),
            15,
            message=lambda: f"the operator's status: {game()}",
        )
        assert created == {"phase": "Seen", "seenGeneration": 1}
        assert game()["metadata"]["finalizers"] == ["sparring.dev/mini-operator"]
        owned = kube_env.get("configmaps", "k1-seen")
        assert owned["metadata"]["ownerReferences"][0]["uid"] == game()["metadata"]["uid"]

        api.patch_namespaced_custom_object(G, V, NS, P, "k1", {"spec": {"rounds": 2}})
        wait_for(
            lambda: game()["status"].get("seenGeneration") == 2,
            15,
            message=lambda: f"the update: {game()}",
        )

        kube_env.drop_watches()  # kopf re-watches from its last resourceVersion
        api.delete_namespaced_custom_object(G, V, NS, P, "k1")
        wait_for(lambda: game() is None, 15, message=lambda: f"the deletion: {game()}")
        assert kube_env.get("configmaps", "k1-seen") is None  # garbage-collected
    assert runner.exception is None
    used = kube_env.rbac_usage(user_agent="kopf")
    assert {(G, P, "watch"), (G, P, "patch"), (G, f"{P}/status", "patch")} <= used
