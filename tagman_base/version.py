"""The plugin's version: one constant, equal to the ``version`` of both manifests (a test checks it)."""

VERSION = "0.1.0"
USER_AGENT = f"tagManager/{VERSION}"
