"""The built-in processor plugins (entry point group ``pvaflow.processors``)."""
