"""An immutable, compiled view of the catalog at one version, shared by every request that reads it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from nba.catalog import Action, EventType, Policy
from nba.errors import ActionNotFound, NoPolicyForChannel
from nba.rules import CompiledRule, Selection, merge_selections


@dataclass(frozen=True)
class CatalogView:
    """Actions, policies and event types with rules compiled and channel lookups precomputed."""

    version: int
    actions: Mapping[str, Action]
    policies: Mapping[str, tuple[int, Policy]]
    event_types: Mapping[str, EventType]
    rules: Mapping[str, CompiledRule] = field(default_factory=dict)
    channel_actions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    channel_policy: Mapping[str, str] = field(default_factory=dict)
    # What any eligibility rule reads (variables and their fields): all a decision converts for CEL.
    rule_selection: Selection = field(default_factory=dict)
    event_types_version: int = 0  # changes with the event types only (see catalog_repo)

    @classmethod
    def build(
        cls,
        version: int,
        actions: Mapping[str, Action],
        policies: Mapping[str, tuple[int, Policy]],
        event_types: Mapping[str, EventType],
        event_types_version: int = 0,
    ) -> CatalogView:
        rules = {aid: CompiledRule(a.eligibility, attributes=a.attributes) for aid, a in actions.items()
                 if a.eligibility}
        by_channel: dict[str, list[str]] = {}
        for aid in sorted(actions):
            for channel in actions[aid].channels:
                by_channel.setdefault(channel, []).append(aid)
        channel_policy = {ch: name for name, (_, p) in policies.items() for ch in p.channels}
        return cls(
            version=version,
            actions=dict(actions),
            policies=dict(policies),
            event_types=dict(event_types),
            rules=rules,
            channel_actions={ch: tuple(ids) for ch, ids in by_channel.items()},
            channel_policy=channel_policy,
            rule_selection=merge_selections(rule.selection for rule in rules.values()),
            event_types_version=event_types_version,
        )

    def policy_for(self, channel: str) -> tuple[str, int, Policy]:
        name = self.channel_policy.get(channel)
        if name is None:
            raise NoPolicyForChannel(f"no policy serves channel {channel!r}", field="channel")
        version, policy = self.policies[name]
        return name, version, policy

    def candidates(self, channel: str, requested: list[str] | None) -> list[str]:
        """The candidate action ids for a request: the channel's actions, or the requested ones (all known)."""
        if requested is None:
            return list(self.channel_actions.get(channel, ()))
        unknown = [aid for aid in requested if aid not in self.actions]
        if unknown:
            raise ActionNotFound(f"unknown candidate action(s): {unknown}", field="candidates")
        return list(dict.fromkeys(requested))
