"""Which SAE latents two dictionaries share, across seeds and across models, and whether a shared
latent means the same thing on both sides.

- :func:`seed_stability`: two dictionaries of the same hook (two seeds), latents paired by decoder
  cosine (:func:`~mechscope.compare.features.match_latents`), plus :func:`paired_decoder_svcca`.
- :func:`cross_model_matches`: two models' dictionaries, latents paired by the correlation of
  their activations on the same tokens (positions aligned across tokenizers by
  :func:`aligned_rows`). Latents that never fire on those tokens (or on fewer than ``min_firing``)
  cannot be paired by correlation: they are counted and left out, so the shared fraction is over
  the latents that fire. The control is the same matching with B's rows shuffled.
- :func:`paired_decoder_svcca`: the SVCCA between the decoder rows of the matched pairs (A's rows
  of the pairs' A latents against B's rows of their B latents; across models the two decoders
  live in different spaces, which SVCCA allows), against random pairings of the same latents.
- :func:`feature_transfer`: for the best matched pairs, each latent's top contexts side by side,
  how many of them are the same tokens, and (given an explainer) each side's explanation and
  whether the two agree, with the agreement rate of mismatched pairs as its null.

Shapes: decoders [latents, d]; activations [tokens, d]; latent activations [tokens, latents].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from mechscope.compare.align import run_aligned, typical_rows
from mechscope.compare.features import LatentMatch, activation_similarity, decoder_similarity, match_latents
from mechscope.compare.similarity import svcca
from mechscope.errors import ConfigError, InputTypeError, MechscopeError
from mechscope.models.hooked_model import HookedModel
from mechscope.sae.model import SAE
from mechscope.validate import check_finite, check_int, check_number


@dataclass(frozen=True)
class PairedSvcca:
    """``value``: SVCCA of the ``pairs`` matched decoder rows; ``null_mean`` / ``null_high``: the
    mean and 95th percentile over ``shuffles`` random pairings of the same latents; ``p_value``:
    the share of shuffles at least as high (with the +1 correction, so never below 1/(shuffles+1))."""

    value: float
    null_mean: float
    null_high: float
    p_value: float
    pairs: int
    shuffles: int

    def __post_init__(self) -> None:
        for name in ("value", "null_mean", "null_high"):
            check_number(name, getattr(self, name), 0, 1 + 1e-9)
        check_number("p_value", self.p_value, 0, 1)
        check_int("pairs", self.pairs, 2)
        check_int("shuffles", self.shuffles, 1)

    def to_json(self) -> dict:
        return {"value": self.value, "null_mean": self.null_mean, "null_high": self.null_high,
                "p_value": self.p_value, "pairs": self.pairs, "shuffles": self.shuffles}


def _decoder(sae: SAE, side: str) -> torch.Tensor:
    if not isinstance(sae, SAE):
        raise InputTypeError(f"sae_{side} must be a mechscope SAE; got {type(sae).__name__}")
    return sae.W_dec.detach().float().cpu()


def paired_decoder_svcca(decoder_a: torch.Tensor, decoder_b: torch.Tensor, pairs: torch.Tensor, shuffles: int = 20,
                         variance: float = 0.99, seed: int = 0) -> PairedSvcca:
    """SVCCA between ``decoder_a[pairs[:, 0]]`` [m, d_a] and ``decoder_b[pairs[:, 1]]`` [m, d_b]
    (row i of both: the two latents of pair i), against ``shuffles`` random pairings (B's rows
    permuted). CCA of m rows in d dimensions finds correlations near 1 by chance when m is not
    well above d, so m <= max(d_a, d_b) is refused and the null is always reported."""
    for name, decoder in (("decoder_a", decoder_a), ("decoder_b", decoder_b)):
        if not isinstance(decoder, torch.Tensor) or decoder.dim() != 2 or not decoder.is_floating_point():
            raise ConfigError(f"{name} must be a floating [latents, d] tensor; got {getattr(decoder, 'shape', decoder)!r}")
        check_finite(name, decoder)
    if not isinstance(pairs, torch.Tensor) or pairs.dim() != 2 or pairs.shape[1] != 2 or pairs.is_floating_point():
        raise ConfigError(f"pairs must be an integer [m, 2] tensor (latent of A, latent of B); got "
                          f"{getattr(pairs, 'shape', pairs)!r}")
    for column, decoder, name in ((0, decoder_a, "A"), (1, decoder_b, "B")):
        if len(pairs) and not (0 <= int(pairs[:, column].min()) and int(pairs[:, column].max()) < len(decoder)):
            raise ConfigError(f"pairs name latents outside {name}'s {len(decoder)} latents")
    widest = max(decoder_a.shape[1], decoder_b.shape[1])
    if len(pairs) <= widest:
        raise ConfigError(f"paired-decoder SVCCA needs more pairs than dimensions ({len(pairs)} pairs, d = {widest}): "
                          "with fewer, canonical correlations are 1 whatever the pairing")
    check_int("shuffles", shuffles, 1)
    check_int("seed", seed, 0)
    x, y = decoder_a[pairs[:, 0]].double(), decoder_b[pairs[:, 1]].double()
    value = svcca(x, y, variance)
    generator = torch.Generator().manual_seed(seed)
    null = torch.tensor([svcca(x, y[torch.randperm(len(y), generator=generator)], variance) for _ in range(shuffles)])
    p_value = float(((null >= value).sum() + 1) / (shuffles + 1))
    return PairedSvcca(value, float(null.mean()), float(null.quantile(0.95)), p_value, len(pairs), shuffles)


@dataclass(frozen=True)
class SeedStability:
    """Two dictionaries of one hook matched by decoder cosine: ``match`` (shared fraction above
    its threshold, mean cosine, random-pairing null) and ``svcca`` of the matched decoder rows
    (None when there are not more pairs than dimensions)."""

    match: LatentMatch
    svcca: PairedSvcca | None

    def __post_init__(self) -> None:
        if not isinstance(self.match, LatentMatch):
            raise InputTypeError(f"match must be a LatentMatch; got {type(self.match).__name__}")

    def to_json(self) -> dict:
        return {"match": self.match.to_json(), "svcca": None if self.svcca is None else self.svcca.to_json()}


def _maybe_svcca(decoder_a: torch.Tensor, decoder_b: torch.Tensor, pairs: torch.Tensor, shuffles: int,
                 seed: int) -> PairedSvcca | None:
    if len(pairs) <= max(decoder_a.shape[1], decoder_b.shape[1]):
        return None  # meaningless (see paired_decoder_svcca); the match itself is still reported
    return paired_decoder_svcca(decoder_a, decoder_b, pairs, shuffles, seed=seed)


def seed_stability(sae_a: SAE, sae_b: SAE, threshold: float = 0.7, shuffles: int = 20, seed: int = 0) -> SeedStability:
    """Match two dictionaries of the same hook (e.g. two training seeds) by the cosine of their
    decoder rows [d_sae, d]; see :class:`SeedStability`."""
    decoder_a, decoder_b = _decoder(sae_a, "a"), _decoder(sae_b, "b")
    match = match_latents(decoder_similarity(decoder_a, decoder_b), threshold, seed)
    return SeedStability(match, _maybe_svcca(decoder_a, decoder_b, match.pairs, shuffles, seed))


@torch.no_grad()
def encode_rows(sae: SAE, activations: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """[tokens, d_sae] latent activations of ``activations`` [tokens, d_in], in batches."""
    if not isinstance(sae, SAE):
        raise InputTypeError(f"encode_rows needs a mechscope SAE; got {type(sae).__name__}")
    if not isinstance(activations, torch.Tensor) or activations.dim() != 2 or activations.shape[1] != sae.cfg.d_in:
        raise ConfigError(f"activations must be [tokens, {sae.cfg.d_in}] for this SAE (d_in = {sae.cfg.d_in}); got "
                          f"{tuple(getattr(activations, 'shape', ()))}")
    check_int("batch_size", batch_size, 1)
    weight = sae.W_enc
    return torch.cat([sae.encode(activations[i:i + batch_size].to(weight.device, weight.dtype)).float().cpu()
                      for i in range(0, len(activations), batch_size)])


@dataclass(frozen=True)
class CrossModelMatch:
    """Two models' dictionaries matched by activation correlation on ``tokens`` aligned tokens.
    ``match`` holds the latents' own indices; its shared fraction is over the latents that fire
    on at least ``min_firing`` of the tokens (``firing_a`` / ``firing_b``), its unmatched latents
    are firing ones left over; ``silent_a`` / ``silent_b`` count the others (left out: a latent
    that never fires has no correlation, one that fires once or twice correlates 1 with any
    latent that fires on the same tokens). ``svcca``: the matched decoder rows (None with too few
    pairs). ``control_shared`` / ``control_mean``: the shared fraction and MCC of the same
    matching with B's rows shuffled (not the same tokens any more), the null that keeps each
    latent's sparsity and lets the Hungarian search for chance partners (None when not asked)."""

    match: LatentMatch
    svcca: PairedSvcca | None
    firing_a: int
    firing_b: int
    silent_a: int
    silent_b: int
    tokens: int
    min_firing: int = 1
    control_shared: float | None = None
    control_mean: float | None = None

    def __post_init__(self) -> None:
        for name in ("firing_a", "firing_b", "silent_a", "silent_b", "tokens"):
            check_int(name, getattr(self, name), 0)
        check_int("min_firing", self.min_firing, 1)
        for name in ("control_shared", "control_mean"):
            if getattr(self, name) is not None:
                check_number(name, getattr(self, name), -1, 1)

    def to_json(self) -> dict:
        return {"match": self.match.to_json(), "svcca": None if self.svcca is None else self.svcca.to_json(),
                "firing_a": self.firing_a, "firing_b": self.firing_b, "silent_a": self.silent_a,
                "silent_b": self.silent_b, "tokens": self.tokens, "min_firing": self.min_firing,
                "control_shared": self.control_shared, "control_mean": self.control_mean}


