"""AdaDiag / AdaDiag++ against AdamW, the polar factor, rotation equivariance, which tensors rotate, state layout
and AdaDiag's own refusals. The paths against the reference loop, resume, the generic bad arguments and refusals
are the table's (``optim_db.py``, ``test_optim_db.py``)."""

from __future__ import annotations

import importlib
import itertools

import pytest
import torch

import optim_db
from hf_alphaadam import AdaDiag
from optim_db import random_grads, saved_and_loaded, set_grads, step_together
adadiag_module = importlib.import_module("hf_alphaadam.optim._adadiag_paths")  # where the paths look the rotations up

SHAPES = ((6, 9), (6, 9), (11, 4), (5, 5), (7,))  # two same-shaped matrices share a batched bucket
COMBINATIONS = list(itertools.product([False, True], ["rotated", "original"], ["adam", "adafactor"]))


def make_params(dtype=torch.float64, seed=0, shapes=SHAPES):
    return optim_db.make_params(dtype, seed, shapes)


def random_orthogonal(n, seed):
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


# ---------------------------------------------------------------------------------------------------------
# identity bases = AdamW; the polar factor


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("two_sided,moment_space,second_moment",
                         [(False, "rotated", "adam"), (True, "rotated", "adam"), (True, "original", "adam")])
@pytest.mark.parametrize("maximize", [False, True])
def test_identity_bases_equal_adamw(monkeypatch, foreach, two_sided, moment_space, second_moment, maximize):
    def identity_bases(grad, left, right):
        m, n = grad.shape[-2:]
        eye = lambda k: torch.eye(k, dtype=grad.dtype).expand(*grad.shape[:-2], k, k)  # noqa: E731
        return (eye(m) if left else None), (eye(n) if right else None)

    monkeypatch.setattr(adadiag_module, "_svd_bases", identity_bases)
    # P^T G Q has no exact zeros when the bases do not come from svd(G)
    monkeypatch.setattr(adadiag_module, "_exact_zeros", lambda *args: None)
    ours, theirs = make_params(), make_params()
    groups = lambda ps: [{"params": ps[:3]}, {"params": ps[3:], "lr": 3e-3, "weight_decay": 0.0}]  # noqa: E731
    optimizer = AdaDiag(groups(ours), lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, update_freq=3,
                        two_sided=two_sided, moment_space=moment_space, second_moment=second_moment,
                        reproject=True, foreach=foreach, maximize=maximize)
    reference = torch.optim.AdamW(groups(theirs), lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1,
                                  maximize=maximize)
    def same_params():
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)

    step_together([(optimizer, ours), (reference, theirs)], 20, none_every=4, each_step=same_params)
    assert "basis_left" in optimizer.state[ours[0]] or "basis_right" in optimizer.state[ours[0]]
    for a, b in zip(ours, theirs):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(optimizer.state[a][key], reference.state[b][key], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("foreach", [False, True])
def test_rotate_false_is_adamw(foreach):
    ours, theirs = make_params(), make_params()
    optimizer = AdaDiag(ours, lr=1e-2, rotate=False, foreach=foreach)
    reference = torch.optim.AdamW(theirs, lr=1e-2, weight_decay=0.01)
    step_together([(optimizer, ours), (reference, theirs)], 10)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
        assert "basis_left" not in optimizer.state[a] and "basis_right" not in optimizer.state[a]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("moment_space", ["rotated", "original"])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-6), (torch.float32, 2e-4)])
def test_two_sided_step_is_the_polar_factor(foreach, moment_space, dtype, tolerance):
    """T = 1, beta1 = beta2 = 0, eps << sigma_min: AdaDiag++'s step is U V^T of the gradient (Muon's direction).
    In fp32 this also checks that the rounding noise of P^T G Q off the diagonal is not amplified into steps."""
    params = make_params(dtype, shapes=((5, 8), (8, 5), (6, 6), (6, 6)))
    optimizer = AdaDiag(params, lr=1.0, betas=(0.0, 0.0), eps=1e-8, weight_decay=0.0, update_freq=1,
                        two_sided=True, moment_space=moment_space, foreach=foreach)
    for step in range(3):
        grads = random_grads(params, step)
        set_grads(params, grads)
        before = [p.detach().clone() for p in params]
        optimizer.step()
        for param, old, grad in zip(params, before, grads):
            u, _, vh = torch.linalg.svd(grad.double(), full_matrices=False)
            torch.testing.assert_close((old - param.detach()).double(), u @ vh, rtol=0, atol=tolerance)


