"""The resources the harness API server serves, and what the real API server does to an object
of each kind on create (defaults, validation) that the operator could depend on.

kmock 0.8 only serves resources declared before start; a CRD POSTed at run time is not served.
Here the resources are declared at start (the built-ins the operator and kopf use, plus
``adversarialgames.sparring.dev``), and a CRD created through the API is registered as well
(see :func:`resource_from_crd`).
"""

from __future__ import annotations

import base64
import dataclasses
import re
from typing import Any

VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


class Invalid(ValueError):
    """The object is rejected as the real API would: 422 Unprocessable Entity (reason Invalid)."""


@dataclasses.dataclass(frozen=True)
class ResourceDef:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    custom: bool = False  # custom resources refuse strategic merge patches (415), as in reality
    has_generation: bool = True  # configmaps, secrets, events, namespaces have no generation

    @property
    def api_version(self) -> str:
        return self.version if not self.group else f"{self.group}/{self.version}"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.group, self.version, self.plural)

    def __str__(self) -> str:
        return f"{self.api_version}/{self.plural}"


def _core(plural: str, kind: str, **kwargs: Any) -> ResourceDef:
    return ResourceDef("", "v1", plural, kind, singular=kind.lower(), **kwargs)


BUILTIN_RESOURCES: tuple[ResourceDef, ...] = (
    _core(
        "namespaces",
        "Namespace",
        namespaced=False,
        short_names=("ns",),
        subresources=("status",),
        has_generation=False,
    ),
    _core("pods", "Pod", short_names=("po",), subresources=("status", "log")),
    _core("configmaps", "ConfigMap", short_names=("cm",), has_generation=False),
    _core("secrets", "Secret", has_generation=False),
    _core("serviceaccounts", "ServiceAccount", short_names=("sa",), has_generation=False),
    _core(
        "services", "Service", short_names=("svc",), subresources=("status",), has_generation=False
    ),
    _core(
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        short_names=("pvc",),
        subresources=("status",),
        has_generation=False,
    ),
    _core("events", "Event", short_names=("ev",), has_generation=False),
    ResourceDef(
        "events.k8s.io",
        "v1",
        "events",
        "Event",
        singular="event",
        short_names=("ev",),
        has_generation=False,
    ),
    ResourceDef(
        "batch", "v1", "jobs", "Job", singular="job", categories=("all",), subresources=("status",)
    ),
    ResourceDef(
        "coordination.k8s.io", "v1", "leases", "Lease", singular="lease", has_generation=False
    ),
    ResourceDef(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
        singular="customresourcedefinition",
        short_names=("crd", "crds"),
        subresources=("status",),
    ),
)

ADVERSARIAL_GAMES = ResourceDef(
    "sparring.dev",
    "v1alpha1",
    "adversarialgames",
    "AdversarialGame",
    singular="adversarialgame",
    short_names=("ag", "advgame"),
    subresources=("status",),
    custom=True,
)


