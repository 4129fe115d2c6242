"""Small randomly initialised models of every supported family, built from a config offline.

They drive the fast tests: 2-3 layers, d_model 64, grouped-query attention where the family has
it, and a byte-level tokenizer built in memory (no download).
"""

from __future__ import annotations

import torch

from mechscope.errors import MechscopeError
from mechscope.models.adapters import SUPPORTED_FAMILIES
from mechscope.models.hooked_model import HookedModel

BYTE_VOCAB = 256
# A minimal chat template (user and assistant turns, an end-of-turn EOS) for tests of chat code
# on tiny models; their byte tokenizer has none by default, like a base model's.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}<eos>{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
SPECIAL_TOKENS = ("<bos>", "<eos>", "<pad>")
TINY_VOCAB = BYTE_VOCAB + len(SPECIAL_TOKENS)


def word_tokenizer(vocab: int):
    """Word-level tokenizer: "<bos>" is id 0, ordinary tokens are "t1" .. "t{vocab-1}"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = {"<bos>": 0, **{f"t{i}": i for i in range(1, vocab)}}
    backend = Tokenizer(models.WordLevel(vocab=words, unk_token="<bos>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>")


def byte_tokenizer(with_pad: bool = True):
    """A byte-level BPE tokenizer with no merges: every byte is one token, plus BOS/EOS(/PAD)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    for offset, special in enumerate(SPECIAL_TOKENS):
        vocab[special] = BYTE_VOCAB + offset
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    bos = BYTE_VOCAB
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
    )
    specials = {"bos_token": "<bos>", "eos_token": "<eos>"}
    if with_pad:
        specials["pad_token"] = "<pad>"
    return PreTrainedTokenizerFast(tokenizer_object=backend, **specials)


def _tiny_config(family: str):
    import transformers as tf

    common = dict(vocab_size=TINY_VOCAB, bos_token_id=BYTE_VOCAB, eos_token_id=BYTE_VOCAB + 1,
                  pad_token_id=BYTE_VOCAB + 2, tie_word_embeddings=False)
    llama_like = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.1, **common)
    if family == "llama":
        return tf.LlamaConfig(**llama_like)
    if family == "mistral":
        return tf.MistralConfig(sliding_window=8, **llama_like)
    if family == "qwen2":
        return tf.Qwen2Config(**llama_like)
    if family == "gemma3":
        # Mixed sliding/full layers with a short window, so masks and patterns are exercised.
        return tf.Gemma3TextConfig(head_dim=16, sliding_window=4, query_pre_attn_scalar=16,
                                   layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                                   **llama_like)
    if family == "gpt2":
        return tf.GPT2Config(n_embd=64, n_layer=3, n_head=4, n_positions=256, initializer_range=0.1,
                             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                num_attention_heads=4, rotary_pct=0.5, max_position_embeddings=256,
                                use_parallel_residual=True, initializer_range=0.1, **common)
    raise MechscopeError(f"unknown family {family!r}; choose one of: {', '.join(SUPPORTED_FAMILIES)}")


def load_tiny(family: str, seed: int = 0, *, attn_implementation: str = "sdpa",
              with_pad_token: bool = True, chat: bool = False) -> HookedModel:
    """A randomly initialised model of ``family`` (llama, mistral, qwen2, gemma3, gpt2, gpt_neox).

    The same ``seed`` always gives the same weights. ``chat=True`` gives the tokenizer
    :data:`TINY_CHAT_TEMPLATE`, for code that needs chat turns.
    """
    from transformers import AutoModelForCausalLM

    config = _tiny_config(family)
    with torch.random.fork_rng():  # seed locally; the caller's RNG state is left as it was
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation,
                                                 dtype=torch.float32)
    model.eval()
    tokenizer = byte_tokenizer(with_pad=with_pad_token)
    if chat:
        tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return HookedModel(model, tokenizer, name=f"tiny-{family}")
