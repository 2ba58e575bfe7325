"""Export to the official Ouro Hub layout, loading any model source, and pushing to the Hugging Face Hub.

* `ouro.hub.load`: read a Lightning checkpoint, a run directory, an exported folder or a Hub repo id.
* `ouro.hub.export`: ``ouro export`` — write config, safetensors, tokenizer, remote code and model card.
* `ouro.hub.push`: ``ouro push`` — upload an exported folder; `ouro.hub.callback`: push at the end of a stage.
"""