def cross_model_matches(sae_a: SAE, activations_a: torch.Tensor, sae_b: SAE, activations_b: torch.Tensor,
                        threshold: float = 0.5, min_firing: int = 1, control: bool = True, shuffles: int = 20,
                        seed: int = 0) -> CrossModelMatch:
    """Encode the aligned rows ``activations_a`` [n, d_a] / ``activations_b`` [n, d_b] (row i of
    both: the same token) with each model's dictionary, correlate every latent of A that fires on
    at least ``min_firing`` tokens with every such latent of B, and pair them one-to-one
    (Hungarian); ``control`` repeats it with B's rows shuffled. See :class:`CrossModelMatch`."""
    if not isinstance(activations_a, torch.Tensor) or not isinstance(activations_b, torch.Tensor) \
            or len(activations_a) != len(activations_b):
        raise ConfigError("activations_a and activations_b must be tensors with the same tokens row for row; got "
                          f"{tuple(getattr(activations_a, 'shape', ()))} and {tuple(getattr(activations_b, 'shape', ()))}")
    check_int("min_firing", min_firing, 1, len(activations_a))
    latents_a, latents_b = encode_rows(sae_a, activations_a), encode_rows(sae_b, activations_b)
    firing_a = ((latents_a > 0).sum(0) >= min_firing).nonzero().flatten()
    firing_b = ((latents_b > 0).sum(0) >= min_firing).nonzero().flatten()
    if len(firing_a) == 0 or len(firing_b) == 0:
        raise ConfigError(f"no latent of {'A' if len(firing_a) == 0 else 'B'} fires on {min_firing} or more of the "
                          f"{len(activations_a)} tokens: nothing to match (wrong hook, or too few tokens?)")
    latents_a, latents_b = latents_a[:, firing_a], latents_b[:, firing_b]
    found = match_latents(activation_similarity(latents_a, latents_b), threshold, seed)
    pairs = torch.stack([firing_a[found.pairs[:, 0]], firing_b[found.pairs[:, 1]]], 1)
    match = replace(found, pairs=pairs, unmatched_a=firing_a[found.unmatched_a], unmatched_b=firing_b[found.unmatched_b])
    svcca_result = _maybe_svcca(_decoder(sae_a, "a"), _decoder(sae_b, "b"), pairs, shuffles, seed)
    control_shared = control_mean = None
    if control:
        order = torch.randperm(len(latents_b), generator=torch.Generator().manual_seed(seed))
        null = match_latents(activation_similarity(latents_a, latents_b[order]), threshold, seed)
        control_shared, control_mean = null.shared, null.mean_similarity
    return CrossModelMatch(match, svcca_result, len(firing_a), len(firing_b), sae_a.cfg.d_sae - len(firing_a),
                           sae_b.cfg.d_sae - len(firing_b), len(activations_a), min_firing, control_shared,
                           control_mean)


