"""An example Django app for sqsd: invoices whose PDF is rendered by a worker.

Copy it into a project as ``billing``, add ``"sqsd.contrib.django"`` and ``"billing"`` to
``INSTALLED_APPS``, and run the daemon with etc/django_app/sqsd.toml (see docs/django.md).
"""
