"""Where phase pods may run, beside a node selector and tolerations (`spec.scheduling`):
node and pod (anti-)affinity and topology spread, as the core/v1 shapes with the fields a
phase needs, so that the CRD's schema checks them when a game is applied."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from sparring_operator.apitypes import MODEL_CONFIG

Key = Annotated[str, Field(min_length=1, max_length=316)]
Weight = Annotated[int, Field(ge=1, le=100)]


class _Model(BaseModel):
    model_config = MODEL_CONFIG


class NodeRequirement(_Model):
    """A rule on one node label (or field)."""

    key: Key
    """The label key, e.g. nvidia.com/gpu.product."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    """How the label's value is matched."""
    values: list[str] = []
    """Values for In/NotIn (one or more), Gt/Lt (one integer); none for Exists/DoesNotExist."""

    @model_validator(mode="after")
    def _values(self) -> NodeRequirement:
        wanted = {"In": "one or more", "NotIn": "one or more", "Gt": "one", "Lt": "one"}
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"values: must be empty with operator {self.operator}")
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(
                f"values: {wanted[self.operator]} needed with operator {self.operator}"
            )
        if self.operator in ("Gt", "Lt") and len(self.values) != 1:
            raise ValueError(f"values: exactly one integer needed with operator {self.operator}")
        return self


class NodeSelectorTerm(_Model):
    """Requirements that all hold (terms of a list are alternatives)."""

    match_expressions: list[NodeRequirement] = []
    """On node labels."""
    match_fields: list[NodeRequirement] = []
    """On node fields (metadata.name)."""


class RequiredNodes(_Model):
    """Nodes a phase pod may only run on."""

    node_selector_terms: Annotated[list[NodeSelectorTerm], Field(min_length=1)]
    """Alternatives: a node that satisfies any one term."""


class PreferredNodes(_Model):
    """Nodes a phase pod is placed on when it can be."""

    weight: Weight
    """1-100: how much this preference counts."""
    preference: NodeSelectorTerm
    """The nodes preferred."""


class NodeAffinity(_Model):
    """Node affinity."""

    required_during_scheduling_ignored_during_execution: RequiredNodes | None = None
    """Hard: the pod stays Pending until such a node has room."""
    preferred_during_scheduling_ignored_during_execution: list[PreferredNodes] = []
    """Soft preferences."""


class LabelRequirement(_Model):
    """A rule on one pod label."""

    key: Key
    """The label key."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How its value is matched."""
    values: list[str] = []
    """Values for In/NotIn; none for Exists/DoesNotExist."""

    @model_validator(mode="after")
    def _values(self) -> LabelRequirement:
        if (self.operator in ("In", "NotIn")) != bool(self.values):
            need = "one or more" if self.operator in ("In", "NotIn") else "no"
            raise ValueError(f"values: {need} values with operator {self.operator}")
        return self


class LabelSelector(_Model):
    """Pods selected by labels (all rules hold)."""

    match_labels: dict[str, str] = {}
    """Exact label values."""
    match_expressions: list[LabelRequirement] = []
    """Rules."""


class PodAffinityTerm(_Model):
    """Pods (selected by labels) in one topology domain."""

    label_selector: LabelSelector | None = None
    """The pods (in the game's namespace unless namespaces are given)."""
    namespaces: list[str] = []
    """Namespaces of those pods."""
    topology_key: Key
    """The node label whose value is the domain, e.g. kubernetes.io/hostname."""


class WeightedPodAffinityTerm(_Model):
    """A soft pod (anti-)affinity."""

    weight: Weight
    """1-100: how much it counts."""
    pod_affinity_term: PodAffinityTerm
    """The term."""


class PodAffinity(_Model):
    """Pod affinity or anti-affinity."""

    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] = []
    """Hard terms."""
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] = []
    """Soft terms."""


class Affinity(_Model):
    """Affinity of phase pods (core/v1 Affinity)."""

    node_affinity: NodeAffinity | None = None
    """Nodes to run on (e.g. one GPU model)."""
    pod_affinity: PodAffinity | None = None
    """Pods to run near."""
    pod_anti_affinity: PodAffinity | None = None
    """Pods to keep away from."""


class TopologySpreadConstraint(_Model):
    """How phase pods spread over a topology (core/v1 TopologySpreadConstraint)."""

    max_skew: Annotated[int, Field(ge=1)]
    """The most the number of matching pods may differ between two domains."""
    topology_key: Key
    """The node label whose value is the domain, e.g. topology.kubernetes.io/zone."""
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"]
    """Keep the pod Pending, or place it anyway."""
    label_selector: LabelSelector | None = None
    """The pods counted."""
    min_domains: Annotated[int, Field(ge=1)] | None = None
    """Domains counted even when empty (DoNotSchedule only)."""

    @model_validator(mode="after")
    def _min_domains(self) -> TopologySpreadConstraint:
        if self.min_domains is not None and self.when_unsatisfiable != "DoNotSchedule":
            raise ValueError("minDomains: only with whenUnsatisfiable DoNotSchedule")
        return self
