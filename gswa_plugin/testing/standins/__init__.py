"""Faithful stand-ins for host classes that exist only as remote code on the Hugging Face hub.

They reproduce the real classes' interface (attribute names, method signatures, the order of
operations at the seam) so that an adapter written against a stand-in needs no change to work
on the real class. Each module's docstring says exactly what it stands in for.
"""