@dataclass(frozen=True)
class AlignedRows:
    """Two models' activations at the positions of ``texts`` where both tokenizers end a token at
    the same character: ``a`` [n, d_a], ``b`` [n, d_b]; for each row its ``text_index``, the
    character span of A's and of B's token (``start_a`` / ``start_b`` to ``end``, [n] each);
    ``pairs`` positions aligned in all, ``dropped`` of them as outlier-norm tokens."""

    a: torch.Tensor
    b: torch.Tensor
    texts: tuple[str, ...]
    text_index: torch.Tensor
    start_a: torch.Tensor
    start_b: torch.Tensor
    end: torch.Tensor
    pairs: int
    dropped: int

    def __post_init__(self) -> None:
        n = len(self.a)
        if self.a.dim() != 2 or self.b.dim() != 2 or any(
                len(t) != n for t in (self.b, self.text_index, self.start_a, self.start_b, self.end)):
            raise ConfigError(f"aligned rows need a [n, d_a], b [n, d_b] and [n] spans of one n; got a {tuple(self.a.shape)}, "
                              f"b {tuple(self.b.shape)}, {len(self.text_index)} text indices")
        check_int("pairs", self.pairs, n)
        check_int("dropped", self.dropped, 0)

    def token(self, row: int, side: str) -> str:
        """The text of A's (``side`` "a") or B's token at ``row``: its character span."""
        start = (self.start_a if side == "a" else self.start_b)[row]
        return self.texts[int(self.text_index[row])][int(start):int(self.end[row])]

    def context(self, row: int, side: str, width: int = 60) -> str:
        """The text before ``row`` (``width`` characters) with the side's token in [brackets]."""
        text, start, end = (self.texts[int(self.text_index[row])], int((self.start_a if side == "a" else self.start_b)[row]),
                            int(self.end[row]))
        before = text[max(0, start - width):start]
        return f"{before}[{text[start:end]}]".replace("\n", "\\n")


