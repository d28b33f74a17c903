"""What the resource models share: their configuration (camelCase aliases, unknown fields
refused, attribute docstrings as the CRD's descriptions) and the shapes of Kubernetes
quantities. Each module declares its own base on `MODEL_CONFIG` (linters see a pydantic model
only where `BaseModel` is subclassed in the same module)."""

from __future__ import annotations

from pydantic import ConfigDict
from pydantic.alias_generators import to_camel

# A byte quantity as Kubernetes writes one (no exponent forms, no milli-bytes).
DISK_QUANTITY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"

MODEL_CONFIG = ConfigDict(
    alias_generator=to_camel,
    populate_by_name=True,
    extra="forbid",
    use_attribute_docstrings=True,
)
