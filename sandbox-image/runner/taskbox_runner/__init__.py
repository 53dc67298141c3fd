"""The in-sandbox runner: the generate-verify loop, its tools, the checks and the scratch commit."""

__version__ = "0.1.0"
