"""Vowpal Wabbit's text format: no feature name or value may break the syntax; checked with VW's own parser."""

from __future__ import annotations

import math

import pytest
import vowpal_wabbit_next as vw
from hypothesis import given, settings
from hypothesis import strategies as st

from bandits.vw_text import escape, namespace_header, namespaces_line
from features.namespaces import to_namespace

PARSER = vw.TextFormatParser(vw.Workspace(["--cb_explore_adf", "--quiet"]))
SYNTAX = set("|: \t\n\r")

# Any unicode, with the characters that are syntax (and their look-alikes) drawn often, lone surrogates included.
tricky = st.sampled_from(list("|:% \t\n\r\x00\x0b\x0c\x1f\x7f\x85\xa0\u2028\u2029\u200b\u3000\ufeff\ud800\udfff"))
names = st.text(st.one_of(st.characters(), tricky), max_size=24)
values = st.one_of(
    st.just(1.0),
    st.floats(min_value=1e-20, max_value=1e30).flatmap(lambda v: st.sampled_from([v, -v])),
)


def _groups(line: str) -> dict[int, list[float]]:
    """Namespace index -> feature values, as VW parsed the line."""
    return {group.feat_group_index: list(group.values) for group in PARSER.parse_line(line)}


# -- escape -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [("a|b", "a%7Cb"), ("a:b", "a%3Ab"), ("a b", "a%20b"), ("a\tb", "a%09b"), ("a\nb", "a%0Ab"),
     ("a\rb", "a%0Db"), ("100%", "100%25"), ("a\x00b", "a%00b"), ("\x7f", "%7F"), ("a\u2028b", "a%E2%80%A8b"),
     ("café=ü", "café=ü"), ("", "%")],
)
def test_escape(raw: str, escaped: str) -> None:
    assert escape(raw) == escaped


@given(name=names)
def test_escaped_names_hold_no_syntax_and_are_printable(name: str) -> None:
    escaped = escape(name)
    assert escaped
    assert not SYNTAX & set(escaped)
    assert escaped.isprintable()
    escaped.encode("utf-8")  # no lone surrogate reaches the parser


@given(name=st.text(st.characters(exclude_characters="%", categories=("L", "N", "P", "S")), min_size=1))
def test_printable_names_without_syntax_are_left_alone(name: str) -> None:
    if not SYNTAX & set(name):
        assert escape(name) == name


@pytest.mark.parametrize(("one", "other"), [("\u2028", " 28"), ("\u200b", " 0B"), ("", "\x00")])
def test_distinct_names_stay_distinct(one: str, other: str) -> None:
    assert escape(one) != escape(other)


# -- whole lines, parsed by VW ------------------------------------------------------------------------


@settings(max_examples=300)
@given(features=st.dictionaries(names, values, max_size=8))
def test_any_feature_names_give_exactly_the_intended_features(features: dict[str, float]) -> None:
    line = namespaces_line({"A": features})
    groups = _groups(line)
    if not features:
        assert groups == {}
        return
    assert list(groups) == [ord("A")]
    parsed = groups[ord("A")]
    assert len(parsed) == len(features)
    for got, wanted in zip(parsed, features.values(), strict=True):
        assert got == pytest.approx(wanted, rel=1e-6)


@settings(max_examples=200)
@given(context=st.dictionaries(names, names, max_size=6), customer=st.dictionaries(names, names, max_size=6),
       tags=st.lists(names, max_size=4, unique=True))
def test_any_categorical_values_keep_the_namespace_count(
    context: dict[str, str], customer: dict[str, str], tags: list[str]
) -> None:
    shared = {"C": to_namespace({**context, "tags": tags}), "U": to_namespace(customer)}
    example = PARSER.parse_line(namespaces_line(shared, prefix="shared"))
    groups = {group.feat_group_index: len(group) for group in example}
    assert example.get_label().shared
    expected = {ord(ns): len(features) for ns, features in shared.items() if features}
    assert groups == expected


def test_zero_valued_features_are_left_out() -> None:
    assert namespaces_line({"A": {"x": 0.0, "y": 1.0, "z": -0.0}}) == "|A y"
    assert namespaces_line({"A": {"x": 0.0}}) == "|A"


def test_large_values_use_exponent_notation() -> None:
    line = namespaces_line({"A": {"big": 2.5e20, "small": 3e-9, "neg": -1e15}})
    assert line == "|A big:2.5e+20 small:3e-09 neg:-1e+15"
    assert _groups(line)[ord("A")] == pytest.approx([2.5e20, 3e-9, -1e15], rel=1e-6)


def test_every_finite_value_reaches_vw_as_a_finite_value() -> None:
    parsed = _groups(namespaces_line({"C": {"cart_value": 1e39}}))[ord("C")]
    assert all(math.isfinite(v) for v in parsed)


@pytest.mark.parametrize("namespace", ["", "a b", "|", "A:", "A|B", "-"])
def test_namespace_names_must_be_alphanumeric(namespace: str) -> None:
    with pytest.raises(ValueError, match="must be alphanumeric"):
        namespace_header(namespace)


def test_distinct_namespaces_stay_distinct() -> None:
    try:
        line = namespaces_line({"Ab": {"x": 1.0}, "Ac": {"y": 1.0}})
    except ValueError:
        return  # refusing the ambiguity is also correct
    assert len(_groups(line)) == 2
