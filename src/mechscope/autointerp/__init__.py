"""Automated interpretability: explain units in words and measure how true the words are.

So far: a unit's records (:mod:`~mechscope.autointerp.records`), the ``tokens`` explainer
(:mod:`~mechscope.autointerp.explain`), explanations read as token or regex rules
(:mod:`~mechscope.autointerp.lexicon`), the ``lexicon`` scorer with bootstrap intervals
(:mod:`~mechscope.autointerp.score`) and the planted units whose meaning is known
(:mod:`~mechscope.autointerp.planted`), the benchmark every explainer and scorer is measured on.
"""

from mechscope.autointerp.explain import TokenExplanation, explain_tokens
from mechscope.autointerp.lexicon import FORMS, LexiconParseError, LexiconRule, parse_explanation
from mechscope.autointerp.planted import Explanation, PlantedUnit, planted_units, planted_windows
from mechscope.autointerp.records import (
           DeadUnitError,
           RecordsConfig,
           UnitRecords,
           harvest_records,
           unit_records,
)
from mechscope.autointerp.score import Score, bootstrap_interval, lexicon_score

__all__ = ["FORMS", "DeadUnitError", "Explanation", "LexiconParseError", "LexiconRule", "PlantedUnit",
           "RecordsConfig", "Score", "TokenExplanation", "UnitRecords", "bootstrap_interval", "explain_tokens",
           "harvest_records", "lexicon_score", "parse_explanation", "planted_units", "planted_windows",
           "unit_records"]
