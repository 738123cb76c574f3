"""Vocabularies, dataset specs and readers, and the embedded toyland benchmark."""
