"""`python -m moderation.cli`: the same as the `moderation` command."""

from moderation.cli.main import main

main()
