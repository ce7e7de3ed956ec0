"""Weight averaging across rounds: after a round trains, its weights are interpolated with the
weights it started from, so the model moves as a moving average of the rounds' results.

`factor` is the interpolation position from the starting weights (0) to the new ones (1). The later
Memphis-CoT card merged each round with the previous one by SLERP at 0.99; we read that as 0.99 toward
the new weights and keep it a config value (`average.factor`) because the card does not say which side
the factor weighs.
"""

from __future__ import annotations

from typing import Callable

import torch

from rationale_loop.config.registry import Registry

DOT_THRESHOLD = 0.9995  # nearly parallel tensors: SLERP's sin(theta) -> 0, so interpolate linearly


def lerp(start: torch.Tensor, end: torch.Tensor, t: float) -> torch.Tensor:
    return (1.0 - t) * start + t * end


def slerp(start: torch.Tensor, end: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation of two tensors treated as flat vectors, the angle measured between
    their directions and the norm interpolated linearly (as merge tools do for model weights)."""
    a, b = start.flatten().double(), end.flatten().double()
    norm_a, norm_b = a.norm(), b.norm()
    if norm_a == 0 or norm_b == 0:
        return lerp(start, end, t)
    dot = torch.clamp((a / norm_a) @ (b / norm_b), -1.0, 1.0)
    if dot.abs() > DOT_THRESHOLD:
        return lerp(start, end, t)
    theta = torch.arccos(dot)
    sin_theta = torch.sin(theta)
    mixed = (torch.sin((1 - t) * theta) / sin_theta) * a + (torch.sin(t * theta) / sin_theta) * b
    return mixed.view_as(start).to(start.dtype)


METHODS: Registry[Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = Registry(
    "average.method", {"slerp": slerp, "linear": lerp}, also="none")
#: average.method's values: no averaging, or a method of METHODS.
AVERAGE_METHODS = ("none", *METHODS)
#: average.method -> the average keys it reads (none reads none of them): its schema within AverageConfig.
AVERAGE_OPTION_KEYS = {method: (() if method == "none" else ("factor",)) for method in AVERAGE_METHODS}


@torch.no_grad()
def average_into(model: torch.nn.Module, previous: dict[str, torch.Tensor], method: str, factor: float) -> int:
    """Replace every floating-point parameter of `model` by METHOD(previous, current, factor); returns
    how many tensors were averaged."""
    combine = METHODS.get(method)
    count = 0
    for name, tensor in model.state_dict().items():
        if name in previous and tensor.is_floating_point():
            tensor.copy_(combine(previous[name].to(tensor.device, tensor.dtype), tensor, factor))
            count += 1
    return count
