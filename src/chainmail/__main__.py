"""``python -m chainmail`` runs the command line."""

from chainmail.cli import main

main()
