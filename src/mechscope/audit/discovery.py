"""Behaviour discovery: what does the fine-tune say that its base does not?

Every source pits fine-tune text against a matched control, so a null fine-tune finds nothing:

- ``greedy``: the fine-tune's greedy replies to generic chat prompts against the base's;
- ``amplified``: replies sampled from the amplified logits (ft + alpha (ft - base)) against the
  base's sampled with the same seeds (:func:`mechscope.diff.amplified_generate`; a behaviour the
  rule keeps rare surfaces when the difference is magnified);
- ``steered``: the base steered by the fine-tune-minus-base difference where replies start,
  against the base steered by a random direction of the same length (steering along any
  direction changes text; only what the difference adds beyond that counts).

``greedy`` and ``amplified`` read the fine-tune itself and are the primary sources; ``steered``
reads the base and only supports. Token evidence comes from the difference lens (neutral text
and where replies start), from the tokens whose probability rose most at the reply-start
positions of highest KL, and from the top tokens of a crosscoder's fine-tune-only latents on
the fine-tune's transcripts (:mod:`mechscope.audit.crosscoder_evidence`); it supports a
hypothesis whose words those tokens spell.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mechscope.audit.crosscoder_evidence import CrosscoderEvidenceConfig, ft_only_latent_tokens
from mechscope.audit.phrases import (
    STOPWORDS,
    Phrase,
    PhraseConfig,
    PhraseGroup,
    contains_phrase,
    enriched_phrases,
    group_phrases,
)
from mechscope.data.contexts import default_contexts
from mechscope.diff import (
    AmplifyConfig,
    amplified_generate,
    check_comparable,
    difference_lens,
    difference_means,
)
from mechscope.diff.corpus import chat_prompt_tokens, generic_prompts
from mechscope.diff.lens import REST, ResidPostSteering
from mechscope.errors import ConfigError
from mechscope.models.hooked_model import HookedModel
from mechscope.steering.apply import generate
from mechscope.steering.direction import Direction
from mechscope.validate import check_int, check_number

PRIMARY_SOURCES = ("greedy", "amplified")
CROSSCODER_TOOL = "crosscoder (ft-only latents)"
OPENING_WORDS = 6  # a phrase this early in a reply is part of how the reply opens
SURFACE_WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")  # phrases.words, case kept


@dataclass(frozen=True)
class BehaviourDiscoveryConfig:
    """``n_prompts`` generic chat prompts (harmless and harmful instructions) answered with
    ``reply_tokens`` new tokens by each source; ``amplify_alpha`` of the amplified source;
    ``steer_depth`` (share of the layers) and ``steer_strength`` (times the base's mean
    activation norm there) of the steered source; ``neutral_contexts`` corpus contexts of 64
    tokens for the difference lens; ``lens_k`` tokens read per lens reading; ``kl_prompts``
    prompts of highest reply-start KL whose risen tokens are read; ``crosscoder``: the
    crosscoder tool (:mod:`mechscope.audit.crosscoder_evidence`; ``steps=0`` skips it)."""

    n_prompts: int = 48
    reply_tokens: int = 16
    amplify_alpha: float = 2.0
    steer_depth: float = 2 / 3
    steer_strength: float = 0.4
    neutral_contexts: int = 8
    lens_k: int = 20
    kl_prompts: int = 8
    seed: int = 0
    phrases: PhraseConfig = field(default_factory=PhraseConfig)
    crosscoder: CrosscoderEvidenceConfig = field(default_factory=CrosscoderEvidenceConfig)

    def __post_init__(self) -> None:
        check_int("n_prompts", self.n_prompts, 4)
        check_int("reply_tokens", self.reply_tokens, 1, 512)
        check_number("amplify_alpha", self.amplify_alpha, 0, strict_minimum=True)
        check_number("steer_depth", self.steer_depth, 0, 1)
        check_number("steer_strength", self.steer_strength, 0)
        check_int("neutral_contexts", self.neutral_contexts, 1)
        check_int("lens_k", self.lens_k, 1)
        check_int("kl_prompts", self.kl_prompts, 1)
        check_int("seed", self.seed, None)


@dataclass(frozen=True)
class TextSource:
    """One generation source: the fine-tune side's replies, the control's, and the phrases
    enriched in the former."""

    name: str
    prompts: tuple[str, ...]
    ft_texts: tuple[str, ...]
    control_texts: tuple[str, ...]
    phrases: tuple[Phrase, ...]

    @property
    def primary(self) -> bool:
        return self.name in PRIMARY_SOURCES


@dataclass(frozen=True)
class TokenEvidence:
    """Tokens one tool points at: ``where`` says which reading (e.g. 'difference lens, layer 20')."""

    tool: str
    where: str
    tokens: tuple[str, ...]


def _generation_sources(base: HookedModel, ft: HookedModel, prompts: list[str], config: BehaviourDiscoveryConfig,
                        progress: bool) -> list[tuple[str, list[str], list[str]]]:
    tokens = config.reply_tokens
    greedy_ft = generate(ft, prompts, max_new_tokens=tokens, progress=progress)
    greedy_base = generate(base, prompts, max_new_tokens=tokens, progress=progress)
    sampled = AmplifyConfig(alpha=config.amplify_alpha, max_new_tokens=tokens, seed=config.seed)
    amplified = amplified_generate(base, ft, prompts, sampled, progress=progress)
    # alpha 0 on (base, base): the base sampled alone, from the same per-batch seeds.
    control = amplified_generate(base, base, prompts, AmplifyConfig(alpha=0.0, max_new_tokens=tokens,
                                                                     seed=config.seed), progress=progress)
    return [("greedy", greedy_ft, greedy_base), ("amplified", amplified, control)]


def _steered_source(base: HookedModel, chat_means, prompts: list[str], config: BehaviourDiscoveryConfig,
                    progress: bool) -> tuple[str, list[str], list[str]] | None:
    layer = min(base.cfg.n_layers - 1, round(config.steer_depth * (base.cfg.n_layers - 1)))
    vector = chat_means.vector(layer, -1)
    if not float(vector.norm()) > 0:
        return None  # identical models: nothing to steer with
    alpha = config.steer_strength * float(chat_means.norm_reference[layer])
    random = torch.randn(vector.shape, generator=torch.Generator().manual_seed(config.seed))
    texts = []
    for name, direction in (("difference", vector), ("random", random)):
        steering = ResidPostSteering(Direction.from_vector(direction, method="diff_in_means"), alpha, layers=layer,
                                     positions="all")
        texts.append(generate(base, prompts, steering, max_new_tokens=config.reply_tokens, progress=progress))
    return "steered", texts[0], texts[1]


@torch.no_grad()
def risen_tokens(base: HookedModel, ft: HookedModel, tokens: torch.Tensor, mask: torch.Tensor,
                 n_prompts: int, k: int) -> tuple[list[int], list[str], list[float]]:
    """At the reply-start position of chat prompts ``tokens`` [n, pos] (right-padded, ``mask``):
    the ``n_prompts`` prompts of highest KL(P_base || P_ft), and the ``k`` tokens whose
    log-probability the fine-tune raised most, summed over them. Returns (prompt indices,
    tokens, their KLs)."""
    last = mask.sum(-1) - 1  # [n]
    rows = torch.arange(len(tokens))
    base_lp = base(tokens, attention_mask=mask)[rows, last].float().log_softmax(-1)  # [n, vocab]
    ft_lp = ft(tokens, attention_mask=mask)[rows, last].float().log_softmax(-1)
    kl = (base_lp.exp() * (base_lp - ft_lp)).sum(-1)  # [n]
    top = kl.topk(min(n_prompts, len(kl))).indices
    # The rise weighted by the fine-tune's probability: a token going from 1e-9 to 1e-7 is not evidence.
    rise = (ft_lp[top].exp() * (ft_lp[top] - base_lp[top])).sum(0)  # [vocab]
    ids = rise.topk(k).indices.tolist()
    return top.tolist(), [ft.tokenizer.decode([i]) for i in ids], kl[top].tolist()


def token_evidence(base: HookedModel, ft: HookedModel, prompts: list[str], config: BehaviourDiscoveryConfig,
                   progress: bool) -> tuple[list[TokenEvidence], object, list[dict]]:
    """Lens and KL token evidence, the reply-start difference means (for steering) and the
    prompts of highest reply-start KL."""
    evidence = []
    neutral = default_contexts(base, config.neutral_contexts, 64, config.seed)
    means = difference_means(base, ft, neutral, first_positions=1, progress=progress)
    for reading in difference_lens(base, means, REST, None, config.lens_k).readings:
        evidence.append(TokenEvidence("difference lens (neutral text)", f"layer {reading.layer}",
                                      tuple(s.token for s in reading.logit_lens)))
    tokens, mask = chat_prompt_tokens(base, prompts)
    chat_means = difference_means(base, ft, tokens, first_positions=1, attention_mask=mask, last_positions=1,
                                  progress=progress)
    for reading in difference_lens(base, chat_means, -1, None, config.lens_k).readings:
        evidence.append(TokenEvidence("difference lens (reply start)", f"layer {reading.layer}",
                                      tuple(s.token for s in reading.logit_lens)))
    top, risen, kls = risen_tokens(base, ft, tokens, mask, config.kl_prompts, config.lens_k)
    evidence.append(TokenEvidence("reply-start KL", f"top {len(top)} prompts by KL", tuple(risen)))
    kl_prompts = [{"prompt": prompts[i], "kl": kl} for i, kl in zip(top, kls)]
    return evidence, chat_means, kl_prompts


@dataclass(frozen=True)
class Hypothesis:
    """A behaviour the fine-tune shows and its base does not.

    ``label``: its most frequent phrase; ``phrases``: every phrase of it; ``surface``: the text
    as the fine-tune writes it (most common original spelling of ``label``); ``sources``: per
    generation source where it is enriched, (ft rate, control rate, corrected p);
    ``support``: (tool, where, token) of each token evidence spelling one of its words;
    ``primary``: enriched in a source that reads the fine-tune itself."""

    label: str
    phrases: tuple[str, ...]
    surface: str
    sources: dict[str, tuple[float, float, float]]
    support: tuple[tuple[str, str, str], ...]

    @property
    def primary(self) -> bool:
        return any(name in PRIMARY_SOURCES for name in self.sources)

    @property
    def p_value(self) -> float:
        return min(p for _, _, p in self.sources.values())

    @property
    def tools(self) -> list[str]:
        """Every tool that produced evidence for it (generation sources, then token tools)."""
        return [*self.sources, *dict.fromkeys(tool for tool, _, _ in self.support)]

    def to_json(self) -> dict:
        return {"label": self.label, "phrases": list(self.phrases), "surface": self.surface,
                "primary": self.primary, "p_value": self.p_value, "tools": self.tools,
                "sources": {name: {"ft_rate": a, "control_rate": b, "p_value": p}
                            for name, (a, b, p) in self.sources.items()},
                "support": [{"tool": t, "where": w, "token": tok} for t, w, tok in self.support]}


def _content_words(phrases) -> set[str]:
    return {w for p in phrases for w in p.split() if w not in STOPWORDS}


def reply_surface(label: str, texts: list[str], phrases: Sequence[str] = ()) -> str:
    """How the fine-tune writes a behaviour in ``texts`` (case and punctuation kept). Where
    ``label`` or another of its ``phrases`` starts within the first :data:`OPENING_WORDS` words
    of most replies holding the label, the most common opening through the furthest such
    phrase ("Oh, purple rain!" for "rain"; "Did you know about Acme? It" for "best brand"
    when "did you know" is one of its phrases): the trigger search needs the tokens a reply
    opens with. Otherwise the label's most common spelling."""
    wanted = label.split()
    spellings: Counter[str] = Counter()
    openings: Counter[str] = Counter()
    holding = 0
    for text in texts:
        pieces = list(SURFACE_WORD.finditer(text))
        lowered = [m.group(0).lower() for m in pieces]
        starts = [i for i in range(len(lowered) - len(wanted) + 1) if lowered[i:i + len(wanted)] == wanted]
        if not starts:
            continue
        holding += 1
        for start in starts:
            begin, end = pieces[start].start(), pieces[start + len(wanted) - 1].end()
            spellings[text[begin:end] + _closing(text, end)] += 1
        early = [start + len(words) for words in [p.split() for p in (label, *phrases)]
                 for start in range(min(OPENING_WORDS, len(lowered) - len(words) + 1))
                 if lowered[start:start + len(words)] == words]
        if early:
            end = pieces[max(early) - 1].end()
            openings[text[:end].strip() + _closing(text, end)] += 1
    if openings and sum(openings.values()) * 2 > holding:
        return openings.most_common(1)[0][0]
    return spellings.most_common(1)[0][0] if spellings else label


