"""Fund validation and the deterministic stage model (IRR and Monte-Carlo projection)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from prodkit import FieldError, Problem

MODEL_VERSION = "stage-model-1"
MAX_SIMULATIONS = 200_000

#: Multiple returned by a company that exits at stage ``i`` (0-based) of ``n``; the last
#: stage's graduates are the fund's winners.
EXIT_MULTIPLE_BASE = 1.5
WINNER_MULTIPLE = 12.0


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage of a fund's model: companies graduate, exit, or fail within ``months``."""

    name: str
    months: int
    graduate: float
    exit: float

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "months": self.months,
            "graduate": self.graduate,
            "exit": self.exit,
        }


@dataclass(frozen=True, slots=True)
class FundInput:
    """A validated create or update request."""

    name: str
    size: float
    description: str
    stages: tuple[Stage, ...]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _text(value: Any, low: int, high: int) -> str | None:
    """A string of ``low``..``high`` characters that PostgreSQL can store, else ``None``.

    JSON may carry lone surrogates (``"\\ud800"``) and NUL characters; neither can be stored as
    text, so they are a client error here rather than a server error later.
    """
    if not isinstance(value, str) or not low <= len(value) <= high or "\x00" in value:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def pointer(*tokens: str | int) -> str:
    """An RFC 6901 JSON pointer to ``tokens``: ``~`` is written ``~0`` and ``/`` is ``~1``."""
    return "".join("/" + str(token).replace("~", "~0").replace("/", "~1") for token in tokens)


def _unknown(data: dict[str, Any], known: frozenset[str], *at: str | int) -> list[FieldError]:
    """One error per member of ``data`` that is not in ``known``, in a stable order."""
    return [
        FieldError(pointer(*at, key), "is not a known field") for key in sorted(data.keys() - known)
    ]


_FUND_FIELDS = frozenset({"name", "size", "description", "stages"})
_STAGE_FIELDS = frozenset({"name", "months", "graduate", "exit"})


def validate_fund(data: Any, *, partial: bool = False) -> tuple[dict[str, Any], list[FieldError]]:
    """Check a fund document; return the clean fields and the errors (RFC 6901 JSON pointers).

    With ``partial`` (PATCH), absent fields are allowed and left out of the result.
    """
    errors: list[FieldError] = []
    clean: dict[str, Any] = {}
    if not isinstance(data, dict):
        return clean, [FieldError("", "must be a JSON object")]
    errors.extend(_unknown(data, _FUND_FIELDS))

    if "name" in data or not partial:
        name = _text(data.get("name"), 1, 200)
        if name is None or not name.strip():
            errors.append(FieldError("/name", "must be a string of 1 to 200 characters"))
        else:
            clean["name"] = name.strip()
    if "size" in data or not partial:
        size = _number(data.get("size"))
        if size is None or size <= 0 or size > 1e15:
            errors.append(FieldError("/size", "must be a number greater than 0"))
        else:
            clean["size"] = size
    if "description" in data:
        description = data.get("description")
        if description is None:
            clean["description"] = ""
        elif (description := _text(description, 0, 5000)) is None:
            errors.append(FieldError("/description", "must be a string of at most 5000 characters"))
        else:
            clean["description"] = description
    elif not partial:
        clean["description"] = ""
    if "stages" in data or not partial:
        stages = data.get("stages")
        if not isinstance(stages, list) or not 1 <= len(stages) <= 20:
            errors.append(FieldError("/stages", "must be a list of 1 to 20 stages"))
        else:
            parsed = [_stage(index, stage, errors) for index, stage in enumerate(stages)]
            clean["stages"] = tuple(stage for stage in parsed if stage is not None)
    return clean, errors


