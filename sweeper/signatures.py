"""A config section's keys (and the sweeper's, hydra.sweeper) bound to the signature of the object its `_target_` names.

A section that builds an object (model, optim, loss, schedule, data) may name a user's class or
function. Its YAML keys are that callable's arguments: a key it does not take, or an argument
without a default that no key gives, is refused before launch in one line naming the accepted
arguments. The keys the loop reads (build.NOT_ARGUMENTS) and the values build passes at run time
are not the YAML's to give.
"""

from __future__ import annotations

import importlib
import inspect

from omegaconf import DictConfig, OmegaConf

from sweeper import build, user_data

# What build passes each section's target at run time; the data section's own keys, which
# sweeper.data reads around the user's loader (every other key goes to the loader).
RUNTIME = {section: set(names) for section, names in build.RUNTIME.items()} | {
    "data": set(user_data.OWN_KEYS)
}
READ_AROUND = {"data": set(user_data.OWN_KEYS)}  # a section's keys that the YAML gives, but not to its target
OWN = "sweeper."  # the project's own classes and functions


def _locate(path: str):
    """The object at a dotted path (module.Class, package.module.function), as instantiate finds
    it. Hydra's own get_object logs its error over several lines before raising it, and names
    a missing attribute as a missing module."""
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:i])
        try:
            found = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and (name == e.name or name.startswith(e.name + ".")):
                continue  # no such module: the path's module is shorter
            raise  # the module imports another one that is missing
        for attribute in parts[i:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(f"No module named '{parts[0]}'")


def problem(cfg: DictConfig, section: str) -> str | None:
    """Why `section`'s keys do not fit its `_target_`'s signature, in one line; None where they
    do, or where the signature cannot say (a builtin, or **kwargs, which takes any key)."""
    path = OmegaConf.select(cfg, f"{section}._target_", throw_on_missing=False)
    if path is None:
        return None
    try:
        target = _locate(str(path))
    except Exception as e:  # noqa: BLE001 -- a user's module may raise anything while it imports
        why = (str(e).strip().splitlines() or [""])[0]
        return f"{section}._target_={path} is invalid: it cannot be imported ({type(e).__name__}: {why})"
    if str(path).startswith(OWN):
        return None  # the project's own: checked by their schema (sweeper.validate)
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: the job's call says
        return None
    runtime = RUNTIME.get(section, set())
    named = [p for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    accepted = [p.name for p in named if p.name not in runtime]
    takes = f"it takes {', '.join(accepted)}" if accepted else "it takes none"
    given = [  # the data section's own keys (seed, val_size, ...) are read around the loader, not given to it
        str(k)
        for k in OmegaConf.select(cfg, section)
        if not str(k).startswith("_")
        and k not in build.NOT_ARGUMENTS
        and k not in READ_AROUND.get(section, ())
    ]
    if not any(p.kind is p.VAR_KEYWORD for p in parameters):
        for key in given:
            if key not in accepted:
                return f"{section}.{key} is not an argument of {path}: {takes}"
    for p in named:
        if p.default is p.empty and p.name not in runtime and p.name not in given:
            return f"{section}.{p.name} is missing: {path} has no default for it; add +{section}.{p.name}=..."
    return None
