"""Decode workers notice a dead main process (issue 29, 6): killed by SIGKILL or the OOM killer
while its workers wait at the gate, it must not leave them alive, holding their memory."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import train_tiny_run

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

SRC = Path(__file__).resolve().parents[1] / "src"

# The extraction pipeline's loop (graftwork.features.pipeline.gated_stream) with 2 decode
# workers, whose compute step never ends: the gate stays closed, the workers wait at it.
SCRIPT = textwrap.dedent("""
    import multiprocessing, time
    import torch
    from graftwork.features.pipeline import gated_stream

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 100_000
        def __getitem__(self, i):
            return torch.zeros(2, 2, 3, dtype=torch.uint8), 0, i, ""

    def bind():
        def run(x):
            time.sleep(1.0)  # the workers fetch their next items and reach the gate
            print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
            time.sleep(600)
        return run

    for _ in gated_stream(Items(), 8, 2, False, "test", bind):
        pass
""")


# The training loader (Session.loader, no gate) with its decode workers, whose transform never
# returns: the workers are blocked inside a task, where torch's own check never runs.
LOADER_SCRIPT = textwrap.dedent("""
    import multiprocessing, sys, time
    from graftwork.data.discover import Sample
    from graftwork.estimator.classifier import ImageClassifier

    def stuck(img):
        time.sleep(600)

    run, image = sys.argv[1], sys.argv[2]
    session = ImageClassifier.load(run).session_
    loader = iter(session.loader([Sample(image, 0)] * 64, stuck, 8))
    time.sleep(3.0)  # both workers are inside a task
    print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
    next(loader)
""")


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit is reaped by init, which may be slow)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next((line for line in status.splitlines() if line.startswith("State:")), "")
    return "Z" not in state.split()[1:2]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("orphans"))


@pytest.mark.parametrize("where", ["gate", "task"])
def test_decode_workers_exit_when_their_main_process_is_killed(where: str, run: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    image = next((run.parent / "data" / "test").rglob("*.png"))
    args = ["-c", SCRIPT] if where == "gate" else ["-c", LOADER_SCRIPT, str(run), str(image)]
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True,
                            env=env)
    workers: list[int] = []
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        workers = [int(p) for p in line.split()]
        assert workers, line
        assert all(_running(pid) for pid in workers)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 5.0
        while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if _running(pid)], "orphaned decode workers"
    finally:
        proc.kill()
        for pid in workers:  # on failure: do not leave them behind
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
