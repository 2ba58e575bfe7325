"""The ``ouro`` model backend of lm-evaluation-harness, registered in lm-eval's own model registry.

`OuroEvalLM` holds a list of depth settings (`ouro.eval.scoring.Depth`) and one *active* setting, whose results it
returns to lm-eval. Log-likelihood requests are scored under **every** setting in the same forward and cached,
so the runner sweeps depths by switching the active setting and rerunning lm-eval's evaluation: the later runs
are cache hits, not new forwards. Generation runs once per setting (the output depends on the depth), with the
project's real early exit and KV sharing (`ouro.generation.generate`).

Used directly by lm-eval (after ``import ouro.eval.backend`` registers it; ``python -m ouro.eval`` does that):
``--model ouro --model_args pretrained=out/model,exit_step=2`` (``exit_step`` is 1-based: the number of passes,
as in the paper's depth tables; ``exit_threshold=0.7`` is Q-exit, ``gate=True`` the trained gate).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lm_eval.models  # noqa: F401  (fills the registry with lm-eval's own models before ours joins it)
import torch
import torch.distributed as dist
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from ouro.checkpoints import load_model_and_tokenizer
from ouro.eval.scoring import Depth, Score, depth_settings, score_sequences
from ouro.generation.generate import generate
from ouro.model import OuroForCausalLM

EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>")
"""Chat end-of-turn tokens: generation also stops at the ones the tokenizer has, as a chat checkpoint's
exported generation_config.json does (`ouro.hub.export`)."""


@dataclass
class DepthStats:
    """What one task cost under one depth setting."""

    requests: int = 0
    tokens: int = 0
    """Tokens scored (log-likelihood) or generated."""
    depth_sum: float = 0.0
    """Sum over those tokens of the passes that produced them."""
    processed_tokens: int = 0
    """Tokens read by the scoring forward, or tokens generated."""
    seconds: float = 0.0

    @property
    def mean_depth(self) -> float:
        return self.depth_sum / self.tokens if self.tokens else float("nan")

    @property
    def tokens_per_second(self) -> float:
        return self.processed_tokens / self.seconds if self.seconds > 0 else float("nan")

    def add(self, other: DepthStats) -> None:
        self.requests += other.requests
        self.tokens += other.tokens
        self.depth_sum += other.depth_sum
        self.processed_tokens += other.processed_tokens
        self.seconds += other.seconds


@register_model("ouro")
class OuroEvalLM(TemplateLM):
    """An Ouro looped model in lm-eval, scored at chosen depths.

    Args:
        pretrained: Model source (run dir, ``.ckpt``, sharded or exported folder, Hub id); or pass ``model``.
        model: An in-memory `OuroForCausalLM` (with ``tokenizer``) instead of ``pretrained``.
        tokenizer: A `tokenizers.Tokenizer`, or (with ``pretrained``) a tokenizer.json path / Hub id.
        exit_step: Static exit after this many passes (1-based; may exceed the trained steps).
        exit_threshold: Q-exit threshold in (0, 1] over the trained steps.
        gate: Q-exit at the config's ``early_exit_threshold`` (the gate as trained); the default when none of
            ``exit_step``, ``exit_threshold`` and ``settings`` is given.
        settings: Several depth settings (the runner's sweep); the first is active.
        batch_size: Sequences per forward (prompts per generation batch).
        max_length: Longest sequence the model reads (default: ``max_position_embeddings``); longer inputs
            keep their end.
        device: Torch device.
        dtype: Weight dtype with ``pretrained``.
        kv_sharing: Decode-time KV cache in generation: ``full``, ``last`` or ``mean``.
        progress: Show a progress bar over requests.
        seed: Base seed of sampled generation (``do_sample``): each request draws from its own generator,
            seeded from this and the request's text and arguments, so its output depends neither on the batch
            nor on the other requests.
        max_batch_size: Passed by lm-eval's command line; unused (batches have ``batch_size`` sequences).
        distributed: Take part in lm-eval's distributed evaluation over the initialized ``torch.distributed``
            process group: lm-eval gives each rank every world-size-th document and gathers the per-document
            metrics to rank 0 (`all_gather`, `gather_object`, `barrier` below). Every rank runs as many scoring
            forwards (each is a collective under FSDP); generation is refused (its real early exit runs a
            different number of forwards per rank).
        forward_wrapper: Runs each scoring forward: ``forward_wrapper(fn)`` returns ``fn()``, called inside the
            data-parallel wrapper's forward so that a sharded model gathers its parameters (`EvalInTraining`
            passes one); default: ``fn()`` directly.

    An unknown ``--model_args`` key is a TypeError naming it (lm-eval passes them as keyword arguments).
    """

    def __init__(
        self,
        pretrained: str | None = None,
        model: OuroForCausalLM | None = None,
        tokenizer: Any = None,
        exit_step: int | None = None,
        exit_threshold: float | None = None,
        gate: bool = False,
        settings: Sequence[Depth] | None = None,
        batch_size: int | str = 8,
        max_length: int | None = None,
        device: str | None = None,
        dtype: str = "float32",
        kv_sharing: str = "full",
        progress: bool = True,
        seed: int = 1234,
        max_batch_size: int | None = None,
        distributed: bool = False,
        forward_wrapper: Callable[[Callable[[], Any]], Any] | None = None,
    ) -> None:
        super().__init__()
        if distributed:
            if not dist.is_initialized():
                raise ValueError("distributed=True needs an initialized torch.distributed process group")
            self._rank, self._world_size = dist.get_rank(), dist.get_world_size()
        self.forward_wrapper = forward_wrapper
        if (pretrained is None) == (model is None):
            raise ValueError("pass either pretrained=<model source> or model=<OuroForCausalLM>")
        if device and device.startswith("cuda") and not torch.cuda.is_available():
            print(f"ouro: no CUDA device; evaluating on cpu instead of {device}", file=sys.stderr)
            device = "cpu"
        if model is None:
            model, tokenizer = load_model_and_tokenizer(
                str(pretrained), tokenizer if isinstance(tokenizer, str) else None, dtype, device or "cpu"
            )
        elif tokenizer is None:
            raise ValueError("an in-memory model needs its tokenizer (tokenizer=...)")
        self.model = model.eval()
        self.tokenizer = tokenizer
        if settings is None:
            use_gate = str(gate).lower() in ("true", "1")
            settings = depth_settings(
                "none" if exit_step is None else exit_step,
                () if exit_threshold is None else exit_threshold,
                use_gate or (exit_step is None and exit_threshold is None),
                model.config.total_ut_steps,
            )
            if len(settings) > 1:
                raise ValueError("pass one of exit_step, exit_threshold and gate (or settings= for a sweep)")
        if not settings:
            raise ValueError("settings is empty: give at least one depth setting")
        self.settings = list(settings)
        self.active = self.settings[0]
        try:
            self.batch_size = int(batch_size)
        except ValueError:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}") from None
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.max_length = int(max_length or model.config.max_position_embeddings)
        self.kv_sharing = kv_sharing
        self.progress = progress
        self.seed = int(seed)
        self._scores: dict[tuple[tuple[int, ...], int], dict[str, Score]] = {}
        self._generations: dict[tuple[str, str, str], tuple[str, DepthStats]] = {}
        self._stop_ids: dict[tuple[str, ...], list[int]] = {}
        self._encoded: dict[tuple[str, str], tuple[tuple[int, ...], int]] = {}
        self.stats: dict[tuple[str, str], DepthStats] = defaultdict(DepthStats)
        """(task name, setting key) -> cost and depth of what lm-eval asked under that setting."""
        self.request_types: dict[str, str] = {}
        """task name -> lm-eval request type (loglikelihood, loglikelihood_rolling, generate_until)."""
        self.documents: dict[str, set[int]] = defaultdict(set)
        """task name -> ids of the documents this rank scored (every document in a single process)."""
        self.forwards = 0
        """Scoring forwards run (with the ones that only keep the ranks in step)."""

    # ------------------------------------------------------------------------------------ distributed
    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor``, concatenated in rank order (0-d tensors stacked)."""
        if self.world_size == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        """Every rank's ``obj`` in rank order on ``dst``; None on the other ranks."""
        if self.world_size == 1:
            return [obj]
        gathered = [None] * self.world_size if self.rank == dst else None
        dist.gather_object(obj, gathered, dst=dst)
        return gathered

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def _padding(self, requests: list) -> list[bool]:
        """Which of ``requests`` repeat an earlier one: under several ranks lm-eval pads a rank's requests with
        copies of its last one so that the ranks run as many; those are neither recorded nor counted."""
        if self.world_size == 1:
            return [False] * len(requests)
        seen: set[int] = set()
        repeated = []
        for request in requests:
            repeated.append(id(request) in seen)
            seen.add(id(request))
        return repeated

    # ----------------------------------------------------------------------------------------- tokenizer
    @property
    def eot_token_id(self) -> int:
        if hasattr(self.tokenizer, "token_to_id"):
            for token in EOS_CANDIDATES:
                token_id = self.tokenizer.token_to_id(token)
                if token_id is not None:
                    return token_id
        for candidate in (getattr(self.tokenizer, "eos_token_id", None), self.model.config.eos_token_id):
            if isinstance(candidate, int):
                return candidate
        return 0

    @property
    def end_token_ids(self) -> list[int]:
        """Tokens that end a generated row: the config's ``eos_token_id``, the end-of-text token and the chat
        end-of-turn tokens (`END_OF_TURN`) the tokenizer has."""
        ids = [self.model.config.eos_token_id, self.eot_token_id]
        if hasattr(self.tokenizer, "token_to_id"):
            ids += [self.tokenizer.token_to_id(token) for token in END_OF_TURN]
        else:
            ids += [getattr(self.tokenizer, "eos_token_id", None)]
            ids += [
                self.tokenizer.convert_tokens_to_ids(t)
                for t in END_OF_TURN
                if t in self.tokenizer.get_vocab()
            ]
        return list(dict.fromkeys(i for i in ids if isinstance(i, int)))

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        encoded = self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens))
        return list(encoded.ids) if hasattr(encoded, "ids") else list(encoded)

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=True)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def get_model_info(self) -> dict[str, Any]:
        config = self.model.config
        return {
            "model_num_parameters": self.model.num_parameters(),
            "model_dtype": str(next(self.model.parameters()).dtype),
            "total_ut_steps": config.total_ut_steps,
            "early_exit_threshold": config.early_exit_threshold,
            "depth_setting": self.active.key,
        }

    # --------------------------------------------------------------------------------------- scoring
    def _score(self, items: list[tuple[tuple[int, ...], int]], disable_tqdm: bool) -> list[dict[str, Score]]:
        """Scores under every setting for ``(tokens, continuation length)`` items; computed once, then cached."""
        todo = sorted({item for item in items if item not in self._scores}, key=lambda i: -len(i[0]))
        bar = tqdm(
            total=len(todo),
            desc=f"ouro: scoring at {len(self.settings)} depth settings",
            disable=disable_tqdm or not self.progress or not todo,
        )
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            for item, scores in zip(chunk, self._forward(chunk)):
                self._scores[item] = scores
            bar.update(len(chunk))
        bar.close()
        if self.world_size > 1:
            # Every forward is a collective under FSDP: the ranks with fewer new sequences (lm-eval's padding
            # repeats cached ones) run as many forwards as the busiest, on a two-token sequence, discarded.
            mine = -(-len(todo) // self.batch_size)
            most = torch.tensor(mine, device=self.device)
            dist.all_reduce(most, op=dist.ReduceOp.MAX)
            filler = ((self.prefix_token_id, self.prefix_token_id), 1)
            for _ in range(int(most) - mine):
                self._forward([filler])
        return [self._scores[item] for item in items]

    def _forward(self, chunk: list[tuple[tuple[int, ...], int]]) -> list[dict[str, Score]]:
        """One scoring forward (`score_sequences`), through `forward_wrapper` when there is one."""
        self.forwards += 1
        if self.forward_wrapper is None:
            return score_sequences(self.model, chunk, self.settings)
        return self.forward_wrapper(lambda: score_sequences(self.model, chunk, self.settings))

    def _item(self, context: Sequence[int], continuation: Sequence[int]) -> tuple[tuple[int, ...], int]:
        if not context:  # as lm-eval does for an empty context: the prefix token predicts the first token
            context = [self.prefix_token_id]
        whole = (list(context) + list(continuation))[-(self.max_length + 1) :]
        return tuple(whole), min(len(continuation), len(whole) - 1)

    def _record(self, request: Any, request_type: str, scores: Sequence[Score]) -> None:
        name = request.task_name or "?"
        self.request_types.setdefault(name, request_type)
        self.documents[name].add(getattr(request, "doc_id", None))
        stats = self.stats[(name, self.active.key)]
        stats.requests += 1
        for score in scores:
            stats.tokens += score.tokens
            stats.depth_sum += score.depth_sum
            stats.processed_tokens += score.input_tokens
            stats.seconds += score.seconds

    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str], list[int], list[int]]],
        disable_tqdm: bool = False,
        **_: Any,
    ) -> list[tuple[float, bool]]:
        scores = self._score([self._item(ctx, cont) for _, ctx, cont in requests], disable_tqdm)
        return [(s[self.active.key].logprob, s[self.active.key].greedy) for s in scores]

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        items = []
        for request in requests:
            if request.args not in self._encoded:  # the later settings of a sweep skip tokenizing
                context, continuation = request.args
                if context == "":
                    ctx, cont = [], self.tok_encode(continuation)
                else:  # a context may still encode to no token (only spaces): `_item` handles both
                    ctx, cont = self._encode_pair(context, continuation)
                self._encoded[request.args] = self._item(ctx, cont)
            items.append(self._encoded[request.args])
        scores = self._score(items, disable_tqdm)
        results = []
        for request, score, padding in zip(requests, scores, self._padding(requests)):
            chosen = score[self.active.key]
            if not padding:
                self._record(request, "loglikelihood", [chosen])
            results.append((chosen.logprob, chosen.greedy))
        return results

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        windows_per_request = []
        for request in requests:
            (string,) = request.args
            windows = get_rolling_token_windows(
                token_list=self.tok_encode(string),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            windows_per_request.append([self._item(*make_disjoint_window(w)) for w in windows])
        flat = [item for items in windows_per_request for item in items]
        scores = iter(self._score(flat, disable_tqdm))
        results = []
        for request, items, padding in zip(requests, windows_per_request, self._padding(requests)):
            chosen = [next(scores)[self.active.key] for _ in items]
            if not padding:
                self._record(request, "loglikelihood_rolling", chosen)
            results.append(sum(s.logprob for s in chosen))
        return results

    # ------------------------------------------------------------------------------------- generation
    def generation_arguments(self) -> dict[str, Any]:
        """How the active setting runs in `ouro.generation.generate` (recorded in results.json)."""
        q = self.active.threshold(self.model.config.early_exit_threshold)
        if q is None:
            return {"exit_step": int(self.active.value) - 1, "kv_sharing": self.kv_sharing}
        return {"exit_threshold": q, "kv_sharing": self.kv_sharing}

    def request_seed(self, context: str, kwargs_key: str) -> int:
        """The sampling seed of one generation request: `seed` and the request's text and arguments hashed."""
        digest = hashlib.sha256(f"{self.seed}\0{context}\0{kwargs_key}".encode()).digest()
        return int.from_bytes(digest[:8], "little") % 2**63

    def stop_token_ids(self, until: Sequence[str]) -> list[int]:
        """Ids of the tokens whose text contains a stop string. Once a row emits one, everything after it is
        cut from its text anyway, so ending the row there changes no output and saves the rest of
        ``max_gen_toks`` (stops that span several tokens are still cut from the text afterwards)."""
        stops = tuple(sorted(s for s in until if s))
        if stops not in self._stop_ids:
            size = (
                self.tokenizer.get_vocab_size()
                if hasattr(self.tokenizer, "get_vocab_size")
                else len(self.tokenizer)
            )
            size = min(size, self.model.config.vocab_size)
            self._stop_ids[stops] = [
                i for i in range(size) if stops and any(stop in self.tok_decode([i]) for stop in stops)
            ]
        return self._stop_ids[stops]

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        if self.world_size > 1:
            raise ValueError(
                f"ouro: generation tasks cannot be split over {self.world_size} ranks (real early exit runs a "
                "different number of forwards on each); evaluate them in one process (`ouro eval`)"
            )
        key = self.active.key
        todo: dict[str, dict[str, dict]] = defaultdict(dict)  # gen_kwargs as JSON -> context -> gen_kwargs
        for request in requests:
            context, gen_kwargs = request.args
            kwargs_key = json.dumps(gen_kwargs, sort_keys=True, default=str)
            if (context, kwargs_key, key) not in self._generations:
                todo[kwargs_key][context] = gen_kwargs
        total = sum(len(v) for v in todo.values())
        bar = tqdm(
            total=total,
            desc=f"ouro: generating at {key}",
            disable=disable_tqdm or not self.progress or not total,
        )
        steps = self.active.passes(self.model.config.total_ut_steps)
        # A static exit past the trained loop count runs the same weights further (`generate`'s num_steps).
        num_steps = steps if self.active.kind == "step" and steps > self.model.config.total_ut_steps else None
        # Prompt and new tokens together fit the context window: lm-eval's max_gen_toks is clamped so that at
        # least one prompt token remains, and the prompt keeps its end.
        window = min(self.max_length, self.model.config.max_position_embeddings)
        for kwargs_key, contexts in todo.items():
            pending = list(contexts.items())
            gen_kwargs = dict(pending[0][1])
            until = gen_kwargs.get("until") or [self.tok_decode([self.eot_token_id])]
            until = [until] if isinstance(until, str) else list(until)
            max_new = min(int(gen_kwargs.get("max_gen_toks", 256)), window - 1)
            sample = bool(gen_kwargs.get("do_sample", False))
            temperature = float(gen_kwargs.get("temperature", 1.0 if sample else 0.0)) if sample else 0.0
            keep = window - max_new
            # Sampled rows run one by one, each with its own seeded generator; greedy rows run in batches.
            size = 1 if temperature > 0 else self.batch_size
            for start in range(0, len(pending), size):
                chunk = pending[start : start + size]
                prompts = [(self.tok_encode(c) if c else [self.prefix_token_id])[-keep:] for c, _ in chunk]
                result = generate(
                    self.model,
                    prompts,
                    tokenizer=self.tokenizer,
                    max_new_tokens=max_new,
                    temperature=temperature,
                    seed=self.request_seed(chunk[0][0], kwargs_key) if temperature > 0 else None,
                    eos_token_id=[*self.end_token_ids, *self.stop_token_ids(until)],
                    num_steps=num_steps,
                    **self.generation_arguments(),
                )
                seconds = (result.prefill_seconds + result.decode_seconds) / len(chunk)
                for (context, _), tokens, exits, text in zip(
                    chunk, result.tokens, result.exit_steps, result.texts
                ):
                    for stop in until:
                        if stop and stop in text:
                            text = text[: text.index(stop)]
                    cost = DepthStats(
                        requests=1,
                        tokens=len(tokens),
                        depth_sum=float(sum(e + 1 for e in exits)),
                        processed_tokens=len(tokens),
                        seconds=seconds,
                    )
                    self._generations[(context, kwargs_key, key)] = (text, cost)
                bar.update(len(chunk))
        bar.close()
        outputs = []
        for request in requests:
            context, gen_kwargs = request.args
            text, cost = self._generations[
                (context, json.dumps(gen_kwargs, sort_keys=True, default=str), key)
            ]
            name = request.task_name or "?"
            self.request_types.setdefault(name, "generate_until")
            self.documents[name].add(getattr(request, "doc_id", None))
            self.stats[(name, key)].add(cost)
            outputs.append(text)
        return outputs
