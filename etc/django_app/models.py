from django.db import models, transaction


class Invoice(models.Model):
    number = models.CharField(max_length=32, unique=True)
    pdf = models.BinaryField(null=True, editable=False)
    rendered_at = models.DateTimeField(null=True, editable=False)

    def request_pdf(self) -> None:
        """Queue the PDF once this row is committed: a worker that looked it up earlier
        would not find it."""
        from billing.receivers import render_invoice

        transaction.on_commit(lambda: render_invoice(instance=self))

    def __str__(self) -> str:
        return self.number
