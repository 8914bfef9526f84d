"""Multi-process training runs for the tests: a free local port and a launcher command run
with 2 CPU processes, never leaving workers behind."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys


def free_port() -> int:
    """A TCP port nothing listens on (for the rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(launcher: list[str], train_args: list[str], *, timeout: float = 240) -> tuple[int, str]:
    """``python -m <launcher...> -m pixellm.train.main <train_args>`` on CPU (one thread a
    process); its process group is killed when it overstays. Returns (exit status, stderr)."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", *launcher, "-m", "pixellm.train.main", *train_args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:  # never leave the worker processes behind
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, err


def torchrun(port: int) -> list[str]:
    """The torch launcher for 2 local processes."""
    return ["torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port)]
