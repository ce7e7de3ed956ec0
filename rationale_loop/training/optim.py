"""Optimizers and learning-rate schedules for the training stages.

* `Adalite`: the optimizer of the Memphis-CoT-3B recipe, written here from its update rule. Two
  revisions of supertrainer2000's Adalite are selectable: `variant="january"` (the default: the
  code as it stood in January 2024, commit 0750715, the one Memphis-CoT-3B was trained with) and
  `variant="february"` (the February 2024 revision: per-column moment, eps outside it, floored
  trust ratio).
* `OPTIMIZERS` / `build_optimizer`: pick an optimizer by config name ("adalite", "adamw").
* `cosine_with_warmup` / `warmup_steps`: linear warmup then cosine decay, as a `LambdaLR`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, NamedTuple

import torch
from torch.optim.lr_scheduler import LambdaLR

from rationale_loop.config.errors import ConfigError
from rationale_loop.config.keys import unknown_choice
from rationale_loop.config.registry import Registry

__all__ = [
    "ADALITE_VARIANTS",
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
    1-D with more than one element: subtract the mean of the whole vector. The reference (both
    revisions) computed `g.mean(dim=tuple(range(1, g.dim())))`, which for a 1-D tensor is `dim=()`,
    and torch reduces over *all* dims when given an empty dim tuple, so 1-D gradients (norm
    weights, biases) were centralized by their overall mean; its guard `sum(g.shape) > 1` only
    exempts 0-D and single-element tensors. 0-D / single element: unchanged.
    """
    if g.dim() >= 2:
        return g - g.mean(dim=tuple(range(1, g.dim())), keepdim=True)
    if g.dim() == 1 and g.numel() > 1:
        return g - g.mean()
    return g


# --- the second moment `c`, per variant -------------------------------------------------------
# January: one value per ROW (mean over every dim but the first), stored with shape (p.shape[0],).
# February: one value per COLUMN (mean over every dim but the last), stored with shape (p.shape[-1],).
# Both: 0-D and 1-D parameters keep a single 0-D scalar (the mean of the whole tensor).


def _row_mean(u: torch.Tensor) -> torch.Tensor:
    """January: mean over every dim but the first, shape (u.shape[0],); 0-D / 1-D: a 0-D scalar.

    For a 1-D tensor this is what torch gives for `u.mean(dim=tuple(range(1, 1)))`: the empty dim
    tuple reduces over all dims. (The January reference did exactly that for 1-D params: its `c`
    started as zeros of shape (n,), became a scalar after the first step and was broadcast back;
    as beta_1 = 0 the initial zeros never enter, so a scalar from the start is the same update.
    For 0-D params the reference failed, taking `p.shape[0]`; here they get the same scalar.)
    """
    if u.dim() <= 1:
        return u.mean()
    return u.mean(dim=tuple(range(1, u.dim())))


def _row_shape(p: torch.Tensor) -> tuple[int, ...]:
    return () if p.dim() <= 1 else (p.shape[0],)


def _row_expand(c: torch.Tensor, ndim: int) -> torch.Tensor:
    """(rows,) -> (rows, 1, ..., 1), broadcastable against a tensor with `ndim` dims."""
    return c if c.dim() == 0 else c.reshape(c.shape + (1,) * (ndim - 1))


def _column_mean(u: torch.Tensor) -> torch.Tensor:
    """February: mean over every dim but the last, shape (u.shape[-1],); 0-D / 1-D: a 0-D scalar.

    For >= 2-D this is one value per column / input feature of an `nn.Linear` weight (out, in);
    it broadcasts back against (..., n) as it is. The February reference computed
    `u.mean(dim=tuple(range(u.dim() - 1)))` (its comment still said "all dims except first", but
    the code keeps the last; for 1-D the empty dim tuple means a full reduction in torch).
    """
    if u.dim() <= 1:
        return u.mean()
    return u.mean(dim=tuple(range(u.dim() - 1)))


