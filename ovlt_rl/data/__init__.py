"""The data layer: Parquet rows (schema.py) to model-ready tensors.

images.py (decode, resize), prompts.py (chat template, processor), dataset.py (PromptDataset,
SFTDataset with counted skips), collate.py (left/right padding), loader.py (resumable order).
This package imports nothing heavy by itself; import from the submodules.
"""
