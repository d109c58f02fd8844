"""Model and processor loading, and the tiny offline model builder.

Import from the submodules (`ovlt_rl.models.loading`, `.tiny`, `.processor`); this package
imports nothing heavy by itself.
"""
