"""Whose greedy answers are right: `python -m bench.generation_reference [--rows 8] [--tokens 16]`.

bench.generation compares the engine's answers with PEFT's `generate`. This check settles disagreements against a
reference with nothing clever in it: for each row, the model is run on the whole sequence again at every step
(no cache, prompt embeddings then the input's, positions 0..n-1) and the arg-max token appended. The engine
(continuous batching, cached prompt keys/values, left padding) and PEFT prompt tuning's `generate` are each
compared with it, token for token, on the same seeded random prompts and Rotten Tomatoes snippets.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from app.engine.core.model import FrozenModel, load_frozen_model
from app.engine.core.text import encode_example, output_text, render
from app.engine.formats.bundled import ensure_bundled_model
from bench.generation import SPEC, Engine, Peft
from bench.serving_workload import Request, random_prompts, snippets


@torch.no_grad()
def reference(frozen: FrozenModel, prompt: torch.Tensor, ids: list[int], tokens: int) -> list[int]:
    model = frozen.model
    embed = model.get_input_embeddings()
    sequence = list(ids)
    for _ in range(tokens):
        inputs = torch.cat([prompt.to(frozen.model.dtype), embed(torch.tensor(sequence))], 0)[None]
        sequence.append(int(model(inputs_embeds=inputs).logits[0, -1].argmax()))
    return sequence[len(ids) :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()
    torch.manual_seed(0)  # the same prompts as bench.generation
    frozen = load_frozen_model(ensure_bundled_model(Path(args.data_dir) / "models"), device="cpu")
    prompts = random_prompts(frozen, args.rows, 20)
    texts = snippets(frozen, args.rows, 24)
    engine = Engine(frozen, prompts)
    peft = Peft(frozen, prompts)
    same_engine = same_peft = 0
    for number in range(args.rows):
        request = Request(number, number, texts[number], 0)
        ids = list(encode_example(frozen, SPEC, request.text, None).input_ids)
        expected = frozen.decode(reference(frozen, prompts[number], ids, args.tokens))
        by_engine = engine.answer(request, args.tokens)
        by_peft = peft.generate(number, [request], args.tokens)[0]
        # The engine and PEFT answer text cut as a generation task's output: the reference is cut the same way.
        wanted = output_text(render(SPEC.template, request.text), expected)
        same_engine += by_engine == wanted
        same_peft += by_peft == wanted
        print(f"row {number}: reference {wanted!r} engine {by_engine!r} peft {by_peft!r}")
    engine.batcher.close()
    print(f"\nequal to the no-cache reference: engine {same_engine}/{args.rows}, PEFT {same_peft}/{args.rows}")


if __name__ == "__main__":
    main()
