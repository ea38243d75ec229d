"""Validation of custom resources against the real CustomResourceDefinitions.

``scripts/tools`` copies the CRDs of KEDA (ScaledObject, TriggerAuthentication) and of
prometheus-operator (ServiceMonitor, PodMonitor, PrometheusRule) out of the projects' Go
modules into ``.cache/tools/crds``. A resource is checked against the ``openAPIV3Schema`` of
the CRD version its ``apiVersion`` names, the way an API server with strict field validation
(kubectl's default) does it:

* an object schema that lists ``properties`` accepts no other field (the server would
  reject an unknown field) unless it sets ``additionalProperties`` or
  ``x-kubernetes-preserve-unknown-fields``;
* ``x-kubernetes-int-or-string`` accepts an integer or a string;
* ``nullable: true`` accepts null;
* a Go regular expression with its flags after ``^`` gets them first, as Python needs;
* ``metadata`` is an ObjectMeta: a DNS-1123 name, string labels and annotations.

CEL rules (``x-kubernetes-validations``) are not evaluated (these CRDs have none).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import cache
from typing import Any

import jsonschema
import yaml

from .conftest import CRD_DIR

CRD_FILES = {
    ("keda.sh", "ScaledObject"): "keda.sh_scaledobjects.yaml",
    ("keda.sh", "TriggerAuthentication"): "keda.sh_triggerauthentications.yaml",
    ("monitoring.coreos.com", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
    ("monitoring.coreos.com", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml",
    ("monitoring.coreos.com", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
}

_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT_META: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": _DNS_SUBDOMAIN},
        "namespace": {"type": "string", "maxLength": 63, "pattern": _DNS_SUBDOMAIN},
        "labels": {"type": "object", "additionalProperties": {
            "type": "string", "maxLength": 63,
            "pattern": r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"}},
        "annotations": _STRINGS,
    },
    "additionalProperties": False,
}


class CRDMissing(LookupError):
    """No CRD file for this kind in .cache/tools/crds."""


def is_custom(doc: Mapping[str, Any]) -> bool:
    group = str(doc.get("apiVersion", "")).rpartition("/")[0]
    return (group, doc.get("kind")) in CRD_FILES


def strict(schema: Any) -> Any:
    """A copy of a structural schema that rejects unknown fields, as the API server does."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) if k in ("properties", "items", "additionalProperties", "anyOf",
                                  "allOf", "oneOf", "not") else v
           for k, v in schema.items()}
    if "properties" in schema:  # a map of field name -> schema, not a schema itself
        out["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and pattern.startswith("^(?i)"):  # Go's RE2 allows flags there
        out["pattern"] = "(?i)^" + pattern[5:]
    if schema.get("x-kubernetes-int-or-string") and "type" not in schema:
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if schema.get("nullable") and "type" in schema:
        out["type"] = [schema["type"], "null"]
    if (schema.get("type") == "object" and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@cache
def crd(group: str, kind: str) -> dict[str, Any]:
    name = CRD_FILES.get((group, kind))
    path = CRD_DIR / name if name else None
    if path is None or not path.is_file():
        raise CRDMissing(f"no CRD for {kind}.{group} in {CRD_DIR}: run `make tools`")
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    assert doc["kind"] == "CustomResourceDefinition" and doc["spec"]["names"]["kind"] == kind
    return doc


@cache
def validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    group, _, version = api_version.rpartition("/")
    definition = crd(group, kind)
    versions = {v["name"]: v for v in definition["spec"]["versions"] if v.get("served")}
    if version not in versions:
        raise jsonschema.ValidationError(
            f"{kind}: apiVersion {api_version} is not served (served: {sorted(versions)})")
    schema = strict(copy.deepcopy(versions[version]["schema"]["openAPIV3Schema"]))
    schema.setdefault("required", [])
    for key in ("apiVersion", "kind", "metadata"):
        if key not in schema["required"]:
            schema["required"].append(key)
    schema["properties"]["metadata"] = OBJECT_META
    schema["properties"]["kind"] = {"const": kind}
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    cls.check_schema(schema)
    return cls(schema)


def validate(doc: Mapping[str, Any]) -> None:
    """Raise jsonschema.ValidationError (the best match, with its path) if ``doc`` is invalid."""
    v = validator(str(doc["apiVersion"]), str(doc["kind"]))
    error = jsonschema.exceptions.best_match(v.iter_errors(doc))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise jsonschema.ValidationError(
            f"{doc['kind']}/{doc.get('metadata', {}).get('name')}: {where}: {error.message}")

