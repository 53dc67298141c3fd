"""``python -m controller`` does what the ``taskbox`` command does."""

from controller.cli import main

main()
