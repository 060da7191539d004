"""busgate conformance suite: a language-neutral runner that grades any gateway against
docs/protocol.md over raw sockets. Run `python -m conformance --help` from the repository root."""
