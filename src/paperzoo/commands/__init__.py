"""CLI subcommands, one module each, discovered by :mod:`paperzoo.cli`."""
