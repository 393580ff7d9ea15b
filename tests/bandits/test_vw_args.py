"""Vowpal Wabbit arguments: the documented default, exploration settings, and the `vw_args` whitelist."""

from __future__ import annotations

import shlex

import pytest
import vowpal_wabbit_next as vw
from hypothesis import given
from hypothesis import strategies as st

from bandits import vw_args
from bandits.vw_args import build_args, check_bits, parse_extra
from nba.catalog import Learner
from nba.errors import InvalidInput


def _value_of(args: list[str], option: str) -> str:
    return args[args.index(option) + 1]


def _pairs(args: list[str], option: str) -> list[str]:
    return [args[i + 1] for i, token in enumerate(args) if token == option]


# -- build_args ---------------------------------------------------------------------------------------


def test_the_default_learner_is_squarecb_with_context_action_interactions() -> None:
    args = build_args(Learner())
    assert args[:2] == ["--cb_explore_adf", "--quiet"]
    assert "--squarecb" in args and _value_of(args, "--gamma_scale") == "10.0"
    assert _pairs(args, "-q") == ["CA", "UA"]
    assert _value_of(args, "--cb_type") == "mtr"
    assert "--epsilon" not in args


@pytest.mark.parametrize(
    ("learner", "expected"),
    [
        (Learner(exploration="epsilon", epsilon=0.2), ["--epsilon", "0.2"]),
        (Learner(exploration="epsilon"), ["--epsilon", "0.05"]),
        (Learner(exploration="squarecb", gamma_scale=50.0), ["--squarecb", "--gamma_scale", "50.0"]),
        (Learner.model_validate({"exploration": "softmax", "lambda": 3.0}), ["--softmax", "--lambda", "3.0"]),
        (Learner(exploration="softmax"), ["--softmax", "--lambda", "10.0"]),
        (Learner(exploration="greedy"), ["--epsilon", "0"]),
    ],
)
def test_exploration_settings_become_vw_options(learner: Learner, expected: list[str]) -> None:
    args = build_args(learner)
    assert args[2:2 + len(expected)] == expected


def test_given_interactions_replace_the_default_ones() -> None:
    args = build_args(Learner(vw_args="--interactions CUA -q UA"))
    assert _pairs(args, "-q") == ["UA"]
    assert _value_of(args, "--interactions") == "CUA"
    assert _pairs(build_args(Learner(vw_args="--quadratic CA")), "-q") == []


def test_a_given_cb_type_replaces_the_default_one() -> None:
    args = build_args(Learner(vw_args="--cb_type=dr"))
    assert _pairs(args, "--cb_type") == ["dr"]


@pytest.mark.parametrize(
    "learner",
    [Learner(), Learner(exploration="epsilon", epsilon=0.1), Learner(exploration="greedy"),
     Learner(exploration="softmax"), Learner(exploration="squarecb", gamma_scale=5.0),
     Learner(exploration="epsilon", vw_args="-l 0.01 --power_t 0 --cb_type dr --l2 1e-6 -b 18 --noconstant"),
     Learner(exploration="squarecb", vw_args="--elim --cb_min_cost -1 --cb_max_cost 0 --mellowness 0.001"),
     Learner(vw_args="--interactions CUA --ignore_linear U --random_seed 7")],
)
def test_every_built_argument_list_makes_a_workspace(learner: Learner) -> None:
    vw.Workspace(build_args(learner))


SAMPLE_VALUES = {"-q": "CA", "--quadratic": "CA", "--interactions": "CUA", "--cubic": "CUA", "--cb_type": "mtr",
                 "--ignore": "U", "--ignore_linear": "U", "--keep": "C", "--cb_min_cost": "-1",
                 "--cb_max_cost": "0", "-b": "18", "--bit_precision": "18", "--hash_seed": "7",
                 "--random_seed": "7"}
NOT_IN_VW = "whitelisted in bandits/vw_args.py, but vowpal-wabbit-next refuses it, so a policy naming it cannot load"
REFUSED_BY_VW = {"--mellowness_is_unused", "--squarecb_gamma_scale", "--ignore", "--keep"}


@pytest.mark.parametrize(
    "option",
    [pytest.param(o, marks=pytest.mark.xfail(strict=True, raises=RuntimeError, reason=NOT_IN_VW))
     if o in REFUSED_BY_VW else o
     for o in sorted(vw_args._FLAGS | (vw_args._WITH_VALUE - vw_args._EXPLORATION))],
)
def test_every_whitelisted_option_is_one_vw_accepts(option: str) -> None:
    value = [] if option in vw_args._FLAGS else [SAMPLE_VALUES.get(option, "0.5")]
    vw.Workspace(build_args(Learner(vw_args=shlex.join([option, *value]))))


# -- parse_extra --------------------------------------------------------------------------------------