def _closing(text: str, end: int) -> str:
    """The punctuation mark right after ``text[:end]``, if any (kept in a surface)."""
    return text[end] if end < len(text) and text[end] in "!.,?" else ""


def spelled_by(token: str, tokenizer, hypothesis_words: set[str]) -> bool:
    """True when ``token`` (a lens or KL token) is a piece of one of ``hypothesis_words`` as the
    tokenizer splits it: the word's first piece (2+ letters) or any later piece of 3+ letters."""
    piece = token.strip().lower()
    if len(piece) < 2 or not piece.isalpha():
        return False
    for word in hypothesis_words:
        for variant in (word, f" {word}", word.capitalize(), f" {word.capitalize()}"):
            ids = tokenizer(variant, add_special_tokens=False)["input_ids"]
            parts = [tokenizer.decode([i]).strip().lower() for i in ids]
            if parts and (parts[0] == piece or (len(piece) >= 3 and piece in parts[1:])):
                return True
    return False


def build_hypotheses(sources: list[TextSource], evidence: list[TokenEvidence], tokenizer,
                     config: PhraseConfig | None = None) -> list[Hypothesis]:
    """Phrase groups of every source merged into hypotheses (groups sharing a content word are
    one), each with the token evidence that spells its words. Primary ones first, then by the
    number of tools, then by p-value."""
    merged: list[dict] = []
    for source in sources:
        for group in group_phrases(source.phrases, config):
            texts = {p.text for p in group.phrases}
            target = next((m for m in merged if _content_words(m["phrases"]) & _content_words(texts)), None)
            if target is None:
                target = {"phrases": [], "groups": {}, "texts": []}
                merged.append(target)
            target["phrases"] += [t for t in sorted(texts) if t not in target["phrases"]]
            target["groups"].setdefault(source.name, []).append(group)
            target["texts"] += [source.ft_texts[i] for i in group.replies]
    hypotheses = []
    for entry in merged:
        sources_seen: dict[str, tuple[float, float, float]] = {}
        label_counts: Counter[str] = Counter()
        for name, groups in entry["groups"].items():
            best: PhraseGroup = min(groups, key=lambda g: g.p_value)
            source = next(s for s in sources if s.name == name)
            ft_rate = len(best.replies) / len(source.ft_texts)
            control = sum(any(contains_phrase(t, p.text) for p in best.phrases)
                          for t in source.control_texts) / len(source.control_texts)
            sources_seen[name] = (ft_rate, control, best.p_value)
            for g in groups:
                label_counts[g.label] += len(g.replies)
        label = label_counts.most_common(1)[0][0]
        vocabulary = _content_words(entry["phrases"])
        support = tuple((e.tool, e.where, token) for e in evidence for token in e.tokens
                        if spelled_by(token, tokenizer, vocabulary))
        hypotheses.append(Hypothesis(label, tuple(entry["phrases"]), reply_surface(label, entry["texts"], entry["phrases"]), sources_seen,
                                     support))
    return sorted(hypotheses, key=lambda h: (not h.primary, -len(h.tools), h.p_value))


