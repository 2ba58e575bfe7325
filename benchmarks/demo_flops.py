"""Training FLOPs per token of the three demonstration arms (docs/eval.md, "A measured demonstration"), counted
the same way for every arm: `FlopCounterMode` over one real training step (forward and backward of the Stage I
loss, every pass, the LM head and loss at every pass) on a batch of the `builtin-roots` data the arms train on,
attention under the MATH SDPA backend (the flop counter does not see CPU SDPA kernels).

    .venv/bin/python benchmarks/demo_flops.py            # the table docs/eval.md quotes
    .venv/bin/python benchmarks/demo_flops.py --json flops.json

The first run prepares the `builtin-roots` shards under $OURO_CACHE (about a minute).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ouro.config import OuroConfig
from ouro.data.sft import SFTDataModule
from ouro.module import OuroLM

ROOT = Path(__file__).resolve().parent.parent
ARMS = {  # name -> (recipe overlay, model overrides): the overlays of recipes/demo
    "looped": ("recipes/demo/looped.yaml", {}),
    "one_pass": ("recipes/demo/one_pass.yaml", {"total_ut_steps": 1}),
    "one_pass_deep": ("recipes/demo/one_pass_deep.yaml", {"num_hidden_layers": 4, "total_ut_steps": 1}),
}


def arm_config(overrides: dict) -> OuroConfig:
    fields = yaml.safe_load((ROOT / "recipes/models/roots-demo.yaml").read_text())
    return OuroConfig(**{**fields, **overrides})


def count(module: OuroLM, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """FLOPs of one forward + backward of the training loss: total, and the decoder layers' share."""
    module.zero_grad()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        result, _, _ = module.compute_loss(batch)
        result.loss.backward()
    per_module = counter.get_flop_counts()
    layers = sum(
        sum(ops.values())
        for name, ops in per_module.items()
        if name.rsplit(".", 1)[0].endswith("layers") and name.rsplit(".", 1)[1].isdigit()
    )
    return {"total": float(counter.get_total_flops()), "decoder_layers": float(layers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    data = SFTDataModule(sources="builtin-roots", batch_size=16, num_workers=0, shuffle=False)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    tokens = batch["input_ids"].numel()
    trained = int((batch["labels"] != -100).sum())
    rows = {}
    for name, (_, overrides) in ARMS.items():
        config = arm_config(overrides)
        torch.manual_seed(0)
        module = OuroLM(model=config)
        flops = count(module, batch)
        rows[name] = {
            "layers_x_passes": f"{config.num_hidden_layers} x {config.total_ut_steps}",
            "parameters": module.net.num_parameters(),
            "decoder_layer_runs_per_token": config.num_hidden_layers * config.total_ut_steps,
            "training_flops_per_token": flops["total"] / tokens,
            "decoder_layer_flops_per_token": flops["decoder_layers"] / tokens,
        }
    base = rows["one_pass_deep"]["training_flops_per_token"]
    print(f"batch: {tokens} tokens ({trained} of them trained answers); FLOPs of one training step / tokens")
    print(
        "| arm | layers x passes | parameters | layer runs/token | decoder layers | LM head, loss, rest | total | vs 4 x 1 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        total, layers = row["training_flops_per_token"], row["decoder_layer_flops_per_token"]
        print(
            f"| {name} | {row['layers_x_passes']} | {row['parameters']:,} | {row['decoder_layer_runs_per_token']} "
            f"| {layers / 1e6:.3f} M | {(total - layers) / 1e6:.3f} M | {total / 1e6:.3f} M | {total / base:.3f}x |"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"tokens": tokens, "trained_tokens": trained, "arms": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
