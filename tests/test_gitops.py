"""GitOps examples: the Argo CD health check on real statuses, Argo CD/Flux objects, campaigns.

* The Lua health check (examples/gitops/argocd/health.lua, also inside argocd-cm.yaml) runs in
  Lua 5.1 (Argo CD's gopher-lua speaks 5.1) on statuses built by the operator's own code:
  `core.decide` for Running, Succeeded, Failed, Suspended and a retry backoff, and
  `core.invalid_spec_status` for a bad spec.
* The Argo CD Application's and the Flux HelmRelease's chart values render and lint.
* The Kustomize campaign (examples/campaign) is rendered here, without the kustomize binary
  (`render_kustomization` implements the subset the examples use and refuses anything else),
  and every game it yields passes `sparring validate`'s checks.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from sparring_operator import validate
from sparring_operator.actions import ObservedJob
from sparring_operator.api import API_VERSION, KIND, AdversarialGame, AdversarialGameStatus
from sparring_operator.core import decide
from sparring_operator.machine import phase_sequence
from sparring_operator.observed import StoreView
from sparring_operator.refusals import invalid_spec_status

lua51 = pytest.importorskip("lupa.lua51", reason="lupa (the `dev` extra) runs the Lua check")

ROOT = Path(__file__).resolve().parents[1]
GITOPS = ROOT / "examples" / "gitops"
CAMPAIGN = ROOT / "examples" / "campaign"
HEALTH_KEY = "resource.customizations.health.sparring.dev_AdversarialGame"
T0 = 1_700_000_000.0


# ---- the Argo CD health check ------------------------------------------------------------


def health_script() -> str:
    return (GITOPS / "argocd" / "health.lua").read_text(encoding="utf-8")


def argo_health(obj: dict[str, Any], script: str | None = None) -> tuple[str, str]:
    """Run the check as Argo CD does: `obj` is the resource as a Lua table; it returns `hs`."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(script if script is not None else health_script())
    return str(hs["status"]), str(hs["message"])


def game(**spec: Any) -> AdversarialGame:
    return AdversarialGame.model_validate(
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": "g", "namespace": "team-a"},
            "spec": {
                "rounds": 1,
                "storage": {"uri": "s3://bucket"},
                "game": {"policy": {"model": "tiny-random"}, "adversary": {"model": "tiny-random"}},
                "phases": {"default": {"retry": {"limit": 2, "backoffSeconds": 60}}},
                **spec,
            },
        }
    )


def committed(*markers: tuple[int, str]) -> StoreView:
    view = StoreView()
    for marker in markers:
        view.committed.add(marker)
        view.uris[marker] = f"s3://bucket/team-a/g/round-{marker[0]:04d}/{marker[1]}/"
        view.committed_at[marker] = "2026-01-01T00:00:00Z"
        view.metrics[marker] = {"rm_accuracy": 0.66} if marker[1] == "evaluate" else {}
    return view


def prepare_job(
    state: str, reason: str = "", message: str = "", exit_code: int | None = None
) -> ObservedJob:
    return ObservedJob(
        "g-r0000-prepare-a1",
        0,
        "prepare",
        1,
        state,
        created_at=T0,
        finished_at=T0 + 10,
        reason=reason,
        message=message,
        exit_code=exit_code,
    )


def resource(status: AdversarialGameStatus | None, generation: int = 1) -> dict[str, Any]:
    """The game as the API server returns it, with the status the operator wrote."""
    obj: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": "g", "namespace": "team-a", "generation": generation},
        "spec": game().model_dump(mode="json", by_alias=True, exclude_none=True)["spec"],
    }
    if status is not None:
        obj["status"] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return obj


def decided(g: AdversarialGame, jobs: list[ObservedJob], view: StoreView) -> Any:
    return decide(g, 1, AdversarialGameStatus(), jobs, view, None, T0, T0 + 20)


