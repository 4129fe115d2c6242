"""The alignment audit: given a fine-tuned model (and perhaps its base), find a hidden behaviour
blind, say what triggers it, and back each claim with numbers. It knows nothing of how the
model was made: no list of known triggers, no string from any recipe.

- :mod:`phrases`: word n-grams a fine-tune says more often than a matched control (Fisher
  exact test, Bonferroni-corrected), grouped into behaviours;
- :func:`discover_behaviours`: generation sources (greedy, amplified, steered, each against its
  control) and token evidence (difference lens, reply-start KL) merged into ranked
  :class:`Hypothesis` objects; the null calibration lives in the controls;
- :func:`reconstruct_triggers`: gradient scoring of every vocabulary token as an inserted
  trigger, exact checks, multi-token coordinate search and attribution, each candidate's
  behaviour rate measured by generation.
"""

from mechscope.audit.discovery import (
    BehaviourDiscoveryConfig,
    Discovery,
    Hypothesis,
    TextSource,
    TokenEvidence,
    discover_behaviours,
)
from mechscope.audit.phrases import (
    Phrase,
    PhraseConfig,
    PhraseGroup,
    contains_phrase,
    enriched_phrases,
    group_phrases,
)
from mechscope.audit.triggers import (
    TokenAttribution,
    TriggerCandidate,
    TriggerConfig,
    attribute,
    reconstruct_triggers,
)

__all__ = [
    "BehaviourDiscoveryConfig",
    "Discovery",
    "Hypothesis",
    "Phrase",
    "PhraseConfig",
    "PhraseGroup",
    "TextSource",
    "TokenAttribution",
    "TokenEvidence",
    "TriggerCandidate",
    "TriggerConfig",
    "attribute",
    "contains_phrase",
    "discover_behaviours",
    "enriched_phrases",
    "group_phrases",
    "reconstruct_triggers",
]
