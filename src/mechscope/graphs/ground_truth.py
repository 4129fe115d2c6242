"""A model whose computation is known: a two-step lookup (a -> b -> c), for checking graphs.

The task: prompts ``<bos> a SEP`` over ``n_inputs`` tokens a. After ``a`` the next token is its
intermediate ``b = f(a)`` (one of ``n_middle``); after ``SEP`` it is ``c = g(b)`` (one of
``n_outputs``). f and g are fixed, balanced, seeded maps. A 2-layer llama with MLPs learns it
on CPU in seconds.

Two design choices make the two steps happen where a graph can find them, rather than a direct
a -> c lookup (which is what an unconstrained model learns, measured: patching layer 0's MLP
output moves no answer):

- layer 0's attention writes nothing (its output projection is zero and frozen), so at the
  ``SEP`` position nothing about ``a`` is known until layer 1's attention reads position 1;
- the ``c`` answer is trained on half of the inputs only (``trained_c``); the other half is
  answered right only by going through ``b``, which every input is trained to predict.

So on the held-out half the model must compute b = f(a) at position 1 (layer 0's MLP), move it to
``SEP`` (a layer-1 head) and map it to c = g(b) (layer 1's MLP). :func:`check_composition`
measures this independently of any graph: the held-out accuracy, and how often patching layer
0's MLP output at position 1 from another input a' turns the answer into g(f(a')).

Shapes: ``prompts()`` [n_inputs, 3] token ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from mechscope.hooks import names
from mechscope.models.hooked_model import HookedModel
from mechscope.validate import check_int, check_number

SEP = 1
FIRST_INPUT = 2


@dataclass(frozen=True)
class TwoHopTask:
    """The maps f: inputs -> middles and g: middles -> outputs (balanced, seeded) and the token
    layout: 0 BOS, 1 SEP, then the inputs, the middles, the outputs."""

    n_inputs: int = 96
    n_middle: int = 8
    n_outputs: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("n_outputs", self.n_outputs, 2)
        check_int("n_middle", self.n_middle, self.n_outputs)
        check_int("n_inputs", self.n_inputs, 2 * self.n_middle)
        check_int("seed", self.seed, 0)

    @property
    def vocab(self) -> int:
        return FIRST_INPUT + self.n_inputs + self.n_middle + self.n_outputs

    def middle_token(self, middle: int | torch.Tensor) -> int | torch.Tensor:
        return FIRST_INPUT + self.n_inputs + middle

    def output_token(self, output: int | torch.Tensor) -> int | torch.Tensor:
        return FIRST_INPUT + self.n_inputs + self.n_middle + output

    def maps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(f [n_inputs] -> middle index, g [n_middle] -> output index)."""
        generator = torch.Generator().manual_seed(self.seed)
        f = torch.randperm(self.n_inputs, generator=generator) % self.n_middle
        g = torch.randperm(self.n_middle, generator=generator) % self.n_outputs
        return f, g

    def prompts(self) -> torch.Tensor:
        """[n_inputs, 3]: ``<bos> a SEP`` for every input a."""
        inputs = torch.arange(self.n_inputs)
        return torch.stack([torch.zeros_like(inputs), FIRST_INPUT + inputs, torch.full_like(inputs, SEP)], 1)

    def answers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(b tokens [n_inputs], c tokens [n_inputs]): the next token after ``a`` and after ``SEP``."""
        f, g = self.maps()
        return self.middle_token(f), self.output_token(g[f])

    def trained_c(self) -> torch.Tensor:
        """[n_inputs] bool: the inputs whose c answer is trained (every other one)."""
        return torch.arange(self.n_inputs) % 2 == 0


def train_two_hop_model(task: TwoHopTask = TwoHopTask(), steps: int = 500, lr: float = 3e-3, d_model: int = 64,
                        d_mlp: int = 256, seed: int = 0, progress: bool = True, constrained: bool = True) -> HookedModel:
    """The 2-layer llama of the module docstring, trained full-batch with AdamW (deterministic
    in ``seed``). ``constrained=False`` is the null control: layer 0's attention stays live and
    every c answer is trained, so the model may look c up from a directly."""
    import transformers as tf

    from mechscope.models.tiny import word_tokenizer

    check_int("steps", steps, 1)
    check_number("lr", lr, 0, strict_minimum=True)
    check_int("d_model", d_model, 4)
    check_int("d_mlp", d_mlp, 1)
    config = tf.LlamaConfig(vocab_size=task.vocab, hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=8, bos_token_id=0,
                            eos_token_id=0, tie_word_embeddings=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = tf.LlamaForCausalLM(config)
    if constrained:
        silent = model.model.layers[0].self_attn.o_proj.weight
        silent.data.zero_()
        silent.requires_grad_(False)
    tokens = task.prompts()
    middles, outputs = task.answers()
    trained = task.trained_c() if constrained else torch.ones(task.n_inputs, dtype=torch.bool)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.1)
    bar = tqdm(range(steps), desc="training the two-hop model", disable=not progress)
    for _ in bar:
        logits = model(tokens).logits
        loss = torch.nn.functional.cross_entropy(logits[:, 1], middles) + \
            torch.nn.functional.cross_entropy(logits[trained, 2], outputs[trained])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    model.eval()
    return HookedModel(model, word_tokenizer(task.vocab), name="two-hop")


@dataclass(frozen=True)
class Composition:
    """How the model answers: accuracy of b and c on every input, of c on the held-out half, and
    the share of held-out-style swaps (a -> a' with another c) where patching layer 0's MLP
    output at position 1 from a' turns the answer into g(f(a'))."""

    middle_accuracy: float
    output_accuracy: float
    held_out_accuracy: float
    patched_to_other: float


@torch.no_grad()
def check_composition(model: HookedModel, task: TwoHopTask) -> Composition:
    """Measure the two steps without any graph (see the module docstring)."""
    tokens = task.prompts()
    middles, outputs = task.answers()
    hook = names.block(0, "hook_mlp_out")
    logits, cache = model.run_with_cache(tokens, names=[hook])
    held_out = ~task.trained_c()
    donors = torch.roll(torch.arange(task.n_inputs), 1)
    while bool((outputs[donors] == outputs).any()):  # every swap must change the answer
        clash = outputs[donors] == outputs
        donors[clash] = torch.roll(donors, 1)[clash]

    def patch(activation: torch.Tensor, point) -> torch.Tensor:
        patched = activation.clone()
        patched[:, 1] = cache[hook][donors, 1]
        return patched

    swapped = model.run_with_hooks(tokens, fwd_hooks=[(hook, patch)])[:, 2].argmax(-1)
    return Composition(float((logits[:, 1].argmax(-1) == middles).float().mean()),
                       float((logits[:, 2].argmax(-1) == outputs).float().mean()),
                       float((logits[held_out, 2].argmax(-1) == outputs[held_out]).float().mean()),
                       float((swapped == outputs[donors]).float().mean()))


__all__ = ["Composition", "TwoHopTask", "check_composition", "train_two_hop_model"]
