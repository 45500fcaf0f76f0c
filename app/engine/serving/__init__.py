"""Serving: the prompt pool, batch planning, the batcher thread, the runtime that owns them."""
