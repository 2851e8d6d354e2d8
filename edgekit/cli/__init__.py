"""The `edgekit` command line. Thin: each command parses, calls one library function, prints."""
