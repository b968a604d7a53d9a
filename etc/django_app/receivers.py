"""Imported by ``sqsd.contrib.django`` in the web processes and in the daemon."""

import logging

from django.utils import timezone

import sqsd
from sqsd.contrib.django import ModelInstanceMessage

log = logging.getLogger(__name__)


@sqsd.receiver(
    "invoices",
    message_class=ModelInstanceMessage,
    close_database=True,  # drop stale connections after each message, as views do per request
    visibility_timeout=120,
    max_retries=3,
    dead_letter_queue="invoices_failed",
)
def render_invoice(message: ModelInstanceMessage) -> None:
    """``render_invoice(instance=invoice)`` sends; the worker gets the row back."""
    invoice = message.instance  # Invoice.DoesNotExist fails the message (dead-letter queue)
    if invoice.rendered_at is not None:
        return  # delivered twice: SQS is at-least-once
    invoice.pdf = render_pdf(invoice)
    invoice.rendered_at = timezone.now()
    invoice.save(update_fields=["pdf", "rendered_at"])
    log.info("rendered invoice %s", invoice.number)


def render_pdf(invoice) -> bytes:
    return f"%PDF-1.4 invoice {invoice.number}".encode()


@sqsd.task("invoice_reminders")
def send_reminder(invoice_number: str, days_late: int) -> None:
    """Plain arguments are fine too: ``send_reminder.delay("2024-0042", days_late=14)``."""
    log.info("invoice %s is %d days late", invoice_number, days_late)
