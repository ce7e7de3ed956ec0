"""Tests for rationale_loop.training.optim: Adalite against hand-worked steps, the registry, the schedule.

Adalite has two variants: "january" (the default, the January 2024 code Memphis-CoT-3B was trained
with: per-ROW second moment c, eps added inside c, bare trust ratio |p| / |g|) and "february"
(per-COLUMN c, eps added after c is taken, trust ratio floored by eps2 and min_trust_ratio). The
hand-worked tests name their variant explicitly.

Notation in the hand computations: e = eps = 1e-5, lr = 0.1, lambda_ = 0.01,
a = 2^-0.8 = 0.5743491774985174 (so beta_2 = 1 - a = 0.4256508225014826).
Expected values are written as scalar arithmetic on the numbers derived in each docstring; none of
them goes through the optimizer code.
"""

from __future__ import annotations

import math

import pytest
import torch

from rationale_loop.training.optim import (
    ADALITE_VARIANTS,
    OPTIMIZERS,
    Adalite,
    build_optimizer,
    cosine_with_warmup,
    warmup_steps,
)

E = 1e-5
A = 2.0**-0.8
F64 = torch.float64


def _param(values) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor(values, dtype=F64))


def _step(opt: torch.optim.Optimizer, p: torch.nn.Parameter, grad) -> None:
    p.grad = torch.tensor(grad, dtype=F64)
    opt.step()


def _close(actual: torch.Tensor, expected) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=F64), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- Adalite (february), by hand


def test_adalite_step1_2d():
    """p = [[2, -2, 2], [4, 2, -2]], |p| = 6; g = [[3, 1, 2], [0, 3, 3]], lr 0.1.

    centralize (row means 2 and 2): g = [[1, -1, 0], [-2, 1, 1]], |g| = sqrt(8) = 2 sqrt 2
      (the raw gradient's norm would be sqrt(32): the test tells the two apart).
    beta_1 = 1 - 1^-0.8 = 0, so u = g^2 = [[1, 1, 0], [4, 1, 1]]
    c <- mean over dim 0 (all dims but the last), before eps: [2.5, 1, 0.5]
    m = g / sqrt(u + e): s = 1/sqrt(1 + e) = 0.99999500004, q = 2/sqrt(4 + e) = 0.99999875000
      m = [[s, -s, 0], [-q, s, s]]
    RMS(m)^2 = (4 s^2 + q^2) / 6 = 0.83333 < 1: no clip
    trust ratio = 6 / (2 sqrt 2) = 2.12132034356 (above both reference clamps)
    pull = lambda (p - p/|p|) = 0.01 * (5/6) p = p / 120
    p1 = p - 0.1 * (2.12132 m + p / 120)
       = [[1.78620236, -1.78620236, 1.99833333], [4.20879844, 1.78620236, -2.21046431]]
    """
    p = _param([[2.0, -2.0, 2.0], [4.0, 2.0, -2.0]])
    opt = Adalite([p], lr=0.1, variant="february")
    _step(opt, p, [[3.0, 1.0, 2.0], [0.0, 3.0, 3.0]])

    s, q, tr = 1 / math.sqrt(1 + E), 2 / math.sqrt(4 + E), 6 / math.sqrt(8)
    p0 = [[2.0, -2.0, 2.0], [4.0, 2.0, -2.0]]
    m = [[s, -s, 0.0], [-q, s, s]]
    expected = [[p0[i][j] - 0.1 * (tr * m[i][j] + p0[i][j] / 120) for j in range(3)] for i in range(2)]
    _close(p.detach(), expected)
    _close(p.detach(), [[1.786202359629586, -1.786202359629586, 1.9983333333333333],
                        [4.208798435858085, 1.786202359629586, -2.2104643070370806]])
    assert opt.state[p]["step"] == 1
    _close(opt.state[p]["c"], [2.5, 1.0, 0.5])
    # the stored gradient is not modified by centralization
    _close(p.grad, [[3.0, 1.0, 2.0], [0.0, 3.0, 3.0]])


