"""HookedModel: a native HF causal LM plus TransformerLens-named hook points."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from mechscope.errors import HookFunctionError, InputTypeError, MechscopeError, OutOfRangeError
from mechscope.hooks.cache import ActivationCache
from mechscope.hooks.points import HookCatalogue, HookPoint
from mechscope.hooks.prefix import PrefixReuse
from mechscope.hooks.session import HookFn, HookSession
from mechscope.models.adapters import adapter_for_model_type
from mechscope.models.catalogue import build_catalogue
from mechscope.models.config import ModelConfig
from mechscope.models.readout import ResidualReadout
from mechscope.models.tokens import ModelInput, as_token_tensor, tokenize
from mechscope.validate import check_int

NameSelector = str | Callable[[str], bool]
HookSpec = Sequence[tuple[NameSelector, HookFn]]


class _PaddingMasks:
    """The attention masks of the padded batches :meth:`HookedModel.to_tokens` returned, keyed
    by the returned tensor's identity (held weakly), so passing that tensor back to the model
    uses its mask as passing the strings would. A tensor derived from it (a slice, a copy) is a
    new tensor and needs ``attention_mask=`` passed explicitly."""

    def __init__(self):
        self._masks: dict[int, tuple[weakref.ref, torch.Tensor]] = {}

    def remember(self, tokens: torch.Tensor, mask: torch.Tensor) -> None:
        key = id(tokens)
        masks = self._masks

        def forget(_reference, key=key):
            masks.pop(key, None)

        masks[key] = (weakref.ref(tokens, forget), mask)

    def lookup(self, tokens: torch.Tensor) -> torch.Tensor | None:
        entry = self._masks.get(id(tokens))
        return entry[1] if entry is not None and entry[0]() is tokens else None


class HookedModel:
    """Wraps a HF causal LM without changing it: no re-implemented forward, no weight edits.

    Hook points (see :meth:`hook_names`) use TransformerLens' names and are attached to the
    real HF modules only for the duration of a call or a :meth:`hooks` context.
    """

    def __init__(self, hf_model: torch.nn.Module, tokenizer, name: str = ""):
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        self.adapter = adapter_for_model_type(hf_model.config.model_type)
        self.cfg = ModelConfig.from_hf(hf_model.config, self.adapter, name=name)
        self.catalogue: HookCatalogue = build_catalogue(self.adapter, self.cfg, hf_model)
        self.readout = ResidualReadout(self)
        self._padding_masks = _PaddingMasks()

    def __repr__(self) -> str:
        c = self.cfg
        return (f"HookedModel({c.name or c.family}: {c.n_layers} layers, {c.n_heads} heads "
                f"({c.n_kv_heads} kv), d_model {c.d_model}, {len(self.catalogue)} hook points)")

    # ----------------------------------------------------------------- basics
    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf_model.parameters()).dtype

    def hook_names(self, include_opt_in: bool = True) -> list[str]:
        """All hook point names in forward order; opt-in ones (patterns, scores, per-head results)
        are only computed when requested."""
        return self.catalogue.names(include_opt_in)

    def hook_point(self, name: str) -> HookPoint:
        return self.catalogue.get(name)

    # ----------------------------------------------------------------- tokens
    def to_tokens(self, text: str | Sequence[str], prepend_bos: bool | None = None) -> torch.Tensor:
        """[batch, pos] token ids (right-padded if lengths differ). The model remembers the
        padding mask of a padded batch: passing this tensor (unchanged) to the model, to
        ``run_with_cache`` or any analysis uses it, so "the last position" is each prompt's own
        last token. For a tensor derived from it, pass ``attention_mask=`` yourself."""
        tokens, mask = tokenize(self.tokenizer, text, prepend_bos, device=self.device)
        if mask is not None:
            self._padding_masks.remember(tokens, mask)
        return tokens

    def attention_mask_of(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """The padding mask [batch, pos] of a batch :meth:`to_tokens` padded, else None."""
        return self._padding_masks.lookup(tokens)

    def to_str_tokens(self, text: str | torch.Tensor, prepend_bos: bool | None = None) -> list[str]:
        """The tokens of one prompt (or a 1-D / [1, pos] tensor) as strings."""
        tokens = text if isinstance(text, torch.Tensor) else self.to_tokens(text, prepend_bos)
        tokens = as_token_tensor(tokens)
        if tokens.shape[0] != 1:
            raise MechscopeError(f"to_str_tokens takes one sequence, got a batch of {tokens.shape[0]}")
        return [self.tokenizer.decode([t]) for t in tokens[0].tolist()]

    def to_string(self, tokens: torch.Tensor | Sequence[int]) -> str | list[str]:
        """Decode [pos] to a string or [batch, pos] to a list of strings."""
        tokens = torch.as_tensor(tokens)
        if tokens.dim() == 2:
            return [self.tokenizer.decode(row.tolist()) for row in tokens]
        return self.tokenizer.decode(tokens.tolist())

    def to_single_token(self, text: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise MechscopeError(f"{text!r} is {len(ids)} tokens for this tokenizer, expected exactly one")
        return ids[0]

    def prepare_input(
        self, inputs: ModelInput, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(tokens [batch, pos], attention_mask [batch, pos] or None) on the model's device."""
        if isinstance(inputs, torch.Tensor):
            if attention_mask is None:
                attention_mask = self._padding_masks.lookup(inputs)
            tokens = as_token_tensor(inputs).to(self.device)
            if tokens.max() >= self.cfg.d_vocab or tokens.min() < 0:
                raise MechscopeError(f"token ids must lie in [0, {self.cfg.d_vocab}); got "
                                 f"{int(tokens.min())}..{int(tokens.max())}")
        else:
            tokens, mask = tokenize(self.tokenizer, inputs, device=self.device)
            attention_mask = mask if attention_mask is None else attention_mask
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
            if attention_mask.shape != tokens.shape:
                raise MechscopeError(f"attention_mask shape {tuple(attention_mask.shape)} does not match "
                                 f"tokens {tuple(tokens.shape)}")
        return tokens, attention_mask

    # ----------------------------------------------------------------- running
    def forward(self, inputs: ModelInput, attention_mask: torch.Tensor | None = None,
                logits_to_keep: int = 0) -> torch.Tensor:
        """Logits [batch, pos, d_vocab] of the plain HF forward (plus any active hooks).
        ``logits_to_keep=k`` unembeds only the last k positions (0 = all): [batch, k, d_vocab]."""
        tokens, mask = self.prepare_input(inputs, attention_mask)
        # With a mask, positions count real tokens only (as HF's generate does), so a left-padded
        # row sees the same positions as the prompt alone; right padding leaves them unchanged.
        positions = None if mask is None else (mask.long().cumsum(-1) - 1).clamp(min=0)
        extra = {"logits_to_keep": logits_to_keep} if logits_to_keep else {}
        return self.hf_model(input_ids=tokens, attention_mask=mask, position_ids=positions, use_cache=False,
                             **extra).logits

    __call__ = forward

    def _resolve(self, specs: HookSpec) -> list[tuple[HookPoint, HookFn]]:
        resolved = []
        for spec in specs:
            if not (isinstance(spec, tuple | list) and len(spec) == 2):
                raise HookFunctionError(f"each hook must be a (name_or_filter, fn) pair, got {spec!r}")
            selector, fn = spec
            if not callable(fn):
                raise HookFunctionError(f"hook function for {selector!r} is not callable: {fn!r}")
            points = self.catalogue.resolve(selector)
            if not points:
                raise MechscopeError(f"hook filter {selector!r} matched no hook point")
            resolved.extend((point, fn) for point in points)
        return resolved

    def hooks(self, fwd_hooks: HookSpec = (), bwd_hooks: HookSpec = (), prefix: PrefixReuse | None = None) -> HookSession:
        """Context manager: ``with model.hooks(fwd_hooks=[(name, fn)]): model(tokens)``.
        ``prefix`` (see :meth:`prefix_reuse`) takes the first blocks' output from a cache."""
        return HookSession(self.hf_model, self._resolve(fwd_hooks), self._resolve(bwd_hooks), prefix)

    def prefix_reuse(self, start_layer: int, resid_post: torch.Tensor) -> PrefixReuse | None:
        """Blocks 0..start_layer-1 return ``resid_post`` [batch, pos, d_model] (a base run's
        ``hook_resid_post`` of block start_layer-1, one row per batch row) and compute on one row
        only; None for ``start_layer <= 0``. Valid only when nothing before ``start_layer`` is
        patched (hooks there see the single row)."""
        if start_layer <= 0:
            return None
        if start_layer > self.cfg.n_layers:
            raise OutOfRangeError(f"start_layer {start_layer} is beyond the model's {self.cfg.n_layers} layers")
        paths = tuple(self.adapter.path(layer) for layer in range(start_layer))
        return PrefixReuse(paths, resid_post)

    def run_with_hooks(
        self,
        inputs: ModelInput,
        fwd_hooks: HookSpec = (),
        bwd_hooks: HookSpec = (),
        attention_mask: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        prefix: PrefixReuse | None = None,
    ) -> torch.Tensor:
        """Logits [batch, pos, d_vocab] with hooks active for this one forward pass (and
        ``prefix``, from :meth:`prefix_reuse`, taking the first blocks' output from a cache).

        Without ``bwd_hooks`` the pass runs without autograd (interventions rarely need it, and
        it saves the graph's memory). With them, autograd is on and they fire when you later call
        ``.backward()`` on something computed from the returned logits (they are armed on the
        tensors, not left on the model)."""
        grad_mode = torch.enable_grad() if bwd_hooks else torch.no_grad()
        with grad_mode, self.hooks(fwd_hooks, bwd_hooks, prefix):
            return self.forward(inputs, attention_mask, logits_to_keep)

    def _caching_hooks(self, names, store: dict, device) -> list[tuple[HookPoint, HookFn]]:
        def save(activation: torch.Tensor, hook: HookPoint) -> None:
            activation = activation.detach()
            store[hook.name] = activation if device is None else activation.to(device)

        points = self.catalogue.resolve(names)
        if not points:
            raise MechscopeError(f"names={names!r} matched no hook point; model.hook_names() lists them")
        return [(point, save) for point in points]

    def run_with_cache(
        self,
        inputs: ModelInput,
        names: NameSelector | Iterable[str] | None = None,
        device: str | torch.device | None = None,
        attention_mask: torch.Tensor | None = None,
        fwd_hooks: HookSpec = (),
    ) -> tuple[torch.Tensor, ActivationCache]:
        """Run once, keeping activations. Returns (logits [batch, pos, d_vocab], cache).

        ``names``: None caches every default hook point (all but the opt-in patterns, scores and
        per-head results); a list names points exactly; a callable filters names (it may select
        opt-in points). ``device`` moves cached tensors (e.g. to "cpu"); otherwise they are the
        model's own tensors, not copies. Runs without autograd; see :meth:`run_with_cache_and_grads`.
        ``fwd_hooks`` run before caching at the same point, so the cache shows the edited values.
        """
        store: dict[str, torch.Tensor] = {}
        hooks = self._resolve(fwd_hooks) + self._caching_hooks(names, store, device)
        tokens, mask = self.prepare_input(inputs, attention_mask)
        with torch.no_grad(), HookSession(self.hf_model, hooks):
            logits = self.forward(tokens, mask)
        return logits, ActivationCache(store, self, attention_mask=mask)

    def run_with_cache_and_grads(
        self,
        inputs: ModelInput,
        metric: Callable[[torch.Tensor], torch.Tensor],
        names: NameSelector | Iterable[str] | None = None,
        attention_mask: torch.Tensor | None = None,
        device: str | torch.device | None = None,
    ) -> tuple[torch.Tensor, ActivationCache, ActivationCache]:
        """Forward, ``metric(logits)`` (a scalar), backward. Returns (metric value, activation
        cache, gradient cache): ``grads[name]`` is d metric / d activation at that hook point.

        Parameter gradients are neither computed nor accumulated: parameters are frozen for the
        call (restored after), so the backward pass only propagates through activations (the
        earliest requested hook point becomes the graph's leaf), which roughly halves its cost.
        Model .grad fields are left as they were."""
        store: dict[str, torch.Tensor] = {}
        grad_store: dict[str, torch.Tensor] = {}
        tokens, mask = self.prepare_input(inputs, attention_mask)
        caching = self._caching_hooks(names, store, device)
        grad_hooks = self._caching_hooks(names, grad_store, device)
        with self.frozen_parameters(), torch.enable_grad(), HookSession(self.hf_model, caching, grad_hooks):
            value = metric(self.forward(tokens, mask))
            if value.dim() != 0:
                raise MechscopeError(f"metric must return a scalar, got shape {tuple(value.shape)}")
            value.backward()
        return (value.detach(), ActivationCache(store, self, attention_mask=mask),
                ActivationCache(grad_store, self, attention_mask=mask))

    @contextlib.contextmanager
    def frozen_parameters(self) -> Iterator[None]:
        """For the block, no model parameter requires grad (so a backward pass propagates through
        activations only and never computes a weight gradient); on exit each parameter's
        ``requires_grad`` and ``.grad`` are as they were, also after an exception."""
        params = [p for p in self.hf_model.parameters() if p.requires_grad]
        saved_grads = [p.grad for p in params]
        for param in params:
            param.requires_grad_(False)
        try:
            yield
        finally:
            for param, grad in zip(params, saved_grads):
                param.requires_grad_(True)
                param.grad = grad

    def tokenize_prompts(self, prompts: Sequence[str], chat: bool | None = None,
                         responses: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(tokens [batch, pos], attention_mask or None) of user prompts, each wrapped in the chat
        template as one user turn followed by the assistant's generation prompt when ``chat`` is
        on. ``chat=None`` uses the template when the tokenizer has one; ``chat=True`` on a
        tokenizer without one is an error. ``responses`` (one per prompt) are appended as the
        start of the assistant's reply (e.g. "(A" for an A/B answer). Rows are right-padded."""
        if responses is not None and len(responses) != len(prompts):
            raise MechscopeError(f"{len(responses)} responses for {len(prompts)} prompts; give one per prompt")
        has_template = getattr(self.tokenizer, "chat_template", None) is not None
        use_chat = has_template if chat is None else chat
        if use_chat and not has_template:
            raise MechscopeError("chat=True but this tokenizer has no chat template; use chat=False")
        suffixes = list(responses) if responses is not None else [""] * len(prompts)
        if not use_chat:
            return tokenize(self.tokenizer, [p + r for p, r in zip(prompts, suffixes)], device=self.device)
        texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                    add_generation_prompt=True) + response
                 for prompt, response in zip(prompts, suffixes)]
        # The template writes its own special tokens, so the tokenizer must not add a BOS.
        return tokenize(self.tokenizer, texts, prepend_bos=False, device=self.device)

    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 32,
        fwd_hooks: HookSpec = (),
        chat: bool | None = None,
        do_sample: bool = False,
        **generate_kwargs,
    ) -> str:
        """Generate a continuation of ``prompt`` (the new text only), with hooks active.

        ``chat=None`` uses the chat template when the tokenizer has one; ``chat=True`` on a
        tokenizer without one is an error. Greedy unless ``do_sample=True``.
        """
        if not isinstance(prompt, str):
            raise InputTypeError(f"generate takes one prompt string, got {type(prompt).__name__}")
        check_int("max_new_tokens", max_new_tokens, minimum=1)
        tokens, _ = self.tokenize_prompts([prompt], chat)
        pad = self.pad_token_id
        with torch.no_grad(), self.hooks(fwd_hooks):
            output = self.hf_model.generate(
                input_ids=tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=max_new_tokens,
                do_sample=do_sample, pad_token_id=pad, **generate_kwargs,
            )
        return self.tokenizer.decode(output[0, tokens.shape[1]:], skip_special_tokens=True)

    @property
    def pad_token_id(self) -> int | None:
        """The id generation pads with: the tokenizer's pad token, else its EOS token (HF's own
        fallback, made explicit so every generate path pads the same way)."""
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad

    # ----------------------------------------------------------------- weights
    @property
    def final_norm(self) -> torch.nn.Module:
        return self.hf_model.get_submodule(self.adapter.final_norm)

    @property
    def W_U(self) -> torch.Tensor:
        """Unembedding [d_model, d_vocab] (a transposed view of the lm_head weight)."""
        return self.hf_model.get_submodule(self.adapter.unembed).weight.T

    def W_O(self, layer: int) -> torch.Tensor:
        """Output projection of ``layer`` per head: [n_heads, d_head, d_model]."""
        module = self.hf_model.get_submodule(self.adapter.path(layer, "o_proj"))
        if self.adapter.o_proj_layout == "out_in":
            return module.weight.T.unflatten(0, (self.cfg.n_heads, self.cfg.d_head))
        return module.weight.unflatten(0, (self.cfg.n_heads, self.cfg.d_head))

    def b_O(self, layer: int) -> torch.Tensor | None:
        return self.hf_model.get_submodule(self.adapter.path(layer, "o_proj")).bias

    def unembed(self, resid: torch.Tensor, apply_final_norm: bool = True, apply_soft_cap: bool = True) -> torch.Tensor:
        """Logits [..., d_vocab] from residual vectors [..., d_model] through the model's real
        final norm and unembedding (and final soft-capping where the family has it)."""
        hidden = self.final_norm(resid) if apply_final_norm else resid
        logits = self.hf_model.get_submodule(self.adapter.unembed)(hidden)
        cap = self.cfg.final_logit_softcap
        return logits if cap is None or not apply_soft_cap else torch.tanh(logits / cap) * cap

    def linearise_attn_post_norm(self, layer: int, result: torch.Tensor) -> torch.Tensor:
        """Per-head o_proj contributions [..., head, d_model] mapped through the RMSNorm that
        follows o_proj (Gemma's post-attention norm), linearised at their sum: each head is
        multiplied by weight / rms(sum over heads), so the heads add up to the norm's output."""
        norm = self.hf_model.get_submodule(self.adapter.path(layer, "attn_out"))
        total = result.float().sum(-2)
        if self.b_O(layer) is not None:
            total = total + self.b_O(layer).float()
        weight, _, eps = self.norm_parameters(norm)
        inverse_rms = torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + eps)
        return (result.float() * (inverse_rms * weight.to(result.device)).unsqueeze(-2)).to(result.dtype)

    def norm_parameters(self, norm: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        """(effective weight [d_model], bias [d_model] or None, eps) of one of the model's norm
        modules, in float32 (attribution sums run over d_model and must not drift in bf16).
        Gemma's RMSNorm scales by (1 + weight), which the adapter's offset accounts for; a norm
        without a weight scales by 1."""
        weight = getattr(norm, "weight", None)
        weight = torch.ones(self.cfg.d_model, device=self.device) if weight is None else weight.float()
        bias = getattr(norm, "bias", None)
        eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", self.cfg.norm_eps))
        return weight + self.adapter.norm_weight_offset, None if bias is None else bias.float(), eps

    def final_norm_affine(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(effective weight [d_model], bias [d_model] or None) of the final norm."""
        weight, bias, _ = self.norm_parameters(self.final_norm)
        return weight, bias

    def _token_column(self, tokens: int | torch.Tensor) -> torch.Tensor:
        tokens = torch.as_tensor(tokens, device=self.device).reshape(-1)
        if tokens.numel() and (tokens.max() >= self.cfg.d_vocab or tokens.min() < 0):
            raise MechscopeError(f"token ids must lie in [0, {self.cfg.d_vocab})")
        return tokens

    def unembed_directions(
        self, tokens: int | torch.Tensor, incorrect_tokens: int | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Residual directions [n, d_model] whose dot product with a normalised residual (without
        the norm's weight) gives the logit of ``tokens`` (minus ``incorrect_tokens``)."""
        weight, _ = self.final_norm_affine()
        directions = self.W_U[:, self._token_column(tokens)].T.float()
        if incorrect_tokens is not None:
            directions = directions - self.W_U[:, self._token_column(incorrect_tokens)].T.float()
        return directions * weight

    def logit_bias(
        self, tokens: int | torch.Tensor, incorrect_tokens: int | torch.Tensor | None = None
    ) -> torch.Tensor:
        """The part of the logit (difference) [n] that no residual component writes: the final
        norm's bias through the unembedding, plus the unembedding's own bias."""
        _, norm_bias = self.final_norm_affine()
        unembed = self.hf_model.get_submodule(self.adapter.unembed)

        def column_bias(tok):
            tok = self._token_column(tok)
            total = torch.zeros(tok.shape, device=self.device, dtype=torch.float32)
            if norm_bias is not None:
                total = total + norm_bias @ self.W_U[:, tok].float()
            if getattr(unembed, "bias", None) is not None:
                total = total + unembed.bias[tok].float()
            return total

        bias = column_bias(tokens)
        return bias if incorrect_tokens is None else bias - column_bias(incorrect_tokens)
