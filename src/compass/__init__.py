"""compass: reproducible recipes for reasoning-enhanced Japanese document VLMs."""
__version__ = "0.1.0"
