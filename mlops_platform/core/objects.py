"""Objects declared in a spec by import path: `{class: package.module.Name, params: {...}}`, nested to any depth, and
`package.module:function` factories. They are checked when the spec loads (the path imports, the params fit the
constructor) and built when the model trains."""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any


class DeclarationError(ValueError):
    """A declared class, factory or parameter that cannot work; the message says which and why."""


def import_path(path: str) -> Any:
    """`package.module.Name` or `package.module:name`."""
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise DeclarationError(f"{path!r} is not an import path like 'package.module.Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = f" (is its package installed? {exc})" if exc.name and module_name.startswith(exc.name) else f": {exc}"
        raise DeclarationError(f"cannot import module {module_name!r} for {path!r}{extra}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        public = [n for n in dir(module) if not n.startswith("_")]
        near = difflib.get_close_matches(attr, public, n=1)
        hint = f"; did you mean {module_name}.{near[0]}?" if near else ""
        raise DeclarationError(f"module {module_name!r} has no {attr!r}{hint}") from None


def is_declaration(value: Any) -> bool:
    """A `{class: ..., params: ...}` mapping inside params stands for the object it builds."""
    return isinstance(value, dict) and "class" in value and set(value) <= {"class", "params"}


def accepted_params(target: Any) -> tuple[set[str], bool]:
    """The keyword names a class or function takes, and whether it takes any (`**kwargs`)."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # some builtins have no signature: nothing to check against
        return set(), True
    names = {n for n, p in signature.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())


def check_params(target: Any, params: dict[str, Any], what: str) -> None:
    names, open_ended = accepted_params(target)
    unknown = [] if open_ended else sorted(set(params) - names)
    if unknown:
        hints = [f"{u!r} (did you mean {near[0]!r}?)" if (near := difflib.get_close_matches(u, names, n=1)) else repr(u)
                 for u in unknown]
        raise DeclarationError(f"{what} takes no parameter {', '.join(hints)}; it takes {sorted(names)}")
    for key, value in params.items():
        check_value(value, f"{what} parameter {key!r}")


def check_value(value: Any, what: str) -> None:
    """Every declaration nested in a parameter value imports and fits its constructor."""
    if is_declaration(value):
        cls = import_path(value["class"])
        check_params(cls, value.get("params") or {}, value["class"])
    elif isinstance(value, list | tuple):
        for item in value:
            check_value(item, what)
    elif isinstance(value, dict):
        for item in value.values():
            check_value(item, what)


def build_value(value: Any) -> Any:
    """Declarations become objects; a list inside a list becomes a tuple, as scikit-learn wants its
    `(name, transformer, columns)` triples."""
    if is_declaration(value):
        return import_path(value["class"])(**{k: build_value(v) for k, v in (value.get("params") or {}).items()})
    if isinstance(value, list):
        return [tuple(build_value(v) for v in item) if isinstance(item, list) else build_value(item) for item in value]
    if isinstance(value, dict):
        return {k: build_value(v) for k, v in value.items()}
    return value


def build(path: str, params: dict[str, Any]) -> Any:
    return import_path(path)(**{k: build_value(v) for k, v in params.items()})