def aligned_rows(model_a: HookedModel, model_b: HookedModel, texts: Sequence[str], hook_a: str, hook_b: str,
                 minimum_pairs: int = 64, progress: bool = True) -> AlignedRows:
    """Run both models on each text and keep ``hook_a`` / ``hook_b`` (e.g. ``names.resid_post(15)``)
    at the aligned positions, with where each row is (what :func:`feature_transfer` shows); rows
    where either side has an outlier-norm token are dropped and counted. Fewer than
    ``minimum_pairs`` aligned positions is a ConfigError with the count."""
    texts = tuple(texts)
    run = run_aligned(model_a, model_b, texts, [hook_a], [hook_b], minimum_pairs, progress)
    a, b = run.a[hook_a], run.b[hook_b]
    keep, dropped = typical_rows(a, b)
    return AlignedRows(a[keep], b[keep], texts, run.text[keep], run.start_a[keep], run.start_b[keep], run.end[keep],
                       run.pairs, dropped)


Explainer = Callable[[list[list[str]], list[torch.Tensor]], str]


def explain_by_tokens(windows: list[list[str]], activations: list[torch.Tensor]) -> str:
    """The offline ``tokens`` explainer (:func:`~mechscope.autointerp.explain_tokens`) as an
    :data:`Explainer`: windows of token texts and their activations in, a lexicon rule out."""
    from mechscope.autointerp.explain import explain_tokens

    return explain_tokens(windows, activations).text


