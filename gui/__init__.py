"""The PyQt6 desktop app, a thin shell over the jam session (issue 6)."""
