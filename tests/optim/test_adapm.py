"""AdaPM-style partial momentum: AdamW at full rank, the formula, the name policy, memory, training, layout and
AdaPM's own errors. The paths against the reference loop, resume, the generic bad arguments and refusals are the
table's (``optim_db.py``, ``test_optim_db.py``)."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import pytest
import torch

from hf_alphaadam import AdaPM
from hf_alphaadam.optim.adapm import compare_with_adamw, optimizer_state_memory
from optim_db import named_params, random_grads, run_steps, set_grads, step_together

transformers = pytest.importorskip("transformers")


# tall, wide and square low-rank blocks, a fused GPT-2 c_attn (Conv1D, (in, 3 d)), value (full) and a vector
EQUIVALENCE_SPEC = [
    ("layers.0.self_attn.q_proj.weight", (6, 5)),
    ("layers.0.mlp.down_proj.weight", (4, 9)),
    ("layers.0.mlp.up_proj.weight", (7, 7)),
    ("h.0.attn.c_attn.weight", (4, 12)),
    ("layers.0.self_attn.v_proj.weight", (3, 5)),
    ("layers.0.input_layernorm.weight", (7,)),
]


# ---------------------------------------------------------------------------------------------------------
# AdamW equivalence


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("residual", ["full", "none"])
@pytest.mark.parametrize("maximize", [False, True])
def test_full_rank_equals_adamw(foreach, residual, maximize):
    ours = named_params(EQUIVALENCE_SPEC)
    theirs = [p.detach().clone().requires_grad_() for _, p in ours]
    optimizer = AdaPM(ours, lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, rank=64, dense_fallback=False,
                      residual=residual, foreach=foreach, maximize=maximize)
    kinds = [plan.describe_momentum() for plan in optimizer.plans()]
    assert kinds[:4] == ["lowrank(r=5)", "lowrank(r=4)", "lowrank(r=7)", "q:lowrank(r=4) k:lowrank(r=4) v:full"]
    reference = torch.optim.AdamW(theirs, lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, maximize=maximize)
    params = [p for _, p in ours]
    step_together([(optimizer, params), (reference, theirs)], 12, none_every=5)
    for a, b in zip(params, theirs):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)
    # the low-rank momentum reconstructs AdamW's exp_avg
    for a, b in zip(params[:3], theirs[:3]):
        state = optimizer.state[a]
        torch.testing.assert_close((state["lowrank_left"] @ state["lowrank_right"])[0], reference.state[b]["exp_avg"],
                                   rtol=1e-10, atol=1e-12)


def test_no_momentum_block_is_adam_with_beta1_zero():
    ours = named_params([("layers.0.self_attn.o_proj.weight", (5, 4)), ("embed_tokens.weight", (9, 4))])
    theirs = [p.detach().clone().requires_grad_() for _, p in ours]
    optimizer = AdaPM(ours, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.05)
    assert [plan.describe_momentum() for plan in optimizer.plans()] == ["none", "none"]
    reference = torch.optim.AdamW(theirs, lr=1e-2, betas=(0.0, 0.99), weight_decay=0.05)
    for step in range(10):
        grads = random_grads(theirs, step)
        set_grads([p for _, p in ours], grads)
        set_grads(theirs, grads)
        optimizer.step()
        reference.step()
    for (_, a), b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
        assert "exp_avg" not in optimizer.state[a]


def test_low_rank_momentum_against_formula_and_compact_v():
    """One step by hand: m~ = beta1 L R + (1 - beta1) g, u = (m~/bc1) / (sqrt(v_row/bc2) + eps)."""
    (name, param), = named_params([("mlp.gate_proj.weight", (6, 10))])
    optimizer = AdaPM([(name, param)], lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0, rank=2,
                      second_moment="mini")
    for step in range(3):
        set_grads([param], random_grads([param], step))
        optimizer.step()
    state = optimizer.state[param]
    assert state["lowrank_left"].shape == (1, 6, 2) and state["exp_avg_sq"].shape == (6,)
    left, right, v = state["lowrank_left"].clone(), state["lowrank_right"].clone(), state["exp_avg_sq"].clone()
    torch.testing.assert_close(left[0].T @ left[0], torch.eye(2, dtype=torch.float64))  # orthonormal basis
    before = param.detach().clone()
    grad = random_grads([param], 3)[0]
    set_grads([param], [grad])
    optimizer.step()
    t = 4
    target = 0.9 * (left[0] @ right[0]) + 0.1 * grad
    v_new = 0.99 * v + 0.01 * grad.square().mean(dim=1)
    u = (target / (1 - 0.9**t)) / ((v_new / (1 - 0.99**t)).sqrt() + 1e-8).unsqueeze(1)
    torch.testing.assert_close(param.detach(), before - 0.1 * u, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state["exp_avg_sq"], v_new)
    # the new factors are the projection of m~ on the refitted basis
    new_left, new_right = state["lowrank_left"][0], state["lowrank_right"][0]
    torch.testing.assert_close(new_right, new_left.T @ target)


def test_per_head_compact_v_and_residual_options():
    spec = [("layers.0.self_attn.q_proj.weight", (8, 6))]
    (name, param), = named_params(spec)
    optimizer = AdaPM([(name, param)], rank=2, second_moment="mini", head_dim=4, residual="clip", residual_clip=0.5)
    assert optimizer.plans()[0].describe_second_moment() == "mini(per head)"
    set_grads([param], random_grads([param], 0))
    optimizer.step()
    assert optimizer.state[param]["exp_avg_sq"].shape == (2,)
    grad = random_grads([param], 0)[0]
    expected = 0.001 * torch.stack([grad[:4].square().mean(), grad[4:].square().mean()])
    torch.testing.assert_close(optimizer.state[param]["exp_avg_sq"], expected)


# ---------------------------------------------------------------------------------------------------------
# the mask / alpha through _masking


def test_async_mask_and_norm_alpha_on_a_low_rank_block():
    (name, param), = named_params([("mlp.up_proj.weight", (6, 8))])
    optimizer = AdaPM([(name, param)], lr=0.05, betas=(0.9, 0.999), weight_decay=0.1, rank=3, mask="async",
                      alpha="norm")
    for step in range(4):
        set_grads([param], random_grads([param], step))
        optimizer.step()
    state = optimizer.state[param]
    left, right, v = state["lowrank_left"][0].clone(), state["lowrank_right"][0].clone(), state["exp_avg_sq"].clone()
    before = param.detach().clone()
    grad = random_grads([param], 4)[0]
    set_grads([param], [grad])
    optimizer.step()
    t = 5
    m_prev = left @ right
    target = 0.9 * m_prev + 0.1 * grad
    v_new = 0.999 * v + 0.001 * grad.square()
    u = (target / (1 - 0.9**t)) / ((v_new / (1 - 0.999**t)).sqrt() + 1e-8)
    phi = (m_prev * grad > 0).double()  # previous momentum = L R
    assert 0 < phi.mean() < 1
    alpha = u.norm() / (phi * u).norm()
    expected = before * (1 - 0.05 * 0.1) - 0.05 * alpha * phi * u
    torch.testing.assert_close(param.detach(), expected, rtol=1e-12, atol=1e-12)
    stats = optimizer.statistics(per_tensor=True)["tensors"][name]
    assert stats["alpha"] == pytest.approx(float(alpha)) and stats["mask_ratio"] == pytest.approx(float(phi.mean()))
    # the masked step has the unmasked step's norm
    torch.testing.assert_close((alpha * phi * u).norm(), u.norm())


# ---------------------------------------------------------------------------------------------------------
# the policy


def tiny_llama(tie=False):
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=64, max_position_embeddings=64,
                                      tie_word_embeddings=tie)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


def tiny_gpt2():
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def policy(optimizer):
    return {plan.name: plan.describe_momentum() for plan in optimizer.plans()}


def test_policy_llama():
    optimizer = AdaPM(tiny_llama().named_parameters(), rank=4)
    got = policy(optimizer)
    layer = "model.layers.0."
    assert got["model.embed_tokens.weight"] == "none"
    assert got["lm_head.weight"] == "none"
    assert got[layer + "self_attn.o_proj.weight"] == "none"
    assert got[layer + "self_attn.v_proj.weight"] == "full"
    for key in ("self_attn.q_proj", "self_attn.k_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
        assert got[layer + key + ".weight"] == "lowrank(r=4)", key
    assert got[layer + "input_layernorm.weight"] == "full" and got["model.norm.weight"] == "full"
    assert AdaPM(tiny_llama().named_parameters(), lm_head="full").plans()[-1].describe_momentum() == "full"


def test_policy_gpt2_fused_c_attn():
    model = tiny_gpt2()
    optimizer = AdaPM(model.named_parameters(), rank=4, second_moment="mini", head_dim=8)
    got = policy(optimizer)
    assert got["transformer.wte.weight"] == "none"
    assert got["transformer.wpe.weight"] == "full"
    assert got["transformer.h.0.attn.c_attn.weight"] == "q:lowrank(r=4) k:lowrank(r=4) v:full"
    assert got["transformer.h.0.attn.c_proj.weight"] == "none"
    assert got["transformer.h.0.mlp.c_fc.weight"] == got["transformer.h.0.mlp.c_proj.weight"] == "lowrank(r=4)"
    assert got["transformer.h.0.attn.c_attn.bias"] == "full"
    plan = next(p for p in optimizer.plans() if p.name == "transformer.h.0.attn.c_attn.weight")
    assert plan.transposed and plan.canonical_shape == (96, 32)  # Conv1D (in, out): outputs are columns
    assert [(s.start, s.stop, s.rows_per_v) for s in plan.segments] == [(0, 32, 8), (32, 64, 8), (64, 96, 1)]
    # the V slice's momentum is exactly AdamW's on the columns 2d:3d of the Conv1D weight
    weight = model.transformer.h[0].attn.c_attn.weight
    x = torch.randint(0, 64, (2, 16))
    model(x, labels=x).loss.backward()
    grad = weight.grad.clone()
    optimizer.step()
    state = optimizer.state[weight]
    torch.testing.assert_close(state["exp_avg"], 0.1 * grad[:, 64:].T)
    assert state["lowrank_left"].shape == (2, 32, 4) and state["exp_avg_sq"].shape == (4 + 4 + 32,)


def test_policy_roberta():
    config = transformers.RobertaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                        num_attention_heads=4, vocab_size=64, max_position_embeddings=40)
    model = transformers.RobertaForSequenceClassification(config)
    got = policy(AdaPM(model.named_parameters(), rank=4))
    layer = "roberta.encoder.layer.0."
    assert got["roberta.embeddings.word_embeddings.weight"] == "none"
    assert got["roberta.embeddings.position_embeddings.weight"] == "full"
    assert got[layer + "attention.self.query.weight"] == got[layer + "attention.self.key.weight"] == "lowrank(r=4)"
    assert got[layer + "attention.self.value.weight"] == "full"
    assert got[layer + "attention.output.dense.weight"] == "none"
    assert got[layer + "intermediate.dense.weight"] == got[layer + "output.dense.weight"] == "lowrank(r=4)"
    assert got["classifier.dense.weight"] == "full"  # unrecognised: `other`


def test_regex_overrides_and_logged_table(caplog):
    with caplog.at_level(logging.INFO, logger="hf_alphaadam.optim.adapm"):
        optimizer = AdaPM(tiny_llama().named_parameters(), rank=4, none_modules="v_proj|norm",
                          full_modules=r"layers\.1\.mlp", lowrank_modules="o_proj")
    got = policy(optimizer)
    assert got["model.layers.0.self_attn.v_proj.weight"] == "none"
    assert got["model.layers.0.input_layernorm.weight"] == "none"
    assert got["model.layers.1.mlp.up_proj.weight"] == "full"
    assert got["model.layers.0.mlp.up_proj.weight"] == "lowrank(r=4)"
    assert got["model.layers.0.self_attn.o_proj.weight"] == "lowrank(r=4)"
    logged = [r.getMessage() for r in caplog.records if "per-tensor policy" in r.getMessage()]
    assert len(logged) == 1 and "model.layers.0.self_attn.v_proj.weight" in logged[0]


def test_unnamed_parameters():
    params = [torch.nn.Parameter(torch.randn(4, 6)), torch.nn.Parameter(torch.randn(6))]
    with pytest.raises(ValueError, match="needs parameter names.*named_parameters"):
        AdaPM(params)
    optimizer = AdaPM(params, policy="lowrank", rank=2)
    assert [p.describe_momentum() for p in optimizer.plans()] == ["lowrank(r=2)", "full"]
    params[0].grad, params[1].grad = torch.randn(4, 6), torch.randn(6)
    optimizer.step()


# ---------------------------------------------------------------------------------------------------------
# memory


def test_state_bytes_tiny_gpt2_against_formula():
    model = tiny_gpt2()
    d, rank, layers, vocab, positions = 32, 4, 2, 64, 32
    optimizer = AdaPM(model.named_parameters(), rank=rank)
    expected_momentum = (positions * d  # wpe full; wte none
                         + layers * (2 * rank * (d + d) + d * d  # c_attn: q, k low-rank; v full
                                     + 2 * rank * (d + 4 * d)  # c_fc, mlp.c_proj
                                     + 4 * d + 3 * d + d + 4 * d + d)  # ln_1, ln_2, c_attn.b, c_proj.b, c_fc.b, mlp b
                         + 2 * d)  # ln_f
    numel = sum(p.numel() for p in model.parameters())
    planned = optimizer.state_bytes()
    assert sum(planned.values()) == 4 * (expected_momentum + numel)  # fp32: momentum + Adam v
    memory = optimizer_state_memory(model, rank=rank)
    assert memory["adapm"]["momentum"] == 4 * expected_momentum
    assert memory["adamw"]["total"] == 8 * numel
    x = torch.randint(0, vocab, (2, 8))
    model(x, labels=x).loss.backward()
    optimizer.step()
    assert optimizer.state_bytes() == planned  # allocated == planned
    mini = optimizer_state_memory(model, rank=rank, second_moment="mini", head_dim=8)
    assert mini["adapm"]["second_moment"] < memory["adapm"]["second_moment"] / 5
    table = compare_with_adamw(model, rank=rank, log=False)
    assert "AdamW" in table and "momentum" in table


def test_meta_model_memory_without_allocation():
    config = transformers.LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                                      num_attention_heads=4, vocab_size=1000)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    memory = optimizer_state_memory(model, rank=8, second_moment="mini", head_dim=64)
    assert 0 < memory["ratio"]["total"] < 0.2


# ---------------------------------------------------------------------------------------------------------
# training on real data


def test_trains_char_task(char_task):
    model = char_task.model()
    optimizer = AdaPM(model.named_parameters(), lr=3e-3, rank=8, lowrank_modules=r"^2\.weight$",
                      none_modules=r"^0\.weight$", second_moment="mini", mask="async", alpha="norm")
    assert policy(optimizer)["2.weight"] == "lowrank(r=8)"
    start, end = char_task.train_and_evaluate(model, optimizer, 100)
    assert end < start - 0.6, (start, end)


def shakespeare_tokens(vocab=64, length=8192):
    """Character ids of Tiny Shakespeare (the in-repository excerpt)."""
    path = Path(__file__).resolve().parents[2] / "data" / "tinyshakespeare" / "input.txt"
    text = path.read_text(encoding="utf-8")[:length]
    index = {c: i % vocab for i, c in enumerate(sorted(set(text)))}
    return torch.tensor([index[c] for c in text])


def test_trains_tiny_llama():
    model = tiny_llama()
    tokens = shakespeare_tokens()
    optimizer = AdaPM(model.named_parameters(), lr=1e-2, rank=4, second_moment="mini", head_dim=8)
    generator = torch.Generator().manual_seed(0)
    held_out = torch.stack([tokens[-33 - 40 * k:-1 - 40 * k] for k in range(8)])
    with torch.no_grad():
        start = model(held_out, labels=held_out).loss.item()
    for _ in range(40):
        starts = torch.randint(0, tokens.numel() - 400, (8,), generator=generator)
        batch = torch.stack([tokens[s:s + 32] for s in starts])
        optimizer.zero_grad()
        model(batch, labels=batch).loss.backward()
        optimizer.step()
    with torch.no_grad():
        end = model(held_out, labels=held_out).loss.item()
    assert end < start - 0.8, (start, end)


# ---------------------------------------------------------------------------------------------------------
# resume, paths


def _run(optimizer, params, steps, start=0):
    run_steps(optimizer, params, steps, start, none_every=6, schedule=False)


def test_bf16_params_keep_fp32_state_by_default():
    """The factors and moments of bf16 parameters are fp32 unless ``state_dtype`` says otherwise (the table checks
    that a resume keeps whatever dtype was saved)."""
    named = named_params(EQUIVALENCE_SPEC, dtype=torch.bfloat16)
    optimizer = AdaPM(named, rank=2, second_moment="mini", head_dim=2, log_policy=False)
    set_grads([p for _, p in named], random_grads([p for _, p in named], 0))
    optimizer.step()
    first = optimizer.state[named[0][1]]
    assert {key: first[key].dtype for key in ("lowrank_left", "lowrank_right", "exp_avg_sq")} == dict.fromkeys(
        ("lowrank_left", "lowrank_right", "exp_avg_sq"), torch.float32)


def _step_both_and_compare(reference, fast, ref_params, fast_params, dtype, steps: int) -> None:
    """Step the reference loop and the fast path on the same gradients; parameters and every state entry agree
    (fp64: to 1e-10; bf16: to its rounding)."""
    rtol, atol = (1e-10, 1e-12) if dtype == torch.float64 else (0, 1e-2)
    step_together([(reference, [p for _, p in ref_params]), (fast, [p for _, p in fast_params])], steps, none_every=5)
    for (_, a), (_, b) in zip(ref_params, fast_params):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
        for key, value in reference.state[a].items():
            torch.testing.assert_close(value, fast.state[b][key], rtol=max(rtol, 1e-4 if dtype != torch.float64 else 0),
                                       atol=max(atol, 1e-5 if dtype != torch.float64 else 0), msg=key)


# ---------------------------------------------------------------------------------------------------------
# errors


def good():
    return [("mlp.up_proj.weight", torch.nn.Parameter(torch.randn(8, 12)))]


# AdaPM's bad arguments that need this model's names; the rest are the table's (optim_db.ADAPM_BAD_ARGS)
BAD_INPUTS = [
    (dict(none_modules="q_proj"), ValueError, "none_modules='q_proj' matches no parameter name"),
    (dict(second_moment="mini", head_dim=3, lowrank_modules="up_proj"), None, None),
]


@pytest.mark.parametrize("kwargs,error,message", BAD_INPUTS)
def test_bad_inputs(kwargs, error, message):
    if error is None:
        AdaPM(good(), **kwargs)  # head_dim only applies to query / key blocks
        return
    with pytest.raises(error, match=message):
        AdaPM(good(), **kwargs)


def test_head_dim_must_divide_the_query_rows():
    with pytest.raises(ValueError, match="head_dim=3 does not divide"):
        AdaPM([("self_attn.q_proj.weight", torch.nn.Parameter(torch.randn(8, 4)))], second_moment="mini", head_dim=3)


def test_resume_with_other_rank_is_refused():
    params = good()
    optimizer = AdaPM(params, rank=2)
    params[0][1].grad = torch.randn(8, 12)
    optimizer.step()
    state = optimizer.state_dict()
    for change in (dict(rank=3), dict(second_moment="mini"), dict(full_modules="up")):
        other = AdaPM(params, rank=2, log_policy=False)
        modified = {"state": state["state"], "param_groups": [{**state["param_groups"][0], **change}]}
        with pytest.raises(ValueError, match=r"determine the shapes of AdaPM.s state and cannot change on resume"):
            other.load_state_dict(modified)  # the saved options differ in a layout option from the current ones


def test_flat_partition_with_low_rank_policy_is_refused():
    (name, param), = good()
    flat = lambda: [{"params": [param], "param_names": [name], "whole_numel": param.numel()}]  # noqa: E731
    with pytest.raises(ValueError, match="flat ZeRO partition.*Supported on shards: full or no momentum"):
        AdaPM(flat(), rank=2)
    with pytest.raises(ValueError, match="flat ZeRO partition"):
        AdaPM(flat(), full_modules="up_proj", second_moment="mini")
    AdaPM(flat(), rank=2, full_modules="up_proj")  # element-wise: allowed


@pytest.mark.parametrize("options", [
    dict(),
    dict(second_moment="mini", head_dim=2, weight_decay=0.0),
    dict(mask="async", alpha="norm", maximize=True),
])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_fast_path_cache_blocks_equal_reference(monkeypatch, options, dtype):
    """The CPU fast path cuts element-wise passes into cache-sized blocks; with tiny blocks (none divides the
    tensors) it still equals the reference loop, for transposed, fused, plain and momentum-free tensors."""
    monkeypatch.setattr(importlib.import_module("hf_alphaadam.optim._adapm_fast"), "CACHE_BLOCK_NUMEL", 7)
    spec = EQUIVALENCE_SPEC + [("h.0.mlp.c_fc.weight", (6, 10)), ("layers.0.self_attn.o_proj.weight", (5, 4)),
                               ("embed_tokens.weight", (9, 4)), ("mlp.gate_proj.weight", (3, 4, 2))]
    ref_params, fast_params = named_params(spec, dtype=dtype), named_params(spec, dtype=dtype)
    kwargs = dict(rank=2, lr=1e-2, lowrank_modules=r"gate_proj", **options)
    reference = AdaPM(ref_params, foreach=False, **kwargs)
    fast = AdaPM(fast_params, foreach=True, **kwargs)
    assert fast.plans()[6].transposed and fast.plans()[6].describe_momentum() == "lowrank(r=2)"
    _step_both_and_compare(reference, fast, ref_params, fast_params, dtype, steps=6)


def test_state_in_parameter_layout_and_old_layout_resumes():
    """Full-size state of a transposed (Conv1D) weight is stored in the parameter's memory order; state saved in
    row-major canonical order (older versions) is re-laid out on the next step, values unchanged."""
    spec = [("h.0.attn.c_attn.weight", (4, 12)), ("h.0.mlp.c_fc.weight", (6, 10))]
    a, b = named_params(spec), named_params(spec)
    first, second = AdaPM(a, rank=2), AdaPM(b, rank=2)
    for optimizer, params in ((first, a), (second, b)):
        _run(optimizer, [p for _, p in params], 2)
    for _, p in a:
        state = first.state[p]
        assert state["exp_avg_sq"].stride(0) == 1  # (rows, cols) canonical, column-major like param.mT
    for _, p in b:  # simulate an old checkpoint: row-major canonical state
        for key in ("exp_avg", "exp_avg_sq"):
            if key in second.state[p]:
                second.state[p][key] = second.state[p][key].contiguous()
    _run(first, [p for _, p in a], 3, start=2)
    _run(second, [p for _, p in b], 3, start=2)
    for (_, p), (_, q) in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-14)
        for key, value in first.state[p].items():
            torch.testing.assert_close(value, second.state[q][key], rtol=1e-13, atol=1e-14)
        assert second.state[q]["exp_avg_sq"].stride(0) == 1
