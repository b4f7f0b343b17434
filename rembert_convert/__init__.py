"""The `convert-rembert` command line: thin Click commands over `converters` and `validation`."""
