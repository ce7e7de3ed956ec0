"""Weight averaging: SLERP and linear interpolation on tensors worked out by hand."""

import math

import pytest
import torch

from rationale_loop.models.merge import average_into, lerp, slerp


def test_slerp_of_orthogonal_unit_vectors_stays_on_the_circle():
    # a = (1, 0), b = (0, 1): theta = pi/2; at t = 1/2 the result is (cos pi/4, sin pi/4) = (0.7071, 0.7071).
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert slerp(a, b, 0.5).tolist() == pytest.approx([math.sqrt(0.5)] * 2, abs=1e-6)
    # t = 0.99: (cos(0.99 pi/2), sin(0.99 pi/2)) = (0.01570732, 0.99987663).
    assert slerp(a, b, 0.99).tolist() == pytest.approx([math.cos(0.99 * math.pi / 2), math.sin(0.99 * math.pi / 2)], abs=1e-6)
    assert torch.equal(slerp(a, b, 0.0), a) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-7)


def test_slerp_falls_back_to_lerp_for_parallel_tensors():
    a = torch.tensor([1.0, 2.0])
    assert slerp(a, 3 * a, 0.25).tolist() == pytest.approx(lerp(a, 3 * a, 0.25).tolist())  # (1.5, 3.0)


def test_average_into_moves_every_float_tensor():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 1.0]]))
    count = average_into(model, {"weight": torch.tensor([[1.0, 0.0]])}, "linear", 0.75)
    assert count == 1 and model.weight.tolist() == [[0.25, 0.75]]
    with pytest.raises(ValueError, match="known"):
        average_into(model, {}, "nope", 0.5)
