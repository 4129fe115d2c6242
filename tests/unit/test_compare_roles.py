"""Head roles across models: known-circuit models tag their designed heads, relative depths
compare against a shuffled-layer null, and a circuit mapped by role onto another model beats
random circuits of the same size there (a circuit of other heads does not)."""

import pytest
import torch

from mechscope.circuits.graph import ComponentGraph
from mechscope.circuits.known.registry import load_known
from mechscope.compare import (
    HeadRoles,
    circuit_faithfulness,
    compare_depths,
    head_roles,
    map_by_role,
)
from mechscope.errors import ConfigError


@pytest.fixture(scope="module")
def induction_pair():
    hand, trained = load_known("hand-induction"), load_known("trained-induction")
    return hand, trained, head_roles(hand.model, seq_len=12), head_roles(trained.model, seq_len=12)


def test_known_heads_get_their_designed_roles(induction_pair):
    hand, trained, roles_hand, roles_trained = induction_pair
    assert roles_hand.role_of(0, 0, fraction=0.5) == "previous_token"
    assert roles_hand.role_of(1, 0, fraction=0.5) == "induction"
    assert roles_hand.role_of(0, 1, fraction=0.5) is None  # the self-attending distractor
    assert {layer for layer, _ in roles_trained.top("induction", 4)} == {1}
    assert float(roles_trained.get("induction")[1].min()) > 0.5


def test_a_circuit_mapped_by_role_beats_random_circuits_on_the_other_model(induction_pair):
    hand, trained, roles_hand, roles_trained = induction_pair
    graph = ComponentGraph.from_config(hand.model.cfg)
    source = [name for name, keep in zip(graph.writers, hand.node_labels(graph)) if keep and not name.startswith("MLP")]
    assert source == ["L0H0", "L1H0"]
    mapping = map_by_role(source, roles_hand, roles_trained, fraction=0.5)
    assert mapping.source_roles == {"L0H0": "previous_token", "L1H0": "induction"}
    assert len(mapping.mapped["induction"]) == 2  # scaled by the head counts: 8 / 4
    known = ComponentGraph.from_config(trained.model.cfg)
    known_nodes = {name for name, keep in zip(known.writers, trained.node_labels(known)) if keep}
    assert set(mapping.mapped["induction"]) <= known_nodes
    assert "L0H0" in mapping.mapped["previous_token"]
    transferred = circuit_faithfulness(trained.model, trained.task, mapping.target_heads, random_circuits=40)
    random = torch.tensor(transferred.random)
    assert transferred.faithfulness > float(random.quantile(0.9)) and transferred.p_value < 0.1
    # Negative control: the heads the known circuit does not use are no better than chance.
    others = sorted(set(known.writers) - known_nodes - {"input"} - {f"MLP{i}" for i in range(2)})
    control = circuit_faithfulness(trained.model, trained.task, others, random_circuits=40)
    assert control.faithfulness < float(torch.tensor(control.random).mean())
    assert control.p_value > 0.5


def planted(n_layers: int, n_heads: int, layers: list[int], seed: int) -> torch.Tensor:
    """Scores [n_layers, n_heads]: small noise, with one strong head per entry of ``layers``
    (a layer named twice gets two)."""
    scores = 0.05 * torch.rand(n_layers, n_heads, generator=torch.Generator().manual_seed(seed))
    for index, layer in enumerate(layers):
        scores[layer, layers[:index].count(layer)] = 1.0
    return scores


def test_depth_comparison_finds_a_role_at_the_same_relative_depth():
    # fraction 0.03: the top 8 of A's 270 heads and the top 2 of B's 72, exactly the planted ones.
    late_a, late_b = [19, 19, 20, 20, 21, 21, 22, 23], [12, 13]
    a = HeadRoles("a", {"induction": planted(30, 9, late_a, 0), "previous_token": planted(30, 9, [1] * 8, 1)})
    b = HeadRoles("b", {"induction": planted(18, 4, late_b, 2), "previous_token": planted(18, 4, [15, 16], 3)})
    depths = compare_depths(a, b, fraction=0.03, shuffles=500)
    induction, previous = depths.roles
    assert induction.role == "induction" and len(induction.heads_a) == 8 and len(induction.heads_b) == 2
    assert induction.depth_a == pytest.approx(sum(late_a) / 8 / 29) and induction.depth_b == pytest.approx(12.5 / 17)
    # One role is one draw: a shuffled cluster lands as close by chance a few % of the time.
    assert induction.gap < 0.05 and induction.p_value < 0.1 and induction.null_mean > 0.2
    # Negative control: previous-token heads early in A but late in B are not "at the same depth",
    # and the test over both roles is not significant.
    assert previous.gap > 0.8 and previous.p_value > 0.5 and depths.p_value > 0.2
    # Both roles at the same relative depths: the test over all roles is significant.
    b_same = HeadRoles("b", {"induction": planted(18, 4, late_b, 2), "previous_token": planted(18, 4, [1, 1], 3)})
    together = compare_depths(a, b_same, fraction=0.03, shuffles=500)
    assert together.mean_gap < 0.05 and together.p_value < 0.01


def test_bad_input_names_the_problem():
    scores = {"induction": torch.zeros(2, 2)}
    with pytest.raises(ConfigError, match="unknown roles"):
        HeadRoles("m", {"copying": torch.zeros(2, 2)})
    with pytest.raises(ConfigError, match="one \\[n_layers, n_heads\\] shape"):
        HeadRoles("m", {"induction": torch.zeros(2, 2), "previous_token": torch.zeros(3, 2)})
    with pytest.raises(ConfigError, match="none in common"):
        compare_depths(HeadRoles("a", scores), HeadRoles("b", {"previous_token": torch.zeros(2, 2)}))
    with pytest.raises(ConfigError, match="L<layer>H<head>"):
        map_by_role(["head3"], HeadRoles("a", scores), HeadRoles("b", scores))
    with pytest.raises(ConfigError, match="outside a model of 2 layers x 2 heads"):
        map_by_role(["L5H0"], HeadRoles("a", scores), HeadRoles("b", scores))
    hand = load_known("hand-induction")
    with pytest.raises(ConfigError, match="measured on IOI"):
        head_roles(hand.model, roles=("name_mover",))
