"""Request context, customer state and action attributes as model namespaces.

A namespace is a plain dict of feature name to value: finite numbers keep their value (NaN and infinities are
dropped), strings become the categorical feature `name=value`, lists become a bag of `name=item`, booleans
become 1 or 0. The learner does not know where features came from; escaping for Vowpal Wabbit's text format,
and the bound on values that keeps every finite number scorable under interactions, happen in
`bandits/vw_text.py`, once for all three namespaces.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from nba.numbers import is_finite_number
from nba.types import CustomerState

Namespace = dict[str, float]
Namespaces = dict[str, Namespace]

CONTEXT_NS = "C"
CUSTOMER_NS = "U"
ACTION_NS = "A"


def to_namespace(values: Mapping[str, Any], prefix: str = "") -> Namespace:
    """Flatten a map of values into features.

    >>> to_namespace({"cart_value": 84.5, "device": "mobile", "tags": ["new", "vip"], "member": True})
    {'cart_value': 84.5, 'device=mobile': 1.0, 'tags=new': 1.0, 'tags=vip': 1.0, 'member': 1.0}

    Numbers that are not finite as a float are left out (the API refuses them; a store may predate that):

    >>> to_namespace({"huge": 10**400, "nan": float("nan"), "count": 3})
    {'count': 3.0}
    """
    features: Namespace = {}
    for name, value in values.items():
        key = prefix + name
        if isinstance(value, bool):
            features[key] = 1.0 if value else 0.0
        elif isinstance(value, int | float):
            if is_finite_number(value):  # a stored value that is not (an integer too large for a float) is left out
                features[key] = float(value)
        elif isinstance(value, str):
            features[f"{key}={value}"] = 1.0
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str | int | float) and not isinstance(item, bool):
                    features[f"{key}={item}"] = 1.0
    return features


def shared_namespaces(context: Mapping[str, Any], customer: CustomerState | Mapping[str, Any]) -> Namespaces:
    """The shared (per-decision) features: the request context, and what events made of the customer."""
    if isinstance(customer, CustomerState):
        attributes, counts = customer.attributes, customer.event_counts
    else:
        attributes, counts = customer.get("attributes", {}), customer.get("event_counts", {})
    user = to_namespace(attributes)
    for event_type, count in counts.items():
        user[f"n_{event_type}"] = math.log1p(count)
    return {CONTEXT_NS: to_namespace(context), CUSTOMER_NS: user}


def action_namespaces(action_id: str, attributes: Mapping[str, Any]) -> Namespaces:
    """The features of one candidate action: its id and its attributes."""
    features = to_namespace(attributes)
    features[f"id={action_id}"] = 1.0
    return {ACTION_NS: features}


class NamespaceFeaturizer:
    """The project's featurizer: shared namespaces C (context) and U (customer), per-action namespace A."""

    def shared(self, context: Mapping[str, Any], customer: CustomerState | Mapping[str, Any]) -> Namespaces:
        return shared_namespaces(context, customer)

    def action(self, action_id: str, attributes: Mapping[str, Any]) -> Namespaces:
        return action_namespaces(action_id, attributes)
