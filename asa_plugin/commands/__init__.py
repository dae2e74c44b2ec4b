"""One module per ``advrobust`` subcommand."""
