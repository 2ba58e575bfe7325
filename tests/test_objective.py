"""The LoopLM objective (and the model's exit distribution) against naive implementations: full logits,
F.cross_entropy and hand loops."""

import math

import pytest
import torch
import torch.nn.functional as F

from ouro.cross_entropy import (
    CPU_MAX_CHUNK,
    IGNORE_INDEX,
    chunked_cross_entropy,
    cross_entropy_with_known_gradient,
    per_step_cross_entropy,
)
from ouro.model.exit import exit_distribution, exit_log_distribution, q_exit_steps
from ouro.objective import (
    q_exit_cross_entropy,
    stage1_loss,
    stage1_loss_from_hidden,
    stage2_gate_loss,
)


def hand_exit_distribution(gate_logits: torch.Tensor) -> torch.Tensor:
    """p(t) = λ_t Π_{j<t} (1 - λ_j) for t < T, p(T) = Π_{j<T} (1 - λ_j), one step at a time."""
    lam = torch.sigmoid(gate_logits)
    steps = lam.shape[-1]
    columns = []
    survive = torch.ones_like(lam[..., 0])
    for t in range(steps):
        columns.append(survive * lam[..., t] if t < steps - 1 else survive)
        survive = survive * (1 - lam[..., t])
    return torch.stack(columns, -1)


def naive_per_step_ce(hidden_states, weight, targets):
    """Full logits of every step and F.cross_entropy (0 where ignored): (tokens, steps)."""
    return torch.stack(
        [
            F.cross_entropy(h @ weight.T, targets, ignore_index=IGNORE_INDEX, reduction="none")
            for h in hidden_states
        ],
        -1,
    )


def problem(tokens=23, hidden=16, vocab=41, steps=4, dtype=torch.float64, ignored=(2, 5, 17)):
    hs = [torch.randn(tokens, hidden, dtype=dtype, requires_grad=True) for _ in range(steps)]
    weight = torch.randn(vocab, hidden, dtype=dtype, requires_grad=True)
    gates = (2 * torch.randn(tokens, steps, dtype=dtype)).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,))
    targets[list(ignored)] = IGNORE_INDEX
    return hs, weight, gates, targets


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


# ---------------------------------------------------------------------------------------- exit distribution
def test_exit_distribution_sums_to_one_and_matches_hand_loop():
    gates = 3 * torch.randn(5, 7, 4, dtype=torch.float64)
    p = exit_distribution(gates)  # computed in fp32 whatever the input dtype
    assert p.dtype == torch.float32
    torch.testing.assert_close(p.sum(-1), torch.ones(5, 7), rtol=0, atol=1e-6)
    torch.testing.assert_close(p.double(), hand_exit_distribution(gates), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(
        exit_log_distribution(gates).double(), hand_exit_distribution(gates).log(), rtol=1e-5, atol=1e-6
    )


def test_exit_distribution_special_cases():
    # Certain exit at step 1; certain stay everywhere (the last step takes everything); one step only.
    p = exit_distribution(torch.tensor([[40.0, 0.0, 0.0], [-40.0, -40.0, -40.0]]))
    torch.testing.assert_close(p, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), rtol=0, atol=1e-6)
    assert torch.equal(exit_distribution(torch.randn(3, 1)), torch.ones(3, 1))
    # Stable in the log domain where the plain product underflows.
    log_p = exit_log_distribution(torch.full((1, 4), 200.0))
    assert torch.isfinite(log_p).all() and log_p[0, 3] == pytest.approx(-600.0, rel=1e-4)


@pytest.mark.parametrize("q", [0.2, 0.5, 0.8, 0.999, 1.0])
def test_q_exit_steps_match_first_step_reaching_threshold(q):
    p = hand_exit_distribution(2 * torch.randn(50, 4, dtype=torch.float64))
    steps = q_exit_steps(p, q)
    for i in range(50):
        cdf, expected = 0.0, 3
        if q < 1.0:
            for t in range(4):
                cdf += float(p[i, t])
                if cdf >= q:
                    expected = t
                    break
        assert int(steps[i]) == expected


