"""Settings of the test project. The tests run Django in subprocesses and vary settings
through the environment: ``SHOP_DATABASE`` (an SQLite file; default in memory) and
``SHOP_SETTINGS``, a JSON object of settings to override (``null`` removes one)."""

import json
import os

SECRET_KEY = "sqsd-tests-only"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = ["sqsd.contrib.django", "tests.django_project.shop"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SHOP_DATABASE", ":memory:"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

SQSD = {
    "sqsd": {"queue_prefix": "shop_", "region": "us-east-1"},
    "defaults": {"visibility_timeout": 30},
    "queues": {"shop_orders": {"max_retries": 2}},
}

for _name, _value in json.loads(os.environ.get("SHOP_SETTINGS", "{}")).items():
    if _value is None:
        globals().pop(_name, None)
    else:
        globals()[_name] = _value
