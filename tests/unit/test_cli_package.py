"""The ``synthd.cli`` package: each submodule's name is that module, never a command function bound over it."""

import importlib
import pkgutil
import types

import synthd.cli


def test_submodule_names_are_the_modules() -> None:
    for info in pkgutil.iter_modules(synthd.cli.__path__):
        if info.name == "__main__":  # runs the app when imported
            continue
        module = importlib.import_module(f"synthd.cli.{info.name}")
        bound = getattr(synthd.cli, info.name)
        assert isinstance(bound, types.ModuleType) and bound is module, info.name