def test_adalite_step2_2d_running_c_and_rms_clip():
    """Same p; step 1 with lr 0 (state only, p unchanged: c = [2.5, 1, 0.5] as above).

    Step 2 (lr 0.1), g = [[4, 2, 0], [0, 3, 0]]; centralized (row means 2, 1):
      g = [[2, 0, -2], [-1, 2, -1]], |g| = sqrt(14)
    beta_2 = 1 - 2^-0.8 = 1 - a
    u = a g^2 + (1 - a) c (c broadcast along rows):
      row 0: [4a + 2.5(1-a), (1-a), 4a + 0.5(1-a)] = [2.5 + 1.5a, 1 - a, 0.5 + 3.5a]
             = [3.36152377, 0.42565082, 2.51022212]
      row 1: [a + 2.5(1-a), 4a + (1-a), a + 0.5(1-a)] = [2.5 - 1.5a, 1 + 3a, 0.5 + 0.5a]
             = [1.63847623, 2.72304753, 0.78717459]
    c <- column means = [2.5, 1 + a, 0.5 + 2a] = [2.5, 1.57434918, 1.64869835]
    m = g / sqrt(u + e) = [[1.09084051, 0, -1.26233044], [-0.78122944, 1.21199712, -1.12709808]]
    RMS(m) = sqrt(sum m^2 / 6) = 1.01102404 > 1: m <- m / 1.01102404
    trust ratio = 6 / sqrt(14) = 1.60356745; pull = p / 120
    p2 = p - 0.1 (1.60356745 m / 1.01102404 + p / 120)
       = [[1.82531704, -1.99833333, 2.19854934], [4.12057609, 1.80610060, -1.81956629]]
    """
    p = _param([[2.0, -2.0, 2.0], [4.0, 2.0, -2.0]])
    opt = Adalite([p], lr=0.0, variant="february")
    _step(opt, p, [[3.0, 1.0, 2.0], [0.0, 3.0, 3.0]])
    p0 = [[2.0, -2.0, 2.0], [4.0, 2.0, -2.0]]
    _close(p.detach(), p0)

    opt.param_groups[0]["lr"] = 0.1
    _step(opt, p, [[4.0, 2.0, 0.0], [0.0, 3.0, 0.0]])

    gc = [[2.0, 0.0, -2.0], [-1.0, 2.0, -1.0]]
    u = [[2.5 + 1.5 * A, 1 - A, 0.5 + 3.5 * A], [2.5 - 1.5 * A, 1 + 3 * A, 0.5 + 0.5 * A]]
    m = [[gc[i][j] / math.sqrt(u[i][j] + E) for j in range(3)] for i in range(2)]
    rms = math.sqrt(sum(x * x for row in m for x in row) / 6)
    assert rms > 1.0  # the clip is exercised
    tr = 6 / math.sqrt(14)
    expected = [[p0[i][j] - 0.1 * (tr * m[i][j] / rms + p0[i][j] / 120) for j in range(3)] for i in range(2)]
    _close(p.detach(), expected)
    _close(p.detach(), [[1.8253170389209652, -1.9983333333333333, 2.198549344116802],
                        [4.120576094386237, 1.8061006019796089, -1.819566289676018]])
    assert opt.state[p]["step"] == 2
    _close(opt.state[p]["c"], [2.5, 1 + A, 0.5 + 2 * A])


def test_adalite_two_consecutive_steps_2d():
    """Step 1 as in test_adalite_step1_2d (lr 0.1), then step 2 from p1 with the gradient of
    test_adalite_step2_2d: u, m and the RMS are the same as there (they depend on g and c only);
    only |p1| and p1 change: p2 = p1 - 0.1 (|p1| / sqrt 14 * m / RMS + 0.01 (p1 - p1 / |p1|))."""
    p = _param([[2.0, -2.0, 2.0], [4.0, 2.0, -2.0]])
    opt = Adalite([p], lr=0.1, variant="february")
    _step(opt, p, [[3.0, 1.0, 2.0], [0.0, 3.0, 3.0]])
    p1 = [[1.786202359629586, -1.786202359629586, 1.9983333333333333],
          [4.208798435858085, 1.786202359629586, -2.2104643070370806]]
    _step(opt, p, [[4.0, 2.0, 0.0], [0.0, 3.0, 0.0]])

    n1 = math.sqrt(sum(x * x for row in p1 for x in row))
    gc = [[2.0, 0.0, -2.0], [-1.0, 2.0, -1.0]]
    u = [[2.5 + 1.5 * A, 1 - A, 0.5 + 3.5 * A], [2.5 - 1.5 * A, 1 + 3 * A, 0.5 + 0.5 * A]]
    m = [[gc[i][j] / math.sqrt(u[i][j] + E) for j in range(3)] for i in range(2)]
    rms = math.sqrt(sum(x * x for row in m for x in row) / 6)
    expected = [
        [p1[i][j] - 0.1 * (n1 / math.sqrt(14) * m[i][j] / rms + 0.01 * (p1[i][j] - p1[i][j] / n1)) for j in range(3)]
        for i in range(2)
    ]
    _close(p.detach(), expected)


