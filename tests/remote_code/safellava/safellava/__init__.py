"""Test fixture: the helper package a LLaVA-code-base checkpoint ships beside its weights."""
