"""The `moderation` command line (typer): `main` builds the app from the command groups."""
