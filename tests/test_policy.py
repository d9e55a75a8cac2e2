"""Policy files: round trip, replay on the model, and every validation error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import autoprune
from autoprune.errors import PolicyError
from autoprune.policy import Policy, make_policy, policy_for
from autoprune.pruning import apply, space_for

from conftest import zoo_space


def a_policy(arch="resnet20", space_name=None, checkpoint="ab" * 32):
    model, space = zoo_space(arch, space_name)
    counts = space.counts(np.linspace(0.3, 0.9, len(space.searchable)))
    kept = space.select(counts, space.scores("l1"))
    ratios = counts / np.array([g.channels for g in space.searchable])
    return model, space, make_policy(space, ratios, kept, dataset="cifar10", num_classes=10,
                                     checkpoint=checkpoint, criterion="l1", provenance={"agent": "test"})


def test_round_trip_and_replay(tmp_path):
    model, space, policy = a_policy()
    policy.save(tmp_path / "p.json")
    loaded = Policy.load(tmp_path / "p.json")
    assert loaded == policy
    assert loaded.macs == space.cost([len(policy.channels[n]) for n in space.names]).macs
    assert 0 < loaded.macs_fraction < 1 and loaded.provenance["autoprune"] == autoprune.__version__
    a, b = space.apply(policy.channels), apply(model, loaded)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_apply_caches_the_traced_structure():
    model, _, policy = a_policy()
    assert space_for(model, "resnet20", None) is space_for(model, "resnet20", None)


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.update(schema=99), "schema version 99"),
    (lambda d: d.pop("channels"), "missing fields"),
    (lambda d: d.update(colour="red"), "unknown fields"),
    (lambda d: d["channels"].update({"layer1.0.conv1": "abc"}), "lists of ints"),
    (lambda d: d["ratios"].pop("layer1.0.conv1"), "different groups"),
])
def test_malformed_files_are_refused(tmp_path, edit, message):
    _, _, policy = a_policy()
    data = policy.to_dict()
    edit(data)
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(PolicyError, match=message):
        Policy.load(tmp_path / "p.json")


def test_not_json_and_missing_file(tmp_path):
    (tmp_path / "p.json").write_text("{not json")
    with pytest.raises(PolicyError, match="not valid JSON"):
        Policy.load(tmp_path / "p.json")
    with pytest.raises(PolicyError, match="does not exist"):
        Policy.load(tmp_path / "missing.json")


def test_policy_for_another_model_is_refused():
    _, _, policy = a_policy("resnet20")
    _, other = zoo_space("resnet32")
    with pytest.raises(PolicyError, match="is for resnet20, but the model is resnet32"):
        policy.validate(other)
    _, full = zoo_space("resnet20", "full")
    with pytest.raises(PolicyError, match="space 'inner'"):
        policy.validate(full)
    _, space = zoo_space("resnet20")
    with pytest.raises(PolicyError, match="checkpoint"):
        policy.validate(space, checkpoint="cd" * 32)


def test_edited_channels_are_caught():
    _, space, policy = a_policy()
    name = space.names[0]
    policy.channels[name] = policy.channels[name][:-1]
    with pytest.raises(PolicyError, match="MACs"):
        policy.validate(space)
    policy.channels[name] = [0, 0, 1]
    with pytest.raises(PolicyError, match="distinct"):
        policy.validate(space)
    del policy.channels[name]
    with pytest.raises(PolicyError, match="missing groups"):
        policy.validate(space)


def test_policy_for_records_counts_over_channels_the_classifier_and_the_target():
    _, space, policy = a_policy()
    made = policy_for(space, policy.channels, target=0.5, dataset="cifar10", checkpoint=policy.checkpoint,
                      criterion="l1", provenance={"agent": "test"})
    assert (made.ratios, made.channels, made.macs, made.params) == (policy.ratios, policy.channels, policy.macs,
                                                                    policy.params)
    assert made.num_classes == 10 and made.target == {"metric": "macs", "fraction": 0.5}
    assert made.provenance["agent"] == "test"
