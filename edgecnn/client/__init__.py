"""Clients of an edgecnn server: health checks, classification. No torch here."""
