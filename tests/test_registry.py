"""The registry of model kinds: every entry is complete and consistent, and no module but the
registry branches on a model's name."""

import ast
from pathlib import Path

import pytest
import torch

from cifargen.errors import ConfigError
from cifargen.registry import GENERATORS, MODELS, default_config, model_kind

PACKAGE = Path(__file__).resolve().parents[1] / "cifargen"


@pytest.mark.parametrize("name", list(MODELS))
def test_each_kind_builds_its_model_and_configuration(name):
    kind = model_kind(name)
    config = kind.default_config(epochs=2)
    assert config.model == name and config.epochs == 2 and default_config(name).epochs > 0
    model = kind.build(kind.arch_class(width=8).__dict__)
    assert isinstance(model, kind.model_class) and model.kind == name
    recipe = kind.recipe_class(config, tuple("abcdefghij"), torch.device("cpu"), None, steps_per_epoch=3)
    assert type(recipe.export_model()) is kind.model_class
    assert kind.conditional == bool(getattr(model, "conditional", False))
    if kind.generative:  # one model API: generate(n, y, generator, prior) -> (images, labels) and decode(z, y)
        images, labels = model.eval().generate(3, generator=torch.Generator().manual_seed(0))
        assert images.shape == (3, 3, 32, 32) and (labels is None) == (not kind.conditional)
        z = model.latents(3, labels, torch.Generator().manual_seed(0))
        assert torch.equal(model.decode(z, labels), images)


def test_default_run_folders_and_generators():
    assert GENERATORS == ("vae", "cvae", "acgan")
    assert str(model_kind("acgan").out_dir()) == "visualize/gan"
    assert model_kind("classifier").out_dir().parent.name == "classifier"  # in the cache folder, one per data set


@pytest.mark.parametrize("name", list(MODELS))
def test_each_kinds_train_command_parses_with_resume(name):
    from cifargen.cli import build_parser

    program, *argv = model_kind(name).command().split()
    assert program == "cifargen"
    args = build_parser().parse_args([*argv, "--resume", "runs/x"])  # argparse exits on a command it does not know
    assert args.resume == "runs/x"
    assert getattr(args, "model", "classifier") == name  # `classifier train` has no model argument; main() sets it


@pytest.mark.parametrize("name", list(MODELS))
def test_a_kind_classifies_exactly_when_its_evaluation_has_a_confusion_matrix(name):
    from cifargen.data import ImageDataset

    kind = model_kind(name)
    model = kind.build(kind.arch_class(width=8).__dict__).eval()
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    test_set = ImageDataset(images, torch.arange(12) % 10, tuple("abcdefghij"))
    figures = kind.evaluate(model, test_set, torch.device("cpu"))
    assert ("confusion" in figures) == kind.classifies


def test_an_unknown_kind_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown model kind 'gan9000'.*vae, cvae, acgan, classifier"):
        model_kind("gan9000")


def _compares_a_name_with_a_model_kind(node: ast.Compare) -> bool:
    names = set(MODELS)
    sides = [node.left, *node.comparators]

    def is_kind_literal(side):
        if isinstance(side, ast.Constant):
            return side.value in names
        return isinstance(side, (ast.Tuple, ast.List, ast.Set)) and any(
            isinstance(e, ast.Constant) and e.value in names for e in side.elts)

    def is_kind_name(side):
        return isinstance(side, ast.Attribute) and side.attr in ("kind", "model") or \
            isinstance(side, ast.Name) and side.id in ("kind", "model", "model_name")

    return any(is_kind_literal(s) for s in sides) and any(is_kind_name(s) for s in sides)


def test_no_module_but_the_registry_branches_on_a_model_kind():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "registry.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and _compares_a_name_with_a_model_kind(node):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not offenders, f"model-kind dispatch outside the registry: {offenders}"


def test_the_dispatch_check_can_fail():
    tree = ast.parse('if model.kind == "acgan": pass\nif kind in ("vae", "cvae"): pass\nif x == "vae": pass')
    found = [n for n in ast.walk(tree) if isinstance(n, ast.Compare) and _compares_a_name_with_a_model_kind(n)]
    assert len(found) == 2