def test_adalite_1d():
    """p = [1, 2, 2], |p| = 3; g = [4, 1, 1], lr 0.1.

    1-D centralization subtracts the whole mean (2): g = [2, -1, -1], |g| = sqrt 6
    beta_1 = 0: u = [4, 1, 1]; c <- mean of the whole tensor = 2 (a 0-D scalar)
    m = [2/sqrt(4 + e), -1/sqrt(1 + e), -1/sqrt(1 + e)] = [0.99999875, -0.99999500, -0.99999500]
    RMS < 1: no clip; trust ratio = 3 / sqrt 6 = 1.22474487; pull = 0.01 (2/3) p = p / 150
    p1 = p - 0.1 (1.22474487 m + p / 150) = [0.87685900, 2.12114054, 2.12114054]

    Step 2, g = [1, 1, 4] -> centralized [-1, -1, 2], |g| = sqrt 6 again;
    u = a [1, 1, 4] + (1 - a) 2 = [2 - a, 2 - a, 2 + 2a]; c <- mean = 2
    m = [-1/sqrt(2 - a + e), -1/sqrt(2 - a + e), 2/sqrt(2 + 2a + e)] = [-0.83751, -0.83751, 1.12710]
    RMS^2 = (2 * 0.70143 + 1.27036) / 3 = 0.89107 < 1: no clip
    p2 = p1 - 0.1 (|p1| / sqrt 6 * m + 0.01 (p1 - p1 / |p1|))
    """
    p = _param([1.0, 2.0, 2.0])
    opt = Adalite([p], lr=0.1, variant="february")
    _step(opt, p, [4.0, 1.0, 1.0])
    tr = 3 / math.sqrt(6)
    m = [2 / math.sqrt(4 + E), -1 / math.sqrt(1 + E), -1 / math.sqrt(1 + E)]
    p0 = [1.0, 2.0, 2.0]
    p1 = [p0[i] - 0.1 * (tr * m[i] + p0[i] / 150) for i in range(3)]
    _close(p.detach(), p1)
    c = opt.state[p]["c"]
    assert c.shape == torch.Size([])
    _close(c, 2.0)

    _step(opt, p, [1.0, 1.0, 4.0])
    n1 = math.sqrt(sum(x * x for x in p1))
    m = [-1 / math.sqrt(2 - A + E), -1 / math.sqrt(2 - A + E), 2 / math.sqrt(2 + 2 * A + E)]
    assert sum(x * x for x in m) / 3 < 1.0
    p2 = [p1[i] - 0.1 * (n1 / math.sqrt(6) * m[i] + 0.01 * (p1[i] - p1[i] / n1)) for i in range(3)]
    _close(p.detach(), p2)
    _close(opt.state[p]["c"], 2.0)


def test_adalite_0d():
    """p = 2, g = 3 (0-D: no centralization). u = 9, c = 9, m = 3 / sqrt(9 + e);
    trust ratio 2/3; pull 0.01 (2 - 1) = 0.01; p1 = 2 - 0.1 (2/3 * m + 0.01) = 1.93233337."""
    p = _param(2.0)
    opt = Adalite([p], lr=0.1, variant="february")
    _step(opt, p, 3.0)
    _close(p.detach(), 2 - 0.1 * (2 / 3 * 3 / math.sqrt(9 + E) + 0.01))
    _close(opt.state[p]["c"], 9.0)


def test_adalite_c_shape_nd():
    """3-D p of shape (2, 2, 3): c has shape (3,), the mean of u over the first two dims.
    With centralize off, step 1: c = mean over dims 0, 1 of g^2; g = 1..12 reshaped, so
    column j holds j+1, j+4, j+7, j+10 and c_j = ((j+1)^2 + (j+4)^2 + (j+7)^2 + (j+10)^2) / 4
    = [166/4, 214/4, 270/4] = [41.5, 53.5, 67.5]."""
    p = torch.nn.Parameter(torch.ones(2, 2, 3, dtype=F64))
    opt = Adalite([p], lr=0.1, centralize=False, variant="february")
    p.grad = torch.arange(1.0, 13.0, dtype=F64).reshape(2, 2, 3)
    opt.step()
    _close(opt.state[p]["c"], [41.5, 53.5, 67.5])


def test_adalite_zero_gradient_and_row_constant_gradient():
    """g = 0: u = 0 (beta_1 = 0), m = 0 / sqrt(e) = 0, |g| = 0 -> no trust ratio, no pull:
    p unchanged, c = 0. A gradient constant along each row centralizes to 0: same outcome."""
    p = _param([[1.0, 2.0], [3.0, 4.0]])
    opt = Adalite([p], lr=0.1, variant="february")
    _step(opt, p, [[0.0, 0.0], [0.0, 0.0]])
    _close(p.detach(), [[1.0, 2.0], [3.0, 4.0]])
    _close(opt.state[p]["c"], [0.0, 0.0])
    _step(opt, p, [[5.0, 5.0], [-7.0, -7.0]])
    _close(p.detach(), [[1.0, 2.0], [3.0, 4.0]])
    assert torch.isfinite(opt.state[p]["c"]).all()


def test_adalite_zero_param():
    """p = 0, g = [[1, 3], [2, 6]] -> centralized [[-1, 1], [-2, 2]], u = [[1, 1], [4, 4]],
    m = [[-s, s], [-q, q]] (s = 1/sqrt(1+e), q = 2/sqrt(4+e)), RMS < 1; |p| = 0 -> no trust ratio,
    no pull; p1 = -0.1 m. Step 2 (|p1| > 0 now) stays finite."""
    p = _param([[0.0, 0.0], [0.0, 0.0]])
    opt = Adalite([p], lr=0.1, variant="february")
    _step(opt, p, [[1.0, 3.0], [2.0, 6.0]])
    s, q = 1 / math.sqrt(1 + E), 2 / math.sqrt(4 + E)
    _close(p.detach(), [[0.1 * s, -0.1 * s], [0.1 * q, -0.1 * q]])
    _step(opt, p, [[1.0, 3.0], [2.0, 6.0]])
    assert torch.isfinite(p).all()


# --------------------------------------------------------------------------- Adalite (january, the default), by hand


def test_adalite_default_variant_is_january():
    p = _param([1.0, 2.0])
    assert Adalite([p], lr=0.1).param_groups[0]["variant"] == "january"
    assert set(ADALITE_VARIANTS) == {"january", "february"}


