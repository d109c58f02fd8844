"""Every leaf field of the config tree says what it does: a docstring under the field, which is
what `ovlt config` readers and the recipes' authors have to go on."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing

from ovlt.config import AppConfig


def _documented(cls) -> dict[str, bool]:
    body = ast.parse(inspect.getsource(cls)).body[0].body
    return {a.target.id: isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)
            for a, b in zip(body, [*body[1:], None]) if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name)}


def _undocumented(cls, prefix: str = "") -> list[str]:
    hints, docs, out = typing.get_type_hints(cls), _documented(cls), []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        item = (typing.get_args(kind) or (None,))[0] if typing.get_origin(kind) is list else None
        if dataclasses.is_dataclass(kind):
            out += _undocumented(kind, f"{prefix}{f.name}.")
            continue
        if dataclasses.is_dataclass(item):  # a list of sections (prepare.sources, prepare.mix.sft)
            out += _undocumented(item, f"{prefix}{f.name}[].")
        if not docs.get(f.name):
            out.append(prefix + f.name)
    return out


def test_every_leaf_field_has_a_docstring():
    assert _undocumented(AppConfig) == []
