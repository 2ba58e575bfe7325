"""Export to the official Ouro Hub layout and pushing to the Hugging Face Hub (reading a model from any source
is `ouro.checkpoints`).

* `ouro.hub.export`: ``ouro export`` — write config, safetensors, tokenizer, remote code and model card.
* `ouro.hub.push`: ``ouro push`` — upload an exported folder; `ouro.hub.callback`: push at the end of a stage.
"""