def test_adalite_january_2d_two_steps():
    """p0 = [[2, -2, 2], [4, 2, -2]], |p0| = 6; lr 0.1.

    Step 1, g = [[3, 1, 2], [0, 3, 3]]; centralized (row means 2, 2): [[1, -1, 0], [-2, 1, 1]],
    |g| = sqrt 8. beta_1 = 0: u = g^2 + e = [[1 + e, 1 + e, e], [4 + e, 1 + e, 1 + e]] (eps inside)
    c <- ROW means of u (eps included): [(2 + 3e)/3, (6 + 3e)/3] = [2/3 + e, 2 + e]
       = [0.66667667, 2.00001]  (February would keep column means [2.5, 1, 0.5], no eps)
    m = g / sqrt(u) = [[s, -s, 0], [-q, s, s]], s = 1/sqrt(1 + e), q = 2/sqrt(4 + e); RMS < 1
    bare trust ratio 6 / sqrt 8; pull p0 / 120: p1 is the February step-1 value
      p1 = [[1.78620236, -1.78620236, 1.99833333], [4.20879844, 1.78620236, -2.21046431]]

    Step 2, g = [[4, 2, 0], [0, 3, 0]] -> centralized [[2, 0, -2], [-1, 2, -1]], |g| = sqrt 14.
    beta_2 = 1 - a; u = a g^2 + (1 - a) c_row + e (c broadcast along each ROW):
      row 0 (c = 2/3 + e): [4a + (1-a)(2/3 + e) + e, (1-a)(2/3 + e) + e, 4a + (1-a)(2/3 + e) + e]
                         = [2.58117818, 0.28378147, 2.58117818]
      row 1 (c = 2 + e):   [a + (1-a)(2 + e) + e, 4a + (1-a)(2 + e) + e, a + (1-a)(2 + e) + e]
                         = [1.42566508, 3.14871261, 1.42566508]
    c <- row means = [8a/3 + (1-a)(2/3 + e) + e, 2a + (1-a)(2 + e) + e] = [1.81537928, 2.00001426]
    m = g / sqrt(u) = [[1.24486141, 0, -1.24486141], [-0.83751240, 1.12710268, -0.83751240]]
    RMS(m) = 0.98086478 < 1: no clip (February's m clipped here)
    |p1| = 6.01373673, bare trust ratio |p1| / sqrt 14 = 1.60723875
    p2 = p1 - 0.1 (1.60723875 m + 0.01 (p1 - p1 / |p1|))
       = [[1.58463423, -1.78471318, 2.19674624], [4.33989774, 1.60356087, -2.07401317]]
    """
    p = _param([[2.0, -2.0, 2.0], [4.0, 2.0, -2.0]])
    opt = Adalite([p], lr=0.1, variant="january")
    _step(opt, p, [[3.0, 1.0, 2.0], [0.0, 3.0, 3.0]])

    s, q, tr = 1 / math.sqrt(1 + E), 2 / math.sqrt(4 + E), 6 / math.sqrt(8)
    p0 = [[2.0, -2.0, 2.0], [4.0, 2.0, -2.0]]
    m = [[s, -s, 0.0], [-q, s, s]]
    p1 = [[p0[i][j] - 0.1 * (tr * m[i][j] + p0[i][j] / 120) for j in range(3)] for i in range(2)]
    _close(p.detach(), p1)
    _close(p.detach(), [[1.786202359629586, -1.786202359629586, 1.9983333333333333],
                        [4.208798435858085, 1.786202359629586, -2.2104643070370806]])
    c1 = [2 / 3 + E, 2 + E]
    assert opt.state[p]["c"].shape == torch.Size([2])  # one value per row
    _close(opt.state[p]["c"], c1)  # atol 1e-6 < e: eps must be inside c

    _step(opt, p, [[4.0, 2.0, 0.0], [0.0, 3.0, 0.0]])
    gc = [[2.0, 0.0, -2.0], [-1.0, 2.0, -1.0]]
    g2 = [[x * x for x in row] for row in gc]
    u = [[A * g2[i][j] + (1 - A) * c1[i] + E for j in range(3)] for i in range(2)]
    _close(torch.tensor(u, dtype=F64), [[2.581178181503283, 0.28378147150921335, 2.581178181503283],
                                        [1.4256650790097076, 3.14871261150526, 1.4256650790097076]])
    m = [[gc[i][j] / math.sqrt(u[i][j]) for j in range(3)] for i in range(2)]
    rms = math.sqrt(sum(x * x for row in m for x in row) / 6)
    assert rms < 1.0
    n1 = math.sqrt(sum(x * x for row in p1 for x in row))
    tr = n1 / math.sqrt(14)
    expected = [
        [p1[i][j] - 0.1 * (tr * m[i][j] + 0.01 * (p1[i][j] - p1[i][j] / n1)) for j in range(3)] for i in range(2)
    ]
    _close(p.detach(), expected)
    _close(p.detach(), [[1.5846342289995814, -1.784713177648485, 2.1967462434305634],
                        [4.339897738990473, 1.603560867176313, -2.0740131744453176]])
    assert opt.state[p]["step"] == 2
    _close(opt.state[p]["c"], [8 * A / 3 + (1 - A) * c1[0] + E, 2 * A + (1 - A) * c1[1] + E])
    _close(opt.state[p]["c"], [1.8153792781719265, 2.000014256508225])


