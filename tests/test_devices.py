"""Device and precision resolution (availability monkeypatched; no GPU needed)."""
from __future__ import annotations

import logging
from collections import namedtuple

import pytest
import torch

from graftwork.training import devices
from graftwork.training.devices import (Precision, cpu_features, cpu_has_native_bf16, loader_kwargs,
                                        resolve_device, resolve_precision, to_device)
from graftwork.errors import ConfigError


def _machine(mp: pytest.MonkeyPatch, cuda: int = 0, mps: bool = False,
             cuda_bf16: bool = True, cpu_bf16: bool | str | None = None) -> None:
    """``cpu_bf16``: the CPU's native-bf16 flag (True: avx512_bf16; False: none)."""
    mp.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    mp.setattr(torch.cuda, "device_count", lambda: cuda)
    mp.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
    mp.setattr(torch.backends.mps, "is_available", lambda: mps)
    if cpu_bf16 is not None:
        flag = "avx512_bf16" if cpu_bf16 is True else cpu_bf16 or None
        mp.setattr(devices, "_native_bf16_flag", lambda: flag)


@pytest.mark.parametrize(("cuda", "mps", "want"), [
    (0, False, "cpu"), (0, True, "mps"), (1, False, "cuda"), (2, True, "cuda")])
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, want):
    _machine(monkeypatch, cuda=cuda, mps=mps)
    assert resolve_device("auto").type == want
    assert resolve_device().type == want


def test_explicit_devices_validated(monkeypatch):
    _machine(monkeypatch, cuda=2)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("CUDA") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError) as err:
        resolve_device("cuda:2")
    assert "--device cuda:2" in err.value.message and "only 2 CUDA devices" in err.value.message
    assert "cuda:0, cuda:1" in err.value.message and "--device cpu" in err.value.fix


def test_missing_cuda_and_mps_name_what_exists(monkeypatch):
    _machine(monkeypatch)
    for spec in ("cuda", "cuda:0", "mps"):
        with pytest.raises(ConfigError) as err:
            resolve_device(spec)
        assert f"--device {spec}" in err.value.message
        assert "devices here: cpu" in err.value.message
        assert "use --device cpu" in err.value.fix


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "tpu", "cpu:1", "cuda:-1", ""])
def test_bad_device_strings(monkeypatch, spec):
    _machine(monkeypatch, cuda=1)
    if spec == "":  # empty means auto
        assert resolve_device(spec).type == "cuda"
        return
    with pytest.raises(ConfigError, match="--device"):
        resolve_device(spec)


# (device, cpu_bf16, cuda_bf16) -> name, autocast dtype, scaler
MATRIX = [
    ("cpu", "amx_bf16", True, "bf16", torch.bfloat16, False),
    ("cpu", "amx_tile", True, "bf16", torch.bfloat16, False),
    ("cpu", "avx512_bf16", True, "fp32", None, False),  # measured: bf16 trains no faster
    ("cpu", False, True, "fp32", None, False),
    ("cuda", False, True, "bf16", torch.bfloat16, False),
    ("cuda", True, False, "fp16", torch.float16, True),
    ("mps", True, True, "fp32", None, False),
]


@pytest.mark.parametrize(("dev", "cpu_bf16", "cuda_bf16", "name", "dtype", "scaler"), MATRIX)
def test_auto_precision_matrix(monkeypatch, dev, cpu_bf16, cuda_bf16, name, dtype, scaler):
    _machine(monkeypatch, cuda=1, mps=True, cuda_bf16=cuda_bf16, cpu_bf16=cpu_bf16)
    p = resolve_precision("auto", torch.device(dev))
    assert (p.name, p.autocast_dtype, p.use_grad_scaler) == (name, dtype, scaler)
    assert p.reason
    assert p.describe(torch.device(dev)) == {"device": dev, "precision": name, "reason": p.reason}
    assert p.describe() == p.describe(dev)


def test_explicit_precisions(monkeypatch, caplog):
    _machine(monkeypatch, cuda=1, mps=True, cpu_bf16=False)
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu).autocast_dtype is None
    with caplog.at_level(logging.WARNING, logger="graftwork.devices"):
        p = resolve_precision("bf16", cpu)
    assert p.name == "bf16" and "slow" in caplog.text
    with pytest.raises(ConfigError) as err:
        resolve_precision("fp16", cpu)
    assert "bf16 or fp32" in err.value.fix
    with pytest.raises(ConfigError, match="unknown precision"):
        resolve_precision("int8", cpu)
    cuda = torch.device("cuda", 0)
    assert resolve_precision("fp16", cuda).use_grad_scaler
    assert resolve_precision("bf16", cuda).name == "bf16"
    mps = resolve_precision("fp16", torch.device("mps"))
    assert mps.name == "fp16" and not mps.use_grad_scaler


def test_bf16_on_old_cuda_is_an_error(monkeypatch):
    _machine(monkeypatch, cuda=1, cuda_bf16=False)
    with pytest.raises(ConfigError, match="does not support bf16"):
        resolve_precision("bf16", torch.device("cuda"))


def test_this_machine_auto(monkeypatch):
    """On this machine's CPU, auto trains in bf16 only with AMX, and says why."""
    p = resolve_precision("auto", torch.device("cpu"))
    feats = cpu_features()
    assert p.name == ("bf16" if {"amx_bf16", "amx_tile"} & feats else "fp32")
    if "avx512_bf16" in feats and p.name == "fp32":
        assert "no AMX" in p.reason


def test_cpu_features_detected():
    feats = cpu_features()
    assert isinstance(feats, frozenset)
    assert any(f.startswith("torch:") for f in feats)
    assert cpu_has_native_bf16() == bool({"avx512_bf16", "amx_bf16", "amx_tile"} & feats)


def test_autocast_and_scaler_on_cpu():
    cpu = torch.device("cpu")
    lin = torch.nn.Linear(4, 2)
    x = torch.randn(3, 4)
    with Precision("bf16", torch.bfloat16).autocast(cpu):
        assert lin(x).dtype == torch.bfloat16
    with Precision("fp32").autocast(cpu):
        assert lin(x).dtype == torch.float32
    assert Precision("fp32").grad_scaler(cpu) is None
    assert Precision("bf16", torch.bfloat16).grad_scaler(cpu) is None
    assert isinstance(Precision("fp16", torch.float16, True).grad_scaler("cpu"),
                      torch.amp.GradScaler)


def test_to_device_nested_and_loader_kwargs():
    Pair = namedtuple("Pair", "a b")
    batch = {"x": torch.ones(2), "y": [torch.zeros(1), "name"], "p": Pair(torch.ones(1), 3)}
    out = to_device(batch, "cpu")
    assert torch.equal(out["x"], batch["x"]) and out["y"][1] == "name"
    assert isinstance(out["p"], Pair) and out["p"].b == 3
    assert loader_kwargs(torch.device("cpu")) == {"pin_memory": False}
    assert loader_kwargs(torch.device("cuda", 0)) == {"pin_memory": True}


def test_gpu_check_script_parses_and_fails_fast_without_gpu(tmp_path):
    import shutil
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    assert subprocess.run([bash, "-n", str(script)], capture_output=True).returncode == 0
    if shutil.which("nvidia-smi") or Path("/dev/nvidia0").exists():
        return
    res = subprocess.run([bash, str(script)], capture_output=True, text=True, timeout=30,
                         env={"PATH": "/usr/bin:/bin", "WORK": str(tmp_path)})
    assert res.returncode != 0 and "CUDA" in res.stderr
