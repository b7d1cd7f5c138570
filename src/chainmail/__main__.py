"""``python -m chainmail`` runs the command line."""

from chainmail.console import main

main()
