"""Reward specs: parse ``reward.fn`` (in the caller), import and adapt the function (in a worker).

Accepted specs:

    openvlthinker              a built-in name (see reward/builtins.py)
    path/to/file.py:name       a function in a Python file (``:name`` defaults to compute_score)
    package.module:name        a function in an importable module

The function is adapted to its shape, chosen by its parameter names and, for EasyR1 files, by the
module's ``REWARD_TYPE``; the shapes are listed in SHAPES. A function that fits none of them, or
more than one, is a RewardSpecError that says why. ``kwargs`` (``reward.kwargs``) are passed by
keyword to every call, as verl's ``reward_kwargs`` and EasyR1's ``reward_function_kwargs`` are.
"""

from __future__ import annotations

import asyncio
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

# shape -> how it is called and what it returns (shown by `ovlt reward score` and in errors)
SHAPES = {
    "native": "fn(response, ground_truth, **extra) -> float | dict with 'overall' | None",
    "verl": "verl: compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs) -> float | dict with 'score'",
    "verl-batch": "verl batch: compute_score(data_sources, solution_strs, ground_truths, extra_infos, **kwargs)"
    " -> list of float | dict with 'score'",
    "easyr1": "EasyR1 <= 0.3: compute_score(predict_str, ground_truth) -> float | dict with 'overall'",
    "easyr1-sequential": "EasyR1 REWARD_TYPE='sequential': compute_score(reward_input: dict, **kwargs) -> dict with 'overall'",
    "easyr1-batch": "EasyR1 REWARD_TYPE='batch': compute_score(reward_inputs: list[dict], **kwargs) -> list of dict with 'overall'",
}
# the arguments ovlt fills for each shape (reward.kwargs may not name them)
_FILLED = {
    "verl": ("data_source", "solution_str", "ground_truth", "extra_info"),
    "verl-batch": ("data_sources", "solution_strs", "ground_truths", "extra_infos"),
    "easyr1": ("predict_str", "ground_truth", "data_source", "extra_info"),
}
_SIGNATURE_NAMES = {"solution_str": "verl", "solution_strs": "verl-batch", "predict_str": "easyr1"}
_EASYR1_FIRST = {"reward_input": "sequential", "reward_inputs": "batch"}  # EasyR1's own parameter names

# One sample as workers receive it: (response, ground_truth, data_source, extra_info, response_length).
# response_length is the response's token count when the caller knows it (GRPO does), else None.
Sample = tuple


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
    """A loaded reward function behind one calling convention.

    ``one(sample)`` scores one Sample; for batch shapes ``many(samples)`` scores a list in one
    call and returns a list (``one`` then calls it with a list of one). ``primary`` is the key
    of the reward in a dict result ("overall", or "score" for verl). ``shape`` is a SHAPES key.
    """

    shape: str
    primary: str
    one: Callable[[Sample], object]
    many: Callable[[list], object] | None
    signature: str

    @property
    def batched(self) -> bool:
        return self.many is not None


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


def _load_function(spec: Spec) -> tuple[Callable, object]:
    """(the function, its module's REWARD_TYPE or None)."""
    if spec.kind == "builtin":
        from reward import builtins

        builtins.warm_up()
        return builtins.BUILTINS[spec.target], None
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
    # EasyR1 (HEAD) reads the calling convention from the file's metadata, as ovlt does here
    return fn, getattr(module, "REWARD_TYPE", None)


