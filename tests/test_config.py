"""Recipes are strict: unknown keys and wrong types fail with the key's path."""

import pytest
import yaml

from seqvi.config import Recipe, load_recipe, recipe_from_dict
from seqvi.engine.setup import validate_sections
from seqvi.errors import RecipeError

from conftest import REPO


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_and_sections():
    recipe = recipe_from_dict({"train": {"epochs": 3}, "model": {"name": "vrnn", "hidden_size": 4}})
    assert isinstance(recipe, Recipe)
    assert recipe.train.epochs == 3 and recipe.train.lr == Recipe().train.lr
    assert recipe.model == {"name": "vrnn", "hidden_size": 4}


@pytest.mark.parametrize("text, path", [
    ("train: {epochs: 3, epoch: 4}\n", "train.epoch"),
    ("trian: {}\n", "trian"),
    ("data: {batch_size: 2.5}\n", "data.batch_size"),
    ("data: {batch_size: true}\n", "data.batch_size"),
    ("train: {lr: fast}\n", "train.lr"),
    ("data: 3\n", "data"),
    ("model: {hidden_size: 3}\n", "model.name"),
])
def test_bad_recipe_names_the_key(tmp_path, text, path):
    with pytest.raises(RecipeError, match=f"'{path}'"):
        load_recipe(write(tmp_path, text))


def test_int_widens_to_float(tmp_path):
    assert load_recipe(write(tmp_path, "train: {lr: 1}\n")).train.lr == 1.0


def test_model_keys_checked_against_constructor(tmp_path):
    recipe = load_recipe(write(tmp_path, "model: {name: vrnn, hiden_size: 3}\n"))
    with pytest.raises(RecipeError, match="'model.hiden_size'"):
        validate_sections(recipe)
    recipe = load_recipe(write(tmp_path, "model: {name: vrnn, hidden_size: big}\n"))
    with pytest.raises(RecipeError, match="'model.hidden_size' must be int"):
        validate_sections(recipe)
    recipe = load_recipe(write(tmp_path, "model: {name: nosuch}\n"))
    with pytest.raises(RecipeError, match="unknown 'model.name'"):
        validate_sections(recipe)
    recipe = load_recipe(write(tmp_path, "inference: {name: direct, hidden_sizes: [4, x]}\n"))
    with pytest.raises(RecipeError, match=r"'inference.hidden_sizes\[1\]'"):
        validate_sections(recipe)


def test_overrides_and_extends(tmp_path):
    write(tmp_path, "train: {epochs: 7, lr: 0.5}\nmodel: {name: vrnn, hidden_size: 9}\n", "base.yaml")
    top = write(tmp_path, "extends: base.yaml\ntrain: {epochs: 2}\n")
    recipe = load_recipe(top, ["train.lr=0.25", "model.z_size=5"])
    assert recipe.train.epochs == 2 and recipe.train.lr == 0.25
    assert recipe.model == {"name": "vrnn", "hidden_size": 9, "z_size": 5}
    with pytest.raises(RecipeError, match="'train.nope'"):
        load_recipe(top, ["train.nope=1"])
    with pytest.raises(RecipeError, match="key.path=value"):
        load_recipe(top, ["train.lr"])


def test_extends_cycle_and_missing_file(tmp_path):
    write(tmp_path, "extends: b.yaml\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\n", "b.yaml")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")
    with pytest.raises(RecipeError, match="no such file"):
        load_recipe(tmp_path / "missing.yaml")


def test_invalid_yaml_names_line(tmp_path):
    with pytest.raises(RecipeError, match="line 3"):
        load_recipe(write(tmp_path, "train:\n  epochs: [1\n"))


def test_billion_laughs_refused_quickly(tmp_path):
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 9)}]")
    with pytest.raises(RecipeError, match="expands to more than"):
        load_recipe(write(tmp_path, "\n".join(lines) + "\n"))


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    recipe = load_recipe(path)
    try:
        validate_sections(recipe, str(path))
    except RecipeError as err:
        # Recipes for models/inference that another issue adds are allowed to name them.
        if "unknown 'model.name'" not in str(err) and "unknown 'inference.name'" not in str(err):
            raise
    assert yaml.safe_load(yaml.safe_dump(recipe.to_dict())) == recipe.to_dict()


def test_an_override_that_replaces_the_model_says_which_recipe_keys_it_dropped(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {name: vrnn, hidden_size: 8, z_size: 3}\ninference: {name: direct}\n")
    heard = []
    recipe = load_recipe(path, ["model.name=srnn", "model.dense_size=6"], check=validate_sections, warn=heard.append)
    assert recipe.model == {"name": "srnn", "dense_size": 6}
    assert heard == ["override 'model.name=srnn' starts 'model' afresh: dropped the recipe's model.hidden_size, "
                     "model.z_size (set them again as overrides to keep them)"]
    heard.clear()
    load_recipe(path, ["model.name=vrnn", "inference.name=avf"], check=validate_sections, warn=heard.append)
    assert heard == []   # the same model name keeps the section; the inference section had only its name
