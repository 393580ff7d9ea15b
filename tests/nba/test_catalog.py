"""The catalog as data: validated models, the compiled view, durations and ids."""

from __future__ import annotations

import math
import os
import re
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from nba import ids
from nba.catalog import (
    CLIENT_INPUT,
    Action,
    Budget,
    Cap,
    CatalogFile,
    EventType,
    Learner,
    Policy,
    RewardSpec,
    Suppression,
    load_catalog_file,
)
from nba.catalog_view import CatalogView
from nba.durations import parse_duration
from nba.errors import ActionNotFound, NoPolicyForChannel

# -- durations ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30s", timedelta(seconds=30)), ("15m", timedelta(minutes=15)), ("24h", timedelta(hours=24)),
     ("7d", timedelta(days=7)), ("3660d", timedelta(days=3660))],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "0d", "7", "d", "7 d", "7days", "-1h", "1.5h", "07d", "1w", "12345678s",
                                  "7D", " 7d", "7d\n7d"])
def test_parse_duration_refuses_other_shapes(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_parse_duration_refuses_windows_longer_than_ten_years() -> None:
    with pytest.raises(ValueError, match="longest supported window"):
        parse_duration("3661d")


@given(n=st.integers(min_value=1, max_value=9_999_999), unit=st.sampled_from("smhd"))
def test_parse_duration_agrees_with_the_unit(n: int, unit: str) -> None:
    seconds = n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    if seconds > 3660 * 86400:
        with pytest.raises(ValueError):
            parse_duration(f"{n}{unit}")
    else:
        assert parse_duration(f"{n}{unit}").total_seconds() == seconds


# -- ids ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["c-1042", "a", "email:9f2c", "x.y_z", "A" * 128])
def test_valid_ids(value: str) -> None:
    assert ids.is_valid_id(value)


@pytest.mark.parametrize("value", ["", "bad id", "a/b", "é", "A" * 129, "\na", "a|b"])
def test_invalid_ids(value: str) -> None:
    assert not ids.is_valid_id(value)


TRAILING_NEWLINE = (
    "the pattern ends in `$`, which in Python's re also matches before a final newline, so 'x\\n' is "
    "accepted; match with fullmatch or end the Python pattern with \\Z"
)


def test_an_id_with_a_trailing_newline_is_invalid() -> None:
    assert not ids.is_valid_id("c-1042\n")


def test_a_duration_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_duration("7d\n")


def test_new_ids_are_prefixed_crockford_and_time_ordered(monkeypatch: pytest.MonkeyPatch) -> None:
    made = []
    for ms in (1_700_000_000_000, 1_700_000_000_001, 1_800_000_000_000):
        monkeypatch.setattr(ids.time, "time", lambda ms=ms: ms / 1000)
        made.append(ids.new_id("d-"))
    assert made == sorted(made)
    assert len(set(made)) == 3
    for value in made:
        assert re.fullmatch(r"d-[0-9A-HJKMNP-TV-Z]{26}", value)
        assert ids.is_valid_id(value)


def test_new_ids_in_the_same_millisecond_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ids.time, "time", lambda: 1_700_000_000.0)
    made = {ids.new_id("d-") for _ in range(1000)}
    assert len(made) == 1000
    assert len({value[:12] for value in made}) == 1  # same time prefix


