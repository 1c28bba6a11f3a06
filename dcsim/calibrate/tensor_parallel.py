"""One model replica sharded across the processes of a torchrun launch, with transformers' own tensor-parallel plan.

The plan is the model's (`base_model_tp_plan` of its config, `_tp_plan` of the causal-LM head: for Llama q, k, v,
gate and up column-wise, o and down row-wise with an all-reduce, the head column-wise with its logits gathered), set
up by the two steps `from_pretrained(distributed_config=...)` runs around its weight loading:
`prepare_distribute_model` (the device mesh) and `maybe_distribute_model` (the shards and forward hooks). Here the
weights are random instead of loaded:

- `replicated` (the default where the whole model fits on one device): every rank builds the whole model from the
  same seed, as a single process does, and keeps its own slices, so the replica holds exactly the single-process
  model's weights and greedy decoding gives the same tokens (up to the order of the all-reduce's sums);
- `sharded` (a model too large for one device, a 70B-class shape): the model is laid out on the meta device and each
  rank fills only its own shards with random values (the config's initializer range; norms at one); same shapes,
  other values.

The process group is NCCL on CUDA and gloo on the CPU (the rehearsal); multicast stays off (tp_launch.MULTICAST_OFF).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from dcsim.calibrate.backends.graph import GraphBackend
from dcsim.calibrate.backends.hf import HFBackend
from dcsim.calibrate.tp_launch import ENGINES, INITS, MULTICAST_OFF, Rank, multicast_off
from dcsim.errors import UserError

# the whole model is built on each device only while its weights take at most this share of the device's memory
REPLICATED_MAX_FRACTION = 0.5


@dataclass
class Group:
    """The launch's process groups: the default one (NCCL or gloo) the model's collectives use, and two gloo groups
    for rank 0's orders (`control`) and the power samples (`power`), which travel as Python objects."""

    rank: Rank
    device: str
    control: Any = None
    power: Any = None
    config: Any = None  # transformers DistributedConfig
    mesh: Any = None  # transformers' mesh manager
    facts: dict = field(default_factory=dict)


def device_of(kind: str, rank: Rank) -> str:
    """The device of a rank: cuda:LOCAL_RANK on CUDA (one process per GPU), the CPU otherwise."""
    return f"cuda:{rank.local}" if kind == "cuda" else "cpu"


def init(kind: str, rank: Rank, timeout_s: float = 1800.0) -> Group:
    """Join the launch's process group (NCCL on CUDA, gloo on the CPU) and make the tensor-parallel mesh over all
    of its ranks; multicast is switched off first."""
    import torch
    import torch.distributed as dist

    multicast_off()
    device = device_of(kind, rank)
    if kind == "cuda":
        if torch.cuda.device_count() <= rank.local:
            raise UserError(f"rank {rank.rank} needs GPU {rank.local}, but torch sees {torch.cuda.device_count()}",
                            None, "--tensor-parallel")
        torch.cuda.set_device(rank.local)
    if not dist.is_initialized():
        kw: dict = {"device_id": torch.device(device)} if kind == "cuda" else {}
        dist.init_process_group("nccl" if kind == "cuda" else "gloo", timeout=datetime.timedelta(seconds=timeout_s),
                                **kw)
    try:
        from transformers import AutoModelForCausalLM, DistributedConfig  # noqa: F401 - checks the version
        from transformers.modeling_utils import PreTrainedModel
    except ImportError as e:
        raise UserError(f"tensor parallelism needs transformers with DistributedConfig ({e})", None,
                        "--tensor-parallel") from None
    if not hasattr(PreTrainedModel, "maybe_distribute_model"):
        import transformers

        raise UserError(f"transformers {transformers.__version__} cannot shard a model built from its config "
                        "(no PreTrainedModel.maybe_distribute_model); install a newer one", None, "--tensor-parallel")
    dc = DistributedConfig(tp_size=rank.size, tp_plan="auto")
    dc, _, mesh = PreTrainedModel.prepare_distribute_model(dc)
    g = Group(rank=rank, device=device, control=dist.new_group(backend="gloo"), power=dist.new_group(backend="gloo"),
              config=dc, mesh=mesh)
    import os

    g.facts = {"size": rank.size, "backend": dist.get_backend(), "device_kind": kind,
               "plan": "transformers base_model_tp_plan + the head's _tp_plan (DistributedConfig tp_plan='auto')",
               "env": {k: os.environ.get(k) for k in MULTICAST_OFF}}
    return g


