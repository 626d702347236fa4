"""LoRA training: the warmup's and fine-tunes' loop with self-describing checkpoints (lora) and the frozen trunk it can
train from (trunk).

Import from the module, not this package: a step's identity then covers only the code it runs.
"""