def test_a_forked_worker_does_not_repeat_its_parents_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers are forked from one process: the pooled random bytes must not be shared with the parent."""
    monkeypatch.setattr(ids.time, "time", lambda: 1_700_000_000.0)
    ids.new_id("d-")  # the parent's pool is filled
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(read)
        os.write(write, "\n".join(ids.new_id("d-") for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        from_child = set(pipe.read().split("\n"))
    os.waitpid(child, 0)
    from_parent = {ids.new_id("d-") for _ in range(50)}
    assert len(from_child) == 50 and not from_child & from_parent


# -- models -------------------------------------------------------------------------------------------


def test_cap_and_budget_name_their_rules() -> None:
    cap = Cap(per="customer_channel", limit=2, window="7d")
    assert cap.rule == "cap:customer_channel:7d" and cap.window_delta == timedelta(days=7)
    budget = Budget(limit=1000, window="1d")
    assert budget.rule == "budget:1d" and budget.window_delta == timedelta(days=1)


@pytest.mark.parametrize(
    "spec",
    [
        {"per": "household", "limit": 1, "window": "1d"},
        {"per": "customer", "limit": 0, "window": "1d"},
        {"per": "customer", "limit": 1, "window": "1 day"},
        {"per": "customer", "limit": 1, "window": "9999d"},
        {"per": "customer", "limit": 1},
        {"per": "customer", "limit": 1, "window": "1d", "extra": True},
    ],
)
def test_bad_caps_are_refused(spec: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Cap.model_validate(spec)


def test_suppression_is_written_with_for() -> None:
    suppression = Suppression.model_validate({"event": "complaint_filed", "for": "14d"})
    assert suppression.delta == timedelta(days=14)
    assert suppression.model_dump(by_alias=True) == {"event": "complaint_filed", "for": "14d"}


def test_action_defaults() -> None:
    action = Action(channels=["web"])
    assert action.active and action.caps == [] and action.budget is None
    assert action.cooldown_delta is None and action.eligibility is None
    assert Action(channels=["web"], cooldown="24h").cooldown_delta == timedelta(hours=24)


def test_action_round_trips_through_its_json_form() -> None:
    action = Action.model_validate({
        "channels": ["web", "email"],
        "attributes": {"category": "discount", "value": 12.0, "min_age": 18, "tags": ["a"], "new": True},
        "eligibility": "customer.age >= action.min_age",
        "caps": [{"per": "customer", "limit": 2, "window": "7d"}],
        "budget": {"limit": 1000, "window": "1d"},
        "cooldown": "24h",
        "suppressed_by": [{"event": "complaint_filed", "for": "14d"}],
    })
    assert Action.model_validate(action.model_dump(mode="json", by_alias=True)) == action


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"channels": []}, "channels"),
        ({}, "channels"),
        ({"channels": ["web"], "eligibility": "customer.age >="}, "does not compile"),
        ({"channels": ["web"], "eligibility": "user.age > 1"}, "unknown variable"),
        ({"channels": ["web"], "attributes": {"value": math.inf}}, "finite"),
        ({"channels": ["web"], "attributes": {"value": math.nan}}, "finite"),
        ({"channels": ["web"], "attributes": {"bad key": 1}}, "attributes"),
        ({"channels": ["web"], "attributes": {"nested": {"a": 1}}}, "attributes"),
        ({"channels": ["web"], "cooldown": "soon"}, "cooldown"),
        ({"channels": ["web"], "budget": {"limit": -1, "window": "1d"}}, "budget"),
        ({"channels": ["web"], "unknown": 1}, "unknown"),
        ({"channels": ["bad channel"]}, "channels"),
    ],
)
def test_bad_actions_are_refused_naming_the_problem(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Action.model_validate(spec)


def test_models_are_frozen() -> None:
    action = Action(channels=["web"])
    with pytest.raises(ValidationError):
        action.active = False  # type: ignore[misc]


@pytest.mark.parametrize(
    "spec",
    [
        {"exploration": "epsilon", "gamma_scale": 5.0},
        {"exploration": "squarecb", "epsilon": 0.1},
        {"exploration": "greedy", "lambda": 1.0},
        {"exploration": "softmax", "epsilon": 0.1},
        {"exploration": "ucb"},
        {"exploration": "epsilon", "epsilon": 1.5},
        {"exploration": "squarecb", "gamma_scale": 0},
    ],
)
def test_learner_parameters_must_fit_the_exploration(spec: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Learner.model_validate(spec)


def test_learner_accepts_lambda_by_alias_and_defaults_to_squarecb() -> None:
    assert Learner.model_validate({"exploration": "softmax", "lambda": 4.0}).lambda_ == 4.0
    assert Learner().exploration == "squarecb"


def test_policy_defaults() -> None:
    policy = Policy(channels=["web"])
    assert policy.mode == "online"
    assert policy.reward == RewardSpec(window="1h", default=0.0, aggregation="sum")
    assert policy.reward.window_delta == timedelta(hours=1)
    with pytest.raises(ValidationError):
        RewardSpec(aggregation="mean")  # type: ignore[arg-type]


def test_event_type_required_properties_must_be_declared() -> None:
    EventType(properties={"amount": "number"}, required=["amount"])
    with pytest.raises(ValidationError, match="not declared"):
        EventType(properties={"amount": "number"}, required=["method"])
    with pytest.raises(ValidationError):
        EventType.model_validate({"properties": {"amount": "money"}})


def test_each_channel_is_served_by_at_most_one_policy() -> None:
    with pytest.raises(ValidationError, match="served by both"):
        CatalogFile.model_validate({"policies": {"p1": {"channels": ["web"]}, "p2": {"channels": ["email", "web"]}}})


def test_load_catalog_file(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(
        "actions:\n"
        "  offer-10pct:\n"
        "    channels: [web]\n"
        "    caps: [{per: customer, limit: 1, window: 1d}]\n"
        "policies:\n"
        "  web-offers:\n"
        "    channels: [web]\n"
        "    reward: {window: 30m, aggregation: first}\n"
        "event_types:\n"
        "  payment_failed: {properties: {amount: number}, required: [amount]}\n"
    )
    catalog = load_catalog_file(path)
    assert catalog.actions["offer-10pct"].caps[0].rule == "cap:customer:1d"
    assert catalog.policies["web-offers"].reward.aggregation == "first"
    assert catalog.event_types["payment_failed"].required == ["amount"]
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_catalog_file(empty) == CatalogFile()


def test_catalog_file_refuses_bad_action_ids(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text("actions:\n  'bad id':\n    channels: [web]\n")
    with pytest.raises(ValidationError):
        load_catalog_file(path)


# -- the compiled view --------------------------------------------------------------------------------


def _view() -> CatalogView:
    actions = {
        "b": Action(channels=["web", "email"], eligibility="customer.age >= 18"),
        "a": Action(channels=["web"]),
        "c": Action(channels=["email"]),
    }
    return CatalogView.build(3, actions, {"web-offers": (2, Policy(channels=["web"]))}, {})


def test_view_lists_each_channels_actions_in_id_order_and_compiles_rules() -> None:
    view = _view()
    assert view.channel_actions == {"web": ("a", "b"), "email": ("b", "c")}
    assert set(view.rules) == {"b"}
    assert view.rules["b"].evaluate({"customer": {"age": 20}}).passed


def test_view_candidates_default_to_the_channel_and_requested_ones_must_exist() -> None:
    view = _view()
    assert view.candidates("web", None) == ["a", "b"]
    assert view.candidates("sms", None) == []
    assert view.candidates("web", ["c", "a", "c"]) == ["c", "a"]
    with pytest.raises(ActionNotFound) as info:
        view.candidates("web", ["a", "nope"])
    assert info.value.field == "candidates" and "nope" in info.value.message


def test_view_finds_the_policy_of_a_channel() -> None:
    view = _view()
    name, version, policy = view.policy_for("web")
    assert (name, version, policy.channels) == ("web-offers", 2, ["web"])
    with pytest.raises(NoPolicyForChannel) as info:
        view.policy_for("email")
    assert info.value.field == "channel"


def test_a_channel_listed_twice_is_refused_from_clients_and_mended_in_stored_data() -> None:
    """The HTTP layer validates with `CLIENT_INPUT` (a 422); a catalog stored or written before repeats were
    refused must still load, or a process would not start: there each channel is kept once, in order."""
    with pytest.raises(ValidationError, match="more than once"):
        Action.model_validate({"channels": ["web", "app", "web"]}, context={CLIENT_INPUT: True})
    assert Action.model_validate({"channels": ["web", "app", "web"]}).channels == ["web", "app"]
    assert Policy.model_validate({"channels": ["sms", "sms"]}).channels == ["sms"]


def test_an_eligibility_that_reads_nothing_must_be_a_condition_when_a_client_saves_it() -> None:
    """`1 + 2` compiles but would exclude the action from every decision: refused from a client; a catalog that
    already holds one still loads (the action stays excluded, with the reason in each decision)."""
    with pytest.raises(ValidationError, match="not a condition"):
        Action.model_validate({"channels": ["web"], "eligibility": "1 + 2"}, context={CLIENT_INPUT: True})
    assert Action.model_validate({"channels": ["web"], "eligibility": "1 + 2"}).eligibility == "1 + 2"
    assert Action.model_validate({"channels": ["web"], "eligibility": "customer.age + 1 > 2"},
                                 context={CLIENT_INPUT: True}).eligibility is not None
