"""sqsd: run Python handlers for Amazon SQS queues under a supervising master process.

Producer and handler API::

    import sqsd

    @sqsd.receiver("emails")
    def send_email(message: sqsd.Message) -> None: ...

    @sqsd.task()
    def resize(image_id: int, width: int = 640) -> None: ...

    sqsd.send("emails", "hello")
    resize.delay(42, width=320)
"""

from sqsd.decorators import ReceiverProxy, Task, receiver, task
from sqsd.errors import ConfigError, RestartLater, SendError, TransientError
from sqsd.message import Message
from sqsd.producer import configure, send
from sqsd.registry import register

__all__ = [
    "ConfigError",
    "Message",
    "ReceiverProxy",
    "RestartLater",
    "SendError",
    "Task",
    "TransientError",
    "configure",
    "receiver",
    "register",
    "send",
    "task",
]
__version__ = "0.1.0"
