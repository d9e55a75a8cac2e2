"""Model specs: how any ``nn.Module`` enters autoprune, and what autoprune must know about it.

A spec names where the model comes from (a zoo name, ``package.module:factory``
or ``path/to/file.py:factory``, or a module object built in Python), the
factory's arguments, the input size, the normalisation, which output holds
the logits and which layers are never pruned. The engine itself only ever
sees the module object and an example input; the spec is what policies and
run configs record, so that the same model can be rebuilt and a policy
refused on another one.

A user factory is imported only when the user names it (on the command line
or in Python), never because a policy or a checkpoint names it: a policy of
a user model records the spec, and replaying it asks for the same ``--model``
(:func:`replay_spec`). Zoo names rebuild freely.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils._pytree import tree_flatten

from ..errors import ModelError, PolicyError
from ._registry import IMAGENET_MEAN, IMAGENET_STD, _DEFAULT_NUM_CLASSES, create as create_zoo, get_model_info

__all__ = ["ModelSpec", "build", "create", "resolve", "replay_spec", "parse_model_args", "parse_size",
           "parse_floats", "select_output", "running_module", "state_sha256", "where"]

OBJECT = "object:"  # the source of a module object given in Python: a label, never imported
_SCALARS = (str, int, float, bool, type(None))
# the fields that decide a model's structure: a policy replays only where they agree
IDENTITY = ("source", "args", "num_classes", "input_size", "output", "ignore")


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and what autoprune must know about it (all plain data; see the module doc).

    Attributes:
        source: a zoo name (``resnet56``), ``package.module:factory``, ``path/to/file.py:factory``, or
            ``object:<label>`` for a module object given in Python.
        args: keyword arguments of the factory (YAML scalars).
        num_classes: classifier width; zoo: passed to the builder (default the dataset's); a factory that
            takes ``num_classes`` gets it when known; otherwise the model's logits must have that width.
        input_size: (C, H, W) of one example; zoo: its registered size; required otherwise.
        mean, std: the normalisation the weights expect (default ImageNet's).
        output: which part of a tuple, dict or ``.logits`` output holds the logits (a key or an index);
            None: the tensor itself, else ``logits``, else the first element.
        ignore: fnmatch patterns over module names: layers never pruned (a group touching one is kept whole).
        first_conv, classifier: the stem conv and the logits layer; discovered when not given.
    """

    source: str
    args: dict[str, Any] = field(default_factory=dict, hash=False)
    num_classes: int | None = None
    input_size: tuple[int, int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    output: str | int | None = None
    ignore: tuple[str, ...] = ()
    first_conv: str | None = None
    classifier: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise ModelError(f"A model source must be a zoo name, package.module:factory or file.py:factory, "
                             f"but got {self.source!r}.")
        if self.kind == "zoo":
            get_model_info(self.source)  # a misspelt name fails here, with "Did you mean"
        if not isinstance(self.args, Mapping) or not all(
                isinstance(k, str) and isinstance(v, _SCALARS) for k, v in self.args.items()):
            raise ModelError(f"Model arguments must map names to YAML scalars, but got {self.args!r}.")
        object.__setattr__(self, "args", dict(sorted(self.args.items())))
        if self.input_size is not None:
            size = tuple(self.input_size)
            if len(size) != 3 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in size):
                raise ModelError(f"The input size must be three positive integers C,H,W, but got {self.input_size!r}.")
            object.__setattr__(self, "input_size", size)
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))
        if self.num_classes is not None and (not isinstance(self.num_classes, int) or self.num_classes < 1):
            raise ModelError(f"num_classes must be a positive integer, but got {self.num_classes!r}.")
        if isinstance(self.output, bool) or not isinstance(self.output, (str, int, type(None))):
            raise ModelError(f"The output selector must be a key or an index, but got {self.output!r}.")
        if isinstance(self.ignore, str):
            raise ModelError(f"ignore must be a list of patterns, but got the string {self.ignore!r}.")
        object.__setattr__(self, "ignore", tuple(str(p) for p in self.ignore))

    # -- what it is -----------------------------------------------------------
    @property
    def kind(self) -> str:
        """``zoo``, ``object`` (a module given in Python), ``file`` (file.py:factory) or ``module`` (pkg.mod:factory)."""
        if self.source.startswith(OBJECT):
            return "object"
        if ":" not in self.source:
            return "zoo"
        where = self.source.rpartition(":")[0]
        return "file" if where.endswith(".py") or "/" in where or "\\" in where else "module"

    @property
    def is_zoo(self) -> bool:
        return self.kind == "zoo"

    @property
    def family(self) -> str | None:
        """The search-space YAML of a zoo model (None: the automatic space)."""
        return get_model_info(self.source).space if self.is_zoo else None

    @classmethod
    def of(cls, model: nn.Module, input_size: Sequence[int], **kwargs: Any) -> ModelSpec:
        """The spec of a module object built in Python (its class names it; nothing is ever imported from it)."""
        label = f"{OBJECT}{type(model).__module__}.{type(model).__qualname__}"
        return cls(source=label, input_size=tuple(int(n) for n in input_size), **kwargs)

    def defaults(self) -> ModelSpec:
        """The spec with what is known without building the model filled in (the zoo's metadata, ImageNet's
        normalisation): two specs that differ only in defaults left out are the same model."""
        if not self.is_zoo:
            return replace(self, mean=self.mean or IMAGENET_MEAN, std=self.std or IMAGENET_STD)
        info = get_model_info(self.source)
        return replace(self, input_size=self.input_size or info.input_size, mean=self.mean or info.mean,
                       std=self.std or info.std, first_conv=self.first_conv or info.first_conv,
                       classifier=self.classifier or info.classifier,
                       num_classes=self.num_classes or _DEFAULT_NUM_CLASSES[info.dataset])

    def identity(self) -> dict[str, Any]:
        """The fields that decide the model's structure (:data:`IDENTITY`), defaults filled in."""
        full = self.defaults().to_dict()
        return {k: full[k] for k in IDENTITY}

    # -- as data --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in ("input_size", "mean", "std", "ignore"):
            if d[name] is not None:
                d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], what: str = "model spec") -> ModelSpec:
        names = {f.name for f in fields(cls)}
        if not isinstance(data, Mapping) or "source" not in data or set(data) - names:
            unknown = sorted(set(data) - names) if isinstance(data, Mapping) else []
            raise ModelError(f"{what} is not a model spec (it needs 'source'; unknown keys {unknown}).")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k != "args"},
                   args=dict(data.get("args") or {}))

    def key(self) -> str:
        """A string naming this spec exactly (a cache key)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.args.items())
        return f"{self.source}({args})" if args else self.source


# -- building ---------------------------------------------------------------------
def _load_factory(spec: ModelSpec) -> Callable[..., Any]:
    where, _, name = spec.source.rpartition(":")
    if not where or not name:
        raise ModelError(f"--model {spec.source!r}: expected package.module:factory or path/to/file.py:factory.")
    if spec.kind == "file":
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise ModelError(f"--model {spec.source!r}: {path} does not exist (or is not a file).")
        module_name = f"autoprune_user_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
        module = sys.modules.get(module_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            if loader_spec is None or loader_spec.loader is None:
                raise ModelError(f"--model {spec.source!r}: {path} cannot be imported as Python.")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[module_name] = module  # dataclasses and pickling look classes up there
            sys.path.insert(0, str(path.parent))  # its sibling modules import as they would from a script
            try:
                loader_spec.loader.exec_module(module)
            except Exception as e:
                del sys.modules[module_name]
                raise ModelError(f"--model {spec.source!r}: importing {path} failed: {type(e).__name__}: "
                                 f"{_first_line(e)}") from e
            finally:
                sys.path.remove(str(path.parent))
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:
            raise ModelError(f"--model {spec.source!r}: cannot import {where} ({type(e).__name__}: {_first_line(e)}). "
                             "Is the package installed, or did you mean a file (path/to/file.py:factory)?") from e
    factory = getattr(module, name, None)
    if factory is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ModelError(f"--model {spec.source!r}: {where} has no {name!r}; its callables: {', '.join(public) or 'none'}.")
    if not callable(factory):
        raise ModelError(f"--model {spec.source!r}: {name!r} is a {type(factory).__name__}, not a callable factory.")
    return factory


def build(spec: ModelSpec) -> nn.Module:
    """Build the model ``spec`` names (a zoo builder, or the user's factory called with ``spec.args``).

    Call it only with a spec the user chose (see the module doc): it imports and runs their code.
    A factory's model is checked at once by :func:`resolve` (given its input size): a model whose output
    is a tuple, dict or ``.logits`` object returns the selected logits (a forward hook: module names stay).
    """
    if spec.kind == "object":
        raise ModelError(f"{spec.source} is a module object given in Python: autoprune cannot rebuild it; "
                         "pass the module itself (e.g. load_pruned(path, model=net)).")
    if spec.is_zoo:
        return create_zoo(spec.source, num_classes=spec.num_classes, **spec.args)
    factory = _load_factory(spec)
    kwargs = dict(spec.args)
    if spec.num_classes is not None and _takes(factory, "num_classes"):  # else resolve() checks the logits
        if "num_classes" in kwargs and kwargs["num_classes"] != spec.num_classes:
            raise ModelError(f"--num-classes {spec.num_classes} contradicts --model-arg num_classes="
                             f"{kwargs['num_classes']}; give one.")
        kwargs["num_classes"] = spec.num_classes
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise ModelError(f"--model {spec.source!r} rejects the arguments {kwargs}: {_first_line(e)}. "
                         "Pass what it takes with --model-arg KEY=VALUE.") from e
    except Exception as e:
        raise ModelError(f"--model {spec.source!r} failed with arguments {kwargs}: {type(e).__name__}: "
                         f"{_first_line(e)}") from e
    if not isinstance(model, nn.Module):
        raise ModelError(f"--model {spec.source!r} returned a {type(model).__name__}, not a torch.nn.Module.")
    if spec.input_size is not None:
        resolve(model, spec)  # input size, logits and classes checked now; a tuple/dict output gets its selector
    elif spec.output is not None:
        _attach_output(model, spec.output)
    return model


def _takes(factory: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def create(model: str | ModelSpec, num_classes: int | None = None, **kwargs: object) -> nn.Module:
    """Build a zoo name (as the registry's ``create``) or a :class:`ModelSpec`."""
    if isinstance(model, ModelSpec):
        if num_classes is not None or kwargs:
            model = replace(model, num_classes=num_classes or model.num_classes, args={**model.args, **kwargs})
        return build(model)
    return create_zoo(model, num_classes=num_classes, **kwargs)


# -- outputs ------------------------------------------------------------------------
def select_output(out: Any, selector: str | int | None) -> torch.Tensor:
    """The logits in a model's output: ``selector`` (key, attribute or index), or by default the tensor
    itself, else ``logits``, else the first element. Raises :class:`ModelError` when that selects nothing."""
    if selector is None:
        if isinstance(out, torch.Tensor):
            return out
        for chosen in ("logits", 0):
            try:
                return select_output(out, chosen)
            except ModelError:
                continue
        raise ModelError(f"The model returns a {type(out).__name__} without a tensor, a 'logits' entry or a first "
                         "element: choose its logits with --output KEY|INDEX.")
    try:
        if isinstance(out, Mapping):
            value = out[selector]
        elif isinstance(out, (tuple, list)) and isinstance(selector, int):
            value = out[selector]
        elif isinstance(selector, str):
            value = getattr(out, selector)
        else:
            raise TypeError
    except (KeyError, IndexError, AttributeError, TypeError):
        keys = (f"keys {list(out)}" if isinstance(out, Mapping) else f"{len(out)} elements"
                if isinstance(out, (tuple, list)) else "no keys or elements")
        raise ModelError(f"--output {selector!r} selects nothing in the model's output (a {type(out).__name__} "
                         f"with {keys}).") from None
    if not isinstance(value, torch.Tensor):
        raise ModelError(f"--output {selector!r} selects a {type(value).__name__}, not the logits tensor.")
    return value


class _SelectOutput:
    """A forward hook that returns the selected logits: callers (evaluation, training, tracing) see a tensor,
    and the model's module names, which name the policy's groups, are untouched."""

    def __init__(self, selector: str | int | None) -> None:
        self.selector = selector

    def __call__(self, _module: nn.Module, _args: Any, out: Any) -> torch.Tensor:
        return select_output(out, self.selector)


def _attach_output(model: nn.Module, selector: str | int | None) -> None:
    for key, hook in list(model._forward_hooks.items()):  # one selector at a time
        if isinstance(hook, _SelectOutput):
            del model._forward_hooks[key]
    model.register_forward_hook(_SelectOutput(selector))


def _detach_output(model: nn.Module) -> None:
    for key, hook in list(model._forward_hooks.items()):
        if isinstance(hook, _SelectOutput):
            del model._forward_hooks[key]


def every_tensor(out: Any, selector: str | int | None) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """All tensors in a model's output (a tuple, list or dict of them, in pytree order), or, for an output
    they cannot be read from (an object with ``.logits``), the logits ``selector`` picks."""
    leaves = tree_flatten(out)[0]
    if leaves and all(isinstance(t, torch.Tensor) for t in leaves):
        return leaves[0] if len(leaves) == 1 else tuple(leaves)
    return select_output(out, selector)


class _EveryTensor(_SelectOutput):
    def __call__(self, _module: nn.Module, _args: Any, out: Any) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return every_tensor(out, self.selector)


@contextmanager
def every_output(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` returning every tensor of its output (every head), not only the logits ``--output`` selects,
    inside the block.

    The trace must see every output, or a head's channels would be cut without its layers (and an output's
    own channels are kept: its shape is the user's interface); a deployed file returns them all.
    """
    selectors = {k: h for k, h in model._forward_hooks.items() if type(h) is _SelectOutput}
    for key, hook in selectors.items():
        model._forward_hooks[key] = _EveryTensor(hook.selector)
    try:
        yield model
    finally:
        model._forward_hooks.update(selectors)


# -- resolving against the built model ---------------------------------------------------
@contextmanager
def running_module(model: nn.Module) -> Iterator[list[str]]:
    """The stack of module names being run, kept by hooks: after an exception, its last entry is the
    innermost module that raised (its exit hook never ran)."""
    stack: list[str] = []
    names = {m: n for n, m in model.named_modules()}
    handles = []
    for module in names:
        handles.append(module.register_forward_pre_hook(lambda m, _a: stack.append(names[m] or "(the model)")))
        handles.append(module.register_forward_hook(lambda _m, _a, _o: stack.pop() and None))
    try:
        yield stack
    finally:
        for h in handles:
            h.remove()


def where(model: nn.Module, name: str) -> str:
    """``name (Type)`` of a module, for messages."""
    if name == "(the model)":
        return f"the model ({type(model).__name__})"
    return f"{name} ({type(model.get_submodule(name)).__name__})"


def resolve(model: nn.Module, spec: ModelSpec) -> ModelSpec:
    """``spec`` completed against ``model``: input size checked, logits selected, stem and classifier found.

    One forward pass on a zero example: the first conv to run is the stem; the last Linear or conv whose
    output width equals the logits' is the classifier; ``num_classes`` is the logits' width. A model whose
    output is a tuple, dict or ``.logits`` object gets a selecting forward hook. Every problem is a
    :class:`ModelError` here, before anything is searched or written.
    """
    given_classes = spec.num_classes
    spec = spec.defaults()
    if spec.input_size is None:
        raise ModelError(f"{spec.source} is not in the zoo: give its input size with --input-size C,H,W "
                         "(e.g. 3,32,32).")
    names = [n for n, _ in model.named_modules() if n]
    for pattern in spec.ignore:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ModelError(f"--ignore {pattern!r} matches no module of {spec.source}; module names look like "
                             f"{', '.join(names[:6])}{', ...' if len(names) > 6 else ''}.")
    for role in ("first_conv", "classifier"):
        name = getattr(spec, role)
        if name is not None and name not in names:
            raise ModelError(f"{spec.source} has no module {name!r} (its {role}).")
    if spec.is_zoo:  # the registry's metadata; the classes are the model's
        head = model.get_submodule(spec.classifier)
        classes = int(getattr(head, "out_features", getattr(head, "out_channels", 0)))
        if given_classes is not None and given_classes != classes:
            raise ModelError(f"{spec.source} was built with {classes} classes, but num_classes is {given_classes}.")
        return replace(spec, num_classes=classes)
    params = list(model.parameters())
    if not params:
        raise ModelError(f"{spec.source} has no parameters: there is nothing to prune.")
    example = torch.zeros(1, *spec.input_size, device=params[0].device)
    calls: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    module_names = {m: n for n, m in model.named_modules()}
    handles = [m.register_forward_hook(lambda m, _a, out: calls.append((module_names[m], m, tuple(out.shape))))
               for m in module_names if isinstance(m, (nn.Conv2d, nn.Linear))]
    _detach_output(model)
    was_training = model.training
    model.eval()
    try:
        with running_module(model) as stack, torch.no_grad():
            try:
                out = model(example)
            except Exception as e:
                at = where(model, stack[-1]) if stack else "the model"
                raise ModelError(f"{spec.source} rejects input size {','.join(map(str, spec.input_size))} in "
                                 f"{at}: {type(e).__name__}: {_first_line(e)}. Give the size it takes with "
                                 "--input-size C,H,W.") from e
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    logits = select_output(out, spec.output)
    if not isinstance(out, torch.Tensor) or spec.output is not None:
        _attach_output(model, spec.output)
    if logits.dim() != 2 or logits.shape[0] != 1:
        raise ModelError(f"The logits of {spec.source} have shape {tuple(logits.shape)} for one example; autoprune "
                         "needs (batch, classes). Choose another part of the output with --output KEY|INDEX.")
    classes = int(logits.shape[1])
    if spec.num_classes is not None and spec.num_classes != classes:
        raise ModelError(f"{spec.source} gives {classes} logits, but num_classes is {spec.num_classes}.")
    convs = [name for name, m, _ in calls if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ModelError(f"{spec.source} runs no Conv2d: autoprune prunes the channels of convolutions.")
    heads = [name for name, m, shape in calls if shape[1] == classes
             and (isinstance(m, nn.Linear) or (m.kernel_size == (1, 1) and shape[2:] in ((1, 1), ())))]
    classifier = spec.classifier or (heads[-1] if heads else None)
    if classifier is None:
        raise ModelError(f"{spec.source}: no Linear or 1x1 conv produces its {classes} logits; name the classifier "
                         "(ModelSpec(classifier=...)) or keep the layer that does with --ignore.")
    return replace(spec, num_classes=classes, first_conv=spec.first_conv or convs[0], classifier=classifier)


# -- replaying a recorded spec ----------------------------------------------------
def replay_spec(recorded: ModelSpec, given: ModelSpec | None, what: str = "The policy") -> ModelSpec:
    """The spec to rebuild a recorded model with: a zoo spec as recorded; a user's only with ``given``.

    ``given`` is what the user typed now (``--model`` ...); fields they left out take the recorded
    values; fields that differ are refused by name, with both values.
    """
    if given is None:
        if recorded.is_zoo:
            return recorded
        raise PolicyError(f"{what} is for the user model {recorded.describe()}: autoprune never imports code "
                          f"named by a file, so pass it again: --model {recorded.source}"
                          + "".join(f" --model-arg {k}={v}" for k, v in recorded.args.items())
                          + (" (in Python: model=)" if recorded.kind == "object" else "") + ".")
    merged = ModelSpec(**{f.name: (getattr(given, f.name) if getattr(given, f.name) not in (None, (), {})
                                   else getattr(recorded, f.name)) for f in fields(ModelSpec)})
    mine, theirs = recorded.identity(), merged.identity()
    differ = [k for k in IDENTITY if mine[k] != theirs[k] and not (k == "source" and recorded.kind == given.kind
                                                                   == "object")]
    if differ:
        raise PolicyError(f"{what} was made on another model: {'; '.join(f'{k} {theirs[k]!r} here, {mine[k]!r} in it' for k in differ)}.")
    return merged


# -- parsing command-line values -------------------------------------------------------
def parse_model_args(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings as a dict, each value a YAML scalar (``yaml.safe_load``: 3 -> int, true -> bool)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ModelError(f"--model-arg takes KEY=VALUE with KEY a Python name, but got {pair!r}.")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        if not isinstance(parsed, _SCALARS):
            parsed = value  # lists and mappings stay strings: a factory argument is one scalar
        out[key.strip()] = parsed
    return out


def parse_size(text: str | Sequence[int] | None, what: str = "--input-size") -> tuple[int, ...] | None:
    """``"3,32,32"`` as ints (None stays None)."""
    if text is None or not isinstance(text, str):
        return tuple(text) if text is not None else None
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise ModelError(f"{what} takes comma-separated integers like 3,32,32, but got {text!r}.") from None


def parse_floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ModelError(f"{what} takes comma-separated numbers like 0.5,0.5,0.5, but got {text!r}.") from None


def state_sha256(model: nn.Module) -> str:
    """A sha256 of a module's weights (names, shapes and values): the checkpoint hash of a module object."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
