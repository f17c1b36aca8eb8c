"""Per-table options of a job: the push filter workers apply, and the server functions.

    spec:
      tables:
      - name: w                       # a table name, or a geeps.torch parameter group
        filter: {type: kkt, l1: 0.5}
        functions: [{name: prox-l1, args: {l1: 0.5}}]

The names live here, below the spec, the client and the server, so that `geeps run`,
the operator, workers and shards agree on what exists: the filter kinds and their
parameters, the built-in server functions and their arguments, and the entry-point
group (`geeps.server_functions`) where an installed package registers more by name.
A manifest is never a way to ship code: a function is a name that must be installed
where the job is validated and where the shards run; one that is not is refused by
name. No numpy here (the operator imports geeps.job and has none).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import metadata

ENTRY_POINT_GROUP = "geeps.server_functions"

# kind -> {parameter: (default, lowest accepted, highest accepted, what it means)}
FILTERS: dict[str, dict[str, tuple]] = {
    "significant": {"threshold": (0.01, 0.0, 1.0, "send a coordinate when its accumulated "
                                                  "change is at least this fraction of the "
                                                  "push's largest")},
    "topk": {"fraction": (0.01, 0.0, 1.0, "fraction of each push's coordinates sent, the "
                                          "largest in magnitude")},
    "randomk": {"fraction": (0.01, 0.0, 1.0, "fraction of each push's coordinates sent, "
                                             "drawn at random"),
                "seed": (0, 0, 2**63 - 1, "seed of the draw (plus the worker's rank)")},
    "kkt": {"l1": (0.0, 0.0, float("inf"), "the L1 weight: a coordinate whose weight is 0 "
                                           "and whose gradient is within it is skipped")},
}
# Every filter keeps what it does not send and adds it to the next push (error
# feedback); `feedback: false` drops it instead. KKT drops by default: a skipped
# coordinate already satisfies its optimality condition, its gradient is no update.
FEEDBACK_DEFAULT = {"significant": True, "topk": True, "randomk": True, "kkt": False}

# name -> (phase, {argument: (default, lowest, what it means)}). Phase "gradient": on a
# clock's summed gradient before the update rule; "weights": on the rows after it.
FUNCTIONS: dict[str, tuple[str, dict[str, tuple]]] = {
    "prox-l1": ("weights", {"l1": (None, 0.0, "L1 weight: soft-threshold by lr * l1")}),
    "prox-l2": ("weights", {"l2": (None, 0.0, "L2 weight: shrink by 1 / (1 + lr * l2)")}),
    "prox-elastic-net": ("weights", {"l1": (None, 0.0, "L1 weight"),
                                     "l2": (None, 0.0, "L2 weight")}),
    "clip-norm": ("gradient", {"max_norm": (None, 0.0, "largest L2 norm of the mean "
                                                       "gradient of the rows a shard "
                                                       "updates in a clock")}),
}
NAME_PATTERN = r"^[a-z0-9][-a-z0-9_.]*$"
MAX_TABLES = 256
MAX_FUNCTIONS = 8


def installed() -> dict[str, metadata.EntryPoint]:
    """User functions installed in this environment, by name (not loaded)."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def known_functions() -> list[str]:
    return sorted(set(FUNCTIONS) | set(installed()))


SCHEMA: dict = {
    # No default: a defaulted new field would make every stored job differ from
    # itself under a new CRD (update ratcheting then re-validates all of it).
    "type": "array", "maxItems": MAX_TABLES,
    "description": "per table (or geeps.torch parameter group): the push filter and the "
                   "server functions",
    "items": {
        "type": "object", "required": ["name"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 200,
                     "description": "table name, or a parameter-group name of geeps.torch"},
            "filter": {
                "type": "object", "required": ["type"],
                "description": "what a worker sends of each push; the rest waits in a "
                               "residual added to the next (error feedback)",
                "properties": {
                    "type": {"type": "string", "enum": list(FILTERS)},
                    "threshold": {"type": "number", "minimum": 0, "maximum": 1},
                    "fraction": {"type": "number", "minimum": 0, "maximum": 1},
                    "seed": {"type": "integer", "minimum": 0},
                    "l1": {"type": "number", "minimum": 0},
                    "feedback": {"type": "boolean"}}},
            "functions": {
                "type": "array", "maxItems": MAX_FUNCTIONS,
                "description": "server functions, in order: built-in (" +
                               ", ".join(FUNCTIONS) + ") or installed under the entry "
                               f"point group {ENTRY_POINT_GROUP}",
                "items": {"type": "object", "required": ["name"],
                          "properties": {
                              "name": {"type": "string", "pattern": NAME_PATTERN,
                                       "maxLength": 100},
                              "args": {"type": "object",
                                       "additionalProperties": {"type": "number"}}}}},
        },
    },
}


@dataclass(frozen=True)
class FilterSpec:
    kind: str
    params: dict = field(default_factory=dict)
    feedback: bool = True


