"""stamp: the representative's plan entries written onto every copy of a repeated block.

Reads:  a `Plan` made from a graph holding each distinct block once, the copies
        (passes/repeats.py) and the model's parameter order.
Returns: a new plan, the given one with every copy's parameters, uses, edits and warnings under the copy's
        names (a copy's entries name its representative's graph nodes; a tensor tied into every
        copy keeps its one entry, with each copy's uses), in the model's order, and `plan.repeats`.
"""

from __future__ import annotations

import dataclasses

from .repeats import inside



def stamp(plan, copies: dict, order: list):
    """A new plan: `plan` (made from a graph holding each distinct block once) with every copy's
    parameters, uses, edits and warnings, named as the copy; parameters in `order` (the model's own).
    Copies inside a representative first, so a copy of that representative gets theirs too."""
    rank = {name: i for i, name in enumerate(order)}
    parameters, edits, warnings = plan.parameters, plan.edits, plan.warnings
    for representative in sorted(set(copies.values()), key=lambda path: path.count("."), reverse=True):
        by_representative = {representative: [c for c, r in copies.items() if r == representative]}
        parameters = _stamped_parameters(parameters, by_representative)
        canonical = {alias: name for name, entry in parameters.items() for alias in entry.aliases}
        edits = _stamped_edits(edits, by_representative, canonical)
        warnings = [_stamped_warning(w, by_representative, rank, parameters) for w in warnings]
    parameters = dict(sorted(parameters.items(), key=lambda item: rank.get(item[0], len(rank))))
    return dataclasses.replace(plan, parameters=parameters, edits=edits, warnings=warnings, repeats=dict(copies))


def _stamped_parameters(parameters: dict, by_representative: dict) -> dict:
    (representative, copy_paths), = by_representative.items()
    stamped = {}
    for name, entry in parameters.items():
        if not inside(name, representative) or _shared_with_copies(name, entry, representative, copy_paths):
            stamped[name] = _with_copied_uses(entry, by_representative)  # one tensor: its entry, used in each
            continue
        stamped[name] = entry
        for copy_path in copy_paths:
            stamped[_renamed(name, representative, copy_path)] = _renamed_param(entry, representative, copy_path)
    return stamped


def _shared_with_copies(name: str, entry, representative: str, copy_paths: list) -> bool:
    """Whether the tensor is the copies' own at the same place (passes/repeats.py: tied into each)."""
    return any(_renamed(name, representative, copy_path) in entry.aliases for copy_path in copy_paths)


def _owner(name: str, by_representative: dict) -> str | None:
    return next((r for r in by_representative if inside(name, r)), None)


def _renamed(name: str, representative: str, copy_path: str) -> str:
    return copy_path + name[len(representative):] if inside(name, representative) else name


def _renamed_param(entry, representative: str, copy_path: str):
    entry = _copied(entry)
    entry.uses = [use for use in entry.uses if inside(use["module"], representative)]
    entry.uses = [{**use, "module": _renamed(use["module"], representative, copy_path)} for use in entry.uses]
    entry.aliases = [_renamed(alias, representative, copy_path) for alias in entry.aliases]
    return entry


def _copied(record):
    """A plan record (ParamPlan, Edit) sharing nothing mutable with `record`: its fields are JSON
    data (copy.deepcopy was a tenth of an 80-layer analysis)."""
    return dataclasses.replace(record, **{f.name: _json_copy(getattr(record, f.name)) for f in dataclasses.fields(record)})


def _json_copy(value):
    if isinstance(value, dict):
        return {key: _json_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_json_copy(item) for item in value)
    return value


def _with_copied_uses(entry, by_representative: dict):
    """A parameter from outside the blocks used inside a representative is used inside each of
    its copies as well."""
    uses = []
    for use in entry.uses:
        uses.append(use)
        representative = _owner(use["module"], by_representative)
        if representative is not None:
            uses += [{**use, "module": _renamed(use["module"], representative, c)} for c in by_representative[representative]]
    return dataclasses.replace(entry, uses=uses)


def _stamped_edits(edits: list, by_representative: dict, canonical: dict) -> list:
    """Each run of consecutive edits inside one representative, followed by the same run for each
    of its copies in order (the order a capture of every block gives)."""
    stamped, run, run_of = [], [], None
    for edit in edits + [None]:
        owner = None if edit is None else _owner(edit.module, by_representative)
        if run and owner != run_of:
            stamped += [e for copy_path in by_representative[run_of]
                        for e in _renamed_edits(run, run_of, copy_path, canonical)]
            run = []
        if edit is None:
            break
        stamped.append(edit)
        if owner is not None:
            run.append(edit)
        run_of = owner
    return stamped


def _renamed_edits(run: list, representative: str, copy_path: str, canonical: dict) -> list:
    """The run's edits in the copy; a parameter they name by its first name (a tensor tied into
    every block is named as in the representative)."""
    def renamed_param(name: str) -> str:
        name = _renamed(name, representative, copy_path)
        return canonical.get(name, name)

    renamed = []
    for edit in run:
        edit = _copied(edit)
        edit.module = _renamed(edit.module, representative, copy_path)
        edit.param = None if edit.param is None else renamed_param(edit.param)
        for place in (edit.fold or {}).get("into", []):
            place["param"] = renamed_param(place["param"])
        renamed.append(edit)
    return renamed


def _stamped_warning(warning, by_representative: dict, rank: dict, parameters: dict):
    """A warning's subjects inside a representative, for each copy too: a parameter under the
    copy's name (unless tied into the copy: one tensor, named once), a graph node as "node@copy"
    located in the copy's module."""
    subjects, locations = [], dict(warning.locations)
    for subject in warning.subjects:
        subjects.append(subject)
        location = warning.locations.get(subject)
        representative = _owner(location["module"] if location else subject, by_representative)
        for copy_path in by_representative.get(representative, []):
            if location is None:
                subjects += [name for name in [_renamed(subject, representative, copy_path)] if name in parameters]
                continue
            module = _renamed(location["module"], representative, copy_path)
            subjects.append(f"{subject.split('@')[0]}@{module}")
            locations[subjects[-1]] = {**location, "module": module}
    if all(subject in rank for subject in subjects):  # parameters: in the model's order, as lint lists them
        subjects.sort(key=rank.get)
    elif warning.subjects == sorted(warning.subjects):
        subjects.sort()
    return dataclasses.replace(warning, subjects=subjects, locations=locations)
