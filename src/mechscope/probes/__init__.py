"""Linear probes on any hook point and position: logistic-regression and mass-mean probes,
layer sweeps with train / test splits, accuracy and AUROC, and control tasks with selectivity
(Hewitt & Liang) so a probe's success is not mistaken for the model's knowledge."""

from mechscope.probes.control import control_labels, selectivity
from mechscope.probes.datasets import PROBE_DATASETS, ProbeDataset, probe_dataset
from mechscope.probes.linear import KINDS, LinearProbe, train_probe
from mechscope.probes.metrics import accuracy, auroc
from mechscope.probes.sweep import (
    METRICS,
    ProbeRow,
    ProbeSweep,
    ProbeSweepConfig,
    probe_features,
    probe_sweep,
    resid_post_hooks,
    stratified_split,
)

__all__ = [
    "KINDS",
    "METRICS",
    "PROBE_DATASETS",
    "LinearProbe",
    "ProbeSweepConfig",
    "ProbeDataset",
    "ProbeRow",
    "ProbeSweep",
    "accuracy",
    "auroc",
    "control_labels",
    "probe_dataset",
    "probe_features",
    "probe_sweep",
    "resid_post_hooks",
    "selectivity",
    "stratified_split",
    "train_probe",
]