@dataclass(frozen=True)
class TableOptions:
    name: str
    filter: FilterSpec | None = None
    functions: tuple[dict, ...] = ()        # [{"name": ..., "args": {...}}], checked


def filter_spec(kind: str, feedback: bool | None = None, **params) -> FilterSpec:
    """A checked filter; ValueError naming the parameter at fault."""
    if kind not in FILTERS:
        raise ValueError(f"filter type {kind!r} is not one of {', '.join(FILTERS)}")
    accepted = FILTERS[kind]
    out = {}
    for k, v in params.items():
        if k not in accepted:
            raise ValueError(f"filter {kind} takes no parameter {k!r} (accepted: "
                             f"{', '.join(accepted)})")
        _default, lo, hi, _ = accepted[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi \
                or v != v:
            raise ValueError(f"filter {kind}: {k} must be a number in [{lo}, {hi}] "
                             f"(got {v!r})")
        out[k] = v
    for k, (default, *_rest) in accepted.items():
        out.setdefault(k, default)
    if "fraction" in out and not out["fraction"] > 0:
        raise ValueError(f"filter {kind}: fraction must be > 0 (got {out['fraction']})")
    return FilterSpec(kind, out, FEEDBACK_DEFAULT[kind] if feedback is None else feedback)


def function_spec(name: str, args: dict | None = None, *, where: str = "function") -> dict:
    """A checked server function {"name", "args"}: a built-in with its arguments, or
    an installed entry point's name. ValueError naming the function or argument."""
    args = dict(args or {})
    if not isinstance(name, str) or not re.match(NAME_PATTERN, name):
        raise ValueError(f"{where}: name {name!r} is not a function name")
    for k, v in args.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v \
                or v in (float("inf"), float("-inf")):
            raise ValueError(f"{where} {name}: argument {k!r} must be a finite number "
                             f"(got {v!r})")
    if name in FUNCTIONS:
        accepted = FUNCTIONS[name][1]
        for k in args:
            if k not in accepted:
                raise ValueError(f"{where} {name} takes no argument {k!r} (accepted: "
                                 f"{', '.join(accepted)})")
        for k, (default, lo, _) in accepted.items():
            if k not in args:
                if default is None:
                    raise ValueError(f"{where} {name} needs argument {k!r}")
                args[k] = default
            if args[k] < lo:
                raise ValueError(f"{where} {name}: argument {k!r} must be >= {lo} "
                                 f"(got {args[k]})")
        return {"name": name, "args": args}
    if name not in installed():
        raise ValueError(f"{where} {name!r} is not installed: not a built-in "
                         f"({', '.join(FUNCTIONS)}) and no package registers it under the "
                         f"entry point group {ENTRY_POINT_GROUP!r}")
    return {"name": name, "args": args}


def problems(tables: list) -> list[tuple[str, str]]:
    """(field, message) for each table entry of a manifest that the schema alone cannot
    refuse: a filter parameter of another filter, a function not installed here."""
    out: list[tuple[str, str]] = []
    seen = set()
    for i, t in enumerate(tables):
        where = f"spec.tables[{i}]"
        if t["name"] in seen:
            out.append((f"{where}.name", f"table {t['name']!r} is listed twice"))
        seen.add(t["name"])
        f = t.get("filter")
        if f is not None:
            try:
                filter_spec(f["type"], f.get("feedback"),
                            **{k: v for k, v in f.items() if k not in ("type", "feedback")})
            except ValueError as e:
                out.append((f"{where}.filter", str(e)))
        for j, fn in enumerate(t.get("functions", [])):
            try:
                function_spec(fn["name"], fn.get("args"))
            except ValueError as e:
                out.append((f"{where}.functions[{j}].name" if "not installed" in str(e)
                            or "not a function" in str(e) else f"{where}.functions[{j}].args",
                            str(e)))
    return out


def parse(tables) -> dict[str, TableOptions]:
    """Table options by name, from the manifest's list or its JSON text (GEEPS_TABLES);
    ValueError naming the entry at fault."""
    if isinstance(tables, str):
        tables = json.loads(tables) if tables.strip() else []
    if not isinstance(tables, list):
        raise ValueError("table options must be a list")
    out = {}
    for i, t in enumerate(tables):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise ValueError(f"tables[{i}] must be a mapping with a name")
        f = t.get("filter")
        fs = None
        if f is not None:
            fs = filter_spec(f["type"], f.get("feedback"),
                             **{k: v for k, v in f.items() if k not in ("type", "feedback")})
        fns = tuple(function_spec(fn["name"], fn.get("args"),
                                  where=f"tables[{i}].functions[{j}]")
                    for j, fn in enumerate(t.get("functions", [])))
        out[t["name"]] = TableOptions(t["name"], fs, fns)
    return out


def to_text(tables: list) -> str:
    """GEEPS_TABLES: the manifest's list as compact JSON ("" when empty)."""
    return json.dumps(tables, separators=(",", ":"), sort_keys=True) if tables else ""


def _env_value(v: str) -> str:
    parse(v)    # refuse what a process could not use
    return v
