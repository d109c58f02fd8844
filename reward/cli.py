"""``ovlt reward score``: score a JSONL file of responses with any reward spec.

    ovlt reward score fn=SPEC data=FILE.jsonl [kwargs=JSON] [timeout=S] [workers=N] [out=SCORES.jsonl]
    python -m reward.cli score fn=SPEC data=FILE.jsonl ...

Each line of FILE.jsonl is an object with ``response`` and ``ground_truth`` (strings) and
optionally ``data_source``, ``extra_info`` and ``response_length`` (the response's token
count, which EasyR1 functions receive). ``kwargs='{"format_weight": 0.1}'`` passes keyword
arguments to every call, like ``reward.kwargs``. Prints the shape the function was loaded as,
then a summary: rows, mean score, None counts by reason, mean of each part, and what the
workers printed (capped; the rest counted). ``out=`` writes one line per row:
``{"line": N, "score": ..., "reason": ..., "parts": {...}}``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from reward.spec import RewardSpecError

USAGE = "usage: ovlt reward score fn=SPEC data=FILE.jsonl [kwargs=JSON] [timeout=S] [workers=N] [out=FILE.jsonl]"
_KEYS = {"fn", "data", "kwargs", "timeout", "workers", "out"}
_BLOCK = 512  # rows per score_batch call: the unit of the progress bar


class CliError(Exception):
    """A usage or input error, reported as one line on stderr."""


def _parse_args(argv: list[str]) -> dict[str, str]:
    if not argv or argv[0] != "score":
        raise CliError(USAGE)
    args: dict[str, str] = {}
    for token in argv[1:]:
        key, sep, value = token.partition("=")
        if not sep or key not in _KEYS:
            raise CliError(f"unknown argument {token!r}; {USAGE}")
        args[key] = value
    for required in ("fn", "data"):
        if required not in args:
            raise CliError(f"missing {required}=...; {USAGE}")
    return args


def read_rows(path: Path) -> tuple[list[int], list[str], list[str], list[dict]]:
    """(line numbers, responses, ground truths, extras) from a JSONL file; blank lines skipped."""
    if not path.is_file():
        raise CliError(f"data={str(path)!r}: no such file")
    lines, responses, truths, extras = [], [], [], []
    with path.open(encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise CliError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise CliError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            for key in ("response", "ground_truth"):
                if key not in row:
                    raise CliError(f"{path}:{number}: missing key {key!r} (keys: {sorted(row)})")
                if not isinstance(row[key], str):
                    raise CliError(f"{path}:{number}: {key!r} must be a string, got {type(row[key]).__name__}")
            lines.append(number)
            responses.append(row["response"])
            truths.append(row["ground_truth"])
            length = row.get("response_length")
            if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length < 0):
                raise CliError(f"{path}:{number}: 'response_length' must be a token count (an integer >= 0), got {length!r}")
            extras.append({k: row[k] for k in ("data_source", "extra_info", "response_length") if k in row})
    if not lines:
        raise CliError(f"data={str(path)!r}: no rows")
    return lines, responses, truths, extras


def _positive(args: dict[str, str], key: str, kind, default):
    if key not in args:
        return default
    try:
        value = kind(args[key])
    except ValueError:
        raise CliError(f"{key}={args[key]!r}: not a valid {kind.__name__}") from None
    if not value > 0:
        raise CliError(f"{key}={args[key]!r}: must be positive")
    return value


def _kwargs(args: dict[str, str]) -> dict:
    if "kwargs" not in args:
        return {}
    try:
        value = json.loads(args["kwargs"])
    except json.JSONDecodeError as exc:
        raise CliError(f"kwargs={args['kwargs']!r}: not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise CliError(f"kwargs={args['kwargs']!r}: expected a JSON object of keyword arguments")
    return value


def score_file(args: dict[str, str]) -> int:
    import reward

    lines, responses, truths, extras = read_rows(Path(args["data"]))
    timeout = _positive(args, "timeout", float, 10.0)
    workers = _positive(args, "workers", int, 2)
    kwargs = _kwargs(args)
    scores, reasons, parts = [], [], []
    printed = dropped = fallbacks = 0
    with reward.load(args["fn"], timeout=timeout, num_workers=workers, kwargs=kwargs) as fn:
        print(f"reward: {args['fn']}")
        print(f"shape: {fn.describe_shape}", flush=True)
        for start in tqdm(range(0, len(lines), _BLOCK), desc=f"scoring with {fn.name}", unit="block"):
            end = start + _BLOCK
            batch = fn.score_batch(responses[start:end], truths[start:end], extras[start:end])
            scores += batch.scores
            reasons += batch.reasons
            parts += [{name: values[i] for name, values in batch.parts.items()} for i in range(len(batch.scores))]
            printed += batch.output_bytes
            dropped += batch.output_dropped_bytes
            fallbacks += batch.batch_fallbacks

    scored = [s for s in scores if s is not None]
    print(f"rows: {len(scores)}")
    print(f"scored: {len(scored)}  mean: {sum(scored) / len(scored):.4f}" if scored else "scored: 0")
    none_counts: dict[str, int] = {}
    for reason in reasons:
        if reason is not None:
            none_counts[reason] = none_counts.get(reason, 0) + 1
    print("unscorable: " + (", ".join(f"{r}={c}" for r, c in sorted(none_counts.items())) or "none"))
    for name in sorted({name for row in parts for name in row}):
        present = [row[name] for row in parts if row.get(name) is not None]
        if present:
            print(f"part {name}: mean {sum(present) / len(present):.4f} over {len(present)} rows")
    if fallbacks:
        print(f"batch fallbacks: {fallbacks} chunks scored one sample at a time after their batch call failed")
    if printed:
        print(f"worker output: {printed} bytes, {dropped} dropped over the cap (kept output is in the log above)")

    if "out" in args:
        with Path(args["out"]).open("w", encoding="utf-8") as f:
            for line, score, reason, row_parts in zip(lines, scores, reasons, parts):
                f.write(json.dumps({"line": line, "score": score, "reason": reason, "parts": row_parts}) + "\n")
        print(f"scores written to {args['out']}")
    return 0


def main(argv: list[str]) -> int:
    """Entry point: ``argv`` starts with the sub-command ("score"). Returns the exit status."""
    if not logging.getLogger().handlers:  # the workers' captured output and warnings go to the log
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return score_file(_parse_args(argv))
    except (CliError, RewardSpecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
