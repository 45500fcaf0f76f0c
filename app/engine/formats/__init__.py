"""Stored forms: the prompt artifact, PEFT adapters, the bundled default model."""
