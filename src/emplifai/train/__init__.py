"""LoRA SFT baselines (stages `train` and `generate`): prompts + masking, data, LightningModule, adapters,
batched generation. The stage entries are `emplifai.train` and `emplifai.generate`."""
