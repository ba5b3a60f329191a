"""The hostile SuperNode of a deployment: which attack it sends each round, and how
``fp8fl-deploy up --hostile I:ATTACK`` reads and checks its argument."""

import argparse

import pytest

from clients.hostile_client import ATTACKS, MALFORMED, WELL_FORMED, round_attack
from clients.malformed import MUTATIONS
from experiments.cli.deploy import DeployError, hostile_nodes, hostile_spec


def test_malformed_cycles_through_the_whole_corpus_one_mutation_per_round():
    sent = [round_attack("malformed", r) for r in range(1, 2 * len(MUTATIONS) + 1)]
    assert sent[: len(MUTATIONS)] == sorted(MUTATIONS) == list(MALFORMED)
    assert sent[len(MUTATIONS) :] == sent[: len(MUTATIONS)]


def test_all_sends_each_well_formed_attack_then_the_next_mutation():
    sent = [round_attack("all", r) for r in range(1, 3 * len(MUTATIONS) + 1)]
    assert sent[:6] == [*WELL_FORMED, MALFORMED[0], *WELL_FORMED, MALFORMED[1]]
    assert sent[2::3] == list(MALFORMED)  # every mutation once per 3 x 26 rounds
    assert {a for i, a in enumerate(sent) if i % 3 != 2} == set(WELL_FORMED)


@pytest.mark.parametrize("attack", WELL_FORMED)
def test_a_well_formed_attack_is_sent_every_round(attack):
    assert {round_attack(attack, r) for r in range(1, 10)} == {attack}


def test_hostile_spec_reads_index_and_attack_and_names_the_choices():
    assert hostile_spec("2:all") == (2, "all")
    for bad in ("all", "x:all", "-1:all", "1:scale", "1:"):
        with pytest.raises(argparse.ArgumentTypeError, match=", ".join(ATTACKS)):
            hostile_spec(bad)


def test_hostile_nodes_names_every_index_out_of_range_or_repeated():
    assert hostile_nodes([(0, "all"), (2, "malformed")], 3) == {0: "all", 2: "malformed"}
    with pytest.raises(DeployError) as err:
        hostile_nodes([(1, "all"), (1, "negate-model"), (3, "all")], 3)
    assert str(err.value) == "--hostile: no SuperNode 3 among 3; SuperNode 1 given twice"
