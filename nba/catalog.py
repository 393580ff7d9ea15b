"""The catalog as data: actions, policies and event types, validated pydantic models loaded from YAML."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from nba.durations import parse_duration
from nba.ids import ID_PATTERN, NAME_PATTERN
from nba.numbers import is_unusable_number
from nba.rules import CompiledRule

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
DURATION_PATTERN = r"^[1-9][0-9]{0,6}[smhd]$"
DURATION_MEANS = "a whole number from 1 to 9999999 followed by s, m, h or d, such as 30m or 7d"
Duration = Annotated[str, StringConstraints(pattern=DURATION_PATTERN)]
_Text = Annotated[str, StringConstraints(max_length=1024)]
MAX_ENTRIES = 256  # attributes of an action, properties of an event type


def _at_most_entries(value: dict[str, Any]) -> dict[str, Any]:
    if len(value) > MAX_ENTRIES:
        raise PydanticCustomError("too_long", "at most {limit} entries, not {count}",
                                  {"limit": MAX_ENTRIES, "count": len(value)})
    return value


# Checked by a validator, not `Field(max_length=...)`: Litestar documents a dict with a length limit as an array
# (clients generated from the OpenAPI document would send a list); `maxProperties` says it instead.
_BOUNDED: dict[str, Any] = {"maxProperties": MAX_ENTRIES}


MAX_LIST_ITEMS = 100  # in an attribute's list, as in a request's context or an event's properties


def _one_value_error(value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
    """One error for a value that fits no kind of attribute, not one per kind it was tried as; a number must be
    finite as a float (features and rules read it as one); a client's list holds at most MAX_LIST_ITEMS strings
    (every decision featurizes and logs it: 150,000 of them took a decide from 4 to 109 ms)."""
    try:
        result = handler(value)
    except ValidationError:
        raise PydanticCustomError(
            "attribute_value", "Input should be a boolean, a number, a string of at most 1024 characters or a list "
            "of such strings") from None
    if is_unusable_number(result):
        raise PydanticCustomError("finite_number", "Input should be a finite number")
    if isinstance(result, list) and len(result) > MAX_LIST_ITEMS and info.context and info.context.get(CLIENT_INPUT):
        raise PydanticCustomError("too_long", f"List should have at most {MAX_LIST_ITEMS} items")
    return result


AttributeValue = Annotated[bool | int | float | _Text | list[_Text], WrapValidator(_one_value_error)]
# Set in the validation context by the HTTP layer: some things a client sends are refused that a catalog already
# stored (or a YAML file written for an earlier version) must still load with, or a process would not start.
CLIENT_INPUT = "client_input"
# The largest reward (and default reward) in absolute value. Far larger ones stop VW from learning anything
# (from about 1e20 the model scores every action alike; 1e308 makes its weights NaN), and sums of them overflow.
REWARD_LIMIT = 1e9


def _distinct(names: list[str], info: ValidationInfo) -> list[str]:
    """Channels without repeats. A client's repeat is a 422; a catalog stored or written before repeats were
    refused still loads, each channel kept once."""
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated and info.context and info.context.get(CLIENT_INPUT):
        raise ValueError(f"channels are listed more than once: {repeated}")
    return list(dict.fromkeys(names))


Channels = Annotated[list[Name], Field(min_length=1, max_length=64), AfterValidator(_distinct)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _check_duration(value: str | None) -> str | None:
    if value is not None:
        parse_duration(value)
    return value


class Cap(_Model):
    """At most `limit` contacts with one action per customer (or per customer and channel) in `window`."""

    per: Literal["customer", "customer_channel"]
    limit: int = Field(ge=1, le=1_000_000)
    window: Duration

    _window = field_validator("window")(_check_duration)

    @property
    def window_delta(self) -> timedelta:
        return parse_duration(self.window)

    @property
    def rule(self) -> str:
        return f"cap:{self.per}:{self.window}"


class Budget(_Model):
    """At most `limit` offers of the action across all customers per fixed window (aligned to the epoch)."""

    limit: int = Field(ge=0, le=1_000_000_000)
    window: Duration

    _window = field_validator("window")(_check_duration)

    @property
    def window_delta(self) -> timedelta:
        return parse_duration(self.window)

    @property
    def rule(self) -> str:
        return f"budget:{self.window}"

    def window_at(self, now_ms: int) -> tuple[int, int]:
        """(window length in seconds, window start in epoch ms) of the budget window containing `now_ms`.

        >>> Budget(limit=1, window="1d").window_at(90_000_000)
        (86400, 86400000)
        """
        window_s = int(self.window_delta.total_seconds())
        return window_s, now_ms // (window_s * 1000) * window_s * 1000


class Suppression(_Model):
    """An event type that stops the action for a while after it happens."""

    event: Name
    for_: Duration = Field(alias="for")

    _for = field_validator("for_")(_check_duration)

    @property
    def delta(self) -> timedelta:
        return parse_duration(self.for_)


class Action(_Model):
    """One thing the service can offer, with the hard constraints that govern it."""

    channels: Channels
    attributes: Annotated[dict[Name, AttributeValue], AfterValidator(_at_most_entries)] = Field(
        default_factory=dict, json_schema_extra=_BOUNDED)
    eligibility: Annotated[str, StringConstraints(max_length=4096)] | None = None
    caps: list[Cap] = Field(default_factory=list, max_length=16)
    budget: Budget | None = None
    cooldown: Duration | None = None
    suppressed_by: list[Suppression] = Field(default_factory=list, max_length=32)
    active: bool = True

    _cooldown = field_validator("cooldown")(_check_duration)

    @field_validator("eligibility")
    @classmethod
    def _compiles(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            rule = CompiledRule(value)
            if info.context and info.context.get(CLIENT_INPUT):
                attributes = info.data.get("attributes") or {}
                rule.check_functions(attributes)
                # One that reads neither customer nor context (`1 + 2`, `action.typo > 1`) has a known outcome.
                rule.check_trial(attributes, datetime.now(UTC))
        return value

    @property
    def cooldown_delta(self) -> timedelta | None:
        return parse_duration(self.cooldown) if self.cooldown else None

    @cached_property
    def has_counter_rules(self) -> bool:
        """Whether caps, a cooldown or a budget apply (if not, contact history and budgets never exclude it)."""
        return bool(self.caps) or self.cooldown is not None or self.budget is not None

    @cached_property
    def counter_window(self) -> timedelta:
        """How far back contact history matters to this action's caps and cooldown (zero: not at all)."""
        windows = [cap.window_delta for cap in self.caps]
        if self.cooldown_delta is not None:
            windows.append(self.cooldown_delta)
        return max(windows, default=timedelta(0))