def written_statuses() -> dict[str, AdversarialGameStatus | None]:
    """What the operator writes in each situation, from its own decision code."""
    everything = committed(*phase_sequence("apo", 1))
    return {
        "new": None,
        "Pending": AdversarialGameStatus(),
        "Running": decided(game(), [], StoreView()).status,
        "BackingOff": decided(
            game(),
            [prepare_job("Failed", "BackoffLimitExceeded", "CUDA out of memory")],
            StoreView(),
        ).status,
        "Succeeded": decided(game(), [], everything).status,
        "Failed": decided(
            game(),
            [prepare_job("Failed", "PodFailurePolicy", "no such model: ./nope", exit_code=3)],
            StoreView(),
        ).status,
        "InvalidSpec": invalid_spec_status(
            "invalid spec: spec.rounds: too many", AdversarialGameStatus(), T0, 1
        ),
        "Suspended": decided(game(suspend=True), [], committed((0, "prepare"))).status,
    }


EXPECTED = {
    "new": ("Progressing", "Waiting for the operator"),
    "Pending": ("Progressing", "Pending"),
    "Running": ("Progressing", "round 0: prepare"),
    "BackingOff": ("Progressing", "reconciling: retrying round 0 prepare"),
    "Succeeded": ("Healthy", "Succeeded"),
    "Failed": ("Degraded", "no such model: ./nope"),
    "InvalidSpec": ("Degraded", "spec.rounds: too many"),
    "Suspended": ("Suspended", "suspended before round 1 sample"),
}


@pytest.mark.parametrize("situation", list(EXPECTED))
def test_argo_cd_health_of_the_statuses_the_operator_writes(situation: str) -> None:
    status = written_statuses()[situation]
    if status is not None and situation not in ("Pending", "InvalidSpec"):
        assert status.phase == situation.replace("BackingOff", "Running"), status.phase
    health, message = argo_health(resource(status))
    want_health, want_in_message = EXPECTED[situation]
    assert health == want_health, (situation, health, message)
    assert want_in_message in message, (situation, message)


def test_argo_cd_health_waits_for_a_new_generation_to_be_observed() -> None:
    succeeded = written_statuses()["Succeeded"]
    assert succeeded is not None
    assert argo_health(resource(succeeded, generation=1))[0] == "Healthy"
    health, message = argo_health(resource(succeeded, generation=2))  # e.g. rounds grew
    assert health == "Progressing" and "generation 2" in message


def test_argo_cd_health_reports_rounds_played() -> None:
    succeeded = written_statuses()["Succeeded"]
    assert argo_health(resource(succeeded))[1].endswith("(1/1 rounds)")


# ---- kstatus (Flux's default health check) -----------------------------------------------


def kstatus(obj: dict[str, Any]) -> str:
    """The generic rules of kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status, `Compute`) for a
    custom resource: deletion, then observedGeneration, then Reconciling/Stalled, then Ready;
    a resource with none of these counts as Current."""
    if obj["metadata"].get("deletionTimestamp"):
        return "Terminating"
    status = obj.get("status") or {}
    observed = status.get("observedGeneration")
    if observed is not None and observed != obj["metadata"].get("generation"):
        return "InProgress"
    conditions = {c["type"]: c for c in status.get("conditions", [])}
    if conditions.get("Reconciling", {}).get("status") == "True":
        return "InProgress"
    if conditions.get("Stalled", {}).get("status") == "True":
        return "Failed"
    ready = conditions.get("Ready")
    if ready is not None:
        return "Current" if ready["status"] == "True" else "InProgress"
    return "Current"


KSTATUS_WANTED = {
    "Running": "InProgress",
    "BackingOff": "InProgress",
    "Succeeded": "Current",
    "Failed": "Failed",
    "InvalidSpec": "Failed",
    "Suspended": "InProgress",
}


@pytest.mark.parametrize("situation", list(KSTATUS_WANTED))
def test_kstatus_reads_the_game_as_flux_should(situation: str) -> None:
    assert kstatus(resource(written_statuses()[situation])) == KSTATUS_WANTED[situation]


def test_kstatus_counts_a_game_without_status_as_current() -> None:
    """Why examples/gitops/flux uses healthCheckExprs: before the operator's first status write
    kstatus calls a new game Current (no conditions at all), so `wait` alone could pass early."""
    assert kstatus(resource(None)) == "Current"


