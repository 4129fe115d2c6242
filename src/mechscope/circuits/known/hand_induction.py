"""A GPT-2 whose weights are set by hand so that its induction circuit is known exactly.

Residual layout: orthogonal subspaces, each feature encoded as e_2i - e_2i+1 (orthogonal to
the all-ones vector, so LayerNorm subtracts nothing and, with every write of fixed norm, only
rescales by a constant):

- ``tok`` (token identity) and ``pos`` (position) from the embeddings;
- L0H0, a previous-token head: query and key read ``pos`` (key shifted by one), value reads
  ``tok``; it writes ``prev`` (the previous token);
- L0H1, a distractor: attends to its own position and copies ``tok`` into ``junk0``;
- L1H0, an induction head: query reads ``tok``, key reads ``prev`` (K-composition with L0H0),
  value reads ``tok``; it writes ``out``, the only subspace the unembedding reads;
- L1H1, a distractor: attends to the previous position and copies ``tok`` into ``junk1``;
- both MLPs have zero weights.

Nothing reads ``junk0``/``junk1``, so the distractors (whose outputs do change between clean
and corrupted prompts) have no effect on the logits.
"""

from __future__ import annotations

import torch

from mechscope.models.hooked_model import HookedModel
from mechscope.models.tiny import word_tokenizer

VOCAB = 32  # id 0 is BOS
POSITIONS = 32
SCORE = 40.0  # attention logit of a match (others get 0): patterns are effectively one-hot
LOGIT_GAIN = 10.0
SUBSPACES = ("tok", "pos", "prev", "out", "junk0", "junk1")


class _Layout:
    """Index arithmetic of the subspaces: feature f of a subspace is e_{2(offset+f)} - e_{2(offset+f)+1}."""

    def __init__(self, vocab: int, positions: int):
        sizes = {"tok": vocab, "pos": positions, "prev": vocab, "out": vocab, "junk0": vocab, "junk1": vocab}
        self.offsets, total = {}, 0
        for name in SUBSPACES:
            self.offsets[name] = total
            total += sizes[name]
        self.d_model = 2 * total

    def encode(self, space: str, feature: int) -> torch.Tensor:
        vector = torch.zeros(self.d_model)
        index = 2 * (self.offsets[space] + feature)
        vector[index], vector[index + 1] = 1.0, -1.0
        return vector

    def reader(self, space: str, feature: int) -> torch.Tensor:
        """The vector whose dot product with an encoding of ``space`` is 1 for ``feature``, else 0."""
        return self.encode(space, feature) / 2


def hand_induction_model(vocab: int = VOCAB, positions: int = POSITIONS) -> HookedModel:
    """The hand-set 2-layer, 2-heads-per-layer GPT-2 described in the module docstring."""
    import transformers as tf

    layout = _Layout(vocab, positions)
    d, heads = layout.d_model, 2
    d_head = d // heads
    config = tf.GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=d, n_layer=2, n_head=heads,
                           bos_token_id=0, eos_token_id=0, tie_word_embeddings=False, resid_pdrop=0.0,
                           embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-6)
    model = tf.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
        transformer = model.transformer
        for token in range(vocab):
            transformer.wte.weight[token] = layout.encode("tok", token)
        for position in range(positions):
            transformer.wpe.weight[position] = layout.encode("pos", position)
        # LayerNorm maps x to x * sqrt(d) / |x|; each subspace written so far adds |e|^2 = 2.
        scale = [d**0.5 / (2 * written) ** 0.5 for written in (2, 4)]  # before layer 0, layer 1
        final_scale = d**0.5 / (2 * 6) ** 0.5

        def set_head(layer, head, query, key, value, write_space):
            """query / key: lists of (space, feature) read into d_head slot i; value: space read
            into slot f for feature f, written back as feature f of ``write_space``."""
            attn = transformer.h[layer].attn
            gain = (SCORE * d_head**0.5) ** 0.5 / scale[layer]
            columns = slice(head * d_head, (head + 1) * d_head)
            weight = attn.c_attn.weight  # Conv1D [d_model, 3 * d_model]: [q | k | v]
            for slot, (space, feature) in enumerate(query):
                weight[:, columns.start + slot] = gain * layout.reader(space, feature)
            for slot, (space, feature) in enumerate(key):
                if feature is not None:
                    weight[:, d + columns.start + slot] = gain * layout.reader(space, feature)
            for feature in range(vocab):
                weight[:, 2 * d + columns.start + feature] = layout.reader(value, feature) / scale[layer]
                attn.c_proj.weight[columns.start + feature] = layout.encode(write_space, feature)

        same_position = [("pos", p) for p in range(positions)]
        previous_position = [("pos", p - 1) if p > 0 else ("pos", None) for p in range(positions)]
        set_head(0, 0, same_position, previous_position, "tok", "prev")
        set_head(0, 1, same_position, same_position, "tok", "junk0")
        tokens = [("tok", t) for t in range(vocab)]
        set_head(1, 0, tokens, [("prev", t) for t in range(vocab)], "tok", "out")
        set_head(1, 1, same_position, previous_position, "tok", "junk1")
        for token in range(vocab):
            model.lm_head.weight[token] = LOGIT_GAIN * layout.reader("out", token) / final_scale
    return HookedModel(model, word_tokenizer(vocab), name="hand-induction")
