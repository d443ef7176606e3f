"""Every ``ImageClassifier`` parameter checked before any work: the ranges and choices of the
one options table (:mod:`graftwork.params`), the strategy's phases and their options, the
device, class weights and ``unfreeze``. Used by ``fit`` and by ``graft train`` (before --out)."""
from __future__ import annotations

from typing import Any

from graftwork.errors import ConfigError
from graftwork.params import check_choices, check_params
from graftwork.phases import Phase, plan
from graftwork.phases.base import check_phase_options
from graftwork.training.devices import Runtime

__all__ = ["validate_params"]


def validate_params(params: dict[str, Any]) -> list[Phase]:
    """``ConfigError`` for the first parameter that is not allowed; else the strategy's phases
    (planned here, once per fit)."""
    check_params(params)
    phases = plan(params["strategy"])  # ConfigError for an unknown strategy
    check_phase_options(params.get("phase_options"), [p.name for p in phases])
    Runtime.resolve(params["device"], params["precision"])  # ConfigError for a bad --device
    check_choices(params)  # engine, head, optimizer, schedule, augment_policy
    weights = params.get("class_weights")
    if not (weights is None or weights == "auto" or isinstance(weights, dict)):
        raise ConfigError(f"class_weights={weights!r} must be None, 'auto' or a mapping of "
                          "class name to weight", """pass --class-weights auto or '{"cat": 2}'""")
    if params.get("refit") and params.get("calibrate"):
        raise ConfigError("calibrate fits its temperature on the validation images, which refit "
                          "then trains on", "drop --calibrate or --refit")
    unfreeze = params["unfreeze"]
    if unfreeze not in ("all", "auto") and (not isinstance(unfreeze, int)
                                            or isinstance(unfreeze, bool) or unfreeze < 0):
        raise ConfigError(f"unfreeze={unfreeze!r} must be a whole number of blocks, 'all' or "
                          "'auto'", "pass e.g. --unfreeze 2, --unfreeze all or --unfreeze auto")
    return phases
