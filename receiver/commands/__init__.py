"""One module per CLI subcommand; each has ``add_parser(subparsers)`` and ``run(args) -> int``.

The CLI (receiver.cli) discovers them here, so adding a command is adding a module.
"""
