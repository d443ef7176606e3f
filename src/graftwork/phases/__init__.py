"""Training strategies: one :class:`Phase` class per strategy, registered by name.

To add a strategy, write one ``Phase`` subclass in a module of its own (see
:mod:`graftwork.phases.base` for the protocol and ``extract.py``, ``frozen.py``, ``finetune.py``
for examples) and register it with ``register_phase``; it becomes a choice of ``--strategy``.
Sequences of phases are strategies too (``ladder``), registered with ``register_strategy``.
"""
from __future__ import annotations

from graftwork.errors import ConfigError
from graftwork.phases.base import Phase, PhaseContext, PhaseDefaults, PhasePlan
from graftwork.phases.extract import Extract
from graftwork.phases.finetune import Finetune
from graftwork.phases.frozen import Frozen
from graftwork.registry import Registry

__all__ = ["Phase", "PhaseContext", "PhaseDefaults", "PhasePlan", "register_phase",
           "register_strategy", "get_phase", "plan", "strategy_names", "PHASES", "SEQUENCES"]

PHASES: Registry[type[Phase]] = Registry("phase")
SEQUENCES: Registry[tuple[str, ...]] = Registry("strategy", flag="--strategy")


def register_phase(cls: type[Phase]) -> type[Phase]:
    """Register a phase class under ``cls.name`` (usable as a class decorator)."""
    if not cls.name:
        raise ValueError("a phase needs a name")
    PHASES[cls.name] = cls
    return cls


def register_strategy(name: str, phases: tuple[str, ...]) -> None:
    """A named sequence of phases, each warm-starting the next (like ``ladder``)."""
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise ValueError(f"unknown phases {unknown}")
    SEQUENCES[name] = tuple(phases)


def strategy_names() -> list[str]:
    """Every ``--strategy`` choice: single phases, then sequences."""
    return [*PHASES, *SEQUENCES]


def get_phase(name: str) -> Phase:
    if name not in PHASES:
        raise ConfigError(f"unknown phase {name!r}", f"choose one of {', '.join(PHASES)}")
    return PHASES[name]()


def plan(strategy: str) -> list[Phase]:
    """The phases a strategy runs, in order: a sequence, or one phase after its warm-up."""
    if strategy in SEQUENCES:
        names: tuple[str, ...] = SEQUENCES[strategy]
    elif strategy in PHASES:
        names = (*PHASES[strategy].warmup, strategy)
    else:
        raise ConfigError(f"unknown strategy {strategy!r}",
                          f"choose one of {', '.join(strategy_names())}")
    return [get_phase(n) for n in names]


for _cls in (Extract, Frozen, Finetune):
    register_phase(_cls)
register_strategy("ladder", ("extract", "frozen", "finetune"))
