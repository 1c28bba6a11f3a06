"""Starting a tensor-parallel calibration: one process per device through torchrun, with NVLink multicast off in
every child's environment. Importing this module imports neither torch nor transformers."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

# NVLink SHARP / multicast objects stay off in every process a tensor-parallel run starts: NCCL's NVLS algorithms,
# PyTorch symmetric memory's multicast, NVSHMEM's NVLS. A replica's all-reduces then take NCCL's ring or tree paths.
# the engines a replica can be sharded in, and how its random weights are made (tensor_parallel.py)
ENGINES = ("hf", "hf-static", "hf-graph")
INITS = ("auto", "replicated", "sharded")
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


@dataclass(frozen=True)
class Rank:
    """This process's place in the launch: global rank, world size, rank on this host."""

    rank: int
    size: int
    local: int


def launched() -> Rank | None:
    """The Rank of this process when torchrun started it (RANK, WORLD_SIZE, LOCAL_RANK set), else None."""
    try:
        return Rank(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    except (KeyError, ValueError):
        return None


def multicast_off() -> None:
    """Set MULTICAST_OFF in this process's environment (over any other value), before a process group exists."""
    os.environ.update(MULTICAST_OFF)


def child_env(base: dict[str, str] | None = None, cpu: bool = False) -> dict[str, str]:
    """The environment for torchrun and its children: `base` (default this process's) with multicast off, one
    compute thread per process unless set (ranks share the host's cores), and no visible GPU for a CPU rehearsal
    (so the device mesh is a CPU one)."""
    env = dict(os.environ if base is None else base)
    env.update(MULTICAST_OFF)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def launch(n: int, target: list[str], cpu: bool = False, env: dict[str, str] | None = None) -> int:
    """Run `target` in n processes under torchrun and wait; returns torchrun's exit status (non-zero when any rank
    failed; torchrun stops the others)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", *target]
    return subprocess.run(cmd, env=child_env(env, cpu=cpu), check=False).returncode
