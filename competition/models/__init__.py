"""Pretrained models as the candidate kinds use them: the Params parts every kind is composed of,
prompts, loading (transformers, GGUF files, 4-bit, LoRA), generation, training with validation and
early stopping, multi-process launch, and chat endpoints. torch and transformers are imported
inside the functions that need them, so importing this package stays cheap.

Layer 3. May import: the core, competition.text and competition.data. Never candidates or above.
"""
