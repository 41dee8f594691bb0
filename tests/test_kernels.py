"""The fused rotary and causal-softmax Functions: gradients on CPU (float64), Triton against torch on GPU."""

import pytest
import torch

from models import kernels
from models.layer import rotary_tables


def _qkv(b=2, s=8, heads=3, d=16, dtype=torch.float64, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, s, heads, 3, d, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def _reference_rotary(qkv, cos, sin):
    """GPT-NeoX's out-of-place formula: x * cos + rotate_half(x) * sin on the rotary dims of q and k."""
    rd = cos.shape[-1]
    rot = qkv[..., :2, :rd]
    half = rd // 2
    rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    shape = (1, cos.shape[0], 1, 1, rd)
    out = rot * cos.view(shape) + rotated * sin.view(shape)
    return torch.cat((torch.cat((out, qkv[..., :2, rd:]), dim=-1), qkv[..., 2:, :]), dim=-2)


@pytest.mark.parametrize("rotary_dims", [4, 16])
def test_rotary_in_place_matches_out_of_place_formula(rotary_dims):
    qkv = _qkv()
    cos, sin = (t.double() for t in rotary_tables(8, rotary_dims, 10000.0))
    expected = _reference_rotary(qkv, cos, sin)
    out = kernels.apply_rotary_in_place(qkv.clone().view(-1, 3 * 3 * 16), cos, sin, 3).view(qkv.shape)
    assert torch.allclose(out, expected, atol=1e-12)


def test_rotary_in_place_gradient_is_the_inverse_rotation():
    cos, sin = (t.double() for t in rotary_tables(8, 8, 10000.0))
    base = _qkv().requires_grad_(True)
    # the Function writes in place, so it is applied to a fresh non-leaf copy each call
    assert torch.autograd.gradcheck(lambda x: kernels.apply_rotary_in_place(x.reshape(16, 144) * 1.0, cos, sin, 3), (base,))


def test_causal_softmax_masks_the_future_and_matches_softmax():
    scores = torch.randn(6, 5, 5, dtype=torch.float64)
    probs = kernels.causal_softmax(scores)
    mask = torch.ones(5, 5, dtype=torch.bool).triu(1)
    assert torch.all(probs[:, mask] == 0)
    expected = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
    assert torch.allclose(probs, expected, atol=1e-12)
    assert torch.autograd.gradcheck(kernels.causal_softmax, (scores.requires_grad_(True),))


_skip_without_cuda = pytest.mark.skipif(not torch.cuda.is_available() or kernels.triton is None,
                                        reason="Triton kernels run on CUDA only")


def cuda_triton(test):
    return pytest.mark.gpu(_skip_without_cuda(test))


@cuda_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_rotary_matches_torch_path(dtype):
    qkv = _qkv(b=2, s=256, heads=8, d=80, dtype=dtype, device="cuda")
    cos, sin = (t.to(dtype) for t in rotary_tables(256, 20, 10000.0, device="cuda"))
    triton_out = kernels.apply_rotary_in_place(qkv.clone().view(512, -1), cos, sin, 8).view(qkv.shape)
    ref = _reference_rotary(qkv.double(), cos.double(), sin.double())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    err = (triton_out.double() - ref).abs()
    assert err.max().item() < tol, f"max error {err.max().item():.3e} at {torch.nonzero(err == err.max())[0].tolist()}"
    # the rotated dims of q and k of every position after the first moved (position 0 rotates by angle 0)
    moved = (triton_out[:, 1:, :, :2, :20] != qkv[:, 1:, :, :2, :20]).flatten(start_dim=1).any(dim=1)
    assert moved.all()
    # the passthrough dims and v are untouched
    assert torch.equal(triton_out[..., 2, :], qkv[..., 2, :])
    assert torch.equal(triton_out[..., :2, 20:], qkv[..., :2, 20:])


@cuda_triton
@pytest.mark.parametrize("s", [128, 2048, 3000])
def test_triton_causal_softmax_matches_torch(s):
    scores = torch.randn(4, s, s, device="cuda", dtype=torch.bfloat16)
    probs = kernels.causal_softmax(scores).float()
    mask = torch.ones(s, s, dtype=torch.bool, device="cuda").triu(1)
    expected = torch.softmax(scores.float().masked_fill(mask, float("-inf")), dim=-1)
    assert (probs - expected).abs().max().item() < 1e-2
    assert torch.all(probs[:, mask] == 0)


@cuda_triton
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_layer_on_cuda_matches_the_layer_on_cpu(attention):
    """The Triton rotary and softmax inside the real layer, forward and backward, against the torch path."""
    from models import ModelConfig
    from models.layer import build_layer, random_input

    cfg = ModelConfig(name="t", hidden_size=320, num_attention_heads=4, num_layers=1, seq_length=96,
                      micro_batch_size=2, dtype="float32", attention=attention)  # h/a = 80, rotary dims 20
    cpu = build_layer(cfg)
    gpu = build_layer(cfg, device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    x = random_input(cfg, requires_grad=True)
    xg = x.detach().cuda().requires_grad_(True)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    out_cpu, out_gpu = cpu(x), gpu(xg)
    out_cpu.backward(grad)
    out_gpu.backward(grad.cuda())
    assert (out_gpu.cpu() - out_cpu).abs().max().item() < 1e-3
    assert (xg.grad.cpu() - x.grad).abs().max().item() < 1e-3
    w_cpu = cpu.layer.attention.qkv_transform.weight.grad
    assert (gpu.layer.attention.qkv_transform.weight.grad.cpu() - w_cpu).abs().max().item() < 1e-3


def test_residual_add_is_a_plus_b_plus_c_with_identity_gradients():
    a, b, c = (torch.randn(4, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.equal(kernels.residual_add(a, b, c), a + b + c)
    assert torch.autograd.gradcheck(kernels.residual_add, (a, b, c))
