"""Vowpal Wabbit arguments for a policy's learner: the documented default and a safe subset of options."""

from __future__ import annotations

import shlex

from nba.catalog import Learner
from nba.errors import InvalidInput

# Chosen on the simulator in `training/simulator.py` and on NOTES.md's measurements: SquareCB explores in
# proportion to how uncertain the model is, and context acts only through context x action interactions.
DEFAULT_INTERACTIONS = ["-q", "CA", "-q", "UA"]
DEFAULT_EXTRA = ["--cb_type", "mtr"]
DEFAULT_EPSILON = 0.05
DEFAULT_GAMMA_SCALE = 10.0
DEFAULT_LAMBDA = 10.0

# Options that only shape learning. Anything that reads or writes files, or changes the reduction stack, is
# refused: the server owns the model's lifecycle.
_FLAGS = {"--noconstant", "--normalized", "--invariant", "--adaptive", "--sgd", "--coin", "--ftrl", "--elim",
          "--nounif", "--first_only"}
_WITH_VALUE = {"-q", "--quadratic", "--interactions", "--cubic", "--cb_type", "-l", "--learning_rate",
               "--power_t", "-b", "--bit_precision", "--l1", "--l2", "--initial_t", "--decay_learning_rate",
               "--cb_min_cost", "--cb_max_cost", "--mellowness", "--ignore_linear",
               "--random_seed", "--hash_seed", "--psi", "--first", "--bag", "--cover", "--regcb", "--regcbopt",
               "--ftrl_alpha", "--ftrl_beta", "--clip_p"}
_EXPLORATION = {"--epsilon", "--squarecb", "--softmax", "--lambda", "--gamma_scale", "--cb_explore_adf",
                "--first", "--bag", "--cover", "--regcb", "--regcbopt"}


def parse_extra(vw_args: str) -> list[str]:
    """Split and check the free-form `vw_args`; raise `InvalidInput` naming the first refused option."""
    try:
        tokens = shlex.split(vw_args)
    except ValueError as exc:
        raise InvalidInput(f"vw_args cannot be parsed: {exc}", field="learner.vw_args") from exc
    out: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        option, _, inline = token.partition("=")
        if option in _EXPLORATION:
            raise InvalidInput(f"{option} is set by learner.exploration, not vw_args", field="learner.vw_args")
        if option in _FLAGS and not inline:
            out.append(option)
            i += 1
        elif option in _WITH_VALUE:
            if inline:
                out += [option, inline]
                i += 1
            elif i + 1 < len(tokens):
                out += [option, tokens[i + 1]]
                i += 2
            else:
                raise InvalidInput(f"{option} needs a value", field="learner.vw_args")
        else:
            raise InvalidInput(f"{token!r} is not an allowed Vowpal Wabbit option here", field="learner.vw_args")
    _check_interactions(out)
    return out


_MAX_INTERACTION_ORDER = 3  # higher orders multiply features combinatorially and can stall a decide


# Weights take 2^bits x stride x 4 bytes per model (several models per process): 24 bits is 64 MiB per stride
# unit; VW takes up to 32 (tens of GiB) and the default is 18.
_MAX_BITS = 24


def check_bits(args: list[str]) -> None:
    """Refuse a hash table of more than _MAX_BITS bits. Checked when a client saves a learner, not when a stored
    one is built: a policy stored with more keeps serving and learning."""
    for option, value in zip(args, args[1:], strict=False):
        if option in ("-b", "--bit_precision") and not (value.isdigit() and 1 <= int(value) <= _MAX_BITS):
            raise InvalidInput(f"{option} {value!r}: the hash table takes 1 to {_MAX_BITS} bits",
                               field="learner.vw_args")


def _check_interactions(args: list[str]) -> None:
    for option, value in zip(args, args[1:], strict=False):
        if option in ("-q", "--quadratic", "--interactions", "--cubic"):
            terms = value  # one character per namespace; ":" is the wildcard for "any namespace"
            if len(terms) > _MAX_INTERACTION_ORDER or len(terms) < 2:
                raise InvalidInput(
                    f"{option} {value!r}: interactions combine 2 or 3 namespaces (e.g. CA or CUA)",
                    field="learner.vw_args",
                )


def build_args(learner: Learner) -> list[str]:
    """The full argument list for a policy's `cb_explore_adf` workspace."""
    args = ["--cb_explore_adf", "--quiet"]
    if learner.exploration == "epsilon":
        args += ["--epsilon", str(learner.epsilon if learner.epsilon is not None else DEFAULT_EPSILON)]
    elif learner.exploration == "squarecb":
        gamma = learner.gamma_scale if learner.gamma_scale is not None else DEFAULT_GAMMA_SCALE
        args += ["--squarecb", "--gamma_scale", str(gamma)]
    elif learner.exploration == "softmax":
        args += ["--softmax", "--lambda", str(learner.lambda_ if learner.lambda_ is not None else DEFAULT_LAMBDA)]
    else:
        args += ["--epsilon", "0"]
    extra = parse_extra(learner.vw_args)
    if not any(tok in ("-q", "--quadratic", "--interactions", "--cubic") for tok in extra):
        args += DEFAULT_INTERACTIONS
    given = set(extra)
    for flag, value in zip(DEFAULT_EXTRA[::2], DEFAULT_EXTRA[1::2], strict=True):
        if flag not in given and not (flag == "-l" and "--learning_rate" in given):
            args += [flag, value]
    return args + extra
