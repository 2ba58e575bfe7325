"""Remote code copied verbatim into every export (``configuration_ouro.py``, ``modeling_ouro.py``).

A package only so that installs ship the files; nothing here is imported by ``ouro`` itself.
"""
