"""``ouro generate``: prompts to text from an exported folder, a run, a checkpoint or a Hub repo id."""

from __future__ import annotations

import sys
from typing import Literal

from ouro.chat import END_OF_TEXT, IM_END, ChatRenderer
from ouro.checkpoints import load_model_and_tokenizer
from ouro.generation.generate import generate as run_generate
from ouro.generation.stream import TextStreamer


def chat_prompt_ids(tokenizer, prompt: str, system: str | None = None) -> list[int]:
    """Token ids of ``ouro generate --chat``: an optional system turn, the user turn, the opened assistant turn."""
    messages = [{"role": "system", "content": system}] if system else []
    return ChatRenderer(tokenizer).render_prompt([*messages, {"role": "user", "content": prompt}])


def generate(
    model_path: str,
    prompt: str | list[str],
    max_new_tokens: int = 128,
    exit_threshold: float | None = None,
    exit_step: int | None = None,
    kv_sharing: Literal["full", "last", "mean"] = "full",
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    chat: bool = False,
    system: str | None = None,
    tokenizer: str | None = None,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    device: str = "cpu",
    stream: bool = True,
    stats: bool = False,
) -> list[str]:
    """Generate text with real early exit and KV sharing.

    Args:
        model_path: An exported folder, a Hub repo id, a run directory or a .ckpt written by `ouro fit`.
        prompt: A prompt, or a JSON list of prompts (run as one left-padded batch).
        max_new_tokens: Most new tokens per prompt.
        exit_threshold: Q-exit threshold q in (0, 1]: stop at the first pass whose exit CDF reaches q (default: config).
        exit_step: Static exit at this 0-based pass for every token (instead of Q-exit).
        kv_sharing: Decode-time KV cache: full (one per pass), last or mean (one per layer, 1/T of the memory).
        temperature: 0 = greedy decoding; otherwise sampling temperature.
        top_p: Nucleus sampling mass.
        seed: Random seed for sampling.
        chat: Wrap each prompt as a user turn in the ChatML template and stop at <|im_end|>.
        system: System message for chat mode.
        tokenizer: tokenizer.json file, folder or Hub repo id (default: the model's own).
        dtype: Compute dtype of the weights.
        device: Torch device, e.g. cpu or cuda.
        stream: Print the first prompt's text as it is generated.
        stats: Print the mean exit depth and the KV-cache size to stderr.
    """
    model, tok = load_model_and_tokenizer(model_path, tokenizer, dtype, device)
    prompts = list(prompt) if not isinstance(prompt, str) else [prompt]
    if not prompts:
        raise ValueError("pass at least one --prompt")
    eos = None
    if chat:
        prompts = [chat_prompt_ids(tok, p, system) for p in prompts]
        eos = [
            i
            for i in (tok.token_to_id(IM_END), tok.token_to_id(END_OF_TEXT), model.config.eos_token_id)
            if i is not None
        ]
    streamer = TextStreamer(tok) if stream and len(prompts) == 1 else None
    result = run_generate(
        model,
        prompts,
        tokenizer=tok,
        max_new_tokens=max_new_tokens,
        exit_threshold=exit_threshold,
        exit_step=exit_step,
        kv_sharing=kv_sharing,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        eos_token_id=eos,
        stream=streamer,
    )
    if streamer is not None:
        streamer.end()
    else:
        for text in result.texts:
            print(text)
            print("-" * 40)
    if stats:
        print(
            f"mean exit depth {result.mean_depth:.2f} passes of {model.config.total_ut_steps}; "
            f"KV cache {result.cache_bytes / 2**20:.2f} MiB ({kv_sharing})",
            file=sys.stderr,
        )
    return result.texts
