"""Context, customer state and action attributes as model namespaces (plain dicts of feature to value)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from features.namespaces import (
    ACTION_NS,
    CONTEXT_NS,
    CUSTOMER_NS,
    NamespaceFeaturizer,
    action_namespaces,
    shared_namespaces,
    to_namespace,
)
from nba.types import CustomerState


def test_each_kind_of_value_becomes_features() -> None:
    assert to_namespace({"cart_value": 84.5, "items": 3, "device": "mobile", "tags": ["new", "vip"],
                         "member": True, "guest": False}) == {
        "cart_value": 84.5, "items": 3.0, "device=mobile": 1.0, "tags=new": 1.0, "tags=vip": 1.0,
        "member": 1.0, "guest": 0.0,
    }


def test_values_that_are_not_features_are_dropped() -> None:
    assert to_namespace({"nan": math.nan, "inf": -math.inf, "none": None, "nested": {"a": 1},
                         "mixed": ["ok", True, None, 2, 1.5]}) == {"mixed=ok": 1.0, "mixed=2": 1.0,
                                                                  "mixed=1.5": 1.0}


def test_finite_numbers_pass_on_unchanged_however_extreme() -> None:
    # The featurizer is learner-agnostic: Vowpal Wabbit's bound on values is applied in `bandits/vw_text.py`.
    extremes = {"huge": 1e308, "negative": -1.7976931348623157e308, "tiny": 5e-324, "small": -1e-160}
    assert to_namespace(extremes) == extremes


def test_a_prefix_is_put_before_every_name() -> None:
    assert to_namespace({"a": 1, "b": "x", "c": ["y"]}, prefix="ctx_") == {"ctx_a": 1.0, "ctx_b=x": 1.0,
                                                                           "ctx_c=y": 1.0}


def test_an_empty_list_or_map_gives_no_features() -> None:
    assert to_namespace({}) == {}
    assert to_namespace({"tags": []}) == {}


scalars = st.one_of(
    st.booleans(), st.integers(min_value=-(10**12), max_value=10**12), st.floats(allow_nan=True),
    st.text(max_size=20), st.lists(st.text(max_size=10), max_size=5),
)


names = st.text(st.characters(exclude_characters="="), min_size=1, max_size=20)


@given(values=st.dictionaries(names, scalars, max_size=10))
def test_features_are_always_finite_floats(values: dict[str, Any]) -> None:
    features = to_namespace(values)
    assert all(isinstance(v, float) and math.isfinite(v) for v in features.values())
    for name, value in values.items():
        if isinstance(value, str):
            assert features[f"{name}={value}"] == 1.0
        elif isinstance(value, bool):
            assert features[name] == float(value)


def test_shared_namespaces_hold_the_context_and_the_customer() -> None:
    customer = CustomerState("c1", attributes={"age": 34, "tier": "gold"},
                             event_counts={"purchase": 3, "login": 0})
    shared = shared_namespaces({"device": "mobile", "cart_value": 10.0}, customer)
    assert set(shared) == {CONTEXT_NS, CUSTOMER_NS}
    assert shared[CONTEXT_NS] == {"device=mobile": 1.0, "cart_value": 10.0}
    assert shared[CUSTOMER_NS] == {"age": 34.0, "tier=gold": 1.0, "n_purchase": pytest.approx(math.log1p(3)),
                                   "n_login": 0.0}


def test_a_logged_customer_snapshot_gives_the_same_features_as_the_live_state() -> None:
    """The learner rebuilds features from the decision log; they must match what was scored."""
    customer = CustomerState("c1", attributes={"age": 34}, event_counts={"purchase": 2},
                             last_event_at={"purchase": "2026-11-24T10:00:00+00:00"}, opt_outs=["sms"])
    context = {"page": "checkout"}
    assert shared_namespaces(context, customer.to_json()) == shared_namespaces(context, customer)
    assert shared_namespaces(context, {}) == {CONTEXT_NS: {"page=checkout": 1.0}, CUSTOMER_NS: {}}


def test_action_namespaces_carry_the_id_and_the_attributes() -> None:
    assert action_namespaces("offer-10pct", {"category": "discount", "value": 12.0}) == {
        ACTION_NS: {"category=discount": 1.0, "value": 12.0, "id=offer-10pct": 1.0}
    }


def test_the_featurizer_is_the_module_functions() -> None:
    featurizer = NamespaceFeaturizer()
    customer = CustomerState("c1", attributes={"age": 3})
    assert featurizer.shared({"a": 1}, customer) == shared_namespaces({"a": 1}, customer)
    assert featurizer.action("x", {"b": "y"}) == action_namespaces("x", {"b": "y"})