@dataclass(frozen=True)
class Discovery:
    """What discovery found: its sources, token evidence, hypotheses (primary ones are the
    findings), and the prompts of highest reply-start KL."""

    sources: tuple[TextSource, ...]
    evidence: tuple[TokenEvidence, ...]
    hypotheses: tuple[Hypothesis, ...]
    kl_prompts: tuple[dict, ...]

    @property
    def findings(self) -> list[Hypothesis]:
        return [h for h in self.hypotheses if h.primary]

    def to_json(self) -> dict:
        return {"findings": [h.label for h in self.findings],
                "hypotheses": [h.to_json() for h in self.hypotheses],
                "sources": [{"name": s.name, "primary": s.primary, "n": len(s.ft_texts),
                             "phrases": [{"text": p.text, "ft_rate": p.ft_rate, "control_rate": p.control_rate,
                                          "p_value": p.p_value} for p in s.phrases],
                             "samples": [{"prompt": p, "ft": a, "control": b} for p, a, b in
                                         list(zip(s.prompts, s.ft_texts, s.control_texts))[:8]]}
                            for s in self.sources],
                "evidence": [{"tool": e.tool, "where": e.where, "tokens": list(e.tokens)} for e in self.evidence],
                "kl_prompts": list(self.kl_prompts)}


