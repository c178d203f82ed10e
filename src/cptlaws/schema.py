"""Config files and their JSON Schemas: one machinery for the study config and the run config.

* ``read_yaml`` / ``load_yaml``: YAML with duplicate keys rejected (PyYAML keeps the last one silently:
  a second ``cos:`` under ``cpt.schedules`` would replace the first).
* ``validate``: check a config against a schema shipped in ``cptlaws/schemas/`` and return a copy with the
  schema's defaults filled in (each default is written once, in a schema). Integer-valued floats are
  turned into ints where the schema wants an integer (``transfer_step: [100.0]``, ``steps: 1.0e+4``);
  with ``floats=True`` numbers become floats (the run config stores ``ratio: 1`` as ``1.0``).
* The study schema refers to parts of the run schema (``run.schema.yaml#/$defs/...``): a schedule, a
  model and the optimizer settings are defined once.

Errors are ``Violation``s: the key path (``cpt.grids[0].ratio[2]``), the value and two wordings
(jsonschema's, for the study messages; a short "why", for the run messages). Imports nothing heavy.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cptlaws.errors import ConfigError

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"  # package data
BASE_URI = "https://cptlaws.invalid/schemas/"  # the schemas' $id prefix; never fetched (all are local)
YAML_HINT = " (YAML 1.1 reads 1e-5 or 1.0e6 as a string: write 1.0e-5 or 1.0e+6, with a dot and a signed exponent)"


# ---------------------------------------------------------------- YAML without duplicate keys
class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (merge keys ``<<`` keep their meaning)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key!r} (first written on line {first.line + 1})",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse YAML text; raises ``yaml.YAMLError`` (duplicate keys included) with the line."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: str | Path, what: str = "config") -> Any:
    """A YAML file, duplicate keys rejected; every failure names the file (ConfigError)."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{what} file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} file {p}: cannot read ({exc})") from None
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} file {p}: invalid YAML: {exc}") from None


# ---------------------------------------------------------------- schemas and references
@functools.cache
def _documents() -> dict[str, dict]:
    """Every shipped schema by its $id."""
    docs = {}
    for f in sorted(SCHEMA_DIR.glob("*.schema.yaml")):
        doc = yaml.safe_load(f.read_text())
        docs[doc.get("$id", BASE_URI + f.name)] = doc
    return docs


def schema(name: str) -> dict:
    """A shipped schema by name: ``study`` or ``run``."""
    return _documents()[f"{BASE_URI}{name}.schema.yaml"]


def _registry(root: dict, root_uri: str):
    from referencing import Registry, Resource

    resources = [(uri, Resource.from_contents(doc)) for uri, doc in _documents().items()]
    if root_uri not in _documents():
        resources.append((root_uri, Resource.from_contents(root)))
    return Registry().with_resources(resources)


class _Deref:
    """Follows ``$ref`` (local or into another shipped schema) with the public ``referencing`` API, for
    the default-filling and coercion steps that look at a sub-schema before jsonschema descends into it."""

    def __init__(self, root: dict, root_uri: str):
        self.registry = _registry(root, root_uri)
        self.owner: dict[int, str] = {}  # id(sub-schema) -> URI of the document holding it
        for uri, doc in [(root_uri, root), *_documents().items()]:
            self._index(doc, uri)

    def _index(self, node, uri: str) -> None:
        if isinstance(node, dict):
            self.owner.setdefault(id(node), uri)
            for v in node.values():
                self._index(v, uri)
        elif isinstance(node, list):
            for v in node:
                self._index(v, uri)

    def __call__(self, sub):
        while isinstance(sub, dict) and "$ref" in sub:
            target = self.registry.resolver(self.owner.get(id(sub), BASE_URI)).lookup(sub["$ref"]).contents
            if "default" in sub and "default" not in target:
                return {**target, "default": sub["default"]}
            sub = target
        return sub


def _coerce(value, sub: dict, floats: bool):
    if isinstance(value, bool) or not isinstance(sub, dict):
        return value
    if sub.get("type") == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    if floats and sub.get("type") == "number" and isinstance(value, int):
        return float(value)
    return value


@functools.cache
def _shipped(uri: str, floats: bool):
    """The validator and reference follower of a shipped schema, built once."""
    doc = _documents()[uri]
    return _validator(doc, uri, floats), _Deref(doc, uri)