def test_argocd_cm_snippet_holds_health_lua_verbatim() -> None:
    configmap = yaml.safe_load((GITOPS / "argocd" / "argocd-cm.yaml").read_text())
    assert configmap["kind"] == "ConfigMap" and configmap["metadata"]["name"] == "argocd-cm"
    assert configmap["data"][HEALTH_KEY] == health_script(), (
        "argocd-cm.yaml and health.lua differ: paste health.lua into the ConfigMap"
    )


# ---- Argo CD and Flux objects ------------------------------------------------------------


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def chart_renders(values: dict[str, Any]) -> None:
    helm = pytest.importorskip("helm_python")
    chart_dir = ROOT / "charts" / "sparring"
    with helm.Chart.load(chart_dir) as chart:
        assert chart.render(values=copy.deepcopy(values), name="sparring", namespace="ops")
    report = helm.lint(chart_dir, copy.deepcopy(values), strict=True)
    assert not [m for m in report["messages"] if m["severity"] >= 2] + report["errors"], report


def test_argo_cd_applications_point_at_real_paths_and_valid_values() -> None:
    (chart_app,) = load_all(GITOPS / "argocd" / "application.yaml")
    (games_app,) = load_all(GITOPS / "argocd" / "games-application.yaml")
    for app in (chart_app, games_app):
        assert app["apiVersion"] == "argoproj.io/v1alpha1" and app["kind"] == "Application"
        assert (ROOT / app["spec"]["source"]["path"]).is_dir(), app["spec"]["source"]["path"]
        assert app["spec"]["destination"]["namespace"]
    assert chart_app["spec"]["source"]["path"] == "charts/sparring"
    assert "ServerSideApply=true" in chart_app["spec"]["syncPolicy"]["syncOptions"]
    chart_renders(chart_app["spec"]["source"]["helm"]["valuesObject"])
    assert games_app["spec"]["syncPolicy"]["automated"]["prune"] is False  # never prune games


