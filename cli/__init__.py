"""The `musebridge` command (click): one thin module per command group over the library."""
