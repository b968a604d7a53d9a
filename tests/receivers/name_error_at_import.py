"""A receivers module with a NameError at import time, on line 6 (sqsd must name the line)."""

import sqsd

sqsd.register("never", lambda message: None)
undefined_name  # noqa: B018, F821