def test_adalite_january_bare_trust_ratio_vs_february_floor():
    """A gradient below February's floor: p = [[2, -2, 2], [4, 2, -2]] (|p| = 6), lr 1e-4,
    g = 1e-4 [[3, 1, 2], [0, 3, 3]] -> centralized 1e-4 [[1, -1, 0], [-2, 1, 1]], |g| = 1e-4 sqrt 8
    = 2.8284e-4 < eps2 = 1e-3.
    beta_1 = 0: u = g^2 + e; m = g / sqrt(u) (the same in both variants):
      m = [[k1, -k1, 0], [-k4, k1, k1]], k1 = 1e-4 / sqrt(1e-8 + e) = 0.03160698,
      k4 = 2e-4 / sqrt(4e-8 + e) = 0.06311944; RMS < 1.
    january: ratio = |p| / |g| = 6 / (1e-4 sqrt 8) = 21213.2034 (bare)
    february: ratio = 6 / max(|g|, 1e-3) = 6000
    p1 = p - 1e-4 (ratio m + p / 120)
    """
    g = [[3e-4, 1e-4, 2e-4], [0.0, 3e-4, 3e-4]]
    p0 = [[2.0, -2.0, 2.0], [4.0, 2.0, -2.0]]
    k1, k4 = 1e-4 / math.sqrt(1e-8 + E), 2e-4 / math.sqrt(4e-8 + E)
    m = [[k1, -k1, 0.0], [-k4, k1, k1]]
    assert sum(x * x for row in m for x in row) / 6 < 1.0
    for variant, ratio in (("january", 6 / (1e-4 * math.sqrt(8))), ("february", 6 / 1e-3)):
        p = _param(p0)
        opt = Adalite([p], lr=1e-4, variant=variant)
        _step(opt, p, g)
        expected = [[p0[i][j] - 1e-4 * (ratio * m[i][j] + p0[i][j] / 120) for j in range(3)] for i in range(2)]
        _close(p.detach(), expected)
    # the january update, pinned: 2 - 1e-4 (21213.2034 * 0.03160698 + 2 / 120) = 1.93294981
    p = _param(p0)
    opt = Adalite([p], lr=1e-4)
    _step(opt, p, g)
    assert p[0, 0].item() == pytest.approx(1.932949809893182, abs=1e-6)


def test_adalite_january_1d():
    """p = [1, 2, 2], |p| = 3; lr 0.1. One scalar moment for a 1-D parameter (torch's
    `mean(dim=())` reduces over all dims).

    Step 1, g = [4, 1, 1] -> centralized (whole mean 2) [2, -1, -1], |g| = sqrt 6;
    u = g^2 + e = [4 + e, 1 + e, 1 + e]; c <- mean(u) = 2 + e (0-D)
    m = [2/sqrt(4 + e), -1/sqrt(1 + e), -1/sqrt(1 + e)]; RMS < 1; trust ratio 3 / sqrt 6;
    pull p / 150: p1 = [0.87685900, 2.12114054, 2.12114054] (as in February)

    Step 2, g = [1, 1, 4] -> centralized [-1, -1, 2], |g| = sqrt 6;
    u = a [1, 1, 4] + (1 - a)(2 + e) + e = [1.42566508, 1.42566508, 3.14871261]
    c <- mean(u) = 2a + (1 - a)(2 + e) + e = 2 + (2 - a) e = 2.00001426
    m = [-0.83751240, -0.83751240, 1.12710268]; RMS < 1
    p2 = p1 - 0.1 (|p1| / sqrt 6 * m + 0.01 (p1 - p1 / |p1|))
    """
    p = _param([1.0, 2.0, 2.0])
    opt = Adalite([p], lr=0.1, variant="january")
    _step(opt, p, [4.0, 1.0, 1.0])
    p0 = [1.0, 2.0, 2.0]
    m = [2 / math.sqrt(4 + E), -1 / math.sqrt(1 + E), -1 / math.sqrt(1 + E)]
    p1 = [p0[i] - 0.1 * (3 / math.sqrt(6) * m[i] + p0[i] / 150) for i in range(3)]
    _close(p.detach(), p1)
    _close(p.detach(), [0.8768590046604834, 2.121140539315813, 2.121140539315813])
    c = opt.state[p]["c"]
    assert c.shape == torch.Size([])
    _close(c, 2 + E)

    _step(opt, p, [1.0, 1.0, 4.0])
    u = [A * x + (1 - A) * (2 + E) + E for x in (1.0, 1.0, 4.0)]
    m = [gi / math.sqrt(ui) for gi, ui in zip([-1.0, -1.0, 2.0], u)]
    assert sum(x * x for x in m) / 3 < 1.0
    n1 = math.sqrt(sum(x * x for x in p1))
    p2 = [p1[i] - 0.1 * (n1 / math.sqrt(6) * m[i] + 0.01 * (p1[i] - p1[i] / n1)) for i in range(3)]
    _close(p.detach(), p2)
    _close(opt.state[p]["c"], 2 + (2 - A) * E)


