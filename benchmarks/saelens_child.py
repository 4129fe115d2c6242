"""The SAELens half of benchmarks/sae_vs_saelens.py; runs in a separate venv that has sae-lens.

    path/to/saelens-venv/bin/python benchmarks/saelens_child.py DATA OUT --steps ...

Trains SAELens' TopKTrainingSAE with its own SAETrainer on the activations in DATA (a
safetensors file with a "train" tensor [tokens, d_in]), on the batches ``batch_rows`` picks
(the mechscope half uses the same function), and saves the result in SAELens' format to OUT
with the decoder norms and the input scaling folded in. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def batch_rows(step: int, n_rows: int, batch_size: int, seed: int = 0) -> torch.Tensor:
    """[batch_size] row indices of training batch ``step``: uniform with replacement, a pure
    function of (seed, step) so both libraries see the same batches."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, n_rows, (batch_size,), generator=generator)


def main() -> None:
    from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from safetensors.torch import load_file

    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--d-sae", type=int, required=True)
    parser.add_argument("--k", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--decay-steps", type=int, required=True)
    parser.add_argument("--dead-window-steps", type=int, required=True)
    parser.add_argument("--sparse", action="store_true", help="use_sparse_activations=True")
    args = parser.parse_args()

    activations = load_file(args.data)["train"]
    n_rows, d_in = activations.shape

    def batches():
        # The first batch feeds the scale estimate, as batch(0) does in mechscope; then 0, 1, ...
        yield activations[batch_rows(0, n_rows, args.batch)]
        step = 0
        while True:
            yield activations[batch_rows(step, n_rows, args.batch)]
            step += 1

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=args.d_sae, k=args.k,
                                                normalize_activations="expected_average_only_in",
                                                use_sparse_activations=args.sparse))
    trainer_cfg = SAETrainerConfig(total_training_samples=args.steps * args.batch,
                                   train_batch_size_samples=args.batch, lr=args.lr, lr_end=args.lr,
                                   lr_warm_up_steps=args.warmup, lr_decay_steps=args.decay_steps,
                                   dead_feature_window=args.dead_window_steps, n_batches_for_norm_estimate=1)
    trainer = SAETrainer(trainer_cfg, sae, batches())
    start = time.perf_counter()
    trained = trainer.fit()
    seconds = time.perf_counter() - start
    trained.fold_W_dec_norm()
    trained.cfg.rescale_acts_by_decoder_norm = False
    trained.save_model(args.out)
    print(json.dumps({"seconds": seconds, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
