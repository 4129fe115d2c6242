"""A tour of the foundation on the bundled SmolLM2: cache, patch, ablate, analyse.

    python examples/quickstart.py            # SmolLM2-135M-Instruct (converted once, then cached)
    python examples/quickstart.py --tiny     # a tiny random Llama, runs in a second
"""

import sys

import torch

import mechscope
from mechscope.analysis import direct_logit_attribution, logit_lens
from mechscope.hooks import interventions as iv

model = mechscope.load_tiny("llama") if "--tiny" in sys.argv else mechscope.load()
print(model)

clean = "When Mary and John went to the store, John gave a drink to"
corrupt = "When Mary and John went to the store, Mary gave a drink to"
clean_tokens, corrupt_tokens = model.to_tokens(clean), model.to_tokens(corrupt)
assert clean_tokens.shape == corrupt_tokens.shape

# 1. cache everything (default points) and check an identity
logits, cache = model.run_with_cache(clean_tokens)
layer = model.cfg.n_layers // 2
gap = (cache["resid_mid", layer] - cache["resid_pre", layer] - cache["attn_out", layer]).abs().max()
print(f"resid_mid - (resid_pre + attn_out) at layer {layer}: {gap:.1e}")

# 2. the top-vs-second logit difference
top2 = logits[0, -1].topk(2).indices.tolist()
names = [model.to_string([t]) for t in top2]
print(f"top tokens {names}; logit diff {float(logits[0, -1, top2[0]] - logits[0, -1, top2[1]]):.2f}")


def logit_diff(run_logits: torch.Tensor) -> float:
    return float(run_logits[0, -1, top2[0]] - run_logits[0, -1, top2[1]])


# 3. denoising patch: put the clean residual stream into the corrupted run, one layer at a time
for patch_layer in range(0, model.cfg.n_layers, max(1, model.cfg.n_layers // 6)):
    patched = model.run_with_hooks(corrupt_tokens, fwd_hooks=[
        (f"blocks.{patch_layer}.hook_resid_pre", iv.patch_from(cache, positions=[-1]))])
    print(f"  patch clean resid_pre[{patch_layer}] at the last position -> logit diff {logit_diff(patched):.2f}")

# 4. zero-ablate one head through its z
ablated = model.run_with_hooks(clean_tokens, fwd_hooks=[
    (f"blocks.{model.cfg.n_layers - 1}.attn.hook_z", iv.zero_ablate(heads=[1]))])
print(f"zero-ablating L{model.cfg.n_layers - 1}H1: logit diff {logit_diff(logits):.2f} -> {logit_diff(ablated):.2f}")

# 5. attention patterns are opt-in, per layer
_, pattern_cache = model.run_with_cache(clean_tokens, names=[f"blocks.{layer}.attn.hook_pattern"])
print(f"pattern of layer {layer}: {tuple(pattern_cache['pattern', layer].shape)}")

# 6. logit lens and direct logit attribution
lens = logit_lens(model, cache)
print("logit lens (top token by layer):", [top[0][0] for top in lens.top_tokens][-5:])
dla = direct_logit_attribution(model, cache, top2[0], top2[1])
print("top heads by direct logit attribution:", dla.top_heads(3))
