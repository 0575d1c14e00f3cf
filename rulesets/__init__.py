"""Marks this folder as the package `nba_service.bundled_rulesets`; it holds no code.

pyproject.toml maps that package onto this folder ([tool.setuptools.package-dir]) so its *.yaml and *.md
files ship inside the wheel, and nba_service.settings finds the default rulesets with importlib.resources,
in a wheel install and in an editable one alike. This file is required by the editable install (`pip
install -e .`): setuptools' editable finder only imports a remapped package that has an __init__.py.
Reviewers can ignore it; the loader reads only the *.yaml files here.
"""
