"""fastrnn's test suite: a package, so that test modules share helpers (``helpers.py``)
and fixtures (``conftest.py``) and never import each other."""
