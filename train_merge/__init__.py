"""LoRA fine-tune of a base model (Gemma 3) on the restaurant dialogues, merged into a standalone checkpoint.

`python -m train_merge` (config: conf/train_merge.yaml); the result is the sweep's `model=<base>-ft`.
"""
