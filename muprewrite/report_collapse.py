"""Collapsing repeated rows of the report: items whose dotted names differ only in numeric
components (layer indices) and whose other fields agree become one group, named with the
index sets: `blocks.{0..11}.attn.c_attn.weight`.

Several indices collapse into a product only where every combination is a member
(`layers.{0..3}.experts.{0..7}.w1`); a layer that differs stays a row of its own. Correlated
names (a tied tensor's aliases, an edit's weight) collapse with the same index: they must carry
the member's own index wherever it appears, or the items stay apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MARK = "\0"  # stands for the index being merged, inside correlated names


@dataclass
class Group:
    label: str  # the collapsed name
    extras: list  # the collapsed correlated names
    members: list  # the items, in their order


@dataclass
class _Entry:
    tokens: tuple  # name components: str, or frozenset of ints for a numeric component
    extras: tuple  # correlated names, tokenized alike
    key: object
    members: list = field(default_factory=list)


def collapse(items: list, name, key=lambda item: None, extras=lambda item: ()) -> list:
    """Groups of `items` (in the order of their first member); `name(item)` is the dotted name,
    `key(item)` what must agree, `extras(item)` the correlated names."""
    entries = [_Entry(_tokens(name(i)), tuple(_tokens(e) for e in extras(i)), key(i), [i]) for i in items]
    for position in reversed(range(max((len(e.tokens) for e in entries), default=0))):
        entries = _merge_at(entries, position)
    return [Group(_label(e.tokens), [_label(x) for x in e.extras], e.members) for e in entries]


def each(items: list, name, extras=lambda item: ()) -> list:
    """One group per item: the uncollapsed view (--full)."""
    return [Group(name(i), list(extras(i)), [i]) for i in items]


def _tokens(name: str) -> tuple:
    return tuple(frozenset([int(t)]) if t.isdigit() else t for t in name.split("."))


def _merge_at(entries: list, position: int) -> list:
    merged, order = {}, []
    for entry in entries:
        if position >= len(entry.tokens) or not isinstance(entry.tokens[position], frozenset):
            order.append(entry)
            continue
        value = entry.tokens[position]
        rest = entry.tokens[:position] + (None,) + entry.tokens[position + 1:]
        signature = (rest, tuple(_masked(x, value) for x in entry.extras), _hashable(entry.key))
        if signature in merged:
            _absorb(merged[signature], entry, position)
        else:
            merged[signature] = entry
            order.append(entry)
    return order


def _masked(tokens: tuple, value: frozenset) -> tuple:
    return tuple(MARK if t == value else t for t in tokens)


def _absorb(group: _Entry, entry: _Entry, position: int) -> None:
    value, union = group.tokens[position], group.tokens[position] | entry.tokens[position]
    group.tokens = group.tokens[:position] + (union,) + group.tokens[position + 1:]
    group.extras = tuple(tuple(union if t == value else t for t in x) for x in group.extras)
    group.members += entry.members


def _hashable(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value


def _label(tokens: tuple) -> str:
    return ".".join(t if isinstance(t, str) else index_set(t) for t in tokens)


def index_set(values) -> str:
    """{0, 1, 2, 5} -> '{0..2,5}'; a single value stays bare."""
    values = sorted(values)
    if len(values) == 1:
        return str(values[0])
    runs = [[values[0], values[0]]]
    for value in values[1:]:
        if value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return "{" + ",".join(str(a) if a == b else f"{a}..{b}" for a, b in runs) + "}"