def choose_init(init: str, kind: str, weights_bytes: float, device_bytes: float | None) -> str:
    """`replicated` or `sharded` for `auto`: replicated on the CPU and wherever the whole model takes at most
    REPLICATED_MAX_FRACTION of one device's memory, else sharded."""
    if init not in INITS:
        raise UserError(f"unknown weights init {init!r}; expected one of {INITS}", None, "--tp-init")
    if init != "auto":
        return init
    if kind != "cuda" or device_bytes is None:
        return "replicated"
    return "replicated" if weights_bytes <= REPLICATED_MAX_FRACTION * device_bytes else "sharded"


def build_sharded(torch: Any, cfg: Any, dtype: Any, attn: str, group: Group, init: str) -> tuple[Any, str]:
    """The random-weight model of `cfg` sharded across the group; (model, the init used)."""
    from transformers import AutoModelForCausalLM

    from dcsim.models import params_b

    kind = "cuda" if group.device.startswith("cuda") else "cpu"
    elem = torch.finfo(dtype).bits // 8
    dev_bytes = torch.cuda.get_device_properties(group.device).total_memory if kind == "cuda" else None
    how = choose_init(init, kind, params_b(cfg) * 1e9 * elem, dev_bytes)
    where = "meta" if how == "sharded" else group.device
    with torch.device(where):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn)
    model = type(model).maybe_distribute_model(model, group.config, group.mesh)
    if how == "sharded":
        _materialise(torch, model, group.device, float(getattr(cfg, "initializer_range", 0.02)))
    return model, how


def _materialise(torch: Any, model: Any, device: str, std: float) -> None:
    """Give every parameter still on the meta device its local storage on `device`, filled at random (norm weights
    at one, as initialised); a module whose buffers are on the meta device (the rotary frequencies) is made again
    from its config on `device`."""
    from torch.distributed.tensor import DTensor

    with torch.no_grad():
        for mod in list(model.modules()):
            for name, p in list(mod._parameters.items()):
                if p is None or not p.is_meta:
                    continue
                local_meta = p.to_local() if isinstance(p.data, DTensor) else p
                local = torch.empty(local_meta.shape, dtype=p.dtype, device=device)
                if "norm" in type(mod).__name__.lower():
                    local.fill_(1.0)
                else:
                    local.normal_(0.0, std)
                if isinstance(p.data, DTensor):
                    local = DTensor.from_local(local, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                                               stride=p.stride())
                mod._parameters[name] = torch.nn.Parameter(local, requires_grad=False)
        for parent in list(model.modules()):
            for cname, child in list(parent.named_children()):
                if any(b is not None and b.is_meta for b in child._buffers.values()):
                    if not hasattr(child, "config"):
                        raise RuntimeError(f"cannot rebuild the buffers of {type(child).__name__} off the meta device")
                    with torch.device(device):
                        setattr(parent, cname, type(child)(config=child.config))


class _Sharded:
    """What the tensor-parallel engines change of their single-process engine: the model is built and sharded
    across the group, and the manifest says how."""

    group: Group
    init: str = "auto"

    def build(self, cfg, dtype):
        model, how = build_sharded(self.torch, cfg, dtype, self.attn, self.group, self.init)
        self.group.facts["weights_init"] = how
        return model

    def _engine_facts(self) -> dict:
        return {**super()._engine_facts(), "tensor_parallel": self.group.facts}  # type: ignore[misc]


class ShardedHF(_Sharded, HFBackend):
    """`hf` / `hf-static` with the replica sharded across the launch's ranks."""


class ShardedGraph(_Sharded, GraphBackend):
    """`hf-graph` with the replica sharded across the launch's ranks (each rank captures its own decode graph,
    collectives included)."""


def make(name: str, group: Group, arch: str | None, model: str | None, dtype: str, init: str = "auto") -> HFBackend:
    """A not yet loaded engine of this rank: random weights in the architecture `arch` (or `model`'s config)."""
    if name not in ENGINES:
        raise UserError(f"--tensor-parallel runs the {', '.join(ENGINES)} engines, not {name!r}", None, "--backend")
    if name == "hf-graph":
        be: HFBackend = ShardedGraph(group.device, model=model, arch=arch, random_weights=True, dtype=dtype)
    else:
        be = ShardedHF(group.device, model=model, arch=arch, random_weights=True, dtype=dtype,
                       static=name == "hf-static")
    be.group = group  # type: ignore[attr-defined]
    be.init = init  # type: ignore[attr-defined]
    return be


def token_digest(ids: Any) -> str:
    """A short digest of a batch's token ids (prompt and output), to compare runs across ranks and TP sizes."""
    import hashlib

    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(ids.detach().cpu().numpy().astype(np.int64)).tobytes()).hexdigest()[:16]
