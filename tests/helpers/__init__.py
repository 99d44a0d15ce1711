"""Shared test helpers (no tests here): ``helpers.data`` writes tiny datasets in the layouts
users have, ``helpers.train`` real training volumes, ``helpers.recipes`` loads the recipe
scripts under ``recipes/``. Imported as ``helpers.*``: pytest puts ``tests/`` on ``sys.path``
(its conftest.py sits in a folder without ``__init__.py``)."""
