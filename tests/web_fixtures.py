"""Runs for the web tests: a toy dictionary on a tiny model with its dashboard (features.jsonl,
with two explained latents), built in seconds through the real code paths."""

from __future__ import annotations

from pathlib import Path

import torch

from mechscope.sae import SAE, SAEConfig, save_sae
from mechscope.sae.runs import prepare_dashboard_folder, run_dashboard

EXPLAINED = {
    1: {"unit": "latent 1", "status": "explained", "explanation": "zebra crossings and striped animals",
        "scores": {"detection": {"value": 0.71, "low": 0.6, "high": 0.8, "above_chance": True}}},
    2: {"unit": "latent 2", "status": "explained", "explanation": "closing brackets in code",
        "scores": {"detection": {"value": 0.52, "low": 0.4, "high": 0.64, "above_chance": False}}},
}


def toy_dictionary_run(model, root: Path, latents: int = 6, d_sae: int = 24) -> tuple[Path, Path]:
    """(dictionary folder, dashboard run folder): a relu dictionary of ``d_sae`` random latents at
    blocks.1.hook_resid_pre of ``model`` and its dashboard over the first ``latents``."""
    torch.manual_seed(0)
    sae = SAE(SAEConfig(model.cfg.d_model, d_sae, "relu", hook_name="blocks.1.hook_resid_pre",
                        model_name=model.cfg.name))
    with torch.no_grad():
        sae.b_enc.fill_(0.05)  # every latent fires on some tokens of random text
    dictionary = save_sae(sae, root / "toy-sae")
    chosen = list(range(latents))
    folder = prepare_dashboard_folder(root / "toy-dashboard", chosen,
                                      options={"sae": str(dictionary.resolve()), "contexts": 8})
    run_dashboard(model, sae, chosen, folder, contexts=8, explanations={k: v["explanation"] for k, v in EXPLAINED.items()},
                  explanation_results=EXPLAINED)
    return dictionary, folder.path
