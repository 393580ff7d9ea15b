"""Vowpal Wabbit's text format: no feature name or value may break the syntax; checked with VW's own parser."""

from __future__ import annotations

import math
import struct
import sys

import pytest
import vowpal_wabbit_next as vw
from hypothesis import given, settings
from hypothesis import strategies as st

from bandits.vw_text import (
    EXACT_LIMIT,
    TINY,
    VALUE_BOUND,
    escape,
    feature_value,
    namespace_header,
    namespaces_line,
)
from features.namespaces import to_namespace

PARSER = vw.TextFormatParser(vw.Workspace(["--cb_explore_adf", "--quiet"]))
SYNTAX = set("|: \t\n\r")
FLOAT32_MAX = 3.4028234663852886e38
# Finite numbers VW could not score when written as they are: under `-q CA` a context value times an action
# attribute overflowed float32, and VW's parser reads magnitudes from about 1e-217 to 1e-129 as infinity.
UNSCORABLE = [1e308, -1e308, sys.float_info.max, 3.4e38, 1e39, 1e20, 1e-160, -1e-200, 1e-129, 1e-217]

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
        assert got == pytest.approx(feature_value(wanted), rel=1e-6)


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
    line = namespaces_line({"A": {"big": 1e9, "small": 3e-9, "neg": -2.5e-20}})
    assert line == "|A big:1e+09 small:3e-09 neg:-2.5e-20"
    assert _groups(line)[ord("A")] == pytest.approx([1e9, 3e-9, -2.5e-20], rel=1e-6)


# -- values: exact in the ordinary range, tiny ones left out, large ones compressed below the bound ---------


def _float32(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


@pytest.mark.parametrize("value", [1e-20, -1e-20, 1e-9, 0.001, -0.5, 84.5, 3.0, 123456789.0, -987654321.5,
                                   999999999.0, 1e9, -1e9])
def test_ordinary_values_are_written_exactly(value: float) -> None:
    assert feature_value(value) == value
    assert _groups(namespaces_line({"C": {"x": value}}))[ord("C")] == [pytest.approx(value, rel=1e-6)]


@pytest.mark.parametrize("value", [9.99e-21, -9.99e-21, 1e-30, 1.46258678e-30, 1e-37, 1e-129, 1e-160, -1e-200,
                                   1e-217, 1e-300, 5e-324, -5e-324, 0.0, -0.0, math.nan])
def test_tiny_values_are_written_as_zero_and_left_out(value: float) -> None:
    assert feature_value(value) == 0.0
    assert namespaces_line({"C": {"tiny": value, "y": 2.0}}) == "|C y:2"


def test_the_tiny_threshold_is_the_smallest_magnitude_written() -> None:
    assert feature_value(TINY) == TINY and feature_value(-TINY) == -TINY
    assert feature_value(math.nextafter(TINY, 0.0)) == 0.0
    assert feature_value(math.nextafter(EXACT_LIMIT, 0.0)) == math.nextafter(EXACT_LIMIT, 0.0)


def test_the_bound_keeps_a_product_of_three_features_within_float32() -> None:
    assert VALUE_BOUND == pytest.approx(6.9e11, rel=0.01)
    assert feature_value(sys.float_info.max) == VALUE_BOUND
    assert feature_value(-sys.float_info.max) == -VALUE_BOUND
    assert _float32(VALUE_BOUND) ** 3 < FLOAT32_MAX / 1000  # interactions are of order 3 at most
    assert feature_value(math.inf) == VALUE_BOUND and feature_value(-math.inf) == -VALUE_BOUND


def test_compression_starts_smoothly_at_the_limit() -> None:
    above = math.nextafter(EXACT_LIMIT, math.inf)
    assert feature_value(above) == pytest.approx(above, rel=1e-15)
    step = EXACT_LIMIT * 1e-6  # slope 1 at the limit, then ln: 1e10 becomes 1e9 * (1 + ln 10)
    assert (feature_value(EXACT_LIMIT + step) - feature_value(EXACT_LIMIT)) / step == pytest.approx(1.0, rel=1e-5)
    assert feature_value(1e10) == pytest.approx(1e9 * (1 + math.log(10)))
    assert feature_value(-1e10) == -feature_value(1e10)


finite = st.floats(allow_nan=False, allow_infinity=False)


@given(a=finite, b=finite)
def test_compression_keeps_sign_and_order(a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert feature_value(low) <= feature_value(high)
    for value in (a, b):
        written = feature_value(value)
        assert abs(written) <= VALUE_BOUND
        assert written == 0.0 or math.copysign(1.0, written) == math.copysign(1.0, value)


@settings(max_examples=300)
@given(value=finite)
def test_every_finite_value_reaches_vw_as_its_written_value(value: float) -> None:
    written = feature_value(value)
    parsed = _groups(namespaces_line({"C": {"x": value}})).get(ord("C"), [])
    if written == 0.0:
        assert parsed == []
    else:
        assert parsed == [pytest.approx(written, rel=1e-6)]
        assert math.isfinite(parsed[0])


@pytest.mark.parametrize("value", UNSCORABLE, ids=str)
def test_values_vw_could_not_score_reach_it_finite_and_bounded(value: float) -> None:
    line = namespaces_line({"C": {"amount": value}, "U": {"balance": value}, "A": {"price": value}})
    for parsed in _groups(line).values():
        assert all(math.isfinite(v) and abs(v) <= _float32(VALUE_BOUND) for v in parsed)


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