def test_adalite_january_0d():
    """0-D p (the January reference failed here, taking p.shape[0]): a scalar moment.

    p = 2, g = 3 (no centralization for 0-D); lr 0.1.
    Step 1: u = 9 + e; c = 9 + e; m = 3 / sqrt(9 + e) = 0.99999944 (RMS < 1);
      trust ratio |p| / |g| = 2/3; pull 0.01 (2 - 2/2) = 0.01
      p1 = 2 - 0.1 (2/3 * m + 0.01) = 1.93233337
    Step 2: g = -1: u = a + (1 - a)(9 + e) + e = 4.40522084; c = u;
      m = -1 / sqrt(u) = -0.47644871; trust ratio |p1| / 1; pull 0.01 (p1 - 1)
      p2 = p1 - 0.1 (p1 m + 0.01 (p1 - 1)) = 2.02346681
    """
    p = _param(2.0)
    opt = Adalite([p], lr=0.1)  # the default variant
    _step(opt, p, 3.0)
    p1 = 2 - 0.1 * (2 / 3 * 3 / math.sqrt(9 + E) + 0.01)
    _close(p.detach(), p1)
    _close(p.detach(), 1.9323333703703498)
    assert opt.state[p]["c"].shape == torch.Size([])
    _close(opt.state[p]["c"], 9 + E)

    _step(opt, p, -1.0)
    u = A + (1 - A) * (9 + E) + E
    p2 = p1 - 0.1 * (p1 * (-1 / math.sqrt(u)) + 0.01 * (p1 - 1))
    _close(p.detach(), p2)
    _close(p.detach(), 2.023466811627575)
    _close(opt.state[p]["c"], u)


def test_adalite_january_c_shape_nd():
    """3-D p of shape (2, 2, 3), centralize off, g = 1..12: c has shape (2,), the mean of
    u = g^2 + e over dims 1 and 2: block 0 holds 1..6 (squares sum 91), block 1 holds 7..12
    (squares sum 559), so c = [91/6 + e, 559/6 + e] = [15.16667667, 93.16667667]."""
    p = torch.nn.Parameter(torch.ones(2, 2, 3, dtype=F64))
    opt = Adalite([p], lr=0.1, centralize=False, variant="january")
    p.grad = torch.arange(1.0, 13.0, dtype=F64).reshape(2, 2, 3)
    opt.step()
    _close(opt.state[p]["c"], [91 / 6 + E, 559 / 6 + E])


def test_adalite_variants_differ():
    """Same parameter and gradients: the first step agrees (beta_1 = 0, the trust ratio above the
    February floors), the second does not (row vs column moment, eps inside c): compare the
    hand-worked p2 of test_adalite_january_2d_two_steps, [[1.58463423, ...]], with February's
    p2 of test_adalite_two_consecutive_steps_2d, [[1.61130077, ...]]."""
    results = {}
    for variant in ("january", "february"):
        p = _param([[2.0, -2.0, 2.0], [4.0, 2.0, -2.0]])
        opt = Adalite([p], lr=0.1, variant=variant)
        _step(opt, p, [[3.0, 1.0, 2.0], [0.0, 3.0, 3.0]])
        first = p.detach().clone()
        _step(opt, p, [[4.0, 2.0, 0.0], [0.0, 3.0, 0.0]])
        results[variant] = (first, p.detach().clone(), opt.state[p]["c"].shape)
    (j1, j2, jc), (f1, f2, fc) = results["january"], results["february"]
    torch.testing.assert_close(j1, f1)
    assert not torch.allclose(j2, f2, atol=1e-3, rtol=0)
    assert abs(j2[0, 0].item() - f2[0, 0].item()) > 0.02  # 1.58463423 vs 1.61130077
    assert jc == torch.Size([2]) and fc == torch.Size([3])  # rows vs columns


def test_adalite_variant_checks():
    p = _param([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(ValueError, match=r"adalite_variant=march is unknown.*february, january"):
        Adalite([p], lr=0.1, variant="march")
    with pytest.raises(ValueError, match=r"adalite_variant=March is unknown"):
        Adalite([{"params": [p], "variant": "March"}], lr=0.1)
    # a group may choose its own variant
    q = _param([[1.0, 2.0, 3.0]])
    opt = Adalite([{"params": [p]}, {"params": [q], "variant": "february"}], lr=0.1)
    assert [g["variant"] for g in opt.param_groups] == ["january", "february"]
    p.grad = torch.ones_like(p)
    q.grad = torch.tensor([[1.0, 0.0, 2.0]], dtype=F64)
    opt.step()
    assert opt.state[p]["c"].shape == torch.Size([2]) and opt.state[q]["c"].shape == torch.Size([3])


def test_adalite_state_dict_across_variants():
    """A state saved before `variant` existed (no key in its groups) is February's; a state loaded
    under a group setting that does not match its moment's shape raises rather than broadcasting."""
    p = _param([[1.0, 2.0, 3.0], [3.0, 4.0, 0.0]])
    old = Adalite([p], lr=0.1, variant="february")
    p.grad = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 1.0]], dtype=F64)
    old.step()
    saved = old.state_dict()
    for group in saved["param_groups"]:
        del group["variant"]
    fresh = Adalite([p], lr=0.1)  # january by default; the saved groups win, as torch does
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["variant"] == "february"
    assert "variant" not in saved["param_groups"][0]  # the caller's dict is left alone
    fresh.step()

    fresh.param_groups[0]["variant"] = "january"  # c of shape (3,) cannot be a row moment of 2 rows
    with pytest.raises(RuntimeError, match="variant"):
        fresh.step()


