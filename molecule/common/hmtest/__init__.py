"""Helpers for the Molecule verifiers: instances, published ports and real clients."""
