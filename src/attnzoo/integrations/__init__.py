"""Adapters to other libraries; each submodule needs its optional extra (``integrations.hf``: ``attnzoo[hf]``)."""