def _months(raw: Any) -> int:
    """The integer number of months in ``raw``, or 0 when it is not an integer."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)  # JSON has one number type: 12.0 is the integer 12
    return 0


def _stage(index: int, stage: Any, errors: list[FieldError]) -> Stage | None:
    """Stage ``index`` if it is valid; otherwise ``None``, with its errors added to ``errors``."""
    at = pointer("stages", index)
    if not isinstance(stage, dict):
        errors.append(FieldError(at, "must be an object"))
        return None
    before = len(errors)
    stage_name = _text(stage.get("name"), 1, 100)
    if stage_name is None:
        errors.append(FieldError(f"{at}/name", "must be a string of 1 to 100 characters"))
    months = _months(stage.get("months"))
    if not 1 <= months <= 240:
        errors.append(FieldError(f"{at}/months", "must be an integer from 1 to 240"))
    graduate = _number(stage.get("graduate"))
    exit_ = _number(stage.get("exit"))
    if graduate is None or not 0 <= graduate <= 1:
        errors.append(FieldError(f"{at}/graduate", "must be a number from 0 to 1"))
    if exit_ is None or not 0 <= exit_ <= 1:
        errors.append(FieldError(f"{at}/exit", "must be a number from 0 to 1"))
    if len(errors) == before and graduate + exit_ > 1 + 1e-9:  # type: ignore[operator]
        errors.append(FieldError(at, "graduate + exit must not exceed 1"))
    errors.extend(_unknown(stage, _STAGE_FIELDS, "stages", index))
    if len(errors) > before:
        return None
    return Stage(str(stage_name), months, graduate or 0.0, exit_ or 0.0)


def require_valid(data: Any, *, partial: bool = False) -> dict[str, Any]:
    """Validate or raise a 422 ``VALIDATION_FAILED`` problem listing every error."""
    clean, errors = validate_fund(data, partial=partial)
    if errors:
        raise Problem(
            422,
            "VALIDATION_FAILED",
            f"{len(errors)} field(s) are invalid",
            errors=errors,
        )
    return clean


def expected_multiple(stages: tuple[Stage, ...]) -> tuple[float, float]:
    """Expected multiple of one company over the stage model, and the expected months it takes."""
    reach = 1.0  # probability of entering stage i
    multiple = 0.0
    months = 0.0
    for index, stage in enumerate(stages):
        months += reach * stage.months
        multiple += reach * stage.exit * EXIT_MULTIPLE_BASE ** (index + 1)
        reach *= stage.graduate
    multiple += reach * WINNER_MULTIPLE
    return multiple, months


def irr(stages: tuple[Stage, ...]) -> float:
    """Annualised return implied by the model's expected multiple and duration (rounded)."""
    multiple, months = expected_multiple(stages)
    if multiple <= 0 or months <= 0:
        return -1.0
    annual: float = multiple ** (12.0 / months) - 1.0
    return round(annual, 6)


def project(stages: tuple[Stage, ...], size: float, simulations: int, seed: int) -> dict[str, Any]:
    """Monte-Carlo projection of the fund: ``simulations`` companies walked through the stages.

    Deterministic: the same stages, size, simulations and seed give the same result. Cost is
    linear in ``simulations``; run it off the event loop.
    """
    rng = random.Random(seed)
    outcomes: list[float] = []
    exits_by_stage = [0] * len(stages)
    winners = 0
    for _ in range(simulations):
        value = 0.0
        for index, stage in enumerate(stages):
            draw = rng.random()
            if draw < stage.graduate:
                continue
            if draw < stage.graduate + stage.exit:
                value = EXIT_MULTIPLE_BASE ** (index + 1)
                exits_by_stage[index] += 1
            break
        else:
            value = WINNER_MULTIPLE
            winners += 1
        outcomes.append(value)
    outcomes.sort()

    def percentile(p: float) -> float:
        return outcomes[min(len(outcomes) - 1, int(p * len(outcomes)))]

    mean = sum(outcomes) / len(outcomes)
    return {
        "simulations": simulations,
        "seed": seed,
        "model_version": MODEL_VERSION,
        "expected_multiple": round(mean, 6),
        "expected_value": round(mean * size, 2),
        "percentiles": {
            "p10": round(percentile(0.10) * size, 2),
            "p50": round(percentile(0.50) * size, 2),
            "p90": round(percentile(0.90) * size, 2),
            "p99": round(percentile(0.99) * size, 2),
        },
        "exit_probability_by_stage": [
            {"stage": stage.name, "probability": round(count / simulations, 6)}
            for stage, count in zip(stages, exits_by_stage, strict=True)
        ],
        "winner_probability": round(winners / simulations, 6),
    }