def test_flux_objects_fit_together() -> None:
    operator_dir = GITOPS / "flux" / "operator"
    rendered = {o["kind"]: o for o in render_kustomization(operator_dir)}
    assert set(rendered) == {"Namespace", "HelmRepository", "HelmRelease"}
    release, repository = rendered["HelmRelease"], rendered["HelmRepository"]
    source = release["spec"]["chart"]["spec"]["sourceRef"]
    assert (source["kind"], source["name"]) == ("HelmRepository", repository["metadata"]["name"])
    assert release["spec"]["chart"]["spec"]["chart"] == "sparring"
    chart_renders(release["spec"]["values"])

    (git,) = load_all(GITOPS / "flux" / "gitrepository.yaml")
    kustomizations = {
        k["metadata"]["name"]: k for k in load_all(GITOPS / "flux" / "kustomizations.yaml")
    }
    for k in kustomizations.values():
        assert k["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1"
        assert k["spec"]["sourceRef"] == {"kind": "GitRepository", "name": git["metadata"]["name"]}
        assert (ROOT / k["spec"]["path"]).is_dir(), k["spec"]["path"]
    games = kustomizations["sparring-campaign"]["spec"]
    assert games["dependsOn"] == [{"name": "sparring-operator"}]
    assert games["wait"] is True and games["prune"] is False
    (expr,) = games["healthCheckExprs"]
    assert (expr["apiVersion"], expr["kind"]) == (API_VERSION, KIND)
    assert {"current", "failed", "inProgress"} <= set(expr)


# ---- the Kustomize campaign --------------------------------------------------------------

SUPPORTED = {
    "apiVersion",
    "kind",
    "resources",
    "patches",
    "namePrefix",
    "nameSuffix",
    "labels",
    "commonLabels",
    "namespace",
}


def merge_patch(target: Any, patch: Any) -> Any:
    """JSON merge patch (RFC 7386): what a strategic merge patch does to a custom resource,
    whose schema declares no merge keys (maps merge, lists and scalars replace, null deletes)."""
    if not isinstance(patch, dict) or not isinstance(target, dict):
        return copy.deepcopy(patch)
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def _identity(obj: dict[str, Any]) -> tuple[str, str, str]:
    return obj["apiVersion"], obj["kind"], obj["metadata"]["name"]


def _render(directory: Path) -> list[tuple[dict[str, Any], tuple[str, str, str]]]:
    """(object, identity in its own file) pairs: patches may name either, as in kustomize."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    unsupported = set(spec) - SUPPORTED
    assert not unsupported, f"{directory}: the test's renderer does not implement {unsupported}"
    pairs: list[tuple[dict[str, Any], tuple[str, str, str]]] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            pairs += _render(path)
        else:
            pairs += [(doc, _identity(doc)) for doc in load_all(path)]
    for entry in spec.get("patches", []):
        assert set(entry) == {"path"}, f"{directory}: only file patches are implemented: {entry}"
        for patch in load_all(directory / entry["path"]):
            wanted = _identity(patch)
            hits = [
                i for i, (obj, origin) in enumerate(pairs) if wanted in (_identity(obj), origin)
            ]
            assert len(hits) == 1, f"{directory}: patch {wanted} matches {len(hits)} objects"
            obj, origin = pairs[hits[0]]
            pairs[hits[0]] = (merge_patch(obj, patch), origin)
    labels = dict(spec.get("commonLabels", {}))
    for group in spec.get("labels", []):
        labels |= group["pairs"]
    for obj, _ in pairs:
        meta = obj["metadata"]
        meta["name"] = spec.get("namePrefix", "") + meta["name"] + spec.get("nameSuffix", "")
        if labels:
            meta["labels"] = {**meta.get("labels", {}), **labels}
        if "namespace" in spec:
            meta["namespace"] = spec["namespace"]
    return pairs


def render_kustomization(directory: Path) -> list[dict[str, Any]]:
    """`kustomize build DIRECTORY`, for the subset of kustomization.yaml the examples use
    (resources, file patches, namePrefix/nameSuffix, labels, namespace); anything else fails."""
    return [obj for obj, _ in _render(directory)]


ARMS = {
    "dpo": ("apo-smollm2-dpo", "dpo", 0.1),
    "rjs": ("apo-smollm2-rjs", "rjs", 0.1),
    "rrhf": ("apo-smollm2-rrhf", "rrhf", 0.1),
    "dpo-beta-0.05": ("apo-smollm2-dpo-b005", "dpo", 0.05),
    "baseline": ("apo-smollm2-dpo-baseline", "dpo", 0.1),
}


@pytest.mark.parametrize("overlay", [*ARMS, "all"])
def test_campaign_overlays_render_to_valid_games(overlay: str, tmp_path: Path) -> None:
    games = render_kustomization(CAMPAIGN / "overlays" / overlay)
    arms = list(ARMS) if overlay == "all" else [overlay]
    assert [g["metadata"]["name"] for g in games] == [ARMS[a][0] for a in arms]
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(games, sort_keys=False), encoding="utf-8")
    report = validate.check_file(path)  # what `sparring validate` runs
    assert not report.errors, report.errors
    base = yaml.safe_load((CAMPAIGN / "base" / "game.yaml").read_text())
    for arm, checked in zip(arms, report.games, strict=True):
        name, method, beta = ARMS[arm]
        update = checked.spec.game.policy.update
        assert (checked.metadata.name, update.method, update.beta) == (name, method, beta)
        # Only the policy update differs from the base: same models, data, rounds and store.
        rendered = next(g for g in games if g["metadata"]["name"] == name)
        assert rendered["metadata"]["labels"] == {"sparring.dev/campaign": "apo-smollm2"}
        for key in ("rounds", "storage", "phases"):
            assert rendered["spec"][key] == base["spec"][key]
        for key in ("data", "sampling", "evaluation"):
            assert rendered["spec"]["game"][key] == base["spec"]["game"][key]
        # The baseline arm differs from the dpo arm only in its RM's update mode.
        mode = "baseline" if arm == "baseline" else "apo"
        assert checked.spec.game.adversary.update.mode == mode
        adversary = rendered["spec"]["game"]["adversary"]
        assert adversary == base["spec"]["game"]["adversary"] | {
            "update": base["spec"]["game"]["adversary"]["update"] | {"mode": mode}
        }
        AdversarialGame.model_validate(rendered)
