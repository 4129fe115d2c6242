"""Head roles on SmolLM2 (run in CI): name movers by direct logit attribution are the heads path
patching found (docs/case-studies/ioi-smollm2.md), and each layer's head scores add up to its
attention output's direct effect."""

import pytest
import torch

from mechscope import tasks
from mechscope.compare import HeadRoles, name_mover_scores

pytestmark = pytest.mark.smollm2


def test_name_movers_by_direct_logit_attribution(smollm2):
    task = tasks.ioi(smollm2, n=8, seed=0)
    scores = name_mover_scores(smollm2, task)
    assert scores.shape == (30, 9)
    top = HeadRoles("smollm2", {"name_mover": scores}).top("name_mover", 3)
    assert (23, 3) in top and (29, 1) in top  # the name movers path patching to the logits found
    # Identity: each layer's head scores add up to the direct effect of that layer's attention
    # output (the residual decomposition, computed apart from the per-head split).
    _, cache = smollm2.run_with_cache(task.clean_tokens)
    components, labels = cache.decompose_resid(pos_slice=-1, return_labels=True)
    direct = cache.logit_attrs(components, task.answer_tokens[:, 0], task.wrong_tokens[:, 0], pos_slice=-1)
    attention = torch.stack([direct[labels.index(f"{layer}_attn_out")] for layer in range(30)]).float().mean(1)
    torch.testing.assert_close(scores.sum(1), attention.cpu(), atol=2e-3, rtol=2e-3)
    assert float(scores[23, 3]) > 0.5 and float(scores.max()) == float(scores[23, 3])
