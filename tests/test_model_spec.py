"""A model enters as a spec: user factories end to end on the CLI, output selection, --ignore, untraceable
models, policy schema 2 (and v1 migration), replay onto another model refused, and every bad input."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from autoprune.checkpoints import load_pruned
from autoprune.cli import main
from autoprune.errors import ModelError, PolicyError
from autoprune.models import ModelSpec, build, parse_model_args, replay_spec
from autoprune.policy import Policy
from autoprune.pruning import PrunableSpace, apply, prune

from conftest import zoo_space

FACTORY = textwrap.dedent('''
    import torch
    from torch import nn


    class Net(nn.Module):
        """A small CNN whose forward may return a tuple, a dict or an object with .logits."""

        def __init__(self, width=8, num_classes=10, out="tensor"):
            super().__init__()
            self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
            self.bn0 = nn.BatchNorm2d(width)
            self.conv1 = nn.Conv2d(width, 2 * width, 3, padding=1, stride=2, bias=False)
            self.bn1 = nn.BatchNorm2d(2 * width)
            self.conv2 = nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(2 * width)
            self.head = nn.Linear(2 * width, num_classes)
            self.out = out

        def forward(self, x):
            x = torch.relu(self.bn0(self.stem(x)))
            x = torch.relu(self.bn1(self.conv1(x)))
            features = torch.relu(self.bn2(self.conv2(x)))
            logits = self.head(features.mean((2, 3)))
            if self.out == "tuple":
                return features, logits
            if self.out == "dict":
                return {"features": features, "scores": logits}
            if self.out == "object":
                return Output(logits)
            return logits


    class Output:
        def __init__(self, logits):
            self.logits = logits


    def net(width=8, num_classes=10, out="tensor"):
        return Net(width, num_classes, out)


    def strict(width=8):
        return Net(width)


    class NumpyOp(nn.Module):
        def forward(self, x):
            return torch.from_numpy(x.numpy())


    class ChannelBias(nn.Module):
        """A per-channel constant made in forward: Torch-Pruning does not see that it is tied to the channels."""

        def forward(self, x):
            return x + torch.arange(x.shape[1] * 0 + 16.0).view(1, 16, 1, 1)


    def untraceable():
        model = Net()
        model.conv1 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, stride=2, bias=False), NumpyOp())
        return model


    def silently_cut():
        model = Net()
        model.conv1 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, stride=2, bias=False), ChannelBias())
        return model


    def only_stem():
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))


    def not_a_module():
        return "a string"


    NOT_CALLABLE = 3
    ''')


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """The factory file and a trained-looking checkpoint of its default model."""
    root = tmp_path_factory.mktemp("user")
    (root / "models.py").write_text(FACTORY)
    (root / "broken.py").write_text("import nonexistent_package_xyz\n")
    torch.manual_seed(0)
    model = build(ModelSpec(f"{root / 'models.py'}:net", input_size=(3, 32, 32)))
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, root / "net.pt")
    return root


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_spec_kinds_round_trip_and_model_args(user):
    assert ModelSpec("resnet20").kind == "zoo"
    assert ModelSpec("torch.nn:Identity").kind == "module"
    assert ModelSpec(f"{user / 'models.py'}:net").kind == "file"
    spec = ModelSpec(f"{user / 'models.py'}:net", args={"width": 4}, input_size=(3, 32, 32), output=1,
                     ignore=("conv2",))
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert parse_model_args(["width=4", "scale=0.5", "flag=true", "name=abc", "none=null"]) == {
        "width": 4, "scale": 0.5, "flag": True, "name": "abc", "none": None}
    with pytest.raises(ModelError, match="KEY=VALUE"):
        parse_model_args(["width"])
    with pytest.raises(Exception, match="Did you mean 'resnet56'"):
        ModelSpec("resnet57")


@pytest.mark.parametrize("out,selector", [("tuple", 1), ("tuple", -1), ("dict", "scores"), ("object", None)])
def test_outputs_are_selected_and_module_names_stay(user, out, selector):
    spec = ModelSpec(f"{user / 'models.py'}:net", args={"out": out}, input_size=(3, 32, 32), output=selector)
    model = build(spec).eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    space = PrunableSpace(model, spec)
    assert space.info.classifier == "head" and space.info.first_conv == "stem"
    if out == "object":  # only the logits leave the model
        assert space.names == ["conv1", "conv2"]
    else:  # the features are an output too: their width is the user's interface, kept whole and said so
        assert space.names == ["conv1"] and "an output of the model" in space.unprunable["conv2"]
    pruned = space.apply({"conv1": np.arange(5)})
    assert pruned(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_the_default_selector_takes_the_first_element_and_says_when_that_is_wrong(user):
    spec = ModelSpec(f"{user / 'models.py'}:net", args={"out": "tuple"}, input_size=(3, 32, 32))
    with pytest.raises(ModelError, match=r"shape \(1, 16, 16, 16\).*--output KEY\|INDEX"):
        build(spec)


def test_a_module_object_and_an_example_input(user):
    model = build(ModelSpec(f"{user / 'models.py'}:net", input_size=(3, 32, 32)))
    space = PrunableSpace(model, torch.zeros(1, 3, 32, 32), ignore=["conv2"])
    assert space.names == ["conv1"]
    assert space.reasons == {"stem": "the stem (first conv): kept by default", "conv2": "--ignore 'conv2' keeps conv2"}
    found = space.inventory()
    assert [g["name"] for g in found["groups"] if g["searchable"]] == ["conv1"]
    assert {u["name"] for u in found["unpruned"]} >= {"stem", "head", "bn2"}


def test_an_untraceable_model_names_module_op_and_ignore(user):
    spec = ModelSpec(f"{user / 'models.py'}:untraceable", input_size=(3, 32, 32))
    with pytest.raises(ModelError, match=r"numpy\(\).* in conv1\.1 \(NumpyOp\); skip it with --ignore 'conv1\.1'"):
        PrunableSpace(build(spec), spec)
    space = PrunableSpace(build(spec), ModelSpec(**{**spec.__dict__, "ignore": ("conv1.1",)}))
    assert space.untraced == ["conv1.1"] and space.names == ["conv2"]


def test_a_dependency_the_trace_missed_is_found_before_any_search(user):
    spec = ModelSpec(f"{user / 'models.py'}:silently_cut", input_size=(3, 32, 32))
    with pytest.raises(ModelError, match=r"pruning group 'conv1\.0' breaks the model in conv1\.1 \(ChannelBias\).*--ignore 'conv1\.0'"):
        PrunableSpace(build(spec), spec)
    space = PrunableSpace(build(spec), spec, ignore=["conv1.0"])
    assert space.names == ["conv2"]


def test_v1_policy_migrates(tmp_path):
    model, space = zoo_space("resnet20")
    policy, _ = prune(model, "resnet20", 0.5)
    data = policy.to_dict()
    for key in ("model", "widths"):
        data.pop(key)
    data["schema"] = 1
    (tmp_path / "v1.json").write_text(json.dumps(data))
    old = Policy.load(tmp_path / "v1.json")
    assert old.schema == 2 and old.model_spec.source == "resnet20" and old.model_spec.is_zoo
    old.validate(space)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(apply(model, old)(x), apply(model, policy)(x))


def test_replay_onto_another_model_is_refused(user):
    spec = ModelSpec(f"{user / 'models.py'}:net", input_size=(3, 32, 32))
    policy, _ = prune(build(spec), spec, 0.5)
    assert policy.model["source"] == spec.source and policy.widths == {"conv1": 16, "conv2": 16}
    with pytest.raises(PolicyError, match=r"args \{'width': 4\} here, \{\} in it"):
        replay_spec(policy.model_spec, ModelSpec(spec.source, args={"width": 4}))
    with pytest.raises(PolicyError, match="pass it again: --model"):
        replay_spec(policy.model_spec, None)
    other = build(ModelSpec(spec.source, args={"width": 4}, input_size=(3, 32, 32)))
    with pytest.raises(PolicyError, match=r"groups conv1 \(16 channels in the policy, 8 here\), conv2"):
        apply(other, policy)


def test_cli_prune_eval_finetune_load_pruned_on_a_user_factory(user, tiny, capsys, tmp_path):
    model = ["--model", f"{user / 'models.py'}:net", "--input-size", "3,32,32"]
    data = ["--data-dir", tiny / "data", "--holdout", 20, "--device", "cpu"]
    code, out, err = run(capsys, "prune", *model, "--checkpoint", user / "net.pt", "--target-flops", 0.5,
                         "--out", tmp_path / "p")
    assert code == 0, err
    assert f"--model {user / 'models.py'}:net" in out
    policy = json.loads((tmp_path / "p" / "policy.json").read_text())
    assert policy["schema"] == 2 and policy["model"]["input_size"] == [3, 32, 32]
    code, out, err = run(capsys, "eval", "--checkpoint", tmp_path / "p" / "model.pt", *data)
    assert code == 2 and "pass it again: --model" in err and "Traceback" not in err
    code, out, err = run(capsys, "eval", "--checkpoint", tmp_path / "p" / "model.pt", *model, *data,
                         "--recal-batches", 1)
    assert code == 0 and "pruned to" in out, err
    code, out, err = run(capsys, "eval", *model, "--checkpoint", user / "net.pt", "--policy",
                         tmp_path / "p" / "policy.json", *data)
    assert code == 0 and "test top-1" in out, err
    code, out, err = run(capsys, "finetune", "--policy", tmp_path / "p" / "policy.json", "--checkpoint",
                         user / "net.pt", *model, "--preset", "cpu", "--epochs", 1, "--batch-size", 16,
                         "--precision", "float32", "--split-seed", 3, "--eval-batch-size", 50, "--no-progress", "--out",
                         tmp_path / "ft", *data)
    assert code == 0, err
    saved = yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())
    assert saved["recipe"]["precision"] == "float32" and saved["split_seed"] == 3
    tuned, tuned_policy = load_pruned(tmp_path / "ft" / "model.pt", model=ModelSpec(f"{user / 'models.py'}:net"))
    assert tuned_policy.model_spec.source.endswith("models.py:net")
    assert tuned(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(PolicyError, match="args"):
        load_pruned(tmp_path / "p" / "model.pt", model=ModelSpec(f"{user / 'models.py'}:net", args={"width": 4}))
    code, out, err = run(capsys, "flops", "--policy", tmp_path / "p" / "policy.json", *model)
    assert code == 0 and "pruned:" in out, err


def test_cli_search_on_a_user_model_then_report_and_export(user, tiny, capsys, tmp_path):
    code, out, err = run(capsys, "search", "--model", f"{user / 'models.py'}:net", "--model-arg", "out=tuple",
                         "--output", 1,
                         "--input-size", "3,32,32", "--checkpoint", user / "net.pt", "--agent", "random",
                         "--episodes", 2, "--target-flops", 0.5, "--data-dir", tiny / "data", "--holdout", 20,
                         "--reward-samples", 10, "--recal-batches", 1, "--device", "cpu", "--out", tmp_path / "s")
    assert code == 0, err
    policy = Policy.load(tmp_path / "s" / "policy.json")
    assert policy.model_spec.args == {"out": "tuple"} and policy.model_spec.output == 1
    assert 0.3 < policy.macs_fraction <= 0.5
    assert (tmp_path / "s" / "report.md").is_file()


def test_search_model_runs_a_whole_search_on_a_module_object(user, tiny, tmp_path):
    from autoprune.search import search_model

    model = build(ModelSpec(f"{user / 'models.py'}:net", input_size=(3, 32, 32)))
    result = search_model(model, tiny / "data", tmp_path / "s", input_size=(3, 32, 32), targets=[0.5],
                          agent="random", episodes=2, holdout=20, reward_samples=10, recal_batches=1,
                          recal_batch_size=10, device="cpu")
    policy = result.policies[0.5]
    assert policy.model_spec.kind == "object" and policy.checkpoint is not None
    assert apply(model, policy)(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("argv,message", [
    (["--model", "{u}/broken.py:net"], "importing"),
    (["--model", "nonexistent_pkg_xyz.sub:net"], "cannot import nonexistent_pkg_xyz.sub"),
    (["--model", "{u}/models.py:NOT_CALLABLE"], "not a callable factory"),
    (["--model", "{u}/models.py:nothing"], "has no 'nothing'"),
    (["--model", "{u}/models.py:not_a_module"], "not a torch.nn.Module"),
    (["--model", "{u}/models.py:strict", "--model-arg", "depth=3"], "rejects the arguments"),
    (["--model", "{u}/models.py:net", "--input-size", "3,8"], "three positive integers"),
    (["--model", "{u}/models.py:net", "--input-size", "1,32,32"], "rejects input size 1,32,32 in stem (Conv2d)"),
    (["--model", "{u}/models.py:net", "--model-arg", "out=dict", "--output", "logits"], "selects nothing"),
    (["--model", "{u}/models.py:net", "--ignore", "layer9*"], "matches no module"),
    (["--model", "{u}/models.py:only_stem"], "has no prunable group"),
    (["--model", "{u}/models.py:net", "--checkpoint", "{ck}"], "missing keys"),
    (["--model", "{u}/models.py:net", "--policy", "{r20policy}"], "was made on another model: source"),
])
def test_bad_model_inputs_get_one_line_and_write_nothing(user, tiny, capsys, tmp_path, argv, message):
    r20 = tmp_path / "r20"
    assert main(["prune", "--arch", "resnet20", "--checkpoint", str(tiny / "r20.th"), "--target-flops", "0.5",
                 "--out", str(r20)]) == 0
    capsys.readouterr()
    values = {"u": user, "ck": tiny / "r20.th", "r20policy": r20 / "policy.json"}
    argv = [a.format(**values) for a in argv]
    if "--input-size" not in argv:
        argv += ["--input-size", "3,32,32"]
    if "--policy" in argv:
        code, out, err = run(capsys, "eval", *argv, "--checkpoint", user / "net.pt", "--data-dir", tiny / "data")
    else:
        if "--checkpoint" not in argv:
            argv += ["--checkpoint", "none"]
        code, out, err = run(capsys, "prune", *argv, "--target-flops", 0.5, "--out", tmp_path / "out")
    message = message.format(**values)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_inspect_lists_groups_and_unpruned_layers(user, capsys):
    code, out, err = run(capsys, "inspect", "--model", f"{user / 'models.py'}:net", "--input-size", "3,32,32",
                         "--ignore", "conv2")
    assert code == 0, err
    assert "1 of 3 groups searchable" in out and "no: --ignore 'conv2' keeps conv2" in out
    assert "head" in out and "the classifier" in out
    code, out, _ = run(capsys, "inspect", "--arch", "resnet20", "--json")
    found = json.loads(out)
    assert code == 0 and sum(g["searchable"] for g in found["groups"]) == 9
    assert {g["reason"] for g in found["groups"] if not g["searchable"]} == {"not in space 'inner'"}
    code, _, err = run(capsys, "inspect", "--model", f"{user / 'models.py'}:untraceable", "--input-size", "3,32,32")
    assert code == 2 and "--ignore 'conv1.1'" in err and len(err.strip().splitlines()) == 1
