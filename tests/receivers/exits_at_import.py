"""A receivers module that calls sys.exit(3) while being imported (sqsd must say so)."""

import sys

sys.exit(3)