def resource_from_crd(crd: dict[str, Any]) -> list[ResourceDef]:
    """One ResourceDef per served version of a ``CustomResourceDefinition`` object."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    return [
        ResourceDef(
            group=spec.get("group", ""),
            version=version["name"],
            plural=names.get("plural", ""),
            kind=names.get("kind", ""),
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            singular=names.get("singular", ""),
            short_names=tuple(names.get("shortNames", [])),
            categories=tuple(names.get("categories", [])),
            subresources=tuple((version.get("subresources") or {}).keys()),
            custom=True,
        )
        for version in spec.get("versions") or []
        if version.get("served", True)
    ]


def validate_metadata(rdef: ResourceDef, obj: dict[str, Any]) -> None:
    """The checks that most often catch operator bugs: names, and labels/annotations that
    must be strings (a Python int in a label is a 400 on a real cluster; here a 422)."""
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    if not isinstance(name, str) or not _DNS_SUBDOMAIN.fullmatch(name) or len(name) > 253:
        raise Invalid(f"metadata.name: Invalid value: {name!r}: must be a DNS-1123 subdomain")
    if rdef.plural == "jobs" and len(name) > 63:
        raise Invalid(f"metadata.name: Invalid value: {name!r}: must be no more than 63 chars")
    for field in ("labels", "annotations"):
        for key, value in (meta.get(field) or {}).items():
            if not isinstance(value, str):
                raise Invalid(f"metadata.{field}[{key}]: Invalid value: {value!r}: not a string")
            if field == "labels" and (len(value) > 63 or not _LABEL_VALUE.fullmatch(value)):
                raise Invalid(f"metadata.labels[{key}]: Invalid value: {value!r}")


def _default_containers(pod_spec: dict[str, Any], where: str) -> None:
    containers = pod_spec.get("containers") or []
    if not containers:
        raise Invalid(f"{where}.containers: Required value")
    for index, container in enumerate(containers + (pod_spec.get("initContainers") or [])):
        for required in ("name", "image"):
            if not container.get(required):
                raise Invalid(f"{where}.containers[{index}].{required}: Required value")
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        latest = ":" not in container["image"].rsplit("/", 1)[-1]
        latest = latest or container["image"].endswith(":latest")
        container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
    pod_spec.setdefault("restartPolicy", "Always")
    pod_spec.setdefault("terminationGracePeriodSeconds", 30)
    pod_spec.setdefault("dnsPolicy", "ClusterFirst")
    pod_spec.setdefault("schedulerName", "default-scheduler")


def prepare_create(rdef: ResourceDef, obj: dict[str, Any]) -> None:
    """Defaults and validation of the real API server, for the kinds where they matter.
    Called after uid/name are set; mutates ``obj`` in place; raises :class:`Invalid`."""
    meta = obj["metadata"]
    if rdef.plural == "jobs" and not rdef.custom:
        spec = obj.setdefault("spec", {})
        template = spec.setdefault("template", {})
        pod_spec = template.setdefault("spec", {})
        _default_containers(pod_spec, "spec.template.spec")
        if pod_spec.get("restartPolicy") not in ("Never", "OnFailure"):
            raise Invalid(
                "spec.template.spec.restartPolicy: Unsupported value: must be "
                '"OnFailure" or "Never"'
            )
        if spec.get("podFailurePolicy") and pod_spec["restartPolicy"] != "Never":
            raise Invalid("spec.podFailurePolicy: requires restartPolicy Never")
        for key, value in (
            ("completions", 1),
            ("parallelism", 1),
            ("backoffLimit", 6),
            ("suspend", False),
            ("completionMode", "NonIndexed"),
            ("manualSelector", False),
            (
                "podReplacementPolicy",
                "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed",
            ),
        ):
            spec.setdefault(key, value)
        # The real API labels the pod template and sets the selector from the Job's uid.
        uid_labels = {
            "batch.kubernetes.io/controller-uid": meta["uid"],
            "controller-uid": meta["uid"],
        }
        name_labels = {"batch.kubernetes.io/job-name": meta["name"], "job-name": meta["name"]}
        template.setdefault("metadata", {}).setdefault("labels", {}).update(
            {**uid_labels, **name_labels}
        )
        spec.setdefault(
            "selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": meta["uid"]}}
        )
    elif rdef.plural == "pods" and not rdef.custom:
        _default_containers(obj.setdefault("spec", {}), "spec")
        obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
    elif rdef.plural == "secrets" and not rdef.custom:
        # stringData is write-only: merged into data (base64) on every write.
        string_data = obj.pop("stringData", None) or {}
        data = obj.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        obj.setdefault("type", "Opaque")
    elif rdef.plural == "namespaces" and not rdef.custom:
        obj.setdefault("spec", {"finalizers": ["kubernetes"]})
        obj["status"] = {"phase": "Active"}
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
    elif rdef.plural == "customresourcedefinitions" and not rdef.custom:
        # Served at once (see Store.create), so established at once, as `kubectl wait` expects.
        spec = obj.get("spec") or {}
        stored = [v["name"] for v in spec.get("versions") or [] if v.get("storage")]
        obj["status"] = {
            "acceptedNames": spec.get("names") or {},
            "storedVersions": stored,
            "conditions": [
                {"type": t, "status": "True", "reason": r, "message": "harness"}
                for t, r in (
                    ("NamesAccepted", "NoConflicts"),
                    ("Established", "InitialNamesAccepted"),
                )
            ],
        }


def check_update(rdef: ResourceDef, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Immutable fields that an operator might try to change (the real API says 422)."""
    if rdef.plural == "jobs" and not rdef.custom:
        old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
        if old_spec.get("selector") != new_spec.get("selector"):
            raise Invalid("spec.selector: Invalid value: field is immutable")
        # A suspended Job may change its template (Kueue does), a started one may not.
        if old_spec.get("template") != new_spec.get("template") and not old_spec.get("suspend"):
            raise Invalid("spec.template: Invalid value: field is immutable")
        if old_spec.get("completions") != new_spec.get("completions"):
            raise Invalid("spec.completions: Invalid value: field is immutable")
    if rdef.plural == "secrets" and "stringData" in new:
        prepare_create(rdef, new)
