"""Capture one call of a step function in a CUDA graph, the way PyTorch's CUDA-graph notes prescribe: a few
eager calls on a side stream first (they settle lazy initialisation, kernel choices and the allocator), then
the capture itself, on the side stream `torch.cuda.graph` uses. Replaying the graph reruns the recorded
kernels on the same memory with no Python in between."""

from __future__ import annotations

from typing import Callable


def capture(step: Callable[[], None], reset: Callable[[], None], device: str, warmup: int = 3,
            pool: object = None):
    """A torch.cuda.CUDAGraph holding one call of `step`. `reset` puts the state `step` mutates back to a
    valid start before every eager call and before the capture (a capture records kernels without running
    them), so the warm-up calls never step past the end of a buffer. `pool` (torch.cuda.graph_pool_handle())
    lets several graphs share one memory pool for their intermediates, as serving engines capture one graph
    per batch size and replay one at a time. Raises whatever the capture raises."""
    import torch

    with torch.cuda.device(device), torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                reset()
                step()
        torch.cuda.current_stream().wait_stream(side)
        reset()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            step()
        torch.cuda.synchronize()
        return graph