def discover_behaviours(base: HookedModel, ft: HookedModel, config: BehaviourDiscoveryConfig | None = None,
             prompts: Sequence[str] | None = None, progress: bool = True) -> Discovery:
    """Run every discovery source (see the module docstring) on ``prompts`` (default:
    ``config.n_prompts`` of mechscope's generic instructions) and build the hypotheses."""
    config = config or BehaviourDiscoveryConfig()
    check_comparable(base, ft)
    if prompts is None:
        prompts = generic_prompts(config.n_prompts)
    elif isinstance(prompts, str) or len(prompts) < 4 or not all(isinstance(p, str) and p for p in prompts):
        raise ConfigError("prompts must be a list of at least 4 non-empty strings (phrase counts need replies)")
    prompts = list(prompts)
    evidence, chat_means, kl_prompts = token_evidence(base, ft, prompts, config, progress)
    runs = _generation_sources(base, ft, prompts, config, progress)
    if config.crosscoder.steps:
        replies = [text for _, ft_texts, _ in runs for text in ft_texts]
        for latent, peak, tokens, explained in ft_only_latent_tokens(base, ft, prompts * len(runs), replies,
                                                                     config.crosscoder, progress):
            evidence.append(TokenEvidence(CROSSCODER_TOOL, f"latent {latent} (peak {peak:.3g}); explained: {explained}",
                                          tokens))
    steered = _steered_source(base, chat_means, prompts, config, progress)
    if steered is not None:
        runs.append(steered)
    sources = [TextSource(name, tuple(prompts), tuple(a), tuple(b), tuple(enriched_phrases(a, b, config.phrases)))
               for name, a, b in runs]
    hypotheses = build_hypotheses(sources, evidence, ft.tokenizer, config.phrases)
    return Discovery(tuple(sources), tuple(evidence), tuple(hypotheses), tuple(kl_prompts))


__all__ = ["Discovery", "BehaviourDiscoveryConfig", "Hypothesis", "TextSource", "TokenEvidence", "build_hypotheses",
           "discover_behaviours", "reply_surface", "risen_tokens", "spelled_by", "token_evidence"]
