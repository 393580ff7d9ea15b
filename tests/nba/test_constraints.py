"""Hard constraints: static rules, counter rules (cooldown, caps, budget) and the windows they read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import cel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nba.catalog import Action
from nba.constraints import (
    CounterState,
    budget_window_start,
    cel_variables,
    counter_exclusion,
    longest_counter_window,
    static_exclusion,
)
from nba.errors import RuleCompileError
from nba.rules import CEL_FUNCTIONS, CompiledRule, RuleResult
from nba.types import Contact, CustomerState

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def _static(action: Action, customer: CustomerState | None = None, channel: str = "web",
            context: dict[str, object] | None = None, now: datetime = NOW):
    customer = customer or CustomerState("c1")
    rule = CompiledRule(action.eligibility) if action.eligibility else None
    variables = cel_variables(customer, context or {}, now)  # type: ignore[arg-type]
    return static_exclusion("a1", action, rule, channel, customer, variables, now)


def _counters(*contacts: Contact, budget: dict[str, int] | None = None) -> CounterState:
    return CounterState(list(contacts), budget or {})


# -- budget windows -----------------------------------------------------------------------------------


@given(
    now=st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)),
    seconds=st.integers(min_value=1, max_value=3660 * 86400),
)
def test_budget_window_contains_now_and_is_aligned_to_the_epoch(now: datetime, seconds: int) -> None:
    window = timedelta(seconds=seconds)
    start = budget_window_start(now, window)
    assert start <= now < start + window
    assert int(start.timestamp()) % seconds == 0


def test_budget_windows_of_one_day_start_at_midnight_utc() -> None:
    assert budget_window_start(datetime(2026, 11, 24, 23, 59, 59, tzinfo=UTC), timedelta(days=1)) == datetime(
        2026, 11, 24, tzinfo=UTC
    )
    assert budget_window_start(datetime(2026, 11, 25, 0, 0, tzinfo=UTC), timedelta(days=1)) == datetime(
        2026, 11, 25, tzinfo=UTC
    )


# -- static rules -------------------------------------------------------------------------------------


def test_an_action_that_passes_every_static_rule_is_kept() -> None:
    assert _static(Action(channels=["web"], eligibility="customer.id == 'c1'")) is None


def test_inactive_action_is_excluded_before_anything_else() -> None:
    action = Action(channels=["email"], active=False, eligibility="false")
    exclusion = _static(action, CustomerState("c1", opt_outs=["*"]))
    assert exclusion is not None and exclusion.rule == "inactive"


def test_action_not_offered_on_the_channel_is_excluded() -> None:
    exclusion = _static(Action(channels=["email"]), channel="web")
    assert exclusion is not None
    assert (exclusion.action_id, exclusion.rule) == ("a1", "eligibility")  # a rule name API.md lists
    assert "'web'" in exclusion.detail


@pytest.mark.parametrize(
    ("opt_outs", "channel", "excluded", "scope"),
    [
        (["*"], "web", True, "all channels"),
        (["web"], "web", True, "channel 'web'"),
        (["email"], "web", False, None),
        ([], "web", False, None),
    ],
)
def test_opt_out_applies_to_its_channel_or_to_all(
    opt_outs: list[str], channel: str, excluded: bool, scope: str | None
) -> None:
    action = Action(channels=["web", "email"])
    exclusion = _static(action, CustomerState("c1", opt_outs=opt_outs), channel=channel)
    if not excluded:
        assert exclusion is None
    else:
        assert exclusion is not None and exclusion.rule == "opt_out"
        assert scope is not None and scope in exclusion.detail


@pytest.mark.parametrize(
    ("ago", "suppressed"),
    [(timedelta(0), True), (timedelta(days=13, hours=23), True), (timedelta(days=14), False),
     (timedelta(days=30), False)],
)
def test_suppression_lasts_exactly_its_duration(ago: timedelta, suppressed: bool) -> None:
    action = Action(channels=["web"], suppressed_by=[{"event": "complaint_filed", "for": "14d"}])
    customer = CustomerState("c1", last_event_at={"complaint_filed": (NOW - ago).isoformat()})
    exclusion = _static(action, customer)
    if suppressed:
        assert exclusion is not None
        assert exclusion.rule == "suppressed_by:complaint_filed"
        assert "14d" in exclusion.detail
    else:
        assert exclusion is None


def test_suppression_by_an_event_the_customer_never_had_does_not_apply() -> None:
    action = Action(channels=["web"], suppressed_by=[{"event": "complaint_filed", "for": "14d"}])
    customer = CustomerState("c1", last_event_at={"payment_failed": NOW.isoformat()})
    assert _static(action, customer) is None


def test_eligibility_reads_customer_context_action_and_now() -> None:
    action = Action(
        channels=["web"],
        attributes={"min_age": 18},
        eligibility="customer.age >= action.min_age && context.device != 'kiosk' "
        "&& now - customer.last_event_at.signup > duration('1h')",
    )
    signed_up = (NOW - timedelta(hours=2)).isoformat()
    adult = CustomerState("c1", attributes={"age": 30}, last_event_at={"signup": signed_up})
    assert _static(action, adult, context={"device": "mobile"}) is None

    minor = CustomerState("c1", attributes={"age": 17}, last_event_at={"signup": signed_up})
    exclusion = _static(action, minor, context={"device": "mobile"})
    assert exclusion is not None and exclusion.rule == "eligibility"
    assert exclusion.detail.endswith("is false")
    assert _static(action, adult, context={"device": "kiosk"}) is not None
    assert _static(action, adult, context={"device": "mobile"}, now=NOW - timedelta(minutes=90)) is not None


def test_eligibility_that_cannot_be_evaluated_fails_closed() -> None:
    exclusion = _static(Action(channels=["web"], eligibility="customer.age >= 18"), CustomerState("c1"))
    assert exclusion is not None and exclusion.rule == "eligibility"
    assert "could not be evaluated" in exclusion.detail


def test_cel_variables_expose_state_with_times_as_datetimes() -> None:
    customer = CustomerState(
        "c9", attributes={"tier": "gold"}, event_counts={"purchase": 3},
        last_event_at={"purchase": "2026-11-20T08:00:00+00:00"},
    )
    variables = cel_variables(customer, {"page": "home"}, NOW)
    assert variables["customer"]["id"] == "c9"
    assert variables["customer"]["tier"] == "gold"
    assert variables["customer"]["event_counts"] == {"purchase": 3}
    assert variables["customer"]["last_event_at"]["purchase"] == datetime(2026, 11, 20, 8, tzinfo=UTC)
    assert variables["context"] == {"page": "home"} and variables["now"] == NOW


# -- rules --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["", "   ", "1 +", "customer.age >", "foo.x > 1", "customer.age > limit"])
def test_rules_that_do_not_compile_or_read_unknown_variables_are_refused(source: str) -> None:
    with pytest.raises(RuleCompileError):
        CompiledRule(source)


@pytest.mark.parametrize("source", ["nosuchfn(customer.age)", "customer.name.lowerAscii() == 'x'",
                                    "max(customer.age, 1) > 2", "context.tags.exists(t, bool(t))"])
def test_rules_calling_functions_cel_does_not_define_are_refused(source: str) -> None:
    rule = CompiledRule(source)  # a stored rule still loads (and fails closed when evaluated) ...
    assert rule.evaluate({"customer": {"age": 20, "name": "x"}, "context": {"tags": ["a"]}}).failed
    with pytest.raises(RuleCompileError, match="unknown function"):  # ... but a client cannot save one
        rule.check_functions()


# Each function `CEL_FUNCTIONS` allows, called once: should the CEL runtime drop one, this fails, not a decision.
CALLS_OF_EVERY_FUNCTION = [
    "size(context.page) == 4 && context.page.size() == 4",
    "context.page.contains('om') && context.page.startsWith('h') && context.page.endsWith('e')",
    "context.page.matches('^h.*e$')",
    "int('1') == 1 && uint(1) == 1u && double(1) == 1.0 && string(1) == '1' && bytes('a') == b'a'",
    "dyn(1) == 1 && type(1) == int",
    "timestamp('2026-01-01T00:00:00Z') < now && duration('2h') > duration('1m')",
    "now.getFullYear() == 2026 && now.getMonth() == 10 && now.getDayOfYear() == 327",
    "now.getDayOfMonth() == 23 && now.getDate() == 24 && now.getDayOfWeek() == 2",
    "now.getHours() == 10 && now.getMinutes() == 0 && now.getSeconds() == 0 && now.getMilliseconds() == 0",
    "optional.of(1).hasValue() && optional.of(1).value() == 1 && optional.none().orValue(2) == 2",
    "optional.none().or(optional.ofNonZeroValue(1)).hasValue()",
]


def test_every_allowed_function_is_defined_by_the_cel_runtime() -> None:
    called = set()
    for source in CALLS_OF_EVERY_FUNCTION:
        rule = CompiledRule(source)
        rule.check_functions()
        assert rule.evaluate({"context": {"page": "home"}, "now": NOW}) == RuleResult(True, f"{source} is true")
        called |= set(cel.compile(source).functions())
    assert CEL_FUNCTIONS <= called


def test_a_rule_that_is_not_boolean_does_not_pass() -> None:
    result = CompiledRule("customer.age + 1").evaluate({"customer": {"age": 20}})
    assert not result.passed
    assert "not a bool" in result.detail


# -- counter rules ------------------------------------------------------------------------------------


def test_no_contacts_and_no_budget_use_means_no_exclusion() -> None:
    action = Action(channels=["web"], caps=[{"per": "customer", "limit": 1, "window": "1d"}], cooldown="1h",
                    budget={"limit": 1, "window": "1d"})
    assert counter_exclusion("a1", action, "web", _counters(), NOW) is None


@pytest.mark.parametrize(("ago", "excluded"), [(timedelta(minutes=59), True), (timedelta(hours=1), False)])
def test_cooldown_runs_from_the_last_contact(ago: timedelta, excluded: bool) -> None:
    action = Action(channels=["web"], cooldown="1h")
    counters = _counters(Contact("a1", "web", NOW - timedelta(days=3)), Contact("a1", "email", NOW - ago))
    exclusion = counter_exclusion("a1", action, "web", counters, NOW)
    assert (exclusion is not None) == excluded
    if exclusion is not None:
        assert exclusion.rule == "cooldown"


def test_cap_per_customer_counts_every_channel_but_only_this_action() -> None:
    action = Action(channels=["web", "email"], caps=[{"per": "customer", "limit": 2, "window": "7d"}])
    one = _counters(Contact("a1", "email", NOW - timedelta(days=1)), Contact("other", "web", NOW))
    assert counter_exclusion("a1", action, "web", one, NOW) is None
    two = _counters(Contact("a1", "email", NOW - timedelta(days=1)), Contact("a1", "web", NOW - timedelta(days=6)))
    exclusion = counter_exclusion("a1", action, "web", two, NOW)
    assert exclusion is not None
    assert exclusion.rule == "cap:customer:7d"
    assert exclusion.detail == "2 of 2 per customer in 7d used"


def test_cap_per_customer_channel_counts_only_that_channel() -> None:
    action = Action(channels=["web", "email"], caps=[{"per": "customer_channel", "limit": 1, "window": "1d"}])
    counters = _counters(Contact("a1", "email", NOW - timedelta(hours=1)))
    assert counter_exclusion("a1", action, "web", counters, NOW) is None
    exclusion = counter_exclusion("a1", action, "email", counters, NOW)
    assert exclusion is not None and exclusion.rule == "cap:customer_channel:1d"


def test_a_contact_exactly_one_window_ago_no_longer_counts() -> None:
    action = Action(channels=["web"], caps=[{"per": "customer", "limit": 1, "window": "1d"}])
    assert counter_exclusion("a1", action, "web", _counters(Contact("a1", "web", NOW - timedelta(days=1))), NOW) is None
    inside = _counters(Contact("a1", "web", NOW - timedelta(days=1) + timedelta(milliseconds=1)))
    assert counter_exclusion("a1", action, "web", inside, NOW) is not None


def test_budget_excludes_once_its_limit_is_used() -> None:
    action = Action(channels=["web"], budget={"limit": 3, "window": "1d"})
    assert counter_exclusion("a1", action, "web", _counters(budget={"a1": 2}), NOW) is None
    exclusion = counter_exclusion("a1", action, "web", _counters(budget={"a1": 3, "other": 0}), NOW)
    assert exclusion is not None and exclusion.rule == "budget:1d"
    assert exclusion.detail == "3 of 3 per 1d used"
    assert counter_exclusion("a1", action, "web", _counters(budget={"other": 99}), NOW) is None


def test_a_budget_of_zero_excludes_always() -> None:
    action = Action(channels=["web"], budget={"limit": 0, "window": "1h"})
    exclusion = counter_exclusion("a1", action, "web", _counters(), NOW)
    assert exclusion is not None and exclusion.rule == "budget:1h"


def test_longest_counter_window_covers_every_cap_and_cooldown() -> None:
    assert longest_counter_window([]) == timedelta(0)
    assert longest_counter_window([Action(channels=["web"], budget={"limit": 1, "window": "30d"})]) == timedelta(0)
    actions = [
        Action(channels=["web"], caps=[{"per": "customer", "limit": 1, "window": "1d"},
                                       {"per": "customer_channel", "limit": 3, "window": "7d"}]),
        Action(channels=["web"], cooldown="10d"),
        Action(channels=["web"], cooldown="2h", caps=[{"per": "customer", "limit": 1, "window": "36h"}]),
    ]
    assert longest_counter_window(actions) == timedelta(days=10)
    assert longest_counter_window(actions[:1]) == timedelta(days=7)


# -- the invariant: a capped action is never over its cap ---------------------------------------------


@settings(max_examples=150)
@given(
    limit=st.integers(min_value=1, max_value=4),
    window_hours=st.integers(min_value=1, max_value=48),
    channel_limit=st.integers(min_value=1, max_value=3),
    attempts=st.lists(
        st.tuples(st.integers(min_value=0, max_value=20 * 3600), st.sampled_from(["web", "email"])),
        min_size=1, max_size=60,
    ),
)
def test_a_capped_action_is_never_over_its_cap(
    limit: int, window_hours: int, channel_limit: int, attempts: list[tuple[int, str]]
) -> None:
    """Offer the action whenever the rules allow; every window of every cap then holds at most its limit."""
    action = Action(
        channels=["web", "email"],
        caps=[{"per": "customer", "limit": limit, "window": f"{window_hours}h"},
              {"per": "customer_channel", "limit": channel_limit, "window": "1h"}],
    )
    contacts: list[Contact] = []
    now = NOW
    for gap_seconds, channel in attempts:
        now += timedelta(seconds=gap_seconds)
        exclusion = counter_exclusion("a1", action, channel, _counters(*contacts), now)
        if exclusion is None:
            contacts.append(Contact("a1", channel, now))
        else:  # and never stricter than the caps: the rule it names is full
            cap = next(c for c in action.caps if c.rule == exclusion.rule)
            used = [c for c in contacts if now - cap.window_delta < c.at
                    and (cap.per == "customer" or c.channel == channel)]
            assert len(used) >= cap.limit
    for contact in contacts:
        for cap in action.caps:
            in_window = [
                c for c in contacts
                if contact.at - cap.window_delta < c.at <= contact.at
                and (cap.per == "customer" or c.channel == contact.channel)
            ]
            assert len(in_window) <= cap.limit
