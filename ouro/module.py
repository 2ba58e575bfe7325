"""`OuroLM`: the LightningModule that trains a looped model with the LoopLM objective."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

import lightning as L
import torch

from ouro.config import OuroConfig
from ouro.cross_entropy import IGNORE_INDEX, per_step_cross_entropy
from ouro.model import AttentionLayout, OuroForCausalLM, exit_distribution
from ouro.objective import (
    LoopLoss,
    q_exit_cross_entropy,
    stage1_loss_from_hidden,
    stage2_gate_loss,
)
from ouro.optim import OptimizerConfig, adamw
from ouro.stages import StageInfo, StageStart
from ouro.validation_means import ValidationMeans


class OuroLM(L.LightningModule):
    """Looped language model + LoopLM objective + AdamW, for every stage of the Ouro pipeline.

    Batches are dicts with ``input_ids`` (batch, seq), ``labels`` (batch, seq; -100 = not counted) and optionally
    ``doc_ids`` (batch, seq) numbering the documents packed in each row (attention never crosses them).
    """

    def __init__(
        self,
        model: OuroConfig = OuroConfig(),  # noqa: B008 (jsonargparse reads dataclass defaults)
        objective: Literal["stage1", "stage2"] = "stage1",
        entropy_coef: float = 0.05,
        gate_k: float = 50.0,
        gate_gamma: float = 0.005,
        optimizer: OptimizerConfig = OptimizerConfig(),  # noqa: B008
        loss_chunk_size: int = 4096,
        activation_checkpointing: bool = False,
        attention_backend: Literal["auto", "sdpa", "flash"] = "auto",
        q_exit_thresholds: list[float] | None = None,
        compile: bool = False,
        init_from: str | None = None,
        init_optimizer_state: bool = False,
        upcycle: Literal["stack", "interleave"] = "stack",
    ) -> None:
        """
        Args:
            model: Architecture (official config.json fields). Defaults to Ouro-1.4B.
            objective: ``stage1``: LM and gate trained jointly on Σ_t p(t) L(t) - β H(p). ``stage2``: LM frozen,
                only the exit gate learns from the loss improvements between steps (paper §3.4).
            entropy_coef: β of Stage I (paper: 0.1 in the 8-step warmup stage, 0.05 afterwards).
            gate_k: Slope k of the Stage II target w = sigmoid(k (I - γ)) (paper: 50).
            gate_gamma: Threshold γ of the Stage II target (paper: 0.005).
            optimizer: AdamW settings.
            loss_chunk_size: Tokens per chunk of the LM-head cross-entropy; bounds the loss's memory.
            activation_checkpointing: Recompute every layer call in backward (saves T x layers activations).
            attention_backend: ``auto`` (flash-attn on CUDA when installed, else SDPA), ``sdpa`` or ``flash``.
            q_exit_thresholds: Q-exit thresholds q whose loss and mean depth validation reports.
            compile: ``torch.compile`` each decoder layer (worth it on GPU; 10-40 s of compile on CPU).
            init_from: Where a new stage's weights come from: a previous stage's run directory or ``.ckpt``, an
                exported official-format folder, or a Hub repo id (``ByteDance/Ouro-1.4B``). Ignored when the
                stage resumes its own run directory. None: random initialisation.
            init_optimizer_state: Also take the AdamW state of ``init_from`` (a Lightning checkpoint with the same
                layer count); the data-loader state is never taken.
            upcycle: How a deeper stack is filled from a shallower ``init_from``: ``stack`` repeats the whole block
                (0..n-1, 0..n-1), ``interleave`` repeats each layer in place (0, 0, 1, 1, ...).
        """
        super().__init__()
        # A checkpoint's hyperparameters hold plain dicts (what `load_from_checkpoint(weights_only=True)` reads).
        if isinstance(model, dict):
            model = OuroConfig(**model)
        if isinstance(optimizer, dict):
            optimizer = OptimizerConfig(**{**optimizer, "betas": tuple(optimizer.get("betas", (0.9, 0.95)))})
        self.config = model if model is not None else OuroConfig()
        self.objective = objective
        self.entropy_coef = entropy_coef
        self.gate_k, self.gate_gamma = gate_k, gate_gamma
        self.optim = optimizer if optimizer is not None else OptimizerConfig()
        self.loss_chunk_size = loss_chunk_size
        self.attention_backend = attention_backend
        self.q_exit_thresholds = list(
            q_exit_thresholds if q_exit_thresholds is not None else (0.5, 0.7, 0.9, 1.0)
        )
        self.compile_layers = compile
        self.init_from, self.init_optimizer_state, self.upcycle = init_from, init_optimizer_state, upcycle
        self._check_args()
        self.save_hyperparameters(
            dict(
                model=asdict(self.config),
                objective=objective,
                entropy_coef=entropy_coef,
                gate_k=gate_k,
                gate_gamma=gate_gamma,
                optimizer=asdict(self.optim),
                loss_chunk_size=loss_chunk_size,
                attention_backend=attention_backend,
                activation_checkpointing=activation_checkpointing,
                q_exit_thresholds=self.q_exit_thresholds,
                compile=compile,
                init_from=init_from,
                init_optimizer_state=init_optimizer_state,
                upcycle=upcycle,
            )
        )
        self.net = OuroForCausalLM(self.config)
        self.net.set_activation_checkpointing(activation_checkpointing)
        if objective == "stage2":
            self.freeze_language_model()
        self.tokens_seen = 0
        #: What this stage is and where it came from (set by the CLI and at stage start, read by callbacks).
        self.stage = StageInfo()
        self.val_means = ValidationMeans()

    def _check_args(self) -> None:
        if self.entropy_coef < 0:
            raise ValueError(f"entropy_coef must be >= 0, got {self.entropy_coef}")
        if self.loss_chunk_size < 1:
            raise ValueError(f"loss_chunk_size must be >= 1, got {self.loss_chunk_size}")
        if self.objective == "stage2" and self.config.total_ut_steps < 2:
            raise ValueError("objective 'stage2' needs model.total_ut_steps >= 2")
        if any(not 0 < q <= 1 for q in self.q_exit_thresholds):
            raise ValueError(f"q_exit_thresholds must lie in (0, 1], got {self.q_exit_thresholds}")
        lr, (b1, b2) = self.optim.lr, self.optim.betas
        if lr <= 0 or not (0 <= b1 < 1 and 0 <= b2 < 1) or self.optim.weight_decay < 0:
            raise ValueError(f"optimizer settings are invalid: {self.optim}")

    def freeze_language_model(self) -> None:
        """Stage II: everything but ``model.early_exit_gate`` stops learning."""
        for name, param in self.net.named_parameters():
            param.requires_grad_(name.startswith("model.early_exit_gate."))

    # --------------------------------------------------------------------------------------- stage start
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.init_from and not self.stage.resuming:
            # Weights copied in place: Stage II's frozen parameters stay frozen.
            same_objective = self.objective != "stage2"
            start = StageStart.load(
                self.init_from, self.net, self.upcycle, self.init_optimizer_state, same_objective
            )
            self.stage.begin(start)
        if self._trainer is not None:
            self.stage.connect(self.trainer.datamodule, self.config)

    def on_fit_start(self) -> None:
        self.stage.fit_start(self.trainer)

    # ---------------------------------------------------------------------------------- schedule controls
    def set_loop_count(self, steps: int) -> None:
        """Train and validate with ``steps`` recurrent passes from now on (`ouro.callbacks.LoopSchedule`)."""
        if self.objective == "stage2" and steps < 2:
            raise ValueError(f"objective 'stage2' needs at least 2 recurrent steps, got {steps}")
        self.net.set_loop_count(steps)

    def set_rope_base(self, theta: float) -> None:
        """Use RoPE base ``theta`` from now on (`ouro.callbacks.LongContextSchedule`)."""
        self.net.set_rope_base(theta)

    def set_entropy_coef(self, beta: float) -> None:
        """Stage I's entropy coefficient β from now on (`ouro.callbacks.LoopSchedule`)."""
        if beta < 0:
            raise ValueError(f"entropy_coef must be >= 0, got {beta}")
        self.entropy_coef = float(beta)

    def configure_model(self) -> None:
        if self.compile_layers:
            # dynamic=True: one graph for every batch and sequence size, so schedules that change the sequence
            # length or split rows mid-stage do not recompile (loop count and RoPE base never reach the graph).
            for layer in self.net.model.layers:
                layer.compile(dynamic=True)

    # ------------------------------------------------------------------------------------------------ step
    def forward(
        self, input_ids: torch.Tensor, doc_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``net.last_position_logits``: evaluation during training calls it through the strategy's wrapper
        (``trainer.strategy.model``), so that a sharded root (FSDP1) gathers its parameters around the LM head
        too."""
        return self.net.last_position_logits(input_ids, doc_ids)

    def _flatten(self, batch: dict[str, torch.Tensor]):
        input_ids, labels = batch["input_ids"], batch["labels"]
        layout = AttentionLayout.build(input_ids, batch.get("doc_ids"), self.attention_backend)
        # Stage II: the language model is frozen (no parameter of it requires grad), so autograd keeps only the
        # gate's graph. The gate runs inside the network's forward, where FSDP2 hooks its gradient reduction.
        out = self.net(input_ids, layout=layout)
        targets = labels.reshape(-1)
        mask = targets != IGNORE_INDEX
        hidden = [h.reshape(-1, h.shape[-1]) for h in out.hidden_states]
        if self.objective == "stage2":
            hidden = [h.detach() for h in hidden]
        gate_logits = out.gate_logits.reshape(-1, out.num_steps)
        if not bool(mask.all()):  # e.g. SFT: only assistant tokens count, skip the rest before the LM head
            keep = mask.nonzero().squeeze(1)
            hidden = [h.index_select(0, keep) for h in hidden]
            targets, gate_logits = targets.index_select(0, keep), gate_logits.index_select(0, keep)
            mask = torch.ones_like(targets, dtype=torch.bool)
        return hidden, targets, gate_logits, mask

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[LoopLoss, torch.Tensor, torch.Tensor]:
        """The objective's loss for a batch, plus the per-token per-step cross-entropy and gate logits."""
        hidden, targets, gate_logits, mask = self._flatten(batch)
        if self.objective == "stage2":
            with torch.no_grad():
                ce = per_step_cross_entropy(hidden, self.net.lm_head.weight, targets, self.loss_chunk_size)
            result = stage2_gate_loss(ce, gate_logits, mask, self.gate_k, self.gate_gamma)
        else:
            result, ce = stage1_loss_from_hidden(
                hidden,
                self.net.lm_head.weight,
                targets,
                gate_logits,
                mask,
                self.entropy_coef,
                self.loss_chunk_size,
            )
        return result, ce, gate_logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        result, _, _ = self.compute_loss(batch)
        tokens = batch["input_ids"].numel() * self.trainer.world_size
        self.tokens_seen += tokens
        self._log_train_loss(result, batch["input_ids"].shape[0])
        self.log("train/tokens_seen", float(self.tokens_seen), on_step=True, on_epoch=False, sync_dist=False)
        return result.loss

    def _log_train_loss(self, result: LoopLoss, batch_size: int) -> None:
        log = dict(on_step=True, on_epoch=False, batch_size=batch_size)
        self.log("train/loss", result.loss.detach(), prog_bar=True, **log)
        for t in range(result.ce_per_step.shape[0]):
            self.log(f"train/ce_step{t + 1}", result.ce_per_step[t], **log)
            self.log(f"train/exit_prob_step{t + 1}", result.exit_probs[t], **log)
        self.log("train/expected_step", result.expected_step, prog_bar=True, **log)
        self.log("train/exit_entropy", result.entropy, **log)

    # ------------------------------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        result, ce, gate_logits = self.compute_loss(batch)
        count = ce.shape[0]
        self.val_means.add("loss", result.loss.detach(), count)
        probs = exit_distribution(gate_logits.detach())
        for t in range(ce.shape[1]):
            self.val_means.add(f"ce_step{t + 1}", ce[:, t].mean(), count)
            self.val_means.add(f"exit_prob_step{t + 1}", probs[:, t].mean(), count)
        mask = torch.ones(count, dtype=torch.bool, device=ce.device)
        for q in self.q_exit_thresholds:
            q_ce, depth = q_exit_cross_entropy(ce, probs, mask, q)
            self.val_means.add(f"loss_q{q:g}", q_ce, count)
            self.val_means.add(f"depth_q{q:g}", depth, count)
        reference_ce = self.stage.reference_cross_entropy(batch, self.loss_chunk_size)
        if reference_ce is not None:  # after upcycling: the model before it, on the same batch
            self.val_means.add("upcycle_source_ce_last", reference_ce, count)

    def on_validation_epoch_end(self) -> None:
        values = self.val_means.compute_and_reset()
        for name, value in values.items():
            self.log(f"val/{name}", value, prog_bar=name == "loss")
            if name.startswith("ce_step"):
                self.log(f"val/ppl_step{name.removeprefix('ce_step')}", torch.exp(value))
        self.stage.report_reference(values, self.trainer.sanity_checking)

    # ---------------------------------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adamw(self.net, self.optim)

    # ---------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Provenance: this stage's record (with the latest val/ metrics) after those of the stages before it.
        metrics = self.trainer.callback_metrics if self._trainer is not None else {}
        checkpoint["ouro"] = self.stage.checkpoint_meta(
            self.tokens_seen, self.objective, self.config, metrics
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tokens_seen = self.stage.restore(checkpoint.get("ouro", {}))
