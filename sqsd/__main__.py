"""``python -m sqsd`` is the ``sqsd`` command."""

from sqsd.cli import sqsd_main

if __name__ == "__main__":
    sqsd_main(prog_name="sqsd")