# ---------------------------------------------------------------------------------------------------------
# rotation equivariance on a rotated quadratic


def quadratic(shape, seed):
    """f(W) = 1/2 ||L (W - W*) R||_F^2 (ill-conditioned, non-separable); returns its gradient function."""
    generator = torch.Generator().manual_seed(seed)
    m, n = shape
    left = torch.randn(m, m, generator=generator, dtype=torch.float64) * torch.logspace(0, 1, m, dtype=torch.float64)
    right = torch.randn(n, n, generator=generator, dtype=torch.float64)
    target = torch.randn(m, n, generator=generator, dtype=torch.float64)
    return lambda w: left.T @ left @ (w - target) @ right @ right.T


@pytest.mark.parametrize("two_sided,moment_space,second_moment,reproject,mask",
                         [(True, "rotated", "adam", False, "none"), (True, "original", "adam", False, "none"),
                          (True, "rotated", "adafactor", True, "none"), (True, "rotated", "adam", False, "async"),
                          (False, "rotated", "adam", False, "none"), (False, "original", "adafactor", True, "none"),
                          (False, "rotated", "adafactor", True, "sync")])
@pytest.mark.parametrize("foreach", [False, True])
def test_rotation_equivariance(two_sided, moment_space, second_moment, reproject, mask, foreach):
    """Optimizing g(W') = f(A W' B) from W'_0 = A^T W_0 B^T gives W'_t = A^T W_t B^T (refreshes included).

    Two-sided: any orthogonal A, B, on a square matrix (for m != n the n - m extra columns of Q complete a
    null space, which the SVD fixes only up to a rotation, so equivariance holds there only in the span of G).
    One-sided (left basis, m < n): any orthogonal A, and B a signed permutation (the right side keeps Adam's
    coordinates, which are only permutation/sign equivariant). A mask taken in the original space
    (moment_space="original") is not rotation equivariant, so masks are tested with rotated moments only."""
    m, n = (6, 6) if two_sided else (5, 7)
    grad_f = quadratic((m, n), seed=3)
    a = random_orthogonal(m, seed=4)
    if two_sided:
        b = random_orthogonal(n, seed=5)
    else:
        b = torch.eye(n, dtype=torch.float64)[torch.randperm(n, generator=torch.Generator().manual_seed(6))]
        b = b * torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    w = torch.randn(m, n, dtype=torch.float64, generator=torch.Generator().manual_seed(7)).requires_grad_()
    w_rotated = (a.T @ w.detach() @ b.T).requires_grad_()
    options = dict(lr=3e-2, betas=(0.9, 0.99), weight_decay=0.1, update_freq=4, two_sided=two_sided,
                   moment_space=moment_space, second_moment=second_moment, reproject=reproject, mask=mask,
                   alpha="norm" if mask != "none" else "none", foreach=foreach)
    optimizer, optimizer_rotated = AdaDiag([w], **options), AdaDiag([w_rotated], **options)
    adamw_w = w.detach().clone().requires_grad_()
    adamw_rotated = w_rotated.detach().clone().requires_grad_()
    adamw = torch.optim.AdamW([adamw_w, adamw_rotated], lr=3e-2, betas=(0.9, 0.99), weight_decay=0.1)
    for _ in range(25):
        w.grad = grad_f(w.detach())
        w_rotated.grad = a.T @ grad_f(a @ w_rotated.detach() @ b) @ b.T
        adamw_w.grad = grad_f(adamw_w.detach())
        adamw_rotated.grad = a.T @ grad_f(a @ adamw_rotated.detach() @ b) @ b.T
        optimizer.step()
        optimizer_rotated.step()
        adamw.step()
        torch.testing.assert_close(w_rotated.detach(), a.T @ w.detach() @ b.T, rtol=1e-9, atol=1e-9)
    if two_sided:  # the contrast: AdamW is not rotation equivariant
        assert (adamw_rotated.detach() - a.T @ adamw_w.detach() @ b.T).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------------------
