"""Make the collection importable as ansible_collections.hardened.mailhost,
and the shared test helpers (module_runner) importable by the tests."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(ROOT, ".collections")
HELPERS = os.path.dirname(os.path.abspath(__file__))
for path in (COLLECTIONS, HELPERS):
    if path not in sys.path:
        sys.path.insert(0, path)
