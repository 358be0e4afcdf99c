"""The command line: one ``deepseg`` console script with a subcommand per stage and tool."""
