"""Optimizers and learning-rate schedules for the training stages.

* `Adalite`: the optimizer of the Memphis-CoT-3B recipe (supertrainer2000's Adalite as it stood in
  Jan-Feb 2024), written here from its update rule.
* `OPTIMIZERS` / `build_optimizer`: pick an optimizer by config name ("adalite", "adamw").
* `cosine_with_warmup` / `warmup_steps`: linear warmup then cosine decay, as a `LambdaLR`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = [
    "Adalite",
    "OPTIMIZERS",
    "build_optimizer",
    "cosine_with_warmup",
    "warmup_steps",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _centralize(g: torch.Tensor) -> torch.Tensor:
    """Gradient centralization, returning a new tensor (the stored gradient is left alone).

    >= 2-D: subtract the mean over every dim but the first (one mean per output row).
    1-D with more than one element: subtract the mean of the whole vector. The reference computed
    `g.mean(dim=tuple(range(1, g.dim())))`, which for a 1-D tensor is `dim=()`, and torch reduces
    over *all* dims when given an empty dim tuple, so 1-D gradients (norm weights, biases) were
    centralized by their overall mean; its guard `sum(g.shape) > 1` only exempts 0-D and
    single-element tensors. 0-D / single element: unchanged.
    """
    if g.dim() >= 2:
        return g - g.mean(dim=tuple(range(1, g.dim())), keepdim=True)
    if g.dim() == 1 and g.numel() > 1:
        return g - g.mean()
    return g


def _factored_mean(u: torch.Tensor) -> torch.Tensor:
    """The "row-mean" kept as Adalite's running second moment `c`.

    >= 2-D, shape (..., n): mean over every dim but the LAST, giving shape (n,), i.e. one value per
    column / input feature of an `nn.Linear` weight (out, in); it broadcasts back against (..., n).
    1-D and 0-D: the mean of the whole tensor, a 0-D scalar shared by every element.
    This is what the reference computes with `u.mean(dim=tuple(range(u.dim() - 1)))` (its comment
    says "all dims except first", but the code keeps the last; for 1-D the empty dim tuple means a
    full reduction in torch).
    """
    if u.dim() <= 1:
        return u.mean()
    return u.mean(dim=tuple(range(u.dim() - 1)))


def _factored_shape(p: torch.Tensor) -> tuple[int, ...]:
    return () if p.dim() <= 1 else (p.shape[-1],)


class Adalite(torch.optim.Optimizer):
    r"""Adalite (supertrainer2000, Jan-Feb 2024): factored adaptive step with a trust ratio.

    Per parameter `p` with gradient `g` at step `t` (t = 1, 2, ...), state `c` starting at 0:

    1. if `centralize`: `g <- centralize(g)` (see `_centralize`: >= 2-D, mean over all dims but
       the first; 1-D with > 1 element, the whole mean, as in the reference; 0-D untouched).
    2. `beta_t = 1 - t ** (-beta_decay)` (so `beta_1 = 0`: the first step uses `g^2` alone).
    3. `u = (1 - beta_t) g^2 + beta_t c` with `c` broadcast; then `c <- factored_mean(u)`: for
       >= 2-D params the mean over all dims but the last (shape `(p.shape[-1],)`), for 1-D and
       0-D params the mean of the whole tensor (a scalar).
    4. `u <- u + eps`; `m = g / sqrt(u)`.
    5. `m <- m / max(1, RMS(m))`.
    6. if `|p| != 0` and `|g| != 0` (Frobenius norms, `g` the CENTRALIZED gradient):
       `m <- m * max(|p| / max(|g|, eps2), min_trust_ratio)`, then
       `m <- m + lambda_ * (p - p / |p|)` (pulls each tensor's norm toward 1).
       Otherwise `m` is left as is (no trust ratio, no pull).
    7. `p <- p - lr * m`.

    Facts behind choices that RECIPE.md leaves open (from supertrainer2000's
    `supertrainer2k/optim/adalite.py`):

    * `|g|` is the norm of the centralized gradient: the reference centralizes `p.grad` in place
      before taking `g.norm()`. (This class does not modify `p.grad`; it uses a centralized copy.)
    * `eps` is added to `u` AFTER the new `c` is taken, so `c` holds no eps. (Storing `c` with
      eps, as a literal reading of RECIPE.md suggests, would make `c` grow by about
      `eps * t**0.8` and swamp small gradients late in training.)
    * the trust ratio carries the reference's clamps: the denominator is at least `eps2` (1e-3)
      and the ratio at least `min_trust_ratio` (1e-3). Set both to 0 for the bare `|p| / |g|`.
    * no momentum (the reference's `momentum_beta` defaults to 0; it is not implemented here).

    Implementation notes: the norm checks are done with `torch.where` on device, so no host sync
    per parameter. fp16 / bf16 parameters are updated through fp32 math and keep `c` in fp32
    (the reference worked in the parameter dtype); other dtypes compute in their own dtype.
    Params with `grad is None` (e.g. frozen embeddings) and empty params are skipped; sparse
    gradients are rejected.

    Args:
        params: iterable of parameters or param-group dicts.
        lr: learning rate.
        eps: added to the second moment before the square root (> 0).
        beta_decay: exponent of the step-dependent beta, in [0, 1].
        lambda_: strength of the pull of each tensor's norm toward 1 ("Lambda" in the
            reference), in [0, 1]. Only applied where the trust ratio is.
        centralize: gradient centralization on/off.
        eps2: lower bound on `|g|` in the trust ratio.
        min_trust_ratio: lower bound on the trust ratio.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        eps: float = 1e-5,
        beta_decay: float = 0.8,
        lambda_: float = 0.01,
        centralize: bool = True,
        eps2: float = 1e-3,
        min_trust_ratio: float = 1e-3,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"invalid lr {lr!r}: must be >= 0")
        if not eps > 0.0:
            raise ValueError(f"invalid eps {eps!r}: must be > 0")
        if not 0.0 <= beta_decay <= 1.0:
            raise ValueError(f"invalid beta_decay {beta_decay!r}: must be in [0, 1]")
        if not 0.0 <= lambda_ <= 1.0:
            raise ValueError(f"invalid lambda_ {lambda_!r}: must be in [0, 1]")
        if not eps2 >= 0.0:
            raise ValueError(f"invalid eps2 {eps2!r}: must be >= 0")
        if not min_trust_ratio >= 0.0:
            raise ValueError(f"invalid min_trust_ratio {min_trust_ratio!r}: must be >= 0")
        defaults = dict(
            lr=lr,
            eps=eps,
            beta_decay=beta_decay,
            lambda_=lambda_,
            centralize=centralize,
            eps2=eps2,
            min_trust_ratio=min_trust_ratio,
        )
        super().__init__(params, defaults)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch casts every floating state tensor to its parameter's dtype on load; the second moment
        `c` of a bf16/fp16 parameter is kept in fp32 on purpose, so it is put back as saved (a resumed
        run would otherwise differ from an uninterrupted one)."""
        saved = {int(index): entry["c"] for index, entry in state_dict["state"].items() if "c" in entry}
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for index, c in saved.items():
            p = params[index]
            self.state[p]["c"] = c.to(device=p.device, dtype=torch.float32 if p.dtype in _LOW_PRECISION else p.dtype)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            lr = group["lr"]
            eps = group["eps"]
            lambda_ = group["lambda_"]
            for p in group["params"]:
                if p.grad is None or p.numel() == 0:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Adalite does not support sparse gradients")

                dtype = torch.float32 if p.dtype in _LOW_PRECISION else p.dtype
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["c"] = torch.zeros(_factored_shape(p), dtype=dtype, device=p.device)
                state["step"] += 1
                t = state["step"]

                g = p.grad.to(dtype)
                if group["centralize"]:
                    g = _centralize(g)
                beta = 1.0 - math.pow(t, -group["beta_decay"])

                # u = (1 - beta) g^2 + beta c; the new c is taken before eps is added
                u = g.square().mul_(1.0 - beta).add_(state["c"], alpha=beta)
                state["c"] = _factored_mean(u)
                u.add_(eps)

                m = g * u.rsqrt()
                m.div_(m.square().mean().sqrt().clamp(min=1.0))

                w = p.to(dtype)  # p itself unless p is fp16 / bf16
                p_norm = torch.linalg.vector_norm(w)
                g_norm = torch.linalg.vector_norm(g)
                ok = (p_norm != 0) & (g_norm != 0)
                one = torch.ones_like(p_norm)
                ratio = (p_norm / g_norm.clamp(min=group["eps2"]).where(ok, one)).clamp(
                    min=group["min_trust_ratio"]
                )
                m.mul_(ratio.where(ok, one))
                if lambda_ != 0.0:
                    pull = w - w / p_norm.where(ok, one)
                    m.add_(pull.mul_(ok.to(dtype) * lambda_))

                if w is p:
                    p.add_(m, alpha=-lr)
                else:
                    p.copy_(w.add_(m, alpha=-lr))
        return loss


def _adamw(params: Iterable[Any], lr: float, **kwargs: Any) -> torch.optim.AdamW:
    """torch.optim.AdamW; betas / eps / weight_decay (and any other AdamW option) pass through."""
    if "betas" in kwargs and kwargs["betas"] is not None:
        kwargs["betas"] = tuple(kwargs["betas"])  # config lists -> tuple
    return torch.optim.AdamW(params, lr=lr, **kwargs)


def _adalite(params: Iterable[Any], lr: float, **kwargs: Any) -> Adalite:
    return Adalite(params, lr=lr, **kwargs)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "adalite": _adalite,
}


def build_optimizer(name: str, params: Iterable[Any], lr: float, **kwargs: Any) -> torch.optim.Optimizer:
    """Build the optimizer registered under `name` (case-insensitive).

    Extra keyword arguments go to that optimizer's constructor (e.g. `lambda_`, `eps`,
    `beta_decay`, `centralize` for Adalite; `betas`, `eps`, `weight_decay` for AdamW).
    Raises ValueError for an unknown name, listing the known ones.
    """
    key = str(name).strip().lower()
    if key not in OPTIMIZERS:
        known = ", ".join(sorted(OPTIMIZERS))
        raise ValueError(f"unknown optimizer {name!r}; known optimizers: {known}")
    return OPTIMIZERS[key](params, lr=lr, **kwargs)


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Number of warmup steps: `round(warmup_ratio * total_steps)` (Python's round, half to even),
    at least 1 when both `warmup_ratio > 0` and `total_steps > 0`; 0 otherwise."""
    if total_steps < 0:
        raise ValueError(f"total_steps must be >= 0, got {total_steps!r}")
    if not 0.0 <= warmup_ratio <= 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1], got {warmup_ratio!r}")
    if total_steps == 0 or warmup_ratio == 0.0:
        return 0
    return max(1, round(warmup_ratio * total_steps))


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_ratio: float,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warmup, then cosine decay to `min_lr_ratio` times the base LR at `total_steps`.

    With W = `warmup_steps(total_steps, warmup_ratio)` and s the number of `scheduler.step()`
    calls so far (s = 0 for the first optimizer step), the LR multiplier is
      s < W:  (s + 1) / (W + 1)
      s >= W: r + (1 - r) * 0.5 * (1 + cos(pi * q)),  q = min(1, (s - W) / max(1, total - W))
    with r = `min_lr_ratio`; it stays at r after `total_steps`.

    The warmup ramp is (s + 1) / (W + 1) rather than transformers' s / W: no step runs at LR 0, which
    matters for the short stages of small rounds (a 1-step stage with W = 1 would otherwise not train).
    """
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio!r}")
    n_warm = warmup_steps(total_steps, warmup_ratio)
    decay_steps = max(1, total_steps - n_warm)

    def factor(step: int) -> float:
        if step < n_warm:
            return (step + 1) / (n_warm + 1)
        progress = min(1.0, (step - n_warm) / decay_steps)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