# which tensors are rotated, state layout, dtypes


def test_rotation_rule_by_name_shape_and_max_dim():
    named = [("model.embed_tokens.weight", torch.zeros(50, 8)), ("model.layers.0.q_proj.weight", torch.zeros(8, 8)),
             ("model.layers.0.mlp.up_proj.weight", torch.zeros(20, 8)), ("lm_head.weight", torch.zeros(50, 8)),
             ("model.norm.weight", torch.zeros(8)), ("transformer.wte.weight", torch.zeros(50, 8))]
    params = [(name, tensor.requires_grad_()) for name, tensor in named]
    group = AdaDiag(params).param_groups[0]
    sides = {name: AdaDiag.rotation_sides(group, i, tuple(t.shape)) for i, (name, t) in enumerate(params)}
    assert sides == {"model.embed_tokens.weight": (False, False), "model.layers.0.q_proj.weight": (True, False),
                     "model.layers.0.mlp.up_proj.weight": (False, True),  # 20 x 8: the smaller side is the right
                     "lm_head.weight": (False, True), "model.norm.weight": (False, False),
                     "transformer.wte.weight": (False, False)}
    two = AdaDiag(params, two_sided=True, max_dim=30).param_groups[0]
    assert AdaDiag.rotation_sides(two, 3, (50, 8)) == (False, True)  # the 50-side exceeds max_dim
    assert AdaDiag.rotation_sides(two, 1, (8, 8)) == (True, True)
    regex = AdaDiag(params, rotate=r"q_proj|up_proj").param_groups[0]
    assert [AdaDiag.rotation_sides(regex, i, tuple(t.shape)) != (False, False) for i, (_, t) in enumerate(params)] \
        == [False, True, True, False, False, False]
    left = AdaDiag(params, side="left").param_groups[0]
    assert AdaDiag.rotation_sides(left, 2, (20, 8)) == (True, False)
    unnamed = AdaDiag([t for _, t in params]).param_groups[0]  # no names: decided by shape alone
    assert AdaDiag.rotation_sides(unnamed, 0, (50, 8)) == (False, True)


def test_state_layout_and_dtypes_for_bf16_params():
    params = make_params(torch.bfloat16, shapes=((6, 9), (7,)))
    optimizer = AdaDiag(params, two_sided=True, second_moment="adafactor")
    set_grads(params, random_grads(params, 0))
    optimizer.step()
    matrix, vector = optimizer.state[params[0]], optimizer.state[params[1]]
    assert set(matrix) == {"step", "exp_avg", "exp_avg_sq_row", "exp_avg_sq_col", "basis_left", "basis_right"}
    assert matrix["basis_left"].shape == (6, 6) and matrix["basis_right"].shape == (9, 9)
    assert matrix["exp_avg_sq_row"].shape == (6,) and matrix["exp_avg_sq_col"].shape == (9,)
    assert all(t.dtype == torch.float32 for k, t in matrix.items() if k != "step")
    assert set(vector) == {"step", "exp_avg", "exp_avg_sq"}  # AdamW
    basis = matrix["basis_left"]
    torch.testing.assert_close(basis.T @ basis, torch.eye(6), atol=1e-5, rtol=0)
    compact = AdaDiag(make_params(torch.bfloat16, shapes=((4, 4),)), state_dtype="bf16")
    compact_param = compact.param_groups[0]["params"][0]
    set_grads([compact_param], random_grads([compact_param], 0))
    compact.step()
    assert compact.state[compact_param]["exp_avg"].dtype == torch.bfloat16
    assert compact.state[compact_param]["basis_left"].dtype == torch.float32  # bases never in bf16


def test_reprojection_makes_signs_irrelevant():
    """With reproject=True the moments follow the basis, so flipping singular vectors changes nothing."""
    results = []
    for align in (True, False):
        params = make_params()
        optimizer = AdaDiag(params, lr=1e-2, update_freq=2, two_sided=True, reproject=True, align_signs=align)
        for step in range(9):
            set_grads(params, random_grads(params, step))
            optimizer.step()
        results.append(params)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_options_cannot_change_once_state_exists():
    params = make_params(shapes=((4, 6),))
    optimizer = AdaDiag(params)
    set_grads(params, random_grads(params, 0))
    optimizer.step()
    optimizer.param_groups[0]["two_sided"] = True
    set_grads(params, random_grads(params, 1))
    with pytest.raises(ValueError, match="cannot change once a tensor has state"):
        optimizer.step()


