"""Automated interpretability: explain units in words and measure how true the words are.

A unit's records (:mod:`~mechscope.autointerp.records`: activating windows by quantile and three
kinds of negatives; output-side records in :mod:`~mechscope.autointerp.explain.output`), the
explainers ``tokens``, ``output`` and ``llm`` (:mod:`~mechscope.autointerp.explain`), the scorers
(:mod:`~mechscope.autointerp.score`, each a number with a bootstrap interval and its chance
level), the language-model backends they talk to (:mod:`~mechscope.autointerp.backends`), and the
planted units whose meaning is known (:mod:`~mechscope.autointerp.planted`), the benchmark every
explainer and scorer is measured on.
"""

from mechscope.autointerp.embedder import SentenceEmbedder
from mechscope.autointerp.explain import (
           LLMExplanation,
           OutputExplanation,
           OutputRecords,
           TokenExplanation,
           explain_llm,
           explain_output,
           explain_tokens,
           output_records,
)
from mechscope.autointerp.lexicon import FORMS, LexiconParseError, LexiconRule, parse_explanation
from mechscope.autointerp.planted import Explanation, PlantedUnit, planted_units, planted_windows
from mechscope.autointerp.records import (
           DeadUnitError,
           RecordsConfig,
           UnitRecords,
           harvest_records,
           records_from_values,
           unit_records,
           window_texts_embeddings,
)
from mechscope.autointerp.results import label, latent_labels, read_explanations, read_labels
from mechscope.autointerp.run import (
           EXPLAINERS,
           SCORERS,
           ExplainOptions,
           explain_activations,
           run_explain,
           split_records,
)
from mechscope.autointerp.score import (
           Score,
           bootstrap_interval,
           detection_score,
           embedding_score,
           embedding_scores,
           fuzzing_score,
           intervention_score,
           intruder_score,
           lexicon_score,
           simulation_score,
           steered_pairs,
)
from mechscope.autointerp.units import (
           UnitSource,
           crosscoder_units,
           direction_units,
           head_units,
           neuron_units,
           sae_units,
)

__all__ = ["DeadUnitError", "EXPLAINERS", "ExplainOptions", "Explanation", "FORMS", "LLMExplanation",
           "LexiconParseError", "LexiconRule", "OutputExplanation", "OutputRecords", "PlantedUnit",
           "RecordsConfig", "SCORERS", "Score", "SentenceEmbedder", "TokenExplanation", "UnitRecords",
           "UnitSource", "bootstrap_interval", "crosscoder_units", "detection_score", "direction_units",
           "embedding_score", "embedding_scores", "explain_activations", "explain_llm", "explain_output",
           "explain_tokens", "fuzzing_score", "harvest_records", "head_units", "intervention_score",
           "intruder_score", "label", "latent_labels", "lexicon_score", "neuron_units", "output_records",
           "parse_explanation", "planted_units", "planted_windows", "read_explanations", "read_labels",
           "records_from_values", "run_explain", "sae_units", "simulation_score", "split_records",
           "steered_pairs", "unit_records", "window_texts_embeddings"]