def test_q_exit_cross_entropy_matches_hand():
    p = hand_exit_distribution(2 * torch.randn(30, 4, dtype=torch.float64))
    ce = torch.rand(30, 4, dtype=torch.float64)
    mask = torch.rand(30) > 0.3
    mean_ce, depth = q_exit_cross_entropy(ce, p, mask, 0.6)
    chosen = q_exit_steps(p, 0.6)
    rows = mask.nonzero().flatten().tolist()
    assert float(mean_ce) == pytest.approx(sum(float(ce[i, chosen[i]]) for i in rows) / len(rows))
    assert float(depth) == pytest.approx(sum(int(chosen[i]) + 1 for i in rows) / len(rows))


# ------------------------------------------------------------------------------------ chunked cross-entropy
@pytest.mark.parametrize("chunk", [1, 5, 23, 1000])
def test_chunked_cross_entropy_equals_naive_with_gradients(chunk):
    hs, weight, _, targets = problem()
    hidden = hs[0]
    got = chunked_cross_entropy(hidden, weight, targets, chunk_size=chunk)
    expected = F.cross_entropy(hidden @ weight.T, targets, ignore_index=IGNORE_INDEX, reduction="none")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)
    assert (got[targets == IGNORE_INDEX] == 0).all()
    upstream = torch.randn(hidden.shape[0], dtype=torch.float64)
    got_grads = grads((got.double() * upstream).sum(), [hidden, weight])
    expected_grads = grads((expected * upstream).sum(), [hidden, weight])
    for a, b in zip(got_grads, expected_grads):  # softmax runs in fp32 inside
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_chunked_cross_entropy_more_rows_than_one_cpu_block():
    tokens = 2 * CPU_MAX_CHUNK + 37
    hidden = torch.randn(tokens, 8, requires_grad=True)
    weight = torch.randn(19, 8, requires_grad=True)
    targets = torch.randint(0, 19, (tokens,))
    targets[::7] = IGNORE_INDEX
    got = chunked_cross_entropy(hidden, weight, targets, chunk_size=10 * tokens)
    naive = F.cross_entropy(hidden @ weight.T, targets, ignore_index=IGNORE_INDEX, reduction="none")
    torch.testing.assert_close(got, naive, rtol=1e-5, atol=1e-5)
    upstream = torch.rand(tokens)
    for a, b in zip(
        grads((got * upstream).sum(), [hidden, weight]), grads((naive * upstream).sum(), [hidden, weight])
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_chunked_cross_entropy_float32_and_bf16_autocast():
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(41, 16, requires_grad=True)
    targets = torch.randint(0, 41, (37,))
    got = chunked_cross_entropy(hidden, weight, targets, chunk_size=8)
    naive = F.cross_entropy(hidden @ weight.T, targets, reduction="none")
    torch.testing.assert_close(got, naive, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_bf16 = chunked_cross_entropy(hidden, weight, targets, chunk_size=8)
        naive_bf16 = F.cross_entropy((hidden @ weight.T).float(), targets, reduction="none")
    assert got_bf16.dtype == torch.float32
    torch.testing.assert_close(got_bf16, naive_bf16, rtol=1e-2, atol=1e-2)
    g_got = grads(got_bf16.sum(), [hidden, weight])
    g_naive = grads(naive_bf16.sum(), [hidden, weight])
    for a, b in zip(g_got, g_naive):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=3e-2, atol=3e-2)


def test_chunked_cross_entropy_gradcheck():
    hidden = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 6, IGNORE_INDEX, 3, 3, 1, IGNORE_INDEX, 2, 5])
    # The function returns fp32 losses; check the gradient numerically against the double-precision naive one.
    got = grads(chunked_cross_entropy(hidden, weight, targets, chunk_size=4).double().sum(), [hidden, weight])
    eps = 1e-6
    for tensor, analytic in zip((hidden, weight), got):
        numeric = torch.zeros_like(tensor)
        for index in range(tensor.numel()):
            with torch.no_grad():
                flat = tensor.view(-1)
                flat[index] += eps
                up = F.cross_entropy(hidden @ weight.T, targets, reduction="sum")
                flat[index] -= 2 * eps
                down = F.cross_entropy(hidden @ weight.T, targets, reduction="sum")
                flat[index] += eps
            numeric.view(-1)[index] = (up - down) / (2 * eps)
        torch.testing.assert_close(analytic, numeric, rtol=1e-4, atol=1e-5)