# ---------------------------------------------------------------------------------------------------------
# checkpoints


def test_state_dict_holds_only_tensors_and_plain_values():
    params = make_params(torch.bfloat16)
    optimizer = AdaDiag(list(zip("abcde", params)), rotate="a|b|c", state_dtype=torch.bfloat16, max_dim=None)
    set_grads(params, random_grads(params, 0))
    optimizer.step()
    loaded = saved_and_loaded(optimizer.state_dict())
    group = loaded["param_groups"][0]
    assert group["state_dtype"] == "bfloat16" and group["rotate"] == "a|b|c" and group["update_freq"] == 10


# ---------------------------------------------------------------------------------------------------------
# bad input, distributed refusals


def test_rotate_regex_needs_names():
    """The generic bad arguments are the table's (optim_db.ADADIAG_BAD_ARGS); this one needs unnamed tensors."""
    with pytest.raises(ValueError) as info:
        AdaDiag(make_params(), rotate="q_proj")
    assert "no names" in str(info.value)


def test_flat_zero_partition_of_a_rotated_matrix_is_refused():
    weight = torch.randn(4, 6, requires_grad=True)
    optimizer = AdaDiag([{"params": [weight], "whole_numel": weight.numel()}])
    weight.grad = torch.randn(4, 6)
    with pytest.raises(RuntimeError, match="never rotates a flat partition"):
        optimizer.step()
    # DeepSpeed swapping the group's tensor for a flat 1-D partition after construction
    weight = torch.randn(4, 6, requires_grad=True)
    optimizer = AdaDiag([weight])
    flat = torch.randn(12, requires_grad=True)
    flat.grad = torch.randn(12)
    optimizer.param_groups[0]["params"] = [flat]
    with pytest.raises(RuntimeError, match="never rotates a flat partition"):
        optimizer.step()


def test_sharded_dtensor_matrix_is_refused(single_process_mesh):
    weight = single_process_mesh.parameter(torch.randn(4, 6), torch.randn(4, 6))
    with pytest.raises(NotImplementedError, match="needs the whole matrix"):
        AdaDiag([weight]).step()
    replicated = single_process_mesh.parameter(torch.randn(4, 6), torch.randn(4, 6), sharded=False)
    before = replicated.detach().full_tensor().clone()
    AdaDiag([replicated], lr=1e-2).step()  # whole on every rank: rotated as usual
    assert not torch.equal(before, replicated.detach().full_tensor())
    sharded_vector = single_process_mesh.parameter(torch.randn(6), torch.ones(6))
    AdaDiag([sharded_vector], lr=1e-2, mask="async", alpha="norm").step()  # AdamW part: fine sharded


# ---------------------------------------------------------------------------------------------------------
# statistics and training on real data


def test_training_reduces_loss(char_task):
    model = char_task.model(seed=0)
    optimizer = AdaDiag(model.named_parameters(), lr=3e-3, two_sided=True, moment_space="original",
                        second_moment="adafactor", mask="async", alpha="norm")
    initial, final = char_task.train_and_evaluate(model, optimizer, 120)
    assert final < initial - 1.0, (initial, final)
    assert final < 3.0  # a uniform guess over the ~60 characters would be ~4.1 nats


def test_tiny_llama_trains_and_leaves_embeddings_to_adamw(char_task):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=char_task.vocab, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=16, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    optimizer = AdaDiag(model.named_parameters(), lr=3e-3, update_freq=5)  # one-sided, rotated moments
    losses = []
    for batch in char_task.batches(40, batch_size=32):
        optimizer.zero_grad()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < losses[0] - 0.4, losses
    embedding = model.model.embed_tokens.weight
    assert "basis_left" not in optimizer.state[embedding] and "basis_right" not in optimizer.state[embedding]
    q_proj = model.model.layers[0].self_attn.q_proj.weight
    assert "basis_left" in optimizer.state[q_proj] and "basis_right" not in optimizer.state[q_proj]
