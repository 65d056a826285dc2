"""Integrations with other engines, each behind its own optional extra (``vrrestore[ray]``).

Nothing is imported here: importing ``vrrestore.integrations.ray`` is what needs Ray.
"""