def test_bf16_weight_gradient_accumulated_in_vocabulary_slices(monkeypatch):
    import ouro.cross_entropy

    hs, weight, _, targets = problem(tokens=40, vocab=41, steps=3, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        whole = per_step_cross_entropy(hs, weight, targets, chunk_size=16)
    (expected,) = grads(whole.sum(), [weight])
    monkeypatch.setattr(ouro.cross_entropy._GradWeight, "SLICE", 7)  # 41 = 5 x 7 + 6
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sliced = per_step_cross_entropy(hs, weight, targets, chunk_size=16)
    (got,) = grads(sliced.sum(), [weight])
    assert torch.equal(sliced, whole)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    naive = naive_per_step_ce([h.bfloat16().float() for h in hs], weight.bfloat16().float(), targets)
    (naive_grad,) = grads(naive.sum(), [weight])
    assert (got - naive_grad).abs().max() <= 0.02 * naive_grad.abs().max()  # bf16 products, fp32 sums


def test_hidden_state_shape_is_checked():
    with pytest.raises(ValueError, match="does not match"):
        per_step_cross_entropy([torch.randn(5, 3)], torch.randn(4, 3), torch.zeros(6, dtype=torch.long))


def test_chunk_size_must_be_positive():
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_cross_entropy(torch.randn(2, 3), torch.randn(4, 3), torch.zeros(2, dtype=torch.long), 0)


def test_per_step_cross_entropy_stacks_steps():
    hs, weight, _, targets = problem()
    got = per_step_cross_entropy(hs, weight, targets, chunk_size=6)
    assert got.shape == (23, 4)
    torch.testing.assert_close(got.double(), naive_per_step_ce(hs, weight, targets), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------- Stage I
def naive_stage1(hs, weight, gates, targets, beta):
    ce = naive_per_step_ce(hs, weight, targets)
    p = hand_exit_distribution(gates)
    entropy = -(p * p.log()).sum(-1)
    per_token = (p * ce).sum(-1) - beta * entropy
    mask = targets != IGNORE_INDEX
    return per_token[mask].mean(), ce, p, entropy, mask


@pytest.mark.parametrize("beta", [0.0, 0.05, 0.1])
def test_stage1_loss_and_gradients_equal_naive(beta):
    hs, weight, gates, targets = problem()
    mask = targets != IGNORE_INDEX
    ce = per_step_cross_entropy(hs, weight, targets, chunk_size=7)
    result = stage1_loss(ce, gates, mask, beta)
    expected, naive_ce, p, entropy, _ = naive_stage1(hs, weight, gates, targets, beta)
    assert float(result.loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    inputs = [*hs, weight, gates]
    for name, a, b in zip(
        ["h0", "h1", "h2", "h3", "weight", "gates"], grads(result.loss, inputs), grads(expected, inputs)
    ):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-7, msg=name)
    # Logged statistics: means over counted tokens.
    torch.testing.assert_close(
        result.ce_per_step.double(), naive_ce[mask].mean(0).detach(), rtol=1e-6, atol=1e-6
    )
    torch.testing.assert_close(result.exit_probs.double(), p[mask].mean(0).detach(), rtol=1e-6, atol=1e-6)
    expected_step = (p * torch.arange(1, 5, dtype=p.dtype)).sum(-1)[mask].mean().detach()
    assert float(result.expected_step) == pytest.approx(float(expected_step), rel=1e-6)
    assert float(result.entropy) == pytest.approx(float(entropy[mask].mean().detach()), rel=1e-6)


@pytest.mark.parametrize("chunk,beta", [(1, 0.05), (7, 0.0), (7, 0.1), (1000, 0.05)])
def test_stage1_loss_from_hidden_computes_the_same_loss_and_gradients_in_one_pass(chunk, beta):
    hs, weight, gates, targets = problem()
    mask = targets != IGNORE_INDEX
    result, ce = stage1_loss_from_hidden(hs, weight, targets, gates, mask, beta, chunk_size=chunk)
    expected, naive_ce, _, entropy, _ = naive_stage1(hs, weight, gates, targets, beta)
    assert not ce.requires_grad
    torch.testing.assert_close(ce.double(), naive_ce.detach(), rtol=1e-6, atol=1e-6)
    assert float(result.loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    inputs = [*hs, weight, gates]
    scale = 0.25  # as under gradient accumulation: the carrier's incoming gradient scales every gradient
    for name, a, b in zip(
        ["h0", "h1", "h2", "h3", "weight", "gates"],
        grads(scale * result.loss, inputs),
        grads(scale * expected, inputs),
    ):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-7, msg=name)
    assert float(result.entropy) == pytest.approx(float(entropy[mask].mean().detach()), rel=1e-6)


def test_stage1_loss_from_hidden_with_a_mask_that_excludes_tokens_and_a_frozen_lm_head():
    hs, weight, gates, targets = problem(ignored=())
    weight.requires_grad_(False)
    mask = torch.arange(targets.shape[0]) % 3 != 0
    result, _ = stage1_loss_from_hidden(hs, weight, targets, gates, mask, 0.05, chunk_size=5)
    naive_ce = naive_per_step_ce(hs, weight, targets)
    reference = stage1_loss(naive_ce, gates, mask, 0.05).loss
    inputs = [*hs, gates]
    for a, b in zip(grads(result.loss, inputs), grads(reference, inputs)):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-7)


def test_stage1_loss_from_hidden_under_bf16_autocast_and_without_gradients():
    hs, weight, gates, targets = problem(tokens=40, vocab=41, dtype=torch.float32)
    mask = targets != IGNORE_INDEX
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused, _ = stage1_loss_from_hidden(hs, weight, targets, gates, mask, 0.05, chunk_size=16)
        plain = stage1_loss(per_step_cross_entropy(hs, weight, targets, chunk_size=16), gates, mask, 0.05)
    assert torch.equal(fused.loss.detach(), plain.loss.detach())
    inputs = [*hs, weight, gates]
    for a, b in zip(grads(fused.loss, inputs), grads(plain.loss, inputs)):
        assert a.dtype == b.dtype
        assert (a - b).abs().max() <= 0.01 * b.abs().max()  # the two round the bf16 products differently
    with torch.no_grad():
        evaluated, ce = stage1_loss_from_hidden(hs, weight, targets, gates, mask, 0.05, chunk_size=16)
    assert torch.equal(evaluated.loss, stage1_loss(ce, gates, mask, 0.05).loss)
    torch.testing.assert_close(ce, naive_per_step_ce(hs, weight, targets).detach(), rtol=1e-5, atol=1e-5)


def test_cross_entropy_with_known_gradient_gives_the_gradient_of_the_weighted_sum():
    hs, weight, _, targets = problem(steps=2)
    loss_grad = torch.rand(targets.shape[0], 2, dtype=torch.float64)
    ce, carrier = cross_entropy_with_known_gradient(hs, weight, targets, loss_grad, chunk_size=4)
    assert float(carrier.detach()) == 0.0
    expected = (loss_grad * naive_per_step_ce(hs, weight, targets)).sum()
    for a, b in zip(grads(carrier, [*hs, weight]), grads(expected, [*hs, weight])):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="tokens x steps"):
        cross_entropy_with_known_gradient(hs, weight, targets, loss_grad[:, :1])