def _synchronous(fn: Callable) -> Callable:
    """verl accepts ``async def`` reward functions; a worker runs each call to completion."""
    if not inspect.iscoroutinefunction(fn):
        return fn

    def run(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return run


def _shape_of(params, reward_type, fail) -> str:
    """Which SHAPES key a signature (and the module's REWARD_TYPE) declares; ``fail`` raises."""
    by_names = sorted({shape for name, shape in _SIGNATURE_NAMES.items() if name in params})
    if len(by_names) > 1:
        fail(f"its parameters fit more than one shape ({', '.join(by_names)}); rename them to fit one")
    if reward_type is not None:
        if reward_type not in ("sequential", "batch"):
            fail(f"its module sets REWARD_TYPE = {reward_type!r}; EasyR1 knows 'sequential' and 'batch'")
        if by_names:
            fail(
                f"its module sets REWARD_TYPE = {reward_type!r} (EasyR1) but its parameters are {by_names[0]}'s; "
                "remove one or the other so that the shape is clear"
            )
        return "easyr1-" + reward_type
    if by_names:
        return by_names[0]
    positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if positional and positional[0].name in _EASYR1_FIRST:
        # EasyR1 versions that set reward_type in their config, not in the file, use these names
        return "easyr1-" + _EASYR1_FIRST[positional[0].name]
    return "native"


def adapt(fn: Callable, spec_text: str, kwargs: dict | None = None, reward_type: object = None) -> Scorer:
    """Wrap ``fn`` into a Scorer of its shape; ``kwargs`` go to every call by keyword."""
    kwargs = dict(kwargs or {})

    def fail(why: str):
        raise RewardSpecError(f"reward.fn={spec_text!r}: {why}")

    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some C functions have no signature: call positionally
        if kwargs or reward_type is not None:
            fail("has no inspectable signature, so reward.kwargs and REWARD_TYPE cannot be checked against it")
        return Scorer("native", "overall", lambda s: fn(s[0], s[1]), None, "(no signature)")
    params = signature.parameters
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    shape = _shape_of(params, reward_type, fail)
    call = _synchronous(fn)
    sig_text = f"{getattr(fn, '__name__', 'fn')}{signature}"

    def check(filled: set[str]) -> None:
        """kwargs must be parameters (or **kwargs) and not ones ovlt fills; all else needs a default."""
        for key in kwargs:
            if key in filled:
                fail(f"reward.kwargs has {key!r}, an argument ovlt passes itself ({SHAPES[shape]})")
            if not var_kw and (key not in params or params[key].kind is params[key].POSITIONAL_ONLY):
                fail(f"reward.kwargs has {key!r}, which {sig_text} does not take")
        missing = [
            n for n, p in params.items()
            if n not in filled and n not in kwargs and p.default is p.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY)
        ]
        if missing:
            fail(
                f"looks like {SHAPES[shape].split(':')[0]}, but its parameters {missing} have no default and "
                f"nothing fills them (give them in reward.kwargs); signature: {sig_text}"
            )

    def accepted(names) -> set[str]:
        return {n for n in names if n in params or var_kw}

    if shape == "verl":
        check(set(_FILLED["verl"]))
        takes = accepted(_FILLED["verl"])

        def verl_one(s: Sample):
            given = {"data_source": s[2], "solution_str": s[0], "ground_truth": s[1], "extra_info": _info(s[3])}
            return call(**{k: v for k, v in given.items() if k in takes}, **kwargs)

        return Scorer(shape, "score", verl_one, None, sig_text)

    if shape == "verl-batch":
        check(set(_FILLED["verl-batch"]))
        takes = accepted(_FILLED["verl-batch"])

        def verl_many(samples: list):
            given = {
                "data_sources": [s[2] for s in samples],
                "solution_strs": [s[0] for s in samples],
                "ground_truths": [s[1] for s in samples],
                "extra_infos": [_info(s[3]) for s in samples],
            }
            return call(**{k: v for k, v in given.items() if k in takes}, **kwargs)

        return Scorer(shape, "score", _one_of_many(verl_many), verl_many, sig_text)

    if shape == "easyr1":
        check(set(_FILLED["easyr1"]))
        takes = {n for n in ("data_source", "extra_info") if n in params}

        def easyr1_one(s: Sample):
            extra = {k: v for k, v in (("data_source", s[2]), ("extra_info", s[3])) if k in takes}
            return call(predict_str=s[0], ground_truth=s[1], **extra, **kwargs)

        return Scorer(shape, "overall", easyr1_one, None, sig_text)

    positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_pos = any(p.kind is p.VAR_POSITIONAL for p in params.values())

    if shape.startswith("easyr1-"):
        if not positional and not var_pos:
            fail(f"{SHAPES[shape]}, but {sig_text} takes no positional argument")
        check({positional[0].name} if positional else set())

        if shape == "easyr1-sequential":
            return Scorer(shape, "overall", lambda s: call(_reward_input(s), **kwargs), None, sig_text)

        def easyr1_many(samples: list):
            return call([_reward_input(s) for s in samples], **kwargs)

        return Scorer(shape, "overall", _one_of_many(easyr1_many), easyr1_many, sig_text)

    # native: (response, ground_truth, **extra)
    fillable = [p for p in positional if p.name not in kwargs]
    if len(fillable) < 2 and not var_pos:
        if len(fillable) == 1:
            fail(
                f"{sig_text} takes one argument. If it is an EasyR1 reward function, its file must say which kind "
                "with REWARD_TYPE = 'sequential' or 'batch' (as EasyR1's example files do). Otherwise a reward "
                "function takes (response, ground_truth, **extra), or verl's or EasyR1's arguments"
            )
        fail(
            f"a reward function takes (response, ground_truth, **extra), verl's (data_source, solution_str, "
            f"ground_truth, extra_info) or EasyR1's (predict_str, ground_truth) or (reward_input); got {sig_text}"
        )
    first_two = {p.name for p in fillable[:2]}
    check(first_two | {"data_source", "extra_info"})
    takes = {n for n in ("data_source", "extra_info") if (n in params and n not in first_two) or var_kw}
    takes -= set(kwargs)

    def native_one(s: Sample):
        extra = {k: v for k, v in (("data_source", s[2]), ("extra_info", s[3])) if k in takes}
        return call(s[0], s[1], **extra, **kwargs)

    return Scorer("native", "overall", native_one, None, sig_text)


def _info(extra_info):
    # verl always passes a dict (an empty one for rows without extra_info); its functions call .get on it
    return extra_info if extra_info is not None else {}


def _reward_input(s: Sample) -> dict:
    """EasyR1's RewardInput; response_length (tokens) only when the caller knows it."""
    item = {"response": s[0], "ground_truth": s[1]}
    if s[4] is not None:
        item["response_length"] = s[4]
    return item


def _one_of_many(many: Callable[[list], object]) -> Callable[[Sample], object]:
    """Score one sample with a batch function: a list of one in, the one result out."""

    def one(s: Sample):
        values = many([s])
        if not isinstance(values, (list, tuple)) or len(values) != 1:
            what = f"a list of {len(values)}" if isinstance(values, (list, tuple)) else f"a {type(values).__name__}"
            raise TypeError(f"a batch reward function returned {what} for 1 sample; expected a list of 1")
        return values[0]

    return one


def resolve(spec: Spec, kwargs: dict | None = None) -> Scorer:
    """Import the function a spec names and adapt it (run this in a worker, not the caller)."""
    fn, reward_type = _load_function(spec)
    return adapt(fn, spec.text, kwargs, reward_type)
