"""Text generation with a looped model: KV cache per (pass, layer), real early exit, KV sharing, left padding.

Reading order: `generate` (the API), `_prefill` (the prompt, every pass), `_decode_step` (one new token per
row, running passes until each row exits), `_sample`.

* **Q-exit** (``exit_threshold`` q): after each pass the exit gate's λ updates the row's exit CDF; a row whose
  CDF reaches q stops there and the remaining passes are **not run** for it (rows that continue are gathered
  into a smaller batch). q = 1.0 runs every pass. What later tokens read for the skipped passes is decided by
  the cache (`ouro.generation.cache`): under ``full`` sharing a copy of the exit pass's keys/values.
* **Static exit** (``exit_step`` k): every token runs passes 0..k; the prompt too.
* The prompt (prefill) runs every pass for every prompt token (later tokens may run deeper and read them); the
  first new token takes the logits of its exit pass.
* **Left padding**: prompts of different lengths are padded on the left; pad keys are masked, positions count
  from each row's first real token, and a pad query sees itself (no empty softmax row).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ouro.generation.cache import LoopKVCache
from ouro.model import AttentionLayout, ExitCDF, OuroForCausalLM, exit_distribution, q_exit_steps

Prompt = str | Sequence[int]


@dataclass
class GenerationResult:
    """What `generate` returns, one entry per prompt."""

    tokens: list[list[int]]
    """New token ids per prompt (up to and including an end token)."""
    texts: list[str] | None
    """Decoded new text per prompt (special tokens skipped), when a tokenizer was given."""
    exit_steps: list[list[int]]
    """0-based exit pass of every new token."""
    cache_bytes: int
    """Bytes of the KV cache (0 without a cache)."""
    decode_passes: int = 0
    """(row, pass) evaluations while decoding (after the prompt): the work early exit saves."""
    decode_tokens: int = 0
    """Tokens produced by decode steps (all but the first per prompt)."""
    prefill_seconds: float = 0.0
    """Wall time of the prompt pass (and the first token's logits)."""
    decode_seconds: float = 0.0
    """Wall time of everything after the prompt pass (decode steps and sampling)."""

    @property
    def decode_tokens_per_second(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    @property
    def mean_depth(self) -> float:
        """Average number of passes per new token (exit pass + 1)."""
        depths = [s + 1 for row in self.exit_steps for s in row]
        return sum(depths) / max(len(depths), 1)


# --------------------------------------------------------------------------------------------------- inputs
def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` with a `tokenizers.Tokenizer` or a transformers tokenizer."""
    if tokenizer is None:
        raise ValueError("text prompts need a tokenizer; pass tokenizer=... or token id lists")
    encoded = tokenizer.encode(text)
    return list(encoded.ids) if hasattr(encoded, "ids") else list(encoded)


def decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def left_pad(
    prompts: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, valid)`` of shape (batch, longest): prompts right-aligned, ``valid`` False on padding."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long, device=device)
    valid = torch.zeros((len(prompts), longest), dtype=torch.bool, device=device)
    for i, prompt in enumerate(prompts):
        ids[i, longest - len(prompt) :] = torch.tensor(prompt, dtype=torch.long, device=device)
        valid[i, longest - len(prompt) :] = True
    return ids, valid


def padded_layout(valid: torch.Tensor) -> AttentionLayout:
    """Layout of a left-padded batch for a full forward: positions from the first real token, pad keys masked."""
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    if bool(valid.all()):
        return AttentionLayout(positions=positions, backend="sdpa")
    seq = valid.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=valid.device).tril()
    eye = torch.eye(seq, dtype=torch.bool, device=valid.device)
    mask = (causal[None] & valid[:, None, :]) | eye[None]
    return AttentionLayout(positions=positions, mask=mask[:, None], backend="sdpa")


# ---------------------------------------------------------------------------------------------------- API
@torch.no_grad()
def generate(
    model: OuroForCausalLM,
    prompts: Prompt | list[Prompt],
    tokenizer: Any = None,
    max_new_tokens: int = 64,
    exit_threshold: float | None = None,
    exit_step: int | None = None,
    kv_sharing: str = "full",
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    stream: Callable[[list[int | None]], None] | None = None,
    use_cache: bool = True,
    num_steps: int | None = None,
) -> GenerationResult:
    """Generate continuations of one prompt or a batch of prompts.

    Args:
        model: The looped model (eval mode is set here).
        prompts: A string, a list of token ids, or a list of either (a batch; left-padded internally).
        tokenizer: Encodes string prompts and decodes the results (`tokenizers.Tokenizer` or transformers).
        max_new_tokens: Most new tokens per prompt.
        exit_threshold: Q-exit threshold q in (0, 1]; default ``config.early_exit_threshold``.
        exit_step: Static exit: every token uses pass ``exit_step`` (0-based) and runs no deeper.
        kv_sharing: ``full`` (a cache per pass), ``last`` or ``mean`` (one cache per layer at decode; 1/T memory).
        temperature: 0 = greedy; otherwise sample from softmax(logits / temperature).
        top_p: Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p.
        seed: Seed of the sampling generator.
        eos_token_id: Token id(s) that end a sequence; default the config's ``eos_token_id``.
        pad_token_id: Id used for left padding (never attended to); default pad, then eos, then 0.
        stream: Called after every step with the new token of each prompt (None once a prompt has ended).
        use_cache: False recomputes the whole sequence for every token (reference path; every pass runs).
        num_steps: Passes of the shared stack (default ``config.total_ut_steps``); more than trained runs the
            same weights further.
    """
    config = model.config
    steps = config.total_ut_steps if num_steps is None else num_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if exit_step is not None and exit_threshold is not None:
        raise ValueError("pass either exit_step (static exit) or exit_threshold (Q-exit), not both")
    if exit_step is not None and not 0 <= exit_step < steps:
        raise ValueError(f"exit_step must lie in [0, {steps - 1}] (0-based pass), got {exit_step}")
    q = config.early_exit_threshold if exit_threshold is None else float(exit_threshold)
    if not 0.0 < q <= 1.0:
        raise ValueError(f"exit_threshold must lie in (0, 1], got {q}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"temperature must be >= 0 and top_p in (0, 1], got {temperature} and {top_p}")

    single = isinstance(prompts, str) or (len(prompts) > 0 and isinstance(prompts[0], int))
    batch_prompts = [prompts] if single else list(prompts)
    if not batch_prompts:
        raise ValueError("prompts is empty: pass a string, a list of token ids, or a list of either")
    ids_list = [encode(tokenizer, p) if isinstance(p, str) else [int(t) for t in p] for p in batch_prompts]
    eos = eos_token_id if eos_token_id is not None else config.eos_token_id
    eos_ids = set([eos] if isinstance(eos, int) else (eos or []))
    pad = (
        pad_token_id
        if pad_token_id is not None
        else (config.pad_token_id if config.pad_token_id is not None else (min(eos_ids) if eos_ids else 0))
    )
    device = next(model.parameters()).device
    ids, valid = left_pad(ids_list, pad, device)
    positions = ids.shape[1] + max_new_tokens
    if positions > config.max_position_embeddings:
        room = config.max_position_embeddings - ids.shape[1]
        fix = f"lower max_new_tokens to {room}" if room > 0 else "shorten the prompt"
        raise ValueError(
            f"the prompt ({ids.shape[1]} tokens) plus max_new_tokens ({max_new_tokens}) needs {positions} "
            f"positions but the model has max_position_embeddings {config.max_position_embeddings}; {fix}"
        )
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    was_training = model.training
    model.eval()
    try:
        runner = _CachedRun if use_cache else _UncachedRun
        run = runner(model, ids, valid, max_new_tokens, q, exit_step, kv_sharing, steps)
        tokens: list[list[int]] = [[] for _ in batch_prompts]
        exits: list[list[int]] = [[] for _ in batch_prompts]
        finished = torch.zeros(len(batch_prompts), dtype=torch.bool, device=device)
        start = time.perf_counter()
        logits, steps = run.first()
        _sync(device)
        prefill_s = time.perf_counter() - start
        for i in range(max_new_tokens):
            new = _sample(logits, temperature, top_p, generator)
            alive = (~finished).nonzero().flatten().tolist()
            emitted: list[int | None] = [None] * len(batch_prompts)
            for j, row in enumerate(alive):
                token = int(new[j])
                tokens[row].append(token)
                exits[row].append(int(steps[j]))
                emitted[row] = token
                if token in eos_ids:
                    finished[row] = True
            if stream is not None:
                stream(emitted)
            if bool(finished.all()) or i == max_new_tokens - 1:
                break
            full_new = torch.full((len(batch_prompts),), pad, dtype=torch.long, device=device)
            full_new[torch.tensor(alive, device=device)] = new
            logits, steps = run.next(full_new, ~finished)
        _sync(device)
        decode_s = time.perf_counter() - start - prefill_s
    finally:
        model.train(was_training)
    texts = [decode(tokenizer, t) for t in tokens] if tokenizer is not None else None
    return GenerationResult(
        tokens=tokens,
        texts=texts,
        exit_steps=exits,
        cache_bytes=run.cache_bytes,
        decode_passes=run.decode_passes,
        decode_tokens=run.decode_tokens,
        prefill_seconds=prefill_s,
        decode_seconds=decode_s,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sample(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Next token per row of ``logits`` (rows, vocab)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = F.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # keep tokens until the mass reaches top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ----------------------------------------------------------------------------------------------- runners
class _CachedRun:
    """Prefill once, then one token per row per step with the loop cache and real early exit."""

    def __init__(
        self,
        model: OuroForCausalLM,
        ids: torch.Tensor,
        valid: torch.Tensor,
        max_new_tokens: int,
        q: float,
        exit_step: int | None,
        sharing: str,
        num_steps: int,
    ) -> None:
        self.model, self.q, self.exit_step = model, q, exit_step
        self.num_steps = num_steps
        self.max_steps = self.num_steps if exit_step is None else exit_step + 1
        batch, prompt_len = ids.shape
        dtype = next(model.parameters()).dtype
        self.cache = LoopKVCache(
            model.config, batch, prompt_len + max_new_tokens, sharing, dtype, ids.device, num_steps
        )
        self.key_valid = torch.zeros(batch, prompt_len + max_new_tokens, dtype=torch.bool, device=ids.device)
        self.key_valid[:, :prompt_len] = valid
        self.padded = not bool(valid.all())
        self.ids, self.valid = ids, valid
        self.next_position = valid.sum(-1)
        self.column = prompt_len
        self.decode_passes = self.decode_tokens = 0

    @property
    def cache_bytes(self) -> int:
        return self.cache.nbytes

    def first(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefill: every pass (up to a static exit) over the prompt; logits of the last position's exit."""
        net = self.model.model
        layout = padded_layout(self.valid)
        hidden, rope = net.embed(self.ids, layout.positions)
        self.cache.begin(0, self.ids.shape[1])
        last_states, gates = [], []
        for step in range(self.max_steps):
            hidden, gate = net.step(hidden, rope, layout, step, self.cache)
            last_states.append(hidden[:, -1])
            gates.append(gate[:, -1])
        if self.exit_step is not None:
            steps = torch.full((hidden.shape[0],), self.exit_step, dtype=torch.long, device=hidden.device)
        else:
            steps = q_exit_steps(exit_distribution(torch.cat(gates, dim=-1)), self.q)
        self.cache.commit(None)
        chosen = torch.stack(last_states, dim=1)[torch.arange(hidden.shape[0], device=hidden.device), steps]
        return self.model.lm_head(chosen), steps

    def next(self, tokens: torch.Tensor, alive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One decode step for the rows in ``alive``; returns their logits and exit passes."""
        net, column = self.model.model, self.column
        rows = alive.nonzero().flatten()
        all_rows = len(rows) == alive.shape[0]
        self.key_valid[rows, column] = True
        positions = self.next_position[rows][:, None]
        hidden, (cos, sin) = net.embed(tokens[rows][:, None], positions)
        mask = self.key_valid[rows, None, None, : column + 1] if self.padded else None
        self.cache.begin(column, 1)
        count = len(rows)
        final = torch.empty(count, hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
        exit_steps = torch.full((count,), self.max_steps - 1, dtype=torch.long, device=hidden.device)
        index = torch.arange(count, device=hidden.device)  # positions within `rows` still running
        cdf = ExitCDF((count,), hidden.device)
        early = self.exit_step is None and self.q < 1.0
        for step in range(self.max_steps):
            self.cache.rows = None if (all_rows and len(index) == count) else rows[index]
            layout = AttentionLayout(positions=positions, mask=mask, backend="sdpa")
            hidden, gate = net.step(hidden, (cos, sin), layout, step, self.cache)
            self.decode_passes += len(index)
            if step == self.max_steps - 1:
                final[index] = hidden[:, 0]
                break
            if not early:
                continue
            done = cdf.update(gate[:, 0, 0]) >= self.q
            if bool(done.any()):
                final[index[done]] = hidden[done, 0]
                exit_steps[index[done]] = step
                keep = ~done
                if not bool(keep.any()):
                    break
                index, hidden, positions = index[keep], hidden[keep], positions[keep]
                cos, sin = cos[keep], sin[keep]
                cdf.keep(keep)
                mask = mask[keep] if mask is not None else None
        self.cache.commit(exit_steps, rows)
        self.next_position[rows] += 1
        self.column += 1
        self.decode_tokens += count
        return self.model.lm_head(final), exit_steps


class _UncachedRun:
    """Reference path: the whole sequence through every pass for each new token; exit picks the logits."""

    def __init__(
        self,
        model: OuroForCausalLM,
        ids: torch.Tensor,
        valid: torch.Tensor,
        max_new_tokens: int,
        q: float,
        exit_step: int | None,
        sharing: str,
        num_steps: int,
    ) -> None:
        self.model, self.q, self.exit_step = model, q, exit_step
        self.num_steps = num_steps
        self.ids, self.valid = ids, valid
        self.cache_bytes = self.decode_tokens = 0
        self.decode_passes = 0

    def _run(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids, valid = self.ids[rows], self.valid[rows]
        out = self.model(ids, num_steps=self.num_steps, layout=padded_layout(valid))
        logits, steps = self.model.exit_logits(
            out, step=self.exit_step, threshold=None if self.exit_step is not None else self.q
        )
        self.decode_passes += out.num_steps * len(rows)
        return logits[:, -1], steps[:, -1]

    def first(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(torch.arange(self.ids.shape[0], device=self.ids.device))

    def next(self, tokens: torch.Tensor, alive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.ids = torch.cat([self.ids, tokens[:, None]], dim=1)
        self.valid = torch.cat([self.valid, alive[:, None]], dim=1)
        rows = alive.nonzero().flatten()
        self.decode_tokens += len(rows)
        return self._run(rows)