def _column_shape(p: torch.Tensor) -> tuple[int, ...]:
    return () if p.dim() <= 1 else (p.shape[-1],)


def _column_expand(c: torch.Tensor, ndim: int) -> torch.Tensor:
    return c  # (n,) already broadcasts against (..., n)


# --- the trust ratio |p| / |g|, per variant (only used where |p| != 0 and |g| != 0) -------------


def _bare_ratio(p_norm: torch.Tensor, g_norm: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
    """January: |p| / |g| with no floors."""
    return p_norm / g_norm


def _floored_ratio(p_norm: torch.Tensor, g_norm: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
    """February: max(|p| / max(|g|, eps2), min_trust_ratio)."""
    return (p_norm / g_norm.clamp(min=group["eps2"])).clamp(min=group["min_trust_ratio"])


class _Variant(NamedTuple):
    moment_shape: Callable[[torch.Tensor], tuple[int, ...]]  # shape of `c` for a parameter
    expand: Callable[[torch.Tensor, int], torch.Tensor]  # `c` -> broadcastable against g
    moment: Callable[[torch.Tensor], torch.Tensor]  # u -> the new `c`
    eps_in_moment: bool  # eps added to u before the new `c` is taken (so `c` carries it)
    trust_ratio: Callable[[torch.Tensor, torch.Tensor, dict[str, Any]], torch.Tensor]


_VARIANTS: dict[str, _Variant] = {
    "january": _Variant(_row_shape, _row_expand, _row_mean, True, _bare_ratio),
    "february": _Variant(_column_shape, _column_expand, _column_mean, False, _floored_ratio),
}
ADALITE_VARIANTS: tuple[str, ...] = tuple(_VARIANTS)
# State dicts saved before `variant` existed came from this class when it implemented only the
# February revision; their param groups carry no "variant" key and are loaded as such.
_LEGACY_VARIANT = "february"


def _variant(name: Any) -> _Variant:
    if not isinstance(name, str) or name not in _VARIANTS:
        raise ConfigError(unknown_choice("adalite_variant", name, _VARIANTS))
    return _VARIANTS[name]


class Adalite(torch.optim.Optimizer):
    r"""Adalite (supertrainer2000): factored adaptive step with a trust ratio, in its January 2024
    form (the default, the one Memphis-CoT-3B was trained with) or its February 2024 revision.

    Per parameter `p` with gradient `g` at step `t` (t = 1, 2, ...), state `c` starting at 0:

    1. if `centralize`: `g <- centralize(g)` (see `_centralize`: >= 2-D, mean over all dims but
       the first; 1-D with > 1 element, the whole mean, as in the reference; 0-D untouched).
    2. `beta_t = 1 - t ** (-beta_decay)` (so `beta_1 = 0`: the first step uses `g^2` alone).
    3. `u = (1 - beta_t) g^2 + beta_t c`, with `c` broadcast back over the dims it averages, then
       variant="january" (commit 0750715, the version used to train Memphis-CoT-3B):
         `u <- u + eps`, THEN `c <- row_mean(u)`: the mean over all dims but the FIRST (shape
         `(p.shape[0],)`, one value per output row of an `nn.Linear` weight), so `c` carries eps.
       variant="february":
         `c <- column_mean(u)`: the mean over all dims but the LAST (shape `(p.shape[-1],)`, one
         value per column / input feature), THEN `u <- u + eps`, so `c` holds no eps.
       Both: 0-D and 1-D params keep one 0-D scalar, the mean of the whole tensor. For 1-D that is
       torch's rule for `u.mean(dim=tuple(range(1, 1)))` (an empty dim tuple reduces over all
       dims), which is what both references computed; the January code failed on 0-D params
       (it took `p.shape[0]`), here they get the same scalar moment.
    4. `m = g / sqrt(u)`.
    5. `m <- m / max(1, RMS(m))`.
    6. if `|p| != 0` and `|g| != 0` (Frobenius norms, `g` the CENTRALIZED gradient):
         january: `m <- m * |p| / |g|` (the bare trust ratio, no floors);
         february: `m <- m * max(|p| / max(|g|, eps2), min_trust_ratio)`;
       then `m <- m + lambda_ * (p - p / |p|)` (pulls each tensor's norm toward 1).
       Otherwise `m` is left as is (no trust ratio, no pull).
    7. `p <- p - lr * m`.

    On ordinary gradients the first step is the same in both variants (`beta_1 = 0`, and eps
    reaches `m` the same way); they part from the second step on (row vs column moment, eps
    inside or outside `c`), or at once where the February floors bind (`|g| < eps2`).

    Notes on the January form: with eps inside, `c` does not settle at the mean of `g^2` but
    above it, by an offset that grows roughly like `eps * t**0.8` (each step adds eps and only
    forgets a `t**-0.8` share); for small gradients this offset, not `g^2`, sets the step's scale.
    With the bare ratio, a tiny `|g|` gives a huge `|p| / |g|`. Both are kept on purpose: they are
    how the recipe's model was trained. February fixed both (and `eps2` / `min_trust_ratio`
    exist only for it; the January variant ignores them).

    Shared facts behind choices that the recipe (docs/recipe.md) leaves open (from supertrainer2000's
    `supertrainer2k/optim/adalite.py`, both revisions):

    * `|g|` is the norm of the centralized gradient: the reference centralizes `p.grad` in place
      before taking `g.norm()`. (This class does not modify `p.grad`; it uses a centralized copy.)
    * no momentum (the reference's `momentum_beta` defaults to 0; it is not implemented here).

    Implementation notes: the norm checks are done with `torch.where` on device, so no host sync
    per parameter. fp16 / bf16 parameters are updated through fp32 math and keep `c` in fp32
    (the reference worked in the parameter dtype); other dtypes compute in their own dtype.
    Params with `grad is None` (e.g. frozen embeddings) and empty params are skipped; sparse
    gradients are rejected. `variant` is a param-group setting like the others, so
    `load_state_dict` restores the saved one (torch's rule for every group setting); a saved state
    with no "variant" (written before it existed) is February's. A `c` whose shape does not fit
    the group's variant raises instead of broadcasting the wrong way.

    Args:
        params: iterable of parameters or param-group dicts.
        lr: learning rate.
        eps: added to the second moment before the square root (> 0).
        beta_decay: exponent of the step-dependent beta, in [0, 1].
        lambda_: strength of the pull of each tensor's norm toward 1 ("Lambda" in the
            reference), in [0, 1]. Only applied where the trust ratio is.
        centralize: gradient centralization on/off.
        eps2: february only: lower bound on `|g|` in the trust ratio.
        min_trust_ratio: february only: lower bound on the trust ratio.
        variant: "january" (default) or "february"; anything else raises ValueError.
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
        variant: str = "january",
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
        _variant(variant)
        defaults = dict(
            lr=lr,
            eps=eps,
            beta_decay=beta_decay,
            lambda_=lambda_,
            centralize=centralize,
            eps2=eps2,
            min_trust_ratio=min_trust_ratio,
            variant=variant,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        _variant(self.param_groups[-1]["variant"])  # a group may set its own; check it

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch casts every floating state tensor to its parameter's dtype on load; the second moment
        `c` of a bf16/fp16 parameter is kept in fp32 on purpose, so it is put back as saved (a resumed
        run would otherwise differ from an uninterrupted one). Saved groups without "variant" are
        February's (the only algorithm this class had before the setting existed)."""
        groups = [g if "variant" in g else {**g, "variant": _LEGACY_VARIANT} for g in state_dict["param_groups"]]
        for g in groups:
            _variant(g["variant"])
        state_dict = {**state_dict, "param_groups": groups}
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
            variant = _variant(group["variant"])
            for p in group["params"]:
                if p.grad is None or p.numel() == 0:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Adalite does not support sparse gradients")

                dtype = torch.float32 if p.dtype in _LOW_PRECISION else p.dtype
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["c"] = torch.zeros(variant.moment_shape(p), dtype=dtype, device=p.device)
                elif state["c"].shape != variant.moment_shape(p):
                    raise RuntimeError(
                        f"Adalite: second moment of shape {tuple(state['c'].shape)} does not fit the "
                        f"{group['variant']!r} variant for a parameter of shape {tuple(p.shape)} "
                        f"(expected {variant.moment_shape(p)}); was the state saved under the other variant?"
                    )
                state["step"] += 1
                t = state["step"]

                g = p.grad.to(dtype)
                if group["centralize"]:
                    g = _centralize(g)
                beta = 1.0 - math.pow(t, -group["beta_decay"])

                # u = (1 - beta) g^2 + beta c, c broadcast; eps goes in before (january) or after
                # (february) the new c is taken
                u = g.square().mul_(1.0 - beta).add_(variant.expand(state["c"], g.dim()), alpha=beta)
                if variant.eps_in_moment:
                    u.add_(eps)
                    state["c"] = variant.moment(u)
                else:
                    state["c"] = variant.moment(u)
                    u.add_(eps)

                m = g * u.rsqrt()
                m.div_(m.square().mean().sqrt().clamp(min=1.0))

                w = p.to(dtype)  # p itself unless p is fp16 / bf16
                p_norm = torch.linalg.vector_norm(w)
                g_norm = torch.linalg.vector_norm(g)
                ok = (p_norm != 0) & (g_norm != 0)
                one = torch.ones_like(p_norm)
                ratio = variant.trust_ratio(p_norm, g_norm.where(ok, one), group)
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
    """torch.optim.AdamW; betas / eps / weight_decay (and any other AdamW option) pass through. Its fused
    kernel unless `fused` or `foreach` is given: torch picks the per-tensor loop on a CPU, which took 2-2.7x
    as long per step for 35M parameters (2-core EPYC, docs/benchmarks.md)."""
    if "betas" in kwargs and kwargs["betas"] is not None:
        kwargs["betas"] = tuple(kwargs["betas"])  # config lists -> tuple
    params = list(params)
    if kwargs.get("fused") is None and kwargs.get("foreach") is None and _fusable(params):
        kwargs["fused"] = True
    return torch.optim.AdamW(params, lr=lr, **kwargs)


def _fusable(params: list[Any]) -> bool:
    """Whether torch's fused AdamW takes these parameters (floating point, on a CPU or a GPU)."""
    tensors = [t for group in params for t in (group["params"] if isinstance(group, dict) else [group])]
    return all(t.is_floating_point() and t.device.type in ("cpu", "cuda") for t in tensors)


def _adalite(params: Iterable[Any], lr: float, **kwargs: Any) -> Adalite:
    return Adalite(params, lr=lr, **kwargs)


# Names are matched lowercased (build_optimizer); a check passes the stage's own key.
OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("<stage>.optimizer", {
    "adamw": _adamw,
    "adalite": _adalite,
})


def build_optimizer(name: str, params: Iterable[Any], lr: float, **kwargs: Any) -> torch.optim.Optimizer:
    """Build the optimizer registered under `name` (case-insensitive).

    Extra keyword arguments go to that optimizer's constructor (e.g. `lambda_`, `eps`,
    `beta_decay`, `centralize`, `variant` ("january" / "february") for Adalite; `betas`, `eps`,
    `weight_decay` for AdamW).
    Raises ConfigError (a ValueError) for an unknown name, listing the known ones.
    """
    return OPTIMIZERS.get(str(name).strip().lower())(params, lr=lr, **kwargs)


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
