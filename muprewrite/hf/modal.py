"""Example inputs that run a model's image, audio or video towers (placeholder tokens included)."""

from __future__ import annotations


def modal_inputs(make_model, text_inputs: dict, generator) -> dict:
    """Inputs to add to (or replace in) `text_inputs` so that the model's non-text towers run; {} when none."""
    return {}
