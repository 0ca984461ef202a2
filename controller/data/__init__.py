"""Accuracy data and metrics on the controller: labelled datasets (rendered OCR text, seeded
tensors) and the evaluation the variant searches rank candidates with.

May import: ``controller.errors``, ``agent`` (the dataset format and metrics the boards use).
"""
