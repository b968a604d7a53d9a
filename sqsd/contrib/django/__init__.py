"""Django integration: add ``"sqsd.contrib.django"`` to ``INSTALLED_APPS``.

- Producer settings come from Django's settings (``SQSD``, or django-sqs's
  ``SQS_QUEUE_PREFIX`` and ``SQS_DEFAULT_VISIBILITY_TIMEOUT``), checked when Django starts.
- Every installed app's ``receivers`` module is imported, so its ``@sqsd.receiver`` and
  ``@sqsd.task`` registrations are known to producers and to the daemon.
- ``ModelInstanceMessage`` sends a reference to a model row; the handler reads
  ``message.instance``.
- ``manage.py sqs_status``, ``sqs_clear`` and ``sqs_wait`` talk to the daemon's socket.

The daemon runs a Django project with ``[sqsd] imports = ["sqsd.contrib.django.setup"]``
and ``DJANGO_SETTINGS_MODULE`` in its environment. See docs/django.md.

Importing this package does not import Django.
"""

from sqsd.contrib.django.messages import ModelInstanceMessage

__all__ = ["ModelInstanceMessage"]