def test_cross_entropy_with_known_gradient_refuses_a_second_backward():
    hs, weight, _, targets = problem(steps=1)
    _, carrier = cross_entropy_with_known_gradient(hs, weight, targets, torch.ones(targets.shape[0], 1))
    carrier.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once"):
        carrier.backward()


def test_stage1_entropy_term_pushes_towards_uniform():
    gates = torch.tensor([[3.0, 0.0, 0.0, 0.0]], requires_grad=True)  # mass concentrated on step 1
    ce = torch.zeros(1, 4)
    loss = stage1_loss(ce, gates, torch.ones(1, dtype=torch.bool), beta=1.0).loss
    with torch.no_grad():
        entropy = -(exit_distribution(gates) * exit_log_distribution(gates)).sum()
    assert float(loss.detach()) == pytest.approx(-float(entropy))
    (grad,) = torch.autograd.grad(loss, gates)
    assert grad[0, 0] > 0  # lowering λ_1 spreads the mass: higher entropy, lower loss


# ---------------------------------------------------------------------------------------------- Stage II
def test_stage2_targets_and_gradient_equal_hand_computation():
    tokens, steps = 29, 4
    ce = (3 + torch.randn(tokens, steps, dtype=torch.float64) * 0.02).requires_grad_()
    ce.data[:, 1] = ce.data[:, 0] - 0.5  # a large improvement from step 1 to step 2 for every token
    gates = torch.randn(tokens, steps, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(tokens, dtype=torch.bool)
    mask[[3, 11]] = False
    result = stage2_gate_loss(ce, gates, mask)

    total = 0.0
    bces = torch.zeros(tokens, steps, dtype=torch.float64)
    for t in range(1, steps):  # t = 2..T in the paper's 1-based numbering
        for i in range(tokens):
            improvement = max(0.0, float(ce.data[i, t - 1]) - float(ce.data[i, t]))
            w = 1.0 / (1.0 + math.exp(-50.0 * (improvement - 0.005)))
            lam = torch.sigmoid(gates[i, t])
            bces[i, t] = -(w * torch.log(1 - lam) + (1 - w) * torch.log(lam))
        total = total + bces[mask, t].mean()
    expected = total / (steps - 1)
    assert float(result.loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)

    (grad_gates,) = torch.autograd.grad(result.loss, gates, retain_graph=True)
    (expected_grad,) = torch.autograd.grad(expected, gates)
    torch.testing.assert_close(grad_gates.double(), expected_grad, rtol=1e-5, atol=1e-8)
    assert (grad_gates[:, 0] == 0).all() and (grad_gates[~mask] == 0).all()
    # Step 2 improved a lot: the target is "continue" (w ≈ 1), so the gradient lowers λ_2.
    assert (grad_gates[mask, 1] > 0).all()
    # The per-step losses are targets only: no gradient reaches them (the LM stays frozen).
    assert result.loss.grad_fn is not None
    assert torch.autograd.grad(result.loss, ce, allow_unused=True)[0] is None


def test_stage2_needs_two_steps():
    with pytest.raises(ValueError, match="2 recurrent steps"):
        stage2_gate_loss(torch.rand(4, 1), torch.randn(4, 1), torch.ones(4, dtype=torch.bool))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_stage1_loss_from_hidden_on_gpu_in_bf16_matches_a_float64_reference():
    hs, weight, gates, targets = problem(
        tokens=300, hidden=64, vocab=1000, dtype=torch.float32, ignored=(3, 99)
    )
    mask = targets != IGNORE_INDEX
    on_gpu = [t.detach().cuda().requires_grad_() for t in (*hs, weight, gates)]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        result, _ = stage1_loss_from_hidden(
            on_gpu[:4], on_gpu[4], targets.cuda(), on_gpu[5], mask.cuda(), 0.05, chunk_size=128
        )
    # Reference: the bf16-rounded inputs in float64 on CPU.
    reference_inputs = [t.detach().bfloat16().double().requires_grad_() for t in (*hs, weight)]
    reference_gates = gates.detach().double().requires_grad_()
    expected, *_ = naive_stage1(reference_inputs[:4], reference_inputs[4], reference_gates, targets, 0.05)
    assert float(result.loss.detach()) == pytest.approx(float(expected.detach()), rel=2e-3)
    got = grads(result.loss, on_gpu)
    want = grads(expected, [*reference_inputs, reference_gates])
    for a, b in zip(got, want):  # bf16 products: compare in norm (elementwise, small entries are noise)
        assert (a.cpu().double() - b).norm() <= 0.02 * b.norm()