def _validator(root: dict, root_uri: str, floats: bool):
    import jsonschema

    base = jsonschema.Draft202012Validator
    deref = _Deref(root, root_uri)

    def properties(validator, props, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in props.items():
                target = deref(sub)
                if prop in instance:
                    instance[prop] = _coerce(instance[prop], target, floats)
                elif isinstance(target, dict) and "default" in target:
                    instance[prop] = copy.deepcopy(target["default"])
        yield from base.VALIDATORS["properties"](validator, props, instance, schema)

    def items(validator, sub, instance, schema):
        if isinstance(instance, list):
            target = deref(sub)
            instance[:] = [_coerce(v, target, floats) for v in instance]
        yield from base.VALIDATORS["items"](validator, sub, instance, schema)

    cls = jsonschema.validators.extend(base, {"properties": properties, "items": items})
    return cls(root, registry=deref.registry)


# ---------------------------------------------------------------- errors
@dataclass
class Violation:
    """One schema failure: ``key`` is the dotted path ('a.b[0].c'), ``message`` jsonschema's wording
    (with the YAML 1.1 hint), ``why`` a short reason for 'key ... = value: why' messages."""

    key: str
    value: Any
    message: str
    why: str


def key_path(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


def _looks_numeric(value) -> bool:
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


_WHY = {
    "type": lambda v: (
        f"must be {'an' if v == 'integer' else 'a'} {v}" if isinstance(v, str) else f"must be {' or '.join(v)}"
    ),
    "minimum": lambda v: f"must be >= {v}",
    "maximum": lambda v: f"must be <= {v}",
    "exclusiveMinimum": lambda v: f"must be > {v}",
    "exclusiveMaximum": lambda v: f"must be < {v}",
    "enum": lambda v: f"must be one of {', '.join(map(str, v))}",
    "minItems": lambda v: f"must have at least {v} item(s)",
    "maxItems": lambda v: f"must have at most {v} item(s)",
    "minProperties": lambda v: f"must have at least {v} entr{'y' if v == 1 else 'ies'}",
    "pattern": lambda v: f"must match {v}",
    "minLength": lambda v: "must not be empty",
}


def _why(err) -> str:
    fn = _WHY.get(err.validator)
    return fn(err.validator_value) if fn else err.message


def _best(err):
    """The error to report: inside a oneOf / anyOf, the sub-error of the branch the value was meant for."""
    if err.context:
        import jsonschema

        pool = [e for e in err.context if e.validator not in ("const", "type")] or list(err.context)
        return jsonschema.exceptions.best_match(pool)
    return err


def violation(err) -> Violation:
    best = _best(err)
    path, value = list(best.absolute_path), best.instance
    if "propertyNames" in best.relative_schema_path or "propertyNames" in err.relative_schema_path:
        desc = best.schema.get("description") or err.schema.get("description")
        why = "not an allowed name" + (f" ({desc})" if desc else "")
        return Violation(key_path(path + [value]), value, f"{value!r} is {why}", why)
    if best.validator == "additionalProperties" and isinstance(value, dict):
        allowed = sorted(best.schema.get("properties", {}))
        extra = sorted(k for k in value if k not in allowed)
        if extra:
            msg = f"unknown key (allowed here: {', '.join(allowed)})"
            return Violation(key_path(path + [extra[0]]), value[extra[0]], msg, msg)
    if best.validator == "required":
        missing = [k for k in best.validator_value if k not in value]
        if missing:
            return Violation(key_path(path + [missing[0]]), None, "missing (required)", "missing")
    msg, why = best.message, _why(best)
    if best.validator in ("type", "oneOf") and _looks_numeric(value):
        hint = YAML_HINT if "e" in value.lower() else " (a quoted number is a string: write it without quotes)"
        msg, why = msg + hint, why + hint
    return Violation(key_path(path), value, msg, why)


def validate(
    config: Any, schema_doc: dict, floats: bool = False, uri: str | None = None
) -> tuple[dict, Violation | None]:
    """Check ``config`` against ``schema_doc``; returns (a deep copy with the defaults filled in, the first
    deepest violation or None). ``uri`` is the document's address when it is not a shipped schema (a copy
    elsewhere): its references into the shipped schemas still resolve."""
    cfg = json.loads(json.dumps(config, default=str)) if config is not None else {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"config must be a mapping, got {type(config).__name__}")
    root_uri = schema_doc.get("$id") or uri or f"{BASE_URI}custom.schema.yaml"
    if _documents().get(root_uri) is schema_doc:
        validator = _shipped(root_uri, floats)[0]
    else:
        validator = _validator(schema_doc, root_uri, floats)
    errors = list(validator.iter_errors(cfg))
    if not errors:
        return cfg, None
    errors.sort(key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    return cfg, violation(max(errors, key=lambda e: len(e.absolute_path)))  # the deepest is the most precise


def reorder(obj: Any, schema_doc: dict, deref=None) -> Any:
    """``obj`` with the keys of every mapping in the order of the schema's ``properties`` (stable files)."""
    if deref is None:
        uri = schema_doc.get("$id", BASE_URI)
        deref = _shipped(uri, False)[1] if _documents().get(uri) is schema_doc else _Deref(schema_doc, uri)
    sub = deref(schema_doc)
    if not isinstance(obj, dict) or not isinstance(sub, dict) or "properties" not in sub:
        return obj
    props = sub["properties"]
    keys = [k for k in props if k in obj] + [k for k in obj if k not in props]
    return {k: reorder(obj[k], props[k], deref) if k in props else obj[k] for k in keys}