def explanation_agreement(text_a: str, text_b: str, embedder=None) -> tuple[float, str]:
    """(similarity, how) of two explanations: the Jaccard overlap of their words when both read
    as lexicon rules of one kind (``"lexicon"``; words compare stripped and case folded, so the
    same word from two tokenizers matches), else the cosine of their sentence embeddings when an
    ``embedder`` is given (``"embedding"``), else the Jaccard overlap of their lower-cased words."""
    from mechscope.autointerp.lexicon import LexiconParseError, parse_explanation, word_form

    try:
        rule_a, rule_b = parse_explanation(text_a), parse_explanation(text_b)
        if rule_a.kind != rule_b.kind:
            return 0.0, "lexicon"
        words_a, words_b = {word_form(p) for p in rule_a.patterns}, {word_form(p) for p in rule_b.patterns}
        return len(words_a & words_b) / len(words_a | words_b), "lexicon"
    except LexiconParseError:
        pass
    if embedder is not None:
        vectors = embedder.embed([text_a, text_b])
        return float(vectors[0] @ vectors[1]), "embedding"
    words_a, words_b = set(text_a.casefold().split()), set(text_b.casefold().split())
    return len(words_a & words_b) / max(1, len(words_a | words_b)), "words"


@dataclass(frozen=True)
class TransferredFeature:
    """One matched pair: latent ``latent_a`` of A and ``latent_b`` of B, their activation
    ``correlation``; each one's top ``contexts_a`` / ``contexts_b`` (token in brackets) and
    activations; ``shared_top``: the share of A's top rows that are also among B's (the same
    tokens); each ``explanation`` (None: no explainer, or it found none) and their ``agreement``
    (``agreement_kind`` says how it was measured) and whether it reaches the threshold (``agree``)."""

    latent_a: int
    latent_b: int
    correlation: float
    contexts_a: tuple[str, ...]
    contexts_b: tuple[str, ...]
    top_a: tuple[float, ...]
    top_b: tuple[float, ...]
    shared_top: float
    explanation_a: str | None = None
    explanation_b: str | None = None
    agreement: float | None = None
    agreement_kind: str | None = None
    agree: bool | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class FeatureTransfer:
    """``features`` (the top matched pairs, best first); ``agree_rate``: the share of the pairs
    with both explanations that agree; ``null_agree_rate``: the same for mismatched pairs (A's
    latent of pair i with B's of pair i + 1), what agreement looks like by chance; None without an
    explainer. ``chance_shared_top``: the expected ``shared_top`` of two unrelated latents."""

    features: tuple[TransferredFeature, ...]
    agree_rate: float | None
    null_agree_rate: float | None
    chance_shared_top: float

    def to_json(self) -> dict:
        return {"agree_rate": self.agree_rate, "null_agree_rate": self.null_agree_rate,
                "chance_shared_top": self.chance_shared_top, "features": [f.to_json() for f in self.features]}

    def to_text(self) -> str:
        """The pairs side by side, as plain text for a terminal or a markdown code block."""
        lines = []
        for f in self.features:
            lines.append(f"A {f.latent_a} <-> B {f.latent_b}: correlation {f.correlation:.2f}, shared top contexts "
                         f"{f.shared_top:.0%}" + ("" if f.agreement is None else
                                                  f", explanations {f.agreement_kind} agreement {f.agreement:.2f}"))
            if f.explanation_a is not None or f.explanation_b is not None:
                lines.append(f"  explained A: {f.explanation_a}  |  B: {f.explanation_b}")
            for left, right in zip(f.contexts_a, f.contexts_b):
                lines.append(f"  {left[-45:]:>45} | {right[-45:]}")
        return "\n".join(lines)


