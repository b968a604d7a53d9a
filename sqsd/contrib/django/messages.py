"""``ModelInstanceMessage``: a message that refers to one row of a Django model (django-sqs).

The body is ``{"app_label": ..., "model": ..., "pk": ...}``; the handler reads the row with
``message.instance``, fetched when first read. Django is imported only then. Bodies that
django-sqs sent (base64 of the JSON list ``[app_label, model, pk]``) are read too, so
messages in flight survive the switch.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from sqsd.message import Message


class ModelInstanceMessage(Message):
    """Send with ``handler(instance=obj)`` (or ``sqsd.send(queue, instance=obj)``); read
    ``message.instance``, ``message.model`` and ``message.pk`` in the handler.

    Send after the row is committed (``transaction.on_commit``): a worker that reads it
    earlier gets ``Model.DoesNotExist``, which fails the message like any other exception.
    """

    __slots__ = ("_instance",)

    @classmethod
    def encode(cls, message: Any = None, *, instance: Any = None, **kwargs: Any) -> str:
        if instance is None and hasattr(message, "_meta"):
            message, instance = None, message  # handler(obj) reads as handler(instance=obj)
        if instance is None:
            if isinstance(message, Message) and not kwargs:
                return message.body  # forwarding a received message
            raise TypeError(f"{cls.__name__} needs instance=, a saved model instance")
        if message is not None or kwargs:
            raise TypeError(f"{cls.__name__} takes only instance=, got more arguments")
        meta = getattr(instance, "_meta", None)
        if meta is None:
            raise TypeError(f"{cls.__name__}: {instance!r} is not a model instance")
        pk = instance.pk
        if pk is None:
            raise ValueError(f"{cls.__name__}: save {instance!r} before sending it")
        if not isinstance(pk, int | str):
            pk = meta.pk.value_to_string(instance)  # UUID, date, ...: its string form
        body = {"app_label": meta.app_label, "model": meta.model_name, "pk": pk}
        return json.dumps(body, separators=(",", ":"))

    @property
    def model(self) -> Any:
        """The model class named by the body (LookupError when no such model is installed)."""
        from django.apps import apps

        app_label, model, _ = self.reference()
        return apps.get_model(app_label, model)

    @property
    def pk(self) -> Any:
        return self.reference()[2]

    @property
    def instance(self) -> Any:
        """The row, fetched from the database on first read (``Model.DoesNotExist`` if gone)."""
        try:
            return self._instance
        except AttributeError:
            pass
        self._instance = self.model._default_manager.get(pk=self.pk)
        return self._instance

    def reference(self) -> tuple[str, str, Any]:
        """``(app_label, model, pk)`` from the body; ValueError when it holds none."""
        try:
            data = json.loads(self.body)
        except ValueError:
            data = None
        if isinstance(data, dict) and {"app_label", "model", "pk"} <= data.keys():
            return data["app_label"], data["model"], data["pk"]
        try:  # django-sqs: base64 of the JSON list [app_label, model, pk]
            app_label, model, pk = json.loads(base64.b64decode(self.body, validate=True))
            return str(app_label), str(model), pk
        except (ValueError, TypeError, binascii.Error):
            raise ValueError(
                f"{type(self).__name__}: the body is not a model reference: {self.body[:200]!r}"
            ) from None
