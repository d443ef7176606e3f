"""Training checkpoints on disk: written atomically, and refused when they were saved by another
model or trained on other data or settings (the resume fingerprint)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from graftwork.rundir.files import atomic_file

__all__ = ["save_checkpoint", "load_checkpoint"]


def save_checkpoint(obj: dict[str, Any], path: Path) -> None:
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path, model: nn.Module,
                     fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
    """A checkpoint saved by ``fit`` (no pickled code runs); ``ModelFileError`` if unusable,
    ``ResumeMismatchError`` if it was written for other data or settings."""
    from graftwork.errors import ModelFileError, ResumeMismatchError

    fix = f"delete {str(path)!r} (or run without --resume) to start this phase afresh"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        _check_fingerprint(path, state.get("fingerprint") or {}, fingerprint or {})
        wanted = model.state_dict()
        if set(state["model"]) != set(wanted) or any(
                state["model"][k].shape != v.shape for k, v in wanted.items()):
            raise ModelFileError(f"checkpoint {str(path)!r} was saved by a different model",
                                 "resume with the options of the interrupted run, or " + fix)
        for key in ("optimizer", "rng", "history", "best_state", "best_epoch", "best_val",
                    "epoch", "bad_epochs", "elapsed"):
            state[key]  # noqa: B018  (KeyError if missing)
    except (ModelFileError, ResumeMismatchError):
        raise
    except Exception as exc:  # truncated, tampered, or not a checkpoint at all
        raise ModelFileError(f"checkpoint {str(path)!r} is corrupt: "
                             f"{(str(exc).splitlines() or [type(exc).__name__])[0][:200]}",
                             fix) from exc
    return state


def _check_fingerprint(path: Path, saved: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Refuse to resume from a checkpoint trained on other data or with other settings."""
    from graftwork.errors import ResumeMismatchError

    if not wanted:
        return
    if not saved:
        raise ResumeMismatchError(f"checkpoint {str(path)!r} does not say what it was trained on "
                                  "(written by an older graftwork)",
                                  "run without --resume (or with --overwrite) to start afresh")
    differ = [k for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
    if differ:
        detail = "; ".join(f"{k}: {_short(saved.get(k))} then, {_short(wanted.get(k))} now"
                           for k in differ[:4])
        raise ResumeMismatchError(f"cannot resume: the checkpoint in {str(path.parent)!r} was "
                                  f"trained on something else ({detail})",
                                  "resume with the same data and options, or pass --overwrite "
                                  "to train afresh into this --out")


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."
