"""Recipe YAML with includes: ``<<: !include models/ouro-1.4b.yaml`` composes another file into a mapping.

The included file's keys are merged as YAML merge keys are (keys written next to ``<<`` win), so a stage recipe
takes its architecture from ``recipes/models/`` and sets only what the stage changes::

    model:
      model:
        <<: !include models/ouro-1.4b.yaml
        rope_theta: 10000.0

A relative path is resolved against the directory of the file that includes it. ``!include`` also works as a
plain value (``model: !include file.yaml``). `install` makes jsonargparse (hence ``ouro fit --config``) read
recipes this way; `read_recipe` reads one for code that only needs its values.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import get_loader, set_loader, set_parsing_settings
from jsonargparse._loaders_dumpers import get_yaml_default_loader

from ouro.errors import RecipeError

INCLUDE_TAG = "!include"


def _loader_class(base: type) -> type:
    class RecipeLoader(base):
        """``base`` (a PyYAML loader) that expands ``!include`` against ``include_dir``."""

        include_dir: str | None = None

        def _compose_include(self, node: yaml.Node) -> yaml.Node:
            relative = self.construct_scalar(node)
            directory = self.include_dir or os.getcwd()
            path = Path(directory, relative)
            if not path.is_file():
                raise RecipeError(
                    f"!include {relative}: {path} does not exist (paths are relative to the file)"
                )
            loader = type(self)(path.read_text())
            loader.include_dir = str(path.parent)
            try:
                root = loader.get_single_node()
                loader.expand_includes(root)
            finally:
                loader.dispose()
            if root is None:
                raise RecipeError(f"!include {relative}: {path} is empty")
            return root

        def expand_includes(self, node: yaml.Node | None) -> None:
            """Replace every ``!include`` node below ``node`` by the composed root of the file it names."""
            if isinstance(node, yaml.MappingNode):
                for index, (key, value) in enumerate(node.value):
                    if value.tag == INCLUDE_TAG:
                        node.value[index] = (key, self._compose_include(value))
                    else:
                        self.expand_includes(value)
            elif isinstance(node, yaml.SequenceNode):
                for index, value in enumerate(node.value):
                    if value.tag == INCLUDE_TAG:
                        node.value[index] = self._compose_include(value)
                    else:
                        self.expand_includes(value)

        def get_single_data(self) -> Any:
            node = self.get_single_node()
            if node is None:
                return None
            if node.tag == INCLUDE_TAG:
                node = self._compose_include(node)
            self.expand_includes(node)
            return self.construct_document(node)

    return RecipeLoader


def _base_loader() -> type:
    """jsonargparse's own YAML loader (its float and timestamp rules), so recipes read the same either way."""
    return get_yaml_default_loader()


def read_recipe(path: str | Path) -> Any:
    """The values of a recipe file, includes expanded (relative to the file)."""
    path = Path(path)
    loader = _loader_class(_base_loader())(path.read_text())
    loader.include_dir = str(path.parent)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


_installed = False


def install() -> None:
    """Make jsonargparse's YAML loader expand ``!include`` (relative paths: jsonargparse changes into the
    directory of the config file it parses). Values without the tag load exactly as before."""
    global _installed
    if _installed:
        return
    plain_load = get_loader("yaml")
    recipe_loader = _loader_class(_base_loader())

    def load(stream: str) -> Any:
        if INCLUDE_TAG not in stream:
            return plain_load(stream)
        return yaml.load(stream, Loader=recipe_loader)

    set_loader("yaml", load, exceptions=(yaml.YAMLError, RecipeError))
    _installed = True


def wants_help_text(args: Sequence[str]) -> bool:
    """Whether a command line prints help text: ``-h``/``--help``, ``--KEY.help CLASS``, or ``--print_config``
    with comments."""
    for index, arg in enumerate(args):
        flag, _, value = arg.partition("=")
        if flag in ("-h", "--help") or (flag.startswith("--") and flag.endswith(".help")):
            return True
        following = args[index + 1] if index + 1 < len(args) else ""
        if flag == "--print_config" and "comments" in (value or following):
            return True
    return False


def configure_parsing(args: Sequence[str] | None = None) -> None:
    """jsonargparse settings of an ``ouro`` command line ``args``: field docstrings in help text (dataclass
    attribute docstrings, e.g. every ``OuroConfig`` field), and ``<<: !include FILE`` in recipes (`install`).

    Attribute docstrings are read from the source of every class in the parser, which takes seconds at each
    start, so they are read only when ``args`` print help (`wants_help_text`; always when ``args`` is None):
    nothing else uses them."""
    set_parsing_settings(docstring_parse_attribute_docstrings=args is None or wants_help_text(args))
    install()
