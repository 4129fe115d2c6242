"""Model diffing: what did fine-tuning change, and where? For two models of the same
architecture and tokenizer (a base and its fine-tune).

- :func:`weight_diff`: per-module norm of the weight change, its top singular directions, and
  the embedding / unembedding rows ranked by change;
- :func:`difference_means` / :func:`difference_lens`: the activation-difference lens (mean of
  h_ft - h_base on a neutral corpus, first positions kept apart) read through the logit lens
  and the vocabulary; :func:`steer_with_difference` adds it to the base;
- :func:`per_token_kl`: where on a text the two next-token distributions differ most;
- :mod:`corpus`: prompts and contexts that know nothing of the fine-tune (generic chat prompts,
  for the lens where replies start, and transcripts of the fine-tune answering them);
- :func:`amplified_generate`: replies from the fine-tune's logits with their difference to the
  base's scaled up, which makes a rare fine-tune behaviour common;
- :func:`sae_diff`: latents of a base-model SAE whose firing changes;
- crosscoders on paired activations (:func:`harvest_pair`, :class:`PairedActivations`,
  :func:`train_crosscoder`), latent classes by decoder-norm ratio and Latent Scaling.
"""

from mechscope.diff import corpus
from mechscope.diff.amplify import AmplifyConfig, amplified_generate
from mechscope.diff.compat import check_comparable
from mechscope.diff.crosscoder import (
    ClassifyConfig,
    Crosscoder,
    CrosscoderConfig,
    LatentClasses,
    classify_latents,
    collect_pair,
    crosscoder_dashboards,
    load_crosscoder,
    save_crosscoder,
    train_crosscoder,
)
from mechscope.diff.latent_scaling import LatentScaling, latent_scaling
from mechscope.diff.lens import (
    DifferenceLens,
    DifferenceMeans,
    DifferenceReading,
    difference_lens,
    difference_means,
    read_difference,
    steer_with_difference,
)
from mechscope.diff.paired import PairedActivations, harvest_pair
from mechscope.diff.sae_diff import SAEDiff, SAEDiffConfig, sae_diff
from mechscope.diff.token_kl import TokenKL, per_token_kl
from mechscope.diff.weights import WeightDiff, weight_diff
from mechscope.errors import IncompatibleModelsError

__all__ = [
    "AmplifyConfig",
    "ClassifyConfig",
    "Crosscoder",
    "CrosscoderConfig",
    "DifferenceLens",
    "DifferenceMeans",
    "DifferenceReading",
    "IncompatibleModelsError",
    "LatentClasses",
    "LatentScaling",
    "PairedActivations",
    "SAEDiff",
    "SAEDiffConfig",
    "TokenKL",
    "WeightDiff",
    "amplified_generate",
    "check_comparable",
    "classify_latents",
    "collect_pair",
    "corpus",
    "crosscoder_dashboards",
    "difference_lens",
    "difference_means",
    "harvest_pair",
    "latent_scaling",
    "load_crosscoder",
    "per_token_kl",
    "read_difference",
    "sae_diff",
    "save_crosscoder",
    "steer_with_difference",
    "train_crosscoder",
    "weight_diff",
]
