"""Tests of the test harness itself: the API server stand-in (over real HTTP, with the
kubernetes client and with kopf) and the local kubelet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
from harness import KubeApi
from harness.jobcontrol import true_conditions
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


def _owner(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    kind = {"apiVersion": obj["apiVersion"], "kind": obj["kind"]}
    return {**kind, "name": meta["name"], "uid": meta["uid"], "controller": True}


def _pods(kube_api: KubeApi, job: str) -> list[dict[str, Any]]:
    return kube_api.list("pods", NS, f"batch.kubernetes.io/job-name={job}")


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
        batch.create_namespaced_job(NS, _job(name, "pass"))
        job = kube_api.get("jobs", name)
        refs = [_owner(job)]
        meta = {"generateName": f"{name}-", "labels": {"job-name": name}, "ownerReferences": refs}
        core.create_namespaced_pod(NS, {"metadata": meta, "spec": job["spec"]["template"]["spec"]})

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
    dependent = {"metadata": {"name": "dep", "ownerReferences": [_owner(game)]}}
    core.create_namespaced_config_map(NS, dependent)
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
    secret = {"metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}}
    core.create_namespaced_secret(NS, secret)
    config = {"metadata": {"name": "game"}, "data": {"game.json": '{"rounds": 2}'}}
    core.create_namespaced_config_map(NS, config)
    # The config map's file at its mount path, env from a Secret and a fieldRef, and the
    # termination message path: all of them rewritten to local paths by the kubelet.
    code = (
        "import json, os, sys; game = json.load(open(sys.argv[1]));"
        " assert os.environ['TOKEN'] == 's3cr3t' and os.environ['POD'].startswith('ok-');"
        " open(os.environ['TERM_LOG'], 'w').write(f\"hello {game['rounds']}\")"
    )
    token = {"secretKeyRef": {"name": "creds", "key": "token"}}
    env = [
        {"name": "TOKEN", "valueFrom": token},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "TERM_LOG", "value": "/tmp/term/message"},
    ]
    mounts = [{"name": "game", "mountPath": "/etc/sparring"}]
    volumes = [{"name": "game", "configMap": {"name": "game"}}]
    container, pod_spec = {"env": env, "volumeMounts": mounts}, {"volumes": volumes}
    manifest = _job("ok", code, "/etc/sparring/game.json", container=container, pod=pod_spec)
    kubernetes.client.BatchV1Api(kube_api.client).create_namespaced_job(NS, manifest)
    job = kubelet.wait_job("ok")
    assert true_conditions(job) == {
        "SuccessCriteriaMet": "CompletionsReached",
        "Complete": "CompletionsReached",
    }
    status = job["status"]
    assert status["succeeded"] == 1 and status["completionTime"] and status["startTime"]
    (pod,) = _pods(kube_api, "ok")
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated == {**terminated, "exitCode": 0, "reason": "Completed", "message": "hello 2"}
    assert kubelet.log_path(pod["metadata"]["name"]).exists()


def test_job_failure_and_deadline(kube_api: KubeApi, kubelet: LocalKubelet) -> None:
    batch = kubernetes.client.BatchV1Api(kube_api.client)
    batch.create_namespaced_job(NS, _job("bad", WRITE_MESSAGE, "/tmp/term/message", "boom", "3"))
    sleeper = _job("slow", "import time; time.sleep(60)", activeDeadlineSeconds=1)
    batch.create_namespaced_job(NS, sleeper)
    job = kubelet.wait_job("bad")
    failed = {"FailureTarget": "BackoffLimitExceeded", "Failed": "BackoffLimitExceeded"}
    assert true_conditions(job) == failed
    assert job["status"]["failed"] == 1 and not job["status"].get("succeeded")
    (pod,) = _pods(kube_api, "bad")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (pod["status"]["phase"], terminated["exitCode"], terminated["message"]) == (
        "Failed",
        3,
        "boom",
    )
    assert true_conditions(kubelet.wait_job("slow"))["Failed"] == "DeadlineExceeded"
    assert kubelet.running("slow") is None


def test_preemption_is_ignored_by_pod_failure_policy(
    kube_api: KubeApi, kubelet: LocalKubelet
) -> None:
    # The first pod leaves a marker on the shared volume and waits; the second one finds it.
    code = (
        "import os, sys, time; marker = os.path.join(sys.argv[1], 'started');"
        " first = not os.path.exists(marker); open(marker, 'w').close();"
        " time.sleep(60 if first else 0)"
    )
    policy = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    mounts = [{"name": "data", "mountPath": "/data"}]
    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": "pre"}}]
    container, pod_spec = {"volumeMounts": mounts}, {"volumes": volumes}
    manifest = _job(
        "pre", code, "/data", podFailurePolicy=policy, container=container, pod=pod_spec
    )
    kubernetes.client.BatchV1Api(kube_api.client).create_namespaced_job(NS, manifest)
    preempted = kubelet.preempt("pre")
    job = kubelet.wait_job("pre")
    assert "Complete" in true_conditions(job) and not job["status"].get("failed")
    pods = {p["metadata"]["name"]: p for p in _pods(kube_api, "pre")}
    assert len(pods) == 2
    assert pods[preempted]["status"]["phase"] == "Failed"
    conditions = true_conditions(pods[preempted])
    assert conditions["DisruptionTarget"] == "PreemptionByScheduler"


def test_suspended_job_waits_and_deleted_job_is_killed(
    kube_api: KubeApi, kubelet: LocalKubelet
) -> None:
    batch = kubernetes.client.BatchV1Api(kube_api.client)
    batch.create_namespaced_job(NS, _job("later", "pass", suspend=True))
    wait_for(
        lambda: "Suspended" in true_conditions(kube_api.get("jobs", "later") or {}),
        10,
        message="the Suspended condition",
    )
    assert not _pods(kube_api, "later")
    batch.patch_namespaced_job("later", NS, {"spec": {"suspend": False}})
    assert set(true_conditions(kubelet.wait_job("later"))) == {"SuccessCriteriaMet", "Complete"}

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


def test_kopf_operator_as_a_subprocess(kube_api: KubeApi, tmp_path: Path) -> None:
    """The operator in its own process (killable, restartable), the API server in the test's."""
    api = kubernetes.client.CustomObjectsApi(kube_api.client)
    api.create_namespaced_custom_object(G, V, NS, P, _game("s1"))  # before the operator starts
    log = tmp_path / "operator.log"
    command = [sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*command, str(MINI_OPERATOR)],
            env={**os.environ, **kube_api.env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: (kube_api.get(P, "s1") or {}).get("status", {}).get("created"),
            30,
            message=lambda: f"the operator to handle s1:\n{log.read_text()}",
        )
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    records = [json.loads(line) for line in kube_api.request_log_path.read_text().splitlines()]
    assert {(r["verb"], r["resource"]) for r in records if r["user_agent"].startswith("kopf")} >= {
        ("list", P),
        ("watch", P),
        ("patch", f"{P}/status"),
    }


def test_crd_created_at_run_time_is_served(kube_api: KubeApi) -> None:
    crd = {
        "metadata": {"name": "widgets.example.dev"},
        "spec": {
            "group": "example.dev",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": True, "storage": True}],
        },
    }
    ext = kubernetes.client.ApiextensionsV1Api(kube_api.client)
    created = ext.create_custom_resource_definition(crd)
    assert {c.type for c in created.status.conditions} == {"NamesAccepted", "Established"}
    discovery = kube_api.http("GET", "/apis/example.dev/v1").body
    assert [r["name"] for r in discovery["resources"]] == ["widgets"]
    api = kubernetes.client.CustomObjectsApi(kube_api.client)
    api.create_namespaced_custom_object(
        "example.dev", "v1", NS, "widgets", {"metadata": {"name": "w"}}
    )
    ext.delete_custom_resource_definition("widgets.example.dev")  # takes its objects with it
    assert kube_api.http("GET", f"/apis/example.dev/v1/namespaces/{NS}/widgets").status == 404