Exploration = Literal["epsilon", "squarecb", "softmax", "greedy"]


class Learner(_Model):
    """How the policy's Vowpal Wabbit model explores and which extra arguments it takes."""

    exploration: Exploration = "squarecb"
    # `minimum` again for the OpenAPI document, from which Litestar drops a bound of 0
    epsilon: float | None = Field(default=None, ge=0.0, le=1.0, json_schema_extra={"minimum": 0.0})
    gamma_scale: float | None = Field(default=None, gt=0.0, le=1e6)
    lambda_: float | None = Field(default=None, alias="lambda", gt=0.0, le=1e6)
    vw_args: Annotated[str, StringConstraints(max_length=512)] = ""

    @model_validator(mode="after")
    def _params_fit_exploration(self) -> Learner:
        given = {
            "epsilon": self.epsilon is not None,
            "gamma_scale": self.gamma_scale is not None,
            "lambda": self.lambda_ is not None,
        }
        allowed = {"epsilon": {"epsilon"}, "squarecb": {"gamma_scale"}, "softmax": {"lambda"}, "greedy": set()}
        extra = [name for name, present in given.items() if present and name not in allowed[self.exploration]]
        if extra:
            raise ValueError(f"{extra} do not apply to exploration {self.exploration!r}")
        return self


class RewardSpec(_Model):
    """When rewards join to a decision and how several are combined."""

    window: Duration = "1h"
    default: float = Field(default=0.0, ge=-REWARD_LIMIT, le=REWARD_LIMIT)
    aggregation: Literal["sum", "first"] = "sum"

    _window = field_validator("window")(_check_duration)

    @property
    def window_delta(self) -> timedelta:
        return parse_duration(self.window)


class Policy(_Model):
    """Which channels a learner serves, how it learns, and how rewards are joined to its decisions."""

    channels: Channels
    learner: Learner = Field(default_factory=Learner)
    reward: RewardSpec = Field(default_factory=RewardSpec)
    mode: Literal["online", "fallback"] = "online"


PropertyType = Literal["string", "number", "integer", "bool", "list", "timestamp"]


class EventType(_Model):
    """The schema of one event type: property types and which are required."""

    properties: Annotated[dict[Name, PropertyType], AfterValidator(_at_most_entries)] = Field(
        default_factory=dict, json_schema_extra=_BOUNDED)
    required: list[Name] = Field(default_factory=list)

    @field_validator("required")
    @classmethod
    def _required_are_declared(cls, value: list[str], info: ValidationInfo) -> list[str]:
        declared = info.data.get("properties", {})
        missing = [name for name in value if name not in declared]
        if missing:
            raise ValueError(f"required properties {missing} are not declared in properties")
        return value


class CatalogFile(_Model):
    """The YAML file named by `NBA_CATALOG`: actions, policies and event types keyed by id."""

    actions: dict[Id, Action] = Field(default_factory=dict)
    policies: dict[Name, Policy] = Field(default_factory=dict)
    event_types: dict[Name, EventType] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_policy_per_channel(self) -> CatalogFile:
        owner: dict[str, str] = {}
        for name, policy in self.policies.items():
            for channel in policy.channels:
                if channel in owner:
                    raise ValueError(f"channel {channel!r} is served by both {owner[channel]!r} and {name!r}")
                owner[channel] = name
        return self


def load_catalog_file(path: str | Path, client_input: bool = False) -> CatalogFile:
    """Read and validate a catalog YAML file; with `client_input`, as strictly as the admin API validates."""
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle) or {}
    return CatalogFile.model_validate(raw, context={CLIENT_INPUT: True} if client_input else None)


def catalog_digest(catalog: CatalogFile) -> str:
    """What a catalog file says, as a hash: the same for files that differ only in layout and comments."""
    dumped = catalog.model_dump(mode="json", by_alias=True)
    for section in ("actions", "policies"):  # the order of an entry's channels means nothing
        for entry in dumped.get(section, {}).values():
            entry["channels"] = sorted(entry["channels"])
    canonical = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