# --------------------------------------------------------------------------- Adalite, either variant


def test_adalite_skips_none_grad_and_param_groups():
    a = _param([1.0, 2.0, 2.0])
    b = _param([1.0, 2.0, 2.0])
    frozen = _param([5.0, 5.0])
    opt = Adalite([{"params": [a, frozen]}, {"params": [b], "lr": 0.0}], lr=0.1)
    a.grad = torch.tensor([4.0, 1.0, 1.0], dtype=F64)
    b.grad = torch.tensor([4.0, 1.0, 1.0], dtype=F64)
    opt.step()
    assert len(opt.state[frozen]) == 0
    _close(frozen.detach(), [5.0, 5.0])
    _close(b.detach(), [1.0, 2.0, 2.0])  # lr 0 in its group
    assert not torch.allclose(a.detach(), b.detach())  # same update as test_adalite_1d, lr 0.1


@pytest.mark.parametrize("variant", ADALITE_VARIANTS)
def test_adalite_closure_state_dict_and_bf16(variant):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3, dtype=F64))
    opt = Adalite([w], lr=0.05, variant=variant)

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure) is not None
    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = Adalite([w2], lr=0.05, variant=variant)
    opt2.load_state_dict(opt.state_dict())
    for o, p in ((opt, w), (opt2, w2)):
        p.grad = torch.ones_like(p) * torch.arange(3, dtype=F64)
        o.step()
    _close(w2.detach(), w.detach().tolist())

    # bf16 parameters: fp32 math, c kept in fp32, result close to the fp32 update
    ref = torch.nn.Parameter(torch.tensor([[1.0, -2.0, 0.5], [0.25, 3.0, -1.0]]))
    low = torch.nn.Parameter(ref.detach().to(torch.bfloat16))
    g = torch.tensor([[0.3, -0.1, 0.2], [1.0, -0.5, 0.25]])
    for o, p in ((Adalite([ref], lr=0.1, variant=variant), ref), (Adalite([low], lr=0.1, variant=variant), low)):
        p.grad = g.to(p.dtype)
        o.step()
        assert o.state[p]["c"].dtype == torch.float32
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.detach().float(), ref.detach(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("variant", ADALITE_VARIANTS)
@pytest.mark.parametrize("centralize", [True, False])
def test_adalite_reduces_quadratic(centralize, variant):
    """Least squares 0.5 |X W - Y|^2 / n toward a unit-norm target W*, 200 steps of Adalite
    (lr 0.02, cosine schedule with 10% warmup).

    With centralization on, the update of each row has zero mean apart from the norm pull (which
    only rescales W), so W's row means cannot move toward W*'s: that case starts from and aims at
    zero-row-mean matrices. Without the schedule Adalite stalls at a noise floor (the trust
    ratio keeps steps near lr |W| per step), hence the decaying LR.
    """
    torch.manual_seed(0)

    def prepare(t: torch.Tensor) -> torch.Tensor:
        return t - t.mean(dim=1, keepdim=True) if centralize else t

    target = prepare(torch.randn(6, 4, dtype=F64))
    target /= target.norm()
    x = torch.randn(32, 6, dtype=F64)
    y = x @ target
    w = torch.nn.Parameter(prepare(0.5 * torch.randn(6, 4, dtype=F64)))
    opt = Adalite([w], lr=0.02, centralize=centralize, variant=variant)
    sched = cosine_with_warmup(opt, total_steps=200, warmup_ratio=0.1)

    def loss_fn():
        return 0.5 * ((x @ w - y) ** 2).sum() / x.shape[0]

    initial = loss_fn().item()
    for _ in range(200):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
        sched.step()
    final = loss_fn().item()
    assert math.isfinite(final)
    assert final < (0.02 if centralize else 1e-3) * initial, (initial, final)


def test_adalite_rejects_bad_hyperparameters():
    p = [_param([1.0])]
    with pytest.raises(ValueError):
        Adalite(p, lr=-1.0)
    with pytest.raises(ValueError):
        Adalite(p, lr=0.1, eps=0.0)
    with pytest.raises(ValueError):
        Adalite(p, lr=0.1, lambda_=2.0)


# --------------------------------------------------------------------------- registry


def test_registry_builds_and_rejects_unknown():
    assert set(OPTIMIZERS) >= {"adamw", "adalite"}
    p = [_param([1.0, 2.0])]
    opt = build_optimizer("adalite", p, lr=1e-5, lambda_=0.02)
    assert isinstance(opt, Adalite)
    assert opt.param_groups[0]["lambda_"] == 0.02
    assert opt.param_groups[0]["lr"] == 1e-5
    assert opt.param_groups[0]["variant"] == "january"
    opt = build_optimizer("adalite", p, lr=1e-5, variant="february")
    assert opt.param_groups[0]["variant"] == "february"
    with pytest.raises(ValueError, match="variant"):
        build_optimizer("adalite", p, lr=1e-5, variant="jan")
    opt = build_optimizer("AdamW", p, lr=1e-3, betas=[0.9, 0.95], eps=1e-6, weight_decay=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    group = opt.param_groups[0]
    assert group["betas"] == (0.9, 0.95) and group["eps"] == 1e-6 and group["weight_decay"] == 0.1
    with pytest.raises(ValueError, match=r"adalite.*adamw"):
        build_optimizer("lion", p, lr=1e-3)


def test_adamw_takes_the_fused_kernel_unless_told_otherwise():
    model = torch.nn.Linear(4, 3)
    assert build_optimizer("adamw", model.parameters(), lr=1e-3).param_groups[0]["fused"] is True
    groups = [{"params": [model.weight]}, {"params": [model.bias], "weight_decay": 0.0}]
    assert build_optimizer("adamw", groups, lr=1e-3).param_groups[1]["fused"] is True
    assert not build_optimizer("adamw", model.parameters(), lr=1e-3, foreach=False).param_groups[0]["fused"]
    assert not build_optimizer("adamw", model.parameters(), lr=1e-3, fused=False).param_groups[0]["fused"]
    # The same update as torch's default kernel, within float rounding.
    fused, plain = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    plain.load_state_dict(fused.state_dict())
    start = fused.weight.detach().clone()
    optimizers = [build_optimizer("adamw", m.parameters(), lr=1e-2, fused=f) for m, f in ((fused, None), (plain, False))]
    for _ in range(3):
        for m, optimizer in zip((fused, plain), optimizers):
            m(torch.ones(2, 4)).square().sum().backward()
            optimizer.step()
            optimizer.zero_grad()
    assert torch.allclose(fused.weight, plain.weight, atol=1e-6) and not torch.allclose(fused.weight, start)


# --------------------------------------------------------------------------- schedule


def test_warmup_steps():
    assert warmup_steps(100, 0.2) == 20
    assert warmup_steps(10, 0.01) == 1  # round(0.1) = 0, raised to 1
    assert warmup_steps(100, 0.0) == 0
    assert warmup_steps(0, 0.2) == 0
    assert warmup_steps(7, 0.1) == 1  # round(0.7)
    with pytest.raises(ValueError):
        warmup_steps(10, 1.5)


def test_cosine_with_warmup_values():
    """total 100, ratio 0.2 -> W = 20 warmup steps, base lr 1e-3.
    s = 0: (0 + 1)/(20 + 1) = 1/21; s = 10: 11/21; s = 20 (end of warmup): 1.0;
    s = 60 (cosine midpoint, progress 40/80 = 0.5): 0.5 (1 + cos(pi/2)) = 0.5;
    s = 80: 0.5 (1 + cos(3 pi / 4)) = 0.5 (1 - 0.70710678) = 0.14644661; s = 100: 0; s = 120: 0.
    With min_lr_ratio 0.1: midpoint 0.1 + 0.9 * 0.5 = 0.55, end 0.1."""
    p = _param([1.0])
    opt = torch.optim.SGD([p], lr=1e-3)
    sched = cosine_with_warmup(opt, total_steps=100, warmup_ratio=0.2)
    expected = {0: 1 / 21, 10: 11 / 21, 20: 1.0, 60: 0.5, 80: 0.5 * (1 - math.sqrt(0.5)), 100: 0.0, 120: 0.0}
    seen = {}
    for s in range(121):
        seen[s] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    for s, factor in expected.items():
        assert seen[s] == pytest.approx(1e-3 * factor, abs=1e-12), s

    opt = torch.optim.SGD([p], lr=1.0)
    f = cosine_with_warmup(opt, total_steps=100, warmup_ratio=0.2, min_lr_ratio=0.1).lr_lambdas[0]
    assert f(0) == pytest.approx(1 / 21)
    assert f(20) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55)
    assert f(100) == pytest.approx(0.1)
    assert f(150) == pytest.approx(0.1)

    # no warmup: full LR from the first step
    f = cosine_with_warmup(opt, total_steps=10, warmup_ratio=0.0).lr_lambdas[0]
    assert f(0) == 1.0
    assert f(5) == pytest.approx(0.5)


@pytest.mark.parametrize("variant", ADALITE_VARIANTS)
def test_adalite_resumed_from_its_state_dict_matches_an_uninterrupted_run_on_bf16_weights(variant):
    """Its fp32 second moment of a bf16 weight must survive save/load (torch would cast it to bf16)."""
    import copy

    def run(steps, optimizer_state=None, weights=None):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(8, 6).to(torch.bfloat16))
        if weights is not None:
            p.data.copy_(weights)
        opt = Adalite([p], lr=1e-2, variant=variant)
        if optimizer_state is not None:
            opt.load_state_dict(optimizer_state)
        for step in steps:
            p.grad = torch.randn(8, 6, generator=torch.Generator().manual_seed(step)).to(torch.bfloat16)
            opt.step()
        return p.detach().clone(), copy.deepcopy(opt.state_dict()), opt

    straight, _, _ = run(range(5))
    weights, state, _ = run(range(3))
    resumed, _, _ = run(range(3, 5), state, weights)
    assert torch.equal(straight, resumed)
    _, _, loaded = run([], state, weights)
    (c,) = [entry["c"] for entry in loaded.state.values()]
    assert c.dtype == torch.float32 and torch.equal(c, state["state"][0]["c"])
