"""The engine's core: the frozen model, text, how a prompt enters a pass, the one forward, decoding."""
