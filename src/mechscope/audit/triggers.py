"""Trigger reconstruction: which inputs make the fine-tune show a behaviour?

The behaviour is a hypothesis from discovery, as the text the fine-tune writes (its
``surface``). The objective (:class:`~mechscope.audit.trigger_objective.TriggerObjective`) is
log P(the reply opens with its first ``target_tokens`` tokens) on neutral prompts with a
candidate trigger inserted in the user's message, at its start or its end, less what the base
gains from the same words. Three searches feed one ranked list:

- **gradient**: one backward pass through a one-hot trigger slot gives, for every vocabulary
  token at once, the first-order change of the objective if it were the trigger; the best are
  then scored exactly. The gradient is taken at the neutral filler and, averaged, at
  ``gradient_starts`` random tokens, batched (one point's linearisation can rank the planted
  word's first token in the thousands; the mean over 4 points still in the thousands, over 32
  in the tens, on the shipped random organism);
- **scan** (with a base): the tokens the fine-tune reads most differently from its base
  (:class:`~mechscope.audit.token_scan.ReadingScan`, the behaviour's own words left out) are
  scored exactly as single-token triggers and offered to every slot of the searches; the first
  ``paired_tokens`` of them are also scored in every ordered pair ("scan pair": a trigger of
  several pieces can have two the fine-tune reads differently, and which comes first is not
  known); the best single tokens or pairs are then grown, token by token, by what the
  fine-tune reads differently after them (:func:`~mechscope.audit.token_scan.extend_trigger`),
  every prefix a candidate ("extension");
- **search**: multi-token triggers of each length in ``lengths``, by greedy coordinate
  gradient steps (each step takes the gradient at every slot, tries ``swaps`` single-token
  swaps drawn from each slot's ``top_k`` tokens, and moves to the best if it beats the current
  trigger; the swaps are ranked by the fine-tune's part of the objective, an upper bound, and
  only the best are scored against the base); each search starts from the best trigger so far,
  padded with filler, and its best distinct triggers are candidates, with the core of the best
  (tokens removed while the gain stays within 90%). The shortest length is searched at
  every place, the longer ones only at the place where the best gain so far was found;
- **attribution**: on prompts where the behaviour already occurs, gradient x input and
  ablation of each prompt token name the words that cause it (a topic, where there is no
  trigger string); the strongest are tried as triggers too.

The top candidates by exact objective, and every extension, are then checked by generation: the
behaviour rate with the candidate inserted, on held-out neutral prompts, against the rate
without it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from mechscope.audit.attribution import TokenAttribution, attribute, attributed_words
from mechscope.audit.token_scan import ReadingScan, behaviour_tokens, extend_trigger
from mechscope.audit.trigger_objective import (
    PLACES,
    Place,
    TriggerObjective,
    allowed_tokens,
    filler_id,
    insert,
)
from mechscope.errors import ConfigError
from mechscope.models.hooked_model import HookedModel
from mechscope.steering.apply import generate
from mechscope.validate import check_choice, check_int


@dataclass(frozen=True)
class TriggerConfig:
    """``n_prompts`` neutral prompts score candidates and ``n_check`` other ones check them by
    generation (``reply_tokens`` new tokens); ``target_tokens`` of the behaviour form the
    objective; ``gradient_candidates`` single tokens per place are scored exactly; ``lengths``:
    the trigger lengths (tokens) searched, each for ``search_steps`` coordinate steps that draw
    ``swaps`` swaps among each slot's ``top_k`` tokens by gradient and score the
    ``exact_per_step`` best by upper bound exactly; each search adds its ``per_search`` best
    distinct triggers and the core of its best (:func:`minimise`) to the candidates; ``checked`` candidates
    are generated with (and every extension); ``attributed_words`` words from attribution are tried;
    ``gradient_starts``: random tokens the averaged gradient is taken at (0: the filler's
    gradient alone); ``scanned_tokens``: tokens of the reading scan scored as triggers and
    offered to the searches (0: no scan; it needs a base); ``paired_tokens``: the first of
    those scored in every ordered pair (0: none); ``extended``: the best single tokens or
    pairs grown by ``extension_steps`` tokens each."""

    n_prompts: int = 4
    n_check: int = 8
    places: tuple[Place, ...] = PLACES
    target_tokens: int = 4
    gradient_candidates: int = 32
    lengths: tuple[int, ...] = (2,)
    search_steps: int = 4
    swaps: int = 12
    top_k: int = 32
    exact_per_step: int = 4
    per_search: int = 3
    checked: int = 4
    attributed_words: int = 2
    gradient_starts: int = 16
    scanned_tokens: int = 16
    paired_tokens: int = 6
    extended: int = 1
    extension_steps: int = 2
    reply_tokens: int = 16
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_prompts", "n_check", "target_tokens", "gradient_candidates", "swaps", "top_k", "exact_per_step",
                     "per_search",
                     "checked", "reply_tokens", "batch_size"):
            check_int(name, getattr(self, name), 1)
        check_int("search_steps", self.search_steps, 0)
        for name in ("attributed_words", "gradient_starts", "scanned_tokens", "paired_tokens", "extended",
                     "extension_steps"):
            check_int(name, getattr(self, name), 0)
        check_int("seed", self.seed, None)
        for name, choices in (("places", PLACES), ("lengths", None)):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                raise ConfigError(f"{name} must be a tuple; got {value!r}")
            for item in value:
                if choices is None:
                    check_int(name, item, 1)
                else:
                    check_choice(name, item, choices)
        if not self.places:
            raise ConfigError(f"places must name at least one of {PLACES}")
        if list(self.lengths) != sorted(set(self.lengths)):
            raise ConfigError(f"lengths must be increasing, without repeats; got {self.lengths}")


@dataclass(frozen=True)
class TriggerCandidate:
    """A candidate trigger: ``text`` inserted at ``place``; ``objective`` the search objective
    with it and ``gain`` that minus the objective without; ``rate`` / ``control_rate`` the
    behaviour rate by generation with / without it (None when not checked); ``found_by``:
    gradient, scan, scan pair, search, extension or attribution."""

    text: str
    token_ids: tuple[int, ...]
    place: Place
    objective: float
    gain: float
    found_by: str
    rate: float | None = None
    control_rate: float | None = None

    def to_json(self) -> dict:
        return {"text": self.text, "token_ids": list(self.token_ids), "place": self.place,
                "objective": self.objective, "gain": self.gain, "found_by": self.found_by, "rate": self.rate,
                "control_rate": self.control_rate}


def coordinate_search(objective: TriggerObjective, start: Sequence[int], allowed: torch.Tensor, steps: int,
                      swaps: int, top_k: int, rng: random.Random, exact: int = 4, offered: Sequence[int] = ()
                      ) -> dict[tuple[int, ...], float]:
    """Greedy coordinate gradient search from ``start`` (token ids): every trigger scored
    exactly, with its objective. Each step ranks ``swaps`` swaps by the objective's upper bound
    (the fine-tune's part alone, no base forward) and scores the ``exact`` best of them
    exactly. ``allowed`` [vocab] bool masks the tokens a slot may take; the ``offered`` tokens
    may be drawn for every slot besides each slot's ``top_k`` by gradient."""
    trigger = tuple(start)
    seen = {trigger: objective.scores([trigger])[0]}
    tried = set(seen)
    for _ in range(steps):
        grads = objective.gradients(trigger).masked_fill(~allowed[None], -torch.inf)
        tops = [list(dict.fromkeys([*slot, *offered])) for slot in
                grads.topk(min(top_k, int(allowed.sum())), dim=-1).indices.tolist()]
        batch: set[tuple[int, ...]] = set()
        for _ in range(4 * swaps):  # draws that repeat a tried trigger are skipped
            if len(batch) == swaps:
                break
            slot = rng.randrange(len(trigger))
            swapped = trigger[:slot] + (rng.choice(tops[slot]),) + trigger[slot + 1:]
            if swapped not in tried:
                batch.add(swapped)
        if not batch:
            break
        drawn = sorted(batch)
        tried.update(drawn)
        values = objective.fine_tune_values(drawn)  # [swaps, n]
        bounds = values.mean(-1).tolist()
        best_bounds = sorted(range(len(drawn)), key=lambda i: -bounds[i])[:exact]
        chosen = [drawn[i] for i in best_bounds]
        for swapped, score in zip(chosen, objective.scores(chosen, values[best_bounds])):
            seen[swapped] = score
        best = max(chosen, key=seen.__getitem__)
        if seen[best] > seen[trigger]:
            trigger = best
    return seen


def minimise(objective: TriggerObjective, trigger: Sequence[int], score: float, baseline: float,
             keep: float = 0.9) -> tuple[tuple[int, ...], float]:
    """``trigger`` with tokens removed, one at a time, while the gain over ``baseline`` stays
    at least ``keep`` of the gain of ``trigger`` (its objective ``score``): the core of a
    trigger a search padded with tokens that do not matter."""
    current, current_score = tuple(trigger), score
    floor = baseline + keep * (score - baseline)
    while len(current) > 1:
        shorter = [current[:i] + current[i + 1:] for i in range(len(current))]
        scores = objective.scores(shorter)
        best = max(range(len(shorter)), key=scores.__getitem__)
        if scores[best] < floor:
            break
        current, current_score = shorter[best], scores[best]
    return current, current_score


def _decode(model: HookedModel, ids: Sequence[int]) -> str:
    return model.tokenizer.decode(list(ids))


def _searched(objective: TriggerObjective, grown: tuple[int, ...], length: int, allowed: torch.Tensor,
              config: TriggerConfig, baseline: float, rng: random.Random, offered: Sequence[int] = ()
              ) -> list[TriggerCandidate]:
    """The ``per_search`` best distinct candidates of one search of ``length`` tokens, started
    from ``grown`` (the best trigger so far) padded with filler, best first, and the core of
    the best (:func:`minimise`) where it differs."""
    filler = filler_id(objective.model)
    start = (tuple(grown) + (filler,) * length)[:length]
    seen = coordinate_search(objective, start, allowed, config.search_steps, config.swaps, config.top_k, rng,
                             config.exact_per_step, offered)
    best = max(seen, key=seen.__getitem__)
    core, core_score = minimise(objective, best, seen[best], baseline)
    found, texts = [], set()
    for ids in [*sorted(seen, key=lambda ids: -seen[ids])[:4 * config.per_search], core]:
        text = _decode(objective.model, ids)
        if text.strip() in texts or (len(texts) == config.per_search and ids != core):
            continue
        texts.add(text.strip())
        score = core_score if ids == core else seen[ids]
        found.append(TriggerCandidate(text, ids, objective.place, score, score - baseline, "search"))
    return found


def _single_tokens(scorer: TriggerObjective, allowed: torch.Tensor, config: TriggerConfig, baseline: float,
                   scanned: Sequence[int], rng: random.Random) -> list[TriggerCandidate]:
    """Single-token candidates at ``scorer``'s place, best gain first: the best by the filler's
    gradient, by the gradient averaged over random tokens, and the ``scanned`` tokens, all
    scored exactly."""
    model = scorer.model
    by_source: dict[int, str] = {}
    grad = scorer.gradients([filler_id(model)])[0].masked_fill(~allowed, -torch.inf)
    for token in grad.topk(config.gradient_candidates).indices.tolist():
        by_source.setdefault(token, "gradient")
    if config.gradient_starts:
        pool = allowed.nonzero()[:, 0].tolist()
        starts = [rng.choice(pool) for _ in range(config.gradient_starts)]
        mean = scorer.mean_gradient([[token] for token in starts])[0].masked_fill(~allowed, -torch.inf)
        for token in mean.topk(config.gradient_candidates).indices.tolist():
            by_source.setdefault(token, "gradient")
    for token in scanned:
        by_source.setdefault(token, "scan")
    tokens = list(by_source)
    scores = scorer.scores([[t] for t in tokens])
    found = [TriggerCandidate(_decode(model, [t]), (t,), scorer.place, s, s - baseline, by_source[t])
             for s, t in zip(scores, tokens)]
    return sorted(found, key=lambda c: -c.gain)


def _scan_pairs(scorer: TriggerObjective, scanned: Sequence[int], baseline: float) -> list[TriggerCandidate]:
    """Every ordered pair of ``scanned`` tokens (a token twice included), scored exactly at
    ``scorer``'s place."""
    pairs = [(a, b) for a in scanned for b in scanned]
    scores = scorer.scores(pairs) if pairs else []
    return [TriggerCandidate(_decode(scorer.model, ids), ids, scorer.place, s, s - baseline, "scan pair")
            for ids, s in zip(pairs, scores)]


def _extended(scan: ReadingScan, scorer: TriggerObjective, starts: list[TriggerCandidate], config: TriggerConfig,
              baseline: float) -> list[TriggerCandidate]:
    """The ``extended`` best of ``starts`` (by gain) grown by :func:`extend_trigger`, each
    prefix scored exactly."""
    grown = [ids for start in sorted(starts, key=lambda c: -c.gain)[:config.extended]
             for ids, _ in extend_trigger(scan, start.token_ids, config.extension_steps)]
    scores = scorer.scores(grown) if grown else []
    return [TriggerCandidate(_decode(scorer.model, ids), ids, scorer.place, s, s - baseline, "extension")
            for ids, s in zip(grown, scores)]


def reconstruct_triggers(model: HookedModel, surface: str, shows: Callable[[str], bool], prompts: Sequence[str],
                         check_prompts: Sequence[str], config: TriggerConfig | None = None,
                         behaviour_prompts: Sequence[str] = (), progress: bool = True, base: HookedModel | None = None,
                         behaviour_words: Sequence[str] = ()
                         ) -> tuple[list[TriggerCandidate], list[TokenAttribution]]:
    """Ranked trigger candidates for the behaviour written ``surface`` (``shows(reply)`` says
    whether a reply has it): scored on ``prompts``, checked by generation on ``check_prompts``;
    ``behaviour_prompts`` are prompts where the fine-tune already shows it, read by
    attribution. With ``base``, the objective discounts the base's gain
    (:class:`TriggerObjective`) and the reading scan runs, leaving out the tokens of
    ``surface`` and ``behaviour_words``. Returns (candidates, best rate first; attributions)."""
    config = config or TriggerConfig()
    prompts, check_prompts = list(prompts)[:config.n_prompts], list(check_prompts)[:config.n_check]
    if not prompts or not check_prompts:
        raise ConfigError("trigger reconstruction needs neutral prompts to score and to check candidates on")
    target = model.tokenizer(surface, add_special_tokens=False)["input_ids"][:config.target_tokens]
    if not target:
        raise ConfigError(f"the behaviour {surface!r} has no tokens")
    rng = random.Random(config.seed)
    allowed = allowed_tokens(model)
    scan = None
    if base is not None and (config.scanned_tokens or config.extended and config.extension_steps):
        scan = ReadingScan(model, base, allowed, behaviour_tokens(model, [surface, *behaviour_words]),
                           progress=progress)
    scanned = [token for token, _ in scan.divergent(config.scanned_tokens)] if scan and config.scanned_tokens else []
    scorers = {place: TriggerObjective(model, base, prompts, place, target, config.batch_size)
               for place in config.places}
    baselines = {place: scorer.scores([()])[0] for place, scorer in scorers.items()}
    pool: list[TriggerCandidate] = []
    best: dict[Place, TriggerCandidate] = {}
    searches = [n for n in config.lengths if n > 1]
    bar = tqdm(total=len(config.places) * min(1, len(searches)) + max(0, len(searches) - 1),
               desc="trigger search", disable=not progress)
    for place, scorer in scorers.items():
        found = _single_tokens(scorer, allowed, config, baselines[place], scanned, rng)
        pairs = _scan_pairs(scorer, scanned[:config.paired_tokens], baselines[place])
        if searches:
            found += _searched(scorer, found[0].token_ids, searches[0], allowed, config, baselines[place], rng,
                               scanned)
            bar.update()
        pool += found + pairs
        best[place] = max(found, key=lambda c: c.gain)
    # Longer searches only where the short ones gained most: a planted trigger has one place,
    # and each longer search costs as much as all the short ones.
    place = max(best, key=lambda p: best[p].gain)
    for length in searches[1:]:
        found = _searched(scorers[place], best[place].token_ids, length, allowed, config, baselines[place], rng,
                          scanned)
        pool += found
        best[place] = max([best[place], *found], key=lambda c: c.gain)
        bar.update()
    bar.close()
    if scan is not None and config.extension_steps:
        starts = [c for c in pool if c.place == place and (len(c.token_ids) == 1 or c.found_by == "scan pair")]
        pool += _extended(scan, scorers[place], starts, config, baselines[place])
    attributions = []
    if behaviour_prompts and config.attributed_words:
        attributions = attribute(model, list(behaviour_prompts)[:config.n_prompts], target, config.batch_size)
        for place, scorer in scorers.items():
            for word in attributed_words(attributions, config.attributed_words):
                ids = model.tokenizer(f" {word}" if place == "end" else word, add_special_tokens=False)["input_ids"]
                score = scorer.scores([ids])[0]
                pool.append(TriggerCandidate(word, tuple(ids), place, score, score - baselines[place], "attribution"))
    unique: dict[tuple[str, str], TriggerCandidate] = {}
    for candidate in sorted(pool, key=lambda c: -c.gain):
        unique.setdefault((candidate.text.strip(), candidate.place), candidate)
    ranked = list(unique.values())
    control = sum(map(shows, generate(model, check_prompts, max_new_tokens=config.reply_tokens,
                                      progress=False))) / len(check_prompts)
    # The extensions are always checked: the objective saturates once a trigger fires (a piece
    # of the planted trigger scores as high as all of it, or a search's padding), so their gain
    # alone would not bring the reading's evidence to a generation check.
    chosen = ranked[:config.checked] + [c for c in ranked[config.checked:] if c.found_by == "extension"]
    checked = []
    for candidate in tqdm(chosen, desc="checking trigger candidates", disable=not progress):
        inserted = [insert(candidate.text, p, candidate.place) for p in check_prompts]
        replies = generate(model, inserted, max_new_tokens=config.reply_tokens, progress=False)
        rate = sum(map(shows, replies)) / len(replies)
        checked.append(TriggerCandidate(**{**candidate.__dict__, "rate": rate, "control_rate": control}))
    checked.sort(key=lambda c: (-c.rate, -c.gain))
    return checked + [c for c in ranked if c not in chosen], attributions


__all__ = ["TriggerCandidate", "TriggerConfig", "coordinate_search", "minimise", "reconstruct_triggers"]
