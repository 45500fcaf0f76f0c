"""The engine: torch only, no web framework, no database. Four wings, each importing only those after it:
serving (pool, batch planning, the engine thread, runtime) -> methods (one file per prompt method) -> formats
(stored artifacts, PEFT adapters, the bundled model) -> core (the frozen model, text, how a prompt enters a pass,
the one forward, decoding). pyproject's [tool.importlinter] contracts hold these directions in the test command."""