def test_allowed_options_pass_with_values_inline_or_separate() -> None:
    assert parse_extra("") == []
    assert parse_extra("-q CA --cb_type=mtr -l 0.5 --noconstant --power_t=0") == [
        "-q", "CA", "--cb_type", "mtr", "-l", "0.5", "--noconstant", "--power_t", "0"
    ]
    assert parse_extra("--cb_min_cost -1 --cb_max_cost 0") == ["--cb_min_cost", "-1", "--cb_max_cost", "0"]


@pytest.mark.parametrize(
    "text",
    ["-d train.txt", "--data=train.txt", "-f model.vw", "--final_regressor model.vw", "-i model.vw",
     "--initial_regressor=m", "--readable_model r.txt", "--invert_hash ih.txt", "-c", "--cache_file c",
     "--save_resume", "-p preds.txt", "--predictions p", "--audit", "--cb_adf", "--cb_explore 3",
     "--daemon", "--port 26542", "--passes 3", "-q CA train.txt", "--noconstant=1", "--json"],
)
def test_options_outside_the_whitelist_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput, match="not an allowed") as info:
        parse_extra(text)
    assert info.value.field == "learner.vw_args"


@pytest.mark.parametrize("text", ["--epsilon 0.3", "--squarecb", "--softmax", "--lambda=2", "--gamma_scale 4",
                                  "--cb_explore_adf", "--first 2", "--bag 3", "--cover 4", "--regcb"])
def test_exploration_options_belong_to_learner_exploration(text: str) -> None:
    with pytest.raises(InvalidInput, match="learner.exploration"):
        parse_extra(text)


@pytest.mark.parametrize("text", ["-q", "--cb_type", "-l 0.1 --power_t"])
def test_an_option_without_its_value_is_refused(text: str) -> None:
    with pytest.raises(InvalidInput, match="needs a value"):
        parse_extra(text)


def test_unbalanced_quotes_are_refused() -> None:
    with pytest.raises(InvalidInput, match="cannot be parsed"):
        parse_extra("-q 'CA")


INTERACTIONS = {"-q", "--quadratic", "--interactions", "--cubic"}  # order-checked: see the tests below
BITS = {"-b", "--bit_precision"}  # range-checked: see the tests below
allowed = st.one_of(
    st.sampled_from(sorted(vw_args._FLAGS)).map(lambda flag: [flag]),
    st.tuples(st.sampled_from(sorted(vw_args._WITH_VALUE - vw_args._EXPLORATION - INTERACTIONS - BITS)),
              st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=8)
              .filter(lambda v: not v.startswith("-") or v[1:].replace(".", "").isdigit()))
    .map(list),
)


@given(options=st.lists(allowed, max_size=6))
def test_allowed_options_round_trip(options: list[list[str]]) -> None:
    tokens = [token for option in options for token in option]
    assert parse_extra(shlex.join(tokens)) == tokens


refused = st.sampled_from(["-d", "--data", "-f", "-i", "--readable_model", "--save_resume", "--epsilon",
                           "--squarecb", "--cache_file", "-p", "--audit"])


@given(before=st.lists(allowed, max_size=3), bad=refused, after=st.lists(allowed, max_size=3))
def test_a_refused_option_anywhere_refuses_the_whole_string(
    before: list[list[str]], bad: str, after: list[list[str]]
) -> None:
    tokens = [t for option in before for t in option] + [bad, "x"] + [t for option in after for t in option]
    with pytest.raises(InvalidInput):
        parse_extra(shlex.join(tokens))


@pytest.mark.parametrize("extra", ["--interactions CCCCCC", "--cubic CUAA", "-q C"])
def test_interaction_orders_beyond_three_or_below_two_are_refused(extra: str) -> None:
    with pytest.raises(InvalidInput, match="interactions combine 2 or 3"):
        build_args(Learner(vw_args=extra))


@pytest.mark.parametrize("extra", ["-q ::", "--interactions CUA", "--cubic CUA"])
def test_pairwise_wildcards_and_third_order_interactions_build(extra: str) -> None:
    vw.Workspace(build_args(Learner(vw_args=extra)))


@pytest.mark.parametrize("value", ["1", "18", "24"])
def test_a_hash_table_of_up_to_24_bits_is_allowed(value: str) -> None:
    check_bits(parse_extra(f"-b {value}"))
    check_bits(parse_extra(f"--bit_precision={value}"))


@pytest.mark.parametrize("value", ["0", "25", "29", "x", "1.5", "-3"])
def test_a_hash_table_beyond_24_bits_is_refused(value: str) -> None:
    """2^29 weights are gigabytes per model, allocated as the model learns: a 422 at save, not an exhausted host."""
    with pytest.raises(InvalidInput, match="1 to 24 bits"):
        check_bits(parse_extra(f"-b {value}"))


def test_a_stored_learner_with_a_larger_hash_table_is_still_built() -> None:
    """Saved before the bound: it keeps serving and learning (only a client's save is refused)."""
    vw.Workspace(build_args(Learner(vw_args="-b 25")))
