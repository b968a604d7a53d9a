"""Found by autodiscovery (``sqsd.contrib.django`` imports every app's ``receivers``)."""

import sqsd
from sqsd.contrib.django import ModelInstanceMessage


@sqsd.receiver("shop_orders", message_class=ModelInstanceMessage, close_database=True)
def ship_order(message: ModelInstanceMessage) -> None:
    order = message.instance
    order.status = "shipped"
    order.save(update_fields=["status"])