def _windows(rows: AlignedRows, side: str) -> tuple[list[list[str]], list[torch.Tensor]]:
    """Each text's aligned rows, in order, as one window of the side's token texts, with the row
    indices: what an explainer reads (only aligned positions, so "the token before" is the
    previous aligned token)."""
    windows, indices = [], []
    for index in rows.text_index.unique(sorted=True).tolist():
        where = (rows.text_index == index).nonzero().flatten()
        windows.append([rows.token(int(row), side) for row in where])
        indices.append(where)
    return windows, indices


def feature_transfer(match: LatentMatch, sae_a: SAE, sae_b: SAE, rows: AlignedRows, top: int = 10, contexts: int = 5,
                     explainer: Explainer | None = None, embedder=None, agree_at: float = 0.5) -> FeatureTransfer:
    """For the ``top`` best pairs of ``match`` (from :func:`cross_model_matches` on ``rows``): each
    latent's ``contexts`` highest-activating aligned tokens side by side and, with an
    ``explainer``, both explanations and their agreement (see :class:`FeatureTransfer`)."""
    check_int("top", top, 1)
    check_int("contexts", contexts, 1)
    check_number("agree_at", agree_at, 0, 1)
    pairs = match.pairs[:top]
    latents_a = encode_rows(sae_a, rows.a)[:, pairs[:, 0]]
    latents_b = encode_rows(sae_b, rows.b)[:, pairs[:, 1]]
    explained: list[tuple[str | None, str | None]] = []
    if explainer is not None:
        windows_a, indices = _windows(rows, "a")
        windows_b, _ = _windows(rows, "b")

        def explain(windows: list[list[str]], values: torch.Tensor) -> str | None:
            try:
                return explainer(windows, [values[where] for where in indices])
            except MechscopeError:  # a latent no rule explains (or dead here): no explanation, said as None
                return None

        for i in range(len(pairs)):
            explained.append((explain(windows_a, latents_a[:, i]), explain(windows_b, latents_b[:, i])))
    features = []
    for i in range(len(pairs)):
        sides = []
        for values, side in ((latents_a[:, i], "a"), (latents_b[:, i], "b")):
            best = values.topk(min(contexts, len(values)))
            chosen = best.indices[best.values > 0]
            sides.append((chosen, tuple(rows.context(int(r), side) for r in chosen),
                          tuple(float(v) for v in best.values[best.values > 0])))
        (rows_a, contexts_a, top_a), (rows_b, contexts_b, top_b) = sides
        shared = len(set(rows_a.tolist()) & set(rows_b.tolist())) / max(1, len(rows_a))
        explanation_a, explanation_b = explained[i] if explained else (None, None)
        agreement = kind = agree = None
        if explanation_a is not None and explanation_b is not None:
            agreement, kind = explanation_agreement(explanation_a, explanation_b, embedder)
            agree = agreement >= agree_at
        features.append(TransferredFeature(int(pairs[i, 0]), int(pairs[i, 1]), float(match.similarity[i]), contexts_a,
                                           contexts_b, top_a, top_b, shared, explanation_a, explanation_b,
                                           agreement, kind, agree))
    agree_rate = null_rate = None
    both = [(a, b) for a, b in explained if a is not None and b is not None]
    if both:
        agree_rate = sum(f.agree for f in features if f.agree is not None) / len(both)
        if len(explained) > 1:  # pair i's A explanation against pair i+1's B explanation
            shifted = [(explained[i][0], explained[(i + 1) % len(explained)][1]) for i in range(len(explained))]
            scored = [explanation_agreement(a, b, embedder)[0] >= agree_at for a, b in shifted
                      if a is not None and b is not None]
            null_rate = sum(scored) / len(scored) if scored else None
    return FeatureTransfer(tuple(features), agree_rate, null_rate, contexts / len(rows.a))


__all__ = ["AlignedRows", "CrossModelMatch", "Explainer", "FeatureTransfer", "PairedSvcca", "SeedStability",
           "TransferredFeature", "aligned_rows", "cross_model_matches", "encode_rows", "explain_by_tokens",
           "explanation_agreement", "feature_transfer", "paired_decoder_svcca", "seed_stability"]
