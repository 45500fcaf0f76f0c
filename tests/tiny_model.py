"""A tiny random GPT-2, Llama or Gemma 3 and a byte-level BPE tokenizer, built in-process in a second: no downloads."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from app.engine.core.model import FrozenModel

EOS = "<|endoftext|>"

_WORDS = (  # noqa: SIM905 - a word list reads best as prose
    "the a an and or but is was are were be been it this that these those i you he she we they good "
    "bad great awful nice terrible fine poor happy sad love hate like enjoy movie film book food "
    "service place day night time people thing story music song game team city house car dog cat "
    "positive negative neutral yes no true false input output label answer question text classify "
    "translate summarize paris france london england rome italy capital country red green blue one "
    "two three four five six seven eight nine ten hello world thanks please sorry "
).split()

# Sentences give the trainer realistic merges (" the", "Input:", "Label:", "\n") besides single words.
_SENTENCES = [
    "Input: the movie was good\nLabel: positive",
    "Input: the food was bad\nLabel: negative",
    "Input: what is the capital of france?\nOutput: paris",
    "Classify the text as positive or negative.",
    "Answer the input.",
    "I really enjoy this book, it is great and nice.",
    "They hate that terrible awful place; the service is poor.",
]


def _corpus() -> list[str]:
    lines = list(_SENTENCES) * 20
    for index, word in enumerate(_WORDS):
        # Each word in several contexts so it becomes one " word" token under byte-level BPE.
        lines.extend([f"{word} {_WORDS[(index + 7) % len(_WORDS)]}", f"the {word} is {word}."] * 8)
    return lines


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with about 400 tokens, trained on a small English corpus."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS)


def _save_seeded(path: Path, build: Callable[[int, int], PreTrainedModel]) -> Path:
    """Build a model with torch seeded 0 from (vocabulary size, end-of-text id) and save it with the tokenizer."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    torch.manual_seed(0)
    build(len(tokenizer), eos_id).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_model_dir(path: Path) -> Path:
    """Save a seeded 2-layer GPT-2 (hidden 64, context 256) and its tokenizer into path; return path."""

    def build(vocab: int, eos_id: int) -> PreTrainedModel:
        config = GPT2Config(
            vocab_size=vocab,
            n_positions=256,
            n_embd=64,
            n_layer=2,
            n_head=2,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
            # With GPT-2's usual 0.02 init, random logits are nearly uniform and no prompt can move them far;
            # a wider init gives the frozen random features enough contrast for a prompt to learn a toy task.
            initializer_range=0.5,
        )
        return GPT2LMHeadModel(config)

    return _save_seeded(path, build)


def build_tiny_llama_dir(path: Path) -> Path:
    """A seeded 2-layer Llama (the default model's architecture: rotary positions, 2 key/value heads for 4 query
    heads, RMSNorm; hidden 64) with the same tokenizer, saved into path; return path."""

    def build(vocab: int, eos_id: int) -> PreTrainedModel:
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
            initializer_range=0.5,  # random logits with contrast, as for the GPT-2 above
        )
        return LlamaForCausalLM(config)

    return _save_seeded(path, build)


def build_tiny_gemma_dir(path: Path) -> Path:
    """A seeded 3-layer Gemma 3 (the optional second model's architecture: sliding-window layers around a full one,
    rotary bases per layer type, one key/value head of width 32 for 4 query heads, a scaled embedding; hidden 64)
    with the same tokenizer, saved into path; return path. Its window is 4 positions, so short rows cross it."""

    def build(vocab: int, eos_id: int) -> PreTrainedModel:
        config = Gemma3TextConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=32,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            sliding_window=4,
            max_position_embeddings=256,
            pad_token_id=0,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
            # Gemma's own init: its embedding scale (sqrt(64)) already gives the random logits contrast, and a
            # wider init makes greedy decoding repeat one token whatever the context.
            initializer_range=0.02,
        )
        return Gemma3ForCausalLM(config)

    return _save_seeded(path, build)


def in_float64(frozen: FrozenModel) -> FrozenModel:
    """A float64 copy of a frozen model (a new FrozenModel: it reads the model's dtype when it is made). Rows
    padded to other lengths then round alike, so what differs is not rounding."""
    return FrozenModel(copy.deepcopy(frozen.model).to(torch.float64), frozen.tokenizer, frozen.identity)
