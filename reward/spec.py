"""Reward specs: parse ``reward.fn`` (in the caller), import and adapt the function (in a worker).

Accepted specs:

    openvlthinker              a built-in name (see reward/builtins.py)
    path/to/file.py:name       a function in a Python file (``:name`` defaults to compute_score)
    package.module:name        a function in an importable module

The function is adapted by its parameter names, so verl and EasyR1 reward files load unchanged:

    verl     compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs)
    EasyR1   compute_score(predict_str, ground_truth)
    native   fn(response, ground_truth, **extra)   (extra: data_source, extra_info, if accepted)
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

BUILTIN_NAMES = ("openvlthinker", "format", "multiple_choice", "numeric", "yes_no")
DEFAULT_ATTRIBUTE = "compute_score"  # what verl and EasyR1 call their reward functions
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_FORMS = "a built-in name (" + ", ".join(BUILTIN_NAMES) + "), path/to/file.py[:name] or package.module:name"


class RewardSpecError(ValueError):
    """A reward spec that cannot be loaded; the message names the spec."""


@dataclass(frozen=True)
class Spec:
    text: str  # as the user wrote it, for messages
    kind: str  # "builtin", "file" or "module"
    target: str  # built-in name, absolute file path, or module name
    attribute: str  # function name ("" for built-ins)


def parse_spec(text: str) -> Spec:
    """Parse a spec and check what can be checked without importing user code."""
    if not isinstance(text, str) or not text.strip():
        raise RewardSpecError(f"reward.fn={text!r}: empty spec; expected {_FORMS}")
    text = text.strip()
    if text in BUILTIN_NAMES:
        return Spec(text, "builtin", text, "")
    target, sep, attribute = text.rpartition(":")
    if not sep:
        target, attribute = text, ""
    if not sep and not text.endswith(".py"):
        raise RewardSpecError(f"reward.fn={text!r}: not a built-in reward and not a file or module path; expected {_FORMS}")
    attribute = attribute.strip() or DEFAULT_ATTRIBUTE
    if not attribute.isidentifier():
        raise RewardSpecError(f"reward.fn={text!r}: {attribute!r} is not a function name")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser()
        if not path.is_file():
            raise RewardSpecError(f"reward.fn={text!r}: file {str(path)!r} does not exist")
        return Spec(text, "file", str(path.resolve()), attribute)
    if not _DOTTED.match(target):
        raise RewardSpecError(f"reward.fn={text!r}: {target!r} is neither a .py file nor a module name; expected {_FORMS}")
    return Spec(text, "module", target, attribute)


@dataclass(frozen=True)
class Scorer:
    """A loaded reward function behind one calling convention: ``call(response, ground_truth,
    data_source, extra_info)``. ``style`` says which convention it was written for."""

    call: Callable[[str, str, object, object], object]
    style: str


def _import_file(path: str):
    # A unique module name per file, registered in sys.modules so that dataclasses, pickling
    # and relative lookups inside the user's module work; the file's folder goes on sys.path
    # (at the end, shadowing nothing) so it can import its sibling helpers.
    name = "ovlt_reward_user_" + re.sub(r"\W", "_", path)
    folder = str(Path(path).parent)
    if folder not in sys.path:
        sys.path.append(folder)
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


def _load_function(spec: Spec) -> Callable:
    if spec.kind == "builtin":
        from reward import builtins

        builtins.warm_up()
        return builtins.BUILTINS[spec.target]
    try:
        module = _import_file(spec.target) if spec.kind == "file" else importlib.import_module(spec.target)
    except Exception as exc:
        raise RewardSpecError(f"reward.fn={spec.text!r}: importing {spec.target!r} failed: {type(exc).__name__}: {exc}") from exc
    if not hasattr(module, spec.attribute):
        functions = sorted(n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_"))
        raise RewardSpecError(
            f"reward.fn={spec.text!r}: {spec.target!r} has no attribute {spec.attribute!r}"
            f" (functions there: {', '.join(functions) or 'none'})"
        )
    fn = getattr(module, spec.attribute)
    if not callable(fn):
        raise RewardSpecError(f"reward.fn={spec.text!r}: {spec.attribute!r} is a {type(fn).__name__}, not a function")
    return fn


def adapt(fn: Callable, spec_text: str) -> Scorer:
    """Wrap ``fn`` into the one calling convention, choosing by its parameter names."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # some C functions have no signature: call positionally
        return Scorer(lambda r, g, ds, ei: fn(r, g), "native")
    names = set(params)
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())

    def check_required(known: set[str], style: str) -> None:
        missing = [
            n for n, p in params.items()
            if n not in known and p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY)
        ]
        if missing:
            raise RewardSpecError(
                f"reward.fn={spec_text!r}: looks like a {style} reward function, but its parameters "
                f"{missing} have no default and nothing would fill them; signature: {inspect.signature(fn)}"
            )

    if "solution_str" in names:  # verl
        known = {"data_source", "solution_str", "ground_truth", "extra_info"}
        check_required(known, "verl")
        accepts = {n for n in known if n in names or var_kw}

        def call_verl(r, g, ds, ei):
            given = {"data_source": ds, "solution_str": r, "ground_truth": g, "extra_info": ei}
            return fn(**{k: v for k, v in given.items() if k in accepts})

        return Scorer(call_verl, "verl")

    if "predict_str" in names:  # EasyR1
        known = {"predict_str", "ground_truth", "data_source", "extra_info"}
        check_required(known, "EasyR1")
        accepts = {n for n in ("data_source", "extra_info") if n in names}

        def call_easyr1(r, g, ds, ei):
            extra = {k: v for k, v in (("data_source", ds), ("extra_info", ei)) if k in accepts}
            return fn(predict_str=r, ground_truth=g, **extra)

        return Scorer(call_easyr1, "easyr1")

    positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_pos = any(p.kind is p.VAR_POSITIONAL for p in params.values())
    if len(positional) < 2 and not var_pos:
        raise RewardSpecError(
            f"reward.fn={spec_text!r}: a reward function takes (response, ground_truth, **extra), "
            f"verl's (data_source, solution_str, ground_truth, extra_info) or EasyR1's "
            f"(predict_str, ground_truth); got {inspect.signature(fn)}"
        )
    first_two = {p.name for p in positional[:2]}
    check_required(first_two | {"data_source", "extra_info"}, "native")
    accepts = {n for n in ("data_source", "extra_info") if (n in names and n not in first_two) or var_kw}

    def call_native(r, g, ds, ei):
        extra = {k: v for k, v in (("data_source", ds), ("extra_info", ei)) if k in accepts}
        return fn(r, g, **extra)

    return Scorer(call_native, "native")


def resolve(spec: Spec) -> Scorer:
    """Import the function a spec names and adapt it (run this in a worker, not the caller)."""
    return adapt(_load_function(spec), spec.text)
