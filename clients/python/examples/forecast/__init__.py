"""issue-forecast: an example busgate program (see README.md). Run as ``python -m forecast COMMAND``."""
