"""Scale-out on ``torch.distributed`` (torchrun; gloo on CPU, NCCL on GPUs, one code path).

``join`` gives this process's :class:`Ranks` (a world of one without a launcher); the
collectives on it fail with a clear :class:`~mechscope.errors.DistributedError` instead of
hanging. ``reduce`` computes a data-parallel step's batch statistics over the global batch;
``merge`` combines per-rank top-k lists, histograms and independent jobs exactly;
``run_ranks`` starts N local ranks without torchrun (tests, benchmarks).
"""

from mechscope.distributed.files import main_rank_lock, output_folder_on_ranks
from mechscope.distributed.group import (
    DistributedConfig,
    Ranks,
    check_ranks,
    check_same_settings,
    join,
    joined,
    launched_by_torchrun,
    leave,
    settings_digest,
)
from mechscope.distributed.launch import RankOutcome, run_ranks
from mechscope.distributed.merge import (
    contiguous_share,
    merge_top_k,
    merge_top_k_many,
    merged_histogram,
    merged_histograms,
    rank_jobs,
    spread_jobs,
    top_k,
)
from mechscope.distributed.reduce import (
    any_rank,
    average_gradients,
    broadcast_parameters,
    global_kth_largest,
    global_mean,
    global_mean_rows,
)

__all__ = ["DistributedConfig", "RankOutcome", "Ranks", "any_rank", "average_gradients",
           "broadcast_parameters", "check_ranks", "check_same_settings", "contiguous_share",
           "global_kth_largest", "global_mean", "global_mean_rows", "join", "joined", "launched_by_torchrun", "leave",
           "main_rank_lock", "merge_top_k", "merge_top_k_many", "merged_histogram", "merged_histograms", "output_folder_on_ranks",
           "rank_jobs", "run_ranks", "settings_digest", "spread_jobs", "top_k"]
